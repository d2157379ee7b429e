//! SwiGLU on the GPU (`kernels/swiglu.cu`), the signatures of [`crate::swiglu_forward`] and
//! [`crate::swiglu_backward`].

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};

use super::launch::{by_dtype, inputs};
use super::{alloc, cuda_device, grid_1d, kernel_name, load, ptx, to_tensor, wrap};
use super::{KernelType, Ptx};

static PTX: Ptx = ptx!("swiglu");

/// Same dtype (bf16 or f32) and shape for every input.
pub(crate) fn supported(tensors: &[&Tensor]) -> bool {
    let first = tensors[0];
    super::runs_on_kernel(first, &[DType::BF16, DType::F32])
        && tensors
            .iter()
            .all(|t| t.dtype() == first.dtype() && t.dims() == first.dims())
}

/// See [`crate::swiglu_forward`].
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    by_dtype!(gate.dtype(), "swiglu kernel", forward(gate, up))
}

/// See [`crate::swiglu_backward`].
pub fn swiglu_backward(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    by_dtype!(gate.dtype(), "swiglu kernel", backward(dh, gate, up))
}

fn check(tensors: &[&Tensor]) -> Result<()> {
    if !supported(tensors) {
        let shapes: Vec<_> = tensors.iter().map(|t| (t.dims(), t.dtype())).collect();
        bail!("swiglu kernel: inputs must share shape and dtype, got {shapes:?}");
    }
    Ok(())
}

fn forward<T: KernelType>(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check(&[gate, up])?;
    let dev = cuda_device(gate)?;
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let [gate_in, up_in] = inputs([&gate, &up]);
    let (gv, uv) = (gate_in.view::<T>()?, up_in.view::<T>()?);
    let n = gate.elem_count();
    // SAFETY: the kernel writes every element.
    let mut h = unsafe { alloc::<T>(&dev, n) }?;
    let f = load(&dev, &PTX, &kernel_name::<T>("swiglu_fwd"))?;
    let mut b = f.builder();
    b.arg(&gv).arg(&uv).arg(&mut h).arg(&n);
    // SAFETY: argument types and order match swiglu_fwd (size_t n).
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    to_tensor(h, &dev, gate.dims())
}

fn backward<T: KernelType>(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    check(&[dh, gate, up])?;
    let dev = cuda_device(gate)?;
    let (dh, gate, up) = (dh.contiguous()?, gate.contiguous()?, up.contiguous()?);
    let [dh_in, gate_in, up_in] = inputs([&dh, &gate, &up]);
    let (dv, gv, uv) = (dh_in.view::<T>()?, gate_in.view::<T>()?, up_in.view::<T>()?);
    let n = gate.elem_count();
    // SAFETY: the kernel writes every element of both outputs.
    let mut dg = unsafe { alloc::<T>(&dev, n) }?;
    let mut du = unsafe { alloc::<T>(&dev, n) }?;
    let f = load(&dev, &PTX, &kernel_name::<T>("swiglu_bwd"))?;
    let mut b = f.builder();
    b.arg(&dv)
        .arg(&gv)
        .arg(&uv)
        .arg(&mut dg)
        .arg(&mut du)
        .arg(&n);
    // SAFETY: argument types and order match swiglu_bwd (size_t n).
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    Ok((
        to_tensor(dg, &dev, gate.dims())?,
        to_tensor(du, &dev, gate.dims())?,
    ))
}
