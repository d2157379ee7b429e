//! Distributed training for limo: the `Communicator` trait with its
//! backends (threads in one process, TCP across processes and machines, NCCL on GPUs), the
//! run's placement from torchrun's or Slurm's variables, and the `limo launch` process
//! supervisor. It knows nothing of models or training: ZeRO-3 (groups, the engine, the memory
//! planner) lives in limo-train's `zero3` module.

pub mod comm;
pub mod connect;
pub mod env;
pub mod launch;
pub mod lock;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod shared_dir;
pub mod simulated;
pub mod socket;
#[cfg(test)]
mod socket_tests;
pub mod stop;
mod wire;

pub use connect::{connect, SoloComm};
pub use env::DistEnv;
#[cfg(feature = "cuda")]
pub use nccl::{connect_nccl, NcclComm};
pub use simulated::SimulatedComm;
pub use socket::SocketComm;

/// Ranks a job may have: past the largest clusters, and small enough that per-rank tables
/// (rendezvous slots, simulated all-gathers) allocate; a larger world size is a typo.
pub const MAX_WORLD_SIZE: usize = 1 << 20;

/// `ranks` as `[1, 3]`, or its first 16 and a count when there are more (a timeout at 100,000
/// ranks printed every one on one line).
pub fn rank_list(ranks: &[usize]) -> String {
    const SHOWN: usize = 16;
    if ranks.len() <= SHOWN {
        return format!("{ranks:?}");
    }
    let head: Vec<String> = ranks[..SHOWN].iter().map(usize::to_string).collect();
    format!("[{}, ... {} more]", head.join(", "), ranks.len() - SHOWN)
}
