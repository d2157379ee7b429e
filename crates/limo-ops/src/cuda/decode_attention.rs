//! Decode attention and the KV-cache append on the GPU (`kernels/decode_attention.cu`), the
//! contract of [`crate::decode_attention`] (the CPU reference they are checked against).
//!
//! Attention is two launches: `decode_attn_split_*` computes, per split of [`SPLIT`] keys of a
//! sequence, the softmax statistics and unnormalized output of every query head (fp32 partial
//! buffers), and `decode_attn_combine_*` merges the splits of each (sequence, head). The split
//! size is a constant, so a sequence's output does not depend on the other sequences of the
//! batch. The callers ([`crate::decode_attention::decode_attention`], `kv_cache_write`) have
//! validated shapes, slots and lengths; the functions here check what the kernels assume
//! (dtypes, contiguity, alignment, grid limits).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{bail, DType, Result, Tensor};

use super::launch::{by_dtype, inputs};
use super::{alloc, as_i32, cuda_device, grid_1d, load, ptx, to_tensor, wrap};
use super::{KernelType, Ptx};
use crate::decode_attention::CacheIndex;

static PTX: Ptx = ptx!("decode_attention");

/// Keys per split (`kSplit` in the kernel file).
const SPLIT: usize = 256;
/// Query heads per CTA (`kMaxGroup`): larger GQA groups take several CTAs.
const MAX_GROUP: usize = 8;
/// Threads of the split kernel (`kThreads`).
const THREADS: u32 = 128;
/// Threads per block of the append kernel.
const WRITE_BLOCK: u32 = 256;

/// Dynamic shared memory of `decode_attn_split_*` (`SplitSmem` in the kernel file).
fn split_smem_bytes(head_dim: usize) -> usize {
    (MAX_GROUP * SPLIT + 4 * MAX_GROUP * head_dim) * 4
}

/// Whether the attention kernels take these inputs: the dispatch test of
/// [`crate::decode_attention::decode_attention`].
pub(crate) fn dispatches(q: &Tensor, k_cache: &Tensor) -> bool {
    super::runs_on_kernel(q, &[DType::BF16, DType::F32])
        && k_cache.dtype() == q.dtype()
        && k_cache.device().same_device(q.device())
        && matches!(q.dims(), [_, _, 64] | [_, _, 128])
}

/// Whether the append kernel takes these inputs (any head_dim).
pub(crate) fn write_dispatches(k_cache: &Tensor, k: &Tensor) -> bool {
    super::runs_on_kernel(k_cache, &[DType::BF16, DType::F32])
        && k.dtype() == k_cache.dtype()
        && k.device().same_device(k_cache.device())
}

/// `t` contiguous with its first element 32-byte aligned (the kernels load 8 elements at a
/// time; rows are multiples of 64 elements, so only the start offset matters).
fn prepare(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() % 8 == 0 {
        Ok(t)
    } else {
        t.force_contiguous()
    }
}

/// See [`crate::decode_attention::decode_attention`].
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    index: &CacheIndex,
    scale: f64,
) -> Result<Tensor> {
    by_dtype!(
        q.dtype(),
        "decode attention kernel",
        attention(q, k_cache, v_cache, index, scale)
    )
}

fn attention<T: KernelType>(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    index: &CacheIndex,
    scale: f64,
) -> Result<Tensor> {
    let dev = cuda_device(q)?;
    let (batch, q_heads, head_dim) = q.dims3()?;
    let (_, kv_heads, cap, _) = k_cache.dims4()?;
    let group = q_heads / kv_heads;
    let chunks = group.div_ceil(MAX_GROUP);
    let rows = batch * kv_heads * chunks;
    if rows > 65535 {
        bail!("decode attention kernel: {batch} sequences x {kv_heads} kv heads exceed the grid");
    }
    let max_len = index.values().iter().copied().max().unwrap_or(1);
    let max_splits = max_len.div_ceil(SPLIT);
    let (q, k_cache, v_cache) = (prepare(q)?, prepare(k_cache)?, prepare(v_cache)?);
    let table = index.table();
    if !table.device().same_device(q.device()) || table.dtype() != DType::U32 {
        bail!("decode attention kernel: the cache index is not on the GPU of the queries");
    }
    let [q_in, k_in, v_in, index_in] = inputs([&q, &k_cache, &v_cache, table]);
    let (qv, kv, vv) = (q_in.view::<T>()?, k_in.view::<T>()?, v_in.view::<T>()?);
    let iv = index_in.view::<u32>()?;
    let partial_rows = batch * q_heads * max_splits;
    // SAFETY: the split kernel writes the partials of every split below a sequence's length,
    // which are the only ones the combine reads; the combine writes every output element.
    let mut acc = unsafe { alloc::<f32>(&dev, partial_rows * head_dim) }?;
    let mut ml = unsafe { alloc::<f32>(&dev, partial_rows * 2) }?;
    let mut out = unsafe { alloc::<T>(&dev, batch * q_heads * head_dim) }?;
    let (batch_i, hq_i, hkv_i) = (
        as_i32(batch, "batch")?,
        as_i32(q_heads, "q_heads")?,
        as_i32(kv_heads, "kv_heads")?,
    );
    let (cap_i, splits_i, hd_i) = (
        as_i32(cap, "cache capacity")?,
        as_i32(max_splits, "splits")?,
        as_i32(head_dim, "head_dim")?,
    );
    let scale = scale as f32;

    let f = load(
        &dev,
        &PTX,
        &format!("decode_attn_split_{}_hd{head_dim}", T::SUFFIX),
    )?;
    let mut b = f.builder();
    b.arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&iv)
        .arg(&mut acc)
        .arg(&mut ml);
    b.arg(&batch_i)
        .arg(&hq_i)
        .arg(&hkv_i)
        .arg(&cap_i)
        .arg(&splits_i)
        .arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (splits_i as u32, rows as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: split_smem_bytes(head_dim) as u32,
    };
    // SAFETY: argument types and order match decode_attn_split_* in kernels/decode_attention.cu;
    // the caller checked every slot and length against the cache's shape.
    unsafe { b.launch(cfg) }.map_err(wrap)?;
    drop(b);

    let f = load(&dev, &PTX, &format!("decode_attn_combine_{}", T::SUFFIX))?;
    let mut b = f.builder();
    b.arg(&acc).arg(&ml).arg(&iv).arg(&mut out);
    b.arg(&batch_i).arg(&hq_i).arg(&hd_i).arg(&splits_i);
    let cfg = LaunchConfig {
        grid_dim: ((batch * q_heads) as u32, 1, 1),
        block_dim: (head_dim as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match decode_attn_combine_*; one CTA per (sequence,
    // head), head_dim threads.
    unsafe { b.launch(cfg) }.map_err(wrap)?;
    drop(b);
    to_tensor(out, &dev, (batch, q_heads, head_dim))
}

/// See [`crate::decode_attention::kv_cache_write`], which checks every (slot, position) first:
/// the caches are written through their storage, in place (every view of them sees the new
/// rows).
pub(crate) fn kv_cache_write(
    k_cache: &Tensor,
    v_cache: &Tensor,
    k: &Tensor,
    v: &Tensor,
    at: &CacheIndex,
) -> Result<()> {
    by_dtype!(
        k_cache.dtype(),
        "KV cache write kernel",
        write(k_cache, v_cache, k, v, at)
    )
}

fn write<T: KernelType>(
    k_cache: &Tensor,
    v_cache: &Tensor,
    k: &Tensor,
    v: &Tensor,
    at: &CacheIndex,
) -> Result<()> {
    let dev = cuda_device(k_cache)?;
    let (_, kv_heads, cap, head_dim) = k_cache.dims4()?;
    if !k_cache.is_contiguous() || !v_cache.is_contiguous() {
        bail!("KV cache write kernel: the caches must be contiguous");
    }
    let table = at.table();
    if !table.device().same_device(k_cache.device()) || table.dtype() != DType::U32 {
        bail!("KV cache write kernel: the cache index is not on the GPU of the cache");
    }
    let n = at.len();
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let [kc_in, vc_in, k_in, v_in, at_in] = inputs([k_cache, v_cache, &k, &v, table]);
    let (kcv, vcv) = (kc_in.view::<T>()?, vc_in.view::<T>()?);
    let (kv, vv) = (k_in.view::<T>()?, v_in.view::<T>()?);
    let iv = at_in.view::<u32>()?;
    let (n_i, hkv_i, hd_i, cap_i) = (
        as_i32(n, "rows")?,
        as_i32(kv_heads, "kv_heads")?,
        as_i32(head_dim, "head_dim")?,
        as_i32(cap, "cache capacity")?,
    );
    let f = load(&dev, &PTX, &format!("kv_cache_write_{}", T::SUFFIX))?;
    let mut b = f.builder();
    b.arg(&kcv).arg(&vcv).arg(&kv).arg(&vv).arg(&iv);
    b.arg(&n_i).arg(&hkv_i).arg(&hd_i).arg(&cap_i);
    // SAFETY: argument types and order match kv_cache_write_*; the caller checked every
    // (slot, position) against the cache's shape and that none repeats, so no two threads
    // write one element. The caches are written through views of their storage, which candle
    // does itself for slice_set.
    unsafe { b.launch(grid_1d(n * kv_heads * head_dim, WRITE_BLOCK)) }.map_err(wrap)?;
    Ok(())
}
