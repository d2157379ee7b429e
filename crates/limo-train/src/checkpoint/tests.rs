use std::time::Duration;

use limo_dist::comm::{thread_group, ThreadComm};

use super::*;

/// One group "g" of 5 elements and one "h" of 2.
fn manifest(step: usize, world: usize) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        step,
        world_size: world,
        config_hash: "h".into(),
        data_order: serde_json::Value::Null,
        params: vec![("a".into(), vec![5]), ("b".into(), vec![2])],
        groups: vec![
            GroupLayout {
                name: "g".into(),
                params: vec!["a".into()],
                numel: 5,
            },
            GroupLayout {
                name: "h".into(),
                params: vec!["b".into()],
                numel: 2,
            },
        ],
        master_dtype: "f32".into(),
        files: BTreeMap::new(),
        rows_hash: None,
    }
}

/// Rank `rank`'s slices at `world` ranks of the layouts [v, v+1, .., v+4] and [v+10, v+11]
/// (moments: the same plus 100 and 200), zero-padded.
fn state(value: f32, world: usize, rank: usize) -> RankState {
    let slice = |base: f32, numel: usize| {
        let len = numel.div_ceil(world);
        let v: Vec<f32> = (rank * len..(rank + 1) * len)
            .map(|i| if i < numel { base + i as f32 } else { 0.0 })
            .collect();
        Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
    };
    let list = |add: f32| vec![slice(value + add, 5), slice(value + 10.0 + add, 2)];
    RankState {
        master: list(0.0),
        exp_avg: list(100.0),
        exp_avg_sq: list(200.0),
    }
}

fn save_at(ckpts: &Path, world: usize, step: usize, value: f32, keep: usize) {
    on_ranks(
        world,
        move |c, dir| {
            let s = state(value, c.world_size(), c.rank());
            save(
                c,
                &Device::Cpu,
                &dir,
                manifest(step, c.world_size()),
                &s,
                &[],
                keep,
            )
            .map(|_| ())
        },
        ckpts,
    )
    .into_iter()
    .for_each(|r| r.unwrap());
}

fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(&ThreadComm, PathBuf) -> T + Send + Sync + 'static,
    dir: &Path,
) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = thread_group(world, Duration::from_secs(10))
        .into_iter()
        .map(|c| {
            let (f, dir) = (f.clone(), dir.to_path_buf());
            std::thread::spawn(move || f(&c, dir))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn values(flat: Flat) -> Vec<f32> {
    match flat {
        Flat::F32(v) => v,
        Flat::F64(_) => panic!("f32 expected"),
    }
}

#[test]
fn a_write_interrupted_at_any_stage_leaves_latest_on_a_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    save_at(ckpts, 1, 1, 1.0, 3);
    // A crash while step 2 was being written: a half-written temporary directory and a
    // temporary `latest` that was never renamed.
    std::fs::create_dir_all(ckpts.join(".step-00000002.tmp")).unwrap();
    std::fs::write(ckpts.join(".step-00000002.tmp").join(rank_file(0)), b"torn").unwrap();
    std::fs::write(ckpts.join(".latest.tmp"), b"step-00000002").unwrap();
    let latest = resolve(ckpts, "latest").unwrap();
    assert!(latest.ends_with("step-00000001"));
    let params = load_params(&latest, "master").unwrap();
    assert_eq!(
        params["a"].to_vec1::<f32>().unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0]
    );
    assert_eq!(
        list(ckpts).unwrap().len(),
        1,
        "temporary directories are not checkpoints"
    );
    // The resumed run writes step 2 again over the debris.
    save_at(ckpts, 1, 2, 2.0, 3);
    let latest = resolve(ckpts, "latest").unwrap();
    assert!(latest.ends_with("step-00000002"));
    assert_eq!(
        load_params(&latest, "master").unwrap()["b"]
            .to_vec1::<f32>()
            .unwrap(),
        [12.0, 13.0]
    );
}

#[test]
fn kills_during_deletes_leave_no_checkpoint_behind() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    for step in 1..=3 {
        save_at(ckpts, 1, step, step as f32, 5);
    }
    // Killed while deleting step 1 in place (its manifest gone first) and step 2 after its
    // rename aside: neither is a checkpoint any more, and the next save removes both.
    std::fs::remove_file(ckpts.join("step-00000001").join(MANIFEST)).unwrap();
    std::fs::rename(
        ckpts.join("step-00000002"),
        ckpts.join(format!(".step-00000002{DISCARDED}")),
    )
    .unwrap();
    // And killed while writing a step the resumed run never reached again.
    std::fs::create_dir_all(ckpts.join(".step-00000009.tmp")).unwrap();
    assert_eq!(list(ckpts).unwrap().len(), 1);
    save_at(ckpts, 1, 4, 4.0, 5);
    let mut names: Vec<String> = std::fs::read_dir(ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step-00000003", "step-00000004"]);

    // Killed between the two renames of a step saved again: `latest` names a directory that is
    // gone, and resuming takes the old checkpoint, still complete, from where it was set aside.
    std::fs::rename(
        ckpts.join("step-00000004"),
        replaced_dir(ckpts, "step-00000004"),
    )
    .unwrap();
    let resumed = resolve(ckpts, "latest").unwrap();
    let mut reader = ShardReader::open(&resumed).unwrap();
    assert_eq!(values(reader.range("master", 0, 0..1).unwrap()), [4.0]);
    save_at(ckpts, 1, 4, 8.0, 5);
    let mut reader = ShardReader::open(&resolve(ckpts, "latest").unwrap()).unwrap();
    assert_eq!(values(reader.range("master", 0, 0..1).unwrap()), [8.0]);
    assert!(!replaced_dir(ckpts, "step-00000004").exists());
}

#[test]
fn damaged_files_and_old_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    for step in 1..=4 {
        save_at(ckpts, 2, step, step as f32, 2);
    }
    let kept: Vec<_> = list(ckpts)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(kept, ["step-00000003", "step-00000004"], "keep_last = 2");
    let rank = ckpts.join("step-00000004").join(rank_file(1));
    let mut bytes = std::fs::read(&rank).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&rank, bytes).unwrap();
    let err = load_params(&ckpts.join("step-00000004"), "master")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("rank-00001.safetensors"),
        "{err}"
    );
    // Rank 0's slices alone are still readable: a rank verifies only the files it reads.
    let mut reader = ShardReader::open(&ckpts.join("step-00000004")).unwrap();
    assert_eq!(
        values(reader.range("master", 0, 0..3).unwrap()),
        [4.0, 5.0, 6.0]
    );
}

#[test]
fn slices_written_at_one_world_size_read_back_at_any_other() {
    let dir = tempfile::tempdir().unwrap();
    for world in [1, 2, 3, 4] {
        let ckpts = dir.path().join(format!("w{world}"));
        save_at(&ckpts, world, 7, 0.0, 1);
        let checkpoint = resolve(&ckpts, "latest").unwrap();
        let manifest = read_manifest(&checkpoint).unwrap();
        assert_eq!(manifest.world_size, world);
        assert_eq!(manifest.files.len(), world, "one file per rank");
        let mut reader = ShardReader::open(&checkpoint).unwrap();
        for new_world in [1, 2, 3, 4] {
            for rank in 0..new_world {
                let expected = state(0.0, new_world, rank);
                for (kind, list) in KINDS.iter().zip(expected.lists()) {
                    for (g, numel) in [5usize, 2].into_iter().enumerate() {
                        let len = numel.div_ceil(new_world);
                        let got =
                            values(reader.range(kind, g, rank * len..(rank + 1) * len).unwrap());
                        assert_eq!(
                            got,
                            list[g].to_vec1::<f32>().unwrap(),
                            "{world} -> {new_world}, rank {rank}, {kind}, group {g}"
                        );
                    }
                }
            }
        }
        let exp_avg = load_params(&checkpoint, "exp_avg").unwrap();
        assert_eq!(exp_avg["b"].to_vec1::<f32>().unwrap(), [110.0, 111.0]);
    }
}

#[test]
fn a_rank_that_fails_to_write_fails_every_rank_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    save_at(ckpts, 2, 1, 1.0, 3);
    let errors = on_ranks(
        2,
        |c, dir| {
            let mut s = state(2.0, 2, c.rank());
            if c.rank() == 1 {
                s.exp_avg.pop(); // a slice short: rank 1 cannot write its file
            }
            save(c, &Device::Cpu, &dir, manifest(2, 2), &s, &[], 3)
                .err()
                .map(|e| e.to_string())
        },
        ckpts,
    );
    assert!(
        errors[1].as_deref().unwrap().contains("rank 1"),
        "{errors:?}"
    );
    assert!(
        errors[0].as_deref().unwrap().contains("rank(s) [1]"),
        "{errors:?}"
    );
    assert!(resolve(ckpts, "latest").unwrap().ends_with("step-00000001"));
    assert_eq!(list(ckpts).unwrap().len(), 1);
}

#[test]
fn saving_a_step_again_replaces_it_without_a_gap() {
    // A run resumed from an older checkpoint reaches a step it had saved before: the new
    // checkpoint takes the name, `latest` keeps naming it, and nothing of the old one is left.
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    save_at(ckpts, 1, 3, 3.0, 5);
    save_at(ckpts, 1, 3, 7.0, 5);
    let latest = std::fs::read_to_string(ckpts.join(LATEST)).unwrap();
    assert_eq!(latest.trim(), "step-00000003");
    let mut reader = ShardReader::open(&ckpts.join("step-00000003")).unwrap();
    assert_eq!(values(reader.range("master", 0, 0..1).unwrap()), [7.0]);
    let names: Vec<String> = std::fs::read_dir(ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("replaced")), "{names:?}");
}

#[test]
fn resume_names_a_checkpoint_by_step_name_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path();
    save_at(ckpts, 1, 10, 1.0, 5);
    save_at(ckpts, 1, 20, 2.0, 5);
    let step10 = ckpts.join("step-00000010");
    assert_eq!(resolve(ckpts, "10").unwrap(), step10);
    assert_eq!(resolve(ckpts, "step-00000010").unwrap(), step10);
    assert_eq!(resolve(ckpts, step10.to_str().unwrap()).unwrap(), step10);
    assert_eq!(
        resolve(ckpts, "latest").unwrap(),
        ckpts.join("step-00000020")
    );
    for wrong in ["15", "step-15", "/nowhere/step-00000010"] {
        let err = resolve(ckpts, wrong).unwrap_err().to_string();
        assert!(err.contains(&format!("--resume {wrong}")), "{err}");
        assert!(err.contains("step-00000010, step-00000020"), "{err}");
    }
    // A checkpoints directory, its `latest` pointer and the run directory name the latest.
    let step20 = ckpts.join("step-00000020");
    let run = tempfile::tempdir().unwrap();
    let in_run = run.path().join("checkpoints");
    save_at(&in_run, 1, 5, 1.0, 5);
    for path in [ckpts.to_path_buf(), ckpts.join(LATEST)] {
        assert_eq!(resolve(&in_run, path.to_str().unwrap()).unwrap(), step20);
    }
    assert_eq!(
        resolve(ckpts, run.path().to_str().unwrap()).unwrap(),
        in_run.join("step-00000005")
    );
    // A directory that is none of them is an error naming it.
    let empty = tempfile::tempdir().unwrap();
    let err = resolve(ckpts, empty.path().to_str().unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("not a checkpoint"), "{err:#}");
    // A `latest` that names a checkpoint no longer there (deleted by hand) says so, with the
    // ones there are; it once gave the missing manifest's raw OS error.
    std::fs::write(ckpts.join(LATEST), "step-00000009\n").unwrap();
    for err in [
        resolve(ckpts, "latest").unwrap_err(),
        find(ckpts).unwrap_err(),
    ] {
        let text = format!("{err:#}");
        assert!(
            text.contains("latest: names \"step-00000009\", which is not a complete checkpoint"),
            "{text}"
        );
        assert!(text.contains("step-00000010, step-00000020"), "{text}");
    }
}

/// Checkpoints written before the manifest kept the rows' hash still read (and resume): the
/// field is absent there, and absent it is written too.
#[test]
fn a_manifest_without_the_rows_hash_reads() {
    let text = serde_json::to_string(&manifest(3, 2)).unwrap();
    assert!(!text.contains("rows_hash"), "{text}");
    let read: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(read.rows_hash, None);
    let mut with = manifest(3, 2);
    with.rows_hash = Some("00000000000000ff".into());
    let read: Manifest = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert_eq!(read.rows_hash.as_deref(), Some("00000000000000ff"));
}
