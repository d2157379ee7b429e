//! What the ranks of one run settle before anything is written: the same config and the same
//! `--resume`, then (under the run directory's lock) whether `--resume auto` resumes. The
//! collectives compare only sizes: a rank started with another learning rate, seed or data file
//! would train its shard of a different run, and every rank would exit 0.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use candle_core::{Device, Tensor};
use limo_dist::comm::Communicator;

use crate::checkpoint;
use crate::config::TrainConfig;

/// `--resume auto`: resume when the run directory has a checkpoint, start afresh otherwise.
pub const AUTO: &str = "auto";

/// Errors on every rank unless all run `config` with the same `resume`; a rank that differs
/// names the fields, with its value and rank 0's.
pub fn same_config(
    config: &TrainConfig,
    resume: Option<&str>,
    comm: &dyn Communicator,
    device: &Device,
) -> anyhow::Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let text = described(config, resume)?;
    // 52 bits: exact in the f64 the collectives carry.
    let hash = (fnv1a(text.as_bytes()) >> 12) as f64;
    let hashes = comm
        .all_gather(&Tensor::new(&[hash], device)?)?
        .to_vec1::<f64>()?;
    let differ: Vec<usize> = (0..hashes.len())
        .filter(|&r| hashes[r] != hashes[0])
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let theirs = broadcast_text(&text, comm, device)?;
    if !differ.contains(&comm.rank()) {
        bail!(
            "rank(s) {} run a different config than rank 0 (see their errors); every rank of a \
             run takes the same config, --set and --resume",
            limo_dist::rank_list(&differ)
        );
    }
    let (mut mine, mut other) = (Vec::new(), Vec::new());
    flatten("", &toml::from_str(&text)?, &mut mine);
    flatten("", &toml::from_str(&theirs)?, &mut other);
    let fields = differences(mine, other, "rank 0");
    bail!(
        "this rank's config differs from rank 0's: {}; every rank of a run takes the same \
         config, --set and --resume",
        fields.join("; ")
    )
}

/// Every rank reads `data.path` itself: a node-local file that differs between nodes, or Hub
/// caches holding different revisions, would have the ranks train on different rows under the
/// same indices (or, with a different count, run different step counts and hang). One hash of
/// the rows (`source::rows_hash` of its `rows` rows) per rank, compared before the first step.
pub fn same_rows(
    hash: u64,
    rows: usize,
    comm: &dyn Communicator,
    device: &Device,
) -> anyhow::Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    // 52 bits: exact in the f64 the collectives carry.
    let mine = [(hash >> 12) as f64, rows as f64];
    let all = comm
        .all_gather(&Tensor::new(&mine, device)?)?
        .to_vec1::<f64>()?;
    let differ: Vec<usize> = (0..comm.world_size())
        .filter(|&r| all[2 * r..2 * r + 2] != all[..2])
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    if differ.contains(&comm.rank()) {
        bail!(
            "this rank read {} training rows that differ from rank 0's {} (data.path read here \
             is not what rank 0 read); every rank must read the same data: a file every node \
             sees, or identical copies",
            rows,
            all[1]
        );
    }
    bail!(
        "rank(s) {} read different training rows than rank 0 (see their errors); every rank \
         must read the same data.path",
        limo_dist::rank_list(&differ)
    )
}

/// Whether to resume, as rank 0 finds the run directory once it holds its lock (each rank
/// looking on its own could disagree, and a look before the lock could miss the checkpoint a
/// previous job was still writing).
pub fn resume_choice(
    resume: Option<&str>,
    config: &TrainConfig,
    comm: &dyn Communicator,
    device: &Device,
) -> anyhow::Result<Option<String>> {
    if resume != Some(AUTO) {
        return Ok(resume.map(str::to_string));
    }
    let checkpoints = config.output.dir.join("checkpoints");
    // Rank 0's finding: -1 nothing, 0 `latest`, else the newest complete checkpoint's step
    // (a kill between publishing the first checkpoint and writing `latest` leaves one).
    let found = match comm.rank() {
        0 if checkpoints.join(checkpoint::LATEST).is_file() => 0.0,
        0 => checkpoint::list(&checkpoints)?
            .iter()
            .filter_map(|d| checkpoint::step_of(d))
            .max()
            .map_or(-1.0, |step| step as f64),
        _ => -1.0,
    };
    let found = comm
        .broadcast(&Tensor::new(&[found], device)?, 0)?
        .to_vec1::<f64>()?[0];
    Ok(match found {
        f if f < 0.0 => None,
        0.0 => Some(checkpoint::LATEST.to_string()),
        step => Some((step as u64).to_string()),
    })
}

/// The config as TOML, with `--resume` as one more field.
fn described(config: &TrainConfig, resume: Option<&str>) -> anyhow::Result<String> {
    let toml::Value::Table(mut table) = toml::Value::try_from(config)? else {
        bail!("the config is not a TOML table");
    };
    if let Some(resume) = resume {
        table.insert("resume".into(), toml::Value::String(resume.into()));
    }
    Ok(toml::to_string(&table)?)
}

/// Rank 0's `text` on every rank (bytes as f64: the collectives carry tensors).
fn broadcast_text(text: &str, comm: &dyn Communicator, device: &Device) -> anyhow::Result<String> {
    let lead = comm.rank() == 0;
    let len = if lead { text.len() as f64 } else { 0.0 };
    let len = comm
        .broadcast(&Tensor::new(&[len], device)?, 0)?
        .to_vec1::<f64>()?[0] as usize;
    let bytes: Vec<f64> = match lead {
        true => text.bytes().map(f64::from).collect(),
        false => vec![0.0; len],
    };
    let bytes = comm.broadcast(&Tensor::new(bytes.as_slice(), device)?, 0)?;
    let bytes: Vec<u8> = bytes
        .to_vec1::<f64>()?
        .into_iter()
        .map(|b| b as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `field: here X, <theirs> Y` for every field whose values differ (or that one side lacks),
/// from `(field, value)` lists.
pub(crate) fn differences(
    a: Vec<(String, String)>,
    b: Vec<(String, String)>,
    theirs: &str,
) -> Vec<String> {
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) =
        (a.into_iter().collect(), b.into_iter().collect());
    let shown = |v: Option<&String>| v.map_or("(not set)".to_string(), String::clone);
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|name| a.get(*name) != b.get(*name))
        .map(|name| {
            format!(
                "{name}: here {}, {theirs} {}",
                shown(a.get(name)),
                shown(b.get(name))
            )
        })
        .collect()
}

/// `(section.key, value)` of every leaf of a trajectory view (`TrainConfig::trajectory_view`).
pub(crate) fn flatten_json(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut Vec<(String, String)>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let name = match prefix {
                    "" => key.clone(),
                    p => format!("{p}.{key}"),
                };
                flatten_json(&name, inner, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.to_string())),
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let name = match prefix {
            "" => key.clone(),
            p => format!("{p}.{key}"),
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            v => out.push((name, v.to_string())),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TINY_TOML;

    fn on_ranks(configs: &[(TrainConfig, Option<&str>)]) -> Vec<String> {
        let comms =
            limo_dist::comm::thread_group(configs.len(), std::time::Duration::from_secs(30));
        std::thread::scope(|scope| {
            let handles: Vec<_> = comms
                .into_iter()
                .zip(configs)
                .map(|(comm, (config, resume))| {
                    scope.spawn(move || same_config(config, *resume, &comm, &Device::Cpu))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap()
                        .map_or_else(|e| e.to_string(), |()| "ok".into())
                })
                .collect()
        })
    }

    fn tiny(set: &[&str]) -> TrainConfig {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        TrainConfig::parse(TINY_TOML, "tiny.toml", &set).unwrap()
    }

    /// `auto` is what rank 0 finds: every rank resumes, or none does.
    #[test]
    fn auto_resumes_as_rank_zero_finds_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().display().to_string();
        let config = tiny(&[&format!("output.dir={dir:?}")]);
        let choices = || {
            let comms = limo_dist::comm::thread_group(2, std::time::Duration::from_secs(30));
            std::thread::scope(|scope| {
                let handles: Vec<_> = comms
                    .into_iter()
                    .map(|comm| {
                        let config = &config;
                        scope.spawn(move || {
                            resume_choice(Some(AUTO), config, &comm, &Device::Cpu).unwrap()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(choices(), [None, None]);
        std::fs::create_dir(tmp.path().join("checkpoints")).unwrap();
        std::fs::write(tmp.path().join("checkpoints/latest"), "step-00000003").unwrap();
        assert_eq!(
            choices(),
            [Some("latest".to_string()), Some("latest".to_string())]
        );
    }

    /// A rank with another lr, an unset field or another --resume is named with both values
    /// (such a run once trained to the end and exited 0).
    #[test]
    fn ranks_with_different_configs_are_named_with_the_fields() {
        let same = tiny(&[]);
        let got = on_ranks(&[
            (same.clone(), None),
            (same.clone(), None),
            (same.clone(), None),
        ]);
        assert_eq!(got, ["ok", "ok", "ok"]);

        let lr = tiny(&["train.lr=1e-2"]);
        let steps = tiny(&["train.max_steps=7"]);
        let got = on_ranks(&[(same.clone(), None), (lr, None), (steps, Some("auto"))]);
        assert!(
            got[0].starts_with("rank(s) [1, 2] run a different config than rank 0"),
            "{}",
            got[0]
        );
        assert!(
            got[1].contains("train.lr: here 0.01, rank 0 0."),
            "{}",
            got[1]
        );
        assert!(!got[1].contains("max_steps"), "{}", got[1]);
        assert!(
            got[2].contains("resume: here \"auto\", rank 0 (not set)"),
            "{}",
            got[2]
        );
        assert!(
            got[2].contains("train.max_steps: here 7, rank 0 300"),
            "{}",
            got[2]
        );
    }
}
