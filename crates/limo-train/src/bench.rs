//! `limo bench step`: the real training step (the ZeRO-3 code, activation checkpointing, the
//! chunked loss, clipping and AdamW, [`optimizer_step`]) on random weights of a Qwen2.5 shape
//! and one synthetic batch, timed as a whole and by phase ([`crate::profile`]).
//!
//! Weights are generated where they live, slice by slice: a rank's value at a flat offset is a
//! hash of the seed and the offset, so any rank of any world size holds its slice of the same
//! model without the whole existing anywhere. `simulate` plays one rank of a larger job over
//! [`SimulatedComm`]: that rank's memory and compute, meaningless numbers.

use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use limo_dist::comm::Communicator;

use limo_dist::{SimulatedComm, SoloComm};
use limo_model::init::preset_config;
use limo_model::{Batch, Qwen2Config};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{Checkpointing, OptimizerOffload, TrainSection};
use crate::optim::{master_dtype, Flat};
use crate::profile::{PhaseTimes, PHASES};
use crate::trainer::{optimizer_step, StepTotals};
use crate::zero3::groups::groups;
use crate::zero3::plan::{plan_with_offload, Estimate, Hardware, Offload, Workload};
use crate::zero3::{ShardedModel, StateBytes};

const GIB: f64 = (1u64 << 30) as f64;

/// What to measure.
#[derive(Debug, Clone)]
pub struct StepBench {
    /// A Qwen2.5 shape: tiny, 0.5b, 1.5b, 3b, 7b, 14b, 32b.
    pub shape: String,
    /// Keep only the first K decoder layers.
    pub layers: Option<usize>,
    /// Tokens of the one micro-batch.
    pub tokens: usize,
    /// Documents the tokens are split into (1: one long sequence, the LIMO case).
    pub docs: usize,
    pub dtype: DType,
    pub warmup: usize,
    pub steps: usize,
    /// Play rank `.1` of a `.0`-way ZeRO-3 job.
    pub simulate: Option<(usize, usize)>,
    pub seed: u64,
    /// lr, clipping, loss chunk, checkpointing, Adam settings (as `limo train` reads them).
    pub train: TrainSection,
    /// Peak dense TFLOP/s of the device, for MFU (`None`: from the device name, if known).
    pub peak_tflops: Option<f64>,
    /// A memory cap the caller enforced, reported beside the plan's estimate.
    pub mem_cap: Option<u64>,
}

/// Device memory as the CUDA allocator and the driver report it (see `device_memory`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceMemory {
    /// High-water mark of memory in use by allocations.
    pub allocator_high_gib: f64,
    /// High-water mark of memory the allocator held from the driver.
    pub reserved_high_gib: f64,
    /// Memory in use on the device (cuMemGetInfo: total - free), at the end of the run.
    pub driver_used_gib: f64,
    pub driver_total_gib: f64,
    /// What the run itself holds on the device: `driver_used_gib` less the block `--mem-cap`
    /// takes. The CUDA context, cuBLAS's and NCCL's buffers and the pool's reserve (which keeps
    /// freed memory, so at the end it is at its high mark): what must fit in a GPU, and what
    /// `limo plan`'s total (its workspace line included) estimates.
    pub process_gib: f64,
}

/// Reads and resets the device's memory statistics: how `limo bench step` learns peak memory.
pub trait MemoryProbe {
    /// Forget the high-water marks (after set-up, before the steps).
    fn reset_peak(&self) -> anyhow::Result<()>;
    /// Called with `true` before the first timed step and `false` after the last: where a
    /// profiler's range may start and stop (`limo bench step --profile-range`).
    fn timed_steps(&self, _started: bool) -> anyhow::Result<()> {
        Ok(())
    }
    fn read(&self) -> anyhow::Result<DeviceMemory>;
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Stats {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    /// Mean seconds per step.
    pub seconds: f64,
    /// Share of the profiled step.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeakMemory {
    /// The process's peak resident set (VmHWM): the device memory of a CPU run.
    pub host_rss_gib: f64,
    #[serde(flatten)]
    pub device: Option<DeviceMemory>,
    /// `limo plan`'s per-GPU estimate for this run (world size, tokens, checkpointing).
    pub plan_estimate_gib: f64,
    pub mem_cap_gib: Option<f64>,
}

/// Everything `limo bench step` prints and writes as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub shape: String,
    pub layers: usize,
    pub params: usize,
    pub tokens: usize,
    pub docs: usize,
    /// Micro-batches per step (the same batch each time): train.grad_accum, or what
    /// train.global_batch_size makes of it at this world size.
    pub grad_accum: usize,
    pub dtype: String,
    pub device: String,
    pub world: usize,
    pub rank: usize,
    pub simulated: bool,
    pub activation_checkpointing: bool,
    /// The first this many of the `layers` are checkpointed (all of them by default).
    pub checkpointed_layers: usize,
    /// With checkpointing, the attention recomputed too (else its output is kept).
    pub recompute_attention: bool,
    /// Master weights and Adam moments in host memory (`train.optimizer_offload = "cpu"`).
    pub optimizer_offload: bool,
    pub loss_chunk: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Seconds of set-up: generating the slices and placing them on the device.
    pub setup_s: f64,
    /// Wall-clock seconds per timed step (the device finished at the end of each).
    pub step_s: Stats,
    pub tokens_per_s: f64,
    /// Matmul parameters (all linear weights and the head; embedding lookup excluded).
    pub n_matmul_params: usize,
    /// Model FLOPs of one step on this rank, by the peer's formula.
    pub flops_per_step: f64,
    pub flops_formula: &'static str,
    pub model_tflops: f64,
    pub peak_tflops: Option<f64>,
    pub peak_source: String,
    pub mfu: Option<f64>,
    pub phases: Vec<PhaseReport>,
    /// This rank's state (its slices), bytes by kind.
    pub state_bytes: StateBytes,
    pub state_bytes_total: usize,
    pub peak_mem: PeakMemory,
    /// Loss of every step, warm-up included (it falls: the same batch every step).
    pub losses: Vec<f64>,
}

/// The model config of a shape, truncated to `layers`.
pub fn shape_config(shape: &str, layers: Option<usize>) -> anyhow::Result<Qwen2Config> {
    let mut config = preset_config(shape)?;
    if let Some(layers) = layers {
        if layers == 0 {
            bail!("--layers must be at least 1");
        }
        config["num_hidden_layers"] = layers.into();
        config["max_window_layers"] = layers.into();
    }
    Ok(Qwen2Config::from_json(&config.to_string())?)
}

/// Rank `rank`'s slices (of `world`) of every group of a random model in `master` dtype: norms
/// 1, biases 0, matrices uniform with transformers' standard deviation 0.02.
pub fn random_shards(
    cfg: &Qwen2Config,
    master: DType,
    world: usize,
    rank: usize,
    seed: u64,
) -> Vec<Flat> {
    let half_width = 0.02f64 * 3f64.sqrt();
    let mut base = 0u64;
    groups(cfg)
        .iter()
        .map(|group| {
            let want = group.shard_range(world, rank);
            let mut values = vec![0f32; want.len()];
            for (spec, at) in group.params.iter().zip(group.offsets()) {
                let (start, end) = (at.start.max(want.start), at.end.min(want.end));
                if start >= end {
                    continue;
                }
                let out = &mut values[start - want.start..end - want.start];
                if spec.name.ends_with("norm.weight") {
                    out.fill(1.0);
                } else if !spec.name.ends_with(".bias") {
                    let first = base + start as u64;
                    out.par_chunks_mut(1 << 16)
                        .enumerate()
                        .for_each(|(c, chunk)| {
                            let at = first + (c << 16) as u64;
                            for (i, v) in chunk.iter_mut().enumerate() {
                                let h = splitmix64(seed ^ splitmix64(at + i as u64));
                                let unit = (h >> 40) as f64 / (1u64 << 24) as f64;
                                *v = ((2.0 * unit - 1.0) * half_width) as f32;
                            }
                        });
                }
            }
            base += group.numel() as u64;
            match master {
                DType::F64 => Flat::F64(values.into_iter().map(f64::from).collect()),
                _ => Flat::F32(values),
            }
        })
        .collect()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `tokens` random token ids in `docs` documents (as rows) of near-equal length, every token a
/// target.
pub fn synthetic_batch(
    vocab: usize,
    tokens: usize,
    docs: usize,
    seed: u64,
) -> anyhow::Result<Batch> {
    if docs == 0 || docs > tokens {
        bail!("--docs must be between 1 and --tokens ({tokens}), got {docs}");
    }
    // The kernels count a micro-batch's tokens in 32-bit ints (as `limo train` checks).
    if tokens > i32::MAX as usize {
        bail!("--tokens {tokens} is more than limo handles ({})", i32::MAX);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let rows: Vec<Vec<u32>> = (0..docs)
        .map(|d| {
            let len = tokens / docs + usize::from(d < tokens % docs);
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect();
    let labels: Vec<Vec<i64>> = rows
        .iter()
        .map(|r| r.iter().map(|&t| i64::from(t)).collect())
        .collect();
    Ok(Batch::from_rows(&rows, &labels, None)?)
}

/// Matmul parameters and model FLOPs of one step over `batch` (the peer's formula: 6 per
/// matmul weight per token, plus causal attention 6 * L * q_dim * sum of document lengths²).
pub fn model_flops(cfg: &Qwen2Config, batch: &Batch) -> (usize, f64) {
    let (h, i, l, v) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        cfg.vocab_size,
    );
    let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
    let n_mm = l * (h * q + 2 * h * kv + q * h + 3 * h * i) + v * h;
    let squares: f64 = batch
        .cu_seqlens
        .windows(2)
        .map(|w| ((w[1] - w[0]) as f64).powi(2))
        .sum();
    let flops = 6.0 * n_mm as f64 * batch.tokens() as f64 + 6.0 * (l * q) as f64 * squares;
    (n_mm, flops)
}

/// Peak dense bf16 TFLOP/s of a GPU known by name (for MFU), and where the figure comes from.
pub fn known_peak(device_name: &str) -> Option<(f64, &'static str)> {
    let name = device_name.to_uppercase();
    if name.contains("H100") || name.contains("H200") || name.contains("H800") {
        Some((989.0, "H100/H200 SXM dense BF16 (989 TFLOP/s)"))
    } else if name.contains("A100") || name.contains("A800") {
        Some((312.0, "A100 dense BF16 (312 TFLOP/s)"))
    } else {
        None
    }
}

/// Peak resident set of this process (VmHWM), in bytes; 0 where /proc is missing.
pub fn host_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `limo plan`'s per-GPU memory estimate (GiB) for this run on GPUs of `gpu_mem` bytes (what
/// "auto" checkpointing plans for): its world size, tokens, loss chunk, checkpointing and
/// optimizer offload.
pub fn plan_estimate(bench: &StepBench, gpu_mem: Option<u64>) -> anyhow::Result<f64> {
    Ok(planned(bench, gpu_mem)?.memory.total as f64 / GIB)
}

/// `limo plan`'s estimate of this run on GPUs of `gpu_mem` bytes (`None`: unknown, the CPU;
/// `activation_checkpointing = "auto"` then checkpoints every layer, as `limo train` does).
fn planned(bench: &StepBench, gpu_mem: Option<u64>) -> anyhow::Result<Estimate> {
    let cfg = shape_config(&bench.shape, bench.layers)?;
    let t = &bench.train;
    let estimate = plan_with_offload(
        &cfg,
        Workload {
            seq_len: bench.tokens as u64,
            micro_batch: 1,
            grad_accum: t.grad_accum_at(bench.simulate.map_or(1, |(w, _)| w))? as u64,
            loss_chunk: t.loss_chunk as u64,
            reduce_bytes: t.reduce_dtype.bytes(),
            recompute_attention: t.recompute_attention,
        },
        Hardware {
            gpus: bench.simulate.map_or(1, |(w, _)| w) as u64,
            gpu_mem: gpu_mem.unwrap_or(u64::MAX),
            peak_tflops: 989.0,
            mfu: 0.5,
        },
        Offload {
            optimizer_offload: t.optimizer_offload == OptimizerOffload::Cpu,
            ..Offload::default()
        },
    )?;
    let setting = match (t.activation_checkpointing, gpu_mem) {
        (Checkpointing::Auto, None) => Checkpointing::All,
        (setting, _) => setting,
    };
    Ok(estimate.chosen(setting)?.clone())
}

/// Runs the benchmark on `device` (`device_name` labels it; `probe` reads GPU memory).
pub fn run(
    bench: &StepBench,
    device: &Device,
    device_name: &str,
    probe: Option<&dyn MemoryProbe>,
) -> anyhow::Result<StepReport> {
    if bench.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let cfg = shape_config(&bench.shape, bench.layers)?;
    let (world, rank) = bench.simulate.unwrap_or((1, 0));
    let comm: Box<dyn Communicator> = match bench.simulate {
        Some((w, r)) => Box::new(SimulatedComm::new(w, r)?),
        None => Box::new(SoloComm),
    };
    let batch = synthetic_batch(cfg.vocab_size, bench.tokens, bench.docs, bench.seed)?;
    let t = &bench.train;
    let grad_accum = t.grad_accum_at(world)?;
    let micro = vec![batch.clone(); grad_accum];
    // "auto" plans for the cap, else for the GPU's whole memory.
    let gpu_mem = match (bench.mem_cap, probe) {
        (Some(cap), _) => Some(cap),
        (None, Some(p)) => Some((p.read()?.driver_total_gib * GIB) as u64),
        (None, None) => None,
    };
    let planned = planned(bench, gpu_mem)?;
    let plan_estimate_gib = planned.memory.total as f64 / GIB;

    let started = Instant::now();
    let shards = random_shards(&cfg, master_dtype(bench.dtype), world, rank, bench.seed);
    let mut model = ShardedModel::new(cfg.clone(), shards, bench.dtype, device, t, comm)
        .context("placing the model's slices on the device")?;
    model.checkpointed_layers = planned.checkpointed_layers as usize;
    device.synchronize()?;
    let setup_s = started.elapsed().as_secs_f64();
    tracing::info!(setup_s, plan_estimate_gib, "slices generated and placed");

    let totals = StepTotals::of(&micro);
    let mut losses = Vec::new();
    let mut times = Vec::new();
    let mut phases: Vec<PhaseTimes> = Vec::new();
    for step in 1..=bench.warmup + bench.steps {
        let timed = step > bench.warmup;
        if step == bench.warmup + 1 {
            if let Some(p) = probe {
                p.reset_peak()?;
                p.timed_steps(true)?;
            }
        }
        device.synchronize()?;
        let started = Instant::now();
        if timed {
            model.profiler.begin(device)?;
        }
        let (loss, _norm, _coef) = optimizer_step(&mut model, &micro, totals, t.lr, step, t)
            .with_context(|| format!("step {step}"))?;
        if timed {
            phases.push(model.profiler.end()?);
        }
        device.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        // Peak and time first on the line: a stage killed at its timeout still says them.
        let peak = match probe {
            Some(p) => format!(", peak {:.2} GiB", p.read()?.allocator_high_gib),
            None => String::new(),
        };
        let kind = if timed { "timed" } else { "warm-up" };
        tracing::info!("step {step} ({kind}): {seconds:.2} s{peak}, loss {loss:.4}");
        losses.push(loss);
        if timed {
            times.push(seconds);
        }
    }
    // An offloaded update of the last step is still running on the host: let it finish (it is
    // in no step's time) before the model and the process go.
    model.optimizer()?;
    device.synchronize()?;
    if let Some(p) = probe {
        p.timed_steps(false)?;
    }

    let step_s = Stats::of(&times);
    let (n_matmul_params, flops_per_micro_batch) = model_flops(&cfg, &batch);
    let flops_per_step = flops_per_micro_batch * grad_accum as f64;
    let (peak_tflops, peak_source) = match (bench.peak_tflops, known_peak(device_name)) {
        (Some(p), _) => (Some(p), "--peak-tflops".to_string()),
        (None, Some((p, source))) => (Some(p), source.to_string()),
        (None, None) => (
            None,
            "unknown for this device (give --peak-tflops)".to_string(),
        ),
    };
    let model_tflops = flops_per_step / step_s.median / 1e12;
    let profiled: f64 = phases.iter().map(PhaseTimes::total).sum::<f64>() / phases.len() as f64;
    let phases = PHASES
        .iter()
        .map(|&phase| {
            let seconds = phases.iter().map(|p| p.get(phase)).sum::<f64>() / phases.len() as f64;
            PhaseReport {
                phase: phase.name(),
                seconds,
                share: seconds / profiled.max(1e-12),
            }
        })
        .collect();
    let state_bytes = model.state_bytes();
    Ok(StepReport {
        shape: bench.shape.clone(),
        layers: cfg.num_hidden_layers,
        params: groups(&cfg).iter().map(|g| g.numel()).sum(),
        tokens: bench.tokens,
        docs: bench.docs,
        grad_accum,
        dtype: format!("{:?}", bench.dtype).to_lowercase(),
        device: device_name.to_string(),
        world,
        rank,
        simulated: bench.simulate.is_some(),
        activation_checkpointing: model.checkpointed_layers > 0,
        checkpointed_layers: model.checkpointed_layers,
        recompute_attention: t.recompute_attention,
        optimizer_offload: t.optimizer_offload == OptimizerOffload::Cpu,
        loss_chunk: t.loss_chunk,
        warmup: bench.warmup,
        steps: bench.steps,
        setup_s,
        tokens_per_s: (bench.tokens * grad_accum) as f64 / step_s.median,
        step_s,
        n_matmul_params,
        flops_per_step,
        flops_formula:
            "6*N_mm*T + 6*L*(heads*head_dim)*sum(doc_len^2); N_mm = L*(H*q+2*H*kv+q*H+3*H*I) + V*H",
        model_tflops,
        mfu: peak_tflops.map(|p| model_tflops / p),
        peak_tflops,
        peak_source,
        phases,
        state_bytes_total: state_bytes.total(),
        state_bytes,
        peak_mem: PeakMemory {
            host_rss_gib: host_peak_rss() as f64 / GIB,
            device: probe.map(MemoryProbe::read).transpose()?,
            plan_estimate_gib,
            mem_cap_gib: bench.mem_cap.map(|c| c as f64 / GIB),
        },
        losses,
    })
}

impl StepReport {
    /// The human-readable table `limo bench step` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let who = if self.simulated {
            format!("rank {} of {} (simulated)", self.rank, self.world)
        } else {
            "one rank".to_string()
        };
        line(format!(
            "{} ({} layers, {:.3}B params), {} tokens in {} doc(s){}, {} on {}, {who}",
            self.shape,
            self.layers,
            self.params as f64 / 1e9,
            self.tokens,
            self.docs,
            match self.grad_accum {
                1 => String::new(),
                n => format!(" x {n} micro-batches per step"),
            },
            self.dtype,
            self.device
        ));
        line(format!(
            "activation checkpointing {}, optimizer {}, loss chunk {}, {} warm-up + {} timed steps, set-up {:.1} s",
            match (self.checkpointed_layers, self.recompute_attention) {
                (0, _) => "off".to_string(),
                (k, recompute) => format!(
                    "on{} (attention {})",
                    match k == self.layers {
                        true => String::new(),
                        false => format!(" for {k} of {} layers", self.layers),
                    },
                    if recompute { "recomputed" } else { "kept" }
                ),
            },
            if self.optimizer_offload { "offloaded to the host" } else { "on the device" },
            self.loss_chunk,
            self.warmup,
            self.steps,
            self.setup_s
        ));
        line(format!(
            "step time        median {:.4} s  (min {:.4}, max {:.4})",
            self.step_s.median, self.step_s.min, self.step_s.max
        ));
        line(format!("tokens/s         {:.1}", self.tokens_per_s));
        let mfu = match (self.mfu, self.peak_tflops) {
            (Some(m), Some(p)) => format!(
                "MFU {:.1}% of {p} TFLOP/s ({})",
                100.0 * m,
                self.peak_source
            ),
            _ => format!("MFU: {}", self.peak_source),
        };
        line(format!("model TFLOP/s    {:.2}   {mfu}", self.model_tflops));
        let s = &self.state_bytes;
        line(format!(
            "state (this rank) {:.3} GiB: compute {:.3}, master {:.3}, adam {:.3}, grads {:.3}",
            self.state_bytes_total as f64 / GIB,
            s.compute as f64 / GIB,
            s.master as f64 / GIB,
            s.adam as f64 / GIB,
            s.grads as f64 / GIB
        ));
        let m = &self.peak_mem;
        let device = match &m.device {
            Some(d) => format!(
                "device: allocator high {:.2} GiB, reserved high {:.2} GiB, driver {:.2} / {:.2} GiB used, {:.2} GiB by this run{}; ",
                d.allocator_high_gib,
                d.reserved_high_gib,
                d.driver_used_gib,
                d.driver_total_gib,
                d.process_gib,
                match d.process_gib > 0.0 {
                    true => format!(
                        " (the plan {:+.1}%)",
                        100.0 * (m.plan_estimate_gib / d.process_gib - 1.0)
                    ),
                    false => String::new(),
                }
            ),
            None => String::new(),
        };
        let cap = m
            .mem_cap_gib
            .map_or(String::new(), |c| format!(", cap {c:.1} GiB"));
        line(format!(
            "peak memory      {device}host RSS {:.2} GiB; plan estimate {:.2} GiB{cap}",
            m.host_rss_gib, m.plan_estimate_gib
        ));
        line(format!("{:<22} {:>10} {:>7}", "phase", "s/step", "share"));
        for p in &self.phases {
            line(format!(
                "{:<22} {:>10.4} {:>6.1}%",
                p.phase,
                p.seconds,
                100.0 * p.share
            ));
        }
        let losses: Vec<String> = self.losses.iter().map(|l| format!("{l:.4}")).collect();
        line(format!("losses           {}", losses.join(" ")));
        out
    }
}
