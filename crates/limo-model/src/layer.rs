//! One Qwen2 decoder layer, forward and backward side by side.
//!
//! ```text
//! n1 = rms_norm(x)                 q, k, v = n1 Wq^T + bq, n1 Wk^T + bk, n1 Wv^T + bv
//! q, k = rope(q), rope(k)          a = attention(q, k, v)          x1 = x + a Wo^T
//! n2 = rms_norm(x1)                h = silu(n2 Wg^T) * (n2 Wu^T)   y = x1 + h Wd^T
//! ```
//! Tokens are flattened to `[N, hidden]`; `cu_seqlens` delimits the documents attention may
//! not cross. The forward returns what the backward needs; ZeRO-3 activation checkpointing
//! drops it and calls the forward again.

use candle_core::{Result, Tensor};
use limo_ops::decode_attention::{qkv_rope_append, CacheIndex, NewRows};
use limo_ops::{
    add_rms_norm_forward, attention_backward, attention_forward, rms_norm_backward,
    rms_norm_forward, rope_backward, rope_forward, swiglu_backward, swiglu_forward, RopeTables,
};

use crate::{LayerWeights, Qwen2Config};

/// Per-batch inputs every layer shares.
pub struct LayerContext<'a> {
    pub config: &'a Qwen2Config,
    pub rope: &'a RopeTables,
    pub cu_seqlens: &'a [usize],
}

impl LayerContext<'_> {
    fn scale(&self) -> f64 {
        1.0 / (self.config.head_dim as f64).sqrt()
    }
}

/// Activations saved by the forward for the backward.
pub struct LayerActivations {
    x: Tensor,
    rstd1: Tensor,
    n1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn: Tensor,
    lse: Tensor,
    x1: Tensor,
    rstd2: Tensor,
    n2: Tensor,
    gate: Tensor,
    up: Tensor,
    h: Tensor,
}

impl LayerActivations {
    /// The attention's output `[N, q_dim]` and log-sum-exp, to skip the attention forward when
    /// the layer is recomputed ([`layer_forward_with_attention`]).
    pub fn attention(&self) -> (Tensor, Tensor) {
        (self.attn.clone(), self.lse.clone())
    }
}

/// `x W^T (+ b)` for `x [N, in]`, `W [out, in]`.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Gradients of `linear`: `(dx, dW)` with `dx = dy W`, `dW = dy^T x` (`db = sum_rows(dy)`).
fn linear_backward(dy: &Tensor, x: &Tensor, weight: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((dy.matmul(weight)?, dy.t()?.matmul(x)?))
}

/// The projections of the normed tokens `n1 [N, hidden]`, split into heads, before RoPE:
/// `q [N, heads, head_dim]`, `k, v [N, kv_heads, head_dim]`.
fn qkv_heads(
    w: &LayerWeights,
    n1: &Tensor,
    config: &Qwen2Config,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = n1.dim(0)?;
    let heads = |t: Tensor, h: usize| t.reshape((n, h, config.head_dim));
    Ok((
        heads(
            linear(n1, &w.q_weight, Some(&w.q_bias))?,
            config.num_attention_heads,
        )?,
        heads(
            linear(n1, &w.k_weight, Some(&w.k_bias))?,
            config.num_key_value_heads,
        )?,
        heads(
            linear(n1, &w.v_weight, Some(&w.v_bias))?,
            config.num_key_value_heads,
        )?,
    ))
}

pub fn layer_forward(
    w: &LayerWeights,
    x: &Tensor,
    ctx: &LayerContext,
) -> Result<(Tensor, LayerActivations)> {
    layer_forward_given(w, x, ctx, None)
}

/// [`layer_forward`] with the attention's output and log-sum-exp already known
/// ([`LayerActivations::attention`] of an earlier forward of the same input): activation
/// checkpointing's recompute then skips the attention forward, the layer's costliest part at
/// long context. The results are the same tensors.
pub fn layer_forward_with_attention(
    w: &LayerWeights,
    x: &Tensor,
    ctx: &LayerContext,
    attention: (Tensor, Tensor),
) -> Result<(Tensor, LayerActivations)> {
    layer_forward_given(w, x, ctx, Some(attention))
}

fn layer_forward_given(
    w: &LayerWeights,
    x: &Tensor,
    ctx: &LayerContext,
    attention: Option<(Tensor, Tensor)>,
) -> Result<(Tensor, LayerActivations)> {
    let cfg = ctx.config;
    let n = x.dim(0)?;
    let (n1, rstd1) = rms_norm_forward(x, &w.input_norm, cfg.rms_norm_eps)?;
    let (q, k, v) = qkv_heads(w, &n1, cfg)?;
    let q = rope_forward(&q, ctx.rope)?;
    let k = rope_forward(&k, ctx.rope)?;
    let (attn, lse) = match attention {
        Some(known) => known,
        None => {
            let (attn, lse) = attention_forward(&q, &k, &v, ctx.cu_seqlens, ctx.scale())?;
            (attn.reshape((n, cfg.q_dim()))?, lse)
        }
    };
    let o = linear(&attn, &w.o_weight, None)?;
    let (x1, n2, rstd2) = add_rms_norm_forward(x, &o, &w.post_norm, cfg.rms_norm_eps)?;
    let gate = linear(&n2, &w.gate_weight, None)?;
    let up = linear(&n2, &w.up_weight, None)?;
    let h = swiglu_forward(&gate, &up)?;
    let y = (&x1 + linear(&h, &w.down_weight, None)?)?;
    let saved = LayerActivations {
        x: x.clone(),
        rstd1,
        n1,
        q,
        k,
        v,
        attn,
        lse,
        x1,
        rstd2,
        n2,
        gate,
        up,
        h,
    };
    Ok((y, saved))
}

/// Returns `dx` and the gradients of every weight of the layer.
pub fn layer_backward(
    w: &LayerWeights,
    dy: &Tensor,
    s: &LayerActivations,
    ctx: &LayerContext,
) -> Result<(Tensor, LayerWeights)> {
    let cfg = ctx.config;
    let n = dy.dim(0)?;

    // MLP: y = x1 + down(swiglu(gate(n2), up(n2)))
    let (dh, d_down) = linear_backward(dy, &s.h, &w.down_weight)?;
    let (d_gate_out, d_up_out) = swiglu_backward(&dh, &s.gate, &s.up)?;
    let (dn2_gate, d_gate) = linear_backward(&d_gate_out, &s.n2, &w.gate_weight)?;
    let (dn2_up, d_up) = linear_backward(&d_up_out, &s.n2, &w.up_weight)?;
    let (dx1_norm, d_post_norm) =
        rms_norm_backward(&(dn2_gate + dn2_up)?, &s.x1, &w.post_norm, &s.rstd2)?;
    let dx1 = (dy + dx1_norm)?;

    // Attention: x1 = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1)))
    let (d_attn, d_o) = linear_backward(&dx1, &s.attn, &w.o_weight)?;
    let d_attn = d_attn.reshape((n, cfg.num_attention_heads, cfg.head_dim))?;
    let attn = s.attn.reshape((n, cfg.num_attention_heads, cfg.head_dim))?;
    let g = attention_backward(
        &d_attn,
        &s.q,
        &s.k,
        &s.v,
        &attn,
        &s.lse,
        ctx.cu_seqlens,
        ctx.scale(),
    )?;
    let dq = rope_backward(&g.dq, ctx.rope)?.reshape((n, cfg.q_dim()))?;
    let dk = rope_backward(&g.dk, ctx.rope)?.reshape((n, cfg.kv_dim()))?;
    let dv = g.dv.reshape((n, cfg.kv_dim()))?;
    let (dn1_q, d_q) = linear_backward(&dq, &s.n1, &w.q_weight)?;
    let (dn1_k, d_k) = linear_backward(&dk, &s.n1, &w.k_weight)?;
    let (dn1_v, d_v) = linear_backward(&dv, &s.n1, &w.v_weight)?;
    let dn1 = ((dn1_q + dn1_k)? + dn1_v)?;
    let (dx_norm, d_input_norm) = rms_norm_backward(&dn1, &s.x, &w.input_norm, &s.rstd1)?;
    let dx = (dx1 + dx_norm)?;

    let grads = LayerWeights {
        input_norm: d_input_norm,
        q_weight: d_q,
        q_bias: sum_tokens(&dq)?,
        k_weight: d_k,
        k_bias: sum_tokens(&dk)?,
        v_weight: d_v,
        v_bias: sum_tokens(&dv)?,
        o_weight: d_o,
        post_norm: d_post_norm,
        gate_weight: d_gate,
        up_weight: d_up,
        down_weight: d_down,
    };
    Ok((dx, grads))
}

/// A bias gradient: the sum over all tokens, accumulated in f32 when the activations are bf16
/// (thousands of bf16 additions would lose most of the small contributions); the same
/// operation in f32 and f64. On a GPU as a row of ones times `d` (cuBLAS, f32): candle's CUDA
/// `sum(0)` reads a column per block, strided, where the matmul reads `d` once, coalesced.
fn sum_tokens(d: &Tensor) -> Result<Tensor> {
    let d = d.to_dtype(limo_ops::compute_dtype(d.dtype()))?;
    if d.device().is_cuda() && d.rank() == 2 {
        return column_sums_by_matmul(&d);
    }
    d.sum(0)
}

/// `ones [1, N] @ d [N, k]` as `[k]`: the column sums of `d`.
fn column_sums_by_matmul(d: &Tensor) -> Result<Tensor> {
    let ones = Tensor::ones((1, d.dim(0)?), d.dtype(), d.device())?;
    ones.matmul(&d.contiguous()?)?.squeeze(0)
}

/// The residual stream between the layers of an inference forward: the hidden states `x` and
/// `normed`, their RMSNorm for whatever reads them next (a layer's input norm, or the final
/// norm before the head), made with the residual add that produced `x` in one kernel.
pub struct Stream {
    pub x: Tensor,
    pub normed: Tensor,
}

impl Stream {
    /// The embedded tokens `x` and their norm by `norm` (the first layer's input norm).
    pub fn start(x: Tensor, norm: &Tensor, config: &Qwen2Config) -> Result<Self> {
        let (normed, _) = rms_norm_forward(&x, norm, config.rms_norm_eps)?;
        Ok(Self { x, normed })
    }
}

/// The first half of [`layer_forward`] for inference: `q [N, heads, head_dim]` and
/// `k, v [N, kv_heads, head_dim]` of the tokens whose input norm is `n1 [N, hidden]`
/// ([`Stream::normed`]), after RoPE with `rope`'s rows. The same operations in the same order as
/// the forward, so the results are bit-identical.
pub fn layer_qkv(
    w: &LayerWeights,
    n1: &Tensor,
    config: &Qwen2Config,
    rope: &RopeTables,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, k, v) = qkv_heads(w, n1, config)?;
    Ok((rope_forward(&q, rope)?, rope_forward(&k, rope)?, v))
}

/// [`layer_qkv`] for a decode step: `k` and `v` are written into the layer's KV cache
/// `(k_cache, v_cache)` at `at` and `q` is returned, the same numbers bit for bit, through one
/// fused kernel on a GPU ([`qkv_rope_append`]) where the unfused form launches six.
pub fn layer_qkv_append(
    w: &LayerWeights,
    n1: &Tensor,
    rope: &RopeTables,
    cache: &(Tensor, Tensor),
    at: &CacheIndex,
) -> Result<Tensor> {
    // The projections before their biases, which the append adds.
    let rows = NewRows {
        lin: [
            &linear(n1, &w.q_weight, None)?,
            &linear(n1, &w.k_weight, None)?,
            &linear(n1, &w.v_weight, None)?,
        ],
        bias: [&w.q_bias, &w.k_bias, &w.v_bias],
        rope,
    };
    qkv_rope_append(&rows, cache, at)
}

/// The second half of [`layer_forward`] for inference: from the attention output
/// `attn [N, heads, head_dim]` of the stream's tokens, the output projection, the residual, the
/// MLP and its residual, which is added in one kernel with `next_norm` (the next layer's input
/// norm, or the final norm): the stream after the layer.
pub fn layer_output(
    w: &LayerWeights,
    stream: &Stream,
    attn: &Tensor,
    config: &Qwen2Config,
    next_norm: &Tensor,
) -> Result<Stream> {
    let eps = config.rms_norm_eps;
    let attn = attn.reshape((stream.x.dim(0)?, config.q_dim()))?;
    let o = linear(&attn, &w.o_weight, None)?;
    let (x1, n2, _) = add_rms_norm_forward(&stream.x, &o, &w.post_norm, eps)?;
    let gate = linear(&n2, &w.gate_weight, None)?;
    let up = linear(&n2, &w.up_weight, None)?;
    let h = swiglu_forward(&gate, &up)?;
    let (x, normed, _) =
        add_rms_norm_forward(&x1, &linear(&h, &w.down_weight, None)?, next_norm, eps)?;
    Ok(Stream { x, normed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_gpu_form_of_a_bias_gradient_sums_the_columns() -> Result<()> {
        // The CUDA path's formula, run here on the CPU: [N, k] -> [k], the same sums.
        let d = Tensor::arange(0f64, 35.0, &Device::Cpu)?.reshape((7, 5))?;
        let by_matmul = column_sums_by_matmul(&d)?;
        assert_eq!(by_matmul.dims(), [5]);
        assert_eq!(by_matmul.to_vec1::<f64>()?, d.sum(0)?.to_vec1::<f64>()?);
        let f = d.to_dtype(DType::F32)?.t()?; // a transposed view is made contiguous first
        assert_eq!(
            column_sums_by_matmul(&f)?.to_vec1::<f32>()?,
            f.sum(0)?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
