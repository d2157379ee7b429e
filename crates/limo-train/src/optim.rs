//! AdamW with decoupled weight decay over master weights and moments kept as flat f32 tensors
//! (f64 when the run is in f64) on the compute device, one per ZeRO-3 group slice. The update
//! itself is limo-ops' fused `adamw_update` (CPU) or its CUDA kernel, which follow
//! `torch.optim.AdamW` exactly. `Flat` is the host form of a slice, for checkpoint files.

use std::ops::Range;

use candle_core::{DType, Device, Result, Tensor};
pub use limo_ops::clip_coefficient;
use limo_ops::{adamw_update_state, sum_of_squares, AdamWStep, Clip};

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

/// The three lists of optimizer state, in the order of checkpoint files.
pub const MASTER: usize = 0;
pub const EXP_AVG: usize = 1;
pub const EXP_AVG_SQ: usize = 2;

/// Optimizer state of this rank's slices: per group one flat tensor `[master | exp_avg |
/// exp_avg_sq]` in the master dtype, updated in place by `limo_ops::adamw_update_state` (the
/// fused CPU loop on all cores, or the fused kernel on CUDA). It lives on the device the model
/// computes on and reaches the host only when a checkpoint is written; with optimizer offload
/// it lives in host memory and the update runs on the host (the same code, the same bits).
pub struct AdamW {
    pub settings: AdamWSettings,
    state: Vec<Tensor>,
    /// Where `state` lives: the compute device, or the CPU when offloaded.
    home: Device,
    lens: Vec<usize>,
    /// Per group, the ranges of its slice that weight decay skips (`train.no_decay`).
    skip_decay: Vec<Vec<Range<usize>>>,
    /// Updates applied so far.
    pub updates: u64,
}

impl AdamW {
    /// State for the given master slices (moments at zero), placed on `device`.
    pub fn new(settings: AdamWSettings, master: &[Flat], home: &Device) -> Result<Self> {
        let device = home;
        // Only the master crosses to the device; the moments start as zeros there.
        let state = master
            .iter()
            .map(|p| {
                let n = p.len();
                let p = p.to_tensor(&[n], device)?;
                let zeros = Tensor::zeros(2 * n, p.dtype(), device)?;
                Tensor::cat(&[p, zeros], 0)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            settings,
            state,
            home: home.clone(),
            lens: master.iter().map(Flat::len).collect(),
            skip_decay: vec![Vec::new(); master.len()],
            updates: 0,
        })
    }

    /// Per group, the ranges of its slice that weight decay skips (sorted, disjoint).
    pub fn set_skip_decay(&mut self, ranges: Vec<Vec<Range<usize>>>) -> Result<()> {
        if ranges.len() != self.lens.len() {
            candle_core::bail!(
                "weight decay ranges for {} groups, expected {}",
                ranges.len(),
                self.lens.len()
            );
        }
        self.skip_decay = ranges;
        Ok(())
    }

    /// See [`Self::set_skip_decay`].
    pub fn skip_decay(&self) -> &[Vec<Range<usize>>] {
        &self.skip_decay
    }

    /// Replaces the state (a checkpoint's slices); the slice lengths must not change.
    pub fn restore(
        &mut self,
        master: &[Flat],
        exp_avg: &[Flat],
        exp_avg_sq: &[Flat],
    ) -> Result<()> {
        let device = &self.home.clone();
        if [master.len(), exp_avg.len(), exp_avg_sq.len()] != [self.lens.len(); 3] {
            candle_core::bail!("optimizer state: expected {} groups", self.lens.len());
        }
        for (g, ((p, m), v)) in master.iter().zip(exp_avg).zip(exp_avg_sq).enumerate() {
            let n = self.lens[g];
            if [p.len(), m.len(), v.len()] != [n; 3] {
                candle_core::bail!("optimizer state of group {g}: expected 3 x {n} values");
            }
        }
        // Group by group, each old group freed as its new one arrives: the device never holds
        // two whole states (a resume that fits where training fits).
        for (g, ((p, m), v)) in master.iter().zip(exp_avg).zip(exp_avg_sq).enumerate() {
            let n = self.lens[g];
            let parts = [p, m, v].map(|f| f.to_tensor(&[n], device));
            let [p, m, v] = parts;
            self.state[g] = Tensor::cat(&[p?, m?, v?], 0)?;
        }
        Ok(())
    }

    /// Group `g`'s slice of one state list (`MASTER`, `EXP_AVG`, `EXP_AVG_SQ`), where it lives.
    pub fn part(&self, g: usize, list: usize) -> Result<Tensor> {
        let n = self.lens[g];
        self.state[g].narrow(0, list * n, n)
    }

    /// One state list, every group's slice copied to the host (for a checkpoint). From a GPU
    /// the slice is made contiguous there first: `to_device` of a view copies its whole storage
    /// (the group's master and both moments, 3x the bytes) and keeps the view.
    pub fn host(&self, list: usize) -> Result<Vec<Tensor>> {
        (0..self.state.len())
            .map(|g| {
                let part = self.part(g, list)?;
                if part.device().is_cpu() {
                    Ok(part)
                } else {
                    part.force_contiguous()?.to_device(&Device::Cpu)
                }
            })
            .collect()
    }

    /// Elements of each group's slice.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn master_dtype(&self) -> DType {
        self.state.first().map_or(DType::F32, Tensor::dtype)
    }

    /// One update with learning rate `lr` from gradients (flat, master dtype, on any device:
    /// they are copied to where the state lives), clipped by the global norm with `clip`, which
    /// the update reads where it lies (see [`Clip`]). With `bf16_out` (CUDA) the kernel also
    /// writes each group's updated weights there, in bf16.
    pub fn step(
        &mut self,
        grads: &[Tensor],
        lr: f64,
        clip: Option<Clip>,
        bf16_out: Option<&[Tensor]>,
    ) -> Result<()> {
        let hyper = self.next_update(lr, 1.0);
        for (g, grad) in grads.iter().enumerate() {
            let grad = grad.to_device(&self.home)?;
            let out = bf16_out.map(|o| &o[g]);
            adamw_update_state(
                &self.state[g],
                &grad,
                &hyper,
                &self.skip_decay[g],
                clip,
                out,
            )?;
        }
        Ok(())
    }

    /// The hyper-parameters of the next update, counted as applied: for a caller that runs
    /// the update itself, on [`Self::shared_state`] (the offloaded step's host thread).
    pub fn next_update(&mut self, lr: f64, grad_scale: f64) -> AdamWStep {
        let s = self.settings;
        self.updates += 1;
        AdamWStep {
            lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            t: self.updates,
            grad_scale,
        }
    }

    /// The state tensors themselves (candle shares their storage), for an update in place on
    /// another thread; nothing may read the state until that update has finished.
    pub fn shared_state(&self) -> Vec<Tensor> {
        self.state.clone()
    }

    /// Where the state lives.
    pub fn home(&self) -> &Device {
        &self.home
    }
}

/// Global L2 norm of all gradients, accumulated in f64.
pub fn global_norm(grads: &[Flat]) -> f64 {
    grads.iter().map(Flat::sum_of_squares).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_update_matches_the_closed_form() -> Result<()> {
        let dev = Device::Cpu;
        let w = Flat::F64(vec![1.0, -2.0]);
        let g = Tensor::new(&[0.5f64, 0.25], &dev)?;
        let settings = AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(settings, &[w], &dev)?;
        opt.step(std::slice::from_ref(&g), 0.01, None, None)?;
        // After one update m/(1-b1) = g and sqrt(v/(1-b2)) = |g|: p' = p(1 - lr wd) - lr g/(|g| + eps).
        let got: Vec<f64> = opt.host(MASTER)?[0].to_vec1()?;
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
