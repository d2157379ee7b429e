//! `limo bench generate`: batched greedy generation (the path of `limo eval`: one packed
//! prefill, then KV-cache decode steps of the whole batch) on random weights of a Qwen2.5
//! shape, timed: prefill, decode and tokens/s. No stop token, so every sequence generates
//! exactly `--new-tokens` tokens (what a throughput comparison needs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use limo_model::generate::{Generator, Sampling};
use limo_model::init::{preset_config, SHAPES};
use limo_model::{ModelWeights, Qwen2Config};
use serde::Serialize;

use crate::cmd_doctor::DeviceArgs;

#[derive(Args)]
pub struct GenerateArgs {
    /// Qwen2.5 shape of the random model.
    #[arg(long, value_parser = SHAPES)]
    shape: String,
    /// Keep only the first K decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Sequences generated together.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens of every (random) prompt.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 1024)]
    new_tokens: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Tokens of an untimed generation first (kernel loading, allocator warm-up).
    #[arg(long, default_value_t = 4)]
    warmup_tokens: usize,
    /// Seed of the prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What `--json` writes.
#[derive(Serialize)]
struct Report {
    shape: String,
    layers: usize,
    device: String,
    dtype: String,
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    /// The packed prefill of all prompts, with the choice of each first token.
    prefill_s: f64,
    /// The decode steps that follow.
    decode_s: f64,
    total_s: f64,
    /// Generated tokens of all sequences over the whole generation (prefill included).
    tokens_per_s: f64,
    /// Tokens of the decode steps over their time.
    decode_tokens_per_s: f64,
    /// Mean milliseconds per decode step of the whole batch.
    ms_per_step: f64,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.new_tokens == 0 || args.prompt_tokens == 0 {
        bail!("--batch, --new-tokens and --prompt-tokens must be at least 1");
    }
    let dtype = args.device.bench_dtype()?;
    let device = args.device.open()?;
    let mut config = preset_config(&args.shape)?;
    if let Some(k) = args.layers {
        let all = config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        if k == 0 || k > all {
            bail!(
                "--layers {k}: the {} shape has 1..={all} layers",
                args.shape
            );
        }
        config["num_hidden_layers"] = k.into();
    }
    let cfg = Qwen2Config::from_json(&config.to_string())?;
    let weights = random_weights(&cfg, dtype, &device).context("random weights")?;
    let prompts = random_prompts(&args, cfg.vocab_size);

    if args.warmup_tokens > 0 {
        let warm: Vec<Vec<u32>> = prompts.iter().take(2).cloned().collect();
        let mut g = Generator::new(&cfg, &weights, args.warmup_tokens, &[], Sampling::greedy())?;
        for (i, p) in warm.into_iter().enumerate() {
            g.add(i, p, 0)?;
        }
        while !g.is_empty() {
            g.step()?;
        }
    }

    let mut g = Generator::new(&cfg, &weights, args.new_tokens, &[], Sampling::greedy())?;
    for (i, p) in prompts.into_iter().enumerate() {
        g.add(i, p, 0)?;
    }
    // Every step ends with the chosen tokens on the host, so wall time is device time.
    let start = Instant::now();
    let mut generated = 0;
    let mut done = g.step()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut steps = 0usize;
    while !g.is_empty() {
        done.extend(g.step()?);
        steps += 1;
    }
    let total_s = start.elapsed().as_secs_f64();
    for (_, out) in &done {
        generated += out.ids.len();
    }
    if generated != args.batch * args.new_tokens {
        bail!(
            "generated {generated} tokens, expected {} x {}",
            args.batch,
            args.new_tokens
        );
    }
    let decode_s = total_s - prefill_s;
    let per_step = |x: f64| if steps > 0 { x } else { 0.0 };
    let report = Report {
        shape: args.shape.clone(),
        layers: cfg.num_hidden_layers,
        device: args.device.device.clone(),
        dtype: format!("{dtype:?}").to_lowercase(),
        batch: args.batch,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        prefill_s,
        decode_s,
        total_s,
        tokens_per_s: generated as f64 / total_s,
        decode_tokens_per_s: per_step((args.batch * steps) as f64 / decode_s),
        ms_per_step: per_step(decode_s * 1e3 / steps.max(1) as f64),
    };
    println!(
        "generate {} ({} layers, {}, {}): batch {}, {} prompt + {} new tokens: prefill {:.3} s, \
         decode {:.3} s ({:.2} ms/step), {:.1} tokens/s ({:.1} in decode)",
        report.shape,
        report.layers,
        report.device,
        report.dtype,
        report.batch,
        report.prompt_tokens,
        report.new_tokens,
        report.prefill_s,
        report.decode_s,
        report.ms_per_step,
        report.tokens_per_s,
        report.decode_tokens_per_s
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// Weights as transformers initializes Qwen2 (matrices N(0, 0.02), biases 0, norms 1), drawn
/// on the device itself: a 1.5B model in a second on a GPU, none of it through the host.
fn random_weights(
    cfg: &Qwen2Config,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<ModelWeights> {
    Ok(ModelWeights::build(cfg, |spec| {
        let shape = spec.shape.as_slice();
        let t = if spec.name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if spec.name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?
        };
        Ok(t.to_dtype(dtype)?)
    })?)
}

/// `batch` prompts of random token ids (an LCG: the same prompts for a seed everywhere).
fn random_prompts(args: &GenerateArgs, vocab: usize) -> Vec<Vec<u32>> {
    let mut state = args.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..args.batch)
        .map(|_| {
            (0..args.prompt_tokens)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}
