//! Flat gradient buffers, as ZeRO-3 sends and keeps them: a layer's gradients written into one
//! padded buffer in the dtype of the reduce-scatter, and reduce-scattered slices added to their
//! accumulators. On a GPU both run in place (`kernels/accumulate.cu`), each element read and
//! written once; elsewhere as tensor ops. Conversions to f32 and f32 additions are exact the
//! same way on both, so the results agree to the bit.

use candle_core::{bail, DType, Result, Tensor};

/// The `pieces`, flattened and converted to `dtype`, one after the other in a buffer of `len`
/// elements whose tail (past the pieces) is zero. A single contiguous piece of `len` elements
/// in `dtype` comes back as it is (its storage shared): the caller must not need it apart.
pub fn flatten_into(pieces: &[Tensor], dtype: DType, len: usize) -> Result<Tensor> {
    let total: usize = pieces.iter().map(Tensor::elem_count).sum();
    let Some(device) = pieces.first().map(Tensor::device) else {
        bail!("flatten_into: no pieces");
    };
    if total > len {
        bail!("flatten_into: {total} elements do not fit a buffer of {len}");
    }
    if let [only] = pieces {
        if only.dtype() == dtype && only.is_contiguous() && total == len {
            // A vocabulary-sized fp32 gradient that fills the buffer: itself, not a copy of
            // ~6 GB (its caller hands it over).
            return only.flatten_all();
        }
    }
    #[cfg(feature = "cuda")]
    if device.is_cuda() && dtype == DType::F32 {
        // Every element is written below: the pieces by the kernel, the tail by a copy.
        let flat = crate::cuda::accumulate::uninit_f32(device, len)?;
        let mut at = 0;
        for t in pieces {
            let n = t.elem_count();
            crate::cuda::accumulate::cast_into(&flat.narrow(0, at, n)?, &t.flatten_all()?)?;
            at += n;
        }
        if len > at {
            flat.slice_set(&Tensor::zeros(len - at, dtype, device)?, 0, at)?;
        }
        return Ok(flat);
    }
    let flat = Tensor::zeros(len, dtype, device)?;
    let mut at = 0;
    for t in pieces {
        // One converted piece at a time: converting all, then concatenating, would hold them
        // all at once beside the buffer.
        let piece = t.flatten_all()?.to_dtype(dtype)?;
        flat.slice_set(&piece, 0, at)?;
        at += piece.elem_count();
    }
    Ok(flat)
}

/// `acc + x` in `acc`'s dtype. On a GPU with a contiguous f32 `acc`, written into `acc`'s own
/// storage (every view of it sees the sum: the caller must own it) with no new buffer.
pub fn add_assign(acc: Tensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if acc.device().is_cuda() && acc.dtype() == DType::F32 && acc.is_contiguous() {
        crate::cuda::accumulate::add_into(&acc, x)?;
        return Ok(acc);
    }
    let x = x.to_dtype(acc.dtype())?;
    acc + x
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pieces_in_order_then_zeros() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1.5f32, -2.0], [3.0, 4.25]], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = Tensor::new(&[7.0f32], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let flat = flatten_into(&[a, b], DType::F32, 8).unwrap();
        assert_eq!(
            flat.to_vec1::<f32>().unwrap(),
            [1.5, -2.0, 3.0, 4.25, 7.0, 0.0, 0.0, 0.0]
        );
        let exact = flatten_into(std::slice::from_ref(&flat), DType::F32, 8).unwrap();
        assert_eq!(
            exact.to_vec1::<f32>().unwrap(),
            flat.to_vec1::<f32>().unwrap()
        );
        // A single piece that fills the buffer is not copied; a shorter one is.
        let same_storage = |a: &Tensor, b: &Tensor| {
            let (sa, sb) = (a.storage_and_layout().0, b.storage_and_layout().0);
            std::ptr::eq(&*sa, &*sb)
        };
        assert!(same_storage(&exact, &flat));
        let padded = flatten_into(std::slice::from_ref(&flat), DType::F32, 9).unwrap();
        assert!(!same_storage(&padded, &flat));
        assert_eq!(
            padded.to_vec1::<f32>().unwrap()[..8],
            flat.to_vec1::<f32>().unwrap()
        );
        let err = flatten_into(&[flat], DType::F32, 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("8 elements do not fit a buffer of 7"), "{err}");
        assert!(flatten_into(&[], DType::F32, 1).is_err());
    }

    #[test]
    fn add_assign_adds_in_the_accumulators_dtype() {
        let dev = Device::Cpu;
        let acc = Tensor::new(&[1.0f32, 2.0, 3.0], &dev).unwrap();
        let x = Tensor::new(&[0.5f32, -2.0, 1e-3], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let sum = add_assign(acc, &x).unwrap();
        assert_eq!(sum.dtype(), DType::F32);
        let bf16_of_1e3 = x.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[2];
        assert_eq!(sum.to_vec1::<f32>().unwrap(), [1.5, 0.0, 3.0 + bf16_of_1e3]);
    }
}
