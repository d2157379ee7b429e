//! `limo bench step`: one training step of a Qwen2.5 shape on random weights, timed by phase
//! (limo_train::bench), with peak memory; `--simulate-world W` plays one rank of a W-way job and
//! `--mem-cap` leaves only that much device memory, as on a smaller GPU.

use crate::out;
use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;
use limo_model::init::SHAPES;
use limo_train::bench::{self, StepBench};
use limo_train::config::TINY_TOML;
use limo_train::zero3::plan::parse_bytes;
use limo_train::TrainConfig;

use crate::cmd_doctor::DeviceArgs;

#[derive(Args)]
pub struct StepArgs {
    /// Qwen2.5 shape of the random model.
    #[arg(long, value_parser = SHAPES)]
    shape: String,
    /// Decoder layers (default: the shape's; fewer for quick runs of large shapes, more to grow it).
    #[arg(long)]
    layers: Option<usize>,
    /// Tokens of the micro-batch.
    #[arg(long)]
    tokens: usize,
    /// Documents the tokens are packed as (1: one long sequence).
    #[arg(long, default_value_t = 1)]
    docs: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run configuration whose [train] section applies (default: the embedded one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config field as `limo train` does, e.g. --set train.loss_chunk=2048.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Play one rank of a job of this many ranks: 1/W of the state, collectives as local
    /// copies of the real sizes.
    #[arg(long)]
    simulate_world: Option<usize>,
    /// The rank played with --simulate-world.
    #[arg(long, default_value_t = 0)]
    rank: usize,
    /// Take device memory first so that only this much is left (e.g. 80GiB: an H100 on an
    /// H200). Running out of memory then exits 3 with the plan's estimate.
    #[arg(long)]
    mem_cap: Option<String>,
    /// Peak dense TFLOP/s for MFU (default: known GPUs by name).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Seed of the weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start the CUDA profiler's range before the first timed step and stop it after the last
    /// (cuProfilerStart/Stop), so that `ncu --profile-from-start off` sees the timed steps only.
    #[arg(long)]
    profile_range: bool,
}

/// The device ran out of memory: `limo` exits 3 so scripts can tell it from a failure.
#[derive(Debug)]
pub struct OutOfMemory(pub String);

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfMemory {}

pub fn run(args: StepArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => TrainConfig::from_file(path, &args.overrides)?,
        None => TrainConfig::parse(TINY_TOML, "configs/tiny.toml (embedded)", &args.overrides)?,
    };
    let cuda = args.device.cuda();
    let dtype = args.device.bench_dtype()?;
    if args.simulate_world.is_none() && args.rank != 0 {
        bail!("--rank needs --simulate-world");
    }
    if let Some(world) = args
        .simulate_world
        .filter(|&w| w > limo_dist::MAX_WORLD_SIZE)
    {
        bail!(
            "--simulate-world {world} is more than {} ranks",
            limo_dist::MAX_WORLD_SIZE
        );
    }
    if let Some(peak) = args.peak_tflops.filter(|p| !(p.is_finite() && *p > 0.0)) {
        bail!("--peak-tflops {peak} must be a positive number");
    }
    let mem_cap = args
        .mem_cap
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .context("--mem-cap")?;
    if mem_cap.is_some() && !cuda {
        bail!("--mem-cap applies to --device cuda");
    }
    if args.profile_range && !cuda {
        bail!("--profile-range applies to --device cuda");
    }
    let bench = StepBench {
        shape: args.shape.clone(),
        layers: args.layers,
        tokens: args.tokens,
        docs: args.docs,
        dtype,
        warmup: args.warmup,
        steps: args.steps,
        simulate: args.simulate_world.map(|w| (w, args.rank)),
        seed: args.seed,
        train: config.train.clone(),
        peak_tflops: args.peak_tflops,
        mem_cap,
    };
    let report = if cuda {
        gpu::run(&bench, args.device.gpu, mem_cap, args.profile_range)?
    } else {
        bench::run(&bench, &Device::Cpu, &cpu_name(), None)?
    };
    out::print(&report.table())?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// "cpu: <model name>, N threads".
fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    format!("cpu: {model}, {threads} threads")
}

// Only GPU runs report running out of memory (the CPU allocator aborts instead).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// Whether an error chain reports that the device is out of memory.
fn is_out_of_memory(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    // The offload's pinned host buffers fail with the same CUDA error: that is the host's.
    !text.contains("pinned host memory")
        && (text.contains("OUT_OF_MEMORY") || text.to_lowercase().contains("out of memory"))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// One line for a run that ran out of device memory, with the plan's estimate beside it (for
/// `gpu_mem`, the cap or the whole device, as the run planned).
fn out_of_memory(
    bench: &StepBench,
    err: &anyhow::Error,
    cap: Option<u64>,
    gpu_mem: Option<u64>,
) -> anyhow::Error {
    let estimate = bench::plan_estimate(bench, gpu_mem)
        .map(|gib| format!("{gib:.1} GiB"))
        .unwrap_or_else(|e| format!("unavailable ({e})"));
    let cap = cap.map_or("the whole device".into(), |c| {
        format!("--mem-cap {:.1} GiB", c as f64 / (1u64 << 30) as f64)
    });
    let cause = format!("{err:#}");
    let cause = cause.lines().next().unwrap_or_default();
    OutOfMemory(format!(
        "out of device memory with {cap} (limo plan estimates {estimate} per GPU for this run): {cause}"
    ))
    .into()
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use limo_train::bench::{StepBench, StepReport};

    pub fn run(
        _bench: &StepBench,
        ordinal: usize,
        _cap: Option<u64>,
        _profile_range: bool,
    ) -> anyhow::Result<StepReport> {
        crate::cmd_doctor::open_gpu(ordinal)?;
        unreachable!("open_gpu fails without the cuda feature")
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::Device;
    use limo_train::bench::{self, DeviceMemory, MemoryProbe, StepBench, StepReport};

    const GIB: f64 = (1u64 << 30) as f64;

    pub fn run(
        bench: &StepBench,
        ordinal: usize,
        cap: Option<u64>,
        profile_range: bool,
    ) -> anyhow::Result<StepReport> {
        let device = crate::cmd_doctor::open_gpu(ordinal)?;
        let stream = device.as_cuda_device()?.cuda_stream();
        let name = stream.context().name().unwrap_or_else(|_| "cuda".into());
        let held = match cap {
            Some(cap) => Some(Held::leaving(&device, cap)?),
            None => None,
        };
        let probe = Probe {
            device: device.clone(),
            held: held.as_ref().map_or(0, |h| h.bytes),
            profile_range,
        };
        let gpu_mem = cap.or(limo_ops::cuda::pool::memory_stats(&device)
            .ok()
            .map(|m| m.total));
        bench::run(bench, &device, &name, Some(&probe)).map_err(|e| oom_or(bench, e, cap, gpu_mem))
    }

    fn oom_or(
        bench: &StepBench,
        e: anyhow::Error,
        cap: Option<u64>,
        gpu_mem: Option<u64>,
    ) -> anyhow::Error {
        if super::is_out_of_memory(&e) {
            super::out_of_memory(bench, &e, cap, gpu_mem)
        } else {
            e
        }
    }

    /// Device memory taken outside the allocator's pool for the whole run.
    struct Held {
        ptr: sys::CUdeviceptr,
        bytes: u64,
    }

    impl Held {
        /// Takes all but `cap` bytes of the device's total memory.
        fn leaving(device: &Device, cap: u64) -> anyhow::Result<Self> {
            let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
            ctx.bind_to_thread()?;
            let (free, total) = result::mem_get_info()?;
            let take = (total as u64).saturating_sub(cap) as usize;
            anyhow::ensure!(
                take < free,
                "--mem-cap {:.1} GiB: only {:.1} GiB of {:.1} GiB are free, so the cap cannot be enforced",
                cap as f64 / GIB,
                free as f64 / GIB,
                total as f64 / GIB
            );
            if take == 0 {
                return Ok(Held { ptr: 0, bytes: 0 });
            }
            // SAFETY: a plain allocation, freed once in Drop, never read or written.
            let ptr = unsafe { result::malloc_sync(take) }?;
            tracing::info!(taken_gib = take as f64 / GIB, "memory cap in place");
            Ok(Held {
                ptr,
                bytes: take as u64,
            })
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            if self.ptr != 0 {
                // SAFETY: allocated by malloc_sync above and not freed elsewhere.
                let _ = unsafe { result::free_sync(self.ptr) };
            }
        }
    }

    /// The device's statistics; `held` is the `--mem-cap` block, not the run's own memory.
    struct Probe {
        device: Device,
        held: u64,
        /// `--profile-range`: the timed steps inside cuProfilerStart/Stop.
        profile_range: bool,
    }

    impl MemoryProbe for Probe {
        fn reset_peak(&self) -> anyhow::Result<()> {
            Ok(limo_ops::cuda::pool::reset_peak(&self.device)?)
        }

        fn timed_steps(&self, started: bool) -> anyhow::Result<()> {
            if !self.profile_range {
                return Ok(());
            }
            self.device.synchronize()?;
            let ctx = self
                .device
                .as_cuda_device()?
                .cuda_stream()
                .context()
                .clone();
            ctx.bind_to_thread()?;
            // SAFETY: plain driver calls on the bound context, no arguments.
            let status = unsafe {
                match started {
                    true => sys::cuProfilerStart(),
                    false => sys::cuProfilerStop(),
                }
            };
            status.result()?;
            Ok(())
        }

        fn read(&self) -> anyhow::Result<DeviceMemory> {
            let s = limo_ops::cuda::pool::memory_stats(&self.device)?;
            let used = s.total - s.free;
            Ok(DeviceMemory {
                allocator_high_gib: s.used_high as f64 / GIB,
                reserved_high_gib: s.reserved_high as f64 / GIB,
                driver_used_gib: used as f64 / GIB,
                driver_total_gib: s.total as f64 / GIB,
                process_gib: used.saturating_sub(self.held) as f64 / GIB,
            })
        }
    }
}
