//! A validation split as LLaMA-Factory makes it (`val_size`): Hugging Face datasets'
//! `train_test_split(test_size, seed)`, which permutes the rows with numpy's
//! `default_rng(seed).permutation(n)` and takes the first rows of the permutation as the test
//! split, the rest, in permutation order, as the train split. The permutation is numpy's bit
//! for bit: SeedSequence's hashing of the seed, the PCG64 generator it seeds (XSL-RR 128/64),
//! and Generator.shuffle's Fisher-Yates with masked rejection sampling. No crate provides
//! numpy's seeding, so the ~60 lines are written here and pinned against numpy 2.4.

/// The rows of a split: indices into the rows read, in the order they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// The test rows `val_size` asks for out of `n`: a share below 1 (rounded up, as datasets'
/// `ceil(test_size * n)`), else a count. Errors as datasets refuses: none left to train or
/// none to test.
pub fn test_rows(n: usize, val_size: f64) -> Result<usize, String> {
    let count = if val_size < 1.0 {
        (val_size * n as f64).ceil()
    } else {
        val_size.trunc()
    };
    if !(val_size > 0.0 && val_size.is_finite()) || count < 1.0 || count >= n as f64 {
        return Err(format!(
            "{val_size} of {n} rows leaves no rows to train or none to validate"
        ));
    }
    Ok(count as usize)
}

/// datasets' `train_test_split(test_size = val_size, seed)` of `n` rows: a `val_size` below
/// 1 is a share (LLaMA-Factory passes it as a float), from 1 a count (it passes `int`).
pub fn train_test_split(n: usize, val_size: f64, seed: u64) -> Result<Split, String> {
    let n_test = test_rows(n, val_size)?;
    let mut order = numpy_permutation(n, seed);
    let train = order.split_off(n_test);
    Ok(Split { train, test: order })
}

/// `numpy.random.default_rng(seed).permutation(n)`.
pub fn numpy_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Pcg64::from_seed(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        order.swap(i, j);
    }
    order
}

/// numpy's PCG64 with its 32-bit draws (the unused half of a 64-bit draw is kept).
struct Pcg64 {
    state: u128,
    inc: u128,
    spare: Option<u32>,
}

const PCG_MULTIPLIER: u128 = (2549297995355413924 << 64) | 4865540595714422341;

impl Pcg64 {
    /// `PCG64(SeedSequence(seed))`: four 64-bit words from the seed sequence are the initial
    /// state and the stream.
    fn from_seed(seed: u64) -> Self {
        let w = seed_sequence_u64(seed);
        let (state, stream) = (
            (w[0] as u128) << 64 | w[1] as u128,
            (w[2] as u128) << 64 | w[3] as u128,
        );
        let inc = (stream << 1) | 1;
        let mut rng = Self {
            state: 0,
            inc,
            spare: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self
            .state
            .wrapping_mul(PCG_MULTIPLIER)
            .wrapping_add(self.inc);
    }

    fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        ((s >> 64) as u64 ^ s as u64).rotate_right((s >> 122) as u32)
    }

    fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let v = self.next_u64();
        self.spare = Some((v >> 32) as u32);
        v as u32
    }

    /// A uniform integer in `0..=max`: the smallest covering bit mask, redrawn until in range.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `SeedSequence(seed).generate_state(4, uint64)`: the seed's 32-bit words mixed into a pool of
/// four, then drawn out as eight 32-bit words (two per 64-bit word, low first).
fn seed_sequence_u64(seed: u64) -> [u64; 4] {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_MULT_L: u32 = 0xca01_f9dd;
    const MIX_MULT_R: u32 = 0x4973_f715;
    let entropy: Vec<u32> = match seed >> 32 {
        0 => vec![seed as u32],
        high => vec![seed as u32, high as u32],
    };
    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> 16)
    };
    let mix = |x: u32, y: u32| {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool = [0u32; 4];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    for src in 0..4 {
        for dst in 0..4 {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    let mut hash_const = INIT_B;
    let mut words = [0u32; 8];
    for (i, w) in words.iter_mut().enumerate() {
        let mut v = pool[i % 4] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        v = v.wrapping_mul(hash_const);
        *w = v ^ (v >> 16);
    }
    std::array::from_fn(|i| (words[2 * i + 1] as u64) << 32 | words[2 * i] as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from numpy 2.4.6 (`SeedSequence(42).generate_state(4, np.uint64)`,
    /// `PCG64(42).random_raw(3)`, `default_rng(seed).permutation(n)`) and datasets 5.2.0
    /// (`Dataset.train_test_split`).
    #[test]
    fn numpy_and_datasets_draw_the_same() {
        assert_eq!(
            seed_sequence_u64(42),
            [
                11465652750463011511,
                15382171918060459190,
                9018504550953525431,
                3703499796004394495
            ]
        );
        let mut rng = Pcg64::from_seed(42);
        let raw = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
        assert_eq!(
            raw,
            [
                14276969152011380360,
                8095878257575067585,
                15838336090824644132
            ]
        );
        for (seed, want) in [
            (0, [10, 2, 7, 4, 5, 12, 0, 3, 6, 9, 11, 8, 1]),
            (42, [0, 12, 7, 10, 9, 3, 6, 5, 2, 4, 11, 1, 8]),
            ((1 << 32) + 5, [7, 10, 5, 9, 2, 4, 6, 8, 0, 12, 11, 3, 1]),
            (u64::MAX, [8, 6, 3, 2, 12, 0, 4, 7, 1, 11, 5, 9, 10]),
        ] {
            assert_eq!(numpy_permutation(13, seed), want, "seed {seed}");
        }
        let p = numpy_permutation(817, 42);
        assert_eq!(p[..10], [127, 787, 66, 658, 354, 598, 461, 761, 248, 454]);
        assert_eq!(p[812..], [141, 706, 548, 609, 648]);
        let p = numpy_permutation(5_000_000, 7);
        assert_eq!(p[..5], [3272865, 2765757, 2180473, 336997, 4792605]);

        let s = train_test_split(13, 0.2, 42).unwrap();
        assert_eq!(s.test, [0, 12, 7]);
        assert_eq!(s.train[..5], [10, 9, 3, 6, 5]);
        let s = train_test_split(817, 40.0, 3).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (777, 40));
        assert_eq!(s.train[..5], [630, 754, 380, 758, 780]);
        assert_eq!(s.test[..5], [5, 508, 167, 493, 125]);
    }

    #[test]
    fn sizes_that_leave_a_split_empty_are_refused() {
        assert_eq!(test_rows(10, 0.05), Ok(1), "a share rounds up");
        assert_eq!(test_rows(10, 9.0), Ok(9));
        for bad in [0.0, -0.1, 10.0, 12.0, f64::NAN] {
            let err = test_rows(10, bad).unwrap_err();
            assert!(
                err.contains("no rows to train or none to validate"),
                "{err}"
            );
        }
    }

    #[test]
    fn records_that_did_not_encode_still_count_for_the_split() {
        // 13 records; 1 and 12 failed to encode (skipped): the others land where the split of
        // all 13 puts their records, in its order (train 10, 9, 3, 6, 5, ...; test 0, 7).
        let indexed: Vec<(usize, char)> = (0..13)
            .filter(|&r| r != 1 && r != 12)
            .map(|r| (r, char::from(b'a' + r as u8)))
            .collect();
        let [train, test] =
            crate::dataset::split_records(indexed, 13, 0.2, 42).expect("a valid split");
        assert_eq!(test, ['a', 'h']);
        let want: Vec<char> = train_test_split(13, 0.2, 42)
            .unwrap()
            .train
            .into_iter()
            .filter(|&r| r != 1 && r != 12)
            .map(|r| char::from(b'a' + r as u8))
            .collect();
        assert_eq!(train, want);
        assert_eq!(&train[..3], ['k', 'j', 'd']);
        let err = crate::dataset::split_records(vec![(0, 'a')], 1, 0.5, 42).unwrap_err();
        assert!(err.to_string().contains("data.val_size"), "{err}");
    }
}
