//! `limo bench generate`: batched greedy generation (the path of `limo eval`: one packed
//! prefill, then KV-cache decode steps of the whole batch) on random weights of a Qwen2.5
//! shape, timed: prefill, decode and tokens/s. No stop token, so every sequence generates
//! exactly `--new-tokens` tokens (what a throughput comparison needs). `--verify` then checks
//! the generation against the full forward (no cache) on the same device.

use crate::out::outln;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use limo_model::generate::{CachedModel, Generator, KvCache, Sampling};
use limo_model::init::{preset_config, SHAPES};
use limo_model::model::next_token_logits;
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
    /// After the timed run, check it against the full forward (no cache) on the same device:
    /// the first and last sequences' logits through a cache of their own after the prefill and
    /// at a few decode steps (one past a 256-key split where there are enough), and whether the
    /// batch chose the full forward's argmax there (up to near ties). In the JSON; exit 1 when
    /// out of bounds.
    #[arg(long)]
    verify: bool,
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
    /// `--verify`'s result.
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<Verification>,
}

/// Generation against the full forward, at some steps of some sequences.
#[derive(Serialize, Debug)]
struct Verification {
    sequences: Vec<usize>,
    /// Generated tokens before each compared step (0: the prefill's logits).
    steps: Vec<usize>,
    /// Largest relative L2 of the cached logits against the full forward's.
    max_rel_l2: f64,
    /// Largest shortfall of the chosen token's logit from the full forward's maximum, in
    /// standard deviations of that row's logits (0 where the batch chose the argmax).
    max_gap_sd: f64,
    tolerance_rel_l2: f64,
    tolerance_gap_sd: f64,
    passed: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.new_tokens == 0 || args.prompt_tokens == 0 {
        bail!("--batch, --new-tokens and --prompt-tokens must be at least 1");
    }
    // The prefill's tokens and a sequence's positions are 32-bit ints in the kernels.
    let prefill = args.batch.checked_mul(args.prompt_tokens);
    let positions = args.prompt_tokens.checked_add(args.new_tokens);
    if [prefill, positions]
        .iter()
        .any(|n| n.is_none_or(|n| n > i32::MAX as usize))
    {
        bail!(
            "--batch {b} x --prompt-tokens {p} prefill tokens and --prompt-tokens {p} + \
             --new-tokens {n} positions must each be at most {}",
            i32::MAX,
            b = args.batch,
            p = args.prompt_tokens,
            n = args.new_tokens,
        );
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
    for (i, p) in prompts.iter().enumerate() {
        g.add(i, p.clone(), 0)?;
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
    let verification = if args.verify {
        done.sort_by_key(|(key, _)| *key);
        let outputs: Vec<Vec<u32>> = done.iter().map(|(_, out)| out.ids.clone()).collect();
        let seqs = [0, args.batch - 1];
        let seqs = &seqs[..if args.batch > 1 { 2 } else { 1 }];
        Some(verify(&cfg, &weights, &prompts, &outputs, seqs, dtype)?)
    } else {
        None
    };
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
        verify: verification,
    };
    outln!(
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
    )?;
    if let Some(v) = &report.verify {
        outln!(
            "verify against the full forward: sequences {:?}, steps {:?}: logits rel. L2 up to \
             {:.2e} (bound {:.0e}), chosen token up to {:.3} sd below the argmax (bound {}): {}",
            v.sequences,
            v.steps,
            v.max_rel_l2,
            v.tolerance_rel_l2,
            v.max_gap_sd,
            v.tolerance_gap_sd,
            if v.passed { "ok" } else { "FAIL" }
        )?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("{}", path.display()))?;
    }
    if report.verify.as_ref().is_some_and(|v| !v.passed) {
        bail!("the generation disagrees with the full forward (see the verify line)");
    }
    Ok(())
}

/// `--verify`: sequences `seqs` (prompts and generated `outputs`) again through a cache of
/// their own ([`CachedModel`]: the kernels of the batched run, its generated tokens fed back),
/// their logits compared with [`next_token_logits`] (the whole prefix, no cache) after the
/// prefill and at a few decode steps, and the batch's choices there with the full forward's
/// argmax. bf16 runs get bounds for bf16 rounding through every layer (and near ties between
/// the top logits); f32 and f64 only for summation order.
fn verify(
    cfg: &Qwen2Config,
    weights: &ModelWeights,
    prompts: &[Vec<u32>],
    outputs: &[Vec<u32>],
    seqs: &[usize],
    dtype: DType,
) -> anyhow::Result<Verification> {
    let n = seqs.iter().map(|&s| outputs[s].len()).min().unwrap_or(0);
    let mut steps: Vec<usize> = [0, 1, 257, n.saturating_sub(1)]
        .into_iter()
        .filter(|&k| k < n)
        .collect();
    steps.dedup();
    let (tolerance_rel_l2, tolerance_gap_sd) = match dtype {
        DType::BF16 | DType::F16 => (5e-2, 0.5),
        _ => (1e-4, 1e-3),
    };
    let model = CachedModel::new(cfg, weights);
    let mut caches: Vec<KvCache> = seqs.iter().map(|_| model.new_cache()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let firsts: Vec<&[u32]> = seqs.iter().map(|&s| prompts[s].as_slice()).collect();
    let mut logits = model.prefill(&firsts, &mut refs)?;
    let (mut max_rel_l2, mut max_gap_sd) = (0f64, 0f64);
    let last = steps.last().copied().unwrap_or(0);
    for step in 0..=last {
        if steps.contains(&step) {
            for (b, &s) in seqs.iter().enumerate() {
                let prefix: Vec<u32> = [&prompts[s][..], &outputs[s][..step]].concat();
                let full = next_token_logits(cfg, weights, &prefix)?;
                let cached = logits.get(b)?;
                max_rel_l2 = max_rel_l2.max(limo_ops::rel_l2(&cached, &full)?);
                max_gap_sd = max_gap_sd.max(gap_sd(&full, outputs[s][step])?);
            }
        }
        if step < last {
            let tokens: Vec<u32> = seqs.iter().map(|&s| outputs[s][step]).collect();
            logits = model.decode(&tokens, &mut refs)?;
        }
    }
    Ok(Verification {
        sequences: seqs.to_vec(),
        passed: max_rel_l2 <= tolerance_rel_l2 && max_gap_sd <= tolerance_gap_sd,
        steps,
        max_rel_l2,
        max_gap_sd,
        tolerance_rel_l2,
        tolerance_gap_sd,
    })
}

/// How far `chosen`'s logit is below the row's maximum, in standard deviations of the row.
fn gap_sd(logits: &Tensor, chosen: u32) -> anyhow::Result<f64> {
    let row = logits.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let sd = (row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let at = *row
        .get(chosen as usize)
        .context("a generated token outside the vocabulary")?;
    Ok((max - at) / sd.max(f64::MIN_POSITIVE))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_generation_and_catches_a_token_that_is_not_the_argmax(
    ) -> anyhow::Result<()> {
        let cfg = Qwen2Config::from_json(&preset_config("tiny")?.to_string())?;
        let weights = random_weights(&cfg, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5, 6, 7, 8]];
        let mut g = Generator::new(&cfg, &weights, 12, &[], Sampling::greedy())?;
        for (i, p) in prompts.iter().enumerate() {
            g.add(i, p.clone(), 0)?;
        }
        let mut done = Vec::new();
        while !g.is_empty() {
            done.extend(g.step()?);
        }
        done.sort_by_key(|(key, _)| *key);
        let mut outputs: Vec<Vec<u32>> = done.into_iter().map(|(_, out)| out.ids).collect();
        let good = verify(&cfg, &weights, &prompts, &outputs, &[0, 1], DType::F32)?;
        assert!(good.passed, "{good:?}");
        assert_eq!(good.steps, [0, 1, 11]);
        assert!(good.max_rel_l2 < 1e-5 && good.max_gap_sd == 0.0, "{good:?}");
        // Sequence 1's second token replaced: not what the full forward picks at step 1.
        outputs[1][1] = (outputs[1][1] + 1) % cfg.vocab_size as u32;
        let bad = verify(&cfg, &weights, &prompts, &outputs, &[0, 1], DType::F32)?;
        assert!(!bad.passed && bad.max_gap_sd > 1e-3, "{bad:?}");
        // The logits themselves still agree: both paths read the same (changed) prefix.
        assert!(bad.max_rel_l2 < 1e-5, "{bad:?}");
        Ok(())
    }
}
