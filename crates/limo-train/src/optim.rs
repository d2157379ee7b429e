//! AdamW with decoupled weight decay over master weights and moments kept in f32 (f64 when
//! the run is in f64), one tensor per parameter in checkpoint order. Matches
//! `torch.optim.AdamW`:
//! `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use candle_core::{DType, Result, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Optimizer state: master weights, first and second moments, and the update count.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub master: Vec<Tensor>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    /// Updates applied so far (t of the bias corrections is `updates + 1` for the next one).
    pub updates: u64,
}

/// The dtype of master weights and moments for a compute dtype.
pub fn master_dtype(compute: DType) -> DType {
    if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl AdamW {
    pub fn new(settings: AdamWSettings, weights: &[&Tensor]) -> Result<Self> {
        let master: Vec<Tensor> = weights
            .iter()
            .map(|w| w.to_dtype(master_dtype(w.dtype())))
            .collect::<Result<_>>()?;
        let zeros: Vec<Tensor> = master
            .iter()
            .map(|m| m.zeros_like())
            .collect::<Result<_>>()?;
        Ok(Self {
            settings,
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
            master,
            updates: 0,
        })
    }

    /// Applies one update with learning rate `lr` to every parameter, given gradients already
    /// clipped, in the same order as the master weights.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let AdamWSettings {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.settings;
        let t = (self.updates + 1) as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for (i, grad) in grads.iter().enumerate() {
            let g = grad.to_dtype(self.master[i].dtype())?;
            let p = if weight_decay != 0.0 {
                (&self.master[i] * (1.0 - lr * weight_decay))?
            } else {
                self.master[i].clone()
            };
            let m = ((&self.exp_avg[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.exp_avg_sq[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + eps)?;
            self.master[i] = (p - ((&m / denom)? * step_size)?)?;
            self.exp_avg[i] = m;
            self.exp_avg_sq[i] = v;
        }
        self.updates += 1;
        Ok(())
    }
}

/// Global L2 norm of all gradients, accumulated in f64.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads {
        sum += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// transformers' clipping coefficient: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_update_matches_the_closed_form() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[1.0f64, -2.0], &dev)?;
        let g = Tensor::new(&[0.5f64, 0.25], &dev)?;
        let settings = AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(settings, &[&w])?;
        opt.step(std::slice::from_ref(&g), 0.01)?;
        // After one update m/(1-b1) = g and sqrt(v/(1-b2)) = |g|: p' = p(1 - lr wd) - lr g/(|g| + eps).
        let got: Vec<f64> = opt.master[0].to_vec1()?;
        let expect = [
            1.0 * (1.0 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8),
            -2.0 * (1.0 - 0.001) - 0.01 * 0.25 / (0.25 + 1e-8),
        ];
        for (a, b) in got.iter().zip(expect) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        assert_eq!(opt.updates, 1);
        Ok(())
    }

    #[test]
    fn clipping_follows_transformers() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(6.238205000828075, 1.0) - 0.1603024972030833).abs() < 1e-15);
        assert_eq!(clip_coefficient(100.0, 0.0), 1.0);
    }
}
