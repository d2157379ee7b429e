//! The Hopper (sm_90a) flash-attention forward (`kernels/flash_attention_sm90.cu`): wgmma
//! tensor-core products from shared memory, TMA loads with mbarriers and a producer warpgroup
//! feeding two consumer warpgroups. Same contract and same result as the sm_80 forward
//! ([`flash_attention_forward`](super::flash_attention::flash_attention_forward), which
//! dispatches here on compute capability 9.x for bf16): `out` `[N, q_heads, head_dim]` bf16 and
//! the log-sum-exp `[q_heads, N]` f32, so either backward (sm_80, or the Hopper one in
//! [`super::flash_attention_bwd_sm90`]) takes either.
//!
//! The host side builds three TMA tensor maps (`cuTensorMapEncodeTiled`) over q, k and v as
//! `[N, heads, head_dim]` bf16 tensors (dimensions innermost first `{head_dim, heads, N}`, a box
//! of `{64, 1, 128}`: 64 columns of one head for 128 tokens, 128-byte swizzle, zeros past N)
//! and passes them by value as kernel parameters; the tile table is the sm_80 forward's (128
//! query rows per tile, tiles never cross a document, longest work first).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, PushKernelArg};
use candle_core::{bail, DType, Result, Tensor};

use super::flash_attention::{
    allow_smem, check_inputs, config, prepare, tile_table, Order, FWD_TILE,
};
use super::{cubin_sm90a, cuda_device, load_sm90a, to_tensor, view, wrap, Sm90aCubin};

static CUBIN: Sm90aCubin = cubin_sm90a!("flash_attention_sm90");

/// Threads per CTA: a producer warpgroup and two consumer warpgroups.
const THREADS: u32 = 384;
/// Ring stages of K/V tiles (`kStages` in the kernel file; kv tiles are 128 keys, `kBlockN`).
const STAGES: usize = 3;

/// Dynamic shared memory (`Smem<D>::bytes` in the kernel file): the Q tile and `STAGES` K and V
/// tiles, `[128][D]` bf16 each, the mbarriers, and 1024 bytes to align the base for the
/// 128-byte swizzle (230,456 bytes at D=128, of the 232,448 an sm_90 block may have; 115,768
/// at D=64).
pub fn smem_bytes(head_dim: usize) -> usize {
    let tile = FWD_TILE * head_dim * 2;
    tile * (1 + 2 * STAGES) + 8 * (1 + 2 * STAGES) + 1024
}

/// A `CUtensorMap` as a kernel argument (128 opaque bytes, passed by value).
#[repr(transparent)]
pub(super) struct TensorMap(sys::CUtensorMap);

// SAFETY: a plain-old-data driver struct, passed by value as the kernel's `CUtensorMap`.
unsafe impl DeviceRepr for TensorMap {}

/// Element type of a [`tensor_map`].
#[derive(Clone, Copy)]
pub(super) enum MapDtype {
    Bf16,
    F32,
}

/// The TMA map of a contiguous `[n, heads, head_dim]` tensor at `ptr` (16-byte aligned:
/// [`prepare`] guarantees it for the bf16 inputs): boxes of 128 bytes of columns (64 bf16 or 32
/// f32: the 128-byte swizzle's span) x 1 head x `rows` tokens (at most 256), 128-byte swizzle,
/// L2 promotion 128 bytes, zeros out of bounds. The forward uses 128-row bf16 boxes; the
/// backward ([`super::flash_attention_bwd_sm90`]) 128 for k/v, 64 for q/dO, and 64-row f32
/// boxes for its dQ reduce-add target.
pub(super) fn tensor_map(
    ptr: sys::CUdeviceptr,
    dtype: MapDtype,
    n: usize,
    heads: usize,
    head_dim: usize,
    rows: usize,
) -> Result<TensorMap> {
    let (dtype, elem_bytes) = match dtype {
        MapDtype::Bf16 => (
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
        ),
        MapDtype::F32 => (sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4),
    };
    let cols = 128 / elem_bytes;
    let dims: [u64; 3] = [head_dim as u64, heads as u64, n as u64];
    let strides: [u64; 2] = [
        (head_dim * elem_bytes) as u64,
        (heads * head_dim * elem_bytes) as u64,
    ];
    let boxes: [u32; 3] = [cols as u32, 1, rows as u32];
    let elem_strides: [u32; 3] = [1, 1, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: every pointer is to a live local array of the length the rank (3) implies; the
    // map is written by the driver before it is read.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            3,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        bail!("flash attention (sm90): cuTensorMapEncodeTiled failed: {status:?}")
    }
    // SAFETY: initialised by the successful call above.
    Ok(TensorMap(unsafe { map.assume_init() }))
}

/// Causal varlen grouped-query attention on an sm_90 GPU (bf16 only): the output
/// `[N, q_heads, head_dim]` and the log-sum-exp `[q_heads, N]` f32, as the sm_80 forward.
/// Errors on a GPU that is not compute capability 9.x and for f32 inputs.
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let d = check_inputs(q, k, v, cu_seqlens)?;
    if q.dtype() != DType::BF16 {
        bail!(
            "flash attention (sm90): {:?} inputs are not supported (bf16 only)",
            q.dtype()
        )
    }
    let dev = cuda_device(q)?;
    let f = load_sm90a(
        &dev,
        &CUBIN,
        &format!("flash_fwd_sm90_bf16_hd{}", d.head_dim),
    )?;
    let (q, k, v) = (prepare(q)?, prepare(k)?, prepare(v)?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (qv, kv, vv) = (
        view::<half::bf16>(&qs, ql)?,
        view::<half::bf16>(&ks, kl)?,
        view::<half::bf16>(&vs, vl)?,
    );
    let stream = dev.cuda_stream();
    // The kernel reads q, k, v only through the maps: the guards keep the stream ordering of
    // those reads (held until after the launch).
    let (q_ptr, _q_guard) = qv.device_ptr(&stream);
    let (k_ptr, _k_guard) = kv.device_ptr(&stream);
    let (v_ptr, _v_guard) = vv.device_ptr(&stream);
    let tm_q = tensor_map(q_ptr, MapDtype::Bf16, d.n, d.q_heads, d.head_dim, FWD_TILE)?;
    let tm_k = tensor_map(k_ptr, MapDtype::Bf16, d.n, d.kv_heads, d.head_dim, FWD_TILE)?;
    let tm_v = tensor_map(v_ptr, MapDtype::Bf16, d.n, d.kv_heads, d.head_dim, FWD_TILE)?;

    let (tiles, count) = tile_table(&dev, cu_seqlens, FWD_TILE, Order::Queries)?;
    // Every element is written: the tiles cover every token of every head.
    let mut out = unsafe { super::alloc::<half::bf16>(&dev, d.n * d.q_heads * d.head_dim) }?;
    let mut lse = unsafe { super::alloc::<f32>(&dev, d.q_heads * d.n) }?;
    let (n, hq, hkv) = (d.n as i32, d.q_heads as i32, d.kv_heads as i32);
    let scale = scale as f32;
    let smem = smem_bytes(d.head_dim);
    allow_smem(&f, smem)?;
    let mut b = f.builder();
    b.arg(&tm_q).arg(&tm_k).arg(&tm_v);
    b.arg(&mut out).arg(&mut lse).arg(&tiles);
    b.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
    unsafe { b.launch(config(count, d.q_heads, THREADS, smem)) }.map_err(wrap)?;
    drop(b);
    Ok((
        to_tensor(out, &dev, (d.n, d.q_heads, d.head_dim))?,
        to_tensor(lse, &dev, (d.q_heads, d.n))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smem_matches_the_kernel_layout() {
        // Q + 3 stages x (K + V) of [128][D] bf16, 7 mbarriers, 1 KiB alignment slack.
        assert_eq!(smem_bytes(128), 229_376 + 56 + 1024);
        assert_eq!(smem_bytes(64), 114_688 + 56 + 1024);
        // sm_90's 227 KiB per block.
        assert!(smem_bytes(128) <= 227 * 1024);
    }
}
