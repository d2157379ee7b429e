//! `limo doctor`: runs every operation on the GPU (where they dispatch to our CUDA kernels) and
//! on the CPU reference with the same fresh random inputs and compares them: relative L2 error
//! against a bound per dtype, NaN/inf checks, kernel outputs poisoned with NaN before each run.
//! Prints one table row per compared output and exits non-zero on any failure.

use crate::out::{self, outln};
use anyhow::bail;
use candle_core::{DType, Device};
use clap::Args;
use limo_ops::crosscheck::{crosscheck_each, DumpTo, Options, GROUPS};

#[derive(Args)]
pub struct DoctorArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Skip the training-size shapes (16k tokens, 152k vocabulary), whose CPU reference takes
    /// minutes.
    #[arg(long)]
    quick: bool,
    /// Seed of the random inputs (default: a fresh one from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Only these groups of checks (comma-separated): attention, norm_rope_swiglu, decode,
    /// qkv_append, losses, embedding, sum_of_squares, flat_gradients, adamw, attention_16k (on
    /// a 9.x GPU, the sm90 flash kernels against the sm80 ones on one 16k-token document).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only inputs of this dtype (default: f32 and bf16).
    #[arg(long, value_parser = ["f32", "bf16"])]
    dtype: Option<String>,
    /// Write every failed output there: `reference` and `result` as safetensors files and a
    /// line each in index.jsonl (the check, the seed, where the errors are).
    #[arg(long, value_name = "DIR")]
    dump: Option<std::path::PathBuf>,
    /// At most this many MiB of tensors in --dump's files (later failures get their index
    /// line only).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    dump_mib: usize,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    if let Some(bad) = args.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        bail!(
            "--only {bad}: no such group of checks (groups: {})",
            GROUPS.join(", ")
        );
    }
    let gpu = open_gpu(args.device)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    outln!("{}", describe(&gpu))?;
    outln!("inputs: seed {seed} (rerun with --seed {seed})")?;
    let opts = Options {
        dtypes: match args.dtype.as_deref() {
            Some("f32") => vec![DType::F32],
            Some(_) => vec![DType::BF16],
            None => vec![DType::F32, DType::BF16],
        },
        large: !args.quick,
        seed,
        only: args.only,
        dump: args.dump.map(|dir| DumpTo {
            dir,
            budget_bytes: args.dump_mib << 20,
        }),
    };
    outln!(
        "{:<28} {:<46} {:<5} {:<15} {:>10} {:>8}  result",
        "operation",
        "shape",
        "dtype",
        "output",
        "rel. error",
        "bound"
    )?;
    // Rows print as the checks finish: a kernel fault that ends the run keeps the rows before it.
    let (mut failed, mut printed) = (0, None);
    let checks = crosscheck_each(&Device::Cpu, &gpu, &opts, &mut |c| {
        let ok = c.passed();
        failed += usize::from(!ok);
        let verdict = if ok {
            "ok"
        } else if c.error.is_some() {
            "ERROR"
        } else if c.finite {
            "FAIL"
        } else {
            "FAIL (NaN/inf)"
        };
        let mut row = format!(
            "{:<28} {:<46} {:<5} {:<15} {:>10.3e} {:>8.0e}  {verdict}\n",
            c.op,
            c.shape,
            format!("{:?}", c.dtype).to_lowercase(),
            c.output,
            c.rel_error,
            c.tolerance
        );
        if let Some(detail) = &c.detail {
            row += &format!("  where: {detail}\n");
        }
        if let Some(error) = &c.error {
            row += &format!("  error: {error}\n");
        }
        if printed.is_none() {
            printed = out::print(&row).err();
        }
    })?;
    if let Some(e) = printed {
        return Err(e);
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    outln!("all {} checks passed", checks.len())?;
    Ok(())
}

/// One line about the GPU: name and compute capability (which kernel build it loads).
#[cfg(feature = "cuda")]
fn describe(gpu: &Device) -> String {
    let Ok(dev) = gpu.as_cuda_device() else {
        return "GPU: not a CUDA device".into();
    };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().unwrap_or_else(|e| format!("? ({e})"));
    match ctx.compute_capability() {
        Ok((major, minor)) => {
            let image = match limo_ops::cuda::kernel_image_for(major) {
                Ok(limo_ops::cuda::KernelImage::Sm90Cubin) => "sm90 cubin".to_string(),
                Ok(limo_ops::cuda::KernelImage::Sm90Ptx) => "sm90 PTX, JIT".to_string(),
                Ok(limo_ops::cuda::KernelImage::Sm80Ptx) => "sm80 PTX, JIT".to_string(),
                Err(e) => e.to_string(),
            };
            format!("GPU: {name}, compute capability {major}.{minor} (kernels: {image})")
        }
        Err(e) => format!("GPU: {name}, compute capability unknown ({e})"),
    }
}

#[cfg(not(feature = "cuda"))]
fn describe(_gpu: &Device) -> String {
    unreachable!("open_gpu fails without the cuda feature")
}

/// `--device`, `--gpu` and `--dtype` of the commands that run a model on either device (eval,
/// bench generate, bench step).
#[derive(Args)]
pub struct DeviceArgs {
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Compute dtype (default: bf16 on cuda, f32 on cpu).
    #[arg(long, value_parser = ["bf16", "f32", "f64"])]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    pub fn cuda(&self) -> bool {
        self.device == "cuda"
    }

    /// See [`compute_dtype`].
    pub fn dtype(&self) -> anyhow::Result<DType> {
        compute_dtype(self.cuda(), self.dtype.as_deref())
    }

    /// [`Self::dtype`], refusing f64 on the GPU (the benchmarks time bf16 or f32 there).
    pub fn bench_dtype(&self) -> anyhow::Result<DType> {
        let dtype = self.dtype()?;
        if self.cuda() && dtype == DType::F64 {
            bail!("--dtype f64 runs on --device cpu");
        }
        Ok(dtype)
    }

    /// The `--gpu` device with `--device cuda`, else the CPU.
    pub fn open(&self) -> anyhow::Result<Device> {
        if self.cuda() {
            open_gpu(self.gpu)
        } else {
            Ok(Device::Cpu)
        }
    }
}

/// The compute dtype of a command's `--dtype` (default bf16 on a GPU, f32 on the CPU); bf16 on
/// the CPU is refused, as the CPU reference computes in f32 or f64.
pub fn compute_dtype(cuda: bool, dtype: Option<&str>) -> anyhow::Result<DType> {
    let dtype = limo_model::model::parse_dtype(dtype.unwrap_or(if cuda { "bf16" } else { "f32" }))?;
    if !cuda && dtype == DType::BF16 {
        bail!("--dtype bf16 runs on --device cuda; the CPU computes in f32 or f64");
    }
    Ok(dtype)
}

/// Device `ordinal`, or a one-line error (no GPU, the stub driver, no cuda feature).
#[cfg(feature = "cuda")]
pub fn open_gpu(ordinal: usize) -> anyhow::Result<Device> {
    // candle appends a backtrace when RUST_BACKTRACE is set; the first line is the cause.
    let first_line = |e: candle_core::Error| {
        let cause = e.to_string().lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!("no usable GPU (CUDA device {ordinal}): {cause}")
    };
    // Its own stream, freed memory kept in the pool (see open_device).
    limo_ops::cuda::pool::open_device(ordinal).map_err(first_line)
}

#[cfg(not(feature = "cuda"))]
pub fn open_gpu(_ordinal: usize) -> anyhow::Result<Device> {
    bail!("no GPU support in this build: build with --features cuda (docs/CUDA.md)")
}
