//! The checks of the flash-attention kernels: the default path, the atomic backward, and on
//! compute capability 9.x the sm80 and sm90 kernels each explicitly.

use candle_core::{DType, Result, Tensor};

use super::{both, packed, random, tolerance, Checks, Run};
use crate::{attention_backward, attention_forward};

pub(super) fn attention(
    c: &mut Checks,
    Run(reference, test, opts): Run,
    dtype: DType,
) -> Result<()> {
    let tol = tolerance(dtype);
    let s = opts.seed * 1000 + 100;
    // (q heads, kv heads, head_dim, cu_seqlens)
    let mut shapes = vec![
        (40, 8, 128, vec![0, 384]),
        (12, 2, 128, vec![0, 100, 101, 384]),
        (14, 2, 64, vec![0, 200, 384]),
    ];
    if opts.large {
        // 16k packed tokens; documents of at most 2k keep the CPU reference to seconds.
        shapes.push((12, 2, 128, packed(16384, &[2048, 1, 777, 1500])));
        shapes.push((40, 8, 128, packed(4096, &[1024, 3, 1000])));
    }
    for (q_heads, kv_heads, head_dim, cu) in shapes {
        let n = *cu.last().expect("documents");
        let input = |shape: &[usize], seed: u64| -> Result<Tensor> {
            random(shape, s + seed, 1.0)?.to_dtype(dtype)
        };
        let q = input(&[n, q_heads, head_dim], 1)?;
        let k = input(&[n, kv_heads, head_dim], 2)?;
        let v = input(&[n, kv_heads, head_dim], 3)?;
        let d_out = input(&[n, q_heads, head_dim], 4)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let names = ["out", "lse", "dq", "dk", "dv"];
        let outputs = both(&names, reference, test, |d| {
            let (q, k, v) = (q.to_device(d)?, k.to_device(d)?, v.to_device(d)?);
            let (out, lse) = attention_forward(&q, &k, &v, &cu, scale)?;
            let g = attention_backward(&d_out.to_device(d)?, &q, &k, &v, &out, &lse, &cu, scale)?;
            Ok(vec![out, lse, g.dq, g.dk, g.dv])
        })?;
        let shape = format!(
            "{n} tokens {q_heads}/{kv_heads}x{head_dim}, {} docs",
            cu.len() - 1
        );
        c.push("attention", shape.clone(), dtype, tol, outputs)?;

        // The flash-attention backward's faster, non-deterministic variant (atomic dK/dV
        // accumulation), which the training path does not take, against the same reference.
        #[cfg(feature = "cuda")]
        if crate::cuda::flash_attention::dispatches(
            &q.to_device(test)?,
            &k.to_device(test)?,
            &v.to_device(test)?,
        ) {
            use crate::cuda::flash_attention::{flash_attention_backward, flash_attention_forward};
            let outputs = both(&["dq", "dk", "dv"], reference, test, |d| {
                let (q, k, v) = (q.to_device(d)?, k.to_device(d)?, v.to_device(d)?);
                let dout = d_out.to_device(d)?;
                if d.is_cuda() {
                    let (out, lse) = flash_attention_forward(&q, &k, &v, &cu, scale)?;
                    let g = flash_attention_backward(
                        &dout, &q, &k, &v, &out, &lse, &cu, scale, false, None,
                    )?;
                    return Ok(vec![g.dq, g.dk, g.dv]);
                }
                let (out, lse) = attention_forward(&q, &k, &v, &cu, scale)?;
                let g = attention_backward(&dout, &q, &k, &v, &out, &lse, &cu, scale)?;
                Ok(vec![g.dq, g.dk, g.dv])
            })?;
            c.push("attention (atomic bwd)", shape.clone(), dtype, tol, outputs)?;
        }

        // On compute capability 9.x both forward kernels, each explicitly (the default path
        // above is the sm90 one there), against one CPU forward ([`hopper_rows`]).
        #[cfg(feature = "cuda")]
        if crate::cuda::flash_attention::dispatches(
            &q.to_device(test)?,
            &k.to_device(test)?,
            &v.to_device(test)?,
        ) && hopper_rows(test)?
        {
            use crate::cuda::flash_attention::{flash_attention_forward_on, FlashPath};
            let (r_out, r_lse) = attention_forward(
                &q.to_device(reference)?,
                &k.to_device(reference)?,
                &v.to_device(reference)?,
                &cu,
                scale,
            )?;
            let (tq, tk, tv) = (q.to_device(test)?, k.to_device(test)?, v.to_device(test)?);
            for path in [FlashPath::Sm80, FlashPath::Sm90] {
                // An error (say the sm90 kernel refused at launch) is a failed row, not the end
                // of the run: the empty stand-ins fail the shape comparison.
                let (out, lse) = match flash_attention_forward_on(&tq, &tk, &tv, &cu, scale, path) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("attention fwd ({path}), {shape}: {e}");
                        let none = Tensor::zeros(0, DType::F32, test)?;
                        (none.clone(), none)
                    }
                };
                let outputs = vec![("out", r_out.clone(), out), ("lse", r_lse.clone(), lse)];
                c.push(
                    &format!("attention fwd ({path})"),
                    shape.clone(),
                    dtype,
                    tol,
                    outputs,
                )?;
            }

            // Both atomic backward kernels explicitly (sm90 is the default there), from the
            // sm80 forward's out and lse (so a failing sm90 forward does not fail these rows
            // too), against one CPU backward.
            use crate::cuda::flash_attention::flash_attention_backward;
            let r_g = attention_backward(
                &d_out.to_device(reference)?,
                &q.to_device(reference)?,
                &k.to_device(reference)?,
                &v.to_device(reference)?,
                &r_out,
                &r_lse,
                &cu,
                scale,
            )?;
            let tdo = d_out.to_device(test)?;
            let (out, lse) =
                flash_attention_forward_on(&tq, &tk, &tv, &cu, scale, FlashPath::Sm80)?;
            for path in [FlashPath::Sm80, FlashPath::Sm90] {
                let g = match flash_attention_backward(
                    &tdo,
                    &tq,
                    &tk,
                    &tv,
                    &out,
                    &lse,
                    &cu,
                    scale,
                    false,
                    Some(path),
                ) {
                    Ok(g) => vec![g.dq, g.dk, g.dv],
                    Err(e) => {
                        eprintln!("attention bwd ({path}), {shape}: {e}");
                        vec![Tensor::zeros(0, DType::F32, test)?; 3]
                    }
                };
                let outputs = ["dq", "dk", "dv"]
                    .into_iter()
                    .zip([&r_g.dq, &r_g.dk, &r_g.dv])
                    .zip(g)
                    .map(|((name, r), t)| (name, r.clone(), t))
                    .collect();
                c.push(
                    &format!("attention bwd ({path})"),
                    shape.clone(),
                    dtype,
                    tol,
                    outputs,
                )?;
            }
        }
    }
    Ok(())
}

/// On compute capability 9.x (and not `LIMO_FLASH_PATH=sm80`): the sm90 kernels against the
/// sm80 ones, both on the GPU, on one 16k-token document of 12/2 heads (the LIMO recipe's
/// length: 128 kv tiles per query tile), which no CPU reference reaches in seconds; the
/// forward's out and lse, then both atomic backwards from the sm80 forward. The rows are named
/// as the sm90 rows, so a disagreement keeps check.sh's later stages on the sm80 kernels.
/// Elsewhere: no rows.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(super) fn long_document(c: &mut Checks, Run(_, test, opts): Run) -> Result<()> {
    #[cfg(feature = "cuda")]
    if test.is_cuda() && hopper_rows(test)? {
        return sm90_against_sm80(c, test, opts.seed * 1000 + 110);
    }
    Ok(())
}

/// Whether the doctor checks the sm90 kernels on `test`: a compute capability 9.x GPU, unless
/// `LIMO_FLASH_PATH=sm80` keeps it off them (a fault or hang there would hide every later row).
#[cfg(feature = "cuda")]
fn hopper_rows(test: &candle_core::Device) -> Result<bool> {
    use crate::cuda::flash_attention::{flash_path_requested, FlashPath};
    Ok(crate::cuda::runs_sm90a(test.as_cuda_device()?)?
        && flash_path_requested()? != Some(FlashPath::Sm80))
}

#[cfg(feature = "cuda")]
fn sm90_against_sm80(c: &mut Checks, test: &candle_core::Device, seed: u64) -> Result<()> {
    use crate::cuda::flash_attention::{
        flash_attention_backward, flash_attention_forward_on, FlashPath,
    };
    let dtype = DType::BF16;
    let (n, head_dim) = (16384, 128);
    let cu = [0, n];
    let scale = 1.0 / (head_dim as f64).sqrt();
    // The 1.5B heads only: the comparison runs on the host in f64 (3.8 s for one output of the
    // 32B heads' 84M elements on 2 cores, twice that more to locate a failure: too long for
    // check.sh's doctor stage); the 32B heads' GQA 5:1 is checked at 384 tokens on the CPU.
    let (q_heads, kv_heads) = (12, 2);
    let input = |heads: usize, k: u64| -> Result<Tensor> {
        random(&[n, heads, head_dim], seed + k, 1.0)?
            .to_dtype(dtype)?
            .to_device(test)
    };
    let (q, k, v) = (input(q_heads, 1)?, input(kv_heads, 2)?, input(kv_heads, 3)?);
    let d_out = input(q_heads, 4)?;
    let shape = format!("{n} tokens {q_heads}/{kv_heads}x{head_dim}, 1 doc");
    let failed = |what: &str, e: candle_core::Error| -> Result<Tensor> {
        eprintln!("attention {what} (sm90), {shape}: {e}");
        Tensor::zeros(0, DType::F32, test)
    };
    let (out, lse) = flash_attention_forward_on(&q, &k, &v, &cu, scale, FlashPath::Sm80)?;
    let (out90, lse90) = match flash_attention_forward_on(&q, &k, &v, &cu, scale, FlashPath::Sm90) {
        Ok(r) => r,
        Err(e) => (failed("fwd", e)?, Tensor::zeros(0, DType::F32, test)?),
    };
    let outputs = vec![("out", out.clone(), out90), ("lse", lse.clone(), lse90)];
    c.push(
        "attention fwd (sm90) = sm80",
        shape.clone(),
        dtype,
        tolerance(dtype),
        outputs,
    )?;
    let backward = |path| {
        flash_attention_backward(
            &d_out,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &cu,
            scale,
            false,
            Some(path),
        )
    };
    let g = backward(FlashPath::Sm80)?;
    let g90 = match backward(FlashPath::Sm90) {
        Ok(g) => [g.dq, g.dk, g.dv],
        Err(e) => {
            let none = failed("bwd", e)?;
            [none.clone(), none.clone(), none]
        }
    };
    let [dq, dk, dv] = g90;
    let outputs = vec![("dq", g.dq, dq), ("dk", g.dk, dk), ("dv", g.dv, dv)];
    c.push(
        "attention bwd (sm90) = sm80",
        shape,
        dtype,
        tolerance(dtype),
        outputs,
    )?;
    Ok(())
}
