//! RoPE on the GPU (`kernels/rope.cu`), the signatures of [`crate::rope_forward`] and
//! [`crate::rope_backward`].

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};
use half::bf16;

use super::launch::inputs;
use super::{alloc, as_i32, cuda_device, grid_1d, load, ptx, to_tensor, wrap, KernelType};
use crate::RopeTables;

static PTX: Ptx = ptx!("rope");
use super::Ptx;

/// The kernels exist for tables of the activations' dtype (bf16 or f32), as the reference.
pub(crate) fn supported(x: &Tensor, tables: &RopeTables) -> bool {
    let tab = tables.cos.dtype();
    super::runs_on_kernel(x, &[DType::BF16, DType::F32])
        && tables.sin.dtype() == tab
        && tab == x.dtype()
}

/// See [`crate::rope_forward`].
pub fn rope_forward(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    dispatch(x, tables, "rope_fwd")
}

/// See [`crate::rope_backward`].
pub fn rope_backward(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    dispatch(dy, tables, "rope_bwd")
}

fn dispatch(x: &Tensor, tables: &RopeTables, base: &str) -> Result<Tensor> {
    match (x.dtype(), tables.cos.dtype()) {
        (DType::BF16, DType::BF16) => run::<bf16, bf16>(x, tables, base),
        (DType::F32, DType::F32) => run::<f32, f32>(x, tables, base),
        (a, b) => bail!("rope kernel: no instantiation for x {a:?} with tables {b:?}"),
    }
}

fn run<T: KernelType, C: KernelType>(
    x: &Tensor,
    tables: &RopeTables,
    base: &str,
) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let (tokens, heads, head_dim) = x.dims3()?;
    if tables.cos.dims() != [tokens, head_dim] || tables.sin.dims() != [tokens, head_dim] {
        bail!(
            "rope kernel: tables {:?} for x {:?}",
            tables.cos.dims(),
            x.dims()
        );
    }
    if head_dim % 2 != 0 {
        bail!("rope kernel: odd head_dim {head_dim}");
    }
    let (x, cos, sin) = (
        x.contiguous()?,
        tables.cos.contiguous()?,
        tables.sin.contiguous()?,
    );
    let [x_in, cos_in, sin_in] = inputs([&x, &cos, &sin]);
    let (xv, cv, sv) = (x_in.view::<T>()?, cos_in.view::<C>()?, sin_in.view::<C>()?);
    let n = x.elem_count();
    // SAFETY: the kernel writes every element (grid-stride loop over all of them).
    let mut y = unsafe { alloc::<T>(&dev, n) }?;
    let name = format!("{base}_{}_{}", T::SUFFIX, C::SUFFIX);
    let f = load(&dev, &PTX, &name)?;
    let (t_i, h_i, d_i) = (
        as_i32(tokens, "tokens")?,
        as_i32(heads, "heads")?,
        as_i32(head_dim, "head_dim")?,
    );
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&cv)
        .arg(&sv)
        .arg(&mut y)
        .arg(&t_i)
        .arg(&h_i)
        .arg(&d_i);
    // SAFETY: argument types and order match rope_{fwd,bwd} in kernels/rope.cu.
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    to_tensor(y, &dev, x.dims())
}
