//! `limo bench kernels` (and `limo bench step`, in cmd_bench_step.rs; `limo bench generate`, in
//! cmd_bench_generate.rs): times each of our CUDA kernels at training shapes (Qwen2.5-32B: hidden
//! 5120, MLP 27648, 40/8 heads of 128, vocabulary 152064, 16k tokens) with CUDA events: warm-up
//! launches first, then the median of the repeats, the inputs rotated over several buffer sets
//! so that no launch finds its inputs in L2. Memory-bound kernels report GB/s (bytes each must
//! move at least once), attention reports TFLOP/s (causal, the useful half of the scores).

use clap::{Args, Subcommand};

// Declared here, beside its subcommand, rather than in main.rs.
#[path = "cmd_bench_generate.rs"]
mod cmd_bench_generate;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time each CUDA kernel (needs a GPU and a build with `--features cuda`).
    Kernels(KernelArgs),
    /// Time whole training steps of a Qwen2.5 shape on random weights, by phase, with peak
    /// memory (CPU or GPU; --simulate-world plays one rank of a larger job).
    Step(crate::cmd_bench_step::StepArgs),
    /// Time batched greedy generation (prefill, then KV-cache decode steps) of a Qwen2.5 shape
    /// on random weights: tokens/s (CPU or GPU).
    Generate(cmd_bench_generate::GenerateArgs),
}

#[derive(Args)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct KernelArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Launches before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed launches; the median is reported.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Input sets the launches rotate over.
    #[arg(long, default_value_t = 3)]
    rotate: usize,
    /// Tokens per step (the flattened batch).
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    /// Only this kernel.
    #[arg(long, default_value = "all", value_parser = OPS)]
    op: String,
    /// Attention query heads.
    #[arg(long, default_value_t = 40)]
    q_heads: usize,
    /// Attention key/value heads.
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    /// Attention head dimension (64 or 128).
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Attention over this many equal-length packed documents (default: one, then 4k-token
    /// documents).
    #[arg(long)]
    docs: Option<usize>,
}

/// Values of `--op`.
const OPS: [&str; 9] = [
    "all",
    "rms_norm",
    "rope",
    "swiglu",
    "cross_entropy",
    "adamw",
    "embedding",
    "attention",
    "decode_attention",
];

// Without the cuda feature the command stops at open_gpu and reads no option but --device.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl KernelArgs {
    fn wants(&self, op: &str) -> bool {
        self.op == "all" || self.op == op
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kernels(args) => {
            let gpu = crate::cmd_doctor::open_gpu(args.device)?;
            kernels(&gpu, &args)
        }
        BenchCommand::Step(args) => crate::cmd_bench_step::run(args),
        BenchCommand::Generate(args) => cmd_bench_generate::run(args),
    }
}

#[cfg(not(feature = "cuda"))]
fn kernels(_gpu: &candle_core::Device, _args: &KernelArgs) -> anyhow::Result<()> {
    unreachable!("open_gpu fails without the cuda feature")
}

#[cfg(feature = "cuda")]
fn kernels(gpu: &candle_core::Device, args: &KernelArgs) -> anyhow::Result<()> {
    cuda::run(gpu, args)
}

#[cfg(feature = "cuda")]
mod cuda {
    use anyhow::{ensure, Result};
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::{DType, Device, Tensor};
    use limo_ops::linear_cross_entropy::softmax_cross_entropy;
    use limo_ops::{
        embedding_backward, rms_norm_backward, rms_norm_forward, rope_backward, rope_forward,
        swiglu_backward, swiglu_forward, AdamWStep, RopeTables,
    };

    use super::KernelArgs;
    use crate::out::outln;

    const HIDDEN: usize = 5120;
    const MLP: usize = 27648;
    const Q_HEADS: usize = 40;
    const HEAD_DIM: usize = 128;
    const VOCAB: usize = 152064;
    /// Rows of one loss chunk (the trainer's chunk size).
    const LOSS_CHUNK: usize = 1024;

    /// What a kernel's time is divided by.
    enum Work {
        Bytes(f64),
        Flops(f64),
    }

    struct Bench<'a> {
        gpu: &'a Device,
        args: &'a KernelArgs,
    }

    impl Bench<'_> {
        /// Median milliseconds of `f(i)` (i picks the input set) between two CUDA events.
        fn time(&self, mut f: impl FnMut(usize) -> candle_core::Result<()>) -> Result<f64> {
            let stream = self.gpu.as_cuda_device()?.cuda_stream();
            let ctx = stream.context();
            for i in 0..self.args.warmup {
                f(i)?;
            }
            let mut times = Vec::with_capacity(self.args.repeats);
            for i in 0..self.args.repeats {
                let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                start.record(&stream)?;
                f(self.args.warmup + i)?;
                end.record(&stream)?;
                times.push(start.elapsed_ms(&end)? as f64);
            }
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        }

        /// `rotate` sets of bf16 inputs of these shapes, uniform in [-scale, scale).
        fn inputs(&self, shapes: &[&[usize]], scale: f64) -> Result<Vec<Vec<Tensor>>> {
            (0..self.args.rotate.max(1))
                .map(|_| {
                    shapes
                        .iter()
                        .map(|s| {
                            Ok(Tensor::rand(-scale as f32, scale as f32, *s, self.gpu)?
                                .to_dtype(DType::BF16)?)
                        })
                        .collect()
                })
                .collect()
        }

        fn report(&self, name: &str, shape: &str, ms: f64, work: Work) -> Result<()> {
            let rate = match work {
                Work::Bytes(b) => format!("{:>8.0} GB/s", b / (ms * 1e-3) / 1e9),
                Work::Flops(f) => format!("{:>8.1} TFLOP/s", f / (ms * 1e-3) / 1e12),
            };
            outln!("{name:<26} {shape:<40} {ms:>9.3} ms  {rate}")
        }
    }

    pub fn run(gpu: &Device, args: &KernelArgs) -> Result<()> {
        ensure!(args.repeats > 0, "--repeats must be at least 1");
        let b = Bench { gpu, args };
        let n = args.tokens;
        outln!(
            "bf16 inputs, median of {} launches after {} warm-up, inputs rotated over {} sets",
            args.repeats,
            args.warmup,
            args.rotate
        )?;
        outln!(
            "{:<26} {:<40} {:>12}  throughput",
            "kernel",
            "shape",
            "median"
        )?;
        type Op = fn(&Bench, usize) -> Result<()>;
        let ops: [(&str, Op); 8] = [
            ("rms_norm", rms_norm),
            ("rope", rope),
            ("swiglu", swiglu),
            ("cross_entropy", |b, _| cross_entropy(b)),
            ("adamw", |b, _| adamw(b)),
            ("embedding", embedding),
            ("attention", attention),
            ("decode_attention", |b, _| decode_attention(b)),
        ];
        // A kernel that fails (a launch refused) is reported and the next one is timed.
        let mut failed = Vec::new();
        for (name, op) in ops.into_iter().filter(|(name, _)| args.wants(name)) {
            if let Err(e) = op(&b, n) {
                let e = e.to_string();
                outln!("{name:<26} error: {}", e.lines().next().unwrap_or_default())?;
                failed.push(name);
            }
        }
        ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
        Ok(())
    }

    /// Bytes per bf16 element.
    const BF: f64 = 2.0;

    /// RMSNorm: reads x and writes y (w and rstd are small); the backward also reads dy.
    fn rms_norm(b: &Bench, n: usize) -> Result<()> {
        let sets = b.inputs(&[&[n, HIDDEN], &[HIDDEN], &[n, HIDDEN]], 1.0)?;
        let shape = format!("{n}x{HIDDEN}");
        let elems = (n * HIDDEN) as f64;
        let ms = b.time(|i| {
            let s = &sets[i % sets.len()];
            rms_norm_forward(&s[0], &s[1], 1e-6).map(drop)
        })?;
        b.report(
            "rms_norm forward",
            &shape,
            ms,
            Work::Bytes(2.0 * elems * BF),
        )?;
        let rstds: Vec<Tensor> = sets
            .iter()
            .map(|s| Ok(rms_norm_forward(&s[0], &s[1], 1e-6)?.1))
            .collect::<Result<_>>()?;
        let ms = b.time(|i| {
            let s = &sets[i % sets.len()];
            rms_norm_backward(&s[2], &s[0], &s[1], &rstds[i % sets.len()]).map(drop)
        })?;
        b.report(
            "rms_norm backward",
            &shape,
            ms,
            Work::Bytes(3.0 * elems * BF),
        )?;
        Ok(())
    }

    /// RoPE on the queries: reads x and writes y, plus the cos/sin tables.
    fn rope(b: &Bench, n: usize) -> Result<()> {
        let positions: Vec<u32> = (0..n as u32).map(|p| p % 4096).collect();
        let tables = RopeTables::new(&positions, HEAD_DIM, 1e6, DType::BF16, b.gpu)?;
        let sets = b.inputs(&[&[n, Q_HEADS, HEAD_DIM]], 1.0)?;
        let shape = format!("{n}x{Q_HEADS}x{HEAD_DIM}");
        let bytes = (2 * n * Q_HEADS * HEAD_DIM + 2 * n * HEAD_DIM) as f64 * BF;
        let ms = b.time(|i| rope_forward(&sets[i % sets.len()][0], &tables).map(drop))?;
        b.report("rope forward", &shape, ms, Work::Bytes(bytes))?;
        let ms = b.time(|i| rope_backward(&sets[i % sets.len()][0], &tables).map(drop))?;
        b.report("rope backward", &shape, ms, Work::Bytes(bytes))?;
        Ok(())
    }

    /// SwiGLU: forward reads g, u and writes h; backward reads dh, g, u and writes dg, du.
    fn swiglu(b: &Bench, n: usize) -> Result<()> {
        let sets = b.inputs(&[&[n, MLP], &[n, MLP], &[n, MLP]], 4.0)?;
        let shape = format!("{n}x{MLP}");
        let elems = (n * MLP) as f64;
        let ms = b.time(|i| {
            let s = &sets[i % sets.len()];
            swiglu_forward(&s[0], &s[1]).map(drop)
        })?;
        b.report("swiglu forward", &shape, ms, Work::Bytes(3.0 * elems * BF))?;
        let ms = b.time(|i| {
            let s = &sets[i % sets.len()];
            swiglu_backward(&s[2], &s[0], &s[1]).map(drop)
        })?;
        b.report("swiglu backward", &shape, ms, Work::Bytes(5.0 * elems * BF))?;
        Ok(())
    }

    /// Softmax cross-entropy of one loss chunk: two reads of the logits, one write of d_logits
    /// (the training path writes it in place; this times the out-of-place form).
    fn cross_entropy(b: &Bench) -> Result<()> {
        let sets = b.inputs(&[&[LOSS_CHUNK, VOCAB]], 8.0)?;
        let targets: Vec<i64> = (0..LOSS_CHUNK)
            .map(|i| {
                if i % 9 == 0 {
                    limo_ops::IGNORE_INDEX
                } else {
                    (i * 7919 % VOCAB) as i64
                }
            })
            .collect();
        let shape = format!("{LOSS_CHUNK}x{VOCAB}");
        let elems = (LOSS_CHUNK * VOCAB) as f64;
        let ms = b.time(|i| {
            softmax_cross_entropy(&sets[i % sets.len()][0], &targets, Some(1e-4)).map(drop)
        })?;
        b.report(
            "softmax_cross_entropy",
            &shape,
            ms,
            Work::Bytes(3.0 * elems * BF),
        )?;
        Ok(())
    }

    /// AdamW over a 64M-parameter flat f32 shard: reads p, g, m, v; writes p, m, v and bf16.
    fn adamw(b: &Bench) -> Result<()> {
        let len = 64 << 20;
        let shards: Vec<Vec<Tensor>> = (0..b.args.rotate.max(1))
            .map(|_| {
                (0..4)
                    .map(|k| {
                        let t = Tensor::rand(0f32, 1e-2, len, b.gpu)?;
                        Ok(if k == 1 { (t * 0.1)? } else { t })
                    })
                    .chain(std::iter::once(Ok(Tensor::zeros(len, DType::BF16, b.gpu)?)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let mut step = AdamWStep {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: 1,
            grad_scale: 0.5,
        };
        let ms = b.time(|i| {
            let s = &shards[i % shards.len()];
            step.t = i as u64 + 1;
            limo_ops::cuda::adamw::adamw_update(&s[0], &s[1], &s[2], &s[3], &step, Some(&s[4]))
        })?;
        let shape = format!("{len} params");
        b.report(
            "adamw (+ bf16 copy)",
            &shape,
            ms,
            Work::Bytes(len as f64 * 30.0),
        )?;
        Ok(())
    }

    /// The embedding table's gradient (f32, a tied head's gradient as base) from `n` bf16 rows:
    /// our kernel, then candle's index_add that it replaces, on the same inputs. Bytes: base
    /// read, table written, the rows read once.
    fn embedding(b: &Bench, n: usize) -> Result<()> {
        let sets = b.inputs(&[&[n, HIDDEN]], 1.0)?;
        let base = Tensor::rand(-1e-2f32, 1e-2, (VOCAB, HIDDEN), b.gpu)?;
        // Token ids with repeats and a frequent one, as text has.
        let ids: Vec<u32> = (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    13
                } else {
                    (i * 7919 % VOCAB) as u32
                }
            })
            .collect();
        let shape = format!("{n} tokens into {VOCAB}x{HIDDEN}");
        let bytes = (2 * VOCAB * HIDDEN * 4 + n * HIDDEN * 2) as f64;
        let ms = b.time(|i| {
            embedding_backward(
                &sets[i % sets.len()][0],
                &ids,
                VOCAB,
                Some(&base),
                DType::F32,
            )
            .map(drop)
        })?;
        b.report("embedding backward", &shape, ms, Work::Bytes(bytes))?;
        let ids_t = Tensor::from_slice(&ids, n, b.gpu)?;
        let ms = b.time(|i| {
            let dx = sets[i % sets.len()][0].to_dtype(DType::F32)?;
            let sum =
                Tensor::zeros((VOCAB, HIDDEN), DType::F32, b.gpu)?.index_add(&ids_t, &dx, 0)?;
            (sum + &base).map(drop)
        })?;
        b.report("  (candle index_add + add)", &shape, ms, Work::Bytes(bytes))?;
        Ok(())
    }

    /// Decode attention (kernels/decode_attention.cu) over full caches: memory-bound, so GB/s
    /// of the keys and values it must read once (queries and outputs are negligible).
    fn decode_attention(b: &Bench) -> Result<()> {
        use limo_ops::decode_attention::{decode_attention, CacheIndex};
        // (q heads, kv heads, sequences, keys each): 32B and 1.5B heads at eval batch sizes,
        // and one long cache (the split-K case).
        for (q_heads, kv_heads, batch, len) in
            [(Q_HEADS, 8, 32, 4096), (12, 2, 32, 1024), (12, 2, 1, 16384)]
        {
            let cache = [batch, kv_heads, len, HEAD_DIM];
            let sets = b.inputs(&[&cache, &cache, &[batch, q_heads, HEAD_DIM]], 1.0)?;
            let slots: Vec<usize> = (0..batch).collect();
            let index = CacheIndex::new(&slots, &vec![len; batch], b.gpu)?;
            let scale = 1.0 / (HEAD_DIM as f64).sqrt();
            let ms = b.time(|i| {
                let s = &sets[i % sets.len()];
                decode_attention(&s[2], &s[0], &s[1], &index, scale).map(drop)
            })?;
            let shape = format!("{batch} seqs x {len} keys, {q_heads}/{kv_heads}x{HEAD_DIM}");
            let bytes = 2.0 * (batch * kv_heads * len * HEAD_DIM) as f64 * BF;
            b.report("decode_attention", &shape, ms, Work::Bytes(bytes))?;
        }
        qkv_rope_append(b)
    }

    /// A decode step's biases, RoPE and cache append (kernels/rope.cu) for 32 sequences, fused,
    /// then the six launches it replaced: the time of launches this small is mostly the host's.
    fn qkv_rope_append(b: &Bench) -> Result<()> {
        use limo_ops::decode_attention::{
            kv_cache_zeros, qkv_rope_append, qkv_rope_append_unfused, CacheIndex, NewRows,
        };
        let (batch, cap) = (32, 2048);
        for (q_heads, kv_heads) in [(12, 2), (Q_HEADS, 8)] {
            let (qw, kw) = (q_heads * HEAD_DIM, kv_heads * HEAD_DIM);
            let sets = b.inputs(&[&[batch, qw], &[batch, kw], &[batch, kw]], 1.0)?;
            let bias = b.inputs(&[&[qw], &[kw], &[kw]], 0.1)?.swap_remove(0);
            let cache = kv_cache_zeros(batch, kv_heads, cap, HEAD_DIM, DType::BF16, b.gpu)?;
            let slots: Vec<usize> = (0..batch).collect();
            let positions: Vec<usize> = (0..batch).map(|i| 100 + 37 * i).collect();
            let at = CacheIndex::new(&slots, &positions, b.gpu)?;
            let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            let rope = RopeTables::new(&pos, HEAD_DIM, 1e6, DType::BF16, b.gpu)?;
            let shape = format!("{batch} rows, {q_heads}/{kv_heads}x{HEAD_DIM}");
            let bytes = (2 * batch * (qw + 2 * kw)) as f64 * BF;
            for (name, fused) in [
                ("qkv_rope_append", true),
                ("  (unfused: 6 launches)", false),
            ] {
                let ms = b.time(|i| {
                    let s = &sets[i % sets.len()];
                    let rows = NewRows {
                        lin: [&s[0], &s[1], &s[2]],
                        bias: [&bias[0], &bias[1], &bias[2]],
                        rope: &rope,
                    };
                    let q = if fused {
                        qkv_rope_append(&rows, &cache, &at)
                    } else {
                        qkv_rope_append_unfused(&rows, &cache, &at)
                    };
                    q.map(drop)
                })?;
                b.report(name, &shape, ms, Work::Bytes(bytes))?;
            }
        }
        Ok(())
    }

    // ---- flash attention plugs in here ----
    // The flash-attention kernels (limo_ops::cuda::flash_attention, written alongside these)
    // are timed with the same harness: 16k tokens packed as documents, 40/8 heads of 128 by
    // default; scripts/gpu/attention_vs_torch.py passes its shapes (--q-heads ... --docs).
    // "flash_attention forward" is the default path; on a 9.x GPU the rows
    // "flash_attention fwd sm80" / "... sm90" time each forward kernel explicitly, and
    // "flash_attention bwd sm80" / "... sm90" each atomic backward kernel.
    /// Whether to time the sm80 and sm90 attention kernels explicitly: on compute capability
    /// 9.x, unless `LIMO_FLASH_PATH=sm80` (set by scripts/gpu/check.sh when the sm90 kernels
    /// failed the doctor: a faulting or hanging kernel would cost the stage its other rows).
    fn both_paths(b: &Bench) -> Result<bool> {
        use limo_ops::cuda::flash_attention::{flash_path_requested, FlashPath};
        if !limo_ops::cuda::runs_sm90a(b.gpu.as_cuda_device()?)? {
            return Ok(false);
        }
        if flash_path_requested()? == Some(FlashPath::Sm80) {
            outln!("# LIMO_FLASH_PATH=sm80: the explicit sm90 attention rows are skipped")?;
            return Ok(false);
        }
        Ok(true)
    }

    fn attention(b: &Bench, n: usize) -> Result<()> {
        use limo_ops::cuda::flash_attention::{flash_attention_backward, flash_attention_forward};
        let (q_heads, kv_heads, head_dim) = (b.args.q_heads, b.args.kv_heads, b.args.head_dim);
        ensure!(
            kv_heads > 0 && q_heads % kv_heads == 0,
            "--q-heads must be a multiple of --kv-heads"
        );
        let doc_lens: Vec<usize> = match b.args.docs {
            Some(d) => vec![n.div_ceil(d.max(1))],
            None => vec![n, 4096],
        };
        for doc in doc_lens {
            let cu: Vec<usize> = (0..n).step_by(doc).chain(std::iter::once(n)).collect();
            let sets = b.inputs(
                &[
                    &[n, q_heads, head_dim],
                    &[n, kv_heads, head_dim],
                    &[n, kv_heads, head_dim],
                    &[n, q_heads, head_dim],
                ],
                1.0,
            )?;
            let scale = 1.0 / (head_dim as f64).sqrt();
            // Causal: each document does len*(len+1)/2 score entries, 2 matmuls of 2 flops.
            let pairs: f64 = cu
                .windows(2)
                .map(|w| {
                    let l = (w[1] - w[0]) as f64;
                    l * (l + 1.0) / 2.0
                })
                .sum();
            let fwd_flops = 4.0 * pairs * (q_heads * head_dim) as f64;
            let shape = format!("{n} tok, docs of {doc}, {q_heads}/{kv_heads}x{head_dim}");
            let ms = b.time(|i| {
                let s = &sets[i % sets.len()];
                flash_attention_forward(&s[0], &s[1], &s[2], &cu, scale).map(drop)
            })?;
            b.report(
                "flash_attention forward",
                &shape,
                ms,
                Work::Flops(fwd_flops),
            )?;
            // On compute capability 9.x the default forward is the sm90 kernel (wgmma + TMA,
            // unless LIMO_FLASH_PATH says otherwise): time both kernels explicitly too.
            if both_paths(b)? {
                use limo_ops::cuda::flash_attention::{flash_attention_forward_on, FlashPath};
                for path in [FlashPath::Sm80, FlashPath::Sm90] {
                    let ms = b.time(|i| {
                        let s = &sets[i % sets.len()];
                        flash_attention_forward_on(&s[0], &s[1], &s[2], &cu, scale, path).map(drop)
                    })?;
                    b.report(
                        &format!("flash_attention fwd {path}"),
                        &shape,
                        ms,
                        Work::Flops(fwd_flops),
                    )?;
                }
            }
            let saved: Vec<(Tensor, Tensor)> = sets
                .iter()
                .map(|s| Ok(flash_attention_forward(&s[0], &s[1], &s[2], &cu, scale)?))
                .collect::<Result<_>>()?;
            // The default backward both ways (deterministic, atomic); on 9.x, where the atomic
            // one is the sm90 kernel, each atomic kernel explicitly too.
            use limo_ops::cuda::flash_attention::FlashPath;
            let mut runs = vec![
                ("flash_attention bwd (det.)".to_string(), true, None),
                ("flash_attention bwd".to_string(), false, None),
            ];
            if both_paths(b)? {
                for path in [FlashPath::Sm80, FlashPath::Sm90] {
                    runs.push((format!("flash_attention bwd {path}"), false, Some(path)));
                }
            }
            for (name, deterministic, path) in runs {
                let ms = b.time(|i| {
                    let s = &sets[i % sets.len()];
                    let (out, lse) = &saved[i % sets.len()];
                    flash_attention_backward(
                        &s[3],
                        &s[0],
                        &s[1],
                        &s[2],
                        out,
                        lse,
                        &cu,
                        scale,
                        deterministic,
                        path,
                    )
                    .map(drop)
                })?;
                // Backward: 5 matmuls of the forward's size (S, dP, dV, dQ, dK) = 2.5x.
                b.report(&name, &shape, ms, Work::Flops(2.5 * fwd_flops))?;
            }
        }
        Ok(())
    }
}
