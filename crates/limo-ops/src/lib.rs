//! Fused training operations of limo, each with an explicit forward and backward.
//!
//! Every operation here is written with candle tensor ops, so the same code runs on any candle
//! device and dtype: it is the CPU reference (f32 and f64 for exact parity with transformers)
//! and the oracle that the CUDA kernels are checked against. Half-precision inputs are computed
//! in f32 and cast back, as the kernels do (fp32 accumulation everywhere).
//!
//! Shapes use the flattened token layout of the trainer: `N` tokens of all rows of a batch
//! concatenated, documents given by cumulative offsets (`cu_seqlens`), heads as
//! `[N, heads, head_dim]`.

pub mod adamw;
pub mod attention;
pub mod crosscheck;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode_attention;
pub mod embedding;
pub mod flat;
pub mod linear_cross_entropy;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

#[cfg(test)]
mod testing;

use candle_core::{DType, Device, Result, Tensor};

/// Bytes new allocations on `device` can still take: the GPU's free memory on CUDA, the host's
/// `MemAvailable` (/proc/meminfo) on the CPU; `None` where neither can be read.
pub fn available_memory(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::pool::memory_stats(device).ok().map(|m| m.free),
        Device::Cpu => std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024),
        _ => None,
    }
}

/// Relative L2 error `|a - b| / |b|`, computed in f64: the measure of every parity check in
/// limo (tests, `limo doctor`'s neighbours, the golden comparisons).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(diff / norm.max(f64::MIN_POSITIVE))
}

/// The first `(name, got, want)` whose [`rel_l2`] is above `tolerance` or not finite, as
/// `"name: relative L2 x"`; `None` when every output agrees. Compared on the CPU (f64), so the
/// tensors may live on any device.
pub fn first_disagreement(
    outputs: &[(&str, Tensor, Tensor)],
    tolerance: f64,
) -> Result<Option<String>> {
    for (name, got, want) in outputs {
        let err = rel_l2(
            &got.to_device(&Device::Cpu)?,
            &want.to_device(&Device::Cpu)?,
        )?;
        if !err.is_finite() || err > tolerance {
            return Ok(Some(format!("{name}: relative L2 {err:.2e}")));
        }
    }
    Ok(None)
}

pub use adamw::{
    adamw_update, adamw_update_host, adamw_update_state, clip_coefficient, sum_of_squares,
    sum_of_squares_tensor, AdamWStep, Clip,
};
pub use attention::{attention_backward, attention_forward, AttentionGrads};
pub use embedding::embedding_backward;
pub use flat::{add_assign, flatten_into};
pub use linear_cross_entropy::{
    linear_cross_entropy, linear_cross_entropy_on_device, linear_cross_entropy_scaled_on_device,
    GradScale, LinearCrossEntropy, IGNORE_INDEX,
};
pub use rms_norm::{add_rms_norm_forward, rms_norm_backward, rms_norm_forward};
pub use rope::{rope_backward, rope_forward, RopeCache, RopeTables};
pub use swiglu::{swiglu_backward, swiglu_forward};

/// The dtype an operation computes in: f32 for half inputs, the input dtype otherwise.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `t` in its compute dtype (a no-op for f32 and f64).
pub(crate) fn upcast(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(compute_dtype(t.dtype()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_disagreement_names_the_output_off_or_not_finite() {
        let want = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
        let close = (&want + 1e-3).unwrap();
        let far = (&want * 2.0).unwrap();
        let nan = Tensor::new(&[1f32, f32::NAN, 3., 4.], &Device::Cpu).unwrap();
        let agree = [("a", close.clone(), want.clone())];
        assert_eq!(first_disagreement(&agree, 2e-2).unwrap(), None);
        let off = [("a", close, want.clone()), ("b", far, want.clone())];
        let what = first_disagreement(&off, 2e-2).unwrap().unwrap();
        assert!(what.starts_with("b: relative L2 1.00e0"), "{what}");
        let what = first_disagreement(&[("c", nan, want)], 2e-2)
            .unwrap()
            .unwrap();
        assert!(what.starts_with("c: "), "{what}");
    }
}
