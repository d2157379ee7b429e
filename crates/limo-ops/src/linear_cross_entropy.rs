//! The head and the loss in one pass over token chunks: `logits = h W^T`, cross-entropy against
//! the targets, and the gradients of `h` and `W`, without ever holding `[N, vocab]` logits.
//!
//! At 16k tokens and a 152k vocabulary whole logits would take 4.6 GiB in bf16 (23 GiB on the
//! usual fp32 loss path); one chunk of `chunk_tokens` rows takes `chunk_tokens * vocab` floats.
//! Forward and backward run together (as Liger's fused linear cross-entropy does) because the
//! caller knows the loss scale up front: the step's target count.

use candle_core::{DType, Result, Tensor, D};
use rayon::prelude::*;

use crate::upcast;

/// Label value of a token that is not a target (PyTorch's `ignore_index`). The workspace's one
/// definition: limo-data re-exports it for the labels it writes.
pub const IGNORE_INDEX: i64 = -100;

/// How a pass scales its gradients: one factor for every token (the trainer's `1 / targets in
/// the step`), or one per token (`1 / (examples x that example's targets)` when every example
/// of a step weighs the same, `train.loss_average = "sequences"`).
#[derive(Debug, Clone, Copy)]
pub enum GradScale<'a> {
    Uniform(f64),
    /// `[N]` weights, one per token (those of non-targets are not read).
    PerToken(&'a [f64]),
}

/// What one pass produces. `Loss` is f64 read back to the host, or (from
/// [`linear_cross_entropy_on_device`]) a `[1]` f64 tensor that stays on the device.
pub struct LinearCrossEntropy<Loss = f64> {
    /// Sum of the per-token losses of all targets (f64, accumulated chunk by chunk); with
    /// [`GradScale::PerToken`], the weighted sum `sum_t w_t loss_t`.
    pub loss_sum: Loss,
    /// Number of targets (labels other than [`IGNORE_INDEX`]).
    pub n_targets: usize,
    /// `[N]` per-token cross-entropy in the compute dtype, 0 where not a target.
    pub per_token_loss: Tensor,
    /// `grad_scale * d loss_sum / d hidden`, `[N, H]` in the dtype of `hidden`
    /// (`None` when no gradient was asked for).
    pub d_hidden: Option<Tensor>,
    /// `grad_scale * d loss_sum / d weight`, `[V, H]` in the compute dtype.
    pub d_weight: Option<Tensor>,
}

/// Cross-entropy of `hidden [N, H] @ weight [V, H]^T` against `targets` (already shifted: token
/// t's target, [`IGNORE_INDEX`] where none). With `grad_scale = Some(s)` the gradients of
/// `s * loss_sum` are returned too; the trainer passes `1 / targets_in_step`.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
    chunk_tokens: usize,
) -> Result<LinearCrossEntropy> {
    let out = linear_cross_entropy_on_device(hidden, weight, targets, grad_scale, chunk_tokens)?;
    Ok(LinearCrossEntropy {
        loss_sum: out.loss_sum.to_vec1::<f64>()?[0],
        n_targets: out.n_targets,
        per_token_loss: out.per_token_loss,
        d_hidden: out.d_hidden,
        d_weight: out.d_weight,
    })
}

/// [`linear_cross_entropy`] without reading the loss back: the trainer adds the loss sums of a
/// step on the device and reads them once, with the gradient norm, at the step's end.
pub fn linear_cross_entropy_on_device(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
    chunk_tokens: usize,
) -> Result<LinearCrossEntropy<Tensor>> {
    let scale = grad_scale.map(GradScale::Uniform);
    linear_cross_entropy_scaled_on_device(hidden, weight, targets, scale, chunk_tokens)
}

/// [`linear_cross_entropy_on_device`] with the gradients of `sum_t w_t loss_t` for per-token
/// weights `w` ([`GradScale::PerToken`]; `loss_sum` is then that weighted sum). The kernel
/// computes `d logits` unscaled and the weights scale the `[chunk, H]` operands of the two
/// matmuls (`d hidden = diag(w) (dL W)`, `d W = dL^T (diag(w) h)`), never the `[chunk, vocab]`
/// logits.
pub fn linear_cross_entropy_scaled_on_device(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[i64],
    grad_scale: Option<GradScale>,
    chunk_tokens: usize,
) -> Result<LinearCrossEntropy<Tensor>> {
    let (n, _h) = hidden.dims2()?;
    let vocab = weight.dim(0)?;
    if targets.len() != n {
        candle_core::bail!(
            "linear_cross_entropy: {} targets for {n} tokens",
            targets.len()
        )
    }
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != IGNORE_INDEX && !(0..vocab as i64).contains(&t))
    {
        candle_core::bail!("linear_cross_entropy: target {bad} outside the vocabulary of {vocab}")
    }
    if let Some(GradScale::PerToken(w)) = grad_scale {
        if w.len() != n {
            candle_core::bail!("linear_cross_entropy: {} weights for {n} tokens", w.len())
        }
        if let Some(bad) = w.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            candle_core::bail!("linear_cross_entropy: token weight {bad} (finite, 0 or more)")
        }
    }
    let device = hidden.device();
    // On CUDA with bf16 (or f32) hidden and weight, the matmuls run in that dtype (cuBLAS
    // accumulates in f32) and the softmax/loss kernel writes `d logits` over the logits, so a
    // chunk costs one `[chunk, vocab]` buffer of the model dtype. Elsewhere everything is
    // upcast to the compute dtype, the reference.
    let on_kernel = kernel_path(hidden, weight);
    let w = if on_kernel {
        weight.clone()
    } else {
        upcast(weight)?
    };
    let dtype = crate::compute_dtype(weight.dtype());
    let chunk_tokens = chunk_tokens.max(1);

    // Per-token weights go to the device once, not once per chunk.
    let all_weights = match grad_scale {
        Some(GradScale::PerToken(w)) => Some(Tensor::from_slice(w, (n, 1), device)?),
        _ => None,
    };
    // The per-chunk sums add up on the device, in f64 (as the host sum did: on the CPU the
    // same additions in the same order, so bit-identical).
    let mut loss_acc: Option<Tensor> = None;
    let mut per_token = Vec::new();
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<Tensor> = None;
    for start in (0..n).step_by(chunk_tokens) {
        let len = chunk_tokens.min(n - start);
        let chunk_targets = &targets[start..start + len];
        let h = hidden.narrow(0, start, len)?;
        let h = if on_kernel { h } else { upcast(&h)? };
        let logits = h.matmul(&w.t()?)?;
        let (token_weights, kernel_scale) = match (grad_scale, &all_weights) {
            (Some(GradScale::Uniform(s)), _) => (None, Some(s)),
            (_, Some(all)) => (Some(all.narrow(0, start, len)?), Some(1.0)),
            _ => (None, None),
        };
        let (loss, d_logits) = chunk_loss(logits, chunk_targets, kernel_scale, on_kernel)?;
        let chunk_sum = match &token_weights {
            Some(tw) => (loss.to_dtype(DType::F64)? * tw.squeeze(1)?)?.sum_all()?,
            None => loss.to_dtype(DType::F64)?.sum_all()?,
        };
        loss_acc = Some(match loss_acc {
            Some(acc) => (acc + chunk_sum)?,
            None => chunk_sum,
        });
        per_token.push(loss);

        if let Some(d_logits) = d_logits {
            let dh = d_logits.matmul(&w)?;
            let (dh, h) = match &token_weights {
                Some(tw) => (weigh_rows(&dh, tw)?, weigh_rows(&h, tw)?),
                None => (dh, h),
            };
            d_hidden.push(dh.to_dtype(hidden.dtype())?);
            let dw = d_logits.t()?.matmul(&h)?;
            d_weight = Some(match d_weight {
                Some(acc) => crate::flat::add_assign(acc, &dw)?,
                None => dw.to_dtype(dtype)?,
            });
        }
    }
    let loss_sum = match loss_acc {
        Some(acc) => acc.reshape(1)?,
        None => Tensor::zeros(1, DType::F64, device)?,
    };
    let n_targets = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let per_token_loss = if per_token.is_empty() {
        Tensor::zeros(0, dtype, device)?
    } else {
        Tensor::cat(&per_token, 0)?
    };
    let d_hidden = match grad_scale {
        Some(_) if !d_hidden.is_empty() => Some(Tensor::cat(&d_hidden, 0)?),
        Some(_) => Some(hidden.zeros_like()?),
        None => None,
    };
    let d_weight = match (grad_scale, d_weight) {
        (Some(_), None) => Some(Tensor::zeros(weight.shape(), dtype, device)?),
        (_, dw) => dw,
    };
    Ok(LinearCrossEntropy {
        loss_sum,
        n_targets,
        per_token_loss,
        d_hidden,
        d_weight,
    })
}

/// `diag(w) x` in at least f32, in `x`'s dtype: bf16 rows are scaled in f32 and rounded back
/// (on the kernel path `d hidden` is a bf16 matmul output, so it is rounded twice, where a
/// uniform scale inside the kernel rounds once: about one bf16 ulp).
fn weigh_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dtype = match x.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    x.to_dtype(dtype)?
        .broadcast_mul(&w.to_dtype(dtype)?)?
        .to_dtype(x.dtype())
}

/// Whether the chunked loss takes the CUDA kernel path (see [`linear_cross_entropy`]).
#[cfg(feature = "cuda")]
fn kernel_path(hidden: &Tensor, weight: &Tensor) -> bool {
    crate::cuda::cross_entropy::supported(hidden) && hidden.dtype() == weight.dtype()
}

#[cfg(not(feature = "cuda"))]
fn kernel_path(_hidden: &Tensor, _weight: &Tensor) -> bool {
    false
}

/// The loss of one chunk's logits: in place by the CUDA kernel on the kernel path (the logits
/// are a fresh matmul output nothing else views), else [`softmax_cross_entropy`].
fn chunk_loss(
    logits: Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
    on_kernel: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    #[cfg(feature = "cuda")]
    if on_kernel {
        return crate::cuda::cross_entropy::softmax_cross_entropy_in_place(
            logits, targets, grad_scale,
        );
    }
    let _ = on_kernel;
    softmax_cross_entropy(&logits, targets, grad_scale)
}

/// Per-row cross-entropy `[len]` of `logits [len, V]` against `targets`, and, with
/// `grad_scale = Some(s)`, `d logits = s * (softmax - one_hot(target))` (zero rows for
/// non-targets). On CPU one fused pass per row does it (the candle version makes ~8 full
/// `[len, V]` temporaries, which dominated CPU training time); elsewhere, tensor ops.
pub fn softmax_cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::cross_entropy::supported(logits) {
        return crate::cuda::cross_entropy::softmax_cross_entropy(logits, targets, grad_scale);
    }
    let logits = logits.contiguous()?;
    if logits.device().is_cpu() {
        match logits.dtype() {
            DType::F32 => return fused_cpu::<f32>(&logits, targets, grad_scale),
            DType::F64 => return fused_cpu::<f64>(&logits, targets, grad_scale),
            // Half logits compute in f32, as the kernel does (loss in f32, d logits cast back):
            // a bf16 sum over a 152k vocabulary would lose most of its digits.
            DType::BF16 | DType::F16 => {
                let (loss, d) = fused_cpu::<f32>(&upcast(&logits)?, targets, grad_scale)?;
                let d = d.map(|d| d.to_dtype(logits.dtype())).transpose()?;
                return Ok((loss, d));
            }
            _ => {}
        }
    }
    softmax_cross_entropy_tensor_ops(&logits, targets, grad_scale)
}

/// The device-generic version: the reference the fused ones are checked against.
pub fn softmax_cross_entropy_tensor_ops(
    logits: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (len, _) = logits.dims2()?;
    let (device, dtype) = (logits.device(), logits.dtype());
    let is_target: Vec<f32> = targets
        .iter()
        .map(|&t| if t == IGNORE_INDEX { 0.0 } else { 1.0 })
        .collect();
    let is_target = Tensor::from_vec(is_target, (len, 1), device)?.to_dtype(dtype)?;
    let index: Vec<u32> = targets.iter().map(|&t| t.max(0) as u32).collect();
    let index = Tensor::from_vec(index, (len, 1), device)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let target_logit = logits.gather(&index, 1)?;
    let loss = ((lse.clone() - target_logit)? * &is_target)?.squeeze(1)?;
    let d_logits = match grad_scale {
        Some(scale) => {
            let row_scale = (is_target * scale)?;
            let probs = logits.broadcast_sub(&lse)?.exp()?;
            Some(
                probs
                    .broadcast_mul(&row_scale)?
                    .scatter_add(&index, &row_scale.neg()?, 1)?,
            )
        }
        None => None,
    };
    Ok((loss, d_logits))
}

fn fused_cpu<F>(
    logits: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)>
where
    F: candle_core::WithDType + num_traits::Float + num_traits::NumAssign + Send + Sync,
{
    let (len, vocab) = logits.dims2()?;
    let values = logits.flatten_all()?.to_vec1::<F>()?;
    let scale = F::from(grad_scale.unwrap_or(0.0)).expect("representable");
    let mut losses = vec![F::zero(); len];
    let mut grads = vec![F::zero(); if grad_scale.is_some() { len * vocab } else { 0 }];
    // Rows are independent: one task per row, on all cores.
    let row_grads: Vec<&mut [F]> = if grad_scale.is_some() {
        grads.chunks_mut(vocab).collect()
    } else {
        (0..len).map(|_| Default::default()).collect()
    };
    losses
        .par_iter_mut()
        .zip(row_grads)
        .enumerate()
        .for_each(|(row, (loss, d))| {
            let target = targets[row];
            if target == IGNORE_INDEX {
                return;
            }
            let x = &values[row * vocab..(row + 1) * vocab];
            let max = x
                .iter()
                .copied()
                .fold(F::neg_infinity(), num_traits::Float::max);
            let sum = if d.is_empty() {
                x.iter().fold(F::zero(), |acc, &v| acc + (v - max).exp())
            } else {
                // Keep exp(x - max) for the gradient: one exp per logit.
                let mut sum = F::zero();
                for (d, &v) in d.iter_mut().zip(x) {
                    *d = (v - max).exp();
                    sum += *d;
                }
                let factor = scale / sum;
                d.iter_mut().for_each(|d| *d *= factor);
                d[target as usize] -= scale;
                sum
            };
            *loss = max + sum.ln() - x[target as usize];
        });
    let grads = grad_scale.map(|_| grads);
    let device = logits.device();
    let loss = Tensor::from_vec(losses, len, device)?;
    let d_logits = grads
        .map(|g| Tensor::from_vec(g, (len, vocab), device))
        .transpose()?;
    Ok((loss, d_logits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::{Device, Var};

    fn naive_loss_sum(h: &Tensor, w: &Tensor, targets: &[i64]) -> Result<Tensor> {
        let logits = h.matmul(&w.t()?)?;
        let m = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits
            .broadcast_sub(&m)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            + m)?;
        let mut total = Tensor::zeros((), DType::F64, h.device())?;
        for (t, &target) in targets.iter().enumerate() {
            if target != IGNORE_INDEX {
                let term = (lse.get(t)?.get(0)? - logits.get(t)?.get(target as usize)?)?;
                total = (total + term)?;
            }
        }
        Ok(total)
    }

    #[test]
    fn chunked_matches_autograd_for_every_chunk_size() -> Result<()> {
        let dev = Device::Cpu;
        let h = (rand_tensor(&[7, 6], 20, &dev)? * 3.0)?;
        let w = rand_tensor(&[11, 6], 21, &dev)?;
        let targets = [3, IGNORE_INDEX, 10, 0, IGNORE_INDEX, 7, 7];
        let scale = 0.2;
        let (grads, loss_ref) = autograd(&[&h, &w], &Tensor::new(scale, &dev)?, |v: &[Var]| {
            naive_loss_sum(v[0].as_tensor(), v[1].as_tensor(), &targets)
        })?;
        let loss_ref = loss_ref.to_scalar::<f64>()?;
        for chunk in [1, 2, 3, 7, 100] {
            let out = linear_cross_entropy(&h, &w, &targets, Some(scale), chunk)?;
            assert_eq!(out.n_targets, 5);
            assert!(
                (out.loss_sum - loss_ref).abs() <= 1e-13 * loss_ref.abs(),
                "chunk {chunk}"
            );
            assert_close(out.d_hidden.as_ref().unwrap(), &grads[0], 1e-13, "d_hidden")?;
            assert_close(out.d_weight.as_ref().unwrap(), &grads[1], 1e-13, "d_weight")?;
            let per_token: Vec<f64> = out.per_token_loss.to_vec1()?;
            assert_eq!(per_token[1], 0.0);
            assert_eq!(per_token[4], 0.0);
            assert!((per_token.iter().sum::<f64>() - loss_ref).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn per_token_weights_match_autograd_of_the_weighted_sum() -> Result<()> {
        let dev = Device::Cpu;
        let h = (rand_tensor(&[7, 6], 22, &dev)? * 3.0)?;
        let w = rand_tensor(&[11, 6], 23, &dev)?;
        let targets = [3, IGNORE_INDEX, 10, 0, IGNORE_INDEX, 7, 7];
        // Two examples of 2 and 3 targets, each weighing half: 1/4 and 1/6 per token.
        let weights = [0.25, 0.0, 0.25, 1.0 / 6.0, 0.0, 1.0 / 6.0, 1.0 / 6.0];
        let (grads, loss_ref) = autograd(&[&h, &w], &Tensor::new(1.0, &dev)?, |v: &[Var]| {
            let (h, w) = (v[0].as_tensor(), v[1].as_tensor());
            let mut total = Tensor::zeros((), DType::F64, &dev)?;
            for (t, &wt) in weights.iter().enumerate() {
                let mut one = vec![IGNORE_INDEX; 7];
                one[t] = targets[t];
                total = (total + (naive_loss_sum(h, w, &one)? * wt)?)?;
            }
            Ok(total)
        })?;
        let loss_ref = loss_ref.to_scalar::<f64>()?;
        for chunk in [1, 2, 3, 7, 100] {
            let scale = Some(GradScale::PerToken(&weights));
            let out = linear_cross_entropy_scaled_on_device(&h, &w, &targets, scale, chunk)?;
            let loss = out.loss_sum.to_vec1::<f64>()?[0];
            assert!(
                (loss - loss_ref).abs() <= 1e-13 * loss_ref.abs(),
                "chunk {chunk}"
            );
            assert_close(out.d_hidden.as_ref().unwrap(), &grads[0], 1e-13, "d_hidden")?;
            assert_close(out.d_weight.as_ref().unwrap(), &grads[1], 1e-13, "d_weight")?;
        }
        // Equal weights are the uniform scale; bad weights are refused.
        let same = [0.2; 7];
        let a = linear_cross_entropy_scaled_on_device(
            &h,
            &w,
            &targets,
            Some(GradScale::PerToken(&same)),
            3,
        )?;
        let b = linear_cross_entropy(&h, &w, &targets, Some(0.2), 3)?;
        assert_close(
            a.d_hidden.as_ref().unwrap(),
            b.d_hidden.as_ref().unwrap(),
            1e-14,
            "dh",
        )?;
        assert_close(
            a.d_weight.as_ref().unwrap(),
            b.d_weight.as_ref().unwrap(),
            1e-14,
            "dw",
        )?;
        for bad in [
            &[0.1; 6][..],
            &[0.1, 0.1, f64::NAN, 0.1, 0.1, 0.1, 0.1],
            &[-0.1; 7],
        ] {
            let scale = Some(GradScale::PerToken(bad));
            assert!(linear_cross_entropy_scaled_on_device(&h, &w, &targets, scale, 3).is_err());
        }
        Ok(())
    }

    #[test]
    fn loss_sum_is_the_host_sum_of_chunk_sums_to_the_bit() -> Result<()> {
        // The sum accumulated on the device equals the former host accumulation exactly:
        // `0.0 + chunk_0 + chunk_1 + ...` in f64, each chunk summed by candle in f64.
        let dev = Device::Cpu;
        let h = (rand_tensor(&[23, 6], 40, &dev)? * 3.0)?;
        let w = rand_tensor(&[13, 6], 41, &dev)?;
        let targets: Vec<i64> = (0..23)
            .map(|t| {
                if t % 5 == 2 {
                    IGNORE_INDEX
                } else {
                    (t * 7) % 13
                }
            })
            .collect();
        for dtype in [DType::F64, DType::F32] {
            let (h, w) = (h.to_dtype(dtype)?, w.to_dtype(dtype)?);
            for chunk in [1, 4, 5, 23, 64] {
                let out = linear_cross_entropy(&h, &w, &targets, Some(0.1), chunk)?;
                let mut host = 0.0;
                for start in (0..23).step_by(chunk) {
                    let len = chunk.min(23 - start);
                    host += out
                        .per_token_loss
                        .narrow(0, start, len)?
                        .to_dtype(DType::F64)?
                        .sum_all()?
                        .to_scalar::<f64>()?;
                }
                assert_eq!(out.loss_sum.to_bits(), host.to_bits(), "{dtype:?} {chunk}");
            }
        }
        let none = linear_cross_entropy(&h.narrow(0, 0, 0)?, &w, &[], Some(0.1), 4)?;
        assert_eq!(none.loss_sum, 0.0);
        Ok(())
    }

    #[test]
    fn fused_cpu_softmax_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let logits = (rand_tensor(&[6, 50], 30, &dev)? * 8.0)?;
        let targets = [4, IGNORE_INDEX, 49, 0, 17, IGNORE_INDEX];
        for dtype in [DType::F64, DType::F32] {
            let logits = logits.to_dtype(dtype)?;
            let (loss, grad) = softmax_cross_entropy(&logits, &targets, Some(0.3))?;
            let (loss_ref, grad_ref) =
                softmax_cross_entropy_tensor_ops(&logits, &targets, Some(0.3))?;
            let tol = if dtype == DType::F64 { 1e-14 } else { 1e-6 };
            assert_close(&loss, &loss_ref, tol, "loss")?;
            assert_close(
                grad.as_ref().unwrap(),
                grad_ref.as_ref().unwrap(),
                tol,
                "d_logits",
            )?;
            let (_, none) = softmax_cross_entropy(&logits, &targets, None)?;
            assert!(none.is_none());
        }
        Ok(())
    }

    #[test]
    fn targets_outside_the_vocabulary_are_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let h = rand_tensor(&[2, 4], 1, &dev)?;
        let w = rand_tensor(&[5, 4], 2, &dev)?;
        assert!(linear_cross_entropy(&h, &w, &[1, 5], None, 8).is_err());
        assert!(linear_cross_entropy(&h, &w, &[1, -3], None, 8).is_err());
        assert!(linear_cross_entropy(&h, &w, &[1], None, 8).is_err());
        Ok(())
    }

    #[test]
    fn bf16_logits_compute_in_f32() -> Result<()> {
        let dev = Device::Cpu;
        let logits = (rand_tensor(&[3, 50000], 11, &dev)? * 8.0)?.to_dtype(DType::BF16)?;
        let targets = [7, IGNORE_INDEX, 49999];
        let (loss, d) = softmax_cross_entropy(&logits, &targets, Some(0.5))?;
        let f32_logits = logits.to_dtype(DType::F32)?;
        let (loss32, d32) = softmax_cross_entropy(&f32_logits, &targets, Some(0.5))?;
        // Exactly the f32 computation on the same values: loss in f32, d logits rounded once.
        assert_eq!(loss.dtype(), DType::F32);
        assert_close(&loss, &loss32, 0.0, "loss")?;
        let (d, d32) = (d.expect("asked"), d32.expect("asked"));
        assert_eq!(d.dtype(), DType::BF16);
        assert_close(&d, &d32.to_dtype(DType::BF16)?, 0.0, "d logits")?;
        Ok(())
    }
}
