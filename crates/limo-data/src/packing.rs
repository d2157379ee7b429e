//! Packing several examples into rows of at most `cutoff_len` tokens.
//!
//! Deterministic best-fit decreasing: examples are taken longest first (ties: lower index
//! first) and each goes into the open row with the least room that still fits it, else into a
//! new row. Rows come out in the order they were opened. Shuffle rows with the [`Sampler`].
//!
//! Inside a row, `position_ids` restart at 0 for every document. The trainer derives document
//! boundaries from them ([`document_ids`]) and must mask attention block-diagonally, so no
//! token sees another document. The first label of every document is -100: with the HF shift,
//! `labels[t]` is predicted at position t-1, which belongs to the previous document.
//!
//! [`Sampler`]: crate::sampler::Sampler

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::example::{Example, IGNORE_INDEX};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// 0, 1, ... within each document.
    pub position_ids: Vec<u32>,
    /// Indices (into the packed slice) of the examples in this row, in row order.
    pub examples: Vec<usize>,
}

impl PackedRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Cumulative document boundaries `[0, len0, len0 + len1, ..., len]` (varlen attention form).
    pub fn cu_seqlens(&self) -> Vec<usize> {
        let mut bounds: Vec<usize> = self
            .position_ids
            .iter()
            .enumerate()
            .filter(|&(_, &p)| p == 0)
            .map(|(i, _)| i)
            .collect();
        bounds.push(self.len());
        bounds
    }
}

/// Document number of every position, from positions that restart at 0 per document.
pub fn document_ids(position_ids: &[u32]) -> Vec<u32> {
    let mut doc = 0u32;
    position_ids
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            if p == 0 && i > 0 {
                doc += 1;
            }
            doc
        })
        .collect()
}

/// Whether position `query` may attend to position `key` in a packed row: causal and within one
/// document. This is the mask the trainer must apply.
pub fn may_attend(document_ids: &[u32], query: usize, key: usize) -> bool {
    key <= query && document_ids[key] == document_ids[query]
}

pub fn pack(examples: &[Example], cutoff_len: usize) -> Result<Vec<PackedRow>> {
    if let Some((index, long)) = examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > cutoff_len)
    {
        return Err(DataError::Config(format!(
            "example {index} has {} tokens, more than cutoff_len {cutoff_len}; truncate or drop before packing",
            long.len()
        )));
    }
    if let Some(index) = examples.iter().position(Example::is_empty) {
        return Err(DataError::Config(format!(
            "example {index} is empty; nothing to pack"
        )));
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(examples[i].len()), i));

    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (room left, row index): the smallest room >= needed is a range lookup.
    let mut open: BTreeSet<(usize, usize)> = BTreeSet::new();
    for index in order {
        let need = examples[index].len();
        let fit = open.range((need, 0)..).next().copied();
        let row = match fit {
            Some(slot) => {
                open.remove(&slot);
                open.insert((slot.0 - need, slot.1));
                slot.1
            }
            None => {
                rows.push(Vec::new());
                open.insert((cutoff_len - need, rows.len() - 1));
                rows.len() - 1
            }
        };
        rows[row].push(index);
    }
    Ok(rows
        .into_iter()
        .map(|members| build_row(examples, members))
        .collect())
}

fn build_row(examples: &[Example], members: Vec<usize>) -> PackedRow {
    let total: usize = members.iter().map(|&i| examples[i].len()).sum();
    let mut row = PackedRow {
        input_ids: Vec::with_capacity(total),
        labels: Vec::with_capacity(total),
        position_ids: Vec::with_capacity(total),
        examples: members,
    };
    for &index in &row.examples {
        let example = &examples[index];
        let start = row.labels.len();
        row.input_ids.extend_from_slice(&example.input_ids);
        row.labels.extend_from_slice(&example.labels);
        row.labels[start] = IGNORE_INDEX;
        row.position_ids.extend(0..example.len() as u32);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, id: u32) -> Example {
        Example {
            input_ids: vec![id; len],
            labels: vec![i64::from(id); len],
        }
    }

    #[test]
    fn best_fit_decreasing_fills_the_tightest_row() {
        // Lengths 5, 4, 3, 2, 1 into rows of 6: 5 | 4 | 3 open three rows; 2 goes to the row with
        // room 2 (not room 3), 1 to the row with room 1.
        let examples: Vec<Example> = [5, 4, 3, 2, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| example(n, i as u32))
            .collect();
        let rows = pack(&examples, 6).unwrap();
        let members: Vec<Vec<usize>> = rows.iter().map(|r| r.examples.clone()).collect();
        assert_eq!(members, vec![vec![0, 4], vec![1, 3], vec![2]]);
        assert_eq!(rows[0].position_ids, vec![0, 1, 2, 3, 4, 0]);
        assert_eq!(rows[0].labels, vec![-100, 0, 0, 0, 0, -100]);
        assert_eq!(rows[1].cu_seqlens(), vec![0, 4, 6]);
        assert_eq!(document_ids(&rows[1].position_ids), vec![0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn empty_examples_are_refused() {
        let err = pack(&[example(2, 1), example(0, 2)], 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("example 1 is empty"), "{err}");
    }
}
