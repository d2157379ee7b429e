//! The limo trainer: run configuration, AdamW on fp32 master weights, learning-rate schedules,
//! the training loop over ZeRO-3 shards, sharded checkpoints with exact resume at any world
//! size, and export to Hugging Face format.

pub mod agreement;
pub mod bench;
pub mod checkpoint;
pub mod comm_thread;
pub mod config;
pub mod eval;
pub mod export;
pub mod llamafactory;
pub mod metrics;
pub mod optim;
pub mod order;
pub mod parity;
pub mod profile;
pub mod schedule;
pub mod source;
pub mod synthetic;
pub mod tensorboard;
pub mod trainer;
pub mod zero3;

pub use config::TrainConfig;
pub use trainer::{train, RunOptions, RunSummary, Stopped};
