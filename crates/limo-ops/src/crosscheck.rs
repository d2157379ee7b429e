//! Runs every operation on two devices with the same random inputs and compares the results:
//! the engine of `limo doctor` (CPU reference against the GPU). Outputs are compared by relative
//! L2 error and checked for NaN and infinity.

use candle_core::{DType, Device, Result, Tensor};

use crate::{
    attention_backward, attention_forward, linear_cross_entropy, rms_norm_backward,
    rms_norm_forward, rope_backward, rope_forward, swiglu_backward, swiglu_forward, RopeTables,
};

/// One compared output.
#[derive(Debug, Clone)]
pub struct Check {
    pub op: String,
    pub shape: String,
    pub output: String,
    pub rel_error: f64,
    pub finite: bool,
}

impl Check {
    pub fn passed(&self, tolerance: f64) -> bool {
        self.finite && self.rel_error <= tolerance
    }
}

fn random(shape: &[usize], seed: u64, scale: f64) -> Result<Tensor> {
    // A small LCG: the same inputs on every machine, no RNG state shared with anything else.
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0) as f32 * scale as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> Result<(f64, bool)> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let finite = a.to_vec1::<f64>()?.iter().all(|v| v.is_finite());
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt()
        .max(f64::MIN_POSITIVE);
    Ok((diff / norm, finite))
}

/// Compares `test` against `reference` for every operation at a few shapes (attention with
/// 40/8 and 12/2 heads, head_dim 128 and 64, packed documents). Inputs are f32.
pub fn crosscheck(reference: &Device, test: &Device) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut push = |op: &str, shape: String, outputs: Vec<(&str, Tensor, Tensor)>| -> Result<()> {
        for (name, r, t) in outputs {
            let (rel_error, finite) = rel_l2(&t, &r)?;
            checks.push(Check {
                op: op.into(),
                shape: shape.clone(),
                output: name.into(),
                rel_error,
                finite,
            });
        }
        Ok(())
    };
    let on = |t: &Tensor, d: &Device| t.to_device(d);

    for (tokens, hidden) in [(512, 1536), (64, 5120)] {
        let x = random(&[tokens, hidden], 1, 2.0)?;
        let w = (random(&[hidden], 2, 0.2)? + 1.0)?;
        let dy = random(&[tokens, hidden], 3, 1.0)?;
        let run = |d: &Device| -> Result<(Tensor, Tensor, Tensor)> {
            let (y, rstd) = rms_norm_forward(&on(&x, d)?, &on(&w, d)?, 1e-6)?;
            let (dx, dw) = rms_norm_backward(&on(&dy, d)?, &on(&x, d)?, &on(&w, d)?, &rstd)?;
            Ok((y, dx, dw))
        };
        let (r, t) = (run(reference)?, run(test)?);
        push(
            "rms_norm",
            format!("{tokens}x{hidden}"),
            vec![("y", r.0, t.0), ("dx", r.1, t.1), ("dw", r.2, t.2)],
        )?;
    }

    for (heads, head_dim) in [(40, 128), (12, 128), (14, 64)] {
        let positions: Vec<u32> = (0..300).chain(0..212).collect();
        let x = random(&[512, heads, head_dim], 4, 1.0)?;
        let run = |d: &Device| -> Result<(Tensor, Tensor)> {
            let tables = RopeTables::new(&positions, head_dim, 1e6, DType::F32, d)?;
            Ok((
                rope_forward(&on(&x, d)?, &tables)?,
                rope_backward(&on(&x, d)?, &tables)?,
            ))
        };
        let (r, t) = (run(reference)?, run(test)?);
        push(
            "rope",
            format!("512x{heads}x{head_dim}"),
            vec![("y", r.0, t.0), ("dx", r.1, t.1)],
        )?;
    }

    let (g, u, dh) = (
        random(&[256, 8960], 5, 4.0)?,
        random(&[256, 8960], 6, 1.0)?,
        random(&[256, 8960], 7, 1.0)?,
    );
    let run = |d: &Device| -> Result<(Tensor, Tensor, Tensor)> {
        let h = swiglu_forward(&on(&g, d)?, &on(&u, d)?)?;
        let (dg, du) = swiglu_backward(&on(&dh, d)?, &on(&g, d)?, &on(&u, d)?)?;
        Ok((h, dg, du))
    };
    let (r, t) = (run(reference)?, run(test)?);
    push(
        "swiglu",
        "256x8960".into(),
        vec![("h", r.0, t.0), ("dg", r.1, t.1), ("du", r.2, t.2)],
    )?;

    for (q_heads, kv_heads, head_dim, cu) in [
        (40, 8, 128, vec![0, 384]),
        (12, 2, 128, vec![0, 100, 101, 384]),
        (14, 2, 64, vec![0, 200, 384]),
    ] {
        let n = *cu.last().expect("documents");
        let q = random(&[n, q_heads, head_dim], 8, 1.0)?;
        let k = random(&[n, kv_heads, head_dim], 9, 1.0)?;
        let v = random(&[n, kv_heads, head_dim], 10, 1.0)?;
        let d_out = random(&[n, q_heads, head_dim], 11, 1.0)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let run = |d: &Device| -> Result<Vec<Tensor>> {
            let (q, k, v) = (on(&q, d)?, on(&k, d)?, on(&v, d)?);
            let (out, lse) = attention_forward(&q, &k, &v, &cu, scale)?;
            let g = attention_backward(&on(&d_out, d)?, &q, &k, &v, &out, &lse, &cu, scale)?;
            Ok(vec![out, lse, g.dq, g.dk, g.dv])
        };
        let (r, t) = (run(reference)?, run(test)?);
        let names = ["out", "lse", "dq", "dk", "dv"];
        let outputs = names
            .iter()
            .zip(r)
            .zip(t)
            .map(|((n, r), t)| (*n, r, t))
            .collect();
        push(
            "attention",
            format!("{n} tokens {q_heads}/{kv_heads}x{head_dim}, docs {cu:?}"),
            outputs,
        )?;
    }

    let hidden = random(&[300, 256], 12, 1.0)?;
    let weight = random(&[32000, 256], 13, 0.1)?;
    let targets: Vec<i64> = (0..300)
        .map(|i| {
            if i % 5 == 0 {
                -100
            } else {
                (i * 97 % 32000) as i64
            }
        })
        .collect();
    let run = |d: &Device| -> Result<(Tensor, Tensor, Tensor)> {
        let out = linear_cross_entropy(
            &on(&hidden, d)?,
            &on(&weight, d)?,
            &targets,
            Some(1.0 / 240.0),
            128,
        )?;
        Ok((
            out.per_token_loss,
            out.d_hidden.expect("asked"),
            out.d_weight.expect("asked"),
        ))
    };
    let (r, t) = (run(reference)?, run(test)?);
    push(
        "linear_cross_entropy",
        "300 tokens x 256 -> 32000, chunks of 128".into(),
        vec![
            ("loss", r.0, t.0),
            ("d_hidden", r.1, t.1),
            ("d_weight", r.2, t.2),
        ],
    )?;
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_agrees_with_itself_on_every_check() {
        let checks = crosscheck(&Device::Cpu, &Device::Cpu).unwrap();
        let ops: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.op.as_str()).collect();
        assert_eq!(ops.len(), 5, "{ops:?}");
        assert!(checks.len() >= 20);
        for c in &checks {
            assert!(c.passed(0.0), "{c:?}");
        }
    }

    #[test]
    fn a_wrong_result_fails_its_check() {
        let a = random(&[10], 1, 1.0).unwrap();
        let (err, finite) = rel_l2(&(&a * 1.001).unwrap(), &a).unwrap();
        assert!(finite && err > 5e-4 && err < 2e-3);
        let nan = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
        let check = Check {
            op: "x".into(),
            shape: "".into(),
            output: "".into(),
            rel_error: rel_l2(&nan, &nan).unwrap().0,
            finite: false,
        };
        assert!(!check.passed(1.0));
    }
}
