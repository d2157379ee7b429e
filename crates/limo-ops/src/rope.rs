//! Rotary position embedding in the "rotate half" layout of Hugging Face's Qwen2.

use candle_core::{DType, Device, Result, Tensor, D};

/// cos and sin of `position * inv_freq`, `[N, head_dim]`, one row per token.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for the given per-token positions, computed in f64 for an f64 model (as the f64
    /// transformers goldens are) and in f32 otherwise (as transformers' rotary module does,
    /// whatever the model dtype), then cast to `dtype`.
    pub fn new(
        positions: &[u32],
        head_dim: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (positions.len(), head_dim);
        if dtype == DType::F64 {
            let (cos, sin) = tables::<f64>(positions, head_dim, theta);
            return Ok(Self {
                cos: Tensor::from_vec(cos, shape, device)?,
                sin: Tensor::from_vec(sin, shape, device)?,
            });
        }
        let (cos, sin) = tables::<f32>(positions, head_dim, theta as f32);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }
}

/// Row-major `[positions, head_dim]` cos and sin of `position * inv_freq`, with
/// `inv_freq_i = theta^(-2i/head_dim)` and both halves of a row using the same frequencies.
fn tables<F: candle_core::WithDType + num_traits::Float>(
    positions: &[u32],
    head_dim: usize,
    theta: F,
) -> (Vec<F>, Vec<F>) {
    let half = head_dim / 2;
    let dim = F::from(head_dim).expect("head_dim fits a float");
    let inv_freq: Vec<F> = (0..half)
        .map(|i| F::one() / theta.powf(F::from(2 * i).expect("fits") / dim))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        let p = F::from(p).expect("position fits a float");
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = p * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves of the last dimension.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// The transpose of `rotate_half`: `[z2, -z1]`.
fn rotate_half_transposed(z: &Tensor) -> Result<Tensor> {
    let half = z.dim(D::Minus1)? / 2;
    let z1 = z.narrow(D::Minus1, 0, half)?;
    let z2 = z.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&z2, &z1.neg()?], D::Minus1)
}

/// `y = x * cos + rotate_half(x) * sin` for `x` of shape `[N, heads, head_dim]`.
pub fn rope_forward(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rope::supported(x, tables) {
        return crate::cuda::rope::rope_forward(x, tables);
    }
    let cos = tables.cos.unsqueeze(1)?;
    let sin = tables.sin.unsqueeze(1)?;
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// `dx = dy * cos + rotate_half^T(dy * sin)`.
pub fn rope_backward(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rope::supported(dy, tables) {
        return crate::cuda::rope::rope_backward(dy, tables);
    }
    let cos = tables.cos.unsqueeze(1)?;
    let sin = tables.sin.unsqueeze(1)?;
    dy.broadcast_mul(&cos)? + rotate_half_transposed(&dy.broadcast_mul(&sin)?)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::Var;

    #[test]
    fn backward_matches_autograd_f64() -> Result<()> {
        let dev = Device::Cpu;
        let positions = [0, 1, 2, 0, 1, 7];
        let tables = RopeTables::new(&positions, 8, 10000.0, DType::F64, &dev)?;
        let x = rand_tensor(&[6, 3, 8], 4, &dev)?;
        let dy = rand_tensor(&[6, 3, 8], 5, &dev)?;
        let y = rope_forward(&x, &tables)?;
        let dx = rope_backward(&dy, &tables)?;
        let (grads, y_ref) = autograd(&[&x], &dy, |v: &[Var]| {
            rope_forward(v[0].as_tensor(), &tables)
        })?;
        assert_close(&y, &y_ref, 0.0, "y")?;
        assert_close(&dx, &grads[0], 1e-14, "dx")?;
        Ok(())
    }

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() -> Result<()> {
        let dev = Device::Cpu;
        let tables = RopeTables::new(&[0, 5], 16, 1e6, DType::F64, &dev)?;
        let x = rand_tensor(&[2, 2, 16], 6, &dev)?;
        let y = rope_forward(&x, &tables)?;
        assert_close(&y.get(0)?, &x.get(0)?, 0.0, "position 0")?;
        // A rotation of each (i, i + half) pair keeps the norm (up to the f32 tables).
        let nx = x.get(1)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let ny = y.get(1)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        assert!((nx - ny).abs() / nx < 1e-6, "{nx} vs {ny}");
        assert!(
            crate::testing::rel_l2(&y.get(1)?, &x.get(1)?)? > 1e-3,
            "position 5 rotates"
        );
        Ok(())
    }
}
