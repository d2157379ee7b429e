//! `limo plan`: will a run config fit on N GPUs under ZeRO-3, and how long is a step?
//! The arithmetic lives in `limo_train::zero3::plan`; this file resolves the model shape and prints.

use crate::out::{self, outln};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use limo_model::init::preset_config;
use limo_model::Qwen2Config;
use limo_train::checkpoint::disk::{disk_use, DiskUse};
use limo_train::config::{from_name, OptimizerOffload};
use limo_train::zero3::plan::{
    fixes, infer_shape, parse_bytes, plan_with_offload, Estimate, Fix, Hardware, Offload, Plan,
    Workload, GIB,
};
use limo_train::TrainConfig;

#[derive(Args)]
pub struct PlanArgs {
    /// Run configuration (TOML): its model, data.cutoff_len and train.batch_size are planned.
    #[arg(long)]
    config: PathBuf,
    /// GPUs the run shards over (the ZeRO-3 world size).
    #[arg(long)]
    gpus: u64,
    /// Memory of one GPU: 80GiB, 141GB, 81920MiB (a bare number is GiB).
    #[arg(long, default_value = "80GiB")]
    gpu_mem: String,
    /// Fraction of the peak that the executed FLOPs (recompute included) reach, for the step
    /// time. 0.5: an H200 measured 0.43 (1.5B) and 0.55 (a 32B rank of 8, simulated world).
    #[arg(long, default_value_t = 0.5)]
    mfu: f64,
    /// Peak dense bf16 TFLOP/s of one GPU (989: H100 SXM).
    #[arg(long, default_value_t = 989.0)]
    gpu_tflops: f64,
    /// Where the fp32 master weights and Adam moments live: none (on the GPU) or cpu (host
    /// memory, AdamW on the host). Overrides train.optimizer_offload.
    #[arg(long, value_name = "none|cpu")]
    offload: Option<String>,
    /// GPUs per node, for host memory per node (capped at --gpus).
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u64,
    /// Host memory of one node (2TiB, 1536GiB, 2000GB): whether the offloaded state fits.
    #[arg(long)]
    host_mem: Option<String>,
    /// Override a config field, e.g. --set data.cutoff_len=32768 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the plan as JSON (bytes and seconds) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let config = TrainConfig::from_file(&args.config, &args.overrides)?;
    let (model, source) = model_config(&config, &args.config)?;
    let work = Workload::of(&config, args.gpus);
    let hw = Hardware {
        gpus: args.gpus,
        gpu_mem: parse_bytes(&args.gpu_mem).context("--gpu-mem")?,
        peak_tflops: args.gpu_tflops,
        mfu: args.mfu,
    };
    let offload = match args.offload.as_deref() {
        None => config.train.optimizer_offload,
        Some(name) => from_name(name).context("--offload")?,
    };
    let offload = Offload {
        optimizer_offload: offload == OptimizerOffload::Cpu,
        gpus_per_node: args.gpus_per_node,
        host_mem: args
            .host_mem
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .context("--host-mem")?,
    };
    let plan = plan_with_offload(&model, work, hw, offload)?;
    let fixes = fixes(&model, work, hw, offload)?;
    let world = usize::try_from(args.gpus).unwrap_or(usize::MAX);
    let refused = config.rows_per_step(world).err();
    if let Some(e) = &refused {
        tracing::warn!(
            "limo train refuses this run on {} GPUs ({e:#}); planned with {} micro-batches per step",
            args.gpus,
            work.grad_accum
        );
    }
    let disk = disk_use(&model, &config, args.gpus);
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        value["config"] = args.config.display().to_string().into();
        value["model_source"] = source.into();
        value["fixes"] = serde_json::to_value(&fixes)?;
        value["disk"] = serde_json::to_value(disk)?;
        // Why `limo train` would refuse this run at this world size (null: it would not).
        value["train_refuses"] = refused.map(|e| format!("{e:#}")).into();
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out::print(&render(&plan, &args.config, &source))?;
        out::print(&render_disk(&disk, &config))?;
        out::print(&render_fixes(&plan, &fixes))?;
    }
    Ok(())
}

/// What `output.dir` must hold: checkpoints at once, and the export.
fn render_disk(d: &DiskUse, config: &TrainConfig) -> String {
    let export = match config.output.export_dtype.dtype() {
        Some(dtype) => format!(
            "; {} export {}",
            format!("{dtype:?}").to_lowercase(),
            gib(d.export)
        ),
        None => String::new(),
    };
    format!(
        "\ndisk (output.dir): a checkpoint is {} ({} per GPU); {} at once (keep_last {}, and the \
         next while it is written){export}; {} at most\n",
        gib(d.checkpoint),
        gib(d.rank_file),
        d.checkpoints_at_once,
        config.output.keep_last,
        gib(d.peak)
    )
}

/// What would make a plan that does not fit (with checkpointing) fit, if anything.
fn render_fixes(plan: &Plan, fixes: &[Fix]) -> String {
    if plan.with_checkpointing.memory.fits {
        return String::new();
    }
    if fixes.is_empty() {
        return "\nno setting limo plans (recompute_attention, --offload cpu) fits it: more GPUs, \
                or a shorter data.cutoff_len\n"
            .to_string();
    }
    let mut out = String::from("\nwould fit with:\n");
    for f in fixes {
        out += &format!("  {:<56}{:>12}\n", f.settings, gib(f.total));
    }
    out
}

/// The model's shape: its config.json when the directory exists, else the Qwen2.5 preset
/// named in the path or the config file name (recipes name checkpoints that are not here).
fn model_config(config: &TrainConfig, file: &Path) -> anyhow::Result<(Qwen2Config, String)> {
    let dir = config.model_dir().map(|(dir, _)| dir);
    let (json, source) = match (&dir, &config.model.init) {
        (Some(dir), _) if dir.join("config.json").exists() => {
            let path = dir.join("config.json");
            let cfg = Qwen2Config::from_file(&path)?;
            return Ok((cfg, path.display().to_string()));
        }
        (Some(dir), _) => {
            let name = dir.display().to_string();
            // The file's own name: the folders above it (a temporary directory's random name,
            // an experiment folder) say nothing of this model.
            let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let shape = infer_shape(&name)
                .or_else(|| file_name.as_deref().and_then(infer_shape))
                .with_context(|| {
                    format!(
                        "{}: model.path {name:?} has no config.json and names no Qwen2.5 size \
                         (0.5b, 1.5b, 3b, 7b, 14b, 32b) in it or the file name",
                        file.display()
                    )
                })?;
            let source = format!(
                "Qwen2.5-{} preset (model.path {name:?} is not here)",
                shape.to_uppercase()
            );
            (preset_config(shape)?, source)
        }
        (None, Some(shape)) => {
            let json = config.model.init_config().context("model.init")?;
            (json, format!("model.init {shape:?} with its overrides"))
        }
        (None, None) => bail!("{}: model: give path or init", file.display()),
    };
    let cfg = Qwen2Config::from_json(&json.to_string())
        .with_context(|| format!("{}: model", file.display()))?;
    Ok((cfg, source))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

/// A signed byte count in GiB with its sign: "+13.06 GiB", "-24.70 GiB".
fn signed_gib(bytes: i64) -> String {
    format!("{:+.2} GiB", bytes as f64 / GIB as f64)
}

/// The host side: what optimizer offload puts in host memory, per GPU and per node.
fn host(p: &Plan) -> String {
    let h = &p.host;
    let n = p.hardware.gpus;
    if !p.optimizer_offload {
        return "optimizer offload: none (master weights and Adam moments on the GPU; \
                --offload cpu moves them to host memory)\n\n"
            .to_string();
    }
    let mut out = format!(
        "optimizer offload: cpu (fp32 master weights and Adam m, v in host memory, AdamW on \
         the host; {} moved over PCIe per GPU per step)\n",
        gib(h.pcie_bytes_per_step)
    );
    let node = format!("per node ({} GPUs)", h.gpus_per_node);
    out += &format!("{:<44}{:>14}{:>20}\n", "host memory", "per GPU", node);
    let row = |label: String, per_gpu: u64, per_node: u64| {
        format!("{label:<44}{:>14}{:>20}\n", gib(per_gpu), gib(per_node))
    };
    let k = h.gpus_per_node;
    out += &row(
        format!("fp32 master + Adam m, v (12 B/param / {n})"),
        h.master + h.adam,
        (h.master + h.adam) * k,
    );
    out += &row(
        format!("pinned staging (4 + 2 B/param / {n})"),
        h.pinned_per_gpu,
        h.pinned_per_node,
    );
    out += &row("total".to_string(), h.total_per_gpu, h.total_per_node);
    if let (Some(mem), Some(fits), Some(margin)) = (h.host_mem, h.fits, h.margin) {
        out += &format!(
            "{:<44}{:>14}{:>20}\n",
            format!("fits in {} per node", gib(mem)),
            "",
            if fits { "yes" } else { "NO" }
        );
        out += &format!(
            "{:<44}{:>14}{:>20}\n",
            "margin (spare, or - missing)",
            "",
            signed_gib(margin)
        );
    }
    out + "\n"
}

/// A phase's name in a 14-column cell.
fn short_phase(phase: &str) -> &str {
    match phase {
        "head and loss" => "head + loss",
        "layers' backward" => "layers' bwd",
        "embedding gradient" => "embedding",
        other => other,
    }
}

fn render(p: &Plan, file: &Path, source: &str) -> String {
    let (hw, work) = (&p.hardware, &p.workload);
    let (a, b) = (&p.with_checkpointing, &p.without_checkpointing);
    let n = hw.gpus;
    let mut out = format!(
        "limo plan: {} on {n} GPUs of {}\n\
         model: {:.2}B parameters ({} layers, hidden {}, vocab {}) from {source}\n\
         groups: {} flat groups padded to a multiple of {n}: {} parameters per GPU\n\
         work per GPU: {} x {} tokens per micro-batch, grad_accum {}, loss chunk {}\n\n",
        file.display(),
        gib(hw.gpu_mem),
        p.params as f64 / 1e9,
        p.layers,
        p.hidden,
        p.vocab,
        p.groups,
        p.shard_params,
        work.micro_batch,
        work.seq_len,
        work.grad_accum,
        work.loss_chunk,
    );
    let row = |label: &str, f: &dyn Fn(&Estimate) -> u64| {
        format!("{label:<44}{:>14}{:>14}\n", gib(f(a)), gib(f(b)))
    };
    out += &format!("{:<44}{:>14}{:>14}\n", "per GPU", "checkpointing", "none");
    out += &row(&format!("bf16 weight shard (2 B/param / {n})"), &|e| {
        e.memory.weight_shard
    });
    out += &row(&format!("fp32 gradient shard (4 B/param / {n})"), &|e| {
        e.memory.grad_shard
    });
    let (master, adam) = if p.optimizer_offload {
        (
            "fp32 master weights (on the host)".to_string(),
            "Adam m + v (on the host)".to_string(),
        )
    } else {
        (
            format!("fp32 master weights (4 B/param / {n})"),
            format!("Adam m + v (8 B/param / {n})"),
        )
    };
    out += &row(&master, &|e| e.memory.master);
    out += &row(&adam, &|e| e.memory.adam);
    out += &row("gathered layers + reduce-scatter staging", &|e| {
        e.memory.gathered
    });
    out += &row("head: weight, fp32 gradient, chunk product", &|e| {
        e.memory.head
    });
    out += &row("activations", &|e| e.memory.activations);
    out += &row("loss chunk + final hidden", &|e| e.memory.loss);
    out += &row("embedding gradient + its staging", &|e| e.memory.embedding);
    out += &format!(
        "{:<44}{:>14}{:>14}\n",
        "less: not held at once",
        format!("-{}", gib(a.memory.not_at_once)),
        format!("-{}", gib(b.memory.not_at_once))
    );
    out += &format!(
        "{:<44}{:>14}{:>14}\n",
        "peak memory phase",
        short_phase(a.memory.peak_phase),
        short_phase(b.memory.peak_phase)
    );
    out += &row("workspace (1 GiB + 10%)", &|e| e.memory.workspace);
    out += &row("total", &|e| e.memory.total);
    let fits = |e: &Estimate| if e.memory.fits { "yes" } else { "NO" };
    out += &format!(
        "{:<44}{:>14}{:>14}\n",
        format!("fits in {}", gib(hw.gpu_mem)),
        fits(a),
        fits(b)
    );
    out += &format!(
        "{:<44}{:>14}{:>14}\n",
        "margin (spare, or - missing)",
        signed_gib(a.memory.margin),
        signed_gib(b.memory.margin)
    );
    out += &format!(
        "train.activation_checkpointing = \"auto\": {}\n\n",
        match &p.auto_checkpointing {
            Some(e) => format!(
                "{} of {} layers checkpointed, {} ({} spare), {:.1} s per step",
                e.checkpointed_layers,
                p.layers,
                gib(e.memory.total),
                gib(e.memory.margin.max(0) as u64),
                e.step_seconds
            ),
            None => "nothing fits; it checkpoints every layer".to_string(),
        }
    );
    out += &host(p);
    out += &format!(
        "step: {} tokens over {n} GPUs; at {} of {} TFLOP/s per GPU on the FLOPs executed:\n  \
         {:.1} s with checkpointing ({:.3e} FLOP, recompute included), {:.1} s without ({:.3e} FLOP)\n",
        p.tokens_per_step,
        hw.mfu,
        hw.peak_tflops,
        a.step_seconds,
        a.step_flops,
        b.step_seconds,
        b.step_flops,
    );
    out
}
