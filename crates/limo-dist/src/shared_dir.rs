//! A directory every rank writes into (a run's checkpoints, an evaluation's results) must be
//! one directory, seen and writable by every rank. A node-local path, or a mount missing on
//! one node, would otherwise fail only at the first checkpoint, hours in, or leave rank 0
//! waiting for files it can never read. Checked once at the start, by every rank together.

use std::path::Path;

use anyhow::bail;
use candle_core::{Device, Tensor};

use crate::comm::Communicator;
use crate::rank_list;

/// What rank 0 writes for every rank to read back.
pub const TOKEN_FILE: &str = ".rank-0-token";

/// Errors on every rank unless each sees the token rank 0 writes into `dir` and can create a
/// file there; `what` names the setting (`--out`, `output.dir`). `device` is where the ranks'
/// collectives run. A single rank has nothing to compare.
pub fn check(
    dir: &Path,
    what: &str,
    comm: &dyn Communicator,
    device: &Device,
) -> anyhow::Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    let path = dir.join(TOKEN_FILE);
    let rank = comm.rank();
    let written = match rank {
        0 => {
            let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            let token = (clock.map_or(0, |d| d.subsec_nanos()) ^ std::process::id()) & 0xFF_FFFF;
            std::fs::write(&path, token.to_string())
        }
        _ => Ok(()),
    };
    comm.barrier()?;
    let seen: f64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or(-1.0, f64::from);
    let probe = dir.join(format!(".probe.rank-{rank}"));
    let writable = written
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    let mine = [seen, f64::from(u8::from(writable.is_ok()))];
    let all = comm
        .all_gather(&Tensor::new(&mine, device)?)?
        .to_vec1::<f64>()?;
    // Everyone has read the token before rank 0 takes it away.
    comm.barrier()?;
    if rank == 0 {
        let _ = std::fs::remove_file(&path);
    }
    let ranks = |keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
        (0..comm.world_size()).filter(|&r| keep(r)).collect()
    };
    let blind = ranks(&|r| all[2 * r] != all[0]);
    if !blind.is_empty() {
        bail!(
            "{what} {}: rank(s) {} do not see what rank 0 writes there; give a directory on a \
             filesystem every node shares",
            dir.display(),
            rank_list(&blind)
        );
    }
    let readonly = ranks(&|r| all[2 * r + 1] == 0.0);
    if !readonly.is_empty() {
        let here = match &writable {
            Err(e) => format!(" (here: {e})"),
            Ok(()) => String::new(),
        };
        bail!(
            "{what} {}: rank(s) {} cannot write there{here}; every rank writes its own files",
            dir.display(),
            rank_list(&readonly)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks(dirs: &[&Path]) -> Vec<anyhow::Result<()>> {
        let comms = crate::comm::thread_group(dirs.len(), std::time::Duration::from_secs(30));
        std::thread::scope(|scope| {
            let handles: Vec<_> = comms
                .into_iter()
                .zip(dirs)
                .map(|(comm, dir)| {
                    scope.spawn(move || check(dir, "output.dir", &comm, &Device::Cpu))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_must_see_and_write_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        for result in on_ranks(&[&shared, &shared, &shared]) {
            result.unwrap();
        }
        assert_eq!(
            std::fs::read_dir(&shared).unwrap().count(),
            0,
            "nothing left"
        );

        // Rank 2 on a node where the path is another (empty) directory.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        for result in on_ranks(&[&shared, &shared, &elsewhere]) {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("rank(s) [2] do not see what rank 0 writes"),
                "{err}"
            );
        }

        // Rank 1 sees the directory but cannot create its file there (a read-only mount in
        // life; here a directory already holds the name, which root cannot write either).
        std::fs::create_dir(shared.join(".probe.rank-1")).unwrap();
        for result in on_ranks(&[&shared, &shared]) {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("rank(s) [1] cannot write there"), "{err}");
        }
    }
}
