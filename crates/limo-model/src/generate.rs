//! Batched generation with a KV cache: the prompts of a batch are prefilled in one packed
//! forward (documents delimited by `cu_seqlens`, as in training), then every live sequence
//! decodes one token per step, attending to its own cache. Sequences that finish leave the
//! batch, and [`Generator`] lets new prompts join it (continuous batching).
//!
//! ```text
//! prefill:  x = embed[prompts packed]; per layer: q, k, v = qkv(x); cache += k, v;
//!           x = output(attention(q, k, v, cu_seqlens))            -> logits of each last token
//! decode:   x = embed[last tokens]; per layer: q, k, v = qkv(x) at position len(cache);
//!           cache += k, v; decode_attention(q, cache): every sequence over its own cache
//! ```
//! The layer's own pieces ([`layer_qkv`], [`layer_output`]) run both, so cached logits equal
//! the no-cache forward ([`crate::model::next_token_logits`]) to rounding (f64: ~1e-15).
//!
//! The cache of a batch is one pool per layer, `[slots, kv_heads, capacity, head_dim]`: each
//! live sequence owns a slot, a step's new keys and values of all sequences are written with
//! one [`kv_cache_write`] per layer (in decode fused with the biases and RoPE:
//! [`layer_qkv_append`]), and one [`decode_attention`] per layer attends for the whole batch
//! (on CUDA: the split-K kernels of `kernels/decode_attention.cu`; on the CPU the reference,
//! sequence by sequence). Between layers the residual stream carries its next norm
//! ([`Stream`]), made with the residual add in one kernel. Prefill attention is
//! [`attention_forward`] (the flash kernel for bf16 on CUDA). [`KvCache`] is a pool of one
//! slot, for callers that hold one cache per sequence ([`CachedModel::prefill`],
//! [`CachedModel::decode`]).
//!
//! Sampling: temperature 0 is greedy argmax (on the device); otherwise softmax(logits / T)
//! restricted to the nucleus of top-p mass, drawn from a per-sequence random stream seeded
//! from the sequence's own seed, so what a sequence generates does not depend on which other
//! sequences share its batch, nor on their order. That holds to the bit on the CPU. On a GPU
//! the attention kernels keep it, but cuBLAS picks its matmul kernel by the number of rows (the
//! batch in decode), so logits may differ in the last bits with the batch, and a near tie in
//! bf16 can then pick another token (candle's CUDA argmax also breaks exact ties by thread, not
//! by the lowest index).
//!
//! [`kv_cache_write`]: limo_ops::decode_attention::kv_cache_write
//! [`decode_attention`]: limo_ops::decode_attention::decode_attention

use candle_core::Tensor;
use limo_ops::decode_attention::CacheIndex;
use limo_ops::{attention_forward, RopeCache, RopeTables};

pub use crate::kv_cache::{kv_cache_bytes, KvCache};
use crate::kv_cache::{Caches, KvPool, KvShape};
use crate::layer::{layer_output, layer_qkv, layer_qkv_append, Stream};
use crate::sampling::{choose, Rng};
pub use crate::sampling::{derive_seed, Sampling};
use crate::{Error, ModelWeights, Qwen2Config, Result};

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
    shape: KvShape,
}

impl<'a> CachedModel<'a> {
    pub fn new(config: &'a Qwen2Config, weights: &'a ModelWeights) -> Self {
        let rope = RopeCache::new(
            config.head_dim,
            config.rope_theta,
            weights.embed.dtype(),
            weights.embed.device(),
        );
        let shape = KvShape {
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            dtype: weights.embed.dtype(),
            device: weights.embed.device().clone(),
        };
        Self {
            config,
            weights,
            rope,
            shape,
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

    /// Logits `[rows, vocab]` of the final hidden states, given by their final norm `normed`.
    fn logits(&self, normed: &Tensor) -> Result<Tensor> {
        Ok(normed.matmul(&self.weights.head().t()?)?)
    }

    /// The embedded tokens and their norm for the first layer.
    fn start(&self, ids: &[u32]) -> Result<Stream> {
        let first = match self.weights.layers.first() {
            Some(w) => &w.input_norm,
            None => &self.weights.final_norm,
        };
        Ok(Stream::start(self.embed(ids)?, first, self.config)?)
    }

    /// What the stream after layer `l` is normed for: the next layer's input, or the head.
    fn next_norm(&self, l: usize) -> &Tensor {
        match self.weights.layers.get(l + 1) {
            Some(w) => &w.input_norm,
            None => &self.weights.final_norm,
        }
    }

    /// Runs the prompts (none empty) through the model packed in one forward, filling their
    /// caches (which must be empty), and returns the logits `[B, vocab]` of the token after
    /// each prompt.
    pub fn prefill(&self, prompts: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        one_cache_each("prefill", prompts.len(), "prompts", caches.len())?;
        self.prefill_into(prompts, Caches::Each(caches))
    }

    /// One decode step: `tokens[i]` is the next token of the sequence cached in `caches[i]`
    /// (at position `caches[i].len()`); appends its keys and values and returns the logits
    /// `[B, vocab]` of the token after it.
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        one_cache_each("decode", tokens.len(), "tokens", caches.len())?;
        self.decode_into(tokens, Caches::Each(caches))
    }

    fn prefill_into(&self, prompts: &[&[u32]], mut caches: Caches) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::Config("prefill: no prompts".into()));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::Config(format!("prefill: prompt {i} is empty")));
        }
        if (0..caches.count()).any(|i| caches.len(i) != 0) {
            return Err(Error::Config("prefill: the caches must be empty".into()));
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        caches.reserve(&self.shape, &lens)?;
        let mut cu_seqlens = vec![0];
        let mut positions = Vec::new();
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend_from_slice(p);
            positions.extend(0..p.len() as u32);
            cu_seqlens.push(ids.len());
        }
        let device = self.weights.embed.device();
        // Where each prompt token's keys and values go: (slot, position).
        let writes: Vec<CacheIndex> = match &caches {
            Caches::Each(_) => lens
                .iter()
                .map(|&n| CacheIndex::new(&vec![0; n], &(0..n).collect::<Vec<_>>(), device))
                .collect::<candle_core::Result<_>>()?,
            Caches::Pool { slots, .. } => {
                let token_slots: Vec<usize> = slots
                    .iter()
                    .zip(&lens)
                    .flat_map(|(&s, &n)| std::iter::repeat_n(s, n))
                    .collect();
                let token_pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
                vec![CacheIndex::new(&token_slots, &token_pos, device)?]
            }
        };
        let rope = self.rope.tables(&positions)?;
        let mut stream = self.start(&ids)?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let (q, k, v) = layer_qkv(w, &stream.normed, self.config, &rope)?;
            match &caches {
                Caches::Each(each) => {
                    for (i, cache) in each.iter().enumerate() {
                        let (start, len) = (cu_seqlens[i], lens[i]);
                        let (ki, vi) = (k.narrow(0, start, len)?, v.narrow(0, start, len)?);
                        cache.pool.write(l, &ki, &vi, &writes[i])?;
                    }
                }
                Caches::Pool { pool, .. } => pool.write(l, &k, &v, &writes[0])?,
            }
            let (attn, _) = attention_forward(&q, &k, &v, &cu_seqlens, self.scale())?;
            stream = layer_output(w, &stream, &attn, self.config, self.next_norm(l))?;
        }
        caches.advance(&lens);
        let last: Vec<u32> = cu_seqlens[1..].iter().map(|&e| e as u32 - 1).collect();
        let last = Tensor::from_slice(&last, last.len(), stream.x.device())?;
        self.logits(&stream.normed.index_select(&last, 0)?)
    }

    fn decode_into(&self, tokens: &[u32], mut caches: Caches) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::Config("decode: no tokens".into()));
        }
        let cfg = self.config;
        let b = tokens.len();
        let lens: Vec<usize> = (0..b).map(|i| caches.len(i)).collect();
        if let Some(i) = lens.iter().position(|&n| n == 0) {
            return Err(Error::Config(format!(
                "decode: sequence {i} has an empty cache (prefill it first)"
            )));
        }
        caches.reserve(&self.shape, &vec![1; b])?;
        let positions: Vec<u32> = lens.iter().map(|&n| n as u32).collect();
        let device = self.weights.embed.device();
        let after: Vec<usize> = lens.iter().map(|n| n + 1).collect();
        // (slot, position) of each new row and (slot, keys) of each query, uploaded once for
        // all layers.
        let (writes, reads) = match &caches {
            Caches::Each(_) => {
                let write = |i: usize| CacheIndex::new(&[0], &[lens[i]], device);
                let read = |i: usize| CacheIndex::new(&[0], &[after[i]], device);
                (
                    (0..b).map(write).collect::<candle_core::Result<Vec<_>>>()?,
                    (0..b).map(read).collect::<candle_core::Result<Vec<_>>>()?,
                )
            }
            Caches::Pool { slots, .. } => (
                vec![CacheIndex::new(slots, &lens, device)?],
                vec![CacheIndex::new(slots, &after, device)?],
            ),
        };
        let rope: RopeTables = self.rope.tables(&positions)?;
        let mut stream = self.start(tokens)?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let attn = match &caches {
                Caches::Each(each) => {
                    let (q, k, v) = layer_qkv(w, &stream.normed, cfg, &rope)?;
                    let mut outs = Vec::with_capacity(b);
                    for (i, cache) in each.iter().enumerate() {
                        let row = |t: &Tensor| t.narrow(0, i, 1);
                        cache.pool.write(l, &row(&k)?, &row(&v)?, &writes[i])?;
                        outs.push(cache.pool.attend(l, &row(&q)?, &reads[i], self.scale())?);
                    }
                    Tensor::cat(&outs, 0)?
                }
                Caches::Pool { pool, .. } => {
                    let q = layer_qkv_append(w, &stream.normed, &rope, pool.layer(l)?, &writes[0])?;
                    pool.attend(l, &q, &reads[0], self.scale())?
                }
            };
            stream = layer_output(w, &stream, &attn, cfg, self.next_norm(l))?;
        }
        caches.advance(&vec![1; b]);
        self.logits(&stream.normed)
    }
}

struct Request {
    key: usize,
    /// What the prefill reads: the prompt, then the tokens a continued sequence already has.
    prompt: Vec<u32>,
    /// How many of `prompt`'s last tokens were generated (0 for a new sequence).
    generated: usize,
    rng: u64,
}

/// Where a sequence stands: its tokens so far and its random stream's state. A [`Generator`]
/// given it back ([`Generator::add_continued`]) goes on as if it had never stopped, so an
/// evaluation cut short keeps what it generated.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    pub ids: Vec<u32>,
    pub rng: u64,
}

struct Sequence {
    key: usize,
    /// Its slot of the generator's cache pool.
    slot: usize,
    /// Prompt tokens plus `max_new_tokens`: the most cache positions it can need.
    limit: usize,
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
    /// The caches of all sequences, one slot each; finished sequences return their slot.
    pool: KvPool,
    free_slots: Vec<usize>,
    /// The sequence whose logits were not finite, once [`Self::step`] failed on it.
    non_finite: Option<usize>,
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
            pool: KvPool::new(config.num_hidden_layers),
            free_slots: Vec::new(),
            non_finite: None,
        })
    }

    /// Queues `prompt` (not empty); its result comes back from [`Self::step`] under `key`. The
    /// sequence draws its tokens from a stream seeded by `seed` alone.
    pub fn add(&mut self, key: usize, prompt: Vec<u32>, seed: u64) -> Result<()> {
        let start = Continuation {
            ids: Vec::new(),
            rng: seed,
        };
        self.add_continued(key, prompt, start)
    }

    /// Queues `prompt` to go on from `from` (one of [`Self::in_progress`]): its next token
    /// is the one the sequence would have chosen next (the prefill reads its tokens so far,
    /// where the sequence had them in its cache: the same logits up to rounding).
    pub fn add_continued(
        &mut self,
        key: usize,
        mut prompt: Vec<u32>,
        from: Continuation,
    ) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::Config(format!("prompt {key} is empty")));
        }
        if !from.ids.is_empty() && from.ids.len() >= self.max_new_tokens {
            return Err(Error::Config(format!(
                "sequence {key}: {} tokens generated, the most is {}",
                from.ids.len(),
                self.max_new_tokens
            )));
        }
        if let Some(stop) = from.ids.iter().find(|t| self.stop_ids.contains(t)) {
            return Err(Error::Config(format!(
                "sequence {key}: its tokens hold the stop id {stop}"
            )));
        }
        let generated = from.ids.len();
        prompt.extend(from.ids);
        self.pending.push(Request {
            key,
            prompt,
            generated,
            rng: from.rng,
        });
        Ok(())
    }

    /// Every unfinished sequence's key and [`Continuation`], queued ones included.
    pub fn in_progress(&self) -> Vec<(usize, Continuation)> {
        let queued = self.pending.iter().map(|r| {
            let ids = r.prompt[r.prompt.len() - r.generated..].to_vec();
            (r.key, Continuation { ids, rng: r.rng })
        });
        let live = self.live.iter().map(|s| {
            let c = Continuation {
                ids: s.ids.clone(),
                rng: s.rng.0,
            };
            (s.key, c)
        });
        queued.chain(live).collect()
    }

    /// Sequences queued or decoding.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight() == 0
    }

    /// The key of the sequence a failed [`Self::step`] found logits that are not finite (NaN
    /// or infinity) for: its caller can name what that sequence was.
    pub fn non_finite(&self) -> Option<usize> {
        self.non_finite
    }

    /// Advances every sequence by one token (see the type's documentation); returns
    /// `(key, result)` of the sequences that finished.
    pub fn step(&mut self) -> Result<Vec<(usize, Generated)>> {
        let mut finished = Vec::new();
        let live = std::mem::take(&mut self.live);
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
            // New slots after the free ones, lowest first, so the pool grows only when the
            // batch does.
            self.free_slots.sort_unstable_by(|a, b| b.cmp(a));
            let mut next_slot = self.pool.slots();
            let fresh: Vec<Sequence> = requests
                .iter()
                .map(|r| Sequence {
                    key: r.key,
                    slot: self.free_slots.pop().unwrap_or_else(|| {
                        next_slot += 1;
                        next_slot - 1
                    }),
                    limit: r.prompt.len() - r.generated + self.max_new_tokens,
                    rng: Rng(r.rng),
                    ids: r.prompt[r.prompt.len() - r.generated..].to_vec(),
                })
                .collect();
            let prompts: Vec<&[u32]> = requests.iter().map(|r| r.prompt.as_slice()).collect();
            let slots: Vec<usize> = fresh.iter().map(|s| s.slot).collect();
            let limit = fresh.iter().chain(&live).map(|s| s.limit).max();
            let caches = Caches::Pool {
                pool: &mut self.pool,
                slots: &slots,
                limit: limit.unwrap_or(0),
            };
            let logits = self.model.prefill_into(&prompts, caches);
            let logits = match logits {
                Ok(l) => l,
                Err(e) => {
                    // The slots stay usable for later requests.
                    for s in &fresh {
                        self.pool_release(s.slot);
                    }
                    return Err(e);
                }
            };
            self.advance(fresh, &logits, &mut finished)?;
        }
        if !live.is_empty() {
            let tokens: Vec<u32> = live
                .iter()
                .map(|s| *s.ids.last().expect("live sequences have a token"))
                .collect();
            let slots: Vec<usize> = live.iter().map(|s| s.slot).collect();
            let limit = live.iter().map(|s| s.limit).max().unwrap_or(0);
            let caches = Caches::Pool {
                pool: &mut self.pool,
                slots: &slots,
                limit,
            };
            let logits = self.model.decode_into(&tokens, caches)?;
            self.advance(live, &logits, &mut finished)?;
        }
        Ok(finished)
    }

    /// Returns a finished sequence's slot to the pool.
    fn pool_release(&mut self, slot: usize) {
        if let Some(len) = self.pool.lens.get_mut(slot) {
            *len = 0;
        }
        self.free_slots.push(slot);
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
        // A NaN row would still give a token (argmax picks one): a response of garbage,
        // graded as if the model had written it.
        if let Some((s, _)) = seqs.iter().zip(&next).find(|(_, t)| t.is_none()) {
            self.non_finite = Some(s.key);
            return Err(Error::Config(format!(
                "sequence {}: the model's logits are not finite (NaN or infinity)",
                s.key
            )));
        }
        for (mut s, token) in seqs.into_iter().zip(next.into_iter().flatten()) {
            if self.stop_ids.contains(&token) {
                self.pool_release(s.slot);
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
                self.pool_release(s.slot);
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

/// An error from `step` unless it has one cache per sequence (`n` of `what`).
fn one_cache_each(step: &str, n: usize, what: &str, caches: usize) -> Result<()> {
    if n != caches {
        return Err(Error::Config(format!(
            "{step}: {n} {what} and {caches} caches"
        )));
    }
    Ok(())
}

/// Generates a continuation of every prompt (none empty), all in one batch, until a stop id
/// (not included in the result) or `max_new_tokens`. Sequence i draws from a stream seeded
/// by `sampling.seed`, its prompt, and how many identical prompts come before it: the same
/// prompt gives the same continuation whatever else is in the batch, and in any order (to the
/// bit on the CPU; on a GPU see the module documentation).
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
    use candle_core::{DType, Device};

    #[test]
    fn kv_cache_bytes_count_every_layer_key_and_value() {
        let cfg = Qwen2Config::from_json(
            r#"{"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                "num_hidden_layers": 28,
                "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                "rms_norm_eps": 1e-6, "rope_theta": 1e6}"#,
        )
        .unwrap();
        // Qwen2.5-1.5B in bf16: 28 layers x (k, v) x 2 kv heads x 128 x 2 B = 28 KiB per token.
        assert_eq!(kv_cache_bytes(&cfg, DType::BF16, 1), 28 * 1024);
        assert_eq!(kv_cache_bytes(&cfg, DType::F32, 1000), 56 * 1024 * 1000);
    }

    #[test]
    fn reused_slots_decode_like_fresh_ones() {
        let config = serde_json::json!({
            "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 97, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "initializer_range": 0.3
        });
        let dir = tempfile::tempdir().unwrap();
        crate::init::write_random_checkpoint(dir.path(), &config, DType::F64, 3, usize::MAX)
            .unwrap();
        let (cfg, w) =
            crate::checkpoint::load_checkpoint(dir.path(), DType::F64, &Device::Cpu).unwrap();
        let long: Vec<u32> = (0..40).map(|i| (i * 7 % 97) as u32).collect();
        let short = vec![5u32, 9, 2];
        let alone = generate(
            &cfg,
            &w,
            std::slice::from_ref(&short),
            6,
            &[],
            Sampling::greedy(),
        )
        .unwrap();

        let mut g = Generator::new(&cfg, &w, 6, &[], Sampling::greedy()).unwrap();
        g.add(0, long, 0).unwrap();
        g.add(1, vec![1, 2], 0).unwrap();
        let mut results = std::collections::HashMap::new();
        while results.len() < 2 {
            results.extend(g.step().unwrap());
        }
        // Both slots are free now; the short prompt takes slot 0, which held 45 positions.
        assert_eq!(g.free_slots.len(), 2);
        g.add(2, short, 0).unwrap();
        while !g.is_empty() {
            results.extend(g.step().unwrap());
        }
        assert_eq!(g.pool.slots(), 2, "no new slot for the third sequence");
        assert_eq!(results[&2], alone[0]);
    }

    #[test]
    fn logits_that_are_not_finite_fail_the_step_naming_the_sequence() {
        let config = serde_json::json!({
            "model_type": "qwen2", "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 50, "rms_norm_eps": 1e-6, "rope_theta": 10000.0
        });
        let dir = tempfile::tempdir().unwrap();
        crate::init::write_random_checkpoint(dir.path(), &config, DType::F32, 3, usize::MAX)
            .unwrap();
        let (cfg, mut w) =
            crate::checkpoint::load_checkpoint(dir.path(), DType::F32, &Device::Cpu).unwrap();
        w.final_norm = (w.final_norm * f64::NAN).unwrap();
        let hot = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: 1,
        };
        for sampling in [Sampling::greedy(), hot] {
            let mut g = Generator::new(&cfg, &w, 4, &[], sampling).unwrap();
            g.add(7, vec![1, 2, 3], 0).unwrap();
            let err = g.step().unwrap_err().to_string();
            assert!(err.contains("logits are not finite"), "{err}");
            assert_eq!(g.non_finite(), Some(7));
        }
    }
}
