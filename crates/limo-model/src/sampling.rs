//! How generation picks the next token: greedy argmax, or temperature and nucleus (top-p)
//! sampling from a per-sequence random stream, so what a sequence draws does not depend on the
//! other sequences of its batch (see [`crate::generate`]).

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy argmax; otherwise the logits are divided by it before the softmax.
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches
    /// `top_p` (at least one token); 1 keeps them all.
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A seeded random stream (SplitMix64): small, and the same on every platform and version.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and `data` (FNV-1a, then mixed): stable across platforms and
/// versions, for per-sequence seeds such as (run seed, problem id, sample).
pub fn derive_seed(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ mix64(seed);
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

/// The argmax of every row, on the device. Only each row's sum (B values) crosses to the host
/// to be checked: it is finite when every logit is (argmax skips a NaN, so the chosen logit
/// alone would pass a row with a few).
fn greedy(logits: &Tensor) -> Result<Vec<Option<u32>>> {
    let ids = logits.argmax(D::Minus1)?;
    let sums = logits.sum(D::Minus1)?;
    let sums: Vec<f64> = match sums.dtype() {
        DType::F64 => sums.to_vec1::<f64>()?,
        _ => sums
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    let ids = ids.to_vec1::<u32>()?;
    Ok(ids
        .into_iter()
        .zip(sums)
        .map(|(id, sum)| sum.is_finite().then_some(id))
        .collect())
}

/// Draws a token from `logits` with temperature `t > 0` and nucleus `top_p`; `None` when the
/// logits are not all finite (a NaN or infinity makes the total NaN or the max infinite).
fn sample_row(logits: &[f64], t: f64, top_p: f64, rng: &mut Rng) -> Option<u32> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let total: f64 = weights.iter().sum();
    if !(max.is_finite() && total.is_finite()) {
        return None;
    }
    let u = rng.uniform();
    if top_p >= 1.0 {
        let mut target = u * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last = i;
                if target < w {
                    return Some(i as u32);
                }
                target -= w;
            }
        }
        return Some(last as u32);
    }
    // The nucleus: most likely first (ties by token id), until its mass reaches top_p. Only
    // the head of that order is sorted: the top m tokens, m growing until they hold the mass.
    let by_weight = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    let candidates: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] > 0.0)
        .collect();
    let mut m = 64;
    let (order, keep, mass) = loop {
        let mut head = candidates.clone();
        if m < head.len() {
            head.select_nth_unstable_by(m - 1, by_weight);
            head.truncate(m);
        }
        head.sort_unstable_by(by_weight);
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &head {
            mass += weights[i as usize];
            keep += 1;
            if mass >= top_p * total {
                break;
            }
        }
        if mass >= top_p * total || head.len() == candidates.len() {
            break (head, keep, mass);
        }
        m *= 8;
    };
    let mut target = u * mass;
    for &i in &order[..keep] {
        let w = weights[i as usize];
        if target < w {
            return Some(i);
        }
        target -= w;
    }
    Some(order[keep - 1])
}

/// The next token of every row of `logits [B, vocab]`, `rngs[i]` drawing row i's; `None` for
/// a row whose logits are not finite (weights gone NaN), which would otherwise pick a token
/// all the same.
pub(crate) fn choose(
    logits: &Tensor,
    sampling: &Sampling,
    rngs: &mut [&mut Rng],
) -> Result<Vec<Option<u32>>> {
    if sampling.temperature == 0.0 {
        return greedy(logits);
    }
    // f32 crosses to the host (f64 for an f64 model); each row's softmax is computed in f64,
    // the rows on all cores (32 rows of a 152k vocabulary are 5M exps a step). Each row draws
    // from its own stream, so the result does not depend on the order.
    let (t, p) = (sampling.temperature, sampling.top_p);
    if logits.dtype() == DType::F64 {
        let rows = logits.to_vec2::<f64>()?;
        return Ok(rows
            .par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(row, rng)| sample_row(row, t, p, rng))
            .collect());
    }
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .par_iter()
        .zip(rngs.par_iter_mut())
        .map(|(row, rng)| {
            let row: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
            sample_row(&row, t, p, rng)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nucleus by a full sort: what `sample_row` must draw, for the same uniform.
    fn naive(logits: &[f64], t: f64, top_p: f64, u: f64) -> u32 {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut order: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
        order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let (mut mass, mut keep) = (0.0, 0);
        for &i in &order {
            mass += w[i];
            keep += 1;
            if mass >= top_p * total {
                break;
            }
        }
        let mut target = u * mass;
        for &i in &order[..keep] {
            if target < w[i] {
                return i as u32;
            }
            target -= w[i];
        }
        order[keep - 1] as u32
    }

    #[test]
    fn nucleus_sampling_equals_a_full_sort() {
        let mut gen = Rng(1);
        for case in 0..200 {
            let vocab = [5, 70, 1000, 5000][case % 4];
            // Flat and peaked distributions, with ties.
            let spread = [0.1, 1.0, 8.0][case % 3];
            let logits: Vec<f64> = (0..vocab)
                .map(|_| (gen.uniform() * spread * 4.0).round() / 4.0)
                .collect();
            for (top_p, t) in [
                (0.5, 1.0),
                (0.9, 0.7),
                (0.999, 1.3),
                (1e-9, 1.0),
                (1.0, 1.0),
            ] {
                let mut rng = Rng(case as u64);
                let u = rng.clone().uniform();
                let got = sample_row(&logits, t, top_p, &mut rng).unwrap();
                if top_p < 1.0 {
                    assert_eq!(
                        got,
                        naive(&logits, t, top_p, u),
                        "case {case} top_p {top_p}"
                    );
                }
                assert!((got as usize) < vocab);
            }
        }
    }

    #[test]
    fn rows_that_are_not_finite_choose_no_token() {
        let rows = [
            [0.5, 2.0, 1.0],
            [f64::NAN; 3],
            [0.0, f64::INFINITY, 1.0],
            [0.0, f64::NAN, 1.0],
        ];
        for dtype in [DType::F64, DType::F32] {
            let logits = Tensor::new(&rows, &candle_core::Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for sampling in [
                Sampling::greedy(),
                Sampling {
                    temperature: 0.7,
                    top_p: 0.9,
                    seed: 0,
                },
            ] {
                let mut rngs = [Rng(1), Rng(2), Rng(3), Rng(4)];
                let mut rngs: Vec<&mut Rng> = rngs.iter_mut().collect();
                let got = choose(&logits, &sampling, &mut rngs).unwrap();
                assert_eq!(got[1..], [None, None, None], "{dtype:?} {sampling:?}");
                assert!(got[0].is_some());
            }
        }
    }

    /// A sequence that joins after another finished reuses its slot, over the stale (longer)
    /// keys and values left there, and still decodes exactly as it does alone.
    #[test]
    fn derived_seeds_are_stable() {
        assert_eq!(derive_seed(0, b""), derive_seed(0, b""));
        assert_ne!(derive_seed(0, b"a"), derive_seed(1, b"a"));
        assert_ne!(derive_seed(0, b"a\x001"), derive_seed(0, b"a\x002"));
    }
}
