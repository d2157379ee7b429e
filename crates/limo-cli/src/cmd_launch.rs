//! `limo launch`: runs a limo command as N processes of a distributed job (torchrun's
//! contract). The supervision lives in `limo_dist::launch`; this file parses the command line.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use limo_dist::env::parse_seconds;
use limo_dist::launch::{launch, LaunchSpec};

#[derive(Args)]
pub struct LaunchArgs {
    /// Processes on this machine (one per GPU, or CPU ranks).
    #[arg(long)]
    nproc_per_node: usize,
    /// Machines in the job; run `limo launch` once on each with its --node-rank.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This machine's index, 0..nnodes (node 0 hosts rank 0).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0, where the ranks meet.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port on node 0 [default: a free port on one machine, 29500 across machines]; 0 is a
    /// free port too (one machine only).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds a rank waits for the others (rendezvous, each collective) before failing with
    /// the missing ranks' names; sets LIMO_DIST_TIMEOUT for the children [default: the
    /// command's own: 900 for train, 300 for comm-check].
    #[arg(long, value_name = "SECS")]
    timeout: Option<String>,
    /// Seconds the other ranks get between SIGTERM and SIGKILL when one failed. (A signal to
    /// the launcher is forwarded and waited for: `limo train` ranks then finish their step and
    /// save a checkpoint; a second signal, a second or more after the first, kills them.)
    #[arg(long, value_name = "SECS", default_value = "5")]
    grace: String,
    /// The limo command each rank runs, e.g. `-- train --config run.toml`.
    #[arg(last = true, required = true, value_name = "LIMO ARGS")]
    command: Vec<OsString>,
}

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let timeout: Option<Duration> = args
        .timeout
        .as_deref()
        .map(|t| parse_seconds(t).with_context(|| format!("--timeout {t}")))
        .transpose()?;
    let grace = parse_seconds(&args.grace).with_context(|| format!("--grace {}", args.grace))?;
    if args.command.first().is_some_and(|c| c == "launch") {
        bail!("`limo launch -- launch` would start a launcher in every rank; give the ranks' command, e.g. `-- train --config FILE`");
    }
    let program = std::env::current_exe().context("finding the limo executable")?;
    launch(&LaunchSpec {
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
        timeout,
        grace,
        program,
        args: args.command,
    })
}
