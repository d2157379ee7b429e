//! FlashAttention-2 forward and backward on the GPU (`kernels/flash_attention.cu`): causal
//! grouped-query attention over packed documents, the contract of
//! [`attention_forward`](crate::attention_forward) / [`attention_backward`](crate::attention_backward)
//! (the CPU reference they are checked against).
//!
//! Inputs: `q` `[N, q_heads, head_dim]`, `k`/`v` `[N, kv_heads, head_dim]`, bf16 or f32 (f32 is
//! rounded to bf16 for the tensor-core products; softmax and accumulation are fp32 in both),
//! head_dim 64 or 128, `q_heads` a multiple of `kv_heads`, `cu_seqlens = [0, .., N]` strictly
//! increasing. Outputs in the input dtype; the log-sum-exp is `[q_heads, N]` f32.
//!
//! The wrapper cuts every document into tiles ([`FWD_TILE`] query rows for the forward,
//! [`TILE`] rows for the backward) starting at the document's first token and uploads one
//! `(tile start, document start, document end)` triple per tile: the kernels then never look
//! across a document and skip the kv tiles outside the causal range.
//! The tiles are ordered longest-work first (for the forward and dQ a tile's work grows with
//! its distance from the document start, for dK/dV with its distance to the document end), so
//! the long causal rows start in the first wave and the short ones fill the end of the grid.
//!
//! Forward path: on compute capability 9.x, bf16 runs the Hopper kernel
//! (`kernels/flash_attention_sm90.cu`, wgmma + TMA, [`super::flash_attention_sm90`]) unless
//! `LIMO_FLASH_PATH=sm80`; [`forward_path`] says which.
//!
//! Backward dQ: fp32 atomics from the dK/dV kernel (fast, the last bits vary run to run) or a
//! separate deterministic kernel (bit-reproducible, ~+40% backward FLOPs); the caller picks with
//! `deterministic`, and [`deterministic_requested`] reads the documented default
//! (`LIMO_FLASH_DETERMINISTIC`, off: atomic).
//!
//! Backward path ([`backward_path`]): the atomic variant in bf16 on compute capability 9.x runs
//! the Hopper dK/dV/dQ kernel (`kernels/flash_attention_bwd_sm90.cu`, wgmma + TMA,
//! [`super::flash_attention_bwd_sm90`]) unless `LIMO_FLASH_PATH=sm80`; the deterministic
//! backward (`LIMO_FLASH_DETERMINISTIC=1`), f32 and other GPUs keep the sm80 kernels. The
//! preprocess (delta) and the dQ conversion are the sm80 file's on both paths, and either
//! backward reads the out and lse of either forward (same contract).

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, DType, Result, Tensor};

use super::{as_i32, cuda_device, load, ptx, to_tensor, view, wrap, zeros, KernelType, Ptx};
use crate::AttentionGrads;

static PTX: Ptx = ptx!("flash_attention");

/// Query rows of a forward tile (`kFwdTile` in the kernel file; `kBlockM` of the sm90 one).
pub(super) const FWD_TILE: usize = 128;
/// Rows of every kv tile and of the backward's query tiles (`kTile` in the kernel file).
const TILE: usize = 64;
/// Threads of the deterministic dQ kernel (4 warps) and of the forward and dK/dV (8 warps).
const THREADS_4W: u32 = 128;
const THREADS_8W: u32 = 256;

/// Dynamic shared memory of `flash_fwd*` (`FwdSmem` in the kernel file): three cp.async stages
/// of K and V `[64][D+8]` bf16, the Q tile `[128][D+8]` staged in the third (104,448 bytes at
/// D=128: above the default 48 KiB, so the forward calls [`allow_smem`]).
fn fwd_smem_bytes(head_dim: usize) -> usize {
    3 * 2 * TILE * (head_dim + 8) * 2
}

/// Dynamic shared memory of `flash_bwd_dkdv*` (`BwdSmem` in the kernel file): K, V tiles and two
/// stages of Q, dO tiles `[64][D+8]` bf16, P and dS tiles `[64][72]` bf16, two stages of lse and
/// D `[64]` f32.
fn dkdv_smem_bytes(head_dim: usize) -> usize {
    6 * TILE * (head_dim + 8) * 2 + 2 * TILE * (TILE + 8) * 2 + 4 * TILE * 4
}

/// Dynamic shared memory of `flash_bwd_dq*` (`DqSmem`): Q, dO tiles and two stages of K, V tiles
/// `[64][D+8]` bf16.
fn dq_smem_bytes(head_dim: usize) -> usize {
    6 * TILE * (head_dim + 8) * 2
}

/// The documented default of the backward's `deterministic` argument: `false` (fp32 atomic dQ
/// from the dK/dV kernel, the fast path; the order of the adds, hence dQ's last bits, varies
/// run to run) unless `LIMO_FLASH_DETERMINISTIC` is `1`/`true`/`yes`/`on` (a separate dQ kernel
/// without atomics, bit-reproducible, ~+40% backward FLOPs and a second pass over K and V).
pub fn deterministic_requested() -> bool {
    static ASKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ASKED.get_or_init(|| {
        std::env::var("LIMO_FLASH_DETERMINISTIC").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    })
}

/// Whether the kernels take these inputs: the dispatch test of the public attention ops.
/// Only bf16 dispatches there (f32 on a GPU keeps the candle path and its f32 products); the
/// two functions below also take f32 directly.
pub(crate) fn dispatches(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let on_gpu = [q, k, v]
        .iter()
        .all(|t| t.device().is_cuda() && t.dtype() == DType::BF16);
    let head_dim = match q.dims() {
        [_, _, d @ (64 | 128)] => *d,
        _ => return false,
    };
    on_gpu && smem_fits(q, head_dim)
}

/// Whether the GPU grants every kernel's shared memory at `head_dim` (sm_86/sm_89 allow 99 KiB
/// per block, less than the D=128 forward's 102 KiB): those fall back to the candle path.
fn smem_fits(q: &Tensor, head_dim: usize) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    let Ok(dev) = q.device().as_cuda_device() else {
        return false;
    };
    let granted = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_or(0, |b| b.max(0) as usize);
    let needed = fwd_smem_bytes(head_dim)
        .max(dkdv_smem_bytes(head_dim))
        .max(dq_smem_bytes(head_dim));
    needed <= granted
}

/// Sizes shared by the forward and the backward, validated.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) q_heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
}

fn dims3(t: &Tensor, name: &str) -> Result<(usize, usize, usize)> {
    match t.dims() {
        &[a, b, c] => Ok((a, b, c)),
        other => bail!("flash attention: {name} must be [tokens, heads, head_dim], got {other:?}"),
    }
}

pub(super) fn check_inputs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
) -> Result<Dims> {
    let (n, q_heads, head_dim) = dims3(q, "q")?;
    let (nk, kv_heads, dk) = dims3(k, "k")?;
    if v.dims() != k.dims() {
        bail!(
            "flash attention: v {:?} must have the shape of k {:?}",
            v.dims(),
            k.dims()
        )
    }
    if nk != n || dk != head_dim {
        bail!(
            "flash attention: k {:?} does not match q {:?} (tokens and head_dim must agree)",
            k.dims(),
            q.dims()
        )
    }
    if head_dim != 64 && head_dim != 128 {
        bail!("flash attention: head_dim {head_dim} is not supported (64 or 128)")
    }
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        bail!("flash attention: q_heads {q_heads} is not a multiple of kv_heads {kv_heads}")
    }
    if q_heads > 65535 || kv_heads > 65535 {
        bail!("flash attention: {q_heads} heads exceed the grid's 65535")
    }
    let dtype = q.dtype();
    if !matches!(dtype, DType::BF16 | DType::F32) {
        bail!("flash attention: dtype {dtype:?} is not supported (bf16 or f32)")
    }
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != dtype {
            bail!(
                "flash attention: {name} is {:?} but q is {dtype:?}",
                t.dtype()
            )
        }
    }
    check_device(q, q, "q")?;
    check_device(q, k, "k")?;
    check_device(q, v, "v")?;
    let ordered = cu_seqlens.windows(2).all(|w| w[0] < w[1]);
    if cu_seqlens.first() != Some(&0) || cu_seqlens.last() != Some(&n) || !ordered {
        bail!("flash attention: cu_seqlens {cu_seqlens:?} do not partition {n} tokens")
    }
    // Token indices and tile starts are int32 in the kernels (element offsets are 64-bit).
    as_i32(n, "tokens")?;
    Ok(Dims {
        n,
        q_heads,
        kv_heads,
        head_dim,
    })
}

fn check_device(q: &Tensor, t: &Tensor, name: &str) -> Result<()> {
    if !t.device().is_cuda() {
        bail!(
            "flash attention: {name} is on {:?}, the kernels need a CUDA device",
            t.device().location()
        )
    }
    if !t.device().same_device(q.device()) {
        bail!(
            "flash attention: {name} is on {:?} but q is on {:?}",
            t.device().location(),
            q.device().location()
        )
    }
    Ok(())
}

/// `t` contiguous with its first element 16-byte aligned (the kernels load 8 elements at a time;
/// rows are multiples of 64 elements, so only the start offset matters).
pub(super) fn prepare(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() % 8 == 0 {
        Ok(t)
    } else {
        t.force_contiguous()
    }
}

/// Which end of a document a tile's work grows towards (see the module docs).
#[derive(Clone, Copy)]
pub(super) enum Order {
    /// Forward and dQ: work ~ keys before the tile, so tiles far from the document start first.
    Queries,
    /// dK/dV: work ~ queries after the tile, so tiles far from the document end first.
    Keys,
}

/// The `(tile start, document start, document end)` triples of all documents, uploaded.
pub(super) fn tile_table(
    dev: &CudaDevice,
    cu_seqlens: &[usize],
    tile: usize,
    order: Order,
) -> Result<(CudaSlice<i32>, u32)> {
    let mut tiles: Vec<[usize; 3]> = cu_seqlens
        .windows(2)
        .flat_map(|w| (w[0]..w[1]).step_by(tile).map(move |s| [s, w[0], w[1]]))
        .collect();
    // A stable sort: equal-work tiles keep document order, so the launch is the same every run.
    match order {
        Order::Queries => tiles.sort_by_key(|t| std::cmp::Reverse(t[0] - t[1])),
        Order::Keys => tiles.sort_by_key(|t| std::cmp::Reverse(t[2] - t[0])),
    }
    let count = u32::try_from(tiles.len())
        .ok()
        .filter(|&c| c < i32::MAX as u32)
        .ok_or_else(|| {
            wrap(format!(
                "flash attention: {} tiles exceed the grid",
                tiles.len()
            ))
        })?;
    let flat: Vec<i32> = tiles
        .iter()
        .flatten()
        .map(|&x| as_i32(x, "token index"))
        .collect::<Result<_>>()?;
    Ok((dev.clone_htod(&flat)?, count))
}

pub(super) fn config(tiles: u32, heads: usize, threads: u32, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (tiles, heads as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Allows a kernel more than the default 48 KiB of dynamic shared memory.
pub(super) fn allow_smem(f: &super::CudaFunc, bytes: usize) -> Result<()> {
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(wrap)
}

/// The two forward kernels: `Sm80` (`kernels/flash_attention.cu`, mma.sync, any GPU from 8.0)
/// and `Sm90` (`kernels/flash_attention_sm90.cu`, wgmma + TMA, compute capability 9.x only,
/// bf16 only). Both give the same contract (out, lse), so the backward takes either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashPath {
    Sm80,
    Sm90,
}

impl std::fmt::Display for FlashPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlashPath::Sm80 => "sm80",
            FlashPath::Sm90 => "sm90",
        })
    }
}

/// The forward path forced by `LIMO_FLASH_PATH` (`sm80` or `sm90`; unset or empty: none),
/// read once. An unknown value is an error at every forward rather than silently ignored.
pub fn flash_path_requested() -> Result<Option<FlashPath>> {
    static ASKED: std::sync::OnceLock<std::result::Result<Option<FlashPath>, String>> =
        std::sync::OnceLock::new();
    let asked = ASKED.get_or_init(|| {
        let Ok(v) = std::env::var("LIMO_FLASH_PATH") else {
            return Ok(None);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "sm80" => Ok(Some(FlashPath::Sm80)),
            "sm90" => Ok(Some(FlashPath::Sm90)),
            other => Err(format!(
                "LIMO_FLASH_PATH={other:?} is not a flash-attention path (sm80 or sm90)"
            )),
        }
    });
    asked.clone().map_err(wrap)
}

/// The forward path for bf16 inputs on this tensor's GPU: `LIMO_FLASH_PATH` if set (`sm90` on
/// a GPU that is not compute capability 9.x is an error), else `Sm90` on 9.x once the sm90
/// kernels agreed with the sm80 ones on a small problem of this head_dim
/// ([`super::flash_path_check`]; `Sm80` with a warning if not) and `Sm80` elsewhere. f32
/// inputs always take the sm80 kernels.
pub fn forward_path(q: &Tensor) -> Result<FlashPath> {
    let dev = cuda_device(q)?;
    let hopper = super::runs_sm90a(&dev)?;
    match flash_path_requested()? {
        Some(FlashPath::Sm90) if !hopper => bail!(
            "LIMO_FLASH_PATH=sm90: the sm90 flash-attention forward needs compute capability 9.x \
             (H100/H200); this GPU is not one (unset it or use sm80)"
        ),
        Some(path) => Ok(path),
        None => Ok(
            if hopper && super::flash_path_check::sm90_agrees(&dev, q.dim(2)?) {
                FlashPath::Sm90
            } else {
                FlashPath::Sm80
            },
        ),
    }
}

/// Causal varlen grouped-query attention: the output `[N, q_heads, head_dim]` (input dtype)
/// and the log-sum-exp `[q_heads, N]` f32 (natural log of the row's sum of `exp(scale q.k)`).
/// bf16 on compute capability 9.x runs the sm90 kernel unless `LIMO_FLASH_PATH=sm80` (see
/// [`forward_path`]); everything else the sm80 kernels.
pub fn flash_attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let path = if q.dtype() == DType::BF16 && q.device().is_cuda() {
        forward_path(q)?
    } else {
        FlashPath::Sm80
    };
    flash_attention_forward_on(q, k, v, cu_seqlens, scale, path)
}

/// [`flash_attention_forward`] on an explicit path (`limo doctor` and `limo bench kernels` run
/// both): `Sm90` errors for f32 inputs and on a GPU that is not compute capability 9.x.
pub fn flash_attention_forward_on(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
    path: FlashPath,
) -> candle_core::Result<(Tensor, Tensor)> {
    if path == FlashPath::Sm90 {
        return super::flash_attention_sm90::forward(q, k, v, cu_seqlens, scale);
    }
    let dims = check_inputs(q, k, v, cu_seqlens)?;
    match q.dtype() {
        DType::BF16 => forward::<half::bf16>(q, k, v, cu_seqlens, scale, dims),
        _ => forward::<f32>(q, k, v, cu_seqlens, scale, dims),
    }
}

fn forward<T: KernelType>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
    d: Dims,
) -> Result<(Tensor, Tensor)> {
    let dev = cuda_device(q)?;
    let (q, k, v) = (prepare(q)?, prepare(k)?, prepare(v)?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (qv, kv, vv) = (
        view::<T>(&qs, ql)?,
        view::<T>(&ks, kl)?,
        view::<T>(&vs, vl)?,
    );
    let (tiles, count) = tile_table(&dev, cu_seqlens, FWD_TILE, Order::Queries)?;
    // Every element is written: the tiles cover every token of every head.
    let mut out = unsafe { super::alloc::<T>(&dev, d.n * d.q_heads * d.head_dim) }?;
    let mut lse = unsafe { super::alloc::<f32>(&dev, d.q_heads * d.n) }?;
    let (n, hq, hkv) = (d.n as i32, d.q_heads as i32, d.kv_heads as i32);
    let scale = scale as f32;
    let f = load(
        &dev,
        &PTX,
        &format!("flash_fwd_{}_hd{}", T::SUFFIX, d.head_dim),
    )?;
    let smem = fwd_smem_bytes(d.head_dim);
    allow_smem(&f, smem)?;
    let mut b = f.builder();
    b.arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&mut out)
        .arg(&mut lse)
        .arg(&tiles);
    b.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
    unsafe { b.launch(config(count, d.q_heads, THREADS_8W, smem)) }.map_err(wrap)?;
    drop(b);
    Ok((
        to_tensor(out, &dev, (d.n, d.q_heads, d.head_dim))?,
        to_tensor(lse, &dev, (d.q_heads, d.n))?,
    ))
}

/// The backward path for these inputs: `Sm90` (the Hopper kernel) for bf16 on a CUDA device
/// when the atomic variant is asked for (`deterministic = false`) and [`forward_path`] says
/// `Sm90` (compute capability 9.x, `LIMO_FLASH_PATH` not `sm80`); `Sm80` otherwise (the
/// deterministic backward, f32, other GPUs).
pub fn backward_path(q: &Tensor, deterministic: bool) -> Result<FlashPath> {
    if deterministic || q.dtype() != DType::BF16 || !q.device().is_cuda() {
        return Ok(FlashPath::Sm80);
    }
    forward_path(q)
}

/// Backward of [`flash_attention_forward`]: `D = rowsum(dO * O)`, then dK/dV per kv tile
/// (summed over the query heads of the group in a fixed order), and dQ either by fp32 atomics
/// from the same kernel (`deterministic = false`, faster, last bits vary run to run) or by a
/// separate kernel per query tile with no atomics (`deterministic = true`, bit-reproducible).
/// [`deterministic_requested`] gives the documented default (atomic unless
/// `LIMO_FLASH_DETERMINISTIC=1`). The atomic bf16 backward runs the Hopper kernel on compute
/// capability 9.x unless `LIMO_FLASH_PATH=sm80` (see [`backward_path`]).
///
/// `path`: `None` takes [`backward_path`]'s choice; `Some` forces one (`limo doctor` and `limo
/// bench kernels` run both): `Sm90` is the atomic bf16 backward only (an error with
/// `deterministic`, for f32 and on a GPU that is not compute capability 9.x).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    d_out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &[usize],
    scale: f64,
    deterministic: bool,
    path: Option<FlashPath>,
) -> candle_core::Result<AttentionGrads> {
    let path = match path {
        Some(path) => path,
        None => backward_path(q, deterministic)?,
    };
    let dims = check_inputs(q, k, v, cu_seqlens)?;
    if path == FlashPath::Sm90 && (deterministic || q.dtype() != DType::BF16) {
        bail!(
            "flash attention backward (sm90): only the atomic (non-deterministic) bf16 backward \
             has an sm90 kernel ({:?}, deterministic = {deterministic})",
            q.dtype()
        )
    }
    for (name, t) in [("d_out", d_out), ("out", out)] {
        if t.dims() != q.dims() || t.dtype() != q.dtype() {
            bail!(
                "flash attention backward: {name} is {:?} {:?}, expected q's {:?} {:?}",
                t.dims(),
                t.dtype(),
                q.dims(),
                q.dtype()
            )
        }
        check_device(q, t, name)?;
    }
    if lse.dims() != [dims.q_heads, dims.n] || lse.dtype() != DType::F32 {
        bail!(
            "flash attention backward: lse is {:?} {:?}, expected [{}, {}] F32",
            lse.dims(),
            lse.dtype(),
            dims.q_heads,
            dims.n
        )
    }
    check_device(q, lse, "lse")?;
    let args = BwdArgs {
        d_out,
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens,
        scale,
        deterministic,
        path,
        d: dims,
    };
    match q.dtype() {
        DType::BF16 => backward::<half::bf16>(&args),
        _ => backward::<f32>(&args),
    }
}

struct BwdArgs<'a> {
    d_out: &'a Tensor,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    lse: &'a Tensor,
    cu_seqlens: &'a [usize],
    scale: f64,
    deterministic: bool,
    path: FlashPath,
    d: Dims,
}

fn backward<T: KernelType>(a: &BwdArgs) -> Result<AttentionGrads> {
    let d = a.d;
    let dev = cuda_device(a.q)?;
    let (q, k, v) = (prepare(a.q)?, prepare(a.k)?, prepare(a.v)?);
    let (d_out, out, lse) = (prepare(a.d_out)?, prepare(a.out)?, a.lse.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (dos, dol) = d_out.storage_and_layout();
    let (os, ol) = out.storage_and_layout();
    let (ls, ll) = lse.storage_and_layout();
    let (qv, kv, vv) = (
        view::<T>(&qs, ql)?,
        view::<T>(&ks, kl)?,
        view::<T>(&vs, vl)?,
    );
    let (dov, ov) = (view::<T>(&dos, dol)?, view::<T>(&os, ol)?);
    let lsev = view::<f32>(&ls, ll)?;
    let (n, hq, hkv, hd) = (
        d.n as i32,
        d.q_heads as i32,
        d.kv_heads as i32,
        d.head_dim as i32,
    );
    let scale = a.scale as f32;
    let q_elems = d.n * d.q_heads * d.head_dim;
    let kv_elems = d.n * d.kv_heads * d.head_dim;

    // D_i = rowsum(dO * O): one warp per (token, head), 8 warps per block, grid-stride.
    let mut delta = unsafe { super::alloc::<f32>(&dev, d.q_heads * d.n) }?;
    {
        let f = load(&dev, &PTX, &format!("flash_bwd_preprocess_{}", T::SUFFIX))?;
        let rows = d.n * d.q_heads;
        let blocks = rows.div_ceil(8).clamp(1, 1 << 16) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS_8W, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&dov)
            .arg(&ov)
            .arg(&mut delta)
            .arg(&n)
            .arg(&hq)
            .arg(&hd);
        unsafe { b.launch(cfg) }.map_err(wrap)?;
    }

    // Every element of dK and dV is written: the kv tiles cover every token of every kv head.
    let mut dk = unsafe { super::alloc::<T>(&dev, kv_elems) }?;
    let mut dv = unsafe { super::alloc::<T>(&dev, kv_elems) }?;
    // The sm80 dK/dV kernels' table (64-key tiles; the sm90 kernel builds its own).
    let kv_table = || tile_table(&dev, a.cu_seqlens, TILE, Order::Keys);
    let dkdv_smem = dkdv_smem_bytes(d.head_dim);
    let kv_cfg = |count| config(count, d.kv_heads, THREADS_8W, dkdv_smem);
    let suffix = format!("{}_hd{}", T::SUFFIX, d.head_dim);
    // The six inputs every sm80 backward kernel takes first.
    macro_rules! inputs {
        ($b:ident) => {
            $b.arg(&qv)
                .arg(&kv)
                .arg(&vv)
                .arg(&dov)
                .arg(&lsev)
                .arg(&delta)
        };
    }

    let dq = if a.deterministic {
        let (kv_tiles, kv_count) = kv_table()?;
        let f = load(&dev, &PTX, &format!("flash_bwd_dkdv_{suffix}"))?;
        allow_smem(&f, dkdv_smem)?;
        let mut b = f.builder();
        inputs!(b);
        b.arg(&mut dk).arg(&mut dv).arg(&kv_tiles);
        b.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
        unsafe { b.launch(kv_cfg(kv_count)) }.map_err(wrap)?;
        drop(b);

        // Every element written: the query tiles cover every token of every query head.
        let mut dq = unsafe { super::alloc::<T>(&dev, q_elems) }?;
        let (q_tiles, q_count) = tile_table(&dev, a.cu_seqlens, TILE, Order::Queries)?;
        let smem = dq_smem_bytes(d.head_dim);
        let f = load(&dev, &PTX, &format!("flash_bwd_dq_{suffix}"))?;
        allow_smem(&f, smem)?;
        let mut b = f.builder();
        inputs!(b);
        b.arg(&mut dq).arg(&q_tiles);
        b.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
        unsafe { b.launch(config(q_count, d.q_heads, THREADS_4W, smem)) }.map_err(wrap)?;
        drop(b);
        to_tensor(dq, &dev, (d.n, d.q_heads, d.head_dim))?
    } else {
        let mut dq_accum = zeros::<f32>(&dev, q_elems)?;
        if a.path == FlashPath::Sm90 {
            // T is bf16 here (flash_attention_backward refuses anything else on this path).
            let buffers = super::flash_attention_bwd_sm90::Buffers {
                q: &qv,
                k: &kv,
                v: &vv,
                d_out: &dov,
                lse: &lsev,
                delta: &delta,
                dk: &mut dk,
                dv: &mut dv,
                dq_accum: &mut dq_accum,
            };
            super::flash_attention_bwd_sm90::launch(&dev, buffers, a.cu_seqlens, d, scale)?;
        } else {
            let (kv_tiles, kv_count) = kv_table()?;
            let f = load(&dev, &PTX, &format!("flash_bwd_dkdv_atomic_{suffix}"))?;
            allow_smem(&f, dkdv_smem)?;
            let mut b = f.builder();
            inputs!(b);
            b.arg(&mut dk)
                .arg(&mut dv)
                .arg(&mut dq_accum)
                .arg(&kv_tiles);
            b.arg(&n).arg(&hq).arg(&hkv).arg(&scale);
            unsafe { b.launch(kv_cfg(kv_count)) }.map_err(wrap)?;
            drop(b);
        }
        if q.dtype() == DType::F32 {
            to_tensor(dq_accum, &dev, (d.n, d.q_heads, d.head_dim))?
        } else {
            let mut dq = unsafe { super::alloc::<half::bf16>(&dev, q_elems) }?;
            let f = load(&dev, &PTX, "flash_convert_dq_bf16")?;
            let len = q_elems as i64;
            let blocks = q_elems.div_ceil(256).clamp(1, 1 << 16) as u32;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (THREADS_8W, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = f.builder();
            b.arg(&dq_accum).arg(&mut dq).arg(&len);
            unsafe { b.launch(cfg) }.map_err(wrap)?;
            drop(b);
            to_tensor(dq, &dev, (d.n, d.q_heads, d.head_dim))?
        }
    };
    Ok(AttentionGrads {
        dq,
        dk: to_tensor(dk, &dev, (d.n, d.kv_heads, d.head_dim))?,
        dv: to_tensor(dv, &dev, (d.n, d.kv_heads, d.head_dim))?,
    })
}
