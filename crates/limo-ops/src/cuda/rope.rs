//! RoPE on the GPU (`kernels/rope.cu`), the signatures of [`crate::rope_forward`] and
//! [`crate::rope_backward`], and generation's fused bias + RoPE + KV-cache append
//! ([`crate::decode_attention::qkv_rope_append`]).

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};
use half::bf16;

use super::launch::{by_dtype, inputs};
use super::{alloc, as_i32, cuda_device, grid_1d, load, ptx, to_tensor, wrap, KernelType};
use crate::decode_attention::{CacheIndex, NewRows};
use crate::RopeTables;

static PTX: Ptx = ptx!("rope");
use super::Ptx;

/// The kernels exist for tables of the activations' dtype (bf16 or f32), as the reference.
pub(crate) fn supported(x: &Tensor, tables: &RopeTables) -> bool {
    let tab = tables.cos.dtype();
    super::runs_on_kernel(x, &[DType::BF16, DType::F32])
        && tables.sin.dtype() == tab
        && tab == x.dtype()
}

/// See [`crate::rope_forward`].
pub fn rope_forward(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    dispatch(x, tables, "rope_fwd")
}

/// See [`crate::rope_backward`].
pub fn rope_backward(dy: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    dispatch(dy, tables, "rope_bwd")
}

fn dispatch(x: &Tensor, tables: &RopeTables, base: &str) -> Result<Tensor> {
    match (x.dtype(), tables.cos.dtype()) {
        (DType::BF16, DType::BF16) => run::<bf16, bf16>(x, tables, base),
        (DType::F32, DType::F32) => run::<f32, f32>(x, tables, base),
        (a, b) => bail!("rope kernel: no instantiation for x {a:?} with tables {b:?}"),
    }
}

fn run<T: KernelType, C: KernelType>(
    x: &Tensor,
    tables: &RopeTables,
    base: &str,
) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let (tokens, heads, head_dim) = x.dims3()?;
    if tables.cos.dims() != [tokens, head_dim] || tables.sin.dims() != [tokens, head_dim] {
        bail!(
            "rope kernel: tables {:?} for x {:?}",
            tables.cos.dims(),
            x.dims()
        );
    }
    if head_dim % 2 != 0 {
        bail!("rope kernel: odd head_dim {head_dim}");
    }
    let (x, cos, sin) = (
        x.contiguous()?,
        tables.cos.contiguous()?,
        tables.sin.contiguous()?,
    );
    let [x_in, cos_in, sin_in] = inputs([&x, &cos, &sin]);
    let (xv, cv, sv) = (x_in.view::<T>()?, cos_in.view::<C>()?, sin_in.view::<C>()?);
    let n = x.elem_count();
    // SAFETY: the kernel writes every element (grid-stride loop over all of them).
    let mut y = unsafe { alloc::<T>(&dev, n) }?;
    let name = format!("{base}_{}_{}", T::SUFFIX, C::SUFFIX);
    let f = load(&dev, &PTX, &name)?;
    let (t_i, h_i, d_i) = (
        as_i32(tokens, "tokens")?,
        as_i32(heads, "heads")?,
        as_i32(head_dim, "head_dim")?,
    );
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&cv)
        .arg(&sv)
        .arg(&mut y)
        .arg(&t_i)
        .arg(&h_i)
        .arg(&d_i);
    // SAFETY: argument types and order match rope_{fwd,bwd} in kernels/rope.cu.
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    to_tensor(y, &dev, x.dims())
}

/// Whether the fused append takes these inputs: the dispatch test of
/// [`crate::decode_attention::qkv_rope_append`] (which checked shapes and dtypes agree).
pub(crate) fn append_dispatches(q_lin: &Tensor, tables: &RopeTables) -> bool {
    supported(q_lin, tables)
        && tables.cos.device().same_device(q_lin.device())
        && tables.sin.device().same_device(q_lin.device())
}

/// See [`crate::decode_attention::qkv_rope_append`], which checks the shapes and every
/// (slot, position) first: the caches are written through their storage, in place.
pub(crate) fn qkv_rope_append(
    rows: &NewRows,
    cache: &(Tensor, Tensor),
    at: &CacheIndex,
) -> Result<Tensor> {
    by_dtype!(
        cache.0.dtype(),
        "KV cache append kernel",
        append(rows, cache, at)
    )
}

fn append<T: KernelType>(
    NewRows { lin, bias, rope }: &NewRows,
    (k_cache, v_cache): &(Tensor, Tensor),
    at: &CacheIndex,
) -> Result<Tensor> {
    let dev = cuda_device(k_cache)?;
    let (_, kv_heads, cap, head_dim) = k_cache.dims4()?;
    let n = at.len();
    let q_heads = lin[0].dim(1)? / head_dim;
    let index = at.table();
    let on_gpu = |t: &Tensor| t.device().same_device(k_cache.device());
    if !lin.iter().chain(bias.iter()).all(|t| on_gpu(t)) || !on_gpu(index) {
        bail!("KV cache append kernel: projections, biases and index must be on the cache's GPU");
    }
    let c = |t: &Tensor| t.contiguous();
    let (q, k, v) = (c(lin[0])?, c(lin[1])?, c(lin[2])?);
    let (bq, bk, bv) = (c(bias[0])?, c(bias[1])?, c(bias[2])?);
    let (cos, sin) = (c(&rope.cos)?, c(&rope.sin)?);
    let [q_in, k_in, v_in, bq_in, bk_in, bv_in, cos_in, sin_in, at_in, kc_in, vc_in] = inputs([
        &q, &k, &v, &bq, &bk, &bv, &cos, &sin, index, k_cache, v_cache,
    ]);
    let (qv, kv, vv) = (q_in.view::<T>()?, k_in.view::<T>()?, v_in.view::<T>()?);
    let (bqv, bkv, bvv) = (bq_in.view::<T>()?, bk_in.view::<T>()?, bv_in.view::<T>()?);
    let (cv, sv, iv) = (
        cos_in.view::<T>()?,
        sin_in.view::<T>()?,
        at_in.view::<u32>()?,
    );
    let (kcv, vcv) = (kc_in.view::<T>()?, vc_in.view::<T>()?);
    // SAFETY: the kernel writes every element of q (one thread per element of every row).
    let mut q_out = unsafe { alloc::<T>(&dev, n * q_heads * head_dim) }?;
    let f = load(&dev, &PTX, &format!("qkv_rope_append_{}", T::SUFFIX))?;
    let ints = [
        as_i32(n, "rows")?,
        as_i32(q_heads, "q_heads")?,
        as_i32(kv_heads, "kv_heads")?,
        as_i32(head_dim, "head_dim")?,
        as_i32(cap, "cache capacity")?,
    ];
    let mut b = f.builder();
    b.arg(&qv).arg(&kv).arg(&vv).arg(&bqv).arg(&bkv).arg(&bvv);
    b.arg(&cv)
        .arg(&sv)
        .arg(&iv)
        .arg(&mut q_out)
        .arg(&kcv)
        .arg(&vcv);
    for i in &ints {
        b.arg(i);
    }
    let threads = n * (q_heads + 2 * kv_heads) * head_dim;
    // SAFETY: argument types and order match qkv_rope_append_* in kernels/rope.cu; the caller
    // checked the shapes, and every (slot, position) against the caches' shape and that none
    // repeats, so no two threads write one cache element. The caches are written through views
    // of their storage, as kv_cache_write does.
    unsafe { b.launch(grid_1d(threads, 256)) }.map_err(wrap)?;
    drop(b);
    to_tensor(q_out, &dev, (n, q_heads, head_dim))
}
