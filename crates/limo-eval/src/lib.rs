//! `limo eval`: LIMO's evaluation in the same binary as training. The benchmark files
//! (`benchmarks/`, from LIMO's repository), the rule-based grader LIMO scores with
//! (`grader.rs`: last `\boxed{}` answer, normalization, numeric / symbolic / choice equivalence),
//! and the evaluation run over a model (`run.rs`: chat-template prompts, batched KV-cache
//! generation, results streamed and resumable, unfinished responses kept in `in_flight.rs`) and
//! its report (`summary.rs`).

pub mod benchmarks;
mod checks;
pub mod grader;
pub mod in_flight;
pub mod ranks;
pub mod run;
pub mod summary;

use std::io::Write;

/// Writes `text` to `path` through a synced temporary file renamed into place, so a crash
/// leaves the old file or the new one (summary.json, in-flight saves, ranks' done marks).
pub(crate) fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}
