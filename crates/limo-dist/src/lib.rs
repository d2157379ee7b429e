//! Distributed training for limo (DESIGN.md choices 2 and 9). Today: the memory planner behind
//! `limo plan`; the Communicator and ZeRO-3 sharding will live here too.

pub mod plan;
