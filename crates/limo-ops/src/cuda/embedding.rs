//! The embedding gradient on the GPU (`kernels/embedding.cu`), the signature of
//! [`crate::embedding_backward`].

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{DType, Result, Tensor};

use super::launch::{by_dtype, inputs, Input};
use super::{alloc, as_i32, cuda_device, grid_1d, kernel_name, load, ptx, to_tensor, wrap};
use super::{KernelType, Ptx};
use crate::embedding::by_token;

static PTX: Ptx = ptx!("embedding");
/// Threads per block; each thread writes `V` consecutive columns of one row.
const BLOCK: u32 = 256;
/// Columns per thread of the vectorized kernel (a 16-byte f32 store).
const V: usize = 4;

/// Rows of bf16 or f32 summed into an f32 table (the master dtype on a GPU).
pub(crate) fn supported(dx: &Tensor, dtype: DType) -> bool {
    super::runs_on_kernel(dx, &[DType::BF16, DType::F32]) && dtype == DType::F32
}

/// See [`crate::embedding_backward`] (which has checked the ids and `base`).
pub fn embedding_backward(
    dx: &Tensor,
    ids: &[u32],
    vocab: usize,
    base: Option<&Tensor>,
) -> Result<Tensor> {
    by_dtype!(
        dx.dtype(),
        "embedding kernel",
        backward(dx, ids, vocab, base)
    )
}

fn backward<T: KernelType>(
    dx: &Tensor,
    ids: &[u32],
    vocab: usize,
    base: Option<&Tensor>,
) -> Result<Tensor> {
    let dev = cuda_device(dx)?;
    let (tokens, hidden) = dx.dims2()?;
    if tokens == 0 {
        // Nothing to add (and no zero-length buffers to upload).
        let zeros = Tensor::zeros((vocab, hidden), DType::F32, dx.device())?;
        return match base {
            Some(b) => zeros + b,
            None => Ok(zeros),
        };
    }
    let (row_start, positions) = by_token(ids, vocab);
    let row_start = Tensor::from_vec(row_start, vocab + 1, dx.device())?;
    let positions = Tensor::from_vec(positions, tokens, dx.device())?;
    let dx = dx.contiguous()?;
    let base = base.map(Tensor::contiguous).transpose()?;
    let [dx_in, start_in, pos_in] = inputs([&dx, &row_start, &positions]);
    let (dxv, sv, pv) = (
        dx_in.view::<T>()?,
        start_in.view::<u32>()?,
        pos_in.view::<u32>()?,
    );
    let base_in = base.as_ref().map(Input::of);
    let bv = base_in.as_ref().map(|b| b.view::<f32>()).transpose()?;
    // SAFETY: the kernel writes every element of every vocabulary row.
    let mut out = unsafe { alloc::<f32>(&dev, vocab * hidden) }?;
    let (vocab_i, hidden_i) = (as_i32(vocab, "vocab")?, as_i32(hidden, "hidden")?);
    let null: u64 = 0;
    // The vectorized kernel needs whole groups of V columns and aligned rows: every start offset
    // a multiple of V elements (candle's buffers themselves are 256-byte aligned).
    let aligned = |t: &Tensor| t.layout().start_offset().is_multiple_of(V);
    let vector = hidden.is_multiple_of(V) && aligned(&dx) && base.as_ref().is_none_or(aligned);
    let (name, per_thread) = match vector {
        true => ("embedding_bwd4", V),
        false => ("embedding_bwd", 1),
    };
    let f = load(&dev, &PTX, &kernel_name::<T>(name))?;
    let mut b = f.builder();
    b.arg(&dxv).arg(&sv).arg(&pv);
    match &bv {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(&mut out).arg(&vocab_i).arg(&hidden_i);
    // SAFETY: argument types and order match embedding_bwd in kernels/embedding.cu (a null base
    // when there is none, which the kernel tests); one thread per `per_thread` columns of a row,
    // grid-stride past the grid's limit; `vector` checked the alignment the V = 4 kernel needs.
    unsafe { b.launch(grid_1d(vocab * hidden / per_thread, BLOCK)) }.map_err(wrap)?;
    to_tensor(out, &dev, (vocab, hidden))
}
