//! `limo comm-check` (hidden): a workload for the launcher and the communicator that needs no
//! model. Each rank joins the group its environment describes, runs a fixed program of
//! collectives whose results have closed forms, checks every one, and prints a checksum of the
//! results that every rank must share. `--die-rank R --die-after-ms MS` makes rank R SIGKILL
//! itself mid-run, to test how the rest of the job reacts.

use crate::out::outln;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use limo_dist::comm::Communicator;
use limo_dist::env::{parse_seconds, timeout_from_env, DEFAULT_TIMEOUT};
use limo_dist::{connect, DistEnv};

#[derive(Args)]
pub struct CommCheckArgs {
    /// Rounds of the collective program.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Seconds to wait for the other ranks [default: LIMO_DIST_TIMEOUT, else 300].
    #[arg(long, value_name = "SECS")]
    timeout: Option<String>,
    /// With --die-rank: how long after start that rank kills itself.
    #[arg(long, value_name = "MS", requires = "die_rank")]
    die_after_ms: Option<u64>,
    /// The rank that kills itself (SIGKILL), simulating a crash.
    #[arg(long, value_name = "R", requires = "die_after_ms")]
    die_rank: Option<usize>,
    /// Use NCCL on GPU LOCAL_RANK instead of the CPU backend (cuda build).
    #[arg(long)]
    nccl: bool,
}

pub fn run(args: CommCheckArgs) -> anyhow::Result<()> {
    let env = DistEnv::from_env()?.unwrap_or(DistEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        local_world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: limo_dist::env::DEFAULT_MASTER_PORT,
    });
    let timeout = match &args.timeout {
        Some(t) => parse_seconds(t).with_context(|| format!("--timeout {t}"))?,
        None => timeout_from_env(DEFAULT_TIMEOUT)?,
    };
    eprintln!(
        "comm-check: rank {} of {}, pid {}",
        env.rank,
        env.world_size,
        std::process::id()
    );
    if let (Some(ms), Some(victim)) = (args.die_after_ms, args.die_rank) {
        if victim >= env.world_size {
            bail!(
                "--die-rank {victim}: the world has {} ranks",
                env.world_size
            );
        }
        if victim == env.rank {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                limo_dist::launch::kill_self()
            });
        }
    }
    let start = Instant::now();
    let (comm, device) = if args.nccl {
        nccl(&env, timeout)?
    } else {
        (connect(&env, timeout)?, Device::Cpu)
    };
    let checksum = check(comm.as_ref(), args.iterations, &device)?;
    outln!(
        "comm-check: rank {} world {} iterations {} checksum {checksum:016x} ok",
        env.rank,
        env.world_size,
        args.iterations
    )?;
    eprintln!(
        "comm-check: rank {} done in {:.2}s",
        env.rank,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn nccl(env: &DistEnv, timeout: Duration) -> anyhow::Result<(Box<dyn Communicator>, Device)> {
    let device = crate::cmd_doctor::open_gpu(env.gpu()?)?;
    Ok((limo_dist::connect_nccl(env, &device, timeout)?, device))
}

#[cfg(not(feature = "cuda"))]
fn nccl(_: &DistEnv, _: Duration) -> anyhow::Result<(Box<dyn Communicator>, Device)> {
    bail!("--nccl needs the cuda build (cargo build --features cuda, docs/CUDA.md)")
}

/// Runs the program on tensors of `device` and returns an FNV-1a hash of the results that are
/// the same on every rank. The values are small integers, exact whatever the summation order,
/// so every backend (NCCL included) must match the closed forms exactly.
fn check(c: &dyn Communicator, iterations: usize, device: &Device) -> anyhow::Result<u64> {
    let (rank, world) = (c.rank(), c.world_size());
    let tri = (world * (world + 1) / 2) as f64;
    let mut hash = Fnv::default();
    for i in 0..iterations {
        // Rank r contributes (r + 1) * ((i + j) % 97): small integers, exact in f32.
        let n = 1024;
        let mine: Vec<f32> = (0..n)
            .map(|j| ((rank + 1) * ((i + j) % 97)) as f32)
            .collect();
        let got = values(c.all_reduce(&Tensor::new(mine, device)?)?)?;
        let want: Vec<f64> = (0..n).map(|j| tri * ((i + j) % 97) as f64).collect();
        expect(i, "all_reduce", &got, &want)?;
        hash.add(&got);

        let got = values(c.all_gather(&Tensor::new(&[rank as f64, i as f64], device)?)?)?;
        let want: Vec<f64> = (0..world).flat_map(|r| [r as f64, i as f64]).collect();
        expect(i, "all_gather", &got, &want)?;
        hash.add(&got);

        // Rank r contributes r + j: the sum of element j is world(world-1)/2 + world * j.
        let mine: Vec<f32> = (0..2 * world).map(|j| (rank + j) as f32).collect();
        let got = values(c.reduce_scatter(&Tensor::new(mine, device)?)?)?;
        let want: Vec<f64> = (2 * rank..2 * rank + 2)
            .map(|j| ((world * (world - 1) / 2) + world * j) as f64)
            .collect();
        expect(i, "reduce_scatter", &got, &want)?;

        let root = i % world;
        let mine = Tensor::new(&[rank as f32, (i % 128) as f32], device)?.to_dtype(DType::BF16)?;
        let got = values(c.broadcast(&mine, root)?)?;
        expect(i, "broadcast", &got, &[root as f64, (i % 128) as f64])?;
        hash.add(&got);

        if i % 10 == 9 {
            c.barrier()?;
        }
    }
    c.barrier()?;
    Ok(hash.0)
}

fn values(t: Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1()?)
}

fn expect(iteration: usize, what: &str, got: &[f64], want: &[f64]) -> anyhow::Result<()> {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        bail!(
            "iteration {iteration}: {what} is wrong at element {at}: got {:?}, want {:?} \
             ({} values, want {})",
            got.get(at),
            want.get(at),
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// 64-bit FNV-1a over the bit patterns of the values.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    fn add(&mut self, values: &[f64]) {
        for v in values {
            for b in v.to_bits().to_le_bytes() {
                self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
    }
}
