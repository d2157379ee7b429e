//! RMSNorm on the GPU (`kernels/rms_norm.cu`), the signatures of [`crate::rms_norm`].

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor, D};

use super::launch::{by_dtype, inputs};
use super::{alloc, as_i32, cuda_device, grid_1d, grid_rows, kernel_name, load, ptx, to_tensor};
use super::{wrap, KernelType, Ptx};

static PTX: Ptx = ptx!("rms_norm");
/// Threads per row: hidden sizes are 896 to 8192, so each thread handles 4 to 32 elements.
const BLOCK: u32 = 256;
/// Blocks of the backward; each owns one row of dw partial sums. A constant (not the SM count)
/// so that dw is summed in the same order, and thus bit-identical, on every GPU. 1024 (16 rows
/// each at 16k tokens, ~8 blocks per SM) rather than 256: a block walks its rows one after the
/// other, two barriers each, so fewer blocks left the backward waiting on latency; the partial
/// rows cost 4 KiB per block per 1024 of hidden.
const BWD_BLOCKS: usize = 1024;

/// Whether the kernels take these inputs (else the tensor-op reference runs).
pub(crate) fn supported(x: &Tensor, weight: &Tensor) -> bool {
    super::runs_on_kernel(x, &[DType::BF16, DType::F32]) && weight.dtype() == x.dtype()
}

/// See [`crate::rms_norm_forward`]; `rstd` is f32 `[.., 1]`.
pub fn rms_norm_forward(x: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (_, y, rstd) = by_dtype!(x.dtype(), "rms_norm kernel", forward(x, None, weight, eps))?;
    Ok((y, rstd))
}

/// See [`crate::rms_norm::add_rms_norm_forward`]: `(x + residual, y, rstd)` in one kernel.
pub fn add_rms_norm_forward(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (sum, y, rstd) = by_dtype!(
        x.dtype(),
        "rms_norm kernel",
        forward(x, Some(residual), weight, eps)
    )?;
    match sum {
        Some(sum) => Ok((sum, y, rstd)),
        None => bail!("rms_norm kernel: the residual sum was not written"),
    }
}

/// See [`crate::rms_norm_backward`].
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    by_dtype!(x.dtype(), "rms_norm kernel", backward(dy, x, weight, rstd))
}

/// `(rows, hidden)` of `x`, checking `weight` is `[hidden]` of the same dtype.
fn dims(x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let hidden = x.dim(D::Minus1)?;
    if weight.dims() != [hidden] || weight.dtype() != x.dtype() {
        bail!(
            "rms_norm kernel: weight {:?} {:?} for x {:?} {:?}",
            weight.dims(),
            weight.dtype(),
            x.dims(),
            x.dtype()
        );
    }
    Ok((x.elem_count() / hidden.max(1), hidden))
}

/// The forward of `x`, or with `residual` of `x + residual` (also returned, first).
fn forward<T: KernelType>(
    x: &Tensor,
    residual: Option<&Tensor>,
    weight: &Tensor,
    eps: f64,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let dev = cuda_device(x)?;
    let (rows, hidden) = dims(x, weight)?;
    if let Some(r) = residual {
        if r.dims() != x.dims() || r.dtype() != x.dtype() || !r.device().same_device(x.device()) {
            bail!(
                "rms_norm kernel: residual {:?} {:?} for x {:?} {:?}",
                r.dims(),
                r.dtype(),
                x.dims(),
                x.dtype()
            );
        }
    }
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    // Without a residual, x stands in for it (never read).
    let r = match residual {
        Some(r) => r.contiguous()?,
        None => x.clone(),
    };
    let [x_in, r_in, weight_in] = inputs([&x, &r, &weight]);
    let (xv, rv, wv) = (x_in.view::<T>()?, r_in.view::<T>()?, weight_in.view::<T>()?);
    // SAFETY: the kernel writes every element of y and of the sum (all of each row) and rstd
    // (one per row).
    let mut y = unsafe { alloc::<T>(&dev, rows * hidden) }?;
    let mut sum = match residual {
        Some(_) => Some(unsafe { alloc::<T>(&dev, rows * hidden) }?),
        None => None,
    };
    let mut rstd = unsafe { alloc::<f32>(&dev, rows) }?;
    let (rows_i, hidden_i) = (as_i32(rows, "rows")?, as_i32(hidden, "hidden")?);
    let eps = eps as f32;
    let name = if residual.is_some() {
        "add_rms_norm_fwd"
    } else {
        "rms_norm_fwd"
    };
    let f = load(&dev, &PTX, &kernel_name::<T>(name))?;
    let mut b = f.builder();
    b.arg(&xv);
    if let Some(sum) = sum.as_mut() {
        b.arg(&rv).arg(&wv).arg(sum);
    } else {
        b.arg(&wv);
    }
    b.arg(&mut y)
        .arg(&mut rstd)
        .arg(&rows_i)
        .arg(&hidden_i)
        .arg(&eps);
    // SAFETY: argument types and order match rms_norm_fwd_* (x, w, y, rstd, ..) and
    // add_rms_norm_fwd_* (x, res, w, sum, y, rstd, ..) in kernels/rms_norm.cu.
    unsafe { b.launch(grid_rows(rows, BLOCK)) }.map_err(wrap)?;
    drop(b);
    let mut rstd_shape = x.dims().to_vec();
    *rstd_shape.last_mut().expect("x has a last dimension") = 1;
    let sum = match sum {
        Some(sum) => Some(to_tensor(sum, &dev, x.dims())?),
        None => None,
    };
    Ok((
        sum,
        to_tensor(y, &dev, x.dims())?,
        to_tensor(rstd, &dev, rstd_shape)?,
    ))
}

fn backward<T: KernelType>(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(x)?;
    let (rows, hidden) = dims(x, weight)?;
    if dy.dims() != x.dims() || dy.dtype() != x.dtype() || rstd.elem_count() != rows {
        bail!(
            "rms_norm kernel: dy {:?} {:?}, rstd {:?} for x {:?}",
            dy.dims(),
            dy.dtype(),
            rstd.dims(),
            x.dims()
        );
    }
    let (dy, x, weight) = (dy.contiguous()?, x.contiguous()?, weight.contiguous()?);
    let rstd = rstd.to_dtype(DType::F32)?.contiguous()?;
    let [dy_in, x_in, weight_in, rstd_in] = inputs([&dy, &x, &weight, &rstd]);
    let (dyv, xv) = (dy_in.view::<T>()?, x_in.view::<T>()?);
    let (wv, rv) = (weight_in.view::<T>()?, rstd_in.view::<f32>()?);
    let parts = BWD_BLOCKS.min(rows.max(1));
    // SAFETY: the kernels write all of dx, all of every partial row (zeroed first) and all of dw.
    let mut dx = unsafe { alloc::<T>(&dev, rows * hidden) }?;
    let mut partial = unsafe { alloc::<f32>(&dev, parts * hidden) }?;
    let mut dw = unsafe { alloc::<f32>(&dev, hidden) }?;
    let (rows_i, hidden_i, parts_i) = (
        as_i32(rows, "rows")?,
        as_i32(hidden, "hidden")?,
        as_i32(parts, "parts")?,
    );
    let f = load(&dev, &PTX, &kernel_name::<T>("rms_norm_bwd"))?;
    let mut b = f.builder();
    b.arg(&dyv)
        .arg(&xv)
        .arg(&wv)
        .arg(&rv)
        .arg(&mut dx)
        .arg(&mut partial)
        .arg(&rows_i)
        .arg(&hidden_i);
    // SAFETY: argument types and order match rms_norm_bwd; grid = parts blocks.
    unsafe { b.launch(grid_rows(parts, BLOCK)) }.map_err(wrap)?;
    let f = load(&dev, &PTX, "rms_norm_dw_reduce")?;
    let mut b = f.builder();
    b.arg(&partial).arg(&mut dw).arg(&parts_i).arg(&hidden_i);
    // SAFETY: argument types and order match rms_norm_dw_reduce; one thread per column.
    unsafe { b.launch(grid_1d(hidden, BLOCK)) }.map_err(wrap)?;
    Ok((to_tensor(dx, &dev, x.dims())?, to_tensor(dw, &dev, hidden)?))
}
