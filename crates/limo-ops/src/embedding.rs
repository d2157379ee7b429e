//! The gradient of the token-embedding table: each token's row of `dx` added into its token's
//! row, in the master dtype (a frequent token's many contributions would be lost in bf16), plus
//! a tied head's gradient when there is one.

use candle_core::{bail, DType, Result, Tensor};

/// `d_embed[r] = base[r] + (0 + dx[p1] + dx[p2] + ...)` over the positions `p1 < p2 < ...`
/// whose token `ids[p]` is `r`: a `[vocab, hidden]` tensor of `dtype`. The CPU computes it as a
/// zero table, `index_add` in position order, then `+ base`; the CUDA kernel does the same
/// additions in the same order without atomics, so both give the same bits.
pub fn embedding_backward(
    dx: &Tensor,
    ids: &[u32],
    vocab: usize,
    base: Option<&Tensor>,
    dtype: DType,
) -> Result<Tensor> {
    let (tokens, hidden) = dx.dims2()?;
    if ids.len() != tokens {
        bail!(
            "embedding backward: {} token ids for {tokens} rows",
            ids.len()
        );
    }
    if let Some(p) = ids.iter().position(|&id| id as usize >= vocab) {
        bail!(
            "embedding backward: token {} at position {p} is outside the vocabulary of {vocab}",
            ids[p]
        );
    }
    if let Some(b) = base {
        if b.dims() != [vocab, hidden] || b.dtype() != dtype {
            bail!(
                "embedding backward: base {:?} {:?}, expected [{vocab}, {hidden}] {dtype:?}",
                b.dims(),
                b.dtype()
            );
        }
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::embedding::supported(dx, dtype) {
        return crate::cuda::embedding::embedding_backward(dx, ids, vocab, base);
    }
    let ids = Tensor::from_slice(ids, tokens, dx.device())?;
    let sum = Tensor::zeros((vocab, hidden), dtype, dx.device())?.index_add(
        &ids,
        &dx.to_dtype(dtype)?,
        0,
    )?;
    match base {
        Some(base) => sum + base,
        None => Ok(sum),
    }
}

/// The positions grouped by token, in order within a token (a counting sort): token `r`'s
/// positions are `positions[row_start[r]..row_start[r + 1]]`. The CUDA kernel's input: each
/// vocabulary row reads exactly its own tokens' rows.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn by_token(ids: &[u32], vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut row_start = vec![0u32; vocab + 1];
    for &id in ids {
        row_start[id as usize + 1] += 1;
    }
    for r in 0..vocab {
        row_start[r + 1] += row_start[r];
    }
    let mut next = row_start[..vocab].to_vec();
    let mut positions = vec![0u32; ids.len()];
    for (p, &id) in ids.iter().enumerate() {
        positions[next[id as usize] as usize] = p as u32;
        next[id as usize] += 1;
    }
    (row_start, positions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, autograd, rand_tensor};
    use candle_core::{Device, Var};

    #[test]
    fn backward_matches_autograd_of_the_lookup_f64() -> Result<()> {
        let dev = Device::Cpu;
        let (vocab, hidden) = (11, 5);
        // Repeated tokens, the last row of the vocabulary, and rows no token uses.
        let ids = [3u32, 0, 3, 10, 7, 3, 0];
        let table = rand_tensor(&[vocab, hidden], 1, &dev)?;
        let dx = rand_tensor(&[ids.len(), hidden], 2, &dev)?;
        let base = rand_tensor(&[vocab, hidden], 3, &dev)?;
        let (grads, _) = autograd(&[&table], &dx, |v: &[Var]| {
            v[0].as_tensor()
                .index_select(&Tensor::new(&ids[..], &dev)?, 0)
        })?;
        let got = embedding_backward(&dx, &ids, vocab, None, DType::F64)?;
        assert_close(&got, &grads[0], 1e-15, "d_embed")?;
        let unused = got.get(5)?.abs()?.sum_all()?.to_scalar::<f64>()?;
        assert_eq!(unused, 0.0, "a row no token uses gets no gradient");
        let tied = embedding_backward(&dx, &ids, vocab, Some(&base), DType::F64)?;
        assert_close(&tied, &(&grads[0] + &base)?, 1e-15, "d_embed + base")?;
        // bf16 rows are summed in the master dtype (f32), exactly.
        let dx16 = dx.to_dtype(DType::BF16)?;
        let got16 = embedding_backward(&dx16, &ids, vocab, None, DType::F32)?;
        assert_eq!(got16.dtype(), DType::F32);
        let want16 =
            embedding_backward(&dx16.to_dtype(DType::F64)?, &ids, vocab, None, DType::F64)?;
        assert_close(&got16, &want16, 1e-7, "bf16 rows in f32")?;
        Ok(())
    }

    #[test]
    fn positions_are_grouped_by_token_in_order() {
        let (start, pos) = by_token(&[3, 0, 3, 4, 0, 3], 5);
        assert_eq!(start, [0, 2, 2, 2, 5, 6]);
        assert_eq!(pos, [1, 4, 0, 2, 5, 3]);
    }

    #[test]
    fn bad_inputs_name_what_is_wrong() -> Result<()> {
        let dev = Device::Cpu;
        let dx = rand_tensor(&[3, 4], 1, &dev)?;
        let err = embedding_backward(&dx, &[0, 9, 1], 9, None, DType::F64).unwrap_err();
        assert!(
            err.to_string()
                .contains("token 9 at position 1 is outside the vocabulary of 9"),
            "{err}"
        );
        let err = embedding_backward(&dx, &[0, 1], 9, None, DType::F64).unwrap_err();
        assert!(err.to_string().contains("2 token ids for 3 rows"), "{err}");
        let base = rand_tensor(&[9, 3], 2, &dev)?;
        let err = embedding_backward(&dx, &[0, 1, 2], 9, Some(&base), DType::F64).unwrap_err();
        assert!(err.to_string().contains("base [9, 3]"), "{err}");
        Ok(())
    }
}
