//! The `limo` binary: one command line for every job limo does.

mod cmd_bench;
mod cmd_bench_step;
mod cmd_comm_check;
mod cmd_data;
mod cmd_debug;
mod cmd_doctor;
mod cmd_eval;
mod cmd_export;
mod cmd_init;
mod cmd_launch;
mod cmd_plan;
mod cmd_train;
mod out;

use clap::{Parser, Subcommand};
use std::io::Write;

/// See Cargo.toml: large per-step buffers are reused instead of faulted in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "limo",
    version,
    about = "Full-parameter SFT of Qwen2-family models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model (with no --config: the embedded default run on generated data).
    Train(cmd_train::TrainArgs),
    /// Write a checkpoint as a Hugging Face model directory.
    Export(cmd_export::ExportArgs),
    /// Inspect datasets exactly as the trainer will see them.
    #[command(subcommand)]
    Data(cmd_data::DataCommand),
    /// Write a random-initialized Qwen2.5-shaped checkpoint in Hugging Face format.
    InitModel(cmd_init::InitModelArgs),
    /// Per-GPU memory and step time of a run config under ZeRO-3 on N GPUs.
    Plan(cmd_plan::PlanArgs),
    /// Check every operation on the GPU against the CPU reference.
    Doctor(cmd_doctor::DoctorArgs),
    /// Benchmarks: the training step and generation (CPU or GPU), our CUDA kernels.
    #[command(subcommand)]
    Bench(cmd_bench::BenchCommand),
    /// Developer tools: loss and gradients of one batch.
    #[command(subcommand)]
    Debug(cmd_debug::DebugCommand),
    /// LIMO's benchmarks on a model (greedy or sampled, graded as LIMO grades), or `eval grade`.
    Eval(cmd_eval::EvalArgs),
    /// Run a limo command as N processes of a distributed job (torchrun's variables).
    Launch(cmd_launch::LaunchArgs),
    /// Check the communicator: fixed collectives with known results (a test workload).
    #[command(hide = true)]
    CommCheck(cmd_comm_check::CommCheckArgs),
}

/// Colour in log lines only on a terminal, and never with NO_COLOR set (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        // After a SIGHUP stderr may be a hung-up terminal (EIO): tracing's report of a failed
        // write would panic in eprintln, mid-step, before the stop's checkpoint.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cmd_train::run(args),
        Command::Export(args) => cmd_export::run(args),
        Command::Data(cmd) => cmd_data::run(cmd),
        Command::InitModel(args) => cmd_init::run(args),
        Command::Plan(args) => cmd_plan::run(args),
        Command::Doctor(args) => cmd_doctor::run(args),
        Command::Bench(cmd) => cmd_bench::run(cmd),
        Command::Debug(cmd) => cmd_debug::run(cmd),
        Command::Eval(args) => cmd_eval::run_cmd(args),
        Command::Launch(args) => cmd_launch::run(args),
        Command::CommCheck(args) => cmd_comm_check::run(args),
    };
    if let Err(err) = result {
        // One line, the whole cause chain: users grep logs for it. Not eprintln: stderr may be
        // gone (a closed terminal's SIGHUP stopped the run) and the exit status still matters.
        let _ = writeln!(std::io::stderr(), "error: {err:#}");
        let out_of_memory = err.downcast_ref::<cmd_bench_step::OutOfMemory>().is_some();
        let stopped = match err.downcast_ref::<limo_train::Stopped>() {
            Some(s) => Some(s.signal),
            None => err
                .downcast_ref::<limo_eval::in_flight::Stopped>()
                .map(|s| Some(s.signal))
                .or_else(|| {
                    err.downcast_ref::<limo_dist::launch::Interrupted>()
                        .map(|i| Some(i.signal))
                }),
        };
        std::process::exit(match stopped {
            Some(signal) => limo_dist::stop::exit_status(signal),
            None if out_of_memory => 3,
            None => 1,
        });
    }
}
