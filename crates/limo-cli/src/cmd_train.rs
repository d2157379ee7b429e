//! `limo train`: the main job.

use crate::out::{self, outln};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use clap::Args;
use limo_dist::env::timeout_from_env;
use limo_dist::{connect, DistEnv};
use limo_train::config::{DeviceKind, TINY_TOML};
use limo_train::{train, RunOptions, TrainConfig};

/// How long a rank waits in a collective for the others (`LIMO_DIST_TIMEOUT` overrides):
/// longer than rank 0's evaluation and the slowest checkpoint write.
const DEFAULT_DIST_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Args)]
#[command(
    after_help = "SIGTERM, SIGINT (Ctrl-C), SIGUSR1 or SIGHUP (a closed terminal; not under \
nohup) during the steps: every rank finishes its step, a checkpoint is saved, and limo exits with 128 + the signal's number; \
--resume continues exactly (docs/LAUNCH.md, \"Stopping a run\")."
)]
pub struct TrainArgs {
    /// Run configuration (TOML). Without it, the embedded default (configs/tiny.toml) runs.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config field, e.g. --set train.lr=1e-5 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Resume from `latest` (the default when given without a value), one of the run's
    /// checkpoints by step (`20`) or name (`step-00000020`), or a checkpoint directory;
    /// `auto`: from the latest checkpoint if the run has one, else start fresh (one command line
    /// for a job a scheduler restarts). Without --resume, a run directory holding checkpoints
    /// is refused unless output.overwrite = true.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    resume: Option<String>,
    /// Print the resolved configuration (TOML, after a LLaMA-Factory YAML's mapping, --set and
    /// validation) and exit without training.
    #[arg(long)]
    print_config: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => TrainConfig::from_file(path, &args.overrides)?,
        None => TrainConfig::parse(TINY_TOML, "configs/tiny.toml (embedded)", &args.overrides)?,
    };
    if args.print_config {
        out::print(&limo_train::llamafactory::resolved_toml(&config)?)?;
        return Ok(());
    }
    let origin = args
        .config
        .as_ref()
        .map_or("configs/tiny.toml (embedded)".into(), |p| {
            p.display().to_string()
        });
    // Under `limo launch`, torchrun or Slurm: this process is one rank of the job.
    let env = DistEnv::from_env()?;
    // Alone, everything is checked before the device opens. A rank of many checks only what
    // every rank answers alike; what is local to a node (the model's copy) is checked once the
    // ranks are connected, so that a rank lacking it stops them all instead of never joining.
    let alone = env.as_ref().is_none_or(|e| e.world_size == 1);
    let preflight = if alone {
        config.preflight()
    } else {
        config.preflight_build()
    };
    preflight.map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let gpu = match (&env, config.model.device) {
        (Some(env), DeviceKind::Cuda) => env.gpu()?,
        _ => 0,
    };
    let device = open_device(config.model.device, gpu)?;
    let comm = match env {
        Some(env) if env.world_size > 1 => {
            let timeout = timeout_from_env(DEFAULT_DIST_TIMEOUT)?;
            Some(connect_ranks(&env, &device, timeout)?)
        }
        _ => None,
    };
    let options = RunOptions {
        resume: args.resume,
        progress: std::io::stderr().is_terminal(),
        comm,
        device: Some(device),
        stop_on_signals: true,
        origin: Some(origin),
    };
    let summary = train(&config, options)?;
    if summary.rank != 0 {
        return Ok(());
    }
    if let Some((before, after)) = &summary.evaluation {
        let shown = before.samples.iter().zip(&after.samples).take(3);
        for ((question, answer_before), (_, answer_after)) in shown {
            outln!("Q: {question}")?;
            outln!("greedy answer before training: {answer_before:?}")?;
            outln!(
                "greedy answer after training:  {}\n",
                answer_after.replace('\n', " ")
            )?;
        }
        outln!(
            "boxed-answer accuracy on {} held-out problems: {:.1}% before training, {:.1}% after",
            after.total,
            100.0 * before.accuracy(),
            100.0 * after.accuracy()
        )?;
    }
    let validation = summary
        .eval_loss
        .map(|(first, last)| match first == last {
            true => format!(", validation loss {last:.4}"),
            false => format!(", validation loss {first:.4} -> {last:.4}"),
        })
        .unwrap_or_default();
    outln!(
        "trained {} steps on {} rank(s): loss {:.4} -> {:.4}{validation}; output in {}",
        summary.steps,
        summary.world_size,
        summary.first_loss,
        summary.last_loss,
        summary.output.display()
    )?;
    Ok(())
}

/// The device of this rank: the CPU, or GPU `ordinal` of this machine ([`DistEnv::gpu`]).
fn open_device(kind: DeviceKind, ordinal: usize) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cuda => {
            // candle appends a backtrace when RUST_BACKTRACE is set; the first line is the cause.
            let first_line = |e: candle_core::Error| {
                let cause = e.to_string().lines().next().unwrap_or_default().to_string();
                anyhow::anyhow!("model.device: no usable GPU (CUDA device {ordinal}): {cause}")
            };
            // Its own stream, freed memory kept in the pool (see open_device); without the
            // cuda feature new_cuda fails with candle's "not compiled with cuda" error.
            #[cfg(feature = "cuda")]
            let device = limo_ops::cuda::pool::open_device(ordinal).map_err(first_line)?;
            #[cfg(not(feature = "cuda"))]
            let device = Device::new_cuda(ordinal).map_err(first_line)?;
            Ok(device)
        }
        DeviceKind::Cpu => Ok(Device::Cpu),
    }
}

/// NCCL between GPUs, TCP between CPU ranks.
fn connect_ranks(
    env: &DistEnv,
    device: &Device,
    timeout: Duration,
) -> anyhow::Result<Box<dyn limo_dist::comm::Communicator>> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return limo_dist::connect_nccl(env, device, timeout);
    }
    let _ = device;
    connect(env, timeout)
}
