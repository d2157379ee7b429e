//! Decode attention: the newest token of each sequence attends to that sequence's KV cache,
//! for a whole batch of sequences at once (the decode step of generation).
//!
//! The cache of one layer is a pair of tensors `[slots, kv_heads, capacity, head_dim]`: every
//! sequence being generated owns a slot, and its keys and values (RoPE already applied to the
//! keys) fill positions `0..len` of it. Appending a step's new rows is one call of
//! [`kv_cache_write`] whatever the batch; the attention reads each sequence's prefix in place.
//!
//! Contract (the CUDA kernels in `kernels/decode_attention.cu` implement the same):
//! `q` `[B, q_heads, head_dim]`; query row `b` attends to the first `lens[b]` positions of slot
//! `slots[b]` (`1 <= lens[b] <= capacity`, its own key included); query head `h` reads kv head
//! `h / (q_heads / kv_heads)` (GQA). The output is `[B, q_heads, head_dim]` in `q`'s dtype;
//! half-precision inputs are computed in f32. The CPU form here is candle tensor ops, one
//! sequence at a time: the reference the kernels are checked against (`limo doctor`), and what
//! CPU generation runs.

use std::collections::HashSet;

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::{compute_dtype, RopeTables};

/// One `(slot, n)` pair per row of a batch, on the host and uploaded once (the kernels read the
/// device copy), so that every layer of a decode step shares one upload. For
/// [`decode_attention`] `n` is the number of cached keys the row attends to; for
/// [`kv_cache_write`] it is the position the row is written at.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    slots: Vec<usize>,
    values: Vec<usize>,
    /// `[slots | values]` as u32 on the device of the cache (what the kernels take as int32).
    table: Tensor,
}

impl CacheIndex {
    /// `slots[i]` and `values[i]` of row `i`; `device` is the cache's.
    pub fn new(slots: &[usize], values: &[usize], device: &Device) -> Result<Self> {
        if slots.len() != values.len() || slots.is_empty() {
            bail!(
                "cache index: {} slots and {} values (need as many, at least one)",
                slots.len(),
                values.len()
            );
        }
        let as_u32 = |x: usize| match i32::try_from(x) {
            Ok(v) => Ok(v as u32),
            Err(_) => bail!("cache index: {x} does not fit the kernels' int32"),
        };
        let table: Vec<u32> = slots
            .iter()
            .chain(values)
            .map(|&x| as_u32(x))
            .collect::<Result<_>>()?;
        let len = table.len();
        Ok(Self {
            slots: slots.to_vec(),
            values: values.to_vec(),
            table: Tensor::from_vec(table, len, device)?,
        })
    }

    /// Rows of the batch.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn slots(&self) -> &[usize] {
        &self.slots
    }

    pub fn values(&self) -> &[usize] {
        &self.values
    }

    /// The uploaded `[slots | values]` table.
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}

/// `(slots, kv_heads, capacity, head_dim)` of a cache pair, checked to agree.
fn cache_dims(k_cache: &Tensor, v_cache: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = match k_cache.dims() {
        &[s, h, c, d] => (s, h, c, d),
        other => bail!("KV cache: expected [slots, kv_heads, capacity, head_dim], got {other:?}"),
    };
    if v_cache.dims() != k_cache.dims() || v_cache.dtype() != k_cache.dtype() {
        bail!(
            "KV cache: values {:?} {:?} differ from keys {:?} {:?}",
            v_cache.dims(),
            v_cache.dtype(),
            k_cache.dims(),
            k_cache.dtype()
        );
    }
    if !k_cache.device().same_device(v_cache.device()) {
        bail!("KV cache: keys and values are on different devices");
    }
    Ok(dims)
}

/// Writes row `i` of `k` and `v` (`[n, kv_heads, head_dim]`, the cache's dtype) into the caches
/// at slot `at.slots()[i]`, position `at.values()[i]`, in place. The caches must be contiguous
/// and every `(slot, position)` distinct.
pub fn kv_cache_write(
    k_cache: &Tensor,
    v_cache: &Tensor,
    k: &Tensor,
    v: &Tensor,
    at: &CacheIndex,
) -> Result<()> {
    let (_, kv_heads, _, head_dim) = cache_dims(k_cache, v_cache)?;
    let n = at.len();
    for (name, t) in [("keys", k), ("values", v)] {
        if t.dims() != [n, kv_heads, head_dim] || t.dtype() != k_cache.dtype() {
            bail!(
                "KV cache write: new {name} {:?} {:?}, expected [{n}, {kv_heads}, {head_dim}] {:?}",
                t.dims(),
                t.dtype(),
                k_cache.dtype()
            );
        }
    }
    check_writes(k_cache, v_cache, at)?;
    #[cfg(feature = "cuda")]
    if crate::cuda::decode_attention::write_dispatches(k_cache, k) {
        return crate::cuda::decode_attention::kv_cache_write(k_cache, v_cache, k, v, at);
    }
    // Runs of consecutive positions in one slot (a prompt) are copied in one go.
    let mut i = 0;
    while i < n {
        let (slot, pos) = (at.slots()[i], at.values()[i]);
        let mut run = 1;
        while i + run < n && at.slots()[i + run] == slot && at.values()[i + run] == pos + run {
            run += 1;
        }
        for (cache, new) in [(k_cache, k), (v_cache, v)] {
            let rows = new
                .narrow(0, i, run)?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?;
            cache.narrow(0, slot, 1)?.slice_set(&rows, 2, pos)?;
        }
        i += run;
    }
    Ok(())
}

/// That the caches are contiguous and every `(slot, position)` of `at` is inside them, once.
fn check_writes(k_cache: &Tensor, v_cache: &Tensor, at: &CacheIndex) -> Result<()> {
    let (slots, _, cap, _) = cache_dims(k_cache, v_cache)?;
    if !k_cache.is_contiguous() || !v_cache.is_contiguous() {
        bail!("KV cache write: the caches must be contiguous");
    }
    let mut seen = HashSet::with_capacity(at.len());
    for (&slot, &pos) in at.slots().iter().zip(at.values()) {
        if slot >= slots || pos >= cap {
            bail!("KV cache write: (slot {slot}, position {pos}) outside {slots} slots x {cap}");
        }
        if !seen.insert((slot, pos)) {
            bail!("KV cache write: (slot {slot}, position {pos}) written twice");
        }
    }
    Ok(())
}

/// A generation step's new rows before their biases and RoPE: what [`qkv_rope_append`] takes.
pub struct NewRows<'a> {
    /// `q_lin [n, q_heads * head_dim]`, `k_lin` and `v_lin [n, kv_heads * head_dim]`.
    pub lin: [&'a Tensor; 3],
    /// Their biases `[q_heads * head_dim]`, `[kv_heads * head_dim]` (twice).
    pub bias: [&'a Tensor; 3],
    /// The RoPE tables of the rows' positions, `[n, head_dim]`.
    pub rope: &'a RopeTables,
}

/// The new rows of a generation step, from their projections to the cache: adds the biases to
/// the projections, applies RoPE to q and k, writes k and v into the caches `(k_cache,
/// v_cache)` at `at` (as [`kv_cache_write`]) and returns q `[n, q_heads, head_dim]`. The CPU
/// form is those candle ops and [`crate::rope_forward`]; on a GPU it is one kernel
/// (`qkv_rope_append` in `kernels/rope.cu`) with the same results bit for bit, where the
/// unfused form is six launches.
pub fn qkv_rope_append(
    rows: &NewRows,
    cache: &(Tensor, Tensor),
    at: &CacheIndex,
) -> Result<Tensor> {
    let (NewRows { lin, bias, rope }, (k_cache, v_cache)) = (rows, cache);
    let (_, kv_heads, _, head_dim) = cache_dims(k_cache, v_cache)?;
    let n = at.len();
    let q_width = lin[0].dims().get(1).copied().unwrap_or(0);
    let q_heads = q_width / head_dim.max(1);
    for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
        let width = if i == 0 { q_width } else { kv_heads * head_dim };
        let dtype = k_cache.dtype();
        if lin[i].dims() != [n, width] || lin[i].dtype() != dtype {
            bail!(
                "KV cache append: {name} projection {:?} {:?}, expected [{n}, {width}] {dtype:?}",
                lin[i].dims(),
                lin[i].dtype()
            );
        }
        if bias[i].dims() != [width] || bias[i].dtype() != dtype {
            bail!(
                "KV cache append: {name} bias {:?} {:?}, expected [{width}] {dtype:?}",
                bias[i].dims(),
                bias[i].dtype()
            );
        }
    }
    if head_dim == 0 || q_heads == 0 || q_width % head_dim != 0 || head_dim % 2 != 0 {
        bail!("KV cache append: q width {q_width} is not a whole number of heads of {head_dim}");
    }
    if rope.cos.dims() != [n, head_dim] || rope.sin.dims() != [n, head_dim] {
        bail!(
            "KV cache append: RoPE tables {:?} for {n} rows of head_dim {head_dim}",
            rope.cos.dims()
        );
    }
    check_writes(k_cache, v_cache, at)?;
    #[cfg(feature = "cuda")]
    if crate::cuda::rope::append_dispatches(lin[0], rope) {
        return crate::cuda::rope::qkv_rope_append(rows, cache, at);
    }
    qkv_rope_append_unfused(rows, cache, at)
}

/// [`qkv_rope_append`] as separate operations (on a GPU six launches): its CPU form, what
/// `limo doctor` checks the fused kernel against bit for bit and `limo bench kernels` times it
/// against.
pub fn qkv_rope_append_unfused(
    rows: &NewRows,
    (k_cache, v_cache): &(Tensor, Tensor),
    at: &CacheIndex,
) -> Result<Tensor> {
    let NewRows { lin, bias, rope } = rows;
    let (_, _, _, head_dim) = cache_dims(k_cache, v_cache)?;
    let n = at.len();
    let heads = |i: usize| {
        let h = lin[i].dim(1)? / head_dim;
        lin[i].broadcast_add(bias[i])?.reshape((n, h, head_dim))
    };
    let q = crate::rope_forward(&heads(0)?, rope)?;
    let k = crate::rope_forward(&heads(1)?, rope)?;
    kv_cache_write(k_cache, v_cache, &k, &heads(2)?, at)?;
    Ok(q)
}

/// Attention of each query row over its slot's cached prefix (see the module documentation):
/// returns `[B, q_heads, head_dim]` in `q`'s dtype.
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    index: &CacheIndex,
    scale: f64,
) -> Result<Tensor> {
    let (slots, kv_heads, cap, head_dim) = cache_dims(k_cache, v_cache)?;
    let (batch, q_heads, qd) = match q.dims() {
        &[b, h, d] => (b, h, d),
        other => bail!("decode attention: q must be [batch, q_heads, head_dim], got {other:?}"),
    };
    if qd != head_dim || kv_heads == 0 || q_heads % kv_heads != 0 {
        bail!(
            "decode attention: q {:?} does not fit the cache {:?} (head_dim must agree, q_heads \
             a multiple of kv_heads)",
            q.dims(),
            k_cache.dims()
        );
    }
    if q.dtype() != k_cache.dtype() {
        bail!(
            "decode attention: q is {:?} but the cache is {:?}",
            q.dtype(),
            k_cache.dtype()
        );
    }
    if index.len() != batch {
        bail!(
            "decode attention: {} index rows for {batch} queries",
            index.len()
        );
    }
    for (&slot, &len) in index.slots().iter().zip(index.values()) {
        if slot >= slots || len == 0 || len > cap {
            bail!("decode attention: slot {slot} with {len} keys, the cache holds {slots} x {cap}");
        }
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::decode_attention::dispatches(q, k_cache) {
        return crate::cuda::decode_attention::decode_attention(q, k_cache, v_cache, index, scale);
    }
    if q.device().is_cuda() {
        // Sequence by sequence, each cached prefix converted at every layer: correct, slow.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "decode attention on the GPU without its kernel (head_dim {head_dim}, {:?}; the \
                 kernel takes head_dim 64 or 128 in bf16 or f32): the tensor-op reference runs, \
                 far slower",
                q.dtype()
            )
        });
    }
    let compute = compute_dtype(q.dtype());
    let group = q_heads / kv_heads;
    let mut outs = Vec::with_capacity(batch);
    for (b, (&slot, &len)) in index.slots().iter().zip(index.values()).enumerate() {
        let keys = k_cache.get(slot)?.narrow(1, 0, len)?;
        let values = v_cache.get(slot)?.narrow(1, 0, len)?;
        // [kv_heads, group, d]: query head h reads kv head h / group.
        let qb = q
            .narrow(0, b, 1)?
            .reshape((kv_heads, group, head_dim))?
            .to_dtype(compute)?;
        let scores = (qb.matmul(&keys.to_dtype(compute)?.t()?)? * scale)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let sum = scores.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
        let lse = (max + sum.log()?)?;
        let probs = scores.broadcast_sub(&lse)?.exp()?;
        let out = probs.matmul(&values.to_dtype(compute)?)?;
        outs.push(out.reshape((1, q_heads, head_dim))?);
    }
    Tensor::cat(&outs, 0)?.to_dtype(q.dtype())
}

/// An empty (zero) cache pair of `[slots, kv_heads, capacity, head_dim]`.
pub fn kv_cache_zeros(
    slots: usize,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let shape = (slots, kv_heads, capacity, head_dim);
    Ok((
        Tensor::zeros(shape, dtype, device)?,
        Tensor::zeros(shape, dtype, device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention_forward;
    use crate::testing::{assert_close, rand_tensor};

    /// Decode attention by plain loops in f64, straight from the contract.
    fn reference(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &[usize], lens: &[usize]) -> Tensor {
        let (b_n, hq, d) = q.dims3().unwrap();
        let hkv = kc.dim(1).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let q: Vec<Vec<Vec<f64>>> = q.to_vec3().unwrap();
        let kc: Vec<Vec<Vec<Vec<f64>>>> = (0..kc.dim(0).unwrap())
            .map(|s| kc.get(s).unwrap().to_vec3().unwrap())
            .collect();
        let vc: Vec<Vec<Vec<Vec<f64>>>> = (0..vc.dim(0).unwrap())
            .map(|s| vc.get(s).unwrap().to_vec3().unwrap())
            .collect();
        let mut out = vec![0.0; b_n * hq * d];
        for b in 0..b_n {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                let (keys, values) = (&kc[slots[b]][kh], &vc[slots[b]][kh]);
                let s: Vec<f64> = (0..lens[b])
                    .map(|j| (0..d).map(|x| q[b][h][x] * keys[j][x]).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    for x in 0..d {
                        out[(b * hq + h) * d + x] += w / total * values[j][x];
                    }
                }
            }
        }
        Tensor::from_vec(out, (b_n, hq, d), &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_a_loop_reference_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        for (hq, hkv, d) in [(4, 2, 8), (6, 1, 4), (3, 3, 16)] {
            let (slots, cap) = (4, 13);
            let kc = rand_tensor(&[slots, hkv, cap, d], 1, &dev)?;
            let vc = rand_tensor(&[slots, hkv, cap, d], 2, &dev)?;
            let q = (rand_tensor(&[3, hq, d], 3, &dev)? * 3.0)?;
            let (s, l) = ([2, 0, 3], [1, 13, 7]);
            let index = CacheIndex::new(&s, &l, &dev)?;
            let out = decode_attention(&q, &kc, &vc, &index, 1.0 / (d as f64).sqrt())?;
            assert_close(&out, &reference(&q, &kc, &vc, &s, &l), 1e-14, "decode")?;
            // f32 inputs compute in f32.
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let out32 = decode_attention(&f(&q)?, &f(&kc)?, &f(&vc)?, &index, 0.5)?;
            assert_eq!(out32.dtype(), DType::F32);
        }
        Ok(())
    }

    /// The last query row of a causal attention over a document equals decode attention over a
    /// cache holding the document's keys and values (written by `kv_cache_write`), for several
    /// documents at once, each in its own slot.
    #[test]
    fn last_row_of_causal_attention_equals_decode() -> Result<()> {
        let dev = Device::Cpu;
        let (hq, hkv, d) = (6, 2, 8);
        let cu = [0, 5, 6, 17];
        let n = cu[3];
        let q = rand_tensor(&[n, hq, d], 4, &dev)?;
        let k = (rand_tensor(&[n, hkv, d], 5, &dev)? * 2.0)?;
        let v = rand_tensor(&[n, hkv, d], 6, &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let (full, _) = attention_forward(&q, &k, &v, &cu, scale)?;

        // Documents 0, 1, 2 in slots 1, 2, 0 of a cache with room to spare.
        let doc_slot = [1, 2, 0];
        let (kc, vc) = kv_cache_zeros(3, hkv, 20, d, DType::F64, &dev)?;
        let (mut slots, mut positions) = (Vec::new(), Vec::new());
        for (i, w) in cu.windows(2).enumerate() {
            slots.extend(std::iter::repeat_n(doc_slot[i], w[1] - w[0]));
            positions.extend(0..w[1] - w[0]);
        }
        kv_cache_write(
            &kc,
            &vc,
            &k,
            &v,
            &CacheIndex::new(&slots, &positions, &dev)?,
        )?;
        let last: Vec<usize> = cu[1..].iter().map(|&e| e - 1).collect();
        let lens: Vec<usize> = cu.windows(2).map(|w| w[1] - w[0]).collect();
        let rows = Tensor::new(
            last.iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &dev,
        )?;
        let out = decode_attention(
            &q.index_select(&rows, 0)?,
            &kc,
            &vc,
            &CacheIndex::new(&doc_slot, &lens, &dev)?,
            scale,
        )?;
        assert_close(&out, &full.index_select(&rows, 0)?, 1e-14, "last rows")?;
        // The cache holds exactly the rows written, zeros elsewhere.
        let slot0 = kc.get(0)?.narrow(1, 0, 11)?.transpose(0, 1)?;
        assert_close(&slot0, &k.narrow(0, 6, 11)?, 0.0, "slot 0 keys")?;
        assert_eq!(
            kc.get(0)?
                .narrow(1, 11, 9)?
                .abs()?
                .sum_all()?
                .to_scalar::<f64>()?,
            0.0
        );
        Ok(())
    }

    /// The fused append against loops in f64: q is the rotation of q_lin + bq at each row's
    /// position, the cache gets the rotated k and the biased v at each row's (slot, position),
    /// and nothing else of the cache changes.
    #[test]
    fn qkv_rope_append_equals_loops_in_f64() -> Result<()> {
        let dev = Device::Cpu;
        let (hq, hkv, d, slots, cap) = (6, 2, 8, 3, 7);
        let (at_slots, at_pos, positions) = ([2, 0, 2], [4, 6, 0], [9u32, 3, 20]);
        let n = at_slots.len();
        let lin = [hq, hkv, hkv].map(|h| rand_tensor(&[n, h * d], 10 + h as u64, &dev));
        let bias = [hq, hkv, hkv].map(|h| rand_tensor(&[h * d], 20 + h as u64, &dev));
        let (lin, bias) = (lin.map(|t| t.unwrap()), bias.map(|t| t.unwrap()));
        let cache = (
            rand_tensor(&[slots, hkv, cap, d], 1, &dev)?,
            rand_tensor(&[slots, hkv, cap, d], 2, &dev)?,
        );
        let (kc, vc) = &cache;
        let (kc0, vc0) = (kc.copy()?, vc.copy()?);
        let rope = RopeTables::new(&positions, d, 1e6, DType::F64, &dev)?;
        let at = CacheIndex::new(&at_slots, &at_pos, &dev)?;
        let (l, b) = ([&lin[0], &lin[1], &lin[2]], [&bias[0], &bias[1], &bias[2]]);
        let rows = |lin, bias, rope| NewRows { lin, bias, rope };
        let q = qkv_rope_append(&rows(l, b, &rope), &cache, &at)?;

        let (cos, sin): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (rope.cos.to_vec2()?, rope.sin.to_vec2()?);
        let plain = |i: usize| -> Result<Vec<Vec<f64>>> {
            let (l, b) = (lin[i].to_vec2::<f64>()?, bias[i].to_vec1::<f64>()?);
            Ok(l.iter()
                .map(|row| row.iter().zip(&b).map(|(x, y)| x + y).collect())
                .collect())
        };
        let rotated = |x: &[Vec<f64>], r: usize, c: usize| {
            let (e, half) = (c % d, d / 2);
            let partner = if e < half {
                -x[r][c + half]
            } else {
                x[r][c - half]
            };
            x[r][c] * cos[r][e] + partner * sin[r][e]
        };
        let (qb, kb, vb) = (plain(0)?, plain(1)?, plain(2)?);
        let q_want: Vec<f64> = (0..n * hq * d)
            .map(|i| rotated(&qb, i / (hq * d), i % (hq * d)))
            .collect();
        let q_want = Tensor::from_vec(q_want, (n, hq, d), &dev)?;
        assert_close(&q, &q_want, 1e-15, "q")?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f64>();
        let (mut k_want, mut v_want) = (flat(&kc0)?, flat(&vc0)?);
        for r in 0..n {
            for (c, &v) in vb[r].iter().enumerate() {
                let dst = ((at_slots[r] * hkv + c / d) * cap + at_pos[r]) * d + c % d;
                k_want[dst] = rotated(&kb, r, c);
                v_want[dst] = v;
            }
        }
        let as_cache = |v: Vec<f64>| Tensor::from_vec(v, (slots, hkv, cap, d), &dev);
        assert_close(kc, &as_cache(k_want)?, 1e-15, "k cache")?;
        assert_close(vc, &as_cache(v_want)?, 0.0, "v cache")?;

        // Bad shapes are errors, and leave the caches as they were.
        let (kc1, vc1) = (kc.copy()?, vc.copy()?);
        let fails = |rows: NewRows, at: &CacheIndex| qkv_rope_append(&rows, &cache, at).is_err();
        assert!(fails(rows([&lin[1], l[1], l[2]], b, &rope), &at)); // q of kv width
        assert!(fails(rows(l, [b[0], b[2], &bias[0]], &rope), &at)); // v bias of q width
        let short = RopeTables::new(&positions[..2], d, 1e6, DType::F64, &dev)?;
        assert!(fails(rows(l, b, &short), &at));
        let twice = CacheIndex::new(&[1, 1, 0], &[3, 3, 0], &dev)?;
        assert!(fails(rows(l, b, &rope), &twice));
        let f32 = l[0].to_dtype(DType::F32)?;
        assert!(fails(rows([&f32, l[1], l[2]], b, &rope), &at));
        assert_close(kc, &kc1, 0.0, "k cache after the errors")?;
        assert_close(vc, &vc1, 0.0, "v cache after the errors")?;
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let (kc, vc) = kv_cache_zeros(2, 1, 4, 8, DType::F64, &dev)?;
        let q = rand_tensor(&[1, 2, 8], 1, &dev)?;
        let row = rand_tensor(&[1, 1, 8], 2, &dev)?;
        let idx = |s: usize, v: usize| CacheIndex::new(&[s], &[v], &dev).unwrap();
        assert!(decode_attention(&q, &kc, &vc, &idx(2, 1), 1.0).is_err()); // no slot 2
        assert!(decode_attention(&q, &kc, &vc, &idx(0, 0), 1.0).is_err()); // no keys
        assert!(decode_attention(&q, &kc, &vc, &idx(0, 5), 1.0).is_err()); // past capacity
        assert!(decode_attention(&q.narrow(2, 0, 4)?, &kc, &vc, &idx(0, 1), 1.0).is_err());
        assert!(decode_attention(&q.to_dtype(DType::F32)?, &kc, &vc, &idx(0, 1), 1.0).is_err());
        assert!(kv_cache_write(&kc, &vc, &row, &row, &idx(0, 4)).is_err());
        let twice = CacheIndex::new(&[1, 1], &[2, 2], &dev)?;
        let rows = Tensor::cat(&[&row, &row], 0)?;
        assert!(kv_cache_write(&kc, &vc, &rows, &rows, &twice).is_err());
        assert!(CacheIndex::new(&[0, 1], &[1], &dev).is_err());
        assert!(CacheIndex::new(&[], &[], &dev).is_err());
        kv_cache_write(&kc, &vc, &row, &row, &idx(1, 3))?;
        assert_close(&kc.get(1)?.narrow(1, 3, 1)?, &row, 0.0, "written row")?;
        Ok(())
    }
}
