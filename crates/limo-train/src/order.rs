//! The order in which the trainer visits examples: shuffled per epoch by limo-data's
//! deterministic sampler, or file order wrapping around. Its state goes into every checkpoint.

use limo_data::{Sampler, SamplerState};
use serde::{Deserialize, Serialize};

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
    pub fn new(len: usize, shuffle: bool, seed: u64) -> anyhow::Result<Self> {
        if len == 0 {
            anyhow::bail!("the dataset has no examples to train on");
        }
        Ok(if shuffle {
            DataOrder::Shuffled(Sampler::new(len, seed)?)
        } else {
            DataOrder::Sequential { len, next: 0 }
        })
    }

    pub fn next_indices(&mut self, count: usize) -> Vec<usize> {
        match self {
            DataOrder::Shuffled(sampler) => sampler.next_batch(count),
            DataOrder::Sequential { len, next } => (0..count)
                .map(|_| {
                    let i = (*next % *len as u64) as usize;
                    *next += 1;
                    i
                })
                .collect(),
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

    pub fn restore(value: &serde_json::Value, len: usize) -> anyhow::Result<Self> {
        let saved: SavedOrder = serde_json::from_value(value.clone())?;
        Ok(match saved {
            SavedOrder::Shuffled(state) => DataOrder::Shuffled(Sampler::from_state(state, len)?),
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
