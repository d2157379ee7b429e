//! Runs every operation on two devices with the same random inputs and compares the results:
//! the engine of `limo doctor` (CPU reference against the GPU, where the operations dispatch to
//! our CUDA kernels). Outputs are compared by relative L2 error against a bound per dtype and
//! checked for NaN and infinity; on a CUDA test device the kernels' output buffers are filled
//! with NaN before each run, so an element a kernel does not write fails the NaN check.

mod attention;
mod autopsy;
mod decode;

pub use autopsy::{locate, DumpTo};

use candle_core::{DType, Device, Result, Tensor};

use crate::{
    adamw_update, add_assign, embedding_backward, flatten_into, linear_cross_entropy,
    linear_cross_entropy::softmax_cross_entropy, linear_cross_entropy_scaled_on_device,
    rms_norm_backward, rms_norm_forward, rope_backward, rope_forward, sum_of_squares_tensor,
    swiglu_backward, swiglu_forward, AdamWStep, GradScale, RopeTables, IGNORE_INDEX,
};
use attention::attention;
use decode::{decode, qkv_append};

/// One compared output.
#[derive(Debug, Clone)]
pub struct Check {
    pub op: String,
    pub shape: String,
    pub dtype: DType,
    pub output: String,
    pub rel_error: f64,
    /// No NaN or infinity in either result.
    pub finite: bool,
    /// Largest accepted `rel_error`.
    pub tolerance: f64,
    /// Of a failed output: where its errors are ([`locate`]).
    pub detail: Option<String>,
    /// Of a group of checks that ended with an error: the error.
    pub error: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.finite && self.rel_error <= self.tolerance
    }
}

/// The relative L2 error accepted for outputs of `dtype`. bf16 keeps 8 significant bits (a
/// rounding is up to 2^-9 relative) and the reference rounds after every candle op while the
/// kernels round once, so bf16 results differ by a few roundings; f32 by accumulation order.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-4,
        _ => 1e-2,
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Input dtypes (f32 and bf16 for the doctor).
    pub dtypes: Vec<DType>,
    /// Also the training-size shapes (16k tokens, a 152k vocabulary): seconds on a GPU, but
    /// the CPU reference needs a few minutes and ~20 GB of memory.
    pub large: bool,
    /// Seed of the random inputs (the doctor draws a fresh one every run).
    pub seed: u64,
    /// Only these groups of checks ([`GROUPS`]); empty: all.
    pub only: Vec<String>,
    /// Write the failed outputs there (`limo doctor --dump`).
    pub dump: Option<DumpTo>,
}

/// The groups of checks, in the order they run ([`Options::only`]).
pub const GROUPS: [&str; 10] = [
    "attention",
    "norm_rope_swiglu",
    "decode",
    "qkv_append",
    "losses",
    "embedding",
    "sum_of_squares",
    "flat_gradients",
    "adamw",
    "attention_16k",
];

impl Default for Options {
    fn default() -> Self {
        Self {
            dtypes: vec![DType::F32, DType::BF16],
            large: true,
            seed: 1,
            only: Vec::new(),
            dump: None,
        }
    }
}

/// Uniform values in `[-scale, scale)` from a small LCG: the same inputs on every machine and
/// no RNG state shared with anything else; `seed` makes every run draw fresh ones.
fn random(shape: &[usize], seed: u64, scale: f64) -> Result<Tensor> {
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

/// Relative L2 error of `a` against `b`, and whether both are free of NaN and infinity.
fn rel_l2(a: &Tensor, b: &Tensor) -> Result<(f64, bool)> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    if a.dims() != b.dims() {
        return Ok((f64::INFINITY, false));
    }
    let finite = a
        .to_vec1::<f64>()?
        .iter()
        .chain(b.to_vec1::<f64>()?.iter())
        .all(|v| v.is_finite());
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt()
        .max(f64::MIN_POSITIVE);
    Ok((diff / norm, finite))
}

/// Collects the checks of one run, handing each to `each` as it is made.
struct Checks<'a> {
    out: Vec<Check>,
    each: &'a mut dyn FnMut(&Check),
    dump: Option<autopsy::Dump>,
}

impl Checks<'_> {
    fn push(
        &mut self,
        op: &str,
        shape: String,
        dtype: DType,
        tol: f64,
        outputs: Vec<(&str, Tensor, Tensor)>,
    ) -> Result<()> {
        for (name, reference, test) in outputs {
            // Shapes must match too: a wrong layout is a failure, not a reshape.
            let (rel_error, finite) = if reference.dims() == test.dims() {
                rel_l2(&test, &reference)?
            } else {
                (f64::INFINITY, false)
            };
            let mut check = Check {
                op: op.into(),
                shape: shape.clone(),
                dtype,
                output: name.into(),
                rel_error,
                finite,
                tolerance: tol,
                detail: None,
                error: None,
            };
            if !check.passed() {
                check.detail = Some(locate(&reference, &test, tol)?);
                if let Some(dump) = self.dump.as_mut() {
                    if let Err(e) = dump.write(&check, &reference, &test) {
                        // The checks matter more than their files: go on without.
                        tracing::warn!("no more failed outputs written: {e}");
                        self.dump = None;
                    }
                }
            }
            (self.each)(&check);
            self.out.push(check);
        }
        Ok(())
    }

    /// A group of checks that ended with an error (a kernel that failed to launch, a fault)
    /// becomes a failed row naming it, and the next group runs: an error that leaves the GPU
    /// usable (a launch refused) then hides nothing else.
    fn stopped(&mut self, group: &str, dtype: DType, result: Result<()>) {
        let Err(e) = result else { return };
        let check = Check {
            op: group.into(),
            shape: "(stopped by an error)".into(),
            dtype,
            output: "-".into(),
            rel_error: f64::INFINITY,
            finite: false,
            tolerance: 0.0,
            detail: None,
            // candle appends a backtrace when RUST_BACKTRACE is set: the first line is the cause.
            error: Some(e.to_string().lines().next().unwrap_or_default().to_string()),
        };
        (self.each)(&check);
        self.out.push(check);
    }
}

/// The reference device, the device tested and what to run: every group of checks takes it.
#[derive(Clone, Copy)]
struct Run<'a>(&'a Device, &'a Device, &'a Options);

/// Runs `f` on both devices and zips the outputs with their names.
fn both<'a>(
    names: &[&'a str],
    reference: &Device,
    test: &Device,
    f: impl Fn(&Device) -> Result<Vec<Tensor>>,
) -> Result<Vec<(&'a str, Tensor, Tensor)>> {
    let r = f(reference)?;
    let t = f(test)?;
    Ok(names
        .iter()
        .zip(r)
        .zip(t)
        .map(|((n, r), t)| (*n, r, t))
        .collect())
}

/// Compares `test` against `reference` for every operation at several shapes and dtypes.
pub fn crosscheck(reference: &Device, test: &Device, opts: &Options) -> Result<Vec<Check>> {
    crosscheck_each(reference, test, opts, &mut |_| {})
}

/// [`crosscheck`], handing each check to `each` as soon as it is made: what ran before an
/// error (a kernel fault that ends the run) is still reported.
pub fn crosscheck_each(
    reference: &Device,
    test: &Device,
    opts: &Options,
    each: &mut dyn FnMut(&Check),
) -> Result<Vec<Check>> {
    #[cfg(feature = "cuda")]
    crate::cuda::set_poison_outputs(test.is_cuda());
    let result = run_all(reference, test, opts, each);
    #[cfg(feature = "cuda")]
    crate::cuda::set_poison_outputs(false);
    result
}

fn run_all(
    reference: &Device,
    test: &Device,
    opts: &Options,
    each: &mut dyn FnMut(&Check),
) -> Result<Vec<Check>> {
    if let Some(bad) = opts.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        candle_core::bail!("no group of checks {bad:?} (groups: {})", GROUPS.join(", "));
    }
    let wanted = |group: &str| opts.only.is_empty() || opts.only.iter().any(|g| g == group);
    let dump = opts
        .dump
        .as_ref()
        .map(|to| autopsy::Dump::create(to, opts.seed));
    let mut checks = Checks {
        out: Vec::new(),
        each,
        dump: dump.transpose()?,
    };
    let groups: [(&str, Group); 8] = [
        ("attention", attention),
        ("norm_rope_swiglu", norm_rope_swiglu),
        ("decode", decode),
        ("qkv_append", qkv_append),
        ("losses", losses),
        ("embedding", embedding),
        ("sum_of_squares", sum_of_squares),
        ("flat_gradients", flat_gradients),
    ];
    // Attention first, in every dtype: its flash kernels are the riskiest, and a GPU visit's
    // doctor stage (scripts/gpu/check.sh) picks the flash path from these rows even if it is
    // cut short.
    let run = Run(reference, test, opts);
    let (first, rest) = groups.split_at(1);
    for part in [first, rest] {
        let part: Vec<(&str, Group)> = part.iter().copied().filter(|(n, _)| wanted(n)).collect();
        run_groups(&mut checks, run, &part);
    }
    if wanted("adamw") {
        let result = adamw(&mut checks, run);
        checks.stopped("adamw", DType::F32, result);
    }
    // Last: the longest checks on the GPU (bf16 only; nothing on the CPU).
    if wanted("attention_16k") && opts.dtypes.contains(&DType::BF16) {
        let result = attention::long_document(&mut checks, run);
        checks.stopped("attention_16k", DType::BF16, result);
    }
    Ok(checks.out)
}

/// A group of checks for one input dtype.
type Group = fn(&mut Checks, Run, DType) -> Result<()>;

/// Every group for every dtype of the run, in that order; a group that ends with an error is a
/// failed row ([`Checks::stopped`]) and the next one runs.
fn run_groups(checks: &mut Checks, run: Run, groups: &[(&str, Group)]) {
    for &dtype in &run.2.dtypes {
        for (name, group) in groups {
            let result = group(checks, run, dtype);
            checks.stopped(name, dtype, result);
        }
    }
}

/// Packed documents of `n` tokens: lengths cycle through `lens`, the last one cut to fit.
fn packed(n: usize, lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    let mut i = 0;
    while *cu.last().expect("non-empty") < n {
        let next = (cu.last().expect("non-empty") + lens[i % lens.len()]).min(n);
        cu.push(next);
        i += 1;
    }
    cu
}

/// Positions restarting at 0 at every document start of `cu`.
fn positions(cu: &[usize]) -> Vec<u32> {
    cu.windows(2)
        .flat_map(|w| (0..(w[1] - w[0]) as u32).collect::<Vec<_>>())
        .collect()
}

fn norm_rope_swiglu(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    let tol = tolerance(dtype);
    let s = opts.seed * 1000;
    let input = |shape: &[usize], seed: u64, scale: f64| -> Result<Tensor> {
        random(shape, s + seed, scale)?.to_dtype(dtype)
    };

    let mut norm_shapes = vec![(512, 1536), (64, 5120), (7, 896)];
    if opts.large {
        norm_shapes.push((16384, 5120));
    }
    for (tokens, hidden) in norm_shapes {
        let x = input(&[tokens, hidden], 1, 2.0)?;
        let w = (random(&[hidden], s + 2, 0.2)? + 1.0)?.to_dtype(dtype)?;
        let dy = input(&[tokens, hidden], 3, 1.0)?;
        let outputs = both(&["y", "rstd", "dx", "dw"], reference, test, |d| {
            let (x, w) = (x.to_device(d)?, w.to_device(d)?);
            let (y, rstd) = rms_norm_forward(&x, &w, 1e-6)?;
            let (dx, dw) = rms_norm_backward(&dy.to_device(d)?, &x, &w, &rstd)?;
            Ok(vec![y, rstd, dx, dw])
        })?;
        c.push(
            "rms_norm",
            format!("{tokens}x{hidden}"),
            dtype,
            tol,
            outputs,
        )?;
        // After a residual add: against the reference, and on the tested device against its
        // own add and forward, bit for bit.
        let r = input(&[tokens, hidden], 9, 1.0)?;
        let fused = |d: &Device| -> Result<Vec<Tensor>> {
            let (x, r, w) = (x.to_device(d)?, r.to_device(d)?, w.to_device(d)?);
            let (sum, y, rstd) = crate::add_rms_norm_forward(&x, &r, &w, 1e-6)?;
            Ok(vec![sum, y, rstd])
        };
        let names = ["sum", "y", "rstd"];
        let shape = format!("{tokens}x{hidden}");
        let outputs = both(&names, reference, test, fused)?;
        c.push("add_rms_norm", shape.clone(), dtype, tol, outputs)?;
        let (x_t, r_t, w_t) = (x.to_device(test)?, r.to_device(test)?, w.to_device(test)?);
        let sum = (&x_t + &r_t)?;
        let (y, rstd) = rms_norm_forward(&sum, &w_t, 1e-6)?;
        let same = names.into_iter().zip([sum, y, rstd]).zip(fused(test)?);
        let same = same.map(|((n, unfused), f)| (n, unfused, f)).collect();
        c.push("add_rms_norm = unfused", shape, dtype, 0.0, same)?;
    }

    // (tokens, heads, head_dim, document lengths, table dtype)
    let mut rope_shapes = vec![
        (512, 40, 128, vec![300, 212], dtype),
        (512, 12, 128, vec![100, 1, 411], dtype),
        (512, 14, 64, vec![512], dtype),
    ];
    if opts.large {
        rope_shapes.push((16384, 40, 128, vec![4000, 1, 2500, 9883], dtype));
        rope_shapes.push((16384, 2, 64, vec![16384], dtype));
    }
    for (tokens, heads, head_dim, lens, table_dtype) in rope_shapes {
        let cu = packed(tokens, &lens);
        let pos = positions(&cu);
        let x = input(&[tokens, heads, head_dim], 4, 1.0)?;
        let dy = input(&[tokens, heads, head_dim], 5, 1.0)?;
        let outputs = both(&["y", "dx"], reference, test, |d| {
            let tables = RopeTables::new(&pos, head_dim, 1e6, table_dtype, d)?;
            Ok(vec![
                rope_forward(&x.to_device(d)?, &tables)?,
                rope_backward(&dy.to_device(d)?, &tables)?,
            ])
        })?;
        let shape = format!(
            "{tokens}x{heads}x{head_dim}, {} docs, tables {table_dtype:?}",
            cu.len() - 1
        );
        c.push("rope", shape, dtype, tol, outputs)?;
    }

    let mut mlp_shapes = vec![(256, 8960), (3, 4864)];
    if opts.large {
        mlp_shapes.push((16384, 4864));
    }
    for (tokens, inter) in mlp_shapes {
        let g = input(&[tokens, inter], 6, 4.0)?;
        let u = input(&[tokens, inter], 7, 1.0)?;
        let dh = input(&[tokens, inter], 8, 1.0)?;
        let outputs = both(&["h", "dg", "du"], reference, test, |d| {
            let (g, u) = (g.to_device(d)?, u.to_device(d)?);
            let h = swiglu_forward(&g, &u)?;
            let (dg, du) = swiglu_backward(&dh.to_device(d)?, &g, &u)?;
            Ok(vec![h, dg, du])
        })?;
        c.push("swiglu", format!("{tokens}x{inter}"), dtype, tol, outputs)?;
    }
    Ok(())
}

/// Targets for `n` tokens: every fifth ignored, the rest spread over the vocabulary (the last
/// token id included).
fn targets(n: usize, vocab: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                IGNORE_INDEX
            } else if i % 7 == 0 {
                vocab as i64 - 1
            } else {
                (i * 7919 % vocab) as i64
            }
        })
        .collect()
}

fn losses(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    let tol = tolerance(dtype);
    let s = opts.seed * 1000 + 200;

    // The softmax/loss kernel alone, at the real vocabulary, with and without gradients.
    let mut rows_list = vec![64];
    if opts.large {
        rows_list.push(1024);
    }
    for rows in rows_list {
        let vocab = 151936;
        let logits = random(&[rows, vocab], s + 1, 8.0)?.to_dtype(dtype)?;
        let t = targets(rows, vocab);
        let outputs = both(
            &["loss", "d_logits", "loss (no grad)"],
            reference,
            test,
            |d| {
                let logits = logits.to_device(d)?;
                let (loss, d_logits) = softmax_cross_entropy(&logits, &t, Some(1.0 / 37.0))?;
                let (loss2, none) = softmax_cross_entropy(&logits, &t, None)?;
                if none.is_some() {
                    candle_core::bail!("softmax_cross_entropy: gradient without a scale");
                }
                Ok(vec![
                    loss.to_dtype(DType::F32)?,
                    d_logits.expect("asked"),
                    loss2.to_dtype(DType::F32)?,
                ])
            },
        )?;
        c.push(
            "softmax_cross_entropy",
            format!("{rows}x{vocab}"),
            dtype,
            tol,
            outputs,
        )?;
    }

    // The whole chunked head + loss (cuBLAS matmuls around the kernel, logits overwritten by
    // their gradient), chunk boundaries not dividing the token count.
    let mut shapes = vec![(300, 256, 32000, 128)];
    if opts.large {
        shapes.push((1100, 896, 151936, 512));
    }
    for (tokens, hidden, vocab, chunk) in shapes {
        let h = random(&[tokens, hidden], s + 2, 1.0)?.to_dtype(dtype)?;
        let w = random(&[vocab, hidden], s + 3, 0.1)?.to_dtype(dtype)?;
        let t = targets(tokens, vocab);
        let n_targets = t.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let names = ["loss sum", "per-token loss", "d_hidden", "d_weight"];
        let outputs = both(&names, reference, test, |d| {
            let out = linear_cross_entropy(
                &h.to_device(d)?,
                &w.to_device(d)?,
                &t,
                Some(1.0 / n_targets as f64),
                chunk,
            )?;
            Ok(vec![
                Tensor::new(&[out.loss_sum], d)?,
                out.per_token_loss.to_dtype(DType::F32)?,
                out.d_hidden.expect("asked"),
                out.d_weight.expect("asked"),
            ])
        })?;
        let shape = format!("{tokens} tokens x {hidden} -> {vocab}, chunks of {chunk}");
        c.push("linear_cross_entropy", shape, dtype, tol, outputs)?;
        if vocab > 32000 {
            continue;
        }
        // Per-token weights (train.loss_average = "sequences"): they scale the matmuls'
        // [chunk, hidden] operands around the kernel's unscaled d logits.
        let weights: Vec<f64> = (0..tokens)
            .map(|i| 1.0 / (n_targets as f64 * (1 + i % 7) as f64 / 4.0))
            .collect();
        let names = ["weighted loss sum", "d_hidden", "d_weight"];
        let outputs = both(&names, reference, test, |d| {
            let out = linear_cross_entropy_scaled_on_device(
                &h.to_device(d)?,
                &w.to_device(d)?,
                &t,
                Some(GradScale::PerToken(&weights)),
                chunk,
            )?;
            Ok(vec![
                out.loss_sum,
                out.d_hidden.expect("asked"),
                out.d_weight.expect("asked"),
            ])
        })?;
        let shape = format!("{tokens} tokens x {hidden} -> {vocab}, per-token weights");
        c.push("linear_cross_entropy", shape, dtype, tol, outputs)?;
    }
    Ok(())
}

/// The embedding table's gradient in f32 from rows of `dtype`, untied and with a tied head's
/// gradient as base: the kernel adds in the CPU's order, so the bits must agree.
fn embedding(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    let s = opts.seed * 1000 + 400;
    // (tokens, vocab, hidden, where dx and base start in their buffers): the GPU's 4-column
    // kernel, and its 1-column one for a hidden size (30) or an offset (2) that 4 does not
    // divide, of dx or of base.
    let mut shapes = vec![
        (512, 1000, 64, 0, 0),
        (300, 32000, 896, 0, 0),
        (97, 300, 30, 0, 0),
        (200, 500, 64, 2, 0),
        (200, 500, 64, 0, 2),
    ];
    if opts.large {
        shapes.push((16384, 151936, 1536, 0, 0));
    }
    // `[rows, cols]` from element `at` of `flat`, a view on the device itself (a copy would
    // start at 0).
    let view = |flat: &Tensor, d: &Device, at: usize, rows: usize, cols: usize| {
        flat.to_device(d)?
            .narrow(0, at, rows * cols)?
            .reshape((rows, cols))
    };
    for (tokens, vocab, hidden, dx_at, base_at) in shapes {
        let dx = random(&[tokens * hidden + dx_at], s + 1, 1.0)?.to_dtype(dtype)?;
        let base = random(&[vocab * hidden + base_at], s + 2, 1e-2)?;
        // Tokens from the first half of the vocabulary, frequent ones repeated, the last id too.
        let ids: Vec<u32> = (0..tokens)
            .map(|i| match i % 9 {
                0 => 13,
                4 => vocab as u32 - 1,
                _ => (i * 7919 % (vocab / 2)) as u32,
            })
            .collect();
        let outputs = both(&["d_embed", "d_embed + base"], reference, test, |d| {
            let dx = view(&dx, d, dx_at, tokens, hidden)?;
            let base = view(&base, d, base_at, vocab, hidden)?;
            Ok(vec![
                embedding_backward(&dx, &ids, vocab, None, DType::F32)?,
                embedding_backward(&dx, &ids, vocab, Some(&base), DType::F32)?,
            ])
        })?;
        let at = match (dx_at, base_at) {
            (0, 0) => String::new(),
            (x, b) => format!(", dx from element {x}, base from {b}"),
        };
        let shape = format!("{tokens} tokens into {vocab}x{hidden}{at}");
        c.push("embedding_backward", shape, dtype, 0.0, outputs)?;
    }
    Ok(())
}

/// The squared norm of a flat gradient (f64 on the device, for clipping): only the order of
/// the f64 additions of exact squares differs.
fn sum_of_squares(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    let s = opts.seed * 1000 + 500;
    let mut sizes = vec![1_000_003, 7];
    if opts.large {
        sizes.push(64 << 20);
    }
    for n in sizes {
        let x = random(&[n], s + 1, 1e-2)?.to_dtype(dtype)?;
        let outputs = both(&["sum of squares"], reference, test, |d| {
            Ok(vec![sum_of_squares_tensor(&x.to_device(d)?)?])
        })?;
        c.push("sum_of_squares", format!("{n}"), dtype, 1e-12, outputs)?;
    }
    Ok(())
}

/// A layer's gradients of `dtype` written into one padded f32 buffer, then added to an f32
/// accumulator (ZeRO-3's reduce-scatter staging): conversions and f32 sums, exact to the bit.
fn flat_gradients(c: &mut Checks, Run(reference, test, opts): Run, dtype: DType) -> Result<()> {
    let s = opts.seed * 1000 + 600;
    let shapes: [&[usize]; 3] = [&[1536], &[256, 1536], &[1037]];
    let pieces: Vec<Tensor> = (0u64..)
        .zip(shapes)
        .map(|(i, shape)| random(shape, s + i, 1.0)?.to_dtype(dtype))
        .collect::<Result<_>>()?;
    let len = pieces.iter().map(Tensor::elem_count).sum::<usize>() + 13;
    let acc = random(&[len], s + 9, 1.0)?;
    let outputs = both(&["flat", "acc + flat"], reference, test, |d| {
        let pieces: Vec<Tensor> = pieces
            .iter()
            .map(|p| p.to_device(d))
            .collect::<Result<_>>()?;
        let flat = flatten_into(&pieces, DType::F32, len)?;
        let sum = add_assign(acc.to_device(d)?, &flat)?;
        Ok(vec![flat, sum])
    })?;
    let shape = format!("{len} (3 pieces + 13 padding)");
    c.push("flat_gradients", shape, dtype, 0.0, outputs)?;
    Ok(())
}

/// Fused AdamW over flat f32 shards: the kernel must be bit-identical to the CPU loop.
fn adamw(c: &mut Checks, Run(reference, test, opts): Run) -> Result<()> {
    let s = opts.seed * 1000 + 300;
    let mut sizes = vec![1_000_003];
    if opts.large {
        sizes.push(64 << 20);
    }
    let step = AdamWStep {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 7,
        grad_scale: 0.73,
    };
    for n in sizes {
        let p = random(&[n], s + 1, 0.05)?;
        let g = random(&[n], s + 2, 1e-2)?;
        let m = random(&[n], s + 3, 1e-3)?;
        // Second moments are non-negative.
        let v = random(&[n], s + 4, 1e-5)?.abs()?;
        // Without clipping (the scale given), then clipped by a squared norm that the kernel
        // reads on the device and the CPU turns into the same coefficient.
        for clip in [None, Some((4.2, 1.0))] {
            let outputs = both(
                &["param", "exp_avg", "exp_avg_sq", "bf16 copy"],
                reference,
                test,
                |d| adamw_on(d, &[&p, &g, &m, &v], &step, clip),
            )?;
            let what = match clip {
                None => format!("{n} params"),
                Some((sq, max)) => {
                    format!("{n} params, clipped (norm^2 {sq} on the device, max {max})")
                }
            };
            c.push("adamw", what, DType::F32, 0.0, outputs)?;
        }
    }
    // A group's state as training holds it, with stretches weight decay skips
    // (`train.no_decay`: one launch per stretch on CUDA), clipped on the device.
    let n = 1_000_003;
    let [p, g, m, v] = [1, 2, 3, 4].map(|k| random(&[n], s + 10 + k, 0.05));
    let (p, g, m, v) = (p?, g?, m?, v?.abs()?);
    let state = Tensor::cat(&[&p, &m, &v], 0)?;
    let skip = [0..17, 1000..5000, 5000..5003, 999_000..n];
    let outputs = both(&["state", "bf16 copy"], reference, test, |d| {
        let (st, grad) = (state.to_device(d)?.copy()?, g.to_device(d)?);
        let norm_sq = Tensor::new(&[4.2f64], d)?;
        let clip = crate::Clip {
            norm_sq: &norm_sq,
            max_norm: 1.0,
        };
        if d.is_cpu() {
            crate::adamw_update_state(&st, &grad, &step, &skip, Some(clip), None)?;
            let bf = st.narrow(0, 0, n)?.to_dtype(DType::BF16)?;
            return Ok(vec![st, bf]);
        }
        let bf = Tensor::full(f32::NAN, n, d)?.to_dtype(DType::BF16)?;
        crate::adamw_update_state(&st, &grad, &step, &skip, Some(clip), Some(&bf))?;
        Ok(vec![st, bf])
    })?;
    let what = format!("{n} params in [master | m | v], 4 stretches without decay, clipped");
    c.push("adamw", what, DType::F32, 0.0, outputs)?;
    Ok(())
}

/// One AdamW step on `device`: the CPU loop for the CPU, the kernel on a CUDA device (its bf16
/// copy poisoned with NaN first). Returns param, exp_avg, exp_avg_sq and the bf16 copy.
fn adamw_on(
    device: &Device,
    inputs: &[&Tensor; 4],
    step: &AdamWStep,
    clip: Option<(f64, f64)>,
) -> Result<Vec<Tensor>> {
    let n = inputs[0].elem_count();
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        let [p, g, m, v] = inputs.map(|t| t.to_device(device));
        let (p, g, m, v) = (p?, g?, m?, v?);
        // Fresh copies: the update is in place and must not touch the inputs' storage.
        let (p, m, v) = (p.copy()?, m.copy()?, v.copy()?);
        let bf = Tensor::full(f32::NAN, n, device)?.to_dtype(DType::BF16)?;
        let norm_sq = clip.map(|(sq, _)| Tensor::new(&[sq], device)).transpose()?;
        let clip = clip
            .zip(norm_sq.as_ref())
            .map(|((_, max_norm), norm_sq)| crate::Clip { norm_sq, max_norm });
        crate::cuda::adamw::adamw_update_clipped(&p, &g, &m, &v, step, clip, Some(&bf))?;
        return Ok(vec![p, m, v, bf]);
    }
    let vec = |t: &Tensor| t.to_device(&Device::Cpu)?.to_vec1::<f32>();
    let (mut p, g, mut m, mut v) = (
        vec(inputs[0])?,
        vec(inputs[1])?,
        vec(inputs[2])?,
        vec(inputs[3])?,
    );
    let step = match clip {
        Some((sq, max_norm)) => AdamWStep {
            grad_scale: crate::clip_coefficient(f64::sqrt(sq), max_norm),
            ..*step
        },
        None => *step,
    };
    adamw_update(&mut p, &g, &mut m, &mut v, &step);
    let p = Tensor::from_vec(p, n, device)?;
    let bf = p.to_dtype(DType::BF16)?;
    Ok(vec![
        p,
        Tensor::from_vec(m, n, device)?,
        Tensor::from_vec(v, n, device)?,
        bf,
    ])
}

#[cfg(test)]
mod tests;
