//! A deterministic, resumable sampler over `len` items (examples or packed rows).
//!
//! Epoch `e` visits every item once, in a permutation fixed by `(seed, e)`. The state is just
//! `(seed, epoch, cursor, len)`: saving it with a checkpoint and restoring it continues the
//! exact sequence an uninterrupted run would have produced.
//!
//! The shuffle is implemented here (SplitMix64 + Fisher-Yates) rather than taken from `rand`,
//! because a dependency update must never change the order of an existing run. Do not change
//! the algorithm: resumed runs depend on it. [`Permutation::Torch`] draws each epoch's order
//! as transformers' Trainer does (`torch.randperm`, seeded seed + epoch), so that a run can
//! see its rows in the order a transformers run with the same seed saw them.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    pub seed: u64,
    /// The epoch of the next item.
    pub epoch: u64,
    /// How many items of that epoch have been handed out.
    pub cursor: usize,
    /// Dataset size the order was made for; a resume against another size is refused.
    pub len: usize,
}

/// How an epoch's permutation is drawn. Not part of the saved state: the run's config says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Permutation {
    /// SplitMix64 + Fisher-Yates from (seed, epoch): [`epoch_order`].
    #[default]
    Limo,
    /// `torch.randperm(len)` with a generator seeded `seed + epoch`: [`torch_randperm`], as
    /// accelerate's `SeedableRandomSampler` shuffles for transformers' Trainer.
    Torch,
}

impl Permutation {
    /// The order of epoch `epoch`.
    pub fn order(self, seed: u64, epoch: u64, len: usize) -> Vec<usize> {
        match self {
            Permutation::Limo => epoch_order(seed, epoch, len),
            Permutation::Torch => torch_randperm(len, seed.wrapping_add(epoch)),
        }
    }
}

/// Above this many items torch's CPU randperm draws 64-bit numbers instead (`randperm_cpu`).
pub const TORCH_RANDPERM_MAX: usize = (u32::MAX / 20) as usize;

#[derive(Debug, Clone)]
pub struct Sampler {
    state: SamplerState,
    order: Vec<usize>,
    permutation: Permutation,
}

impl Sampler {
    pub fn new(len: usize, seed: u64) -> Result<Self> {
        Self::from_state(
            SamplerState {
                seed,
                epoch: 0,
                cursor: 0,
                len,
            },
            len,
        )
    }

    /// Restores a saved state; `len` is the size of the dataset now loaded.
    pub fn from_state(state: SamplerState, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(DataError::Sampler(
                "cannot sample from an empty dataset".into(),
            ));
        }
        if state.len != len {
            return Err(DataError::Sampler(format!(
                "saved state is for {} items but the dataset has {len}; the data changed since the checkpoint",
                state.len
            )));
        }
        if state.cursor > len {
            return Err(DataError::Sampler(format!(
                "saved cursor {} is past the dataset size {len}",
                state.cursor
            )));
        }
        // The epoch's order is drawn at the first item, with the permutation chosen by then.
        Ok(Sampler {
            state,
            order: Vec::new(),
            permutation: Permutation::Limo,
        })
    }

    /// The same sampler, drawing every epoch's order with `permutation`.
    pub fn permuted_by(mut self, permutation: Permutation) -> Result<Self> {
        if permutation == Permutation::Torch && self.state.len >= TORCH_RANDPERM_MAX {
            return Err(DataError::Sampler(format!(
                "{} items: torch's order is reproduced below {TORCH_RANDPERM_MAX} items only",
                self.state.len
            )));
        }
        self.permutation = permutation;
        self.order.clear();
        Ok(self)
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The next item index; rolls over into the next epoch after the last item.
    pub fn next_index(&mut self) -> usize {
        if self.state.cursor == self.state.len {
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.order.clear();
        }
        if self.order.is_empty() {
            self.order = self
                .permutation
                .order(self.state.seed, self.state.epoch, self.state.len);
        }
        let index = self.order[self.state.cursor];
        self.state.cursor += 1;
        index
    }

    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        (0..size).map(|_| self.next_index()).collect()
    }

    /// Up to `size` items from one epoch: when the epoch runs out first, its first items fill
    /// the batch again up to a multiple of `unit` (cycling, for more than `len`), and the next
    /// call starts the next epoch. accelerate's `even_batches` fills an epoch's last round of
    /// micro-batches (`unit` rows, one per rank) this way.
    pub fn next_batch_padded(&mut self, size: usize, unit: usize) -> Vec<usize> {
        if size == 0 {
            return Vec::new();
        }
        let mut batch = vec![self.next_index()];
        while batch.len() < size && self.state.cursor < self.state.len {
            batch.push(self.next_index());
        }
        let short = match batch.len() < size {
            true => batch.len().next_multiple_of(unit.max(1)).min(size) - batch.len(),
            false => 0,
        };
        batch.extend((0..short).map(|i| self.order[i % self.state.len]));
        batch
    }
}

impl Iterator for Sampler {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        Some(self.next_index())
    }
}

/// The permutation of `0..len` for one epoch.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// `torch.randperm(len, generator=g)` on the CPU after `g.manual_seed(seed)`: torch's
/// `randperm_cpu` (below [`TORCH_RANDPERM_MAX`] items) swaps item i with item
/// `i + mt19937() % (len - i)` for i from 0, and seeds its mt19937 with the seed's low 32 bits.
pub fn torch_randperm(len: usize, seed: u64) -> Vec<usize> {
    let mut mt = rand_mt::Mt::new(seed as u32);
    let mut order: Vec<usize> = (0..len).collect();
    for i in 0..len.saturating_sub(1) {
        let z = mt.next_u32() as usize % (len - i);
        order.swap(i, i + z);
    }
    order
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, well mixed, fully specified.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` without modulo bias (rejection of the short last block).
    fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let mut sampler = Sampler::new(50, 7).unwrap();
        let first = sampler.next_batch(50);
        let second = sampler.next_batch(50);
        for epoch in [&first, &second] {
            let mut sorted = epoch.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        }
        assert_ne!(first, second);
        assert_ne!(first, (0..50).collect::<Vec<_>>());
        assert_eq!(sampler.epoch(), 1);
        assert_eq!(first, epoch_order(7, 0, 50));
        assert_ne!(epoch_order(8, 0, 50), first, "the seed must matter");
    }

    #[test]
    fn resume_from_saved_state_matches_uninterrupted_run() {
        let len = 37;
        let uninterrupted: Vec<usize> = Sampler::new(len, 1234).unwrap().take(200).collect();
        // Interrupt at several points, including exactly at an epoch boundary.
        for stop in [0, 1, 36, 37, 38, 74, 150] {
            let mut before = Sampler::new(len, 1234).unwrap();
            let mut seen = before.next_batch(stop);
            let saved = serde_json::to_string(&before.state()).unwrap();
            let state: SamplerState = serde_json::from_str(&saved).unwrap();
            let mut resumed = Sampler::from_state(state, len).unwrap();
            seen.extend(resumed.next_batch(200 - stop));
            assert_eq!(seen, uninterrupted, "resume after {stop} items");
        }
    }

    #[test]
    fn padded_batches_keep_epochs_apart_and_resume() {
        let (len, seed) = (10, 5);
        let [first, second] = [0, 1].map(|e| epoch_order(seed, e, len));
        let mut sampler = Sampler::new(len, seed).unwrap();
        let batches: Vec<Vec<usize>> = (0..4).map(|_| sampler.next_batch_padded(4, 4)).collect();
        assert_eq!(batches[0], first[0..4]);
        assert_eq!(batches[1], first[4..8]);
        // The epoch's last batch: its 2 last items, then its 2 first again.
        assert_eq!(batches[2], [&first[8..10], &first[0..2]].concat());
        assert_eq!(batches[3], second[0..4], "the next epoch starts afresh");
        // Resuming from the state after any batch continues identically.
        for stop in 0..4 {
            let mut before = Sampler::new(len, seed).unwrap();
            (0..stop).for_each(|_| drop(before.next_batch_padded(4, 4)));
            let mut resumed = Sampler::from_state(before.state(), len).unwrap();
            let rest: Vec<Vec<usize>> =
                (stop..4).map(|_| resumed.next_batch_padded(4, 4)).collect();
            assert_eq!(rest, batches[stop..], "resume after {stop} batches");
        }
        // More items than the dataset: the epoch's order cycles.
        let mut small = Sampler::new(3, seed).unwrap();
        let order = epoch_order(seed, 0, 3);
        let cycled = [0, 1, 2, 0, 1, 2, 0].map(|i| order[i]);
        assert_eq!(small.next_batch_padded(7, 7), cycled);
        assert_eq!(small.next_batch_padded(2, 1), epoch_order(seed, 1, 3)[0..2]);
        assert!(small.next_batch_padded(0, 1).is_empty());
        // A unit under the size: the epoch's last batch is filled to a multiple of it only
        // (2 left, a unit of 3: one more), and may come out shorter than `size`.
        let mut sampler = Sampler::new(len, seed).unwrap();
        let units: Vec<Vec<usize>> = (0..5).map(|_| sampler.next_batch_padded(4, 3)).collect();
        assert_eq!(units[2], [&first[8..10], &first[0..1]].concat());
        assert_eq!(units[3], second[0..4]);
        let mut sampler = Sampler::new(len, seed).unwrap();
        let ones: Vec<usize> = (0..3)
            .flat_map(|_| sampler.next_batch_padded(4, 1))
            .collect();
        assert_eq!(ones, first, "a unit of 1 repeats nothing");
    }

    #[test]
    fn restore_checks_the_dataset() {
        let state = Sampler::new(10, 1).unwrap().state();
        let err = Sampler::from_state(state, 11).unwrap_err().to_string();
        assert!(err.contains("10 items") && err.contains("11"), "{err}");
        assert!(Sampler::new(0, 1).is_err());
        let bad = SamplerState {
            cursor: 12,
            ..state
        };
        assert!(Sampler::from_state(bad, 10).is_err());
    }

    #[test]
    fn order_is_frozen() {
        // Pinned values, computed by an independent Python transcription of SplitMix64 +
        // Fisher-Yates: if this changes, saved runs would resume into a different order.
        assert_eq!(epoch_order(0, 0, 8), epoch_order(0, 0, 8));
        let pinned = epoch_order(42, 3, 10);
        assert_eq!(pinned, PINNED_42_3_10.to_vec());
    }

    const PINNED_42_3_10: [usize; 10] = [0, 6, 7, 5, 3, 9, 8, 2, 1, 4];

    #[test]
    fn torch_order_is_torch_randperm() {
        // torch 2.5.1: g = torch.Generator(); g.manual_seed(s); torch.randperm(n, generator=g)
        assert_eq!(torch_randperm(10, 42), [2, 6, 1, 8, 4, 5, 0, 9, 3, 7]);
        assert_eq!(torch_randperm(10, 43), [8, 4, 9, 0, 5, 1, 6, 7, 2, 3]);
        let limo = torch_randperm(817, 42);
        assert_eq!(
            limo[..12],
            [490, 372, 773, 237, 331, 64, 707, 381, 258, 746, 620, 585]
        );
        assert_eq!(limo[805..], TORCH_817_42_TAIL);
        let mut sorted = limo.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..817).collect::<Vec<_>>());
        // Seeds past 32 bits keep their low 32 bits, as torch's mt19937 does.
        assert_eq!(torch_randperm(10, 42 + (1 << 32)), torch_randperm(10, 42));
        assert_eq!(torch_randperm(1, 7), [0]);
        assert!(torch_randperm(0, 7).is_empty());
        // A torch sampler: epoch e is randperm seeded seed + e, and it resumes like any other.
        let mut sampler = Sampler::new(10, 42)
            .unwrap()
            .permuted_by(Permutation::Torch)
            .unwrap();
        assert_eq!(sampler.next_batch(10), torch_randperm(10, 42));
        let state = sampler.state();
        let resumed = Sampler::from_state(state, 10).unwrap();
        let mut resumed = resumed.permuted_by(Permutation::Torch).unwrap();
        assert_eq!(resumed.next_batch(10), torch_randperm(10, 43));
    }

    const TORCH_817_42_TAIL: [usize; 12] =
        [155, 103, 122, 561, 308, 355, 314, 613, 816, 733, 238, 129];
}
