//! Length statistics for `limo data stats`: what the cutoff will do and how much is learned.

use serde::Serialize;

use crate::example::Example;

pub const PERCENTILES: [u32; 6] = [10, 25, 50, 90, 95, 99];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBin {
    /// Inclusive lower bound in tokens.
    pub from: usize,
    /// Exclusive upper bound in tokens.
    pub to: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthStats {
    pub examples: usize,
    pub total_tokens: usize,
    pub target_tokens: usize,
    /// target_tokens / total_tokens.
    pub target_share: f64,
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    /// (percentile, length) by the nearest-rank method.
    pub percentiles: Vec<(u32, usize)>,
    /// Power-of-two bins: [0, 256), [256, 512), [512, 1024), ... up to the longest example.
    pub histogram: Vec<HistogramBin>,
    pub cutoff_len: usize,
    pub over_cutoff: usize,
}

/// Statistics of full-length (untruncated) examples; `examples` must not be empty.
pub fn length_stats(examples: &[Example], cutoff_len: usize) -> LengthStats {
    let mut lengths: Vec<usize> = examples.iter().map(Example::len).collect();
    lengths.sort_unstable();
    let n = lengths.len().max(1);
    let total_tokens: usize = lengths.iter().sum();
    let target_tokens: usize = examples.iter().map(Example::num_targets).sum();
    let percentiles = PERCENTILES
        .iter()
        .map(|&p| {
            // Nearest rank: the smallest length with at least p% of examples at or below it.
            let rank = (p as usize * n).div_ceil(100).max(1);
            (p, lengths.get(rank - 1).copied().unwrap_or(0))
        })
        .collect();
    let max = lengths.last().copied().unwrap_or(0);
    let mut histogram = vec![HistogramBin {
        from: 0,
        to: 256,
        count: 0,
    }];
    while histogram.last().is_some_and(|bin| bin.to <= max) {
        let to = histogram.last().map_or(256, |bin| bin.to);
        histogram.push(HistogramBin {
            from: to,
            to: to * 2,
            count: 0,
        });
    }
    for &len in &lengths {
        if let Some(bin) = histogram.iter_mut().find(|bin| len < bin.to) {
            bin.count += 1;
        }
    }
    LengthStats {
        examples: lengths.len(),
        total_tokens,
        target_tokens,
        target_share: if total_tokens == 0 {
            0.0
        } else {
            target_tokens as f64 / total_tokens as f64
        },
        min: lengths.first().copied().unwrap_or(0),
        max,
        mean: total_tokens as f64 / n as f64,
        percentiles,
        histogram,
        cutoff_len,
        over_cutoff: lengths.iter().filter(|&&len| len > cutoff_len).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::IGNORE_INDEX;

    fn example(len: usize, targets: usize) -> Example {
        let labels = (0..len)
            .map(|i| if i + targets >= len { 1 } else { IGNORE_INDEX })
            .collect();
        Example {
            input_ids: vec![1; len],
            labels,
        }
    }

    #[test]
    fn stats_of_known_lengths() {
        // Lengths 1..=100 (i tokens, 1 target each), plus one of 600.
        let mut examples: Vec<Example> = (1..=100).map(|len| example(len, 1)).collect();
        examples.push(example(600, 100));
        let stats = length_stats(&examples, 90);
        assert_eq!(stats.examples, 101);
        assert_eq!(stats.total_tokens, 5050 + 600);
        assert_eq!(stats.target_tokens, 200);
        assert!((stats.target_share - 200.0 / 5650.0).abs() < 1e-12);
        assert_eq!((stats.min, stats.max), (1, 600));
        // Nearest rank over 101 sorted values: p50 -> rank 51 -> 51; p99 -> rank 100 -> 100.
        assert_eq!(stats.percentiles[2], (50, 51));
        assert_eq!(stats.percentiles[5], (99, 100));
        assert_eq!(stats.over_cutoff, 11); // 91..=100 and 600
        let counts: Vec<(usize, usize)> =
            stats.histogram.iter().map(|b| (b.from, b.count)).collect();
        assert_eq!(counts, vec![(0, 100), (256, 0), (512, 1)]);
    }
}
