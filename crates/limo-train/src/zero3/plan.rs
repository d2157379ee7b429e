//! The memory planner behind `limo plan`: bytes per GPU of a ZeRO-3 run of limo, term by term,
//! and a rough step time. Every term follows limo's own design, not a
//! generic rule of thumb, so the numbers move when the design does; `docs/PLAN.md` states the
//! formulas and their assumptions.

use anyhow::{bail, Context};
use limo_model::Qwen2Config;
use serde::Serialize;

use crate::config::Checkpointing;

pub const GIB: u64 = 1 << 30;

/// Fixed part of the workspace allowance: CUDA context, cuBLAS workspace, NCCL buffers.
const WORKSPACE_FIXED: u64 = GIB;
/// Proportional part: caching-allocator fragmentation and short-lived temporaries.
const WORKSPACE_FRACTION: f64 = 0.10;

/// Bytes per parameter of the state each rank holds 1/N of.
const BF16: u64 = 2;
const FP32: u64 = 4;

/// What one GPU processes per micro-batch, from the run config.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    /// Tokens per row (data.cutoff_len): the planner assumes full-length rows, the worst case.
    pub seq_len: u64,
    /// Rows per GPU per micro-batch (train.batch_size).
    pub micro_batch: u64,
    /// Micro-batches per optimizer step (train.grad_accum).
    pub grad_accum: u64,
    /// Tokens per chunk of the fused head + loss (train.loss_chunk).
    pub loss_chunk: u64,
    /// Bytes per gradient element on the reduce-scatter (train.reduce_dtype): 4 for fp32, 2
    /// for bf16.
    pub reduce_bytes: u64,
    /// train.recompute_attention: with checkpointing, keep only layer inputs and recompute
    /// the attention too (else its output and log-sum-exp are kept and not recomputed).
    pub recompute_attention: bool,
}

impl Workload {
    /// What a run of `config` on `gpus` GPUs gives each GPU: its cutoff (every row assumed full
    /// length), batch size, accumulation, loss chunk, reduce dtype and attention recompute.
    /// A `global_batch_size` that `gpus` x `batch_size` does not divide (which `limo train`
    /// refuses) is planned as the next whole number of micro-batches.
    pub fn of(config: &crate::TrainConfig, gpus: u64) -> Self {
        let t = &config.train;
        let grad_accum = match t.global_batch_size {
            Some(global) => {
                (global as u64).div_ceil((t.batch_size as u64).saturating_mul(gpus).max(1))
            }
            None => t.grad_accum as u64,
        };
        Workload {
            seq_len: config.data.cutoff_len as u64,
            micro_batch: t.batch_size as u64,
            grad_accum,
            loss_chunk: t.loss_chunk as u64,
            reduce_bytes: t.reduce_dtype.bytes(),
            recompute_attention: t.recompute_attention,
        }
    }
}

/// The cluster: world size, memory per GPU and the throughput assumption.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Hardware {
    pub gpus: u64,
    pub gpu_mem: u64,
    /// Peak dense bf16 TFLOP/s of one GPU (989 for an H100 SXM).
    pub peak_tflops: f64,
    /// Fraction of the peak the executed FLOPs (recompute included) run at, for the step
    /// time, in (0, 1] (`--mfu`: a hardware FLOP utilization once recompute counts).
    pub mfu: f64,
}

/// Where the optimizer state lives and what the hosts hold (`train.optimizer_offload`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offload {
    /// `train.optimizer_offload = "cpu"`: each rank keeps its fp32 master weights and Adam
    /// moments in host memory and runs AdamW on the host; the GPU keeps the bf16 compute shard
    /// and the fp32 gradient accumulator.
    pub optimizer_offload: bool,
    /// GPUs (ranks) per node, for host memory per node; capped at the world size.
    pub gpus_per_node: u64,
    /// Host memory of one node, when given: whether the host side fits.
    pub host_mem: Option<u64>,
}

impl Default for Offload {
    /// No offload, 8 GPUs per node, host memory not given.
    fn default() -> Self {
        Offload {
            optimizer_offload: false,
            gpus_per_node: 8,
            host_mem: None,
        }
    }
}

/// Host memory of the optimizer offload, per GPU (rank) and per node. All zero without
/// offload: the planner counts no host memory then (data loader, checkpoint writing and the
/// process itself are never counted).
#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    pub optimizer_offload: bool,
    /// fp32 master weights, 4 B per shard parameter (host, pageable or pinned).
    pub master: u64,
    /// Adam m and v in fp32, 8 B per shard parameter (host).
    pub adam: u64,
    /// Pinned staging per GPU: the fp32 gradient slice coming down (4 B per shard parameter)
    /// and the bf16 compute slice going up (2 B).
    pub pinned_per_gpu: u64,
    /// Everything the host holds for one GPU: master + adam + pinned staging.
    pub total_per_gpu: u64,
    /// min(--gpus-per-node, world size).
    pub gpus_per_node: u64,
    pub pinned_per_node: u64,
    pub total_per_node: u64,
    /// Host memory of one node, when given.
    pub host_mem: Option<u64>,
    /// `total_per_node <= host_mem`, when host_mem is given.
    pub fits: Option<bool>,
    /// host_mem - total_per_node (negative: short by that much), when host_mem is given.
    pub margin: Option<i64>,
    /// Bytes each GPU moves over PCIe per optimizer step: its fp32 gradient slice down and
    /// its bf16 compute slice up (6 B per shard parameter).
    pub pcie_bytes_per_step: u64,
}

/// Bytes per GPU, one field per term of the estimate. The terms are not all held at once:
/// the step's memory peaks in one of its phases (`peak_phase`), and `not_at_once` is what the
/// sum of the terms counts beyond that peak.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// bf16 compute weights, 2 B per parameter / N.
    pub weight_shard: u64,
    /// fp32 gradient accumulator, 4 B per parameter / N.
    pub grad_shard: u64,
    /// fp32 master weights, 4 B per parameter / N; 0 with optimizer offload (on the host).
    pub master: u64,
    /// Adam m and v in fp32, 8 B per parameter / N; 0 with optimizer offload (on the host).
    pub adam: u64,
    /// Layers' backward: two layers' bf16 weights (the one computing, the next one's
    /// all-gather) and one layer's reduce-scatter staging.
    pub gathered: u64,
    /// Head and loss: the vocab-sized group's bf16 weight (the head, or the tied embedding),
    /// its fp32 gradient accumulated over the loss chunks, and one chunk's bf16 gradient
    /// product added into it.
    pub head: u64,
    /// Saved for the backward (layer inputs with checkpointing), plus the working set of the
    /// layer in its backward.
    pub activations: u64,
    /// Head and loss: one chunk's bf16 logits (the loss kernel writes their gradient over
    /// them), the final hidden states, their norm and their gradient (bf16).
    pub loss: u64,
    /// End of the backward: the embedding's fp32 gradient, its reduce-scatter buffer and the
    /// first layer's input gradient; with a tied head, also the head's fp32 gradient, kept
    /// from the loss through the layers' backward.
    pub embedding: u64,
    /// Subtracted from the sum of the terms above: what is never held at the same time. The
    /// step peaks in `peak_phase`; with grad_accum 1 the gradient accumulators also fill
    /// during the backward as the saved activations free.
    pub not_at_once: u64,
    /// Where the step's memory peaks: "forward", "head and loss", "layers' backward" or
    /// "embedding gradient".
    pub peak_phase: &'static str,
    /// WORKSPACE_FIXED + WORKSPACE_FRACTION of all the above.
    pub workspace: u64,
    pub total: u64,
    pub fits: bool,
    /// gpu_mem - total in bytes: spare memory, or (negative) how much is missing.
    pub margin: i64,
}

/// Memory and time of one way of running the step.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Whether any layer is checkpointed.
    pub activation_checkpointing: bool,
    /// How many: the first `checkpointed_layers` of the decoder layers.
    pub checkpointed_layers: u64,
    pub memory: Memory,
    /// FLOPs of one optimizer step over all GPUs, recomputation included.
    pub step_flops: f64,
    pub step_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub params: u64,
    /// Parameters after padding every group to a multiple of the world size.
    pub padded_params: u64,
    pub groups: usize,
    /// Parameters each rank owns (padded / N).
    pub shard_params: u64,
    pub layers: u64,
    pub hidden: u64,
    pub vocab: u64,
    pub workload: Workload,
    pub hardware: Hardware,
    pub tokens_per_micro_batch: u64,
    /// Tokens of one optimizer step over all GPUs.
    pub tokens_per_step: u64,
    pub with_checkpointing: Estimate,
    pub without_checkpointing: Estimate,
    /// `train.activation_checkpointing = "auto"`: the fewest layers checkpointed with which
    /// the run fits `gpu_mem` (`None`: not even with every layer).
    pub auto_checkpointing: Option<Estimate>,
    /// Every choice, indexed by the number of layers checkpointed (0 to `layers`).
    #[serde(skip)]
    pub by_layers: Vec<Estimate>,
    /// `train.optimizer_offload = "cpu"` was planned: master and Adam moments on the host.
    pub optimizer_offload: bool,
    /// Host memory of the offload (zeros without it); the same with or without checkpointing.
    pub host: HostMemory,
}

impl Plan {
    /// The estimate of the run as `train.activation_checkpointing` sets it ("auto": the fewest
    /// layers that fit, or every layer when none does).
    pub fn chosen(&self, setting: Checkpointing) -> anyhow::Result<&Estimate> {
        Ok(match setting.fixed(self.layers as usize)? {
            Some(k) => &self.by_layers[k],
            None => self
                .auto_checkpointing
                .as_ref()
                .unwrap_or(&self.with_checkpointing),
        })
    }
}

/// Parameter counts of the flat groups, in order: embedding, one per decoder layer, final
/// norm + lm_head (the norm alone when the head is tied to the embedding).
pub fn group_sizes(cfg: &Qwen2Config) -> Vec<u64> {
    super::groups::groups(cfg)
        .iter()
        .map(|g| g.numel() as u64)
        .collect()
}

/// `n` rounded up to a multiple of the world size, as each flat group buffer is.
pub fn padded(n: u64, world: u64) -> u64 {
    n.div_ceil(world) * world
}

/// Bytes one token keeps for the backward of one decoder layer: limo's `LayerActivations`
/// (crates/limo-model/src/layer.rs). bf16 except the attention log-sum-exp (fp32 per query
/// head) and the two RMSNorm reciprocal RMS values (fp32). Flash attention: no T x T scores.
pub fn layer_activation_bytes_per_token(cfg: &Qwen2Config) -> u64 {
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (q, kv) = (cfg.q_dim() as u64, cfg.kv_dim() as u64);
    // x, n1, q, k, v, attn, x1, n2, gate, up, h
    let bf16 = h + h + q + kv + kv + q + h + h + i + i + i;
    // lse per query head, rstd1, rstd2
    let fp32 = cfg.num_attention_heads as u64 + 2;
    bf16 * BF16 + fp32 * FP32
}

/// `a - b` in bytes as a signed number, saturating (gpu_mem may be u64::MAX: no cap).
fn signed_diff(a: u64, b: u64) -> i64 {
    (a as i128 - b as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The plan of running `work` on `hw` with the optimizer state on the GPUs.
pub fn plan(cfg: &Qwen2Config, work: Workload, hw: Hardware) -> anyhow::Result<Plan> {
    plan_with_offload(cfg, work, hw, Offload::default())
}

/// The most GPUs `limo plan` plans for.
pub const MAX_GPUS: u64 = 1 << 20;

/// The plan of running `work` on `hw`, the optimizer state where `offload` puts it.
pub fn plan_with_offload(
    cfg: &Qwen2Config,
    work: Workload,
    hw: Hardware,
    offload: Offload,
) -> anyhow::Result<Plan> {
    // Past a million GPUs the byte arithmetic (u64) could overflow; no cluster is that big.
    if !(1..=MAX_GPUS).contains(&hw.gpus) {
        bail!("--gpus {} must be between 1 and {MAX_GPUS}", hw.gpus);
    }
    if !(hw.mfu > 0.0 && hw.mfu <= 1.0) {
        bail!("--mfu: {} must be in (0, 1]", hw.mfu);
    }
    if !(hw.peak_tflops > 0.0 && hw.peak_tflops.is_finite()) {
        bail!("--gpu-tflops: {} must be a positive number", hw.peak_tflops);
    }
    if work.seq_len == 0 || work.micro_batch == 0 || work.grad_accum == 0 || work.loss_chunk == 0 {
        bail!("data.cutoff_len, train.batch_size, train.grad_accum and train.loss_chunk must be at least 1");
    }
    if offload.gpus_per_node == 0 {
        bail!("--gpus-per-node must be at least 1");
    }
    let n = hw.gpus;
    let groups = group_sizes(cfg);
    let params: u64 = groups.iter().sum();
    let padded_params: u64 = groups.iter().map(|&g| padded(g, n)).sum();
    let shard = padded_params / n;
    let layer_group = padded(
        groups[1..groups.len() - 1]
            .iter()
            .copied()
            .max()
            .unwrap_or(0),
        n,
    );
    // The group gathered at the loss and at the embedding: the head, or the tied embedding.
    let vocab_group = padded(groups[0].max(groups[groups.len() - 1]), n);
    let (h, v) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
    let layers = cfg.num_hidden_layers as u64;
    let tokens = work.seq_len * work.micro_batch;
    let chunk = work.loss_chunk.min(tokens);

    // A layer's reduce-scatter staging, at its peak (when it starts): the layer's bf16
    // gradients and the flat buffer in the reduce dtype, which the GPU writes them into
    // converted, in place (limo_ops::flatten_into). The previous layer's buffer is released
    // just before.
    let staging = layer_group * (BF16 + work.reduce_bytes);
    let two_layers = 2 * layer_group * BF16;
    let gathered = two_layers + staging;
    // The loss's peak is its last chunk: the head weight, the fp32 gradient accumulator and
    // the chunk's bf16 product beside it (the head's reduce-scatter after it holds as much:
    // the fp32 gradient and its fp32 flat buffer).
    let head = vocab_group * (BF16 + FP32 + BF16);
    let loss = chunk * v * BF16 + 3 * tokens * h * BF16;
    let tied_head_grad = if cfg.tie_word_embeddings {
        vocab_group * FP32
    } else {
        0
    };
    let embedding =
        padded(groups[0], n) * (FP32 + work.reduce_bytes) + tokens * h * BF16 + tied_head_grad;
    let per_layer = tokens * layer_activation_bytes_per_token(cfg);
    // With offload the fp32 master and the moments (12 B per shard parameter) leave the GPU;
    // the gradient accumulator stays (the gradient slice is copied down from it).
    let on_gpu = |bytes: u64| if offload.optimizer_offload { 0 } else { bytes };
    let (master, adam) = (on_gpu(shard * FP32), on_gpu(shard * 2 * FP32));
    let grad_shard = shard * FP32;
    let head_slice = padded(groups[groups.len() - 1], n) / n * FP32;
    // `saved`: what the forward keeps for the backward; `working`: the layer in its backward.
    let memory = |saved: u64, working: u64| {
        let accumulating = work.grad_accum > 1;
        // With one micro-batch per step the accumulators start empty: the head group's slice
        // arrives after the loss, the layers' slices fill during the backward as it frees the
        // saved activations layer by layer (both linear in the layers done, so the larger end
        // is the peak). With several, they are full from the first micro-batch on.
        let (grads_forward, grads_head, grads_layers) = if accumulating {
            (grad_shard, grad_shard, saved + grad_shard)
        } else {
            (0, head_slice, (saved + head_slice).max(grad_shard))
        };
        let phases = [
            (
                "forward",
                saved + grads_forward + two_layers + per_layer + vocab_group * BF16,
            ),
            ("head and loss", saved + grads_head + head + loss),
            (
                "layers' backward",
                grads_layers + working + gathered + tied_head_grad,
            ),
            ("embedding gradient", grad_shard + embedding),
        ];
        let (peak_phase, peak) = phases
            .into_iter()
            .fold(("", 0), |a, b| if b.1 > a.1 { b } else { a });
        let state = shard * BF16 + master + adam;
        let terms = grad_shard + gathered + head + saved + working + loss + embedding;
        let sum = state + peak;
        let workspace = WORKSPACE_FIXED + (sum as f64 * WORKSPACE_FRACTION) as u64;
        let total = sum + workspace;
        Memory {
            weight_shard: shard * BF16,
            grad_shard,
            master,
            adam,
            gathered,
            head,
            activations: saved + working,
            loss,
            embedding,
            not_at_once: terms - peak,
            peak_phase,
            workspace,
            total,
            fits: total <= hw.gpu_mem,
            margin: signed_diff(hw.gpu_mem, total),
        }
    };
    let host = {
        let on_host = |bytes: u64| if offload.optimizer_offload { bytes } else { 0 };
        let (master, adam) = (on_host(shard * FP32), on_host(shard * 2 * FP32));
        let pinned_per_gpu = on_host(shard * (FP32 + BF16));
        let total_per_gpu = master + adam + pinned_per_gpu;
        let per_node = offload.gpus_per_node.min(n);
        let total_per_node = total_per_gpu * per_node;
        HostMemory {
            optimizer_offload: offload.optimizer_offload,
            master,
            adam,
            pinned_per_gpu,
            total_per_gpu,
            gpus_per_node: per_node,
            pinned_per_node: pinned_per_gpu * per_node,
            total_per_node,
            host_mem: offload.host_mem,
            fits: offload.host_mem.map(|mem| total_per_node <= mem),
            margin: offload.host_mem.map(|mem| signed_diff(mem, total_per_node)),
            pcie_bytes_per_step: pinned_per_gpu,
        }
    };
    // Checkpointing keeps each layer's input; the layer being recomputed holds its saved
    // activations and, during its backward, gradients of the same size.
    // ... and, unless the attention is recomputed, its output and log-sum-exp.
    let attention_out =
        tokens * (cfg.q_dim() as u64 * BF16 + cfg.num_attention_heads as u64 * FP32);
    let ckpt_layer = tokens * h * BF16
        + if work.recompute_attention {
            0
        } else {
            attention_out
        };

    // FLOPs of one micro-batch on one GPU. Dense: 2 per weight per token forward (the head
    // counts once even when tied; the embedding lookup is free). Causal attention forward:
    // QK^T and AV at 2 * T^2 * q_dim each, halved by the mask, per layer per row.
    let layer_params: u64 = groups[1..groups.len() - 1].iter().sum();
    let t = work.seq_len as f64;
    let attn_fwd = work.micro_batch as f64 * layers as f64 * 2.0 * t * t * cfg.q_dim() as f64;
    let layers_fwd = 2.0 * layer_params as f64 * tokens as f64 + attn_fwd;
    let head_fwd = 2.0 * (v * h) as f64 * tokens as f64;
    let micro_steps = (n * work.grad_accum) as f64;
    // Backward costs two forwards; checkpointing adds one more forward of the layers.
    let train_flops = 3.0 * (layers_fwd + head_fwd) * micro_steps;
    let recompute_flops = if work.recompute_attention {
        layers_fwd
    } else {
        layers_fwd - attn_fwd
    } * micro_steps;
    let flops_per_s = n as f64 * hw.peak_tflops * 1e12 * hw.mfu;
    // The first `k` layers checkpointed, the others keeping every activation. The backward
    // peaks at its first layer: one layer's gradients beside everything saved; and with every
    // layer checkpointed, that layer's recomputed activations too (a checkpointed layer's
    // backward comes after the kept layers' activations are freed, so it peaks lower).
    let estimate = |k: u64| {
        let saved = k * ckpt_layer + (layers - k) * per_layer;
        let working = if k == layers && k > 0 {
            2 * per_layer
        } else {
            per_layer
        };
        let step_flops = train_flops + recompute_flops * k as f64 / layers.max(1) as f64;
        Estimate {
            activation_checkpointing: k > 0,
            checkpointed_layers: k,
            memory: memory(saved, working),
            step_flops,
            step_seconds: step_flops / flops_per_s,
        }
    };
    let by_layers: Vec<Estimate> = (0..=layers).map(estimate).collect();
    // "auto": the fewest layers checkpointed that fit (memory falls as k rises, up to
    // layers - 1; with every layer the estimate counts the last layer's input twice, in `saved`
    // and in its recompute's working set, where the recompute shares it: conservative by that
    // input, and it saves nothing, its backward following its forward).
    let auto_checkpointing = by_layers.iter().find(|e| e.memory.fits).cloned();
    Ok(Plan {
        params,
        padded_params,
        groups: groups.len(),
        shard_params: shard,
        layers,
        hidden: h,
        vocab: v,
        workload: work,
        hardware: hw,
        tokens_per_micro_batch: tokens,
        tokens_per_step: tokens.saturating_mul(n).saturating_mul(work.grad_accum),
        with_checkpointing: by_layers[layers as usize].clone(),
        without_checkpointing: by_layers[0].clone(),
        auto_checkpointing,
        by_layers,
        optimizer_offload: offload.optimizer_offload,
        host,
    })
}

/// A change of settings under which a run that does not fit (with activation checkpointing)
/// would: what to set and the total it gives.
#[derive(Debug, Clone, Serialize)]
pub struct Fix {
    /// Command-line form: `--set train.recompute_attention=true`, `--offload cpu`, or both.
    pub settings: String,
    pub total: u64,
}

/// When the plan's checkpointing estimate does not fit: the settings that would make it fit
/// (recomputing the attention, offloading the optimizer, both), cheapest first; empty when it
/// fits or when nothing does.
pub fn fixes(
    cfg: &Qwen2Config,
    work: Workload,
    hw: Hardware,
    offload: Offload,
) -> anyhow::Result<Vec<Fix>> {
    let planned = plan_with_offload(cfg, work, hw, offload)?;
    if planned.with_checkpointing.memory.fits {
        return Ok(Vec::new());
    }
    let recompute = "--set train.recompute_attention=true";
    let offloaded = "--offload cpu";
    let mut tries = Vec::new();
    if !work.recompute_attention {
        tries.push((recompute.to_string(), true, offload.optimizer_offload));
    }
    if !offload.optimizer_offload {
        tries.push((offloaded.to_string(), work.recompute_attention, true));
        if !work.recompute_attention {
            tries.push((format!("{recompute} {offloaded}"), true, true));
        }
    }
    let mut found = Vec::new();
    for (settings, recompute_attention, optimizer_offload) in tries {
        let work = Workload {
            recompute_attention,
            ..work
        };
        let offload = Offload {
            optimizer_offload,
            ..offload
        };
        let memory = plan_with_offload(cfg, work, hw, offload)?
            .with_checkpointing
            .memory;
        // Offloading both ways fits whenever offloading alone does: keep the single change.
        if memory.fits && !found.iter().any(|f: &Fix| settings.contains(&f.settings)) {
            found.push(Fix {
                settings,
                total: memory.total,
            });
        }
    }
    Ok(found)
}

/// `limo plan` of a run of `config` on `gpus` GPUs of `gpu_mem` bytes.
fn plan_run(
    cfg: &Qwen2Config,
    config: &crate::TrainConfig,
    gpus: u64,
    gpu_mem: u64,
) -> anyhow::Result<(Plan, Workload, Hardware, Offload)> {
    let work = Workload::of(config, gpus);
    let hw = Hardware {
        gpus,
        gpu_mem,
        peak_tflops: 989.0,
        mfu: 0.5,
    };
    let offload = Offload {
        optimizer_offload: config.train.optimizer_offload == crate::config::OptimizerOffload::Cpu,
        ..Offload::default()
    };
    Ok((
        plan_with_offload(cfg, work, hw, offload)?,
        work,
        hw,
        offload,
    ))
}

/// With `train.activation_checkpointing = "auto"`: how many layers a run of `config` on
/// `gpus` GPUs of `gpu_mem` bytes checkpoints (the fewest that fit; every layer when none
/// does). `None` for the other settings.
pub fn auto_checkpointed_layers(
    cfg: &Qwen2Config,
    config: &crate::TrainConfig,
    gpus: u64,
    gpu_mem: u64,
) -> anyhow::Result<Option<usize>> {
    if config.train.activation_checkpointing != Checkpointing::Auto {
        return Ok(None);
    }
    let (planned, ..) = plan_run(cfg, config, gpus, gpu_mem)?;
    let chosen = planned.chosen(Checkpointing::Auto)?;
    Ok(Some(chosen.checkpointed_layers as usize))
}

/// Before `limo train` puts the state on a GPU, `limo plan` for that GPU: its verdict, and what
/// would fit, says more than an out-of-memory error a layer into the first step (rank 0 warns);
/// with `activation_checkpointing = "auto"`, the layers to checkpoint (each rank for its GPU).
/// `None` on the CPU.
pub fn for_this_gpu(
    config: &crate::TrainConfig,
    cfg: &Qwen2Config,
    comm: &dyn limo_dist::comm::Communicator,
    device: &candle_core::Device,
) -> Option<usize> {
    #[cfg(not(feature = "cuda"))]
    let mem: Option<u64> = {
        let _ = device;
        None
    };
    #[cfg(feature = "cuda")]
    let mem = limo_ops::cuda::pool::memory_stats(device)
        .ok()
        .map(|m| m.total);
    let (mem, world) = (mem?, comm.world_size() as u64);
    if let (0, Ok(Some(w))) = (comm.rank(), fit_warning(cfg, config, world, mem)) {
        tracing::warn!("{w}");
    }
    let layers = auto_checkpointed_layers(cfg, config, world, mem).ok()??;
    tracing::info!(
        layers,
        of = cfg.num_hidden_layers,
        "activation checkpointing \"auto\""
    );
    Some(layers)
}

/// A run of `config` on `gpus` GPUs of `gpu_mem` bytes: when `limo plan` says it does not fit,
/// the warning `limo train` prints before it starts, with what would fit; `None` when it fits.
pub fn fit_warning(
    cfg: &Qwen2Config,
    config: &crate::TrainConfig,
    gpus: u64,
    gpu_mem: u64,
) -> anyhow::Result<Option<String>> {
    let (planned, work, hw, offload) = plan_run(cfg, config, gpus, gpu_mem)?;
    let chosen = planned.chosen(config.train.activation_checkpointing)?;
    if chosen.memory.fits {
        return Ok(None);
    }
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / GIB as f64);
    let mut would: Vec<String> = Vec::new();
    if let Some(auto) = planned
        .auto_checkpointing
        .as_ref()
        .filter(|a| a.checkpointed_layers != chosen.checkpointed_layers)
    {
        would.push(format!(
            "--set train.activation_checkpointing=auto ({} of {} layers, {})",
            auto.checkpointed_layers,
            planned.layers,
            gib(auto.memory.total)
        ));
    }
    if chosen.checkpointed_layers < planned.layers && planned.with_checkpointing.memory.fits {
        would.push(format!(
            "--set train.activation_checkpointing=true ({})",
            gib(planned.with_checkpointing.memory.total)
        ));
    }
    for f in fixes(cfg, work, hw, offload)? {
        would.push(format!("{} ({})", f.settings, gib(f.total)));
    }
    let advice = if would.is_empty() {
        "nothing limo plans fits it: more GPUs, or a shorter data.cutoff_len".to_string()
    } else {
        format!("it would fit with {}", would.join(", or "))
    };
    Ok(Some(format!(
        "limo plan puts this run at {} per GPU on {gpus} GPU(s), more than this GPU's {}: expect \
         to run out of device memory; {advice}",
        gib(chosen.memory.total),
        gib(gpu_mem)
    )))
}

/// The Qwen2.5 shape named in a model path or file name ("Qwen2.5-32B-Instruct" -> "32b"),
/// matched case-insensitively at word boundaries so "32b" is not read as "2b".
pub fn infer_shape(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    ["0.5b", "1.5b", "3b", "7b", "14b", "32b"]
        .into_iter()
        .find(|shape| {
            name.match_indices(shape).any(|(at, _)| {
                let before = name[..at].chars().next_back();
                let after = name[at + shape.len()..].chars().next();
                !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
                    && !after.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        })
}

/// A memory size: "80GiB", "80 GB", "81920MiB", "1.5TiB"; a bare number is GiB. GB/MB/KB/TB
/// are decimal, as vendors print them; GiB/MiB/KiB/TiB binary (as output.max_shard_size).
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a memory size like 80GiB"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "gib" | "g" => GIB as f64,
        "mib" | "m" => (1u64 << 20) as f64,
        "tib" | "t" => (1u64 << 40) as f64,
        "kib" | "k" => 1024.0,
        "kb" => 1e3,
        "gb" => 1e9,
        "mb" => 1e6,
        "tb" => 1e12,
        _ => {
            bail!("{text:?}: unknown unit {unit:?} (expected GiB, MiB, KiB, TiB, GB, MB, KB or TB)")
        }
    };
    if !(value > 0.0 && value * scale < u64::MAX as f64) {
        bail!("{text:?}: a memory size must be positive and below 16 EiB");
    }
    Ok((value * scale) as u64)
}

#[cfg(test)]
mod tests;
