//! Distributed training for limo (DESIGN.md choices 2 and 9). Today: the `Communicator` trait
//! with its in-process backend, and the memory planner behind `limo plan`; ZeRO-3 sharding and
//! the NCCL backend will live here too.

pub mod comm;
pub mod groups;
pub mod plan;
