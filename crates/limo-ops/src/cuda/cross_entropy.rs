//! Softmax cross-entropy of a logits chunk on the GPU (`kernels/cross_entropy.cu`), the
//! signature of [`crate::linear_cross_entropy::softmax_cross_entropy`]. The matmuls of the
//! chunked linear + cross-entropy stay cuBLAS (through candle); only the softmax, loss and
//! `d logits` of a chunk are this kernel.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{bail, DType, Result, Tensor};
use half::bf16;

use super::{alloc, as_i32, cuda_device, grid_rows, kernel_name, load, ptx, to_tensor, view};
use super::{wrap, KernelType, Ptx};
use crate::IGNORE_INDEX;

static PTX: Ptx = ptx!("cross_entropy");
/// Threads per row: a 152k vocabulary is ~600 logits per thread.
const BLOCK: u32 = 512;

/// bf16 or f32 logits on a CUDA device.
pub(crate) fn supported(logits: &Tensor) -> bool {
    super::runs_on_kernel(logits, &[DType::BF16, DType::F32])
}

/// See [`crate::linear_cross_entropy::softmax_cross_entropy`]: per-row loss `[len]` (always f32:
/// the kernel's accumulation precision) and `d logits` (dtype of `logits`), into a new buffer.
pub fn softmax_cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    match logits.dtype() {
        DType::BF16 => run::<bf16>(logits, targets, grad_scale, false),
        DType::F32 => run::<f32>(logits, targets, grad_scale, false),
        other => bail!("cross-entropy kernel: unsupported dtype {other:?}"),
    }
}

/// The same, writing `d logits` over `logits` (returned as the gradient): the chunked loss uses
/// this so a chunk needs one `[len, vocab]` buffer instead of two.
///
/// `logits` must own its storage: a fresh matmul output that no other tensor views. The kernel
/// writes through it, which candle's API cannot check.
pub(crate) fn softmax_cross_entropy_in_place(
    logits: Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    if !logits.is_contiguous() {
        bail!("cross-entropy kernel: in-place logits must be contiguous");
    }
    match logits.dtype() {
        DType::BF16 => run::<bf16>(&logits, targets, grad_scale, true),
        DType::F32 => run::<f32>(&logits, targets, grad_scale, true),
        other => bail!("cross-entropy kernel: unsupported dtype {other:?}"),
    }
}

fn run<T: KernelType>(
    logits: &Tensor,
    targets: &[i64],
    grad_scale: Option<f64>,
    in_place: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dev = cuda_device(logits)?;
    let (len, vocab) = logits.dims2()?;
    if targets.len() != len {
        bail!(
            "cross-entropy kernel: {} targets for {len} rows",
            targets.len()
        );
    }
    // The kernel indexes the row by the target: refuse anything outside the vocabulary here.
    if let Some(bad) = targets
        .iter()
        .find(|&&t| t != IGNORE_INDEX && !(0..vocab as i64).contains(&t))
    {
        bail!("cross-entropy kernel: target {bad} outside the vocabulary of {vocab}");
    }
    let logits = logits.contiguous()?;
    let targets_dev = Tensor::from_slice(targets, len, logits.device())?;
    let (ls, ll) = logits.storage_and_layout();
    let (ts, tl) = targets_dev.storage_and_layout();
    let lv = view::<T>(&ls, ll)?;
    let tv = view::<i64>(&ts, tl)?;
    // SAFETY: the kernel writes one loss per row and, when asked, every element of every row.
    let mut loss = unsafe { alloc::<f32>(&dev, len) }?;
    let want_grad = grad_scale.is_some();
    let mut out = if want_grad && !in_place {
        Some(unsafe { alloc::<T>(&dev, len * vocab) }?)
    } else {
        None
    };
    let (rows_i, vocab_i) = (as_i32(len, "rows")?, as_i32(vocab, "vocab")?);
    let scale = grad_scale.unwrap_or(0.0) as f32;
    let want_i = i32::from(want_grad);
    let f = load(&dev, &PTX, &kernel_name::<T>("softmax_xent"))?;
    let mut b = f.builder();
    b.arg(&lv).arg(&tv).arg(&mut loss);
    match out.as_mut() {
        Some(out) => b.arg(out),
        // In place, or no gradient (the pointer is then never written): d_logits = logits.
        None => b.arg(&lv),
    };
    b.arg(&rows_i).arg(&vocab_i).arg(&scale).arg(&want_i);
    // SAFETY: argument types and order match softmax_xent in kernels/cross_entropy.cu.
    unsafe { b.launch(grid_rows(len, BLOCK)) }.map_err(wrap)?;
    drop(ls);
    let loss = to_tensor(loss, &dev, len)?;
    let d_logits = match (want_grad, out) {
        (false, _) => None,
        (true, Some(out)) => Some(to_tensor(out, &dev, (len, vocab))?),
        (true, None) => Some(logits),
    };
    Ok((loss, d_logits))
}
