//! Batched generation with a KV cache: the prompts of a batch are prefilled in one packed
//! forward (documents delimited by `cu_seqlens`, as in training), then every live sequence
//! decodes one token per step, attending to its own cache. Sequences that finish leave the
//! batch, and [`Generator`] lets new prompts join it (continuous batching).
//!
//! ```text
//! prefill:  x = embed[prompts packed]; per layer: q, k, v = qkv(x); cache += k, v;
//!           x = output(attention(q, k, v, cu_seqlens))            -> logits of each last token
//! decode:   x = embed[last tokens]; per layer: q, k, v = qkv(x) at position len(cache);
//!           cache += k, v; per sequence: softmax(q K^T * scale) V over its cache (GQA groups)
//! ```
//! The layer's own pieces ([`layer_qkv`], [`layer_output`]) run both, so cached logits equal
//! the no-cache forward ([`crate::model::next_token_logits`]) to rounding (f64: ~1e-15).
//!
//! Sampling: temperature 0 is greedy argmax (on the device); otherwise softmax(logits / T)
//! restricted to the nucleus of top-p mass, drawn from a per-sequence random stream seeded
//! from the sequence's own seed, so what a sequence generates does not depend on which other
//! sequences share its batch, nor on their order.

use candle_core::{DType, Tensor, D};
use limo_ops::{attention_forward, compute_dtype, rms_norm_forward, RopeCache, RopeTables};

use crate::layer::{layer_output, layer_qkv};
use crate::{Error, ModelWeights, Qwen2Config, Result};

/// Tokens of headroom a cache allocates beyond what it needs when it grows.
const CACHE_HEADROOM: usize = 64;

/// The past keys and values of one sequence, per layer: RoPE already applied to the keys.
/// Stored heads-first, `[kv_heads, capacity, head_dim]`, in the model dtype, grown by half
/// again when full, so appending a token copies only that token.
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
}

struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    /// Tokens cached (in every layer, between forwards).
    pub fn len(&self) -> usize {
        self.layer_len(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn layer_len(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
    }

    /// Keys and values of layer `layer`, each `[len, kv_heads, head_dim]` (views of the cache);
    /// `None` while the cache is empty.
    pub fn layer(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        match self.heads_first(layer)? {
            Some((k, v)) => Ok(Some((k.transpose(0, 1)?, v.transpose(0, 1)?))),
            None => Ok(None),
        }
    }

    /// `[kv_heads, len, head_dim]` views of layer `layer`'s keys and values.
    fn heads_first(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        match self.layers.get(layer) {
            Some(Some(l)) => Ok(Some((l.k.narrow(1, 0, l.len)?, l.v.narrow(1, 0, l.len)?))),
            Some(None) => Ok(None),
            None => Err(Error::Config(format!(
                "KV cache: layer {layer} of {}",
                self.layers.len()
            ))),
        }
    }

    /// Appends `k`, `v` of `[kv_heads, n, head_dim]` (contiguous) to layer `layer`.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kv_heads, n, head_dim) = k.dims3()?;
        let slot = &mut self.layers[layer];
        let len = slot.as_ref().map_or(0, |l| l.len);
        let capacity = match slot {
            Some(l) => l.k.dim(1)?,
            None => 0,
        };
        if len + n > capacity {
            let new_capacity = (len + n + CACHE_HEADROOM).max(capacity + capacity / 2);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let fresh = Tensor::zeros(
                    (kv_heads, new_capacity - len, head_dim),
                    k.dtype(),
                    k.device(),
                )?;
                Ok(match old {
                    Some(old) => Tensor::cat(&[&old.narrow(1, 0, len)?, &fresh], 1)?,
                    None => fresh,
                })
            };
            let (k_buf, v_buf) = (
                grow(slot.as_ref().map(|l| &l.k))?,
                grow(slot.as_ref().map(|l| &l.v))?,
            );
            *slot = Some(LayerKv {
                k: k_buf,
                v: v_buf,
                len,
            });
        }
        let l = slot.as_mut().expect("allocated above");
        l.k.slice_set(&k.contiguous()?, 1, len)?;
        l.v.slice_set(&v.contiguous()?, 1, len)?;
        l.len = len + n;
        Ok(())
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy argmax; otherwise the logits are divided by it before the softmax.
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches
    /// `top_p` (at least one token); 1 keeps them all.
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }

    fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The new tokens, without the stop token.
    pub ids: Vec<u32>,
    /// True when a stop token ended it; false when it reached `max_new_tokens`.
    pub stopped: bool,
}

/// A model with the tables it decodes with: prefill and decode steps over caller-held caches.
pub struct CachedModel<'a> {
    config: &'a Qwen2Config,
    weights: &'a ModelWeights,
    rope: RopeCache,
}

impl<'a> CachedModel<'a> {
    pub fn new(config: &'a Qwen2Config, weights: &'a ModelWeights) -> Self {
        let rope = RopeCache::new(
            config.head_dim,
            config.rope_theta,
            weights.embed.dtype(),
            weights.embed.device(),
        );
        Self {
            config,
            weights,
            rope,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    fn scale(&self) -> f64 {
        1.0 / (self.config.head_dim as f64).sqrt()
    }

    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Config(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let index = Tensor::from_slice(ids, ids.len(), self.weights.embed.device())?;
        Ok(self.weights.embed.index_select(&index, 0)?)
    }

    /// Logits `[rows, vocab]` of the final hidden states `x [rows, hidden]`.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (normed, _) = rms_norm_forward(x, &self.weights.final_norm, self.config.rms_norm_eps)?;
        Ok(normed.matmul(&self.weights.head().t()?)?)
    }

    /// Runs the prompts (none empty) through the model packed in one forward, filling their
    /// caches (which must be empty), and returns the logits `[B, vocab]` of the token after
    /// each prompt.
    pub fn prefill(&self, prompts: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if prompts.is_empty() || prompts.len() != caches.len() {
            return Err(Error::Config(format!(
                "prefill: {} prompts and {} caches",
                prompts.len(),
                caches.len()
            )));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::Config(format!("prefill: prompt {i} is empty")));
        }
        if caches.iter().any(|c| !c.is_empty()) {
            return Err(Error::Config("prefill: the caches must be empty".into()));
        }
        let mut cu_seqlens = vec![0];
        let mut positions = Vec::new();
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend_from_slice(p);
            positions.extend(0..p.len() as u32);
            cu_seqlens.push(ids.len());
        }
        let rope = self.rope.tables(&positions)?;
        let mut x = self.embed(&ids)?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (q, k, v) = layer_qkv(w, &x, self.config, &rope)?;
            for (i, cache) in caches.iter_mut().enumerate() {
                let (start, len) = (cu_seqlens[i], cu_seqlens[i + 1] - cu_seqlens[i]);
                let heads_first = |t: &Tensor| t.narrow(0, start, len)?.transpose(0, 1);
                cache.append(l, &heads_first(&k)?, &heads_first(&v)?)?;
            }
            let (attn, _) = attention_forward(&q, &k, &v, &cu_seqlens, self.scale())?;
            x = layer_output(w, &x, &attn, self.config)?;
        }
        let last: Vec<u32> = cu_seqlens[1..].iter().map(|&e| e as u32 - 1).collect();
        let last = Tensor::from_slice(&last, last.len(), x.device())?;
        self.logits(&x.index_select(&last, 0)?)
    }

    /// One decode step: `tokens[i]` is the next token of the sequence cached in `caches[i]`
    /// (at position `caches[i].len()`); appends its keys and values and returns the logits
    /// `[B, vocab]` of the token after it.
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(Error::Config(format!(
                "decode: {} tokens and {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let cfg = self.config;
        let (kv_heads, head_dim) = (cfg.num_key_value_heads, cfg.head_dim);
        let group = cfg.num_attention_heads / kv_heads;
        let positions: Vec<u32> = caches.iter().map(|c| c.len() as u32).collect();
        let rope: RopeTables = self.rope.tables(&positions)?;
        let mut x = self.embed(tokens)?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (q, k, v) = layer_qkv(w, &x, cfg, &rope)?;
            let compute = compute_dtype(q.dtype());
            let mut outs = Vec::with_capacity(tokens.len());
            for (i, cache) in caches.iter_mut().enumerate() {
                let heads_first = |t: &Tensor| t.narrow(0, i, 1)?.transpose(0, 1);
                cache.append(l, &heads_first(&k)?, &heads_first(&v)?)?;
                let (keys, values) = cache.heads_first(l)?.expect("appended above");
                // [kv_heads, group, d]: query head h reads kv head h / group.
                let qi = q
                    .narrow(0, i, 1)?
                    .reshape((kv_heads, group, head_dim))?
                    .to_dtype(compute)?;
                let scores = (qi.matmul(&keys.to_dtype(compute)?.t()?)? * self.scale())?;
                let max = scores.max_keepdim(D::Minus1)?;
                let sum = scores.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
                let lse = (max + sum.log()?)?;
                let probs = scores.broadcast_sub(&lse)?.exp()?;
                let out = probs.matmul(&values.to_dtype(compute)?)?;
                outs.push(out.reshape((1, cfg.num_attention_heads, head_dim))?);
            }
            let attn = Tensor::cat(&outs, 0)?.to_dtype(q.dtype())?;
            x = layer_output(w, &x, &attn, cfg)?;
        }
        self.logits(&x)
    }
}

/// A seeded random stream (SplitMix64): small, and the same on every platform and version.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and `data` (FNV-1a, then mixed): stable across platforms and
/// versions, for per-sequence seeds such as (run seed, problem id, sample).
pub fn derive_seed(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ mix64(seed);
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

/// Draws a token from `logits` with temperature `t > 0` and nucleus `top_p`.
fn sample_row(logits: &[f64], t: f64, top_p: f64, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let total: f64 = weights.iter().sum();
    let u = rng.uniform();
    if top_p >= 1.0 {
        let mut target = u * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last = i;
                if target < w {
                    return i as u32;
                }
                target -= w;
            }
        }
        return last as u32;
    }
    // The nucleus: most likely first (ties by token id), until its mass reaches top_p. Only
    // the head of that order is sorted: the top m tokens, m growing until they hold the mass.
    let by_weight = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    let candidates: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] > 0.0)
        .collect();
    let mut m = 64;
    let (order, keep, mass) = loop {
        let mut head = candidates.clone();
        if m < head.len() {
            head.select_nth_unstable_by(m - 1, by_weight);
            head.truncate(m);
        }
        head.sort_unstable_by(by_weight);
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &head {
            mass += weights[i as usize];
            keep += 1;
            if mass >= top_p * total {
                break;
            }
        }
        if mass >= top_p * total || head.len() == candidates.len() {
            break (head, keep, mass);
        }
        m *= 8;
    };
    let mut target = u * mass;
    for &i in &order[..keep] {
        let w = weights[i as usize];
        if target < w {
            return i;
        }
        target -= w;
    }
    order[keep - 1]
}

/// The next token of every row of `logits [B, vocab]`, `rngs[i]` drawing row i's.
fn choose(logits: &Tensor, sampling: &Sampling, rngs: &mut [&mut Rng]) -> Result<Vec<u32>> {
    if sampling.temperature == 0.0 {
        return Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    // f32 crosses to the host (f64 for an f64 model); the softmax is computed in f64.
    let rows: Vec<Vec<f64>> = if logits.dtype() == DType::F64 {
        logits.to_vec2::<f64>()?
    } else {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        rows.into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect()
    };
    Ok(rows
        .iter()
        .zip(rngs.iter_mut())
        .map(|(row, rng)| sample_row(row, sampling.temperature, sampling.top_p, rng))
        .collect())
}

struct Request {
    key: usize,
    prompt: Vec<u32>,
    seed: u64,
}

struct Sequence {
    key: usize,
    cache: KvCache,
    rng: Rng,
    ids: Vec<u32>,
}

/// Continuous batching: prompts are added with a key and a seed at any time; every
/// [`Generator::step`] prefills the prompts added since the last step (choosing their first
/// token) and decodes one token of every sequence that was already live, and returns the
/// sequences that finished.
pub struct Generator<'a> {
    model: CachedModel<'a>,
    max_new_tokens: usize,
    stop_ids: Vec<u32>,
    sampling: Sampling,
    pending: Vec<Request>,
    live: Vec<Sequence>,
}

impl<'a> Generator<'a> {
    pub fn new(
        config: &'a Qwen2Config,
        weights: &'a ModelWeights,
        max_new_tokens: usize,
        stop_ids: &[u32],
        sampling: Sampling,
    ) -> Result<Self> {
        sampling.check()?;
        Ok(Self {
            model: CachedModel::new(config, weights),
            max_new_tokens,
            stop_ids: stop_ids.to_vec(),
            sampling,
            pending: Vec::new(),
            live: Vec::new(),
        })
    }

    /// Queues `prompt` (not empty); its result comes back from [`Self::step`] under `key`. The
    /// sequence draws its tokens from a stream seeded by `seed` alone.
    pub fn add(&mut self, key: usize, prompt: Vec<u32>, seed: u64) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::Config(format!("prompt {key} is empty")));
        }
        self.pending.push(Request { key, prompt, seed });
        Ok(())
    }

    /// Sequences queued or decoding.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight() == 0
    }

    /// Advances every sequence by one token (see the type's documentation); returns
    /// `(key, result)` of the sequences that finished.
    pub fn step(&mut self) -> Result<Vec<(usize, Generated)>> {
        let mut finished = Vec::new();
        let mut live = std::mem::take(&mut self.live);
        let requests = std::mem::take(&mut self.pending);
        if !requests.is_empty() && self.max_new_tokens == 0 {
            finished.extend(requests.into_iter().map(|r| {
                let empty = Generated {
                    ids: Vec::new(),
                    stopped: false,
                };
                (r.key, empty)
            }));
        } else if !requests.is_empty() {
            let mut fresh: Vec<Sequence> = requests
                .iter()
                .map(|r| Sequence {
                    key: r.key,
                    cache: self.model.new_cache(),
                    rng: Rng(r.seed),
                    ids: Vec::new(),
                })
                .collect();
            let prompts: Vec<&[u32]> = requests.iter().map(|r| r.prompt.as_slice()).collect();
            let mut caches: Vec<&mut KvCache> = fresh.iter_mut().map(|s| &mut s.cache).collect();
            let logits = self.model.prefill(&prompts, &mut caches)?;
            self.advance(fresh, &logits, &mut finished)?;
        }
        if !live.is_empty() {
            let tokens: Vec<u32> = live
                .iter()
                .map(|s| *s.ids.last().expect("live sequences have a token"))
                .collect();
            let mut caches: Vec<&mut KvCache> = live.iter_mut().map(|s| &mut s.cache).collect();
            let logits = self.model.decode(&tokens, &mut caches)?;
            self.advance(live, &logits, &mut finished)?;
        }
        Ok(finished)
    }

    /// Appends the chosen token of each sequence; moves finished ones to `finished`.
    fn advance(
        &mut self,
        mut seqs: Vec<Sequence>,
        logits: &Tensor,
        finished: &mut Vec<(usize, Generated)>,
    ) -> Result<()> {
        let mut rngs: Vec<&mut Rng> = seqs.iter_mut().map(|s| &mut s.rng).collect();
        let next = choose(logits, &self.sampling, &mut rngs)?;
        for (mut s, token) in seqs.into_iter().zip(next) {
            if self.stop_ids.contains(&token) {
                finished.push((
                    s.key,
                    Generated {
                        ids: s.ids,
                        stopped: true,
                    },
                ));
                continue;
            }
            s.ids.push(token);
            if s.ids.len() >= self.max_new_tokens {
                finished.push((
                    s.key,
                    Generated {
                        ids: s.ids,
                        stopped: false,
                    },
                ));
            } else {
                self.live.push(s);
            }
        }
        Ok(())
    }
}

/// Generates a continuation of every prompt (none empty), all in one batch, until a stop id
/// (not included in the result) or `max_new_tokens`. Sequence i draws from a stream seeded
/// by `sampling.seed`, its prompt, and how many identical prompts come before it: the same
/// prompt gives the same continuation whatever else is in the batch, and in any order.
pub fn generate(
    config: &Qwen2Config,
    weights: &ModelWeights,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
    sampling: Sampling,
) -> Result<Vec<Generated>> {
    let mut generator = Generator::new(config, weights, max_new_tokens, stop_ids, sampling)?;
    let mut seen: std::collections::HashMap<&[u32], u64> = std::collections::HashMap::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let occurrence = seen.entry(prompt.as_slice()).or_insert(0);
        let mut data: Vec<u8> = occurrence.to_le_bytes().to_vec();
        data.extend(prompt.iter().flat_map(|t| t.to_le_bytes()));
        *occurrence += 1;
        generator.add(i, prompt.clone(), derive_seed(sampling.seed, &data))?;
    }
    let mut results: Vec<Option<Generated>> = vec![None; prompts.len()];
    while !generator.is_empty() {
        for (key, generated) in generator.step()? {
            results[key] = Some(generated);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every prompt finishes"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nucleus by a full sort: what `sample_row` must draw, for the same uniform.
    fn naive(logits: &[f64], t: f64, top_p: f64, u: f64) -> u32 {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut order: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
        order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let (mut mass, mut keep) = (0.0, 0);
        for &i in &order {
            mass += w[i];
            keep += 1;
            if mass >= top_p * total {
                break;
            }
        }
        let mut target = u * mass;
        for &i in &order[..keep] {
            if target < w[i] {
                return i as u32;
            }
            target -= w[i];
        }
        order[keep - 1] as u32
    }

    #[test]
    fn nucleus_sampling_equals_a_full_sort() {
        let mut gen = Rng(1);
        for case in 0..200 {
            let vocab = [5, 70, 1000, 5000][case % 4];
            // Flat and peaked distributions, with ties.
            let spread = [0.1, 1.0, 8.0][case % 3];
            let logits: Vec<f64> = (0..vocab)
                .map(|_| (gen.uniform() * spread * 4.0).round() / 4.0)
                .collect();
            for (top_p, t) in [
                (0.5, 1.0),
                (0.9, 0.7),
                (0.999, 1.3),
                (1e-9, 1.0),
                (1.0, 1.0),
            ] {
                let mut rng = Rng(case as u64);
                let u = rng.clone().uniform();
                let got = sample_row(&logits, t, top_p, &mut rng);
                if top_p < 1.0 {
                    assert_eq!(
                        got,
                        naive(&logits, t, top_p, u),
                        "case {case} top_p {top_p}"
                    );
                }
                assert!((got as usize) < vocab);
            }
        }
    }

    #[test]
    fn derived_seeds_are_stable() {
        assert_eq!(derive_seed(0, b""), derive_seed(0, b""));
        assert_ne!(derive_seed(0, b"a"), derive_seed(1, b"a"));
        assert_ne!(derive_seed(0, b"a\x001"), derive_seed(0, b"a\x002"));
    }
}
