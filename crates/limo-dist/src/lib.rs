//! Distributed training for limo: the `Communicator` trait with its
//! backends (threads in one process, TCP across processes and machines, NCCL on GPUs), the
//! run's placement from torchrun's or Slurm's variables, and the `limo launch` process
//! supervisor. It knows nothing of models or training: ZeRO-3 (groups, the engine, the memory
//! planner) lives in limo-train's `zero3` module.

pub mod comm;
pub mod connect;
pub mod env;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod simulated;
pub mod socket;
#[cfg(test)]
mod socket_tests;
mod wire;

pub use connect::{connect, SoloComm};
pub use env::DistEnv;
#[cfg(feature = "cuda")]
pub use nccl::{connect_nccl, NcclComm};
pub use simulated::SimulatedComm;
pub use socket::SocketComm;
