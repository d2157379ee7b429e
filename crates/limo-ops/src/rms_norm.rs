//! RMSNorm as Qwen2 defines it: `y = w * (x / sqrt(mean(x^2) + eps))`, statistics in f32.

use candle_core::{Result, Tensor, D};

use crate::upcast;

/// Forward over the last dimension. Returns `y` (input dtype) and `rstd = 1/sqrt(mean(x^2)+eps)`
/// per row (compute dtype, shape `[.., 1]`), which the backward needs.
pub fn rms_norm_forward(x: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rms_norm::supported(x, weight) {
        return crate::cuda::rms_norm::rms_norm_forward(x, weight, eps);
    }
    let xc = upcast(x)?;
    let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    // transformers rounds the normalized value to the input dtype before the weight multiply.
    let normed = xc.broadcast_mul(&rstd)?.to_dtype(x.dtype())?;
    let y = normed.broadcast_mul(&weight.to_dtype(x.dtype())?)?;
    Ok((y, rstd))
}

/// `s = x + residual` and [`rms_norm_forward`] of `s`: `(s, y, rstd)`, a decoder layer's
/// residual stream and its norm (`x1 = x + attention`, then the MLP's input norm). On a GPU one
/// kernel (`add_rms_norm_fwd` in `kernels/rms_norm.cu`, one pass over the rows instead of two)
/// with the same bits as candle's add and the forward kernel.
pub fn add_rms_norm_forward(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rms_norm::supported(x, weight) && residual.dtype() == x.dtype() {
        return crate::cuda::rms_norm::add_rms_norm_forward(x, residual, weight, eps);
    }
    let sum = (x + residual)?;
    let (y, rstd) = rms_norm_forward(&sum, weight, eps)?;
    Ok((sum, y, rstd))
}

/// Backward: with `n = x * rstd`, `dw = sum_rows(dy * n)` and
/// `dx = rstd * (dy*w - n * mean(dy*w*n))`. `dx` comes in the dtype of `x`, `dw` in the compute
/// dtype (fp32 for bf16): it sums over every token, and the optimizer adds it up in fp32.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rms_norm::supported(x, weight) && dy.dtype() == x.dtype() {
        return crate::cuda::rms_norm::rms_norm_backward(dy, x, weight, rstd);
    }
    let xc = upcast(x)?;
    let dyc = upcast(dy)?;
    let wc = upcast(weight)?;
    let normed = xc.broadcast_mul(rstd)?;
    let rows = normed.elem_count() / normed.dim(D::Minus1)?;
    let hidden = normed.dim(D::Minus1)?;
    let dw = (&dyc * &normed)?.reshape((rows, hidden))?.sum(0)?;
    let dyw = dyc.broadcast_mul(&wc)?;
    let proj = (&dyw * &normed)?.mean_keepdim(D::Minus1)?;
    let dx = (dyw - normed.broadcast_mul(&proj)?)?.broadcast_mul(rstd)?;
    Ok((dx.to_dtype(x.dtype())?, dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::{Device, Var};

    #[test]
    fn backward_matches_autograd_f64() -> Result<()> {
        let dev = Device::Cpu;
        let x = rand_tensor(&[5, 3, 16], 1, &dev)?;
        let w = (rand_tensor(&[16], 2, &dev)? + 1.0)?;
        let dy = rand_tensor(&[5, 3, 16], 3, &dev)?;
        let (y, rstd) = rms_norm_forward(&x, &w, 1e-6)?;
        let (dx, dw) = rms_norm_backward(&dy, &x, &w, &rstd)?;

        let (grads, y_ref) = autograd(&[&x, &w], &dy, |v: &[Var]| {
            let x = v[0].as_tensor();
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
            x.broadcast_div(&r)?.broadcast_mul(v[1].as_tensor())
        })?;
        assert_close(&y, &y_ref, 1e-13, "y")?;
        assert_close(&dx, &grads[0], 1e-12, "dx")?;
        assert_close(&dw, &grads[1], 1e-12, "dw")?;
        Ok(())
    }
}
