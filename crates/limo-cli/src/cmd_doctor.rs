//! `limo doctor`: runs every operation on the GPU and on the CPU reference with the same inputs
//! and compares them. Today the GPU runs the device-generic (candle tensor-op) forms of the
//! operations; our own CUDA kernels join the same table as they land.

use anyhow::bail;
use candle_core::Device;
use clap::Args;
use limo_ops::crosscheck::crosscheck;

#[derive(Args)]
pub struct DoctorArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Largest relative L2 error accepted (f32 inputs).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let gpu = open_gpu(args.device)?;
    let checks = crosscheck(&Device::Cpu, &gpu)?;
    println!(
        "{:<22} {:<48} {:<9} {:>11}  result",
        "operation", "shape", "output", "rel. error"
    );
    let mut failed = 0;
    for c in &checks {
        let ok = c.passed(args.tolerance);
        failed += usize::from(!ok);
        let verdict = if ok {
            "ok"
        } else if c.finite {
            "FAIL"
        } else {
            "FAIL (NaN/inf)"
        };
        println!(
            "{:<22} {:<48} {:<9} {:>11.3e}  {verdict}",
            c.op, c.shape, c.output, c.rel_error
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed (tolerance {:e})",
            checks.len(),
            args.tolerance
        );
    }
    println!(
        "all {} checks passed (tolerance {:e})",
        checks.len(),
        args.tolerance
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn open_gpu(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace when RUST_BACKTRACE is set; the first line is the cause.
        let cause = e.to_string().lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!("no usable GPU (CUDA device {ordinal}): {cause}")
    })
}

#[cfg(not(feature = "cuda"))]
fn open_gpu(_ordinal: usize) -> anyhow::Result<Device> {
    bail!("no GPU support in this build: build with --features cuda (docs/CUDA.md)")
}
