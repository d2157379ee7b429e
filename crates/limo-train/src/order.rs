//! The order in which the trainer visits examples: shuffled per epoch by limo-data's
//! deterministic sampler, or file order; an epoch's short last step wraps into the next epoch
//! or repeats the epoch's first rows (`train.epoch_tail`). Its state goes into every checkpoint.

use limo_data::sampler::Permutation;
use limo_data::{Sampler, SamplerState};
use serde::{Deserialize, Serialize};

use crate::config::EpochTail;

pub enum DataOrder {
    Shuffled(Sampler),
    Sequential { len: usize, next: u64 },
}

#[derive(Serialize, Deserialize)]
enum SavedOrder {
    Shuffled(SamplerState),
    Sequential { len: usize, next: u64 },
}

impl DataOrder {
    pub fn new(
        len: usize,
        shuffle: bool,
        seed: u64,
        permutation: Permutation,
    ) -> anyhow::Result<Self> {
        if len == 0 {
            anyhow::bail!("the dataset has no examples to train on");
        }
        Ok(if shuffle {
            DataOrder::Shuffled(Sampler::new(len, seed)?.permuted_by(permutation)?)
        } else {
            DataOrder::Sequential { len, next: 0 }
        })
    }

    /// The rows of the next step of `count` rows. With [`EpochTail::Repeat`] an epoch's last
    /// step ends with the epoch's first rows, up to a multiple of `unit` rows (which divides
    /// `count`), and may be shorter than `count`.
    pub fn next_indices(&mut self, count: usize, tail: EpochTail, unit: usize) -> Vec<usize> {
        match (self, tail) {
            (DataOrder::Shuffled(sampler), EpochTail::Wrap) => sampler.next_batch(count),
            (DataOrder::Shuffled(sampler), EpochTail::Repeat) => {
                sampler.next_batch_padded(count, unit)
            }
            (DataOrder::Sequential { len, next }, tail) => {
                let len = *len as u64;
                let start = *next % len;
                let (taken, padded) = match tail {
                    EpochTail::Wrap => (count as u64, count as u64),
                    EpochTail::Repeat => {
                        let taken = (count as u64).min(len - start);
                        (
                            taken,
                            taken.next_multiple_of(unit.max(1) as u64).min(count as u64),
                        )
                    }
                };
                *next += taken;
                let padding = (0..padded - taken).map(|i| i % len);
                (start..start + taken)
                    .map(|i| i % len)
                    .chain(padding)
                    .map(|i| i as usize)
                    .collect()
            }
        }
    }

    pub fn save(&self) -> serde_json::Value {
        let saved = match self {
            DataOrder::Shuffled(s) => SavedOrder::Shuffled(s.state()),
            DataOrder::Sequential { len, next } => SavedOrder::Sequential {
                len: *len,
                next: *next,
            },
        };
        serde_json::to_value(saved).expect("serializable")
    }

    pub fn restore(
        value: &serde_json::Value,
        len: usize,
        permutation: Permutation,
    ) -> anyhow::Result<Self> {
        let saved: SavedOrder = serde_json::from_value(value.clone())?;
        Ok(match saved {
            SavedOrder::Shuffled(state) => {
                DataOrder::Shuffled(Sampler::from_state(state, len)?.permuted_by(permutation)?)
            }
            SavedOrder::Sequential {
                len: saved_len,
                next,
            } => {
                if saved_len != len {
                    anyhow::bail!("the checkpoint's data order is for {saved_len} examples, the dataset has {len}");
                }
                DataOrder::Sequential { len, next }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step's rows for `n` steps of `count` rows, an epoch's last step padded to a
    /// multiple of `unit` rows, with a save and restore before each.
    fn steps_of(
        shuffle: bool,
        tail: EpochTail,
        len: usize,
        (count, unit): (usize, usize),
        n: usize,
    ) -> Vec<Vec<usize>> {
        let limo = Permutation::Limo;
        let mut order = DataOrder::new(len, shuffle, 3, limo).unwrap();
        (0..n)
            .map(|_| {
                order = DataOrder::restore(&order.save(), len, limo).unwrap();
                order.next_indices(count, tail, unit)
            })
            .collect()
    }

    fn steps(
        shuffle: bool,
        tail: EpochTail,
        len: usize,
        count: usize,
        n: usize,
    ) -> Vec<Vec<usize>> {
        steps_of(shuffle, tail, len, (count, count), n)
    }

    #[test]
    fn repeat_fills_each_epochs_last_step_with_its_first_rows() {
        // 5 rows, 2 per step: 3 steps per epoch.
        let wrap = steps(false, EpochTail::Wrap, 5, 2, 4);
        assert_eq!(wrap, [[0, 1], [2, 3], [4, 0], [1, 2]]);
        let repeat = steps(false, EpochTail::Repeat, 5, 2, 4);
        assert_eq!(repeat, [[0, 1], [2, 3], [4, 0], [0, 1]]);
        assert_eq!(
            steps(false, EpochTail::Repeat, 2, 5, 2),
            [[0, 1, 0, 1, 0]; 2]
        );
        // One row per micro-batch and 4 micro-batches per step (transformers' Trainer with
        // gradient accumulation): the last step of an epoch runs fewer micro-batches.
        let short = steps_of(false, EpochTail::Repeat, 5, (4, 1), 4);
        assert_eq!(
            short,
            [vec![0, 1, 2, 3], vec![4], vec![0, 1, 2, 3], vec![4]]
        );
        let rounds = steps_of(false, EpochTail::Repeat, 5, (4, 2), 2);
        assert_eq!(rounds, [vec![0, 1, 2, 3], vec![4, 0]]);
        let shuffled_short = steps_of(true, EpochTail::Repeat, 5, (4, 2), 4);
        assert_eq!(shuffled_short[1].len(), 2, "{shuffled_short:?}");
        assert_eq!(
            shuffled_short[1][1], shuffled_short[0][0],
            "{shuffled_short:?}"
        );
        // Shuffled: each epoch's 3 steps hold every row, and the padding is the epoch's own.
        let shuffled = steps(true, EpochTail::Repeat, 5, 2, 6);
        for epoch in shuffled.chunks(3) {
            let rows: Vec<usize> = epoch.concat();
            let mut seen = rows[..5].to_vec();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3, 4], "{shuffled:?}");
            assert_eq!(rows[5], rows[0], "{shuffled:?}");
        }
        assert_ne!(shuffled[..3], shuffled[3..], "epochs are shuffled apart");
        let [first, second] = [0, 1].map(|e| limo_data::sampler::epoch_order(3, e, 5));
        assert_eq!(
            shuffled[3..].concat()[..5],
            second,
            "the next epoch starts afresh"
        );
        let third = limo_data::sampler::epoch_order(3, 2, 5);
        let wrapped = steps(true, EpochTail::Wrap, 5, 2, 6).concat();
        assert_eq!(
            wrapped,
            [&first[..], &second[..], &third[..2]].concat(),
            "wrap runs on"
        );
    }
}
