//! The squared L2 norm on the GPU (`kernels/sum_squares.cu`): the CUDA form of
//! [`crate::sum_of_squares_tensor`], a `[1]` f64 tensor on the device.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{DType, Result, Tensor};

use super::launch::{by_dtype, inputs};
use super::{cuda_device, kernel_name, load, ptx, to_tensor, wrap, KernelType, Ptx};

static PTX: Ptx = ptx!("sum_squares");
/// Threads per block (`LIMO_SUM_SQ_THREADS`).
const THREADS: u32 = 256;
/// Blocks of the first pass: a constant, so that the sum is added in the same order (and is
/// the same to the bit) on every GPU; ~8 per SM of an H200, each reading 4 bytes per thread per
/// step of its grid stride.
const PARTS: u32 = 1024;

/// bf16 or f32 on a CUDA device.
pub(crate) fn supported(t: &Tensor) -> bool {
    super::runs_on_kernel(t, &[DType::BF16, DType::F32])
}

/// See [`crate::sum_of_squares_tensor`].
pub fn sum_of_squares(t: &Tensor) -> Result<Tensor> {
    by_dtype!(t.dtype(), "sum of squares kernel", run(t))
}

fn run<T: KernelType>(t: &Tensor) -> Result<Tensor> {
    let dev = cuda_device(t)?;
    let t = t.contiguous()?;
    let [t_in] = inputs([&t]);
    let tv = t_in.view::<T>()?;
    let n = t.elem_count();
    // SAFETY: every block writes its partial, the reduce writes the one output.
    let mut partial = unsafe { dev.alloc::<f64>(PARTS as usize) }?;
    let mut out = unsafe { dev.alloc::<f64>(1) }?;
    let f = load(&dev, &PTX, &kernel_name::<T>("sum_squares_partial"))?;
    let mut b = f.builder();
    b.arg(&tv).arg(&n).arg(&mut partial);
    let cfg = |blocks| LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match sum_squares_partial (size_t n); PARTS blocks of
    // THREADS, as the kernel's tree assumes.
    unsafe { b.launch(cfg(PARTS)) }.map_err(wrap)?;
    let f = load(&dev, &PTX, "sum_squares_reduce")?;
    let mut b = f.builder();
    let parts = PARTS as i32;
    b.arg(&partial).arg(&parts).arg(&mut out);
    // SAFETY: argument types and order match sum_squares_reduce; one block of THREADS.
    unsafe { b.launch(cfg(1)) }.map_err(wrap)?;
    to_tensor(out, &dev, 1)
}
