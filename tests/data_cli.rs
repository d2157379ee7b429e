//! End-to-end tests of `limo data dump` and `limo data stats` on the repository's fixtures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::read_jsonl;
use limo_data::{load_dataset, ChatTokenizer, DataConfig, Format, IGNORE_INDEX};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tokenizer_dir() -> PathBuf {
    fixtures().join("qwen2.5-tokenizer")
}

fn data(name: &str) -> String {
    fixtures().join("data").join(name).display().to_string()
}

/// A fresh scratch folder per test (no tempfile dependency in limo-cli).
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("limo-data-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn limo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_limo"));
    command
        .arg("data")
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("limo runs")
}

fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "limo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `limo data COMMAND --data DATA --format FORMAT --tokenizer <fixture> EXTRA...` under `env`.
fn limo_data(
    command: &str,
    data: &str,
    format: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let tok = tokenizer_dir().display().to_string();
    let base = [
        command,
        "--data",
        data,
        "--format",
        format,
        "--tokenizer",
        &tok,
    ];
    limo(&[&base[..], extra].concat(), env)
}

/// `limo data dump` of `data` into `out`, which must succeed.
fn dump(data: &str, format: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) {
    let extra = [&["--out", out.to_str().unwrap()][..], extra].concat();
    ok(limo_data("dump", data, format, &extra, env));
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn dump_math500_equals_the_library_examples() {
    let dir = scratch("dump-math");
    let out = dir.join("math.jsonl");
    let math = data("math.jsonl");
    let flags = ["--column", "question=problem", "--limit", "25"];
    dump(&math, "limo", &out, &flags, &[]);
    let rows = read_jsonl(&out);
    assert_eq!(rows.len(), 25);

    let mut config = DataConfig::new(math, Format::Limo);
    config.columns.set("question", "problem").unwrap();
    config.limit = Some(25);
    let tokenizer = ChatTokenizer::from_path(&tokenizer_dir()).unwrap();
    let expected = load_dataset(&config, &tokenizer).unwrap().examples;
    for (row, example) in rows.iter().zip(&expected) {
        let input_ids = ids(&row["input_ids"]);
        let labels = ids(&row["labels"]);
        assert_eq!(
            input_ids,
            example
                .input_ids
                .iter()
                .map(|&i| i64::from(i))
                .collect::<Vec<_>>()
        );
        assert_eq!(labels, example.labels);
        // <|im_start|>system\n ... and the learned tail <|im_end|>\n.
        assert_eq!(&input_ids[..3], &[151644, 8948, 198]);
        assert_eq!(&labels[labels.len() - 2..], &[151645, 198]);
        assert_eq!(labels[0], IGNORE_INDEX);
    }
}

/// `--config`: the rows `limo train` itself trains on (limo_train::source::prepare_rows), with
/// data.also read after data.path and the val_size rows held out, apart.
#[test]
fn dump_and_stats_of_a_run_config_are_the_trainer_s_rows() {
    let dir = scratch("config");
    let config_path = dir.join("run.toml");
    let text = format!(
        "[model]\ninit = \"tiny\"\ntokenizer = {tok:?}\n\
         [data]\npath = {math:?}\nformat = \"limo\"\ncolumns = {{ question = \"problem\" }}\n\
         limit = 30\nval_size = 0.25\ncutoff_len = 300\noverlong = \"drop\"\n\
         [[data.also]]\npath = {alpaca:?}\nformat = \"alpaca\"\n\
         [train]\nlr = 1e-3\n[output]\ndir = {out:?}\n",
        tok = tokenizer_dir().display().to_string(),
        math = data("math.jsonl"),
        alpaca = data("alpaca.json"),
        out = dir.join("run").display().to_string(),
    );
    std::fs::write(&config_path, text).unwrap();
    let config = limo_train::TrainConfig::from_file(&config_path, &[]).unwrap();
    let tokenizer = ChatTokenizer::from_path(&tokenizer_dir()).unwrap();
    let (train, held_out) =
        limo_train::source::prepare_rows(&config, Some(&tokenizer), &dir, false).unwrap();
    assert!(!held_out.is_empty() && train.len() > held_out.len());

    let out = dir.join("rows.jsonl");
    let run = ["--config", config_path.to_str().unwrap()];
    let output = ok(limo(
        &[&["dump", "--out", out.to_str().unwrap()][..], &run[..]].concat(),
        &[],
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{} held out by data.val_size", held_out.len())),
        "{stderr}"
    );
    let rows = read_jsonl(&out);
    assert_eq!(rows.len(), train.len());
    for (row, expected) in rows.iter().zip(&train) {
        let want: Vec<i64> = expected.input_ids.iter().map(|&i| i64::from(i)).collect();
        assert_eq!(ids(&row["input_ids"]), want);
        assert_eq!(ids(&row["labels"]), expected.labels);
    }
    let stats = ok(limo(&[&["stats", "--json"][..], &run[..]].concat(), &[]));
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["held_out"], held_out.len());
    assert_eq!(stats["examples_after_cutoff"], train.len());
    // 30 math rows, then the 2 alpaca rows.
    assert_eq!(stats["rows"], 32);
    // --set applies to the config; data flags do not mix with it.
    let stats = ok(limo(
        &[
            &["stats", "--json", "--set", "data.val_size=0"][..],
            &run[..],
        ]
        .concat(),
        &[],
    ));
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["held_out"], 0);
    let mixed = limo(
        &[&["stats", "--format", "limo"][..], &run[..]].concat(),
        &[],
    );
    assert_eq!(mixed.status.code(), Some(2));
    // --set without --config had nothing to override and was ignored.
    let math = data("math.jsonl");
    let alone = limo_data("stats", &math, "limo", &["--set", "data.limit=1"], &[]);
    assert_eq!(alone.status.code(), Some(1));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(
        err.contains("--set data.limit=1: --set overrides a field of --config FILE"),
        "{err}"
    );
}

#[test]
fn stats_math500_counts_lengths_and_cutoff() {
    let math = data("math.jsonl");
    let stats_with = |extra: &[&str]| {
        let flags = [
            &["--column", "question=problem", "--cutoff-len", "512"][..],
            extra,
        ]
        .concat();
        ok(limo_data("stats", &math, "limo", &flags, &[]))
    };
    let output = stats_with(&["--json"]);
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["examples"], 500);
    // The tokenizer compiled into limo, as model.tokenizer takes it (it was "file not found").
    let args = [
        "stats",
        "--data",
        &math,
        "--format",
        "limo",
        "--tokenizer",
        "builtin:qwen2.5",
        "--column",
        "question=problem",
        "--cutoff-len",
        "512",
        "--json",
    ];
    let builtin = ok(limo(&args, &[]));
    assert_eq!(builtin.stdout, output.stdout);
    assert_eq!(stats["rows"], 500);

    // Recount from the library with no cutoff in the way.
    let mut config = DataConfig::new(math.clone(), Format::Limo);
    config.columns.set("question", "problem").unwrap();
    config.cutoff_len = usize::MAX;
    let tokenizer = ChatTokenizer::from_path(&tokenizer_dir()).unwrap();
    let examples = load_dataset(&config, &tokenizer).unwrap().examples;
    let over = examples.iter().filter(|e| e.len() > 512).count();
    assert!(over > 0);
    assert_eq!(stats["over_cutoff"], over);
    // Over-long examples whose prompt alone fills the cutoff keep no target and are dropped.
    let prompt_too_long = examples
        .iter()
        .filter(|e| e.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap() >= 512)
        .count();
    assert_eq!(stats["truncated"], over - prompt_too_long);
    assert_eq!(stats["dropped"], prompt_too_long);
    assert_eq!(stats["examples_after_cutoff"], 500 - prompt_too_long);
    let total: usize = examples.iter().map(|e| e.len()).sum();
    let targets: usize = examples.iter().map(|e| e.num_targets()).sum();
    assert_eq!(stats["total_tokens"], total);
    assert_eq!(stats["target_tokens"], targets);
    assert_eq!(
        stats["max"],
        examples.iter().map(|e| e.len()).max().unwrap()
    );
    let binned: u64 = stats["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(binned, 500);

    let text = String::from_utf8(stats_with(&[]).stdout).unwrap();
    assert!(text.contains("examples: 500\n"), "{text}");
    assert!(
        text.contains(&format!("over cutoff_len 512: {over} ")),
        "{text}"
    );
    assert!(text.contains("length percentiles: p10 "), "{text}");
}

#[test]
fn dump_packing_restarts_positions_per_document() {
    let dir = scratch("dump-packing");
    let out = dir.join("packed.jsonl");
    let flags = [
        "--column",
        "question=problem",
        "--limit",
        "40",
        "--cutoff-len",
        "2048",
        "--packing",
    ];
    dump(&data("math.jsonl"), "limo", &out, &flags, &[]);
    let rows = read_jsonl(&out);
    assert!(!rows.is_empty() && rows.len() < 40);
    let mut documents = 0;
    for row in &rows {
        let positions = ids(&row["position_ids"]);
        let labels = ids(&row["labels"]);
        assert!(positions.len() <= 2048 && positions.len() == labels.len());
        for (t, &p) in positions.iter().enumerate() {
            if p == 0 {
                documents += 1;
                assert_eq!(
                    labels[t], IGNORE_INDEX,
                    "first token of a document is never a target"
                );
            } else {
                assert_eq!(p, positions[t - 1] + 1);
            }
        }
    }
    assert_eq!(documents, 40);
}

#[test]
fn system_prompt_flags_and_other_formats() {
    let dir = scratch("formats");
    let tokenizer = ChatTokenizer::from_path(&tokenizer_dir()).unwrap();
    let decode_first = |path: &Path| {
        let rows = read_jsonl(path);
        let ids: Vec<u32> = ids(&rows[0]["input_ids"])
            .into_iter()
            .map(|i| i as u32)
            .collect();
        tokenizer.decode(&ids).unwrap()
    };
    let out = dir.join("alpaca.jsonl");
    let system = ["--system", "Be brief."];
    dump(&data("alpaca.json"), "alpaca", &out, &system, &[]);
    assert_eq!(
        decode_first(&out),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd the numbers.\n4 and 9<|im_end|>\n\
         <|im_start|>assistant\n13<|im_end|>\n"
    );
    let out = dir.join("messages.jsonl");
    let system = ["--qwen-default-system"];
    dump(&data("messages.jsonl"), "messages", &out, &system, &[]);
    assert!(decode_first(&out)
        .starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."));
    assert_eq!(read_jsonl(&out).len(), 3);
}

#[test]
fn bad_rows_fail_with_file_row_and_field_or_are_skipped() {
    let dir = scratch("bad-rows");
    let output = limo_data("stats", &data("math.jsonl"), "limo", &[], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("math.jsonl: row 1: field `question`: missing"),
        "{stderr}"
    );

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\", \"solution\": \"s\"}\nnot json\n{\"question\": \"q2\", \"solution\": 7}\n").unwrap();
    let bad = bad.to_str().unwrap();
    let output = limo_data("stats", bad, "limo", &[], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.jsonl: row 2: invalid JSON"),
        "{stderr}"
    );
    let skip = ["--json", "--on-bad-row", "skip"];
    let output = ok(limo_data("stats", bad, "limo", &skip, &[]));
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            stats["rows"].as_u64(),
            stats["skipped"].as_u64(),
            stats["examples"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
}

/// A Hub cache laid out as huggingface_hub writes it, holding our LIMO-format sample.
fn fake_hub_home(dir: &Path) -> PathBuf {
    let home = dir.join("hf-home");
    let repo = home.join("hub/datasets--GAIR--LIMO");
    let sha = "5f0c9f2a1b3c4d5e6f708192a3b4c5d6e7f80912";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(sha)).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    std::fs::copy(data("limo_sample.jsonl"), repo.join("blobs/0a1b2c")).unwrap();
    std::os::unix::fs::symlink(
        repo.join("blobs/0a1b2c"),
        repo.join("snapshots").join(sha).join("limo.jsonl"),
    )
    .unwrap();
    home
}

#[test]
fn hub_dataset_id_resolves_from_hf_home_offline() {
    let dir = scratch("hub");
    let home = fake_hub_home(&dir);
    let out = dir.join("limo.jsonl");
    let env = [("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    dump("GAIR/LIMO", "limo", &out, &[], &env);
    let hub_rows = read_jsonl(&out);
    let local = dir.join("local.jsonl");
    dump(&data("limo_sample.jsonl"), "limo", &local, &[], &[]);
    assert_eq!(hub_rows, read_jsonl(&local));
    assert_eq!(hub_rows.len(), 4);
    // huggingface_hub's other places: the old HUGGINGFACE_HUB_CACHE, and XDG_CACHE_HOME's
    // huggingface/hub when HF_HOME is not set.
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    std::os::unix::fs::symlink(&home, xdg.join("huggingface")).unwrap();
    let hub = home.join("hub");
    for place in [
        ("HUGGINGFACE_HUB_CACHE", hub.to_str().unwrap()),
        ("XDG_CACHE_HOME", xdg.to_str().unwrap()),
    ] {
        let elsewhere = dir.join(format!("{}.jsonl", place.0));
        let env = [place, ("HF_HOME", ""), ("HF_HUB_OFFLINE", "1")];
        dump("GAIR/LIMO", "limo", &elsewhere, &[], &env);
        assert_eq!(read_jsonl(&elsewhere), hub_rows, "{}", place.0);
    }

    let empty = dir.join("empty-home");
    let env = [
        ("HF_HOME", empty.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let output = limo_data("stats", "GAIR/LIMO", "limo", &[], &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("HF_HUB_OFFLINE")
            && stderr.contains("GAIR/LIMO"),
        "{stderr}"
    );
}

/// `--out` naming the data file (also through a symbolic link) once replaced the dataset with
/// its dump.
#[test]
fn dump_refuses_to_write_over_its_data() {
    let dir = scratch("dump-over-data");
    let data_file = dir.join("math.jsonl");
    std::fs::copy(data("math.jsonl"), &data_file).unwrap();
    let before = std::fs::read(&data_file).unwrap();
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&data_file, &link).unwrap();
    let flags = ["--column", "question=problem", "--limit", "3"];
    for out in [&data_file, &link] {
        let extra = [&["--out", out.to_str().unwrap()][..], &flags[..]].concat();
        let output = limo_data("dump", data_file.to_str().unwrap(), "limo", &extra, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("that is the data file"), "{stderr}");
        assert_eq!(
            std::fs::read(&data_file).unwrap(),
            before,
            "the data is intact"
        );
    }
}

/// A cutoff that drops every example writes no (empty) dump: an error, as `limo train` gives.
#[test]
fn a_dump_with_no_example_left_is_an_error() {
    let dir = scratch("dump-empty");
    let out = dir.join("out.jsonl");
    let extra = [
        "--out",
        out.to_str().unwrap(),
        "--column",
        "question=problem",
        "--limit",
        "3",
        "--cutoff-len",
        "8",
        "--drop-overlong",
    ];
    let output = limo_data("dump", &data("math.jsonl"), "limo", &extra, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no examples left after the cutoff of 8 tokens (3 over it"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// A path limo may not look at (here a symbolic link loop; permissions behave alike for users
/// other than root) is reported with its cause, once: it was once "no such file", and a file
/// in a folder repeated its cause twice.
#[test]
fn unreadable_paths_name_their_cause_once() {
    let dir = scratch("unreadable");
    let looped = dir.join("loop.jsonl");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let inner = folder.join("loop.jsonl");
    std::os::unix::fs::symlink(&inner, &inner).unwrap();
    for data in [&looped, &folder] {
        let output = limo_data("stats", data.to_str().unwrap(), "limo", &[], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("no such file"), "{stderr}");
        assert_eq!(
            stderr.matches("Too many levels of symbolic links").count(),
            1,
            "{stderr}"
        );
    }
}

/// A full disk once left `--out` cut off where the write failed. Here no file may grow past
/// 1 or 2 KiB (`ulimit -f 2`, SIGXFSZ ignored): a write past that fails as on a full disk.
#[test]
fn dump_on_a_full_disk_leaves_the_old_output() {
    let dir = scratch("dump-full-disk");
    let out = dir.join("dump.jsonl");
    std::fs::write(&out, "old\n").unwrap();
    let tok = tokenizer_dir().display().to_string();
    let (math, o) = (data("math.jsonl"), out.display().to_string());
    let args = [
        "data",
        "dump",
        "--data",
        &math,
        "--format",
        "limo",
        "--tokenizer",
        &tok,
        "--column",
        "question=problem",
        "--limit",
        "5",
        "--out",
        &o,
    ];
    let failed = Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 2 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot write {o}")), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    let names = |dir: &Path| -> Vec<String> {
        let entries = std::fs::read_dir(dir).unwrap();
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&dir), ["dump.jsonl"], "no temporary file");

    // Without the limit, the dump replaces the old file.
    ok(Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .unwrap());
    assert_eq!(read_jsonl(&out).len(), 5);
    assert_eq!(names(&dir), ["dump.jsonl"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--truncate-pairs` (data.overlong = "truncate_pairs") cuts as LLaMA-Factory: a long prompt
/// gives way to its short response, which `truncate` (the row's first tokens) would lose.
#[test]
fn truncate_pairs_keeps_the_response_of_a_long_prompt() {
    let dir = scratch("pairs");
    let rows = dir.join("long-prompt.json");
    let long = "Count the words. ".repeat(60);
    let text = serde_json::json!([
        {"instruction": long, "input": "", "output": "There are 180 words."},
        {"instruction": "Add the numbers.", "input": "4 and 9", "output": "13"},
    ]);
    std::fs::write(&rows, text.to_string()).unwrap();
    let tokenizer = ChatTokenizer::from_path(&tokenizer_dir()).unwrap();
    let response = tokenizer
        .encode("There are 180 words.<|im_end|>\n")
        .unwrap();
    let cutoff = ["--cutoff-len", "64"];
    let out = dir.join("pairs.jsonl");
    dump(
        rows.to_str().unwrap(),
        "alpaca",
        &out,
        &[&cutoff[..], &["--truncate-pairs"]].concat(),
        &[],
    );
    let dumped = read_jsonl(&out);
    assert_eq!(dumped.len(), 2);
    let (input, labels) = (ids(&dumped[0]["input_ids"]), ids(&dumped[0]["labels"]));
    assert_eq!(input.len(), 64);
    let tail = input.len() - response.len();
    let response: Vec<i64> = response.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(
        input[tail..],
        response[..],
        "the response whole, at the end"
    );
    assert_eq!(labels[tail..], response[..]);
    assert!(labels[..tail].iter().all(|&l| l == IGNORE_INDEX));
    let prompt: Vec<u32> = input[..tail].iter().map(|&i| i as u32).collect();
    assert!(tokenizer
        .decode(&prompt)
        .unwrap()
        .starts_with("<|im_start|>system\n"));
    // The same cutoff keeping the row's first tokens leaves it no target: dropped.
    let out = dir.join("prefix.jsonl");
    dump(rows.to_str().unwrap(), "alpaca", &out, &cutoff, &[]);
    assert_eq!(read_jsonl(&out).len(), 1);
    let both = ["--drop-overlong", "--truncate-pairs"];
    let output = limo_data("dump", rows.to_str().unwrap(), "alpaca", &both, &[]);
    assert!(!output.status.success());
}
