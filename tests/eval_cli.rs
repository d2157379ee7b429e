//! End-to-end tests of `limo eval` on a random tiny model: all nine benchmarks, resume, the
//! grader alone, and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn limo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .expect("the limo binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A random tiny Qwen2.5-shaped model with the real tokenizer.
fn tiny_model(dir: &Path) {
    // init-model writes the Qwen2.5 tokenizer beside the weights: eval needs nothing else.
    let out = limo(&["init-model", "--shape", "tiny", "--out", s(dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `limo eval --model M --data D [extra..] --out O`.
fn eval_data(model: &Path, data: &Path, extra: &[&str], out: &Path) -> Output {
    let mut args = vec!["eval", "--model", s(model), "--data", s(data)];
    args.extend_from_slice(extra);
    args.extend(["--out", s(out)]);
    limo(&args)
}

/// A temporary directory with [`tiny_model`] in its `m` folder.
fn tiny_model_in_tempdir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    tiny_model(&model);
    (tmp, model)
}

fn one_line_error(out: &Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn nine_benchmarks_run_and_resume() {
    let (tmp, model) = tiny_model_in_tempdir();
    let out = tmp.path().join("out");
    let args = [
        "eval",
        "--model",
        s(&model),
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "9",
        "--out",
        s(&out),
    ];
    let first = limo(&args);
    let table = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for name in [
        "aime",
        "math500",
        "amc23",
        "cn_math_2024",
        "gaokao",
        "grade_school_math",
        "kaoyan",
        "minerva",
        "olympiadbench",
    ] {
        assert!(table.contains(name), "{name} missing from\n{table}");
    }
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 27);
    let line: serde_json::Value = serde_json::from_str(results.lines().next().unwrap()).unwrap();
    for key in [
        "id",
        "benchmark",
        "question",
        "response",
        "extracted",
        "reference",
        "correct",
        "tokens",
        "seconds",
    ] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary.to_string().contains("olympiadbench"), "{summary}");
    // The same command again: everything is there already.
    let second = limo(&args);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("0 responses generated, 27 resumed"));
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        results
    );
    // Another model at the same path (limo train exports to the same runs/NAME/model each
    // time): its results are not the old model's, so the rerun is refused, not resumed.
    std::fs::remove_dir_all(&model).unwrap();
    let again = limo(&[
        "init-model",
        "--shape",
        "tiny",
        "--seed",
        "7",
        "--out",
        s(&model),
    ]);
    assert!(again.status.success());
    one_line_error(
        &limo(&args),
        "model_files: the model's weights, config or tokenizer differ",
    );
}

#[test]
fn the_grader_alone_grades_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        concat!(
            r#"{"prediction": "so the answer is \\boxed{\\dfrac{1}{2}}.", "reference": "0.5"}"#,
            "\n",
            r#"{"prediction": "\\boxed{(C)}", "reference": "C"}"#,
            "\n",
            r#"{"prediction": "\\boxed{3}", "reference": "4"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = tmp.path().join("graded.jsonl");
    let run = limo(&["eval", "grade", "--pairs", s(&pairs), "--out", s(&out)]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("2 of 3 correct"));
    let verdicts: Vec<bool> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["correct"]
                .as_bool()
                .unwrap()
        })
        .collect();
    assert_eq!(verdicts, [true, true, false]);
}

/// Once `--out` the `--pairs` file (or a link to it) emptied the pairs and printed "0 of 0
/// correct".
#[test]
fn grade_refuses_to_write_over_its_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("p.jsonl");
    let text = "{\"prediction\": \"\\\\boxed{2}\", \"reference\": \"2\"}\n";
    std::fs::write(&pairs, text).unwrap();
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(&pairs, &link).unwrap();
    for out in [pairs.clone(), tmp.path().join(".").join("p.jsonl"), link] {
        let run = limo(&["eval", "grade", "--pairs", s(&pairs), "--out", s(&out)]);
        one_line_error(&run, "the output is the pairs file");
        assert_eq!(std::fs::read_to_string(&pairs).unwrap(), text);
    }
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let (tmp, model) = tiny_model_in_tempdir();
    let out = tmp.path().join("out");
    one_line_error(
        &limo(&[
            "eval",
            "--model",
            s(&tmp.path().join("none")),
            "--out",
            s(&out),
        ]),
        "config.json",
    );
    // A config.json it may not look at (a link loop; permissions alike) is not "missing".
    let looped = tmp.path().join("looped");
    std::fs::create_dir(&looped).unwrap();
    std::os::unix::fs::symlink(looped.join("config.json"), looped.join("config.json")).unwrap();
    one_line_error(
        &limo(&["eval", "--model", s(&looped), "--out", s(&out)]),
        "config.json: Too many levels of symbolic links",
    );
    for (names, expected) in [
        ("aime,gpqa", "unknown benchmark \"gpqa\""),
        (" ,", "--benchmarks: no benchmark named"),
    ] {
        let args = ["eval", "--model", s(&model), "--benchmarks", names];
        one_line_error(&limo(&[&args[..], &["--out", s(&out)]].concat()), expected);
    }
    // Names as a person types them: spaces after commas, capitals.
    let typed = limo(&[
        "eval",
        "--model",
        s(&model),
        "--benchmarks",
        "AIME, amc23",
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
        "--out",
        s(&tmp.path().join("typed")),
    ]);
    let table = String::from_utf8_lossy(&typed.stdout);
    assert!(
        typed.status.success(),
        "{}",
        String::from_utf8_lossy(&typed.stderr)
    );
    assert!(table.contains("aime") && table.contains("amc23"), "{table}");
    assert!(!table.contains("math500"), "{table}");
    let data = tmp.path().join("mine.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"1+1?\", \"answer\": \"2\"}\n{not json\n",
    )
    .unwrap();
    one_line_error(&eval_data(&model, &data, &[], &out), "mine.jsonl");
    std::fs::write(&data, "{\"question\": \"1+1?\", \"answer\": \"\"}\n").unwrap();
    one_line_error(
        &eval_data(&model, &data, &[], &tmp.path().join("o2")),
        "mine.jsonl",
    );
    // A response length whose KV cache could never fit: refused before any generation.
    std::fs::write(&data, "{\"question\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
    // Runs that would evaluate nothing yet print a table (they once exited 0).
    for (flags, expected) in [
        (
            ["--max-new-tokens", "0"],
            "max_new_tokens must be at least 1",
        ),
        (["--limit", "0"], "limit must be at least 1"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--save-every", "nan"], "--save-every NaN: give seconds"),
        (
            ["--save-every", "1e300"],
            "--save-every 1e300: give seconds",
        ),
    ] {
        let o = tmp.path().join("o-none");
        one_line_error(&eval_data(&model, &data, &flags, &o), expected);
    }
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let verdicts = tmp.path().join("verdicts.jsonl");
    one_line_error(
        &limo(&["eval", "grade", "--pairs", s(&empty), "--out", s(&verdicts)]),
        "empty.jsonl: no pairs",
    );
    assert!(!verdicts.exists());
    one_line_error(
        &eval_data(
            &model,
            &data,
            &["--max-new-tokens", "100000000000"],
            &tmp.path().join("o3"),
        ),
        "--max-new-tokens: one sequence's KV cache at its longest needs",
    );
    // Once wrapped around to a cache that "fit", then decoded without end.
    one_line_error(
        &eval_data(
            &model,
            &data,
            &["--max-new-tokens", &usize::MAX.to_string()],
            &tmp.path().join("o4"),
        ),
        "--max-new-tokens: one sequence's KV cache at its longest needs",
    );
    // Once an allocation abort: a job per (problem, sample).
    one_line_error(
        &eval_data(
            &model,
            &data,
            &["--samples", "4294967296"],
            &tmp.path().join("o5"),
        ),
        "--samples 4294967296",
    );
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"prediction\": \"1\"}\n").unwrap();
    one_line_error(
        &limo(&[
            "eval",
            "grade",
            "--pairs",
            s(&pairs),
            "--out",
            s(&tmp.path().join("g")),
        ]),
        "pairs.jsonl",
    );
}

#[test]
fn data_takes_json_files_and_hub_ids_as_training_does() {
    let (tmp, model) = tiny_model_in_tempdir();
    // A .json array with LIMO's field names.
    let json = tmp.path().join("limo.json");
    std::fs::write(
        &json,
        r#"[{"question": "What is 2+3?", "solution": "...", "answer": "5"},
            {"question": "What is 4*4?", "solution": "...", "answer": "16"}]"#,
    )
    .unwrap();
    let out = tmp.path().join("out-json");
    let run = eval_data(&model, &json, &["--max-new-tokens", "4"], &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("\"reference\":\"16\""), "{lines}");

    // The same rows as a Hub dataset in the Hugging Face cache, offline.
    let repo = tmp.path().join("hf/hub/datasets--GAIR--LIMO");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(sha)).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    std::fs::copy(&json, repo.join("snapshots").join(sha).join("limo.json")).unwrap();
    let out = tmp.path().join("out-hub");
    let run = Command::new(env!("CARGO_BIN_EXE_limo"))
        .args([
            "eval",
            "--model",
            s(&model),
            "--data",
            "GAIR/LIMO",
            "--max-new-tokens",
            "4",
        ])
        .args(["--out", s(&out)])
        .env("HF_HOME", tmp.path().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    // The model as a Hub id too, from its snapshot in the same cache; an id not there is one
    // line that says limo downloads no models.
    let snapshot = tmp
        .path()
        .join("hf/hub/models--Qwen--tiny/snapshots")
        .join(sha);
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::fs::rename(&model, &snapshot).unwrap();
    std::fs::create_dir_all(tmp.path().join("hf/hub/models--Qwen--tiny/refs")).unwrap();
    std::fs::write(tmp.path().join("hf/hub/models--Qwen--tiny/refs/main"), sha).unwrap();
    for (id, ok) in [("Qwen/tiny", true), ("Qwen/absent", false)] {
        let run = Command::new(env!("CARGO_BIN_EXE_limo"))
            .args(["eval", "--model", id, "--data", "GAIR/LIMO"])
            .args(["--max-new-tokens", "4", "--out", s(&tmp.path().join(id))])
            .env("HF_HOME", tmp.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        if ok {
            let err = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "{err}");
            assert!(err.contains("Qwen/tiny from the Hub cache"), "{err}");
        } else {
            one_line_error(
                &run,
                "Qwen/absent is neither a local directory nor in the Hub cache",
            );
        }
    }
    std::fs::rename(&snapshot, &model).unwrap();
    // A row without its answer, in a .json file: one line naming the file and row.
    std::fs::write(&json, r#"[{"question": "What is 2+3?"}]"#).unwrap();
    one_line_error(
        &eval_data(&model, &json, &[], &tmp.path().join("o3")),
        "limo.json: row",
    );
}

/// (benchmark, id) -> (response, tokens) of `out`'s results.jsonl.
fn responses(out: &Path) -> std::collections::BTreeMap<(String, String), (String, u64)> {
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = (
                v["benchmark"].as_str().unwrap().to_string(),
                v["id"].to_string(),
            );
            let value = (
                v["response"].as_str().unwrap().to_string(),
                v["tokens"].as_u64().unwrap(),
            );
            (key, value)
        })
        .collect()
}

/// `eval` of aime and amc23 in f64, saving unfinished responses after every token, with
/// `sizes` (`--limit`, `--max-new-tokens`, `--batch-size`), into `out`.
fn stoppable_eval(model: &Path, out: &Path, sizes: [&str; 3]) -> Vec<String> {
    let [limit, new_tokens, batch] = sizes;
    [
        "eval",
        "--model",
        s(model),
        "--benchmarks",
        "aime,amc23",
        "--limit",
        limit,
        "--max-new-tokens",
        new_tokens,
        "--batch-size",
        batch,
        "--dtype",
        "f64",
        "--save-every",
        "0",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `args` to a successful end; its stdout.
fn complete(args: Vec<String>) -> String {
    let done = limo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    String::from_utf8_lossy(&done.stdout).to_string()
}

/// The file names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn sigterm_saves_unfinished_responses_and_the_rerun_continues_them() {
    use std::time::{Duration, Instant};
    let (tmp, model) = tiny_model_in_tempdir();
    let args = |out: &Path| stoppable_eval(&model, out, ["2", "120", "3"]);
    let whole = tmp.path().join("whole");
    complete(args(&whole));
    assert!(!whole.join("in-flight.json").exists());
    let expected = responses(&whole);
    assert_eq!(expected.len(), 4);

    // SIGTERM once every slot of the batch has generated something.
    let cut = tmp.path().join("cut");
    let stderr_path = tmp.path().join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let in_flight = cut.join("in-flight.json");
    let saved = |min: usize| -> Option<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&in_flight).ok()?).ok()?;
        let seqs = v["sequences"].as_array()?;
        let ok = seqs.len() == 3
            && seqs
                .iter()
                .all(|q| q["ids"].as_array().unwrap().len() >= min);
        ok.then_some(v)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while saved(20).is_none() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    // Each save logs how far the run is (no progress bar without a terminal).
    assert!(
        stderr.contains("eval: 0 of 4 responses done, 3 in flight saved; this process: 0 of 4 in "),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: stopped by SIGTERM: 0 of 4 responses done, 3 in flight saved to ")
            && last.ends_with("; the same command continues them"),
        "{last}"
    );
    let kept = saved(20).expect("in-flight.json holds all three");
    let longest = kept["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["ids"].as_array().unwrap().len())
        .max()
        .unwrap();
    assert!(longest < 120, "stopped before the end: {longest}");

    // The same command: the three go on from their tokens, the fourth starts; all as uncut.
    // To see that the saved tokens are used, not generated again, one sequence's are replaced
    // by "7"s (Qwen2.5 token 22): its response must begin with them.
    let mut tampered = kept.clone();
    let first = &mut tampered["sequences"][0];
    let n = first["ids"].as_array().unwrap().len();
    first["ids"] = serde_json::json!(vec![22; n]);
    let key = (
        first["benchmark"].as_str().unwrap().to_string(),
        first["id"].to_string(),
    );
    std::fs::write(&in_flight, tampered.to_string()).unwrap();
    let table = complete(args(&cut));
    assert!(
        table.contains("4 responses generated, 0 resumed, 3 continued"),
        "{table}"
    );
    let mut got = responses(&cut);
    let (response, tokens) = got.remove(&key).unwrap();
    assert!(response.starts_with(&"7".repeat(n)), "{response}");
    assert_eq!(tokens, 120);
    let mut expected = expected;
    expected.remove(&key);
    assert_eq!(got, expected);
    assert!(!in_flight.exists(), "removed once every response is in");
}

#[test]
fn ranks_of_a_launch_split_the_problems_and_a_stopped_launch_continues_at_another_world_size() {
    use std::time::{Duration, Instant};
    let (tmp, model) = tiny_model_in_tempdir();
    let eval_args = |out: &Path| stoppable_eval(&model, out, ["3", "100", "2"]);
    let launch_args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["launch", "--nproc-per-node", "2", "--"]
            .map(String::from)
            .to_vec();
        a.extend(eval_args(out));
        a
    };
    let one = tmp.path().join("one");
    complete(eval_args(&one));
    let expected = responses(&one);
    assert_eq!(expected.len(), 6);

    // Two ranks: the same responses, one results.jsonl, one table (rank 0's), no rank files.
    let two = tmp.path().join("two");
    let table = complete(launch_args(&two));
    assert_eq!(table.matches("6 responses generated").count(), 1, "{table}");
    assert_eq!(responses(&two), expected);
    assert_eq!(
        names_in(&two),
        [".lock", "results.jsonl", "run.json", "summary.json"]
    );

    // Two ranks stopped once both have unfinished responses; one process continues them all.
    let cut = tmp.path().join("cut");
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(launch_args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let saved = |rank: usize| -> usize {
        let path = cut.join(format!("in-flight.rank-{rank}.json"));
        let read = std::fs::read_to_string(path).ok();
        let v: Option<serde_json::Value> = read.and_then(|t| serde_json::from_str(&t).ok());
        v.and_then(|v| {
            let seqs = v["sequences"].as_array()?.clone();
            seqs.iter()
                .map(|q| q["ids"].as_array().map(Vec::len))
                .min()?
        })
        .unwrap_or(0)
    };
    let finished = |rank: usize| {
        let part = std::fs::read_to_string(cut.join(format!("results.rank-{rank}.jsonl")));
        part.map_or(0, |t| t.lines().count())
    };
    // Each rank has 3 problems, 2 at a time: stopped when both finished some and one saved
    // its third (both saving theirs would ask the two processes to keep pace).
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..2).any(|r| finished(r) < 1) || (0..2).all(|r| saved(r) < 5) {
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the run ended first"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(
        unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) },
        0
    );
    assert!(!launcher.wait().unwrap().success());
    assert!(cut.join("in-flight.rank-1.json").exists());
    let finished_before = finished(0) + finished(1);
    let table = complete(eval_args(&cut));
    assert!(table.contains("continued"), "{table}");
    let continued: usize = table
        .split(" resumed, ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(continued >= 1, "the saved responses go on: {table}");
    assert!(
        table.contains(&format!("{} responses generated", 6 - finished_before)),
        "{table}"
    );
    assert_eq!(responses(&cut), expected);
    assert_eq!(
        names_in(&cut),
        [".lock", "results.jsonl", "run.json", "summary.json"]
    );
}

/// `limo ARGS` where no file may grow past 1 or 2 KiB (`ulimit -f 2`, with SIGXFSZ ignored):
/// a write past that fails (EFBIG) as one on a full disk does (ENOSPC), without root.
fn limo_on_a_small_disk(args: &[&str]) -> Output {
    Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 2 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .expect("sh runs the limo binary")
}

/// A full disk while run.json was written once left it empty, and every rerun failed with
/// "run.json: malformed: EOF while parsing a value".
#[test]
fn a_run_json_that_cannot_be_written_is_not_left_behind() {
    let (tmp, model) = tiny_model_in_tempdir();
    let data = tmp.path().join("q.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 1+1?\", \"answer\": \"2\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    // A system prompt longer than the limit makes run.json, which records it, too long.
    let system = "Think. ".repeat(600);
    let args = [
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--max-new-tokens",
        "2",
        "--system",
        &system,
        "--out",
        s(&out),
    ];
    let failed = limo_on_a_small_disk(&args);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(err.contains("run.json"), "{err}");
    assert_eq!(names_in(&out), [".lock"], "no run.json, whole or part");
    let rerun = limo(&args);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(names_in(&out).contains(&"run.json".to_string()));
}

/// A full disk once left `--out` cut off where the write failed.
#[test]
fn grade_on_a_full_disk_leaves_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    let line = "{\"prediction\": \"\\\\boxed{2}\", \"reference\": \"2\"}\n";
    std::fs::write(&pairs, line.repeat(500)).unwrap();
    let out = tmp.path().join("graded.jsonl");
    std::fs::write(&out, "old\n").unwrap();
    let args = ["eval", "grade", "--pairs", s(&pairs), "--out", s(&out)];
    let failed = limo_on_a_small_disk(&args);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: cannot write", out.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    assert_eq!(names_in(tmp.path()), ["graded.jsonl", "pairs.jsonl"]);
    let run = limo(&args);
    assert!(run.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 500);
    assert_eq!(names_in(tmp.path()), ["graded.jsonl", "pairs.jsonl"]);
}
