//! What the doctor keeps of a failed check, so that one GPU visit is enough to start on a fix
//! without the GPU: where in the output the error sits ([`locate`], printed under the FAIL
//! row), and both results themselves ([`Dump`]: safetensors files and a JSON index, which
//! scripts/gpu/check.sh brings back in its logs). A kernel new to silicon that fails usually
//! fails by a layout (a fragment, a swizzle, a descriptor): a pattern in where its errors are.

use std::io::Write;
use std::path::PathBuf;

use candle_core::{DType, Device, Error, Result, Tensor};

use super::Check;

/// Where `result` differs from `reference` (same dims): how many elements are off by more
/// than ten times the bound `tol` in units of the reference's RMS (a misplaced element is off
/// by about the RMS, a rounding by far less), how many are not finite (an element a kernel did
/// not write stays NaN), the worst element, and along every axis the indices where the bad
/// elements gather (at least half the largest count along that axis) as ranges: the second
/// half of every 128-row tile, 8 of every 16 columns, one head.
pub fn locate(reference: &Tensor, result: &Tensor, tol: f64) -> Result<String> {
    let dims = reference.dims().to_vec();
    if result.dims() != dims {
        return Ok(format!(
            "dims {:?} against the reference's {dims:?}",
            result.dims()
        ));
    }
    let (r, t) = (values(reference)?, values(result)?);
    let n = r.len();
    let rms = (r.iter().map(|v| v * v).sum::<f64>() / n.max(1) as f64).sqrt();
    let limit = 10.0 * tol * rms.max(f64::MIN_POSITIVE);
    let err = |i: usize| {
        if t[i].is_finite() {
            (t[i] - r[i]).abs()
        } else {
            f64::INFINITY
        }
    };
    // A NaN error (a NaN in the reference) counts as bad too.
    let bad: Vec<usize> = (0..n)
        .filter(|&i| err(i) > limit || err(i).is_nan())
        .collect();
    let not_finite = t.iter().filter(|v| !v.is_finite()).count();
    let mut s = format!(
        "{} of {n} elements ({:.2}%) off by more than {limit:.2e} (10 x bound x rms), {not_finite} \
         not finite",
        bad.len(),
        100.0 * bad.len() as f64 / n.max(1) as f64
    );
    // The first of the largest errors (`min_by` keeps the first of equals).
    let Some(worst) = bad
        .iter()
        .copied()
        .min_by(|&a, &b| err(b).total_cmp(&err(a)))
    else {
        s.push_str(": the error is spread thin");
        return Ok(s);
    };
    s.push_str(&format!(
        "; worst {:?}: reference {:.4e}, result {:.4e}",
        unravel(worst, &dims),
        r[worst],
        t[worst]
    ));
    for (axis, &len) in dims.iter().enumerate().filter(|(_, &len)| len > 1) {
        let stride: usize = dims[axis + 1..].iter().product();
        let mut count = vec![0usize; len];
        for &i in &bad {
            count[(i / stride) % len] += 1;
        }
        let most = count.iter().copied().max().unwrap_or(0);
        let hot: Vec<usize> = (0..len).filter(|&j| 2 * count[j] >= most).collect();
        let hot = if hot.len() == len {
            "all".to_string()
        } else {
            ranges(&hot)
        };
        s.push_str(&format!("; axis {axis} of {len}: {hot}"));
    }
    Ok(s)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()
}

/// The index of flat element `i` in a row-major tensor of `dims`.
fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (a, &d) in dims.iter().enumerate().rev() {
        index[a] = i % d.max(1);
        i /= d.max(1);
    }
    index
}

/// Sorted indices as runs, "0-2,5,7-8"; after 8 runs only their count.
fn ranges(sorted: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &j in sorted {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == j => *end = j,
            _ => runs.push((j, j)),
        }
    }
    let mut s: Vec<String> = runs
        .iter()
        .take(8)
        .map(|&(a, b)| match a == b {
            true => a.to_string(),
            false => format!("{a}-{b}"),
        })
        .collect();
    if runs.len() > 8 {
        s.push(format!("... ({} runs)", runs.len()));
    }
    s.join(",")
}

/// Where the doctor writes failed outputs (`limo doctor --dump DIR`) and how many bytes of
/// tensors at most (so the files fit what a GPU visit brings back).
#[derive(Debug, Clone)]
pub struct DumpTo {
    pub dir: PathBuf,
    pub budget_bytes: usize,
}

/// Failed outputs as safetensors files in `dir`, `reference` and `result` in their own dtypes,
/// with one JSON line per failed output in `dir/index.jsonl` (the check, the seed that
/// regenerates its inputs, [`locate`]'s line, the file or why there is none). Outputs that no
/// longer fit the budget get their index line only. A second run into the same directory
/// appends.
pub(super) struct Dump {
    dir: PathBuf,
    left: usize,
    entries: usize,
    seed: u64,
}

impl Dump {
    pub(super) fn create(to: &DumpTo, seed: u64) -> Result<Self> {
        let fail = |e: std::io::Error| Error::Msg(format!("dump {}: {e}", to.dir.display()));
        std::fs::create_dir_all(&to.dir).map_err(fail)?;
        let entries = match std::fs::read_to_string(to.dir.join("index.jsonl")) {
            Ok(index) => index.lines().count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(fail(e)),
        };
        Ok(Self {
            dir: to.dir.clone(),
            left: to.budget_bytes,
            entries,
            seed,
        })
    }

    pub(super) fn write(
        &mut self,
        check: &Check,
        reference: &Tensor,
        result: &Tensor,
    ) -> Result<()> {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let size = bytes(reference) + bytes(result);
        let slug: String = format!("{}-{}-{:?}", check.op, check.output, check.dtype)
            .to_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let name = format!("{:03}-{slug}.safetensors", self.entries);
        let (file, skipped) = if reference.dims() != result.dims() {
            (None, Some("the dims differ".to_string()))
        } else if size > self.left {
            let why = format!("{size} bytes, {} left of the budget", self.left);
            (None, Some(why))
        } else {
            let cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.contiguous();
            let tensors = [("reference", cpu(reference)?), ("result", cpu(result)?)];
            candle_core::safetensors::save(&tensors.into_iter().collect(), self.dir.join(&name))?;
            self.left -= size;
            (Some(name), None)
        };
        let line = serde_json::json!({
            "file": file, "skipped": skipped, "op": check.op, "shape": check.shape,
            "dtype": format!("{:?}", check.dtype).to_lowercase(), "output": check.output,
            "dims": reference.dims(), "rel_error": check.rel_error, "finite": check.finite,
            "tolerance": check.tolerance, "seed": self.seed, "where": check.detail,
        });
        let path = self.dir.join("index.jsonl");
        let mut index = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}").map(|_| f));
        if let Ok(f) = index.as_mut() {
            f.flush().ok();
        }
        index.map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
        self.entries += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, cols]` tensor `1 + i` with `f` applied to the elements (row, col) it picks.
    fn grid(rows: usize, cols: usize, f: impl Fn(usize, usize) -> Option<f32>) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| f(i / cols, i % cols).unwrap_or(1.0 + (i % 7) as f32))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_layout_bug_shows_as_a_pattern_of_rows_and_columns() {
        let r = grid(384, 16, |_, _| None);
        // The second half of every 128-row tile wrong in columns 8-15.
        let t = grid(384, 16, |i, j| (i % 128 >= 64 && j >= 8).then_some(-5.0));
        let s = locate(&r, &t, 1e-2).unwrap();
        assert!(s.starts_with("1536 of 6144 elements (25.00%)"), "{s}");
        assert!(s.contains("0 not finite"), "{s}");
        assert!(
            s.contains("worst [64, 11]: reference 7.0000e0, result -5.0000e0"),
            "{s}"
        );
        assert!(s.contains("axis 0 of 384: 64-127,192-255,320-383;"), "{s}");
        assert!(s.ends_with("axis 1 of 16: 8-15"), "{s}");
        // Unwritten elements (NaN) everywhere in one column.
        let t = grid(384, 16, |_, j| (j == 3).then_some(f32::NAN));
        let s = locate(&r, &t, 1e-2).unwrap();
        assert!(
            s.starts_with("384 of 6144") && s.contains("384 not finite"),
            "{s}"
        );
        assert!(s.contains("axis 0 of 384: all; axis 1 of 16: 3"), "{s}");
        // Rounding-sized differences are not located.
        let t = (&r * 1.001).unwrap();
        let s = locate(&r, &t, 1e-2).unwrap();
        assert!(
            s.starts_with("0 of 6144") && s.ends_with("spread thin"),
            "{s}"
        );
        let s = locate(&r, &r.t().unwrap(), 1e-2).unwrap();
        assert_eq!(s, "dims [16, 384] against the reference's [384, 16]");
    }

    #[test]
    fn runs_are_compressed_and_capped() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        let every_other: Vec<usize> = (0..40).step_by(2).collect();
        assert_eq!(ranges(&every_other), "0,2,4,6,8,10,12,14,... (20 runs)");
        assert_eq!(unravel(70, &[3, 4, 6]), vec![2, 3, 4]);
    }
}
