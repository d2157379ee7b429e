//! The KV cache of batched generation: one pool per layer, `[slots, kv_heads, capacity,
//! head_dim]`, each live sequence owning a slot ([`KvPool`]); [`KvCache`], a pool of one slot
//! for callers that hold one cache per sequence; and [`Caches`], where a forward's keys and
//! values go (see `generate.rs` for the forwards that fill them).

use candle_core::{DType, Device, Tensor};
use limo_ops::decode_attention::{decode_attention, kv_cache_write, kv_cache_zeros, CacheIndex};

use crate::{Error, Qwen2Config, Result};

/// Tokens of headroom a cache allocates beyond what it needs when it grows.
const CACHE_HEADROOM: usize = 64;

/// The shape and placement of a model's cache rows.
#[derive(Clone)]
pub(crate) struct KvShape {
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

/// Bytes of one sequence's KV cache at `positions` tokens: keys and values of every layer in
/// `dtype` (what a [`Generator`](crate::generate::Generator) slot grows to at most, for prompt + max_new_tokens).
pub fn kv_cache_bytes(config: &Qwen2Config, dtype: DType, positions: usize) -> u64 {
    let per_token = config.num_hidden_layers
        * 2
        * config.num_key_value_heads
        * config.head_dim
        * dtype.size_in_bytes();
    // Saturating: a --max-new-tokens near usize::MAX then reads as "does not fit".
    (per_token as u64).saturating_mul(positions as u64)
}

/// The past keys and values of a set of sequences, per layer: `[slots, kv_heads, capacity,
/// head_dim]` in the model dtype, RoPE already applied to the keys; slot `s` holds `lens[s]`
/// tokens. Grown (slots, or capacity by half again) only between forwards, so appending a
/// token copies only that token.
pub(crate) struct KvPool {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) lens: Vec<usize>,
    pub(crate) capacity: usize,
}

impl KvPool {
    pub(crate) fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            lens: Vec::new(),
            capacity: 0,
        }
    }

    pub(crate) fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Makes room for `slots` slots of at least `needed` positions. Capacity grows to the
    /// larger of `needed` plus headroom and half again, but not past `limit` (the most any
    /// sequence will need) unless `needed` is more.
    pub(crate) fn reserve(
        &mut self,
        shape: &KvShape,
        slots: usize,
        needed: usize,
        limit: usize,
    ) -> Result<()> {
        let slots = slots.max(self.slots());
        let capacity = if needed > self.capacity {
            (needed + CACHE_HEADROOM)
                .max(self.capacity + self.capacity / 2)
                .min(limit.max(needed))
        } else {
            self.capacity
        };
        if slots == self.slots() && capacity == self.capacity {
            return Ok(());
        }
        for layer in &mut self.layers {
            let (k, v) = kv_cache_zeros(
                slots,
                shape.kv_heads,
                capacity,
                shape.head_dim,
                shape.dtype,
                &shape.device,
            )?;
            if let Some((old_k, old_v)) = layer.take() {
                let old_slots = old_k.dim(0)?;
                k.narrow(0, 0, old_slots)?.slice_set(&old_k, 2, 0)?;
                v.narrow(0, 0, old_slots)?.slice_set(&old_v, 2, 0)?;
            }
            *layer = Some((k, v));
        }
        self.lens.resize(slots, 0);
        self.capacity = capacity;
        Ok(())
    }

    pub(crate) fn layer(&self, layer: usize) -> Result<&(Tensor, Tensor)> {
        match self.layers.get(layer) {
            Some(Some(kv)) => Ok(kv),
            Some(None) => Err(Error::Config(format!(
                "KV cache: layer {layer} is not allocated"
            ))),
            None => Err(Error::Config(format!(
                "KV cache: layer {layer} of {}",
                self.layers.len()
            ))),
        }
    }

    /// Writes rows `k`, `v` `[n, kv_heads, head_dim]` of layer `layer` where `at` says.
    pub(crate) fn write(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        at: &CacheIndex,
    ) -> Result<()> {
        let (kc, vc) = self.layer(layer)?;
        Ok(kv_cache_write(kc, vc, k, v, at)?)
    }

    /// Attention of `q` `[B, q_heads, head_dim]` over the slots and lengths of `index`.
    pub(crate) fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        index: &CacheIndex,
        scale: f64,
    ) -> Result<Tensor> {
        let (kc, vc) = self.layer(layer)?;
        Ok(decode_attention(q, kc, vc, index, scale)?)
    }
}

/// The past keys and values of one sequence, per layer: RoPE already applied to the keys, in
/// the model dtype (a pool of one slot, grown by half again when full, so appending a token
/// copies only that token).
pub struct KvCache {
    pub(crate) pool: KvPool,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            pool: KvPool::new(num_layers),
        }
    }

    /// Tokens cached (in every layer, between forwards).
    pub fn len(&self) -> usize {
        self.pool.lens.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys and values of layer `layer`, each `[len, kv_heads, head_dim]` (views of the cache);
    /// `None` while the cache is empty.
    pub fn layer(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        if layer >= self.pool.layers.len() {
            return Err(Error::Config(format!(
                "KV cache: layer {layer} of {}",
                self.pool.layers.len()
            )));
        }
        if self.is_empty() {
            return Ok(None);
        }
        let (k, v) = self.pool.layer(layer)?;
        let view = |t: &Tensor| t.get(0)?.narrow(1, 0, self.len())?.transpose(0, 1);
        Ok(Some((view(k)?, view(v)?)))
    }
}

/// Where a forward's keys and values go: one cache per sequence, or slots of one pool.
pub(crate) enum Caches<'c, 'k> {
    Each(&'c mut [&'k mut KvCache]),
    Pool {
        pool: &'c mut KvPool,
        slots: &'c [usize],
        /// The most positions any of these sequences will need (capacity growth stops there).
        limit: usize,
    },
}

impl Caches<'_, '_> {
    pub(crate) fn count(&self) -> usize {
        match self {
            Caches::Each(c) => c.len(),
            Caches::Pool { slots, .. } => slots.len(),
        }
    }

    /// Cached tokens of sequence `i`.
    pub(crate) fn len(&self, i: usize) -> usize {
        match self {
            Caches::Each(c) => c[i].len(),
            Caches::Pool { pool, slots, .. } => pool.lens.get(slots[i]).copied().unwrap_or(0),
        }
    }

    /// Room for `new[i]` more tokens in sequence `i`'s cache.
    pub(crate) fn reserve(&mut self, shape: &KvShape, new: &[usize]) -> Result<()> {
        match self {
            Caches::Each(caches) => {
                for (c, &n) in caches.iter_mut().zip(new) {
                    let needed = c.len() + n;
                    c.pool.reserve(shape, 1, needed, usize::MAX)?;
                }
            }
            Caches::Pool { pool, slots, limit } => {
                let needed = slots
                    .iter()
                    .zip(new)
                    .map(|(&s, &n)| pool.lens.get(s).copied().unwrap_or(0) + n)
                    .max()
                    .unwrap_or(0);
                let count = slots.iter().max().map_or(0, |&s| s + 1);
                pool.reserve(shape, count, needed, *limit)?;
            }
        }
        Ok(())
    }

    /// Counts `new[i]` more tokens in sequence `i`'s cache (after every layer wrote them).
    pub(crate) fn advance(&mut self, new: &[usize]) {
        match self {
            Caches::Each(caches) => {
                for (c, &n) in caches.iter_mut().zip(new) {
                    c.pool.lens[0] += n;
                }
            }
            Caches::Pool { pool, slots, .. } => {
                for (&s, &n) in slots.iter().zip(new) {
                    pool.lens[s] += n;
                }
            }
        }
    }
}
