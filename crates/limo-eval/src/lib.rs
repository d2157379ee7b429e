//! `limo eval`: LIMO's evaluation in the same binary as training. The benchmark files
//! (`benchmarks/`, from LIMO's repository), the rule-based grader LIMO scores with
//! (`grader.rs`: last `\boxed{}` answer, normalization, numeric / symbolic / choice equivalence),
//! and the evaluation run over a model (`run.rs`: chat-template prompts, batched KV-cache
//! generation, results streamed and resumable, unfinished responses kept in `in_flight.rs`) and
//! its report (`summary.rs`). Files are written whole or not at all (`atomic.rs`).

mod atomic;
pub mod benchmarks;
mod checks;
pub mod grader;
pub mod in_flight;
pub mod ranks;
pub mod run;
pub mod summary;

pub use atomic::{write_atomic, AtomicFile};
