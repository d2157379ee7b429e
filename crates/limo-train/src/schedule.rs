//! Learning-rate schedules with linear warmup, as transformers' `get_*_schedule_with_warmup`
//! define them. Update `k` (0-based) of `total`:
//! warmup `k < W`: `lr * k / W` (so update 0 uses lr 0);
//! then cosine `lr * 0.5 * (1 + cos(pi * (k - W) / (N - W)))`, linear `lr * (N - k) / (N - W)`,
//! or constant `lr`. Cosine with a floor `r` (`cosine_with_min_lr`) scales the cosine's factor
//! `f` to `f * (1 - r) + r`, in that order (with `r` = 0 it is the cosine, bit for bit).

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
    /// The learning rate of update `update` (0-based) of `total`; `min_lr_rate` is the floor of
    /// the cosine as a share of `peak` (0: down to 0; the other schedules ignore it).
    pub fn lr(
        self,
        peak: f64,
        update: usize,
        warmup: usize,
        total: usize,
        min_lr_rate: f64,
    ) -> f64 {
        // transformers computes a factor, then LambdaLR multiplies the peak by it: the same
        // operations in the same order give the same bits.
        if update < warmup {
            return peak * (update as f64 / warmup as f64);
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = (update - warmup) as f64 / decay_steps;
        match self {
            Schedule::Cosine => {
                let factor = 0.5 * (1.0 + (PI * progress).cos());
                peak * (factor * (1.0 - min_lr_rate) + min_lr_rate).max(0.0)
            }
            Schedule::Linear => peak * ((total as f64 - update as f64) / decay_steps).max(0.0),
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
            .map(|k| Schedule::Cosine.lr(1e-3, k, 2, 10, 0.0))
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
        assert_eq!(Schedule::Cosine.lr(5e-6, 0, 0, 100, 0.0), 5e-6);
        assert_eq!(Schedule::Linear.lr(1.0, 100, 0, 100, 0.0), 0.0);
        assert_eq!(Schedule::Linear.lr(1.0, 25, 0, 100, 0.0), 0.75);
        assert_eq!(Schedule::Constant.lr(2.0, 7, 3, 10, 0.0), 2.0);
    }

    /// transformers 5.24's `get_cosine_with_min_lr_schedule_with_warmup` (torch's LambdaLR over
    /// AdamW), the lr of each update: with min_lr_rate 0.1 and warmup, and with min_lr 5e-7
    /// (the rate is min_lr / lr, as transformers divides).
    #[test]
    fn cosine_with_a_floor_is_transformers_cosine_with_min_lr_bit_for_bit() {
        let with_rate = [
            0.0,
            6.666666666666667e-06,
            1.3333333333333333e-05,
            2e-05,
            1.9774351209636413e-05,
            1.9108719811121773e-05,
            1.803648334221227e-05,
            1.6611408216728603e-05,
            1.4904953652058023e-05,
            1.300268840560683e-05,
            1.1000000000000001e-05,
            8.997311594393173e-06,
            7.095046347941978e-06,
            5.3885917832713994e-06,
            3.963516657787733e-06,
            2.8912801888782295e-06,
            2.2256487903635877e-06,
        ];
        for (k, want) in with_rate.iter().enumerate() {
            assert_eq!(
                Schedule::Cosine.lr(2e-5, k, 3, 17, 0.1),
                *want,
                "update {k}"
            );
        }
        let with_min_lr = [
            5e-06,
            4.90885919063262e-06,
            4.642820448870158e-06,
            4.223436651376892e-06,
            3.684683779254245e-06,
            3.0702083861148924e-06,
            2.4297916138851087e-06,
            1.815316220745756e-06,
            1.2765633486231088e-06,
            8.571795511298421e-07,
            5.911408093673812e-07,
        ];
        for (k, want) in with_min_lr.iter().enumerate() {
            let lr = Schedule::Cosine.lr(5e-6, k, 0, 11, 5e-7 / 5e-6);
            assert_eq!(lr, *want, "update {k}");
        }
    }

    /// transformers 5.24's linear, cosine and constant_with_warmup schedules (lr 3e-5, warmup
    /// 7, 23 updates), the lr of each update, bit for bit.
    #[test]
    fn every_schedule_is_transformers_bit_for_bit() {
        let linear = [
            0.0,
            4.2857142857142855e-06,
            8.571428571428571e-06,
            1.2857142857142857e-05,
            1.7142857142857142e-05,
            2.1428571428571428e-05,
            2.5714285714285714e-05,
            3e-05,
            2.8125e-05,
            2.625e-05,
            2.4375e-05,
            2.25e-05,
            2.0625e-05,
            1.8750000000000002e-05,
            1.6875e-05,
            1.5e-05,
            1.3125e-05,
            1.125e-05,
            9.375000000000001e-06,
            7.5e-06,
            5.625e-06,
            3.75e-06,
            1.875e-06,
        ];
        let cosine = [
            0.0,
            4.2857142857142855e-06,
            8.571428571428571e-06,
            1.2857142857142857e-05,
            1.7142857142857142e-05,
            2.1428571428571428e-05,
            2.5714285714285714e-05,
            3e-05,
            2.9711779206048457e-05,
            2.8858192987669303e-05,
            2.747204418453818e-05,
            2.5606601717798212e-05,
            2.3333553495294033e-05,
            2.074025148547635e-05,
            1.7926354830241928e-05,
            1.5e-05,
            1.2073645169758078e-05,
            9.259748514523654e-06,
            6.666446504705971e-06,
            4.393398282201788e-06,
            2.52795581546182e-06,
            1.1418070123306989e-06,
            2.8822079395154357e-07,
        ];
        let constant = [
            0.0,
            4.2857142857142855e-06,
            8.571428571428571e-06,
            1.2857142857142857e-05,
            1.7142857142857142e-05,
            2.1428571428571428e-05,
            2.5714285714285714e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
            3e-05,
        ];
        for (schedule, want) in [
            (Schedule::Linear, linear),
            (Schedule::Cosine, cosine),
            (Schedule::Constant, constant),
        ] {
            for (k, want) in want.iter().enumerate() {
                let lr = schedule.lr(3e-5, k, 7, 23, 0.0);
                assert_eq!(lr, *want, "{schedule} update {k}");
            }
        }
    }
}
