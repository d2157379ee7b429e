//! The Qwen2 decoder of limo: Hugging Face config and checkpoints in and out, and an explicit
//! forward and backward per decoder layer, written with candle tensor ops
//! and the fused operations of `limo-ops`, so the same code runs on CPU and CUDA tensors.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod init;
mod kv_cache;
pub mod layer;
pub mod model;
pub mod params;
pub mod sampling;
pub mod writer;

pub use config::Qwen2Config;
pub use error::{Error, Result};
pub use model::Batch;
pub use params::{LayerWeights, ModelWeights};
