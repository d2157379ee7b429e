//! `acc += x` and `dst = x` in place on the GPU (`kernels/accumulate.cu`): f32 `acc` / `dst`
//! (a contiguous view: a slot of a larger buffer is fine), bf16 or f32 `x`.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};

use super::launch::{by_dtype, inputs};
use super::{cuda_device, grid_1d, kernel_name, load, ptx, wrap, KernelType, Ptx};

static PTX: Ptx = ptx!("accumulate");

/// Adds `x` to `acc` element by element, writing `acc`'s storage: every view of it sees the
/// sum, so the caller must own it (a tensor it made, not shared). Contiguous f32 `acc`, `x` of
/// the same element count in bf16 or f32, on the same GPU.
pub fn add_into(acc: &Tensor, x: &Tensor) -> Result<()> {
    by_dtype!(x.dtype(), "add_into kernel", run(acc, x, "add_into_f32"))
}

/// A new f32 buffer of `len` elements for [`cast_into`] to fill (NaN under `limo doctor`'s
/// poisoning, like every kernel output, so an element left unwritten shows).
pub fn uninit_f32(device: &candle_core::Device, len: usize) -> Result<Tensor> {
    let dev = device.as_cuda_device()?;
    // SAFETY: the caller writes every element before it is read.
    let buf = unsafe { super::alloc::<f32>(dev, len)? };
    super::to_tensor(buf, dev, len)
}

/// Writes `x`, converted to f32, into `dst`'s storage (the same contract as [`add_into`]).
pub fn cast_into(dst: &Tensor, x: &Tensor) -> Result<()> {
    by_dtype!(x.dtype(), "cast_into kernel", run(dst, x, "cast_into_f32"))
}

fn run<T: KernelType>(acc: &Tensor, x: &Tensor, kernel: &str) -> Result<()> {
    if acc.dtype() != DType::F32
        || !acc.is_contiguous()
        || acc.elem_count() != x.elem_count()
        || !acc.device().same_device(x.device())
    {
        bail!(
            "{kernel} kernel: acc {:?} {:?} and x {:?} {:?}",
            acc.dims(),
            acc.dtype(),
            x.dims(),
            x.dtype()
        );
    }
    let dev = cuda_device(acc)?;
    let x = x.contiguous()?;
    let [acc_in, x_in] = inputs([acc, &x]);
    let (av, xv) = (acc_in.view::<f32>()?, x_in.view::<T>()?);
    let n = acc.elem_count();
    let f = load(&dev, &PTX, &kernel_name::<T>(kernel))?;
    let mut b = f.builder();
    b.arg(&av).arg(&xv).arg(&n);
    // SAFETY: argument types and order match add_into_f32 / cast_into_f32 (size_t n); acc is
    // written through its storage, which the caller owns (documented above), as the AdamW
    // kernel writes its state.
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    Ok(())
}
