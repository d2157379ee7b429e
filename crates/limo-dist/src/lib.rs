//! Distributed training for limo: the `Communicator` trait with its
//! backends (threads in one process, TCP across processes and machines, NCCL on GPUs), the
//! run's placement from torchrun's or Slurm's variables, the `limo launch` process supervisor,
//! and the memory planner behind `limo plan`.

pub mod comm;
pub mod connect;
pub mod env;
pub mod groups;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod plan;
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
