//! Responses still being generated when `limo eval` stops. Every `save_every`, and when a stop
//! signal arrives, each unfinished sequence's tokens and random stream state go to
//! `out_dir/in-flight.json` (a rank's own file under `limo launch`; written whole, then renamed
//! into place); a rerun gathers them into [`CARRIED_FILE`] and continues them where they were
//! ([`Generator::add_continued`](limo_model::generate::Generator)) instead of starting over.
//! LIMO's responses run to 32768 tokens: on a 32B model, minutes of GPU time each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use limo_model::generate::{derive_seed, Continuation};
use serde::{Deserialize, Serialize};

pub const IN_FLIGHT_FILE: &str = "in-flight.json";

/// One unfinished sample of one problem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub benchmark: String,
    pub id: String,
    pub sample: usize,
    /// The prompt it was generated from (its length and a hash of its ids): a rerun with
    /// another tokenizer or template starts the sample over rather than continue it.
    pub prompt_tokens: usize,
    pub prompt_hash: u64,
    pub ids: Vec<u32>,
    pub rng: u64,
    /// Seconds spent on it before it was saved.
    pub seconds: f64,
    /// The file it was read from (for errors that name it).
    #[serde(skip)]
    pub file: PathBuf,
}

impl Saved {
    pub fn new(
        key: &(String, String, usize),
        prompt: &[u32],
        c: Continuation,
        seconds: f64,
    ) -> Self {
        Self {
            benchmark: key.0.clone(),
            id: key.1.clone(),
            sample: key.2,
            prompt_tokens: prompt.len(),
            prompt_hash: prompt_hash(prompt),
            ids: c.ids,
            rng: c.rng,
            seconds,
            file: PathBuf::new(),
        }
    }

    /// Whether `prompt` is the one it was generated from.
    pub fn continues(&self, prompt: &[u32]) -> bool {
        self.prompt_tokens == prompt.len() && self.prompt_hash == prompt_hash(prompt)
    }

    /// Where to go on from.
    pub fn continuation(&self) -> Continuation {
        Continuation {
            ids: self.ids.clone(),
            rng: self.rng,
        }
    }

    /// The error for what no run saves (a file edited or damaged by hand): the file, the
    /// sequence, `what` is wrong, and the remedy, as for a file that does not parse.
    pub fn damaged(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: {MALFORMED}: {} problem {:?} sample {}: {what}",
            self.file.display(),
            self.benchmark,
            self.id,
            self.sample
        )
    }
}

const MALFORMED: &str = "malformed (delete it to generate its responses from the start)";

fn prompt_hash(prompt: &[u32]) -> u64 {
    let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
    derive_seed(0, &bytes)
}

#[derive(Serialize, Deserialize)]
struct InFlightFile {
    sequences: Vec<Saved>,
}

/// The file rank `rank` of `world` saves its unfinished responses to.
pub fn own_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    match world {
        1 => dir.join(IN_FLIGHT_FILE),
        _ => dir.join(format!("in-flight.rank-{rank}.json")),
    }
}

/// Every saved sequence in `dir`, of any rank of any earlier world size, by (benchmark, id,
/// sample); of two for one sample (a rank's file and an older one), the longer.
pub fn read_all(dir: &Path) -> anyhow::Result<HashMap<(String, String, usize), Saved>> {
    let mut all: HashMap<(String, String, usize), Saved> = HashMap::new();
    for path in crate::ranks::files_like(dir, "in-flight", ".json")? {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let file: InFlightFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: {MALFORMED}", path.display()))?;
        for mut s in file.sequences {
            s.file = path.clone();
            // Negative or huge, it would panic when turned into the time the response took.
            if Duration::try_from_secs_f64(s.seconds).is_err() {
                return Err(s.damaged(&format!(
                    "seconds {:?}: expected the seconds it took, 0 or more",
                    s.seconds
                )));
            }
            let key = (s.benchmark.clone(), s.id.clone(), s.sample);
            if all.get(&key).is_none_or(|old| old.ids.len() < s.ids.len()) {
                all.insert(key, s);
            }
        }
    }
    Ok(all)
}

/// Removes every rank's file (once every response is in results.jsonl).
pub fn remove_all(dir: &Path) -> anyhow::Result<()> {
    for path in crate::ranks::files_like(dir, "in-flight", ".json")? {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Once every response a run asked for is in results.jsonl: the saved sequences of responses
/// it did not ask for (an earlier run's, under a larger --limit or other benchmarks) stay in
/// [`CARRIED_FILE`] for the run that asks for them; the rest go.
pub fn keep_unasked(
    dir: &Path,
    asked: impl Fn(&(String, String, usize)) -> bool,
) -> anyhow::Result<()> {
    let mut left: Vec<Saved> = read_all(dir)?
        .into_iter()
        .filter(|(key, _)| !asked(key))
        .map(|(_, s)| s)
        .collect();
    if left.is_empty() {
        return remove_all(dir);
    }
    left.sort_by(|a, b| (&a.benchmark, &a.id, a.sample).cmp(&(&b.benchmark, &b.id, b.sample)));
    let carried = dir.join(CARRIED_FILE);
    write(&carried, left)?;
    for path in crate::ranks::files_like(dir, "in-flight", ".json")? {
        if path != carried {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Where a starting run gathers what earlier runs saved. No rank writes it during the run, so
/// a saved sequence this run has not taken up yet (a smaller batch, or another rank's share)
/// survives a rank's save of its own file, which holds only what that rank generates.
pub const CARRIED_FILE: &str = "in-flight.carried.json";

/// Gathers every saved sequence in `dir` into [`CARRIED_FILE`] (the longer of two for one
/// sample) and removes the other in-flight files. Rank 0, before any rank reads them.
pub fn carry_over(dir: &Path) -> anyhow::Result<()> {
    let carried = dir.join(CARRIED_FILE);
    let others: Vec<PathBuf> = crate::ranks::files_like(dir, "in-flight", ".json")?
        .into_iter()
        .filter(|p| *p != carried)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let mut sequences: Vec<Saved> = read_all(dir)?.into_values().collect();
    sequences.sort_by(|a, b| (&a.benchmark, &a.id, a.sample).cmp(&(&b.benchmark, &b.id, b.sample)));
    write(&carried, sequences)?;
    for path in others {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Replaces `path` with `sequences`: a temporary file, synced, then renamed, so a crash leaves
/// the old file or the new one.
pub fn write(path: &Path, sequences: Vec<Saved>) -> anyhow::Result<()> {
    crate::write_atomic(path, &serde_json::to_string(&InFlightFile { sequences })?)
}

/// What `limo eval` returns when a stop signal ended it: the caller exits 128 + the signal.
#[derive(Debug)]
pub struct Stopped {
    pub signal: i32,
    /// Responses in results.jsonl, of all the run asks for.
    pub done: usize,
    pub total: usize,
    pub saved: usize,
    pub path: PathBuf,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {}: {} of {} responses done, {} in flight saved to {}; the same command \
             continues them",
            limo_dist::launch::signal_name(self.signal),
            self.done,
            self.total,
            self.saved,
            self.path.display()
        )
    }
}

impl std::error::Error for Stopped {}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(id: &str, tokens: u32) -> Saved {
        let key = ("aime".to_string(), id.to_string(), 0);
        let c = Continuation {
            ids: (0..tokens).collect(),
            rng: 7,
        };
        Saved::new(&key, &[1, 2, 3], c, 1.5)
    }

    fn lengths(dir: &Path) -> Vec<(String, usize)> {
        let mut got: Vec<(String, usize)> = read_all(dir)
            .unwrap()
            .into_values()
            .map(|s| (s.id, s.ids.len()))
            .collect();
        got.sort();
        got
    }

    /// A run that takes up fewer saved sequences than were saved (a smaller batch, another
    /// rank's share) and saves its own file must not lose the others: they were in the file it
    /// overwrote.
    #[test]
    fn saved_sequences_outlive_a_rank_overwriting_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(&own_path(dir, 0, 1), vec![saved("a", 5), saved("b", 9)]).unwrap();
        write(&own_path(dir, 1, 2), vec![saved("b", 4), saved("c", 2)]).unwrap();
        carry_over(dir).unwrap();
        let names: Vec<String> = crate::ranks::files_like(dir, "in-flight", ".json")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [CARRIED_FILE]);
        // The next run, alone, continues only "a" and saves it further.
        write(&own_path(dir, 0, 1), vec![saved("a", 8)]).unwrap();
        let want = [("a", 8), ("b", 9), ("c", 2)].map(|(id, n)| (id.to_string(), n));
        assert_eq!(lengths(dir), want);
        // And the run after that starts from all three again.
        carry_over(dir).unwrap();
        assert_eq!(lengths(dir), want);
        // A run that asked for "a" alone (a smaller --limit) finishes: "b" and "c" stay.
        keep_unasked(dir, |key| key.1 == "a").unwrap();
        let want = [("b", 9), ("c", 2)].map(|(id, n)| (id.to_string(), n));
        assert_eq!(lengths(dir), want);
        keep_unasked(dir, |_| true).unwrap();
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }
}
