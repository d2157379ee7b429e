//! Fused AdamW on the GPU (`kernels/adamw.cu`): the CUDA form of [`crate::adamw_update`] over
//! flat fp32 shards held in candle tensors, updated in place.

use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};
use half::bf16;

use super::launch::{inputs, Input};
use super::{cuda_device, grid_1d, load, ptx, wrap, Ptx};
use crate::{AdamWStep, Clip};

static PTX: Ptx = ptx!("adamw");

/// Updates `param`, `exp_avg` and `exp_avg_sq` (flat f32, same length, contiguous) in place from
/// `grad` (f32), exactly as [`crate::adamw_update`] does in f32 (bit-identical), and writes the
/// updated weights rounded to bf16 into `param_bf16` when given.
///
/// The tensors are written through their storage: they must not share memory with each other
/// (checked) and every view of them sees the update, which is the point for flat shards.
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    s: &AdamWStep,
    param_bf16: Option<&Tensor>,
) -> Result<()> {
    adamw_update_clipped(param, grad, exp_avg, exp_avg_sq, s, None, param_bf16)
}

/// [`adamw_update`] whose gradient scale, with `clip`, the kernel computes from the squared
/// norm on the device (`s.grad_scale` is then ignored; a non-finite norm skips the update).
pub fn adamw_update_clipped(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    s: &AdamWStep,
    clip: Option<Clip>,
    param_bf16: Option<&Tensor>,
) -> Result<()> {
    let n = param.elem_count();
    let norm_sq = match clip {
        Some(c) => {
            let t = c.norm_sq.flatten_all()?.contiguous()?;
            if t.dtype() != DType::F64
                || t.elem_count() != 1
                || !t.device().same_device(param.device())
            {
                bail!("adamw kernel: the squared norm must be one f64 on the parameters' GPU");
            }
            Some((t, c.max_norm))
        }
        None => None,
    };
    for (name, t) in [
        ("grad", grad),
        ("exp_avg", exp_avg),
        ("exp_avg_sq", exp_avg_sq),
    ]
    .into_iter()
    .chain(std::iter::once(("param", param)))
    {
        if t.dtype() != DType::F32 || t.elem_count() != n || !t.is_contiguous() {
            bail!(
                "adamw kernel: {name} must be contiguous f32 of {n} elements, got {:?} {:?}",
                t.dtype(),
                t.dims()
            );
        }
    }
    if let Some(w) = param_bf16 {
        if w.dtype() != DType::BF16 || w.elem_count() != n || !w.is_contiguous() {
            bail!("adamw kernel: the bf16 copy must be contiguous bf16 of {n} elements");
        }
    }
    let dev = cuda_device(param)?;
    let stream = dev.cuda_stream();
    let [p_in, g_in, m_in, v_in] = inputs([param, grad, exp_avg, exp_avg_sq]);
    let (pv, gv) = (p_in.view::<f32>()?, g_in.view::<f32>()?);
    let (mv, vv) = (m_in.view::<f32>()?, v_in.view::<f32>()?);
    let bf = param_bf16.map(Input::of);
    let bv = bf.as_ref().map(Input::view::<bf16>).transpose()?;
    // Overlapping buffers would make the in-place update read what it has just written.
    let mut ranges = vec![
        range(&pv, &stream),
        range(&gv, &stream),
        range(&mv, &stream),
        range(&vv, &stream),
    ];
    if let Some(b) = &bv {
        ranges.push(range(b, &stream));
    }
    ranges.sort();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        bail!("adamw kernel: param, grad, exp_avg, exp_avg_sq and the bf16 copy must not overlap");
    }

    // The reference's constants, computed in f64 and rounded to f32 (adamw.rs, F = f32).
    let f = |x: f64| x as f32;
    let t = s.t as i32;
    let args = [
        f(s.beta1),
        f(s.beta2),
        f(1.0 - s.beta1),
        f(1.0 - s.beta2),
        f(1.0 - s.lr * s.weight_decay),
        f(s.lr / (1.0 - s.beta1.powi(t))),
        f((1.0 - s.beta2.powi(t)).sqrt()),
        f(s.eps),
        f(s.grad_scale),
    ];
    let apply_scale = i32::from(s.grad_scale != 1.0);
    let apply_decay = i32::from(s.weight_decay != 0.0);
    let null: u64 = 0;
    let func = load(&dev, &PTX, "adamw_f32")?;
    let mut b = func.builder();
    b.arg(&pv).arg(&gv).arg(&mv).arg(&vv);
    match &bv {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(&n);
    for a in &args {
        b.arg(a);
    }
    b.arg(&apply_scale).arg(&apply_decay);
    let ns = norm_sq.as_ref().map(|(t, _)| Input::of(t));
    let nv = ns.as_ref().map(Input::view::<f64>).transpose()?;
    match &nv {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    let max_norm = norm_sq.as_ref().map_or(0.0, |(_, m)| *m);
    b.arg(&max_norm);
    // SAFETY: argument types and order match adamw_f32 in kernels/adamw.cu (null pointers for
    // a missing bf16 copy or norm, which the kernel tests); the buffers were checked not to
    // overlap, and the norm is only read.
    unsafe { b.launch(grid_1d(n, 256)) }.map_err(wrap)?;
    Ok(())
}

/// The byte range `[start, end)` of a view on the device.
fn range<T>(
    v: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    stream: &candle_core::cuda_backend::cudarc::driver::CudaStream,
) -> (u64, u64) {
    let (ptr, _sync) = v.device_ptr(stream);
    (ptr, ptr + (v.len() * std::mem::size_of::<T>()) as u64)
}
