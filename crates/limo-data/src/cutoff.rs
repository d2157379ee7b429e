//! Fitting examples into `cutoff_len` tokens.
//!
//! Truncation keeps the first `cutoff_len` tokens: the prompt stays whole and the reasoning chain
//! is cut at its end. `truncate_pairs` cuts as LLaMA-Factory does, pair by pair, so that a long
//! prompt gives way to its response. An example left with no target token (the prompt alone
//! fills the budget) teaches nothing and is dropped, and counted.

use serde::Serialize;

use crate::config::Overlong;
use crate::example::{Example, IGNORE_INDEX};

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
            Overlong::Truncate | Overlong::TruncatePairs => {
                if overlong == Overlong::TruncatePairs {
                    example = truncate_pairs(&example, cutoff_len);
                }
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

/// LLaMA-Factory's `infer_seqlen`: how much of a (prompt, response) pair of `source` and
/// `target` tokens fits in `budget`. A response under half the budget is kept whole, else a
/// prompt under half is; else both get their share of the budget.
fn pair_lengths(source: usize, target: usize, budget: usize) -> (usize, usize) {
    let max_target = if target * 2 < budget {
        budget
    } else if source * 2 < budget {
        budget - source
    } else {
        // Python's int(cutoff_len * (target_len / (source_len + target_len))), in f64 too.
        (budget as f64 * (target as f64 / (source + target) as f64)) as usize
    };
    let target_len = max_target.min(target);
    (budget.saturating_sub(target_len).min(source), target_len)
}

/// The example cut pair by pair as LLaMA-Factory's supervised processor does: a pair is a run
/// of prompt tokens (label -100) and the run of response tokens after it; each pair in turn is
/// cut by [`pair_lengths`] to what the pairs before it left of `cutoff_len`.
fn truncate_pairs(example: &Example, cutoff_len: usize) -> Example {
    let (ids, labels) = (&example.input_ids, &example.labels);
    let run = |from: usize, target: bool| {
        labels[from..]
            .iter()
            .take_while(|&&l| (l != IGNORE_INDEX) == target)
            .count()
    };
    let mut kept = Vec::with_capacity(cutoff_len);
    let mut pair = 0;
    while pair < ids.len() && kept.len() < cutoff_len {
        let source = run(pair, false);
        let target = run(pair + source, true);
        let (s, t) = pair_lengths(source, target, cutoff_len - kept.len());
        kept.extend(pair..pair + s);
        kept.extend(pair + source..pair + source + t);
        pair += source + target;
    }
    Example {
        input_ids: kept.iter().map(|&i| ids[i]).collect(),
        labels: kept.iter().map(|&i| labels[i]).collect(),
    }
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
    fn pair_lengths_are_llamafactorys_infer_seqlen() {
        // (source, target, budget) -> (source, target) kept, from LLaMA-Factory's function.
        let cases = [
            (3, 5, 6, (3, 3)),
            (8, 2, 6, (4, 2)),
            (2, 9, 6, (2, 4)),
            (10, 10, 7, (4, 3)),
            (5, 3, 6, (4, 2)),
            (1, 1, 2, (1, 1)),
            (16000, 900, 16384, (15484, 900)),
            (30, 20000, 16384, (30, 16354)),
            (9000, 9000, 16384, (8192, 8192)),
            (12000, 7000, 16384, (9384, 7000)),
            (7, 11, 13, (6, 7)),
            (100, 3, 2, (2, 0)),
        ];
        for (source, target, budget, want) in cases {
            assert_eq!(
                pair_lengths(source, target, budget),
                want,
                "{source} {target} {budget}"
            );
        }
    }

    #[test]
    fn truncate_pairs_cuts_each_pair_within_what_is_left() {
        // A long prompt gives way to its short response: kept, where truncate drops it.
        let long_prompt = example(8, 2);
        let (kept, counts) = apply_cutoff(vec![long_prompt.clone()], 6, Overlong::TruncatePairs);
        assert_eq!((counts.truncated, counts.dropped_no_target), (1, 0));
        assert_eq!(kept[0].input_ids, vec![1, 2, 3, 4, 9, 10]);
        assert_eq!(kept[0].labels, vec![-100, -100, -100, -100, 9, 10]);
        let (_, counts) = apply_cutoff(vec![long_prompt], 6, Overlong::Truncate);
        assert_eq!(counts.dropped_no_target, 1);
        // Two turns of (2, 2) and (3, 5) in 8 tokens: the first whole, the second 2 + 2.
        let mut two = example(2, 2);
        let second = example(3, 5);
        two.input_ids
            .extend(second.input_ids.iter().map(|i| i + 100));
        two.labels.extend(
            second
                .labels
                .iter()
                .map(|&l| if l < 0 { l } else { l + 100 }),
        );
        let (kept, _) = apply_cutoff(vec![two.clone()], 8, Overlong::TruncatePairs);
        assert_eq!(kept[0].input_ids, vec![1, 2, 3, 4, 101, 102, 104, 105]);
        assert_eq!(kept[0].labels, vec![-100, -100, 3, 4, -100, -100, 104, 105]);
        // The first pair fills the budget: the second is left out whole.
        let (kept, _) = apply_cutoff(vec![two], 4, Overlong::TruncatePairs);
        assert_eq!(kept[0].input_ids, vec![1, 2, 3, 4]);
        // A single pair with both halves long: the same cut as truncate here (3 + 3 of 3 + 5).
        let (pairs, _) = apply_cutoff(vec![example(3, 5)], 6, Overlong::TruncatePairs);
        let (prefix, _) = apply_cutoff(vec![example(3, 5)], 6, Overlong::Truncate);
        assert_eq!(pairs, prefix);
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
