//! Rotary position embedding in the "rotate half" layout of Hugging Face's Qwen2.

use candle_core::{DType, Device, Result, Tensor, D};

/// cos and sin of `position * inv_freq`, `[N, head_dim]`, one row per token.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for the given per-token positions, computed in f64 for an f64 model (as the f64
    /// transformers goldens are) and in f32 otherwise (as transformers' rotary module does,
    /// whatever the model dtype), then cast to `dtype`.
    pub fn new(
        positions: &[u32],
        head_dim: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (positions.len(), head_dim);
        if dtype == DType::F64 {
            let (cos, sin) = tables::<f64>(positions, head_dim, theta);
            return Ok(Self {
                cos: Tensor::from_vec(cos, shape, device)?,
                sin: Tensor::from_vec(sin, shape, device)?,
            });
        }
        let (cos, sin) = tables::<f32>(positions, head_dim, theta as f32);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }
}

/// [`RopeTables`] for many batches of one model: the tables of positions `0..capacity` are
/// built once (on the host, by the same computation as [`RopeTables::new`], then uploaded and
/// cast on the device) and each batch's rows are gathered on the device by `index_select` with
/// its positions, so a batch uploads only `N` u32 positions. The capacity doubles when a batch
/// reaches past it. Row `p` is bit-identical to `RopeTables::new(&[p], ..)`, so the cache
/// changes no number. Shared by reference across threads (`Send + Sync`).
pub struct RopeCache {
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: Device,
    /// `(capacity, cos, sin)`, `cos`/`sin` of shape `[capacity, head_dim]` in `dtype`.
    full: std::sync::Mutex<Option<(usize, Tensor, Tensor)>>,
}

impl RopeCache {
    /// Smallest table built (positions), so short batches do not rebuild it doubling by doubling.
    const MIN_CAPACITY: usize = 1024;
    /// Largest table kept (positions): 2^18 covers Qwen2.5's 128k context with room; its f32
    /// tables at head_dim 128 take 256 MiB.
    const MAX_CAPACITY: usize = 1 << 18;

    /// An empty cache; the tables are built by the first [`RopeCache::tables`] call.
    pub fn new(head_dim: usize, theta: f64, dtype: DType, device: &Device) -> Self {
        Self {
            head_dim,
            theta,
            dtype,
            device: device.clone(),
            full: std::sync::Mutex::new(None),
        }
    }

    /// The tables for the given per-token positions (`[N, head_dim]` in the cache's dtype, on
    /// its device), equal bit for bit to `RopeTables::new(positions, ..)`.
    pub fn tables(&self, positions: &[u32]) -> Result<RopeTables> {
        let needed = positions.iter().max().map_or(0, |&p| p as usize + 1);
        // Far positions (user position_ids up to u32::MAX) get their own rows: a table up to
        // them would not fit in memory.
        if needed > Self::MAX_CAPACITY {
            return RopeTables::new(
                positions,
                self.head_dim,
                self.theta,
                self.dtype,
                &self.device,
            );
        }
        let (cos, sin) = self.full_tables(needed)?;
        let index = Tensor::from_slice(positions, positions.len(), &self.device)?;
        Ok(RopeTables {
            cos: cos.index_select(&index, 0)?,
            sin: sin.index_select(&index, 0)?,
        })
    }

    /// The number of positions the tables cover now (0 before the first call).
    pub fn capacity(&self) -> usize {
        self.lock().as_ref().map_or(0, |(capacity, _, _)| *capacity)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(usize, Tensor, Tensor)>> {
        // The guarded value is replaced whole or not at all: a poisoned lock still holds a
        // consistent table.
        self.full.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole tables, grown (capacity doubled until it covers `needed`) when too short.
    fn full_tables(&self, needed: usize) -> Result<(Tensor, Tensor)> {
        let mut full = self.lock();
        if let Some((capacity, cos, sin)) = full.as_ref() {
            if *capacity >= needed {
                return Ok((cos.clone(), sin.clone()));
            }
        }
        let mut capacity = full
            .as_ref()
            .map_or(Self::MIN_CAPACITY, |(capacity, _, _)| *capacity);
        while capacity < needed {
            capacity *= 2;
        }
        let positions: Vec<u32> = (0..capacity).map(|p| p as u32).collect();
        let RopeTables { cos, sin } = RopeTables::new(
            &positions,
            self.head_dim,
            self.theta,
            self.dtype,
            &self.device,
        )?;
        *full = Some((capacity, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }
}

/// Row-major `[positions, head_dim]` cos and sin of `position * inv_freq`, with
/// `inv_freq_i = theta^(-2i/head_dim)` and both halves of a row using the same frequencies.
fn tables<F: candle_core::WithDType + num_traits::Float>(
    positions: &[u32],
    head_dim: usize,
    theta: F,
) -> (Vec<F>, Vec<F>) {
    let half = head_dim / 2;
    let dim = F::from(head_dim).expect("head_dim fits a float");
    let inv_freq: Vec<F> = (0..half)
        .map(|i| F::one() / theta.powf(F::from(2 * i).expect("fits") / dim))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        let p = F::from(p).expect("position fits a float");
        for _ in 0..2 {
            for &f in &inv_freq {
                let angle = p * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves of the last dimension.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// The transpose of `rotate_half`: `[z2, -z1]`.
fn rotate_half_transposed(z: &Tensor) -> Result<Tensor> {
    let half = z.dim(D::Minus1)? / 2;
    let z1 = z.narrow(D::Minus1, 0, half)?;
    let z2 = z.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&z2, &z1.neg()?], D::Minus1)
}

/// `y = x * cos + rotate_half(x) * sin` for `x` of shape `[N, heads, head_dim]`.
pub fn rope_forward(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rope::supported(x, tables) {
        return crate::cuda::rope::rope_forward(x, tables);
    }
    let cos = tables.cos.unsqueeze(1)?;
    let sin = tables.sin.unsqueeze(1)?;
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// `dx = dy * cos + rotate_half^T(dy * sin)`.
pub fn rope_backward(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::rope::supported(dy, tables) {
        return crate::cuda::rope::rope_backward(dy, tables);
    }
    let cos = tables.cos.unsqueeze(1)?;
    let sin = tables.sin.unsqueeze(1)?;
    dy.broadcast_mul(&cos)? + rotate_half_transposed(&dy.broadcast_mul(&sin)?)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::Var;

    #[test]
    fn backward_matches_autograd_f64() -> Result<()> {
        let dev = Device::Cpu;
        let positions = [0, 1, 2, 0, 1, 7];
        let tables = RopeTables::new(&positions, 8, 10000.0, DType::F64, &dev)?;
        let x = rand_tensor(&[6, 3, 8], 4, &dev)?;
        let dy = rand_tensor(&[6, 3, 8], 5, &dev)?;
        let y = rope_forward(&x, &tables)?;
        let dx = rope_backward(&dy, &tables)?;
        let (grads, y_ref) = autograd(&[&x], &dy, |v: &[Var]| {
            rope_forward(v[0].as_tensor(), &tables)
        })?;
        assert_close(&y, &y_ref, 0.0, "y")?;
        assert_close(&dx, &grads[0], 1e-14, "dx")?;
        Ok(())
    }

    /// Packed documents of random lengths: positions restart at 0 at each document.
    fn packed_positions(seed: u64, tokens: usize, max_doc: usize) -> Vec<u32> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let mut positions = Vec::with_capacity(tokens);
        while positions.len() < tokens {
            let len = rng.random_range(1..=max_doc).min(tokens - positions.len());
            positions.extend(0..len as u32);
        }
        positions
    }

    fn bits(t: &Tensor) -> Result<Vec<u64>> {
        let t = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F64 => t.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect(),
            DType::F32 => t
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            DType::BF16 => t
                .to_vec1::<half::bf16>()?
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            other => panic!("dtype {other:?}"),
        })
    }

    #[test]
    fn cache_is_bit_identical_to_new_tables() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32, DType::BF16] {
            for (head_dim, theta) in [(8, 10000.0), (64, 1e6), (128, 1e6)] {
                let cache = RopeCache::new(head_dim, theta, dtype, &dev);
                assert_eq!(cache.capacity(), 0);
                // Short packed documents, then longer ones that grow the tables (twice: 1024
                // -> 4096), then short ones again from the grown tables.
                let batches = [
                    packed_positions(1, 300, 40),
                    packed_positions(2, 3000, 2500),
                    vec![0, 1, 2, 3, 0, 1, 4095, 0],
                    packed_positions(3, 500, 200),
                ];
                for (i, positions) in batches.iter().enumerate() {
                    let cached = cache.tables(positions)?;
                    let fresh = RopeTables::new(positions, head_dim, theta, dtype, &dev)?;
                    assert_eq!(cached.cos.dims(), &[positions.len(), head_dim]);
                    assert_eq!(cached.cos.dtype(), dtype);
                    assert!(bits(&cached.cos)? == bits(&fresh.cos)?, "{dtype:?} {i} cos");
                    assert!(bits(&cached.sin)? == bits(&fresh.sin)?, "{dtype:?} {i} sin");
                }
                assert_eq!(cache.capacity(), 4096);
            }
        }
        let empty = RopeCache::new(8, 1e4, DType::F32, &dev).tables(&[])?;
        assert_eq!(empty.cos.dims(), &[0, 8]);
        // A position past the largest table kept: its rows directly, the table left as it
        // was (a batch with position u32::MAX once hung building a 2^32-row table).
        let cache = RopeCache::new(8, 1e4, DType::F32, &dev);
        cache.tables(&[0, 1])?;
        let far = [0, 1, u32::MAX, 7];
        let cached = cache.tables(&far)?;
        let fresh = RopeTables::new(&far, 8, 1e4, DType::F32, &dev)?;
        assert!(bits(&cached.cos)? == bits(&fresh.cos)? && bits(&cached.sin)? == bits(&fresh.sin)?);
        assert_eq!(cache.capacity(), RopeCache::MIN_CAPACITY);
        Ok(())
    }

    #[test]
    fn cache_is_shared_across_threads() -> Result<()> {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RopeCache>();
        let cache = RopeCache::new(16, 1e6, DType::F32, &Device::Cpu);
        // Every thread needs the tables grown past 1024 (one long document each).
        let positions: Vec<Vec<u32>> = (0..4)
            .map(|t| {
                let mut p = packed_positions(t, 700, 300);
                p.extend(0..1100 + 100 * t as u32);
                p
            })
            .collect();
        std::thread::scope(|s| {
            for p in &positions {
                let cache = &cache;
                s.spawn(move || {
                    let cached = cache.tables(p).unwrap();
                    let fresh = RopeTables::new(p, 16, 1e6, DType::F32, &Device::Cpu).unwrap();
                    assert!(bits(&cached.sin).unwrap() == bits(&fresh.sin).unwrap());
                });
            }
        });
        assert_eq!(cache.capacity(), 2048);
        Ok(())
    }

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() -> Result<()> {
        let dev = Device::Cpu;
        let tables = RopeTables::new(&[0, 5], 16, 1e6, DType::F64, &dev)?;
        let x = rand_tensor(&[2, 2, 16], 6, &dev)?;
        let y = rope_forward(&x, &tables)?;
        assert_close(&y.get(0)?, &x.get(0)?, 0.0, "position 0")?;
        // A rotation of each (i, i + half) pair keeps the norm (up to the f32 tables).
        let nx = x.get(1)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let ny = y.get(1)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        assert!((nx - ny).abs() / nx < 1e-6, "{nx} vs {ny}");
        assert!(
            crate::testing::rel_l2(&y.get(1)?, &x.get(1)?)? > 1e-3,
            "position 5 rotates"
        );
        Ok(())
    }
}
