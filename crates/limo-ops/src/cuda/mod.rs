//! Our CUDA kernels (`kernels/*.cu`, compiled by `build.rs`) and the small API their wrappers
//! share.
//!
//! Each `kernels/<stem>.cu` is built three times: `$OUT_DIR/<stem>.sm90.cubin` (machine code for
//! compute capability 9.x: H100/H200), `$OUT_DIR/<stem>.sm90.ptx` and `$OUT_DIR/<stem>.sm80.ptx`.
//! [`ptx!`](crate::cuda::ptx) embeds all three and [`load`] picks one for the device: the cubin
//! on compute capability 9.x (no JIT at all; if the driver refuses it, the sm90 PTX, with a
//! warning), the sm90 PTX from 10.0 up (the driver JIT-compiles it, once, into its cache:
//! `CUDA_CACHE_PATH`, by default `~/.nv/ComputeCache`), the sm80 PTX on 8.x, an error below 8.0. Modules are loaded through
//! the device's cudarc context, once per device and kernel file, and kept in a cache of our
//! own (candle's `get_or_load_custom_func` takes PTX text only, no binary image); kernels run
//! on candle's stream, in order with its own kernels and cuBLAS calls.
//!
//! The exception: a Hopper-only file `kernels/<stem>_sm90.cu` is built once, to
//! `$OUT_DIR/<stem>_sm90.sm90a.cubin`; [`cubin_sm90a!`](crate::cuda::cubin_sm90a) embeds it and
//! [`load_sm90a`] loads it on compute capability 9.x only (an error elsewhere).
//!
//! A wrapper (one file per operation) has the signature of the CPU operation of the same name
//! and is called by it when the input lives on a CUDA device in a supported dtype; the CPU
//! (candle tensor-op) code stays the reference that `limo doctor` checks the kernels against.
//!
//! Typical wrapper body:
//! ```ignore
//! static PTX: Ptx = ptx!("rms_norm");
//! let dev = cuda_device(x)?;                         // the tensor's CudaDevice
//! let (xs, xl) = x.storage_and_layout();
//! let x_view = view::<bf16>(&xs, xl)?;               // contiguous view, checked
//! let mut y = unsafe { alloc::<bf16>(&dev, n) }?;    // every element written by the kernel
//! let f = load(&dev, &PTX, "rms_norm_fwd_bf16")?;
//! let mut b = f.builder();
//! b.arg(&x_view).arg(&mut y).arg(&n_i32);
//! unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
//! let y = to_tensor(y, &dev, (rows, cols))?;
//! ```

pub mod accumulate;
pub mod adamw;
pub mod cross_entropy;
pub mod decode_attention;
pub mod embedding;
pub mod jit;
mod launch;
pub mod offload;
pub mod rms_norm;
pub mod rope;
pub mod sum_squares;
pub mod swiglu;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, LaunchArgs,
    LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Layout, Result, Shape, Storage, Tensor};

/// A loaded kernel function and the stream (candle's) it launches on.
pub struct CudaFunc {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl std::ops::Deref for CudaFunc {
    type Target = CudaFunction;

    /// The function itself, e.g. for `set_attribute` (more dynamic shared memory).
    fn deref(&self) -> &CudaFunction {
        &self.func
    }
}

impl CudaFunc {
    /// Arguments of one launch, to be pushed in the kernel's parameter order.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

pub mod flash_attention;
pub mod flash_attention_bwd_sm90;
pub mod flash_attention_sm90;
pub mod flash_path_check;
pub mod pool;

/// The three builds of one kernel file (the name `Ptx` predates the cubin).
pub struct Ptx {
    /// The file stem (unique per kernel file): the module's key in the cache.
    pub name: &'static str,
    /// PTX for `-arch=sm_80` (A100 and any 8.x).
    pub sm80: &'static str,
    /// PTX for `-arch=sm_90`, JIT-compiled by the driver on 10.0 and newer, and the fallback
    /// should a 9.x driver refuse the cubin.
    pub sm90: &'static str,
    /// Machine code for `-arch=sm_90` (H100/H200, any 9.x), loaded as is.
    pub sm90_cubin: &'static [u8],
}

/// `ptx!("stem")`: the [`Ptx`] of `kernels/stem.cu`, embedded at compile time.
macro_rules! ptx {
    ($stem:literal) => {
        $crate::cuda::Ptx {
            name: $stem,
            sm80: include_str!(concat!(env!("OUT_DIR"), "/", $stem, ".sm80.ptx")),
            sm90: include_str!(concat!(env!("OUT_DIR"), "/", $stem, ".sm90.ptx")),
            sm90_cubin: include_bytes!(concat!(env!("OUT_DIR"), "/", $stem, ".sm90.cubin")),
        }
    };
}
pub(crate) use ptx;

/// The one build of a Hopper-only kernel file (`kernels/<stem>_sm90.cu`): an `sm_90a` cubin
/// (wgmma, TMA and setmaxnreg have no PTX that runs on other architectures; see `build.rs`).
pub struct Sm90aCubin {
    /// The file stem: the module's key in the cache.
    pub name: &'static str,
    /// Machine code for `-arch=sm_90a`, loadable on compute capability 9.x only.
    pub cubin: &'static [u8],
}

/// `cubin_sm90a!("stem_sm90")`: the [`Sm90aCubin`] of `kernels/stem_sm90.cu`, embedded at
/// compile time.
macro_rules! cubin_sm90a {
    ($stem:literal) => {
        $crate::cuda::Sm90aCubin {
            name: $stem,
            cubin: include_bytes!(concat!(env!("OUT_DIR"), "/", $stem, ".sm90a.cubin")),
        }
    };
}
pub(crate) use cubin_sm90a;

/// Whether this device runs `sm_90a` cubins (compute capability 9.x).
pub fn runs_sm90a(dev: &CudaDevice) -> Result<bool> {
    let (major, _minor) = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(wrap)?;
    Ok(major == 9)
}

/// Function `fn_name` of the Hopper-only kernel file `image`, its module loaded once per device
/// (the same cache as [`load`]); an error on any GPU that is not compute capability 9.x.
pub(crate) fn load_sm90a(dev: &CudaDevice, image: &Sm90aCubin, fn_name: &str) -> Result<CudaFunc> {
    if !runs_sm90a(dev)? {
        bail!(
            "kernels/{}.cu is built for sm_90a only (H100/H200, compute capability 9.x); this GPU \
             cannot run it",
            image.name
        )
    }
    let mut guard = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    let modules = guard.get_or_insert_with(HashMap::new);
    let loaded = match modules.entry((dev.id(), image.name)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let ctx = dev.cuda_stream().context().clone();
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image.cubin.to_vec()))
                .map_err(|err| wrap(format!("kernels/{}.cu: sm_90a cubin: {err}", image.name)))?;
            e.insert(LoadedModule {
                module,
                funcs: HashMap::new(),
            })
        }
    };
    let func = match loaded.funcs.get(fn_name) {
        Some(f) => f.clone(),
        None => {
            let f = loaded.module.load_function(fn_name).map_err(|e| {
                wrap(format!(
                    "kernels/{}.cu: function {fn_name}: {e}",
                    image.name
                ))
            })?;
            loaded.funcs.insert(fn_name.to_string(), f.clone());
            f
        }
    };
    Ok(CudaFunc {
        func,
        stream: dev.cuda_stream(),
    })
}

/// A candle error from anything printable (driver errors, launch failures).
pub(crate) fn wrap(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

/// Which build of the kernels a device loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// The sm_90 cubin: compute capability 9.x, no JIT.
    Sm90Cubin,
    /// The sm_90 PTX, JIT-compiled by the driver: 10.0 and newer.
    Sm90Ptx,
    /// The sm_80 PTX, JIT-compiled by the driver: 8.x.
    Sm80Ptx,
}

impl std::fmt::Display for KernelImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelImage::Sm90Cubin => "sm90 cubin",
            KernelImage::Sm90Ptx => "sm90 PTX",
            KernelImage::Sm80Ptx => "sm80 PTX",
        })
    }
}

/// The build for a compute capability: the cubin on 9.x, sm90 PTX from 10.0 up, sm80 PTX on
/// 8.x; below 8.0 is an error (the kernels use bf16 `mma.sync`).
pub fn kernel_image_for(major: i32) -> Result<KernelImage> {
    match major {
        ..=7 => {
            bail!("limo's kernels need compute capability 8.0 or newer, this GPU has {major}.x")
        }
        8 => Ok(KernelImage::Sm80Ptx),
        9 => Ok(KernelImage::Sm90Cubin),
        _ => Ok(KernelImage::Sm90Ptx),
    }
}

/// The build of the kernels this device loads (see [`kernel_image_for`]).
pub fn kernel_image(dev: &CudaDevice) -> Result<KernelImage> {
    let (major, _minor) = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(wrap)?;
    kernel_image_for(major)
}

/// One loaded kernel file on one device, and the functions taken from it so far.
struct LoadedModule {
    module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
}

/// Modules loaded so far, by (device, kernel file). Kept for the life of the process, like
/// candle's own per-device module cache (a module holds its context alive).
static MODULES: Mutex<Option<HashMap<(DeviceId, &'static str), LoadedModule>>> = Mutex::new(None);

/// Loads the build of `ptx` for this device into its context: the cubin on 9.x (falling back
/// to the sm90 PTX, with a warning on stderr, if the driver refuses it), else the PTX.
fn load_module(dev: &CudaDevice, ptx: &Ptx) -> Result<Arc<CudaModule>> {
    let ctx = dev.cuda_stream().context().clone();
    match kernel_image(dev)? {
        KernelImage::Sm90Cubin => {
            let image = cudarc::nvrtc::Ptx::from_binary(ptx.sm90_cubin.to_vec());
            match ctx.load_module(image) {
                Ok(module) => Ok(module),
                Err(e) => {
                    eprintln!(
                        "warning: kernels/{}.cu: the driver refused the sm_90 cubin ({e}); \
                         JIT-compiling the sm_90 PTX instead",
                        ptx.name
                    );
                    ctx.load_module(ptx.sm90.into()).map_err(wrap)
                }
            }
        }
        KernelImage::Sm90Ptx => ctx.load_module(ptx.sm90.into()).map_err(wrap),
        KernelImage::Sm80Ptx => ctx.load_module(ptx.sm80.into()).map_err(wrap),
    }
}

/// Function `fn_name` of the kernel file `ptx`, its module loaded once per device.
pub(crate) fn load(dev: &CudaDevice, ptx: &Ptx, fn_name: &str) -> Result<CudaFunc> {
    let mut guard = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    let modules = guard.get_or_insert_with(HashMap::new);
    let loaded = match modules.entry((dev.id(), ptx.name)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(LoadedModule {
            module: load_module(dev, ptx)?,
            funcs: HashMap::new(),
        }),
    };
    let func = match loaded.funcs.get(fn_name) {
        Some(f) => f.clone(),
        None => {
            let f = loaded
                .module
                .load_function(fn_name)
                .map_err(|e| wrap(format!("kernels/{}.cu: function {fn_name}: {e}", ptx.name)))?;
            loaded.funcs.insert(fn_name.to_string(), f.clone());
            f
        }
    };
    Ok(CudaFunc {
        func,
        stream: dev.cuda_stream(),
    })
}

/// The CUDA device `t` lives on, or an error for any other device.
pub(crate) fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    Ok(t.device().as_cuda_device()?.clone())
}

/// Whether `t` is on a CUDA device with a dtype in `dtypes`: the dispatch test of the ops.
pub(crate) fn runs_on_kernel(t: &Tensor, dtypes: &[DType]) -> bool {
    t.device().is_cuda() && dtypes.contains(&t.dtype())
}

/// Element types our kernels are instantiated for; `SUFFIX` ends the exported function name
/// (`rms_norm_fwd_bf16`, `rms_norm_fwd_f32`).
pub(crate) trait KernelType:
    CudaDType + DeviceRepr + ValidAsZeroBits + Copy + 'static
{
    const SUFFIX: &'static str;
}

impl KernelType for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

impl KernelType for f32 {
    const SUFFIX: &'static str = "f32";
}

/// `base_<suffix>`, the name of the instantiation of kernel `base` for `T`.
pub(crate) fn kernel_name<T: KernelType>(base: &str) -> String {
    format!("{base}_{}", T::SUFFIX)
}

/// A view of the elements of a contiguous tensor's storage (its offset applied). Errors for
/// non-contiguous layouts: the kernels index rows directly.
pub(crate) fn view<'a, T: CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(cs) = storage else {
        bail!("expected a tensor on a CUDA device");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("the CUDA kernels need contiguous tensors (layout {layout:?})");
    };
    Ok(cs.as_cuda_slice::<T>()?.slice(start..end))
}

/// Whether [`alloc`] fills new buffers with NaN (see [`set_poison_outputs`]).
static POISON: AtomicBool = AtomicBool::new(false);

/// With `on`, every output buffer the kernels allocate is filled with NaN (all bits set, a NaN
/// in f32 and bf16) before the kernel runs, so an element a kernel forgets to write shows up
/// in `limo doctor`'s NaN check instead of passing with whatever memory held. Costs a memset
/// per output: for checking, not training.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// An uninitialised device buffer of `len` elements (NaN-filled when poisoning is on).
///
/// # Safety
/// The caller must write every element (a kernel does) before it is read.
pub(crate) unsafe fn alloc<T: KernelType>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    let slice = dev.alloc::<T>(len)?;
    if POISON.load(Ordering::Relaxed) {
        let stream = dev.cuda_stream();
        let (ptr, _sync) = slice.device_ptr(&stream);
        // SAFETY: the range is exactly the allocation, on the stream that will use it.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                ptr,
                0xFF,
                len * std::mem::size_of::<T>(),
                stream.cu_stream(),
            )
        }
        .map_err(wrap)?;
    }
    Ok(slice)
}

/// A zero-filled device buffer of `len` elements (accumulators, atomics).
pub(crate) fn zeros<T: KernelType>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    dev.alloc_zeros::<T>(len)
}

/// A contiguous tensor of `shape` owning `slice` (no copy).
pub(crate) fn to_tensor<T: CudaDType + DeviceRepr>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Result<Tensor> {
    let shape = shape.into();
    if shape.elem_count() != slice.len() {
        bail!("buffer of {} elements for shape {shape:?}", slice.len());
    }
    let storage = CudaStorage::wrap_cuda_slice(slice, dev.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        BackpropOp::none(),
        false,
    ))
}

/// `n` as the `int` most kernels take for sizes, refusing sizes that would overflow it.
pub(crate) fn as_i32(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| wrap(format!("{what} = {n} does not fit the kernels' int32")))
}

/// One thread per element: `ceil(n / block)` blocks of `block` threads, at most the grid's
/// 2^31 - 1 in x (the kernels launched this way loop grid-stride over the rest).
pub(crate) fn grid_1d(n: usize, block: u32) -> LaunchConfig {
    let blocks = n.div_ceil(block as usize).max(1);
    LaunchConfig {
        grid_dim: (blocks.min(i32::MAX as usize) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `block` threads per row.
pub(crate) fn grid_rows(rows: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}
