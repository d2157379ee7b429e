//! Learning-rate schedules with linear warmup, as transformers' `get_*_schedule_with_warmup`
//! define them. Update `k` (0-based) of `total`:
//! warmup `k < W`: `lr * k / W` (so update 0 uses lr 0);
//! then cosine `lr * 0.5 * (1 + cos(pi * (k - W) / (N - W)))`, linear `lr * (N - k) / (N - W)`,
//! or constant `lr`.

use std::f64::consts::PI;

crate::config::config_enum! {
    /// `train.schedule`: the decay after warmup.
    #[derive(Default)]
    pub enum Schedule {
        #[default]
        Cosine = "cosine",
        Linear = "linear",
        Constant = "constant",
    }
}

impl Schedule {
    pub fn lr(self, peak: f64, update: usize, warmup: usize, total: usize) -> f64 {
        if update < warmup {
            return peak * update as f64 / warmup as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = (update - warmup) as f64 / decay_steps;
        match self {
            Schedule::Cosine => peak * 0.5 * (1.0 + (PI * progress).cos()),
            Schedule::Linear => peak * (1.0 - progress).max(0.0),
            Schedule::Constant => peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_matches_the_golden_settings() {
        // lr 1e-3, warmup 2, 10 updates (tests/fixtures/golden/qwen2-tiny/train/log.jsonl).
        let lrs: Vec<f64> = (0..10)
            .map(|k| Schedule::Cosine.lr(1e-3, k, 2, 10))
            .collect();
        assert_eq!(lrs[0], 0.0);
        assert_eq!(lrs[1], 0.0005);
        assert_eq!(lrs[2], 0.001);
        assert!(
            (lrs[6] - 0.0005).abs() < 1e-15,
            "half-way through the decay"
        );
        assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn no_warmup_starts_at_peak_and_linear_reaches_zero() {
        assert_eq!(Schedule::Cosine.lr(5e-6, 0, 0, 100), 5e-6);
        assert_eq!(Schedule::Linear.lr(1.0, 100, 0, 100), 0.0);
        assert_eq!(Schedule::Linear.lr(1.0, 25, 0, 100), 0.75);
        assert_eq!(Schedule::Constant.lr(2.0, 7, 3, 10), 2.0);
    }
}
