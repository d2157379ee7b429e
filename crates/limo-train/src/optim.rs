//! AdamW with decoupled weight decay over master weights and moments kept as flat f32 buffers
//! (f64 when the run is in f64), one per parameter in checkpoint order. The update itself is
//! limo-ops' fused `adamw_update`, which follows `torch.optim.AdamW` exactly.

use candle_core::{DType, Device, Result, Tensor};
use limo_ops::{adamw_update, sum_of_squares, AdamWStep};

#[derive(Debug, Clone, Copy)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// A flat host buffer in the master dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Flat {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Flat {
    /// `t` flattened, converted to `dtype` (f32 or f64).
    pub fn from_tensor(t: &Tensor, dtype: DType) -> Result<Self> {
        let flat = t.flatten_all()?.to_dtype(dtype)?;
        Ok(match dtype {
            DType::F64 => Flat::F64(flat.to_vec1()?),
            _ => Flat::F32(flat.to_vec1()?),
        })
    }

    pub fn to_tensor(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            Flat::F32(v) => Tensor::from_slice(v, shape, device),
            Flat::F64(v) => Tensor::from_slice(v, shape, device),
        }
    }

    pub fn zeros_like(&self) -> Self {
        match self {
            Flat::F32(v) => Flat::F32(vec![0.0; v.len()]),
            Flat::F64(v) => Flat::F64(vec![0.0; v.len()]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Flat::F32(v) => v.len(),
            Flat::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Truncates or pads with zeros (ZeRO-3's padding of a group to a multiple of the world).
    pub fn resize(&mut self, len: usize) {
        match self {
            Flat::F32(v) => v.resize(len, 0.0),
            Flat::F64(v) => v.resize(len, 0.0),
        }
    }

    /// Adds `t` (same length, any dtype and device) element-wise, in this buffer's dtype.
    pub fn add_tensor(&mut self, t: &Tensor) -> Result<()> {
        let n = t.elem_count();
        if n != self.len() {
            candle_core::bail!("adding {n} values to a buffer of {}", self.len());
        }
        match self {
            Flat::F32(v) => {
                let t: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                v.iter_mut().zip(t).for_each(|(a, b)| *a += b);
            }
            Flat::F64(v) => {
                let t: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                v.iter_mut().zip(t).for_each(|(a, b)| *a += b);
            }
        }
        Ok(())
    }

    pub fn sum_of_squares(&self) -> f64 {
        match self {
            Flat::F32(v) => sum_of_squares(v),
            Flat::F64(v) => sum_of_squares(v),
        }
    }
}

/// The dtype of master weights and moments for a compute dtype.
pub fn master_dtype(compute: DType) -> DType {
    if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Optimizer state: master weights, first and second moments, and the update count.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub shapes: Vec<Vec<usize>>,
    pub master: Vec<Flat>,
    pub exp_avg: Vec<Flat>,
    pub exp_avg_sq: Vec<Flat>,
    /// Updates applied so far.
    pub updates: u64,
}

impl AdamW {
    pub fn new(settings: AdamWSettings, weights: &[&Tensor]) -> Result<Self> {
        let master: Vec<Flat> = weights
            .iter()
            .map(|w| Flat::from_tensor(w, master_dtype(w.dtype())))
            .collect::<Result<_>>()?;
        let zeros: Vec<Flat> = master.iter().map(Flat::zeros_like).collect();
        let shapes = weights.iter().map(|w| w.dims().to_vec()).collect();
        Ok(Self {
            settings,
            shapes,
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
            master,
            updates: 0,
        })
    }

    /// Optimizer state for the given master buffers, moments at zero.
    pub fn from_flats(settings: AdamWSettings, master: Vec<Flat>) -> Self {
        let zeros: Vec<Flat> = master.iter().map(Flat::zeros_like).collect();
        Self {
            settings,
            shapes: master.iter().map(|m| vec![m.len()]).collect(),
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
            master,
            updates: 0,
        }
    }

    pub fn master_dtype(&self) -> DType {
        match self.master.first() {
            Some(Flat::F64(_)) => DType::F64,
            _ => DType::F32,
        }
    }

    /// One update with learning rate `lr` from gradients (flat, master dtype, checkpoint
    /// order), each multiplied by `grad_scale` (the clipping coefficient) first.
    pub fn step(&mut self, grads: &[Flat], lr: f64, grad_scale: f64) {
        let s = self.settings;
        let hyper = AdamWStep {
            lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            t: self.updates + 1,
            grad_scale,
        };
        for (i, grad) in grads.iter().enumerate() {
            match (
                &mut self.master[i],
                grad,
                &mut self.exp_avg[i],
                &mut self.exp_avg_sq[i],
            ) {
                (Flat::F32(p), Flat::F32(g), Flat::F32(m), Flat::F32(v)) => {
                    adamw_update(p, g, m, v, &hyper)
                }
                (Flat::F64(p), Flat::F64(g), Flat::F64(m), Flat::F64(v)) => {
                    adamw_update(p, g, m, v, &hyper)
                }
                _ => panic!("AdamW::step: gradient {i} is not in the master dtype"),
            }
        }
        self.updates += 1;
    }

    /// Tensors of one of the state lists, shaped like the parameters.
    pub fn tensors(&self, list: &[Flat], device: &Device) -> Result<Vec<Tensor>> {
        list.iter()
            .zip(&self.shapes)
            .map(|(f, shape)| f.to_tensor(shape, device))
            .collect()
    }
}

/// Global L2 norm of all gradients, accumulated in f64.
pub fn global_norm(grads: &[Flat]) -> f64 {
    grads.iter().map(Flat::sum_of_squares).sum::<f64>().sqrt()
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

    #[test]
    fn one_update_matches_the_closed_form() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[1.0f64, -2.0], &dev)?;
        let g = Flat::F64(vec![0.5, 0.25]);
        let settings = AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(settings, &[&w])?;
        opt.step(std::slice::from_ref(&g), 0.01, 1.0);
        // After one update m/(1-b1) = g and sqrt(v/(1-b2)) = |g|: p' = p(1 - lr wd) - lr g/(|g| + eps).
        let got: Vec<f64> = opt.tensors(&opt.master, &dev)?[0].to_vec1()?;
        let expect = [
            1.0 * (1.0 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8),
            -2.0 * (1.0 - 0.001) - 0.01 * 0.25 / (0.25 + 1e-8),
        ];
        for (a, b) in got.iter().zip(expect) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        assert_eq!(opt.updates, 1);
        assert_eq!(
            global_norm(&[Flat::F32(vec![3.0]), Flat::F64(vec![4.0])]),
            5.0
        );
        Ok(())
    }

    #[test]
    fn clipping_follows_transformers() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(6.238205000828075, 1.0) - 0.1603024972030833).abs() < 1e-15);
        assert_eq!(clip_coefficient(100.0, 0.0), 1.0);
    }
}
