//! Causal grouped-query attention over packed documents (the FlashAttention-2 varlen contract).
//!
//! Tokens of all documents are concatenated: `q` is `[N, q_heads, head_dim]`, `k` and `v` are
//! `[N, kv_heads, head_dim]`, and `cu_seqlens = [0, end_0, end_1, .., N]` marks where each
//! document ends. A token attends to the tokens of its own document at or before its position,
//! never across documents. Query head `h` reads kv head `h / (q_heads / kv_heads)`, as
//! transformers' `repeat_kv` does. The forward saves the log-sum-exp of every score row so the
//! backward can rebuild the probabilities without storing them, as the CUDA kernel does.
//!
//! This reference materializes one document's `[heads, L, L]` scores at a time: fine on CPU and
//! as a GPU oracle; the flash kernels never hold them.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::upcast;

/// Gradients of the attention inputs.
pub struct AttentionGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
}

/// Returns the output `[N, q_heads, head_dim]` (input dtype) and the log-sum-exp
/// `[q_heads, N]` (compute dtype).
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    // bf16 on a GPU with head_dim 64 or 128: the FlashAttention-2 kernel (same contract).
    #[cfg(feature = "cuda")]
    if crate::cuda::flash_attention::dispatches(q, k, v) {
        return crate::cuda::flash_attention::flash_attention_forward(q, k, v, cu_seqlens, scale);
    }
    check_seqlens(q, cu_seqlens)?;
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for doc in cu_seqlens.windows(2) {
        let (start, len) = (doc[0], doc[1] - doc[0]);
        let qd = heads_first(q, start, len)?;
        let kd = expand_kv(&heads_first(k, start, len)?, qd.dim(0)?)?;
        let vd = expand_kv(&heads_first(v, start, len)?, qd.dim(0)?)?;
        let scores = causal_scores(&qd, &kd, scale)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let sum = scores.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
        let lse = (max + sum.log()?)?;
        let probs = scores.broadcast_sub(&lse)?.exp()?;
        outs.push(probs.matmul(&vd)?.transpose(0, 1)?);
        lses.push(lse.squeeze(D::Minus1)?);
    }
    let out = Tensor::cat(&outs, 0)?.to_dtype(q.dtype())?;
    Ok((out, Tensor::cat(&lses, 1)?))
}

/// Backward of [`attention_forward`], with `D_i = rowsum(dO * O)`:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = scale dS K`, `dK = scale dS^T Q`;
/// kv gradients are summed over the query heads of their group.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
) -> Result<AttentionGrads> {
    // fp32 atomic dQ by default (the fast path; dQ's last bits vary run to run);
    // LIMO_FLASH_DETERMINISTIC=1 takes the bit-reproducible dQ kernel (docs/CUDA.md).
    #[cfg(feature = "cuda")]
    if crate::cuda::flash_attention::dispatches(q, k, v) {
        use crate::cuda::flash_attention::{deterministic_requested, flash_attention_backward};
        let (cu, det) = (cu_seqlens, deterministic_requested());
        return flash_attention_backward(d_out, q, k, v, out, lse, cu, scale, det, None);
    }
    check_seqlens(q, cu_seqlens)?;
    let kv_heads = k.dim(1)?;
    let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
    for doc in cu_seqlens.windows(2) {
        let (start, len) = (doc[0], doc[1] - doc[0]);
        let qd = heads_first(q, start, len)?;
        let q_heads = qd.dim(0)?;
        let kd = expand_kv(&heads_first(k, start, len)?, q_heads)?;
        let vd = expand_kv(&heads_first(v, start, len)?, q_heads)?;
        let dod = heads_first(d_out, start, len)?;
        let od = heads_first(out, start, len)?;
        let lse_d = lse.narrow(1, start, len)?.unsqueeze(D::Minus1)?;

        let probs = causal_scores(&qd, &kd, scale)?
            .broadcast_sub(&lse_d)?
            .exp()?;
        let dv = probs.t()?.matmul(&dod)?;
        let dp = dod.matmul(&vd.t()?)?;
        let delta = (&dod * &od)?.sum_keepdim(D::Minus1)?;
        let ds = (probs * dp.broadcast_sub(&delta)?)?;
        let dq = (ds.matmul(&kd)? * scale)?;
        let dk = (ds.t()?.matmul(&qd)? * scale)?;
        dqs.push(dq.transpose(0, 1)?);
        dks.push(sum_groups(&dk, kv_heads)?.transpose(0, 1)?);
        dvs.push(sum_groups(&dv, kv_heads)?.transpose(0, 1)?);
    }
    Ok(AttentionGrads {
        dq: Tensor::cat(&dqs, 0)?.to_dtype(q.dtype())?,
        dk: Tensor::cat(&dks, 0)?.to_dtype(k.dtype())?,
        dv: Tensor::cat(&dvs, 0)?.to_dtype(v.dtype())?,
    })
}

fn check_seqlens(q: &Tensor, cu_seqlens: &[usize]) -> Result<()> {
    let n = q.dim(0)?;
    let ordered = cu_seqlens.windows(2).all(|w| w[0] < w[1]);
    if cu_seqlens.first() != Some(&0) || cu_seqlens.last() != Some(&n) || !ordered {
        candle_core::bail!("attention: cu_seqlens {cu_seqlens:?} do not partition {n} tokens")
    }
    Ok(())
}

/// Rows `start..start+len` of `[N, heads, d]` as `[heads, len, d]` in the compute dtype.
fn heads_first(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    upcast(&x.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?)
}

/// `[kv_heads, L, d]` -> `[q_heads, L, d]`, each kv head repeated for its group of query heads.
fn expand_kv(x: &Tensor, q_heads: usize) -> Result<Tensor> {
    let (kv_heads, len, d) = x.dims3()?;
    let group = q_heads / kv_heads;
    x.unsqueeze(1)?
        .broadcast_as((kv_heads, group, len, d))?
        .reshape((q_heads, len, d))
}

/// `[q_heads, L, d]` -> `[kv_heads, L, d]`, summing each group's query heads.
fn sum_groups(x: &Tensor, kv_heads: usize) -> Result<Tensor> {
    let (q_heads, len, d) = x.dims3()?;
    x.reshape((kv_heads, q_heads / kv_heads, len, d))?.sum(1)
}

/// `scale * q k^T` with `-inf` above the diagonal.
fn causal_scores(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    let len = q.dim(1)?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    scores.broadcast_add(&causal_mask(len, scores.dtype(), scores.device())?)
}

fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (len, len), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::Var;

    /// Naive attention over the whole `[N, N]` score matrix with an explicit block-diagonal
    /// causal mask and explicitly repeated kv heads: the autograd oracle.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, doc_of: &[usize], scale: f64) -> Result<Tensor> {
        let (n, hq, d) = q.dims3()?;
        let hkv = k.dim(1)?;
        let rep = |x: &Tensor| -> Result<Tensor> {
            let heads: Vec<Tensor> = (0..hq)
                .map(|h| x.narrow(1, h / (hq / hkv), 1))
                .collect::<Result<_>>()?;
            Tensor::cat(&heads, 1)?.transpose(0, 1)
        };
        let mask: Vec<f64> = (0..n)
            .flat_map(|i| {
                (0..n).map(move |j| {
                    if j <= i && doc_of[i] == doc_of[j] {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), q.device())?;
        let qh = q.transpose(0, 1)?;
        let s = (qh.matmul(&rep(k)?.t()?)? * scale)?.broadcast_add(&mask)?;
        let m = s.max_keepdim(D::Minus1)?.detach();
        let e = s.broadcast_sub(&m)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let o = p.matmul(&rep(v)?)?.transpose(0, 1)?;
        assert_eq!(o.dims(), &[n, hq, d]);
        Ok(o)
    }

    fn check(cu: &[usize], hq: usize, hkv: usize, d: usize) -> Result<()> {
        let dev = Device::Cpu;
        let n = *cu.last().unwrap();
        let doc_of: Vec<usize> = (0..n)
            .map(|t| cu.iter().filter(|&&e| e <= t).count() - 1)
            .collect();
        let scale = 1.0 / (d as f64).sqrt();
        let q = (rand_tensor(&[n, hq, d], 10, &dev)? * 2.0)?;
        let k = (rand_tensor(&[n, hkv, d], 11, &dev)? * 2.0)?;
        let v = rand_tensor(&[n, hkv, d], 12, &dev)?;
        let dout = rand_tensor(&[n, hq, d], 13, &dev)?;
        let (out, lse) = attention_forward(&q, &k, &v, cu, scale)?;
        let g = attention_backward(&dout, &q, &k, &v, &out, &lse, cu, scale)?;
        let (grads, out_ref) = autograd(&[&q, &k, &v], &dout, |x: &[Var]| {
            naive(
                x[0].as_tensor(),
                x[1].as_tensor(),
                x[2].as_tensor(),
                &doc_of,
                scale,
            )
        })?;
        assert_close(&out, &out_ref, 1e-13, "out")?;
        assert_close(&g.dq, &grads[0], 1e-12, "dq")?;
        assert_close(&g.dk, &grads[1], 1e-12, "dk")?;
        assert_close(&g.dv, &grads[2], 1e-12, "dv")?;
        Ok(())
    }

    #[test]
    fn one_document_grouped_query() -> Result<()> {
        check(&[0, 9], 4, 2, 8)
    }

    #[test]
    fn packed_documents_do_not_attend_across() -> Result<()> {
        check(&[0, 3, 4, 11], 6, 2, 4)?;
        check(&[0, 5, 10], 2, 2, 8)
    }

    #[test]
    fn changing_another_document_leaves_output_unchanged() -> Result<()> {
        let dev = Device::Cpu;
        let cu = [0, 4, 9];
        let q = rand_tensor(&[9, 2, 4], 1, &dev)?;
        let k = rand_tensor(&[9, 1, 4], 2, &dev)?;
        let v = rand_tensor(&[9, 1, 4], 3, &dev)?;
        let (out, _) = attention_forward(&q, &k, &v, &cu, 0.5)?;
        // Perturb the keys and values of the first document only.
        let bump = Tensor::cat(
            &[
                &Tensor::ones((4, 1, 4), DType::F64, &dev)?,
                &Tensor::zeros((5, 1, 4), DType::F64, &dev)?,
            ],
            0,
        )?;
        let (out2, _) = attention_forward(&q, &(&k + &bump)?, &(&v + &bump)?, &cu, 0.5)?;
        assert_close(
            &out2.narrow(0, 4, 5)?,
            &out.narrow(0, 4, 5)?,
            0.0,
            "second document",
        )?;
        assert!(crate::testing::rel_l2(&out2.narrow(0, 0, 4)?, &out.narrow(0, 0, 4)?)? > 1e-3);
        Ok(())
    }

    #[test]
    fn bad_seqlens_are_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let q = rand_tensor(&[5, 2, 4], 1, &dev)?;
        let k = rand_tensor(&[5, 1, 4], 2, &dev)?;
        assert!(attention_forward(&q, &k, &k, &[0, 3], 1.0).is_err());
        assert!(attention_forward(&q, &k, &k, &[0, 3, 3, 5], 1.0).is_err());
        Ok(())
    }
}
