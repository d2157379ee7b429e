//! SwiGLU, the gate of Qwen2's MLP: `h = silu(g) * u`.

use candle_core::{Result, Tensor};

use crate::upcast;

/// `h = silu(g) * u` with `silu(g) = g * sigmoid(g)`.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::swiglu::supported(&[gate, up]) {
        return crate::cuda::swiglu::swiglu_forward(gate, up);
    }
    let g = upcast(gate)?;
    let silu = (&g * sigmoid(&g)?)?;
    (silu * upcast(up)?)?.to_dtype(gate.dtype())
}

/// `dg = dh * u * s * (1 + g * (1 - s))`, `du = dh * silu(g)`, with `s = sigmoid(g)`.
pub fn swiglu_backward(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::swiglu::supported(&[dh, gate, up]) {
        return crate::cuda::swiglu::swiglu_backward(dh, gate, up);
    }
    let g = upcast(gate)?;
    let u = upcast(up)?;
    let dh = upcast(dh)?;
    let s = sigmoid(&g)?;
    let silu = (&g * &s)?;
    let dsilu = (&s * ((&g * (1.0 - &s)?)? + 1.0)?)?;
    let dg = ((&dh * &u)? * dsilu)?;
    let du = (&dh * silu)?;
    Ok((dg.to_dtype(gate.dtype())?, du.to_dtype(up.dtype())?))
}

/// `1 / (1 + exp(-x))`, from basic ops so that it runs on every device and dtype.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::{Device, Var};

    #[test]
    fn backward_matches_autograd_f64() -> Result<()> {
        let dev = Device::Cpu;
        let g = (rand_tensor(&[7, 12], 7, &dev)? * 4.0)?;
        let u = rand_tensor(&[7, 12], 8, &dev)?;
        let dh = rand_tensor(&[7, 12], 9, &dev)?;
        let h = swiglu_forward(&g, &u)?;
        let (dg, du) = swiglu_backward(&dh, &g, &u)?;
        let (grads, h_ref) = autograd(&[&g, &u], &dh, |v: &[Var]| {
            let g = v[0].as_tensor();
            (g * sigmoid(g)?)? * v[1].as_tensor()
        })?;
        assert_close(&h, &h_ref, 1e-15, "h")?;
        assert_close(&dg, &grads[0], 1e-13, "dg")?;
        assert_close(&du, &grads[1], 1e-13, "du")?;
        Ok(())
    }
}
