//! The checks of generation's kernels: decode attention over a pooled KV cache with its
//! append, and a decode step's fused bias + RoPE + append.

use candle_core::{DType, Device, Result, Tensor};

use super::{both, random, tolerance, Checks, Run};

/// Decode attention over a KV cache pool, after the step's new rows were appended: the cache
/// write must be exact, the attention within the dtype's tolerance. Sequences sit in permuted
/// slots with lengths of one key, around the kernel's 256-key splits and long caches.
pub(super) fn decode(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    use crate::decode_attention::{decode_attention, kv_cache_write, CacheIndex};
    let tol = tolerance(dtype);
    let s = opts.seed * 1000 + 150;
    // (q heads, kv heads, head_dim, capacity, (slot, length) per sequence)
    let mut shapes = vec![
        (40, 8, 128, 1024, vec![(2, 1), (0, 300), (3, 1024), (1, 17)]),
        (12, 2, 128, 2048, vec![(1, 2048), (0, 5), (2, 257)]),
        (14, 2, 64, 600, vec![(0, 100), (1, 513)]),
    ];
    if opts.large {
        shapes.push((40, 8, 128, 16384, vec![(1, 16384), (0, 3000)]));
        let many: Vec<(usize, usize)> = (0..32).map(|i| ((i * 7) % 32, 1000 + 37 * i)).collect();
        shapes.push((12, 2, 128, 2200, many));
    }
    for (q_heads, kv_heads, head_dim, cap, seqs) in shapes {
        let slots = seqs.iter().map(|&(s, _)| s + 1).max().unwrap_or(1);
        let b = seqs.len();
        let input = |shape: &[usize], seed: u64| -> Result<Tensor> {
            random(shape, s + seed, 1.0)?.to_dtype(dtype)
        };
        let kc = input(&[slots, kv_heads, cap, head_dim], 1)?;
        let vc = input(&[slots, kv_heads, cap, head_dim], 2)?;
        let q = input(&[b, q_heads, head_dim], 3)?;
        let k_new = input(&[b, kv_heads, head_dim], 4)?;
        let v_new = input(&[b, kv_heads, head_dim], 5)?;
        let seq_slots: Vec<usize> = seqs.iter().map(|&(s, _)| s).collect();
        let lens: Vec<usize> = seqs.iter().map(|&(_, l)| l).collect();
        let positions: Vec<usize> = lens.iter().map(|l| l - 1).collect();
        let scale = 1.0 / (head_dim as f64).sqrt();
        let outputs = both(&["out", "k_cache", "v_cache"], reference, test, |d| {
            // Fresh copies: the write is in place and must not reach the shared inputs.
            let (kc, vc) = (kc.to_device(d)?.copy()?, vc.to_device(d)?.copy()?);
            let at = CacheIndex::new(&seq_slots, &positions, d)?;
            kv_cache_write(&kc, &vc, &k_new.to_device(d)?, &v_new.to_device(d)?, &at)?;
            let index = CacheIndex::new(&seq_slots, &lens, d)?;
            let out = decode_attention(&q.to_device(d)?, &kc, &vc, &index, scale)?;
            Ok(vec![out, kc, vc])
        })?;
        let (kmax, kmin) = (lens.iter().max(), lens.iter().min());
        let shape = format!(
            "{b} seqs of {}..{} keys, {q_heads}/{kv_heads}x{head_dim}",
            kmin.unwrap_or(&0),
            kmax.unwrap_or(&0)
        );
        c.push("decode_attention", shape, dtype, tol, outputs)?;
    }
    Ok(())
}

/// The fused bias + RoPE + cache append of a decode step against the reference device, and on
/// the tested device against its own unfused form, bit for bit (tolerance 0).
pub(super) fn qkv_append(
    c: &mut Checks,
    Run(reference, test, opts): Run,
    dtype: DType,
) -> Result<()> {
    use crate::decode_attention::{qkv_rope_append, qkv_rope_append_unfused, CacheIndex, NewRows};
    let s = opts.seed * 1000 + 170;
    // (q heads, kv heads, head_dim, slots, capacity, (slot, position) per new row)
    let shapes = [
        (12, 2, 128, 3, 300, vec![(1, 299), (0, 4), (2, 0), (1, 17)]),
        (40, 8, 128, 2, 64, vec![(1, 63), (0, 31)]),
        (14, 2, 64, 33, 9, (0..33).map(|i| (32 - i, i % 9)).collect()),
    ];
    for (q_heads, kv_heads, head_dim, slots, cap, rows) in shapes {
        let n = rows.len();
        let input = |shape: &[usize], seed: u64| -> Result<Tensor> {
            random(shape, s + seed, 2.0)?.to_dtype(dtype)
        };
        let (mut lin, mut bias) = (Vec::new(), Vec::new());
        for (i, heads) in [q_heads, kv_heads, kv_heads].into_iter().enumerate() {
            lin.push(input(&[n, heads * head_dim], 1 + i as u64)?);
            bias.push(input(&[heads * head_dim], 4 + i as u64)?);
        }
        let cache = input(&[slots, kv_heads, cap, head_dim], 7)?;
        let (at_slots, at_pos): (Vec<usize>, Vec<usize>) = rows.iter().copied().unzip();
        let positions: Vec<u32> = rows.iter().map(|&(_, p)| p as u32 + 1000).collect();
        let run = |d: &Device, fused: bool| -> Result<Vec<Tensor>> {
            let on = |t: &Tensor| t.to_device(d);
            let (l, b) = (
                [on(&lin[0])?, on(&lin[1])?, on(&lin[2])?],
                [on(&bias[0])?, on(&bias[1])?, on(&bias[2])?],
            );
            // Fresh copies: the append writes in place.
            let kv = (on(&cache)?.copy()?, on(&cache)?.copy()?);
            let rope = crate::RopeTables::new(&positions, head_dim, 1e6, dtype, d)?;
            let at = CacheIndex::new(&at_slots, &at_pos, d)?;
            let rows = NewRows {
                lin: [&l[0], &l[1], &l[2]],
                bias: [&b[0], &b[1], &b[2]],
                rope: &rope,
            };
            let q = if fused {
                qkv_rope_append(&rows, &kv, &at)?
            } else {
                qkv_rope_append_unfused(&rows, &kv, &at)?
            };
            Ok(vec![q, kv.0, kv.1])
        };
        let names = ["q", "k_cache", "v_cache"];
        let shape = format!("{n} rows, {q_heads}/{kv_heads}x{head_dim}");
        let outputs = both(&names, reference, test, |d| run(d, true))?;
        c.push(
            "qkv_rope_append",
            shape.clone(),
            dtype,
            tolerance(dtype),
            outputs,
        )?;
        let (fused, unfused) = (run(test, true)?, run(test, false)?);
        let same = names
            .iter()
            .zip(unfused.into_iter().zip(fused))
            .map(|(name, (u, f))| (*name, u, f))
            .collect();
        c.push("qkv_rope_append = unfused", shape, dtype, 0.0, same)?;
    }
    Ok(())
}
