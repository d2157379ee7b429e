//! One tokenized training example in the Hugging Face convention.

use serde::{Deserialize, Serialize};

/// Label of a position that is not learned (PyTorch's `CrossEntropyLoss` ignore_index).
/// Defined once, by the loss that ignores it; limo-ops is the lowest crate of the workspace.
pub use limo_ops::IGNORE_INDEX;

/// `labels[t]` is the target for `input_ids[t]` itself, or -100; as in HF, the loss shifts
/// (position t predicts `labels[t + 1]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of learned positions.
    pub fn num_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}
