//! Fused AdamW over flat buffers: one pass reads the gradient and updates weight, first and
//! second moment in place, with the clipping scale folded in. This is the CPU implementation of
//! the fused AdamW kernel and the contract of ZeRO-3's flat fp32 shards; an unfused candle
//! version costs a dozen full-size temporaries per parameter.
//!
//! The arithmetic follows `torch.optim.AdamW` exactly (same operation order), so an f64 run
//! reproduces an f64 transformers trajectory to rounding:
//! `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use std::ops::Range;

use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based update count `t` of the bias corrections.
    pub t: u64,
    /// Multiplies the gradient first (global-norm clipping).
    pub grad_scale: f64,
}

/// Global-norm clipping whose norm stays where it was computed: the update reads the squared
/// norm (a `[1]` f64 tensor on the state's device, or any device when the state is on the
/// host) and scales the gradient by [`clip_coefficient`]. A norm that is not finite skips the
/// update, leaving the state untouched: the caller reads the norm after the step and stops.
#[derive(Debug, Clone, Copy)]
pub struct Clip<'a> {
    pub norm_sq: &'a Tensor,
    pub max_norm: f64,
}

/// transformers' clipping coefficient: `min(1, max_norm / (norm + 1e-6))` (1 when clipping is
/// off, `max_norm <= 0`). The CUDA kernel computes the same in f64 from the squared norm.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Updates `param`, `exp_avg` and `exp_avg_sq` in place from `grad`.
pub fn adamw_update<F: Float>(
    param: &mut [F],
    grad: &[F],
    exp_avg: &mut [F],
    exp_avg_sq: &mut [F],
    s: &AdamWStep,
) {
    assert!(
        param.len() == grad.len()
            && param.len() == exp_avg.len()
            && param.len() == exp_avg_sq.len(),
        "adamw_update: buffers of different lengths"
    );
    let f = |x: f64| F::from(x).expect("representable");
    let t = s.t as i32;
    let (b1, b2) = (f(s.beta1), f(s.beta2));
    let (one_m_b1, one_m_b2) = (f(1.0 - s.beta1), f(1.0 - s.beta2));
    let decay = f(1.0 - s.lr * s.weight_decay);
    let step_size = f(s.lr / (1.0 - s.beta1.powi(t)));
    let bias2_sqrt = f((1.0 - s.beta2.powi(t)).sqrt());
    let (eps, scale) = (f(s.eps), f(s.grad_scale));
    let apply_scale = s.grad_scale != 1.0;
    let apply_decay = s.weight_decay != 0.0;
    for i in 0..param.len() {
        let g = if apply_scale {
            grad[i] * scale
        } else {
            grad[i]
        };
        let p = if apply_decay {
            param[i] * decay
        } else {
            param[i]
        };
        let m = b1 * exp_avg[i] + one_m_b1 * g;
        let v = b2 * exp_avg_sq[i] + one_m_b2 * (g * g);
        param[i] = p - step_size * (m / (v.sqrt() / bias2_sqrt + eps));
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
    }
}

/// Sum of squares in f64 (for the global gradient norm).
pub fn sum_of_squares<F: Float>(x: &[F]) -> f64 {
    x.iter()
        .map(|v| v.to_f64().expect("finite or not, a float").powi(2))
        .sum()
}

/// The stretches of a flat buffer of `n` elements in order, each with the step that updates it:
/// `s`, or inside `skip_decay` (sorted, disjoint ranges: the parameters transformers leaves
/// undecayed) `s` without weight decay, which is what torch does for a parameter group whose
/// weight decay is 0. With no decay or nothing skipped, one stretch.
pub fn decay_segments(
    n: usize,
    skip_decay: &[Range<usize>],
    s: &AdamWStep,
) -> Result<Vec<(Range<usize>, AdamWStep)>> {
    let mut at = 0;
    for r in skip_decay {
        if r.start < at || r.end < r.start || r.end > n {
            bail!(
                "adamw: the ranges without weight decay must be sorted, disjoint and within \
                 the {n} elements; {r:?} is not"
            );
        }
        at = r.end;
    }
    if s.weight_decay == 0.0 || skip_decay.is_empty() {
        return Ok(vec![(0..n, *s)]);
    }
    let undecayed = AdamWStep {
        weight_decay: 0.0,
        ..*s
    };
    let mut segments = Vec::with_capacity(2 * skip_decay.len() + 1);
    let mut at = 0;
    for r in skip_decay {
        if r.start > at {
            segments.push((at..r.start, *s));
        }
        if r.end > r.start {
            segments.push((r.clone(), undecayed));
        }
        at = r.end;
    }
    if at < n {
        segments.push((at..n, *s));
    }
    Ok(segments)
}

/// AdamW over one ZeRO-3 group's optimizer state held on its device as one flat tensor
/// `[master | exp_avg | exp_avg_sq]` (3 x n elements, f32 or f64, contiguous), updated in place
/// from `grad` (n elements, same dtype). The same call runs [`adamw_update`] on the CPU and the
/// fused kernel on CUDA (f32), which also writes the updated weights as bf16 into `bf16_out`
/// (the compute shard the next all-gathers send) in the same pass. With `clip`, the gradient
/// scale comes from the squared norm on the device (`s.grad_scale` is ignored): no host read
/// between the backward and the update. `skip_decay`: see [`decay_segments`].
pub fn adamw_update_state(
    state: &Tensor,
    grad: &Tensor,
    s: &AdamWStep,
    skip_decay: &[Range<usize>],
    clip: Option<Clip>,
    bf16_out: Option<&Tensor>,
) -> Result<()> {
    let n = grad.elem_count();
    if state.elem_count() != 3 * n || state.dtype() != grad.dtype() {
        bail!(
            "adamw: the state must hold 3 x {n} {:?} values, got {} {:?}",
            grad.dtype(),
            state.elem_count(),
            state.dtype()
        );
    }
    if bf16_out.is_some_and(|o| o.elem_count() != n) {
        bail!("adamw: the bf16 copy must hold {n} values");
    }
    let segments = decay_segments(n, skip_decay, s)?;
    #[cfg(feature = "cuda")]
    if state.device().is_cuda() {
        // One launch per stretch: a layer's slice has a few undecayed biases and norms.
        let (state, grad) = (state.flatten_all()?, grad.flatten_all()?);
        for (r, s) in &segments {
            let part = |k: usize| state.narrow(0, k * n + r.start, r.len());
            let out = bf16_out
                .map(|o| o.flatten_all()?.narrow(0, r.start, r.len()))
                .transpose()?;
            crate::cuda::adamw::adamw_update_clipped(
                &part(0)?,
                &grad.narrow(0, r.start, r.len())?,
                &part(1)?,
                &part(2)?,
                s,
                clip,
                out.as_ref(),
            )?;
        }
        return Ok(());
    }
    if bf16_out.is_some() {
        bail!("adamw: only the CUDA kernel writes a bf16 copy");
    }
    let mut segments = segments;
    if let Some(clip) = clip {
        // On the host this read costs nothing (a CPU tensor) or is the copy offloading needs.
        let norm = clip.norm_sq.flatten_all()?.to_vec1::<f64>()?[0].sqrt();
        if !norm.is_finite() {
            return Ok(());
        }
        for (_, s) in &mut segments {
            s.grad_scale = clip_coefficient(norm, clip.max_norm);
        }
    }
    state.inplace_op2(grad, &AdamWOp(segments))
}

/// [`adamw_update`] as an in-place candle op on CPU storage, stretch by stretch
/// ([`decay_segments`]).
struct AdamWOp(Vec<(Range<usize>, AdamWStep)>);

impl InplaceOp2 for AdamWOp {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        state: &mut CpuStorage,
        sl: &Layout,
        grad: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (Some((s0, s1)), Some((g0, g1))) = (sl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            bail!("adamw: state and gradient must be contiguous");
        };
        fn split<F: Float + Send + Sync>(
            state: &mut [F],
            grad: &[F],
            segments: &[(Range<usize>, AdamWStep)],
        ) {
            let n = grad.len();
            let (p, rest) = state.split_at_mut(n);
            let (m, v) = rest.split_at_mut(n);
            // Element-wise, so chunks on all cores give the sequential loop's bits.
            const CHUNK: usize = 1 << 16;
            for (r, s) in segments {
                p[r.clone()]
                    .par_chunks_mut(CHUNK)
                    .zip(m[r.clone()].par_chunks_mut(CHUNK))
                    .zip(v[r.clone()].par_chunks_mut(CHUNK))
                    .zip(grad[r.clone()].par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| adamw_update(p, g, m, v, s));
            }
        }
        match (state, grad) {
            (CpuStorage::F32(st), CpuStorage::F32(g)) => {
                split(&mut st[s0..s1], &g[g0..g1], &self.0)
            }
            (CpuStorage::F64(st), CpuStorage::F64(g)) => {
                split(&mut st[s0..s1], &g[g0..g1], &self.0)
            }
            _ => bail!("adamw: state and gradient must both be f32 or both f64"),
        }
        Ok(())
    }
}

/// [`adamw_update_state`] for an fp32 state in host memory whose gradient is a host slice (the
/// pinned staging buffer of optimizer offload), writing the updated weights rounded to bf16 into
/// `bf16_out` in the same pass: the CPU form of the CUDA kernel's fused copy, so an offloaded
/// step reads and writes each byte of host memory once. Runs on all cores; bit-identical to
/// [`adamw_update_state`] followed by a cast.
pub fn adamw_update_host(
    state: &Tensor,
    grad: &[f32],
    s: &AdamWStep,
    skip_decay: &[Range<usize>],
    bf16_out: Option<&mut [half::bf16]>,
) -> Result<()> {
    let n = grad.len();
    if !state.device().is_cpu() || state.dtype() != DType::F32 || state.elem_count() != 3 * n {
        bail!("adamw (host): the state must be 3 x {n} f32 values in host memory");
    }
    if bf16_out.as_ref().is_some_and(|o| o.len() != n) {
        bail!("adamw (host): the bf16 copy must hold {n} values");
    }
    let op = AdamWHostOp {
        segments: decay_segments(n, skip_decay, s)?,
        grad,
        out: std::sync::Mutex::new(bf16_out),
    };
    state.inplace_op1(&op)
}

/// [`adamw_update_host`] as an in-place candle op (the output slice is written once, by the
/// one call of `cpu_fwd`; the mutex only makes it reachable through `&self`).
struct AdamWHostOp<'a> {
    segments: Vec<(Range<usize>, AdamWStep)>,
    grad: &'a [f32],
    out: std::sync::Mutex<Option<&'a mut [half::bf16]>>,
}

impl candle_core::InplaceOp1 for AdamWHostOp<'_> {
    fn name(&self) -> &'static str {
        "adamw-host"
    }

    fn cpu_fwd(&self, state: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (Some((s0, s1)), CpuStorage::F32(st)) = (layout.contiguous_offsets(), state) else {
            bail!("adamw (host): the state must be contiguous f32");
        };
        let n = self.grad.len();
        let (p, rest) = st[s0..s1].split_at_mut(n);
        let (m, v) = rest.split_at_mut(n);
        let mut out = self.out.lock().expect("not poisoned");
        const CHUNK: usize = 1 << 16;
        for (r, s) in &self.segments {
            let chunks = p[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(m[r.clone()].par_chunks_mut(CHUNK))
                .zip(v[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.grad[r.clone()].par_chunks(CHUNK));
            match out.as_deref_mut() {
                Some(out) => chunks.zip(out[r.clone()].par_chunks_mut(CHUNK)).for_each(
                    |((((p, m), v), g), o)| {
                        adamw_update(p, g, m, v, s);
                        for (o, p) in o.iter_mut().zip(p.iter()) {
                            *o = half::bf16::from_f32(*p);
                        }
                    },
                ),
                None => chunks.for_each(|(((p, m), v), g)| adamw_update(p, g, m, v, s)),
            }
        }
        Ok(())
    }
}

/// The sum of squares of `t`'s elements as a `[1]` f64 tensor on `t`'s device (no copy to the
/// host): on the CPU exactly [`sum_of_squares`] (f32 or f64); on CUDA in f64 on the device
/// (`kernels/sum_squares.cu` for bf16 and f32: candle's `sum_all` would reduce on one block).
pub fn sum_of_squares_tensor(t: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::sum_squares::supported(t) {
        return crate::cuda::sum_squares::sum_of_squares(t);
    }
    if t.device().is_cpu() {
        let (storage, layout) = t.storage_and_layout();
        let Some((a, b)) = layout.contiguous_offsets() else {
            bail!("sum_of_squares: the tensor must be contiguous");
        };
        let sum = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => sum_of_squares(&v[a..b]),
            Storage::Cpu(CpuStorage::F64(v)) => sum_of_squares(&v[a..b]),
            _ => {
                drop(storage);
                return t.to_dtype(DType::F64)?.sqr()?.sum_all()?.reshape(1);
            }
        };
        return Tensor::new(&[sum], t.device());
    }
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.reshape(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same update written with whole-vector steps, as torch's for-each implementation runs.
    fn reference(
        p: &[f64],
        g: &[f64],
        m: &[f64],
        v: &[f64],
        s: &AdamWStep,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let g: Vec<f64> = g.iter().map(|x| x * s.grad_scale).collect();
        let p: Vec<f64> = p
            .iter()
            .map(|x| x * (1.0 - s.lr * s.weight_decay))
            .collect();
        let m: Vec<f64> = m
            .iter()
            .zip(&g)
            .map(|(m, g)| s.beta1 * m + (1.0 - s.beta1) * g)
            .collect();
        let v: Vec<f64> = v
            .iter()
            .zip(&g)
            .map(|(v, g)| s.beta2 * v + (1.0 - s.beta2) * g * g)
            .collect();
        let bc1 = 1.0 - s.beta1.powi(s.t as i32);
        let bc2 = 1.0 - s.beta2.powi(s.t as i32);
        let p = p
            .iter()
            .zip(&m)
            .zip(&v)
            .map(|((p, m), v)| p - (s.lr / bc1) * (m / (v.sqrt() / bc2.sqrt() + s.eps)))
            .collect();
        (p, m, v)
    }

    #[test]
    fn fused_update_equals_the_vector_formula() {
        let n = 37;
        let p0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let g: Vec<f64> = (0..n).map(|i| (i as f64 * 1.3).cos() * 0.1).collect();
        let m0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos() * 0.01).collect();
        let v0: Vec<f64> = (0..n)
            .map(|i| 1e-4 * (1.0 + (i as f64).sin().abs()))
            .collect();
        let s = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            t: 3,
            grad_scale: 0.25,
        };
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        adamw_update(&mut p, &g, &mut m, &mut v, &s);
        let (pr, mr, vr) = reference(&p0, &g, &m0, &v0, &s);
        for i in 0..n {
            assert!(
                (p[i] - pr[i]).abs() <= 1e-16 * pr[i].abs().max(1.0),
                "p[{i}]"
            );
            assert_eq!(m[i], mr[i]);
            assert_eq!(v[i], vr[i]);
        }
        // f32 follows the same path within f32 rounding.
        let mut p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
        let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        let mut m32: Vec<f32> = m0.iter().map(|&x| x as f32).collect();
        let mut v32: Vec<f32> = v0.iter().map(|&x| x as f32).collect();
        adamw_update(&mut p32, &g32, &mut m32, &mut v32, &s);
        for i in 0..n {
            assert!((p32[i] as f64 - pr[i]).abs() < 1e-6, "p32[{i}]");
        }
    }

    #[test]
    fn first_update_moves_each_weight_by_about_lr() {
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        let s = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            t: 1,
            grad_scale: 1.0,
        };
        adamw_update(&mut p, &[0.5, -0.25], &mut m, &mut v, &s);
        assert!(
            (p[0] - 0.99).abs() < 1e-9 && (p[1] + 1.99).abs() < 1e-9,
            "{p:?}"
        );
        assert_eq!(sum_of_squares(&[3.0f32, 4.0]), 25.0);
    }

    #[test]
    fn clipping_by_the_norm_on_the_device_equals_the_host_coefficient() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let s = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            t: 3,
            grad_scale: 1.0,
        };
        let grad = [0.5f64, -0.25, 3.0];
        let norm_sq: f64 = grad.iter().map(|g| g * g).sum();
        let state = || Tensor::new(&[1.0f64, -2.0, 0.5, 0.1, 0.2, -0.3, 0.4, 0.5, 0.6], &dev);
        let g = Tensor::new(&grad, &dev)?;
        for max_norm in [0.0, 1.0, 100.0] {
            let (clipped, host) = (state()?, state()?);
            let clip = Clip {
                norm_sq: &Tensor::new(&[norm_sq], &dev)?,
                max_norm,
            };
            adamw_update_state(&clipped, &g, &s, &[], Some(clip), None)?;
            let scaled = AdamWStep {
                grad_scale: clip_coefficient(norm_sq.sqrt(), max_norm),
                ..s
            };
            adamw_update_state(&host, &g, &scaled, &[], None, None)?;
            let (a, b) = (clipped.to_vec1::<f64>()?, host.to_vec1::<f64>()?);
            assert_eq!(a, b, "max_norm {max_norm}");
            assert_ne!(a, state()?.to_vec1::<f64>()?);
        }
        // The host form with its fused bf16 copy: the same bits, and the cast of the master.
        let st32 = state()?.to_dtype(DType::F32)?;
        let (host, reference) = (st32.copy()?, st32.copy()?);
        let g32: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
        let mut out = vec![half::bf16::ZERO; 3];
        adamw_update_host(&host, &g32, &s, &[], Some(&mut out))?;
        adamw_update_state(
            &reference,
            &Tensor::new(g32.as_slice(), &dev)?,
            &s,
            &[],
            None,
            None,
        )?;
        assert_eq!(host.to_vec1::<f32>()?, reference.to_vec1::<f32>()?);
        let master = reference.narrow(0, 0, 3)?.to_dtype(DType::BF16)?;
        assert_eq!(out, master.to_vec1::<half::bf16>()?);
        // A norm that is not finite leaves the state as it was.
        for bad in [f64::NAN, f64::INFINITY] {
            let st = state()?;
            let clip = Clip {
                norm_sq: &Tensor::new(&[bad], &dev)?,
                max_norm: 1.0,
            };
            adamw_update_state(&st, &g, &s, &[], Some(clip), None)?;
            assert_eq!(st.to_vec1::<f64>()?, state()?.to_vec1::<f64>()?);
        }
        Ok(())
    }

    #[test]
    fn skipped_ranges_update_as_a_parameter_group_without_decay() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let n = 37;
        let s = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            t: 2,
            grad_scale: 0.5,
        };
        let p0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let g: Vec<f64> = (0..n).map(|i| (i as f64 * 1.3).cos() * 0.1).collect();
        let mv: Vec<f64> = (0..2 * n)
            .map(|i| 1e-3 * (1.0 + (i as f64).cos()))
            .collect();
        let state = || Tensor::new([p0.clone(), mv.clone()].concat().as_slice(), &dev);
        // Adjacent, empty and trailing ranges.
        let skip = [3..5, 5..9, 12..12, 20..37];
        let skipped = |i: usize| skip.iter().any(|r| r.contains(&i));
        // Element by element: torch's two parameter groups (weight decay 0.1 and 0).
        let mut want = state()?.to_vec1::<f64>()?;
        for i in 0..n {
            let step = AdamWStep {
                weight_decay: if skipped(i) { 0.0 } else { 0.1 },
                ..s
            };
            let (p, mv) = want.split_at_mut(n);
            let (m, v) = mv.split_at_mut(n);
            adamw_update(
                &mut p[i..=i],
                &g[i..=i],
                &mut m[i..=i],
                &mut v[i..=i],
                &step,
            );
        }
        let got = state()?;
        adamw_update_state(
            &got,
            &Tensor::new(g.as_slice(), &dev)?,
            &s,
            &skip,
            None,
            None,
        )?;
        assert_eq!(got.to_vec1::<f64>()?, want);
        let decayed_everywhere = state()?;
        let grad = Tensor::new(g.as_slice(), &dev)?;
        adamw_update_state(&decayed_everywhere, &grad, &s, &[], None, None)?;
        let everywhere = decayed_everywhere.to_vec1::<f64>()?;
        for i in 0..n {
            assert_eq!(everywhere[i] == want[i], !skipped(i), "element {i}");
        }
        // The host form takes the same stretches.
        let st32 = state()?.to_dtype(DType::F32)?;
        let (host, reference) = (st32.copy()?, st32.copy()?);
        let g32: Vec<f32> = g.iter().map(|&g| g as f32).collect();
        let mut out = vec![half::bf16::ZERO; n];
        adamw_update_host(&host, &g32, &s, &skip, Some(&mut out))?;
        let grad32 = Tensor::new(g32.as_slice(), &dev)?;
        adamw_update_state(&reference, &grad32, &s, &skip, None, None)?;
        assert_eq!(host.to_vec1::<f32>()?, reference.to_vec1::<f32>()?);
        let master = reference.narrow(0, 0, n)?.to_dtype(DType::BF16)?;
        assert_eq!(out, master.to_vec1::<half::bf16>()?);
        // Ranges out of order, overlapping or past the end are refused, with decay or without.
        let bad: [(&[Range<usize>], f64); 3] = [
            (&[5..9, 3..4], 0.1),
            (&[3..6, 5..9], 0.0),
            (&[0..2, 30..38], 0.1),
        ];
        for (bad, wd) in bad {
            let s = AdamWStep {
                weight_decay: wd,
                ..s
            };
            let err = adamw_update_state(&state()?, &grad, &s, bad, None, None).unwrap_err();
            assert!(err.to_string().contains("sorted, disjoint"), "{err}");
        }
        Ok(())
    }
}
