//! Fitting examples into `cutoff_len` tokens.
//!
//! Truncation keeps the first `cutoff_len` tokens: the prompt stays whole and the reasoning chain
//! is cut at its end. An example left with no target token (the prompt alone fills the budget)
//! teaches nothing and is dropped, and counted.

use serde::Serialize;

use crate::config::Overlong;
use crate::example::Example;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CutoffCounts {
    /// Examples longer than `cutoff_len` before any action.
    pub over_cutoff: usize,
    /// Of those, how many were cut to `cutoff_len` and kept.
    pub truncated: usize,
    /// Of those, how many were left out because `overlong = drop`.
    pub dropped_overlong: usize,
    /// Of those, how many were left out because no target survived truncation.
    pub dropped_no_target: usize,
}

pub fn apply_cutoff(
    examples: Vec<Example>,
    cutoff_len: usize,
    overlong: Overlong,
) -> (Vec<Example>, CutoffCounts) {
    let mut counts = CutoffCounts::default();
    let mut kept = Vec::with_capacity(examples.len());
    for mut example in examples {
        if example.len() <= cutoff_len {
            kept.push(example);
            continue;
        }
        counts.over_cutoff += 1;
        match overlong {
            Overlong::Drop => counts.dropped_overlong += 1,
            Overlong::Truncate => {
                example.input_ids.truncate(cutoff_len);
                example.labels.truncate(cutoff_len);
                if example.num_targets() == 0 {
                    counts.dropped_no_target += 1;
                } else {
                    counts.truncated += 1;
                    kept.push(example);
                }
            }
        }
    }
    (kept, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::IGNORE_INDEX;

    /// `prompt` context tokens then `answer` target tokens, ids counting from 1.
    fn example(prompt: usize, answer: usize) -> Example {
        let input_ids: Vec<u32> = (1..=(prompt + answer) as u32).collect();
        let labels = input_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i < prompt {
                    IGNORE_INDEX
                } else {
                    i64::from(id)
                }
            })
            .collect();
        Example { input_ids, labels }
    }

    #[test]
    fn truncate_keeps_prefix_and_counts() {
        let input = vec![example(2, 2), example(3, 5), example(8, 2)];
        let (kept, counts) = apply_cutoff(input.clone(), 6, Overlong::Truncate);
        assert_eq!(
            counts,
            CutoffCounts {
                over_cutoff: 2,
                truncated: 1,
                dropped_overlong: 0,
                dropped_no_target: 1
            }
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0], input[0]);
        assert_eq!(kept[1].input_ids, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(kept[1].labels, vec![-100, -100, -100, 4, 5, 6]);
    }

    #[test]
    fn drop_leaves_overlong_out() {
        let input = vec![example(2, 2), example(3, 5), example(2, 4)];
        let (kept, counts) = apply_cutoff(input.clone(), 6, Overlong::Drop);
        assert_eq!(
            counts,
            CutoffCounts {
                over_cutoff: 1,
                truncated: 0,
                dropped_overlong: 1,
                dropped_no_target: 0
            }
        );
        assert_eq!(kept, vec![input[0].clone(), input[2].clone()]);
    }
}
