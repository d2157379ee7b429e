//! The Hopper (sm_90a) flash-attention backward (`kernels/flash_attention_bwd_sm90.cu`): dK, dV
//! and the fp32 dQ accumulation (TMA reduce-adds) with wgmma products, TMA loads on mbarriers
//! and a producer warpgroup feeding two consumer warpgroups. Same contract and results as the
//! sm_80 atomic backward (`flash_bwd_dkdv_atomic_bf16_*`): [`flash_attention_backward`]
//! dispatches here for bf16 on compute capability 9.x unless `LIMO_FLASH_PATH=sm80` or the
//! deterministic backward is asked for; the preprocess (delta) and the dQ conversion stay the
//! sm_80 file's kernels.
//!
//! One CTA per (tile of 128 keys, kv head), tiles from the same table builder as the sm_80
//! dK/dV (never across a document, most queries after the tile first); five TMA maps passed by
//! value: q and dO with 64-row boxes, k and v with 128-row boxes, all 64 columns wide (bf16),
//! and `dq_accum` (f32) with 32-column, 64-row boxes that the kernel reduce-adds dQ into, all
//! with the 128-byte swizzle.
//!
//! [`flash_attention_backward`]: super::flash_attention::flash_attention_backward

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, Result};

use super::flash_attention::{allow_smem, config, tile_table, Dims, Order};
use super::flash_attention_sm90::{tensor_map, MapDtype};
use super::{cubin_sm90a, load_sm90a, wrap, KernelType, Sm90aCubin};

static CUBIN: Sm90aCubin = cubin_sm90a!("flash_attention_bwd_sm90");

/// Threads per CTA: a producer warpgroup and two consumer warpgroups.
const THREADS: u32 = 384;
/// Keys per CTA (`kBwdKeys`) and query rows per iteration (`kBwdQueries`) in the kernel file.
const KEY_TILE: usize = 128;
const QUERY_BLOCK: usize = 64;
/// Q/dO ring stages (`kBwdStages`).
const STAGES: usize = 2;

/// Dynamic shared memory (`BwdSmem<D>::bytes` in the kernel file): K and V `[128][D]`, `STAGES`
/// x (Q, dO `[64][D]`), two dS^T buffers `[128][64]` bf16, the dQ staging of the TMA
/// reduce-add (two consumer warpgroups x two buffers of `[64][64]` f32), `STAGES` x (lse,
/// delta `[64]`) f32, the mbarriers and 1024 bytes to align the base (231,464 bytes at D=128,
/// of the 232,448 an sm_90 block may have; 165,928 at D=64).
pub fn smem_bytes(head_dim: usize) -> usize {
    let kv = KEY_TILE * head_dim * 2;
    let q = QUERY_BLOCK * head_dim * 2;
    let ds = KEY_TILE * QUERY_BLOCK * 2;
    let dq = 2 * 2 * QUERY_BLOCK * 64 * 4;
    2 * kv
        + STAGES * 2 * q
        + 2 * ds
        + dq
        + STAGES * 2 * QUERY_BLOCK * 4
        + 8 * (1 + 2 * STAGES)
        + 1024
}

/// The views and buffers of one backward, as the sm_80 path has them (`T` must be bf16: the
/// caller's generic backward checks the dtype before it takes this path).
pub(super) struct Buffers<'a, 'b, T: KernelType> {
    pub q: &'a CudaView<'b, T>,
    pub k: &'a CudaView<'b, T>,
    pub v: &'a CudaView<'b, T>,
    pub d_out: &'a CudaView<'b, T>,
    pub lse: &'a CudaView<'b, f32>,
    pub delta: &'a CudaSlice<f32>,
    pub dk: &'a mut CudaSlice<T>,
    pub dv: &'a mut CudaSlice<T>,
    /// `[N, q_heads, D]` f32, zeroed: the kernel adds `scale dS K` into it (TMA reduce-adds
    /// through a tensor map).
    pub dq_accum: &'a mut CudaSlice<f32>,
}

/// Launches the sm90 dK/dV/dQ-accumulation kernel. Errors on a GPU that is not compute
/// capability 9.x.
pub(super) fn launch<T: KernelType>(
    dev: &CudaDevice,
    b: Buffers<T>,
    cu_seqlens: &[usize],
    d: Dims,
    scale: f32,
) -> Result<()> {
    if T::SUFFIX != "bf16" {
        bail!(
            "flash attention backward (sm90): bf16 only, got {}",
            T::SUFFIX
        )
    }
    let f = load_sm90a(
        dev,
        &CUBIN,
        &format!("flash_bwd_sm90_bf16_hd{}", d.head_dim),
    )?;
    let stream = dev.cuda_stream();
    // q, k, v and dO are read only through the maps: the guards keep the stream ordering of
    // those reads (held until after the launch).
    let (q_ptr, _q_guard) = b.q.device_ptr(&stream);
    let (k_ptr, _k_guard) = b.k.device_ptr(&stream);
    let (v_ptr, _v_guard) = b.v.device_ptr(&stream);
    let (do_ptr, _do_guard) = b.d_out.device_ptr(&stream);
    let map = |ptr, dtype, heads, rows| tensor_map(ptr, dtype, d.n, heads, d.head_dim, rows);
    let tm_q = map(q_ptr, MapDtype::Bf16, d.q_heads, QUERY_BLOCK)?;
    let tm_do = map(do_ptr, MapDtype::Bf16, d.q_heads, QUERY_BLOCK)?;
    let tm_k = map(k_ptr, MapDtype::Bf16, d.kv_heads, KEY_TILE)?;
    let tm_v = map(v_ptr, MapDtype::Bf16, d.kv_heads, KEY_TILE)?;
    // dq_accum is written only through its map (TMA reduce-adds): the guard orders the write.
    let (dq_ptr, _dq_guard) = b.dq_accum.device_ptr_mut(&stream);
    let tm_dq = map(dq_ptr, MapDtype::F32, d.q_heads, QUERY_BLOCK)?;
    let (tiles, count) = tile_table(dev, cu_seqlens, KEY_TILE, Order::Keys)?;
    let (n, hq, hkv) = (d.n as i32, d.q_heads as i32, d.kv_heads as i32);
    let smem = smem_bytes(d.head_dim);
    allow_smem(&f, smem)?;
    let mut l = f.builder();
    l.arg(&tm_q).arg(&tm_k).arg(&tm_v).arg(&tm_do).arg(&tm_dq);
    l.arg(b.lse).arg(b.delta);
    l.arg(b.dk).arg(b.dv).arg(&tiles);
    l.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
    unsafe { l.launch(config(count, d.kv_heads, THREADS, smem)) }.map_err(wrap)?;
    drop(l);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smem_matches_the_kernel_layout() {
        assert_eq!(smem_bytes(128), 231_464);
        assert_eq!(smem_bytes(64), 165_928);
        assert!(smem_bytes(128) <= 227 * 1024);
    }
}
