//! Before the Hopper (sm90) flash-attention kernels become a GPU's default path, they run once
//! beside the sm80 kernels on a packed problem of the same head_dim (two short documents and one of
//! 4096 tokens): the forward (out, lse) and the atomic backward (dq, dk, dv). If any output
//! disagrees (relative L2 above [`TOLERANCE`], or not finite) or a kernel returns an error, a
//! warning says so and that GPU keeps the sm80 kernels. The sm90 kernels are the newest code in
//! limo; a layout bug would otherwise train on wrong gradients for days without a word. `limo
//! doctor` stays the full check (against the CPU, every shape); `LIMO_FLASH_PATH` forces a path and
//! skips this one.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, Result, Tensor};

use super::flash_attention::{flash_attention_backward, flash_attention_forward_on, FlashPath};

/// Both kernels are bf16 with fp32 accumulation, each ~2e-3 from a float64 reference (the
/// emulation's numbers), so they agree to well under 1e-2; a layout or mask bug is off by O(1).
pub const TOLERANCE: f64 = 2e-2;

/// Whether the sm90 kernels agree with the sm80 ones for `head_dim` on `dev`: checked once per
/// (GPU, head_dim), then remembered.
pub fn sm90_agrees(dev: &CudaDevice, head_dim: usize) -> bool {
    static VERDICTS: Mutex<Option<HashMap<(usize, usize), bool>>> = Mutex::new(None);
    let key = (dev.cuda_stream().context().ordinal(), head_dim);
    let mut verdicts = VERDICTS.lock().unwrap_or_else(|e| e.into_inner());
    *verdicts
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| {
            let verdict = compare(dev, head_dim);
            match &verdict {
                Ok(None) => tracing::debug!(head_dim, "sm90 flash attention agrees with sm80"),
                Ok(Some(what)) => tracing::warn!(
                    "the sm90 flash-attention kernels disagree with the sm80 ones ({what}, \
                     head_dim {head_dim}): this GPU uses the sm80 kernels (run `limo doctor`)"
                ),
                Err(e) => tracing::warn!(
                    "the sm90 flash-attention kernels failed their first run ({e}, head_dim \
                     {head_dim}): this GPU uses the sm80 kernels (run `limo doctor`)"
                ),
            }
            matches!(verdict, Ok(None))
        })
}

/// `None` when every output agrees, else the first that does not and by how much.
fn compare(dev: &CudaDevice, head_dim: usize) -> Result<Option<String>> {
    // Two short documents (130 and 170 tokens: partial tiles, a document boundary inside one)
    // and one of 4096 (32 kv tiles per query tile at its end: the kv ring reused for many
    // rounds of both barrier parities, as at 16k), GQA 2:1 over two kv heads; a few MB.
    let (n, q_heads, kv_heads, cu) = (4396, 4, 2, [0, 130, 300, 4396]);
    let device = Device::Cuda(dev.clone());
    let randn = |heads: usize| {
        Tensor::randn(0f32, 1.0, (n, heads, head_dim), &device)?.to_dtype(DType::BF16)
    };
    let (q, k, v, d_out) = (
        randn(q_heads)?,
        randn(kv_heads)?,
        randn(kv_heads)?,
        randn(q_heads)?,
    );
    let scale = 1.0 / (head_dim as f64).sqrt();
    let run = |path: FlashPath| -> Result<Vec<(&'static str, Tensor)>> {
        let (o, l) = flash_attention_forward_on(&q, &k, &v, &cu, scale, path)?;
        let g =
            flash_attention_backward(&d_out, &q, &k, &v, &o, &l, &cu, scale, false, Some(path))?;
        Ok(vec![
            ("out", o),
            ("lse", l),
            ("dq", g.dq),
            ("dk", g.dk),
            ("dv", g.dv),
        ])
    };
    let (sm80, sm90) = (run(FlashPath::Sm80)?, run(FlashPath::Sm90)?);
    let outputs: Vec<_> = sm90
        .into_iter()
        .zip(sm80)
        .map(|((name, got), (_, want))| (name, got, want))
        .collect();
    crate::first_disagreement(&outputs, TOLERANCE)
}
