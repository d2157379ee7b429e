//! The evaluation run end to end on a random tiny model with the real Qwen2.5 tokenizer: all
//! nine benchmarks, results streamed and resumed, and one-line errors.

use std::path::{Path, PathBuf};

use limo_eval::benchmarks::NAMES;
use limo_eval::in_flight::IN_FLIGHT_FILE;
use limo_eval::run::{run, EvalOptions, ResultRecord, UserBenchmark, RESULTS_FILE, SUMMARY_FILE};
use tempfile::TempDir;

mod common;

/// The test model in a temporary directory, and the output directory `eval` beside it.
fn model_and_out() -> (TempDir, PathBuf, PathBuf) {
    let (tmp, model) = common::model_in_tempdir(Some(0.2));
    let out = tmp.path().join("eval");
    (tmp, model, out)
}

fn options(model: &Path, out: &Path) -> EvalOptions {
    let mut opts = EvalOptions::new(model, out);
    opts.limit = Some(3);
    opts.max_new_tokens = 8;
    opts.batch_size = 5;
    opts
}

/// [`options`] for the first `limit` problems of aime alone.
fn aime(model: &Path, out: &Path, limit: usize) -> EvalOptions {
    let mut opts = options(model, out);
    opts.benchmarks = vec!["aime".into()];
    opts.limit = Some(limit);
    opts
}

fn read_records(out: &Path) -> Vec<ResultRecord> {
    std::fs::read_to_string(out.join(RESULTS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn all_benchmarks_run_end_to_end_and_resume() {
    let (_tmp, model, out) = model_and_out();
    let opts = options(&model, &out);

    let summary = run(&opts).unwrap();
    let records = read_records(&out);
    assert_eq!(records.len(), 27);
    assert_eq!(summary.generated, 27);
    assert_eq!(summary.resumed, 0);
    assert_eq!(summary.benchmarks.len(), 9);
    for (b, name) in summary.benchmarks.iter().zip(NAMES) {
        assert_eq!(b.benchmark, name);
        assert_eq!((b.problems, b.results), (3, 3));
        assert!(b.pass_at_k.is_empty(), "one sample: no pass@k");
        assert!(b.mean_tokens <= 8.0);
    }
    for r in &records {
        assert!(r.tokens <= 8 && (r.stopped || r.tokens == 8), "{r:?}");
        assert!(!r.question.is_empty() && !r.reference.is_empty());
        assert_eq!(r.sample, 0);
    }
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk["benchmarks"].as_array().unwrap().len(), 9);
    println!(
        "greedy decoding, tiny model on the CPU: {:.0} tokens/s over the batch",
        summary.throughput_tokens_per_s
    );

    // A second run finds everything done.
    let before = std::fs::read(out.join(RESULTS_FILE)).unwrap();
    let again = run(&opts).unwrap();
    assert_eq!((again.generated, again.resumed), (0, 27));
    assert_eq!(std::fs::read(out.join(RESULTS_FILE)).unwrap(), before);
    assert_eq!(again.benchmarks.len(), 9);
    assert_eq!(again.other_results, 0);

    // A narrower rerun reports its selection and counts the responses it leaves in the file.
    let narrow = EvalOptions {
        benchmarks: vec!["aime".into()],
        limit: Some(2),
        ..opts.clone()
    };
    let few = run(&narrow).unwrap();
    assert_eq!((few.resumed, few.other_results), (2, 25));
    assert_eq!(few.benchmarks.len(), 1);
    assert!(limo_eval::summary::format_table(&few).contains("also keeps 25 responses"));
    assert_eq!(std::fs::read(out.join(RESULTS_FILE)).unwrap(), before);

    // A run killed mid-line: the torn line is dropped and generated again, identically.
    let cut = before.len() - 10;
    std::fs::write(out.join(RESULTS_FILE), &before[..cut]).unwrap();
    let resumed = run(&opts).unwrap();
    assert_eq!((resumed.generated, resumed.resumed), (1, 26));
    let after = read_records(&out);
    assert_eq!(after.len(), 27);
    let (old, new) = (&records[26], &after[26]);
    assert_eq!(
        (&old.benchmark, &old.id, &old.response, old.tokens),
        (&new.benchmark, &new.id, &new.response, new.tokens)
    );
}

#[test]
fn samples_give_pass_at_k() {
    let (_tmp, model, out) = model_and_out();
    let mut opts = options(&model, &out);
    opts.benchmarks = vec!["aime".into(), "math500".into()];
    opts.limit = Some(2);
    opts.samples = 4;
    opts.temperature = 1.0;
    opts.top_p = 0.95;
    opts.seed = 11;
    let summary = run(&opts).unwrap();
    assert_eq!(summary.benchmarks.len(), 2);
    for b in &summary.benchmarks {
        assert_eq!((b.problems, b.results), (2, 8));
        assert_eq!(b.pass_at_k.keys().copied().collect::<Vec<_>>(), vec![2, 4]);
    }
    let records = read_records(&out);
    assert_eq!(records.len(), 16);
    // Samples of one problem differ (their streams are seeded apart).
    let first: Vec<&ResultRecord> = records
        .iter()
        .filter(|r| r.benchmark == "aime" && r.id == records[0].id)
        .collect();
    assert_eq!(first.len(), 4);
    assert!(first.iter().any(|r| r.response != first[0].response));
}

fn one_line_error(opts: &EvalOptions) -> String {
    let err = format!("{:#}", run(opts).unwrap_err());
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn errors_are_one_line() {
    let (tmp, model, out) = model_and_out();

    let mut opts = options(&model, &out);
    opts.benchmarks = vec!["aime".into(), "nope".into()];
    let err = one_line_error(&opts);
    assert!(err.contains("unknown benchmark \"nope\""), "{err}");

    let opts = options(&tmp.path().join("missing"), &out);
    let err = one_line_error(&opts);
    assert!(
        err.contains("missing") && err.contains("config.json"),
        "{err}"
    );

    let mut opts = options(&model, &out);
    opts.tokenizer = Some(tmp.path().join("nowhere"));
    let err = one_line_error(&opts);
    assert!(err.contains("nowhere"), "{err}");

    // An out_dir holds one run's settings: another temperature is refused.
    let mut first = options(&model, &out);
    first.benchmarks = vec!["aime".into()];
    first.limit = Some(1);
    first.max_new_tokens = 2;
    run(&first).unwrap();
    let mut hot = first.clone();
    hot.temperature = 0.7;
    let err = one_line_error(&hot);
    assert!(err.contains("temperature 0.0 -> 0.7"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    // A malformed line before the last one of results.jsonl is named, not skipped.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(RESULTS_FILE), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    let err = one_line_error(&options(&model, &out));
    assert!(err.contains("line 1"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    // So is a malformed in-flight.json.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(IN_FLIGHT_FILE), "{\"sequences\": [{}]}").unwrap();
    let err = one_line_error(&options(&model, &out));
    assert!(
        err.contains("in-flight.json: malformed (delete it"),
        "{err}"
    );
}

#[test]
fn a_saved_response_of_another_prompt_starts_over() {
    let (tmp, model, out) = model_and_out();
    let opts = aime(&model, &out, 2);
    let whole = run(&options_with(&opts, tmp.path().join("whole"))).unwrap();
    assert_eq!(whole.continued, 0);
    let expected = read_records(&tmp.path().join("whole"));
    // Saved from a prompt of other tokens (another tokenizer, say): not continued.
    let r = &expected[0];
    let saved = serde_json::json!({"sequences": [{
        "benchmark": r.benchmark, "id": r.id, "sample": 0, "prompt_tokens": 3,
        "prompt_hash": 1, "ids": [22, 22], "rng": 0, "seconds": 1.0
    }]});
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(IN_FLIGHT_FILE), saved.to_string()).unwrap();
    let summary = run(&opts).unwrap();
    assert_eq!((summary.generated, summary.continued), (2, 0));
    let got = read_records(&out);
    for (a, b) in got.iter().zip(&expected) {
        assert_eq!((&a.id, &a.response), (&b.id, &b.response));
    }
    assert!(!out.join(IN_FLIGHT_FILE).exists());
}

#[test]
fn user_files_are_benchmarks() {
    let (tmp, model, out) = model_and_out();
    let file = tmp.path().join("mine.jsonl");
    std::fs::write(
        &file,
        "{\"q\": \"What is 1+1?\", \"a\": 2, \"name\": \"one\"}\n\
         {\"q\": \"What is 2+2?\", \"a\": \"4\", \"name\": \"two\"}\n",
    )
    .unwrap();
    let mut opts = options(&model, &out);
    opts.benchmarks.clear();
    opts.files = vec![UserBenchmark {
        path: file.clone(),
        question_field: "q".into(),
        answer_field: "a".into(),
        id_field: Some("name".into()),
        conversation: None,
    }];
    let summary = run(&opts).unwrap();
    assert_eq!(summary.benchmarks.len(), 1);
    assert_eq!(summary.benchmarks[0].benchmark, "mine");
    let records = read_records(&out);
    let ids: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.id.as_str(), r.reference.as_str()))
        .collect();
    assert_eq!(ids, [("one", "2"), ("two", "4")]);

    // LIMO's layout, eval/data/<benchmark>/test.jsonl (its GPQA set, which limo does not embed).
    let gpqa = tmp.path().join("data/gpqa/test.jsonl");
    std::fs::create_dir_all(gpqa.parent().unwrap()).unwrap();
    let row = "{\"id\": 1, \"question\": \"Which?\\n\\nA. 1\\nB. 2\", \"answer\": \"A\"}\n";
    std::fs::write(&gpqa, row).unwrap();
    let limo_file = UserBenchmark {
        path: gpqa,
        question_field: "question".into(),
        answer_field: "answer".into(),
        id_field: Some("id".into()),
        conversation: None,
    };
    let mut limo_layout = options_with(&opts, tmp.path().join("eval-gpqa"));
    limo_layout.files = vec![limo_file];
    let summary = run(&limo_layout).unwrap();
    assert_eq!(summary.benchmarks[0].benchmark, "gpqa");
    // The folder of LIMO's sets: one benchmark each, a "problem" read as LIMO reads it.
    let aime = tmp.path().join("data/aime/test.jsonl");
    std::fs::create_dir_all(aime.parent().unwrap()).unwrap();
    std::fs::write(
        &aime,
        "{\"id\": 7, \"problem\": \"1+1?\", \"answer\": \"2\"}\n",
    )
    .unwrap();
    limo_layout.files[0].path = tmp.path().join("data");
    limo_layout.out_dir = tmp.path().join("eval-limo-sets");
    let summary = run(&limo_layout).unwrap();
    let names: Vec<&str> = summary
        .benchmarks
        .iter()
        .map(|b| b.benchmark.as_str())
        .collect();
    assert_eq!(names, ["aime", "gpqa"]);
    let records = read_records(&limo_layout.out_dir);
    let aime = records.iter().find(|r| r.benchmark == "aime").unwrap();
    assert_eq!((aime.id.as_str(), aime.question.as_str()), ("7", "1+1?"));

    std::fs::write(&file, "{\"q\": \"What is 1+1?\"}\n").unwrap();
    let err = one_line_error(&options_with(&opts, tmp.path().join("eval2")));
    assert!(
        err.contains("mine.jsonl") && err.contains("line 1"),
        "{err}"
    );
}

fn options_with(opts: &EvalOptions, out: PathBuf) -> EvalOptions {
    EvalOptions {
        out_dir: out,
        ..opts.clone()
    }
}

/// Runs `opts_of(rank)` as every rank of a thread group of `world`; each rank's result.
fn run_ranks(
    world: usize,
    opts_of: impl Fn(usize) -> EvalOptions + Sync,
) -> Vec<anyhow::Result<Option<limo_eval::run::Summary>>> {
    let comms = limo_dist::comm::thread_group(world, std::time::Duration::from_secs(60));
    std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let opts = opts_of(rank);
                scope.spawn(move || limo_eval::run::run_on(&opts, &comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn ranks_split_the_problems_and_must_share_the_output_directory() {
    let (tmp, model, out) = model_and_out();
    let mut opts = options(&model, &out);
    opts.benchmarks = vec!["aime".into(), "amc23".into()];
    let alone = run(&options_with(&opts, tmp.path().join("alone"))).unwrap();
    let expected = read_records(&tmp.path().join("alone"));

    // Three ranks in one directory: rank 0 reports what one process did.
    let results = run_ranks(3, |_| opts.clone());
    let mut results = results.into_iter().map(Result::unwrap);
    let summary = results.next().unwrap().expect("rank 0 reports");
    assert!(results.all(|r| r.is_none()), "only rank 0 reports");
    assert_eq!(summary.generated, alone.generated);
    let key = |r: &ResultRecord| (r.benchmark.clone(), r.id.clone(), r.response.clone());
    let mut got: Vec<_> = read_records(&out).iter().map(key).collect();
    let mut want: Vec<_> = expected.iter().map(key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // Each rank in a directory of its own (nodes without a shared filesystem), even one that
    // holds an earlier run: every rank stops with the same error, before generating anything.
    let node = |r: usize| tmp.path().join(format!("node{r}"));
    for r in 0..2 {
        run(&options_with(&opts, node(r))).unwrap();
    }
    for r in run_ranks(2, |r| options_with(&opts, node(r))) {
        let err = format!("{:#}", r.unwrap_err());
        assert!(
            err.contains("rank(s) [1] do not see what rank 0 writes there"),
            "{err}"
        );
    }
    let before = std::fs::read_to_string(node(0).join(RESULTS_FILE)).unwrap();
    assert_eq!(before.lines().count(), expected.len());
}

/// A second evaluation into a directory a live one holds is refused (both would append to the
/// same results); once the holder is gone, it goes ahead.
#[test]
fn an_output_directory_in_use_is_refused() {
    let (_tmp, model, out) = model_and_out();
    let opts = aime(&model, &out, 1);
    std::fs::create_dir_all(&out).unwrap();
    let holder = std::fs::File::create(out.join(".lock")).unwrap();
    holder.lock().unwrap();
    std::fs::write(out.join(".lock"), "4242").unwrap();
    let err = one_line_error(&opts);
    assert!(
        err.contains("another limo process (pid 4242) is evaluating into this directory"),
        "{err}"
    );
    assert!(!out.join(RESULTS_FILE).exists(), "nothing was written");
    drop(holder);
    assert_eq!(run(&opts).unwrap().generated, 1);
}

/// What an interrupted run would have saved for aime's first problem (its real prompt), with
/// `edit` applied, written to `out`'s in-flight.json.
fn save_in_flight(model: &Path, out: &Path, edit: impl Fn(&mut serde_json::Value)) {
    use limo_eval::in_flight::{write, Saved};
    let tokenizer = limo_data::ChatTokenizer::from_path(model).unwrap();
    let problem = &limo_eval::benchmarks::load("aime").unwrap()[0];
    let system = Some(limo_eval::run::LIMO_SYSTEM_PROMPT);
    let prompt = limo_eval::run::prompt_ids(&tokenizer, system, &problem.question).unwrap();
    let key = ("aime".to_string(), problem.id.clone(), 0);
    let from = limo_model::generate::Continuation {
        ids: vec![22, 23],
        rng: 5,
    };
    let mut saved = serde_json::to_value(Saved::new(&key, &prompt, from, 1.5)).unwrap();
    edit(&mut saved);
    std::fs::create_dir_all(out).unwrap();
    write(
        &out.join(IN_FLIGHT_FILE),
        vec![serde_json::from_value(saved).unwrap()],
    )
    .unwrap();
}

/// A saved response no run could have written is an error naming the file, the problem and
/// the remedy; once a panic (seconds) or an error of the generator's sequence number.
#[test]
fn damaged_in_flight_saves_are_named_errors() {
    let (_tmp, model, out) = model_and_out();
    let opts = aime(&model, &out, 1);
    let id = &limo_eval::benchmarks::load("aime").unwrap()[0].id;
    // 8 is max_new_tokens; 151645 is <|im_end|>.
    let cases: [(&str, serde_json::Value, &str); 5] = [
        (
            "seconds",
            (-1.0).into(),
            "seconds -1.0: expected the seconds it took, 0 or more",
        ),
        ("seconds", 1e300.into(), "seconds 1e300: expected"),
        (
            "ids",
            serde_json::json!([99999999]),
            "token id 99999999 is outside the vocabulary (151936)",
        ),
        (
            "ids",
            serde_json::json!(vec![1; 8]),
            "8 tokens generated, the most is 8",
        ),
        (
            "ids",
            serde_json::json!([5, 151645]),
            "its tokens hold the stop id 151645",
        ),
    ];
    // A run gathers what earlier runs saved into in-flight.carried.json first; each case starts
    // as if the user had deleted it, as the message says.
    let carried = out.join(limo_eval::in_flight::CARRIED_FILE);
    for (field, value, what) in cases {
        let _ = std::fs::remove_file(&carried);
        save_in_flight(&model, &out, |s| s[field] = value.clone());
        let err = one_line_error(&opts);
        // Read errors name the file saved; later checks, the file it was gathered into.
        let named = |file: &str| {
            err.contains(&format!(
                "{file}: malformed (delete it to generate its responses from the start): aime \
                 problem {id:?} sample 0: {what}"
            ))
        };
        assert!(
            named("/in-flight.json") || named("/in-flight.carried.json"),
            "{err}"
        );
    }
    let _ = std::fs::remove_file(&carried);
    // Undamaged, it is continued.
    save_in_flight(&model, &out, |_| {});
    assert_eq!(run(&opts).unwrap().continued, 1);
}

/// Ids are row numbers: once, an edited file reused the old rows' responses and graded them
/// against the old references. Adding rows still resumes.
#[test]
fn results_of_other_problems_under_the_same_ids_are_refused() {
    let (tmp, model, out) = model_and_out();
    let file = tmp.path().join("mine.jsonl");
    let rows = |answers: [&str; 2]| {
        format!(
            "{{\"question\": \"What is 1+1?\", \"answer\": \"{}\"}}\n\
             {{\"question\": \"What is 2+2?\", \"answer\": \"{}\"}}\n",
            answers[0], answers[1]
        )
    };
    std::fs::write(&file, rows(["2", "4"])).unwrap();
    let mut opts = options(&model, &out);
    opts.benchmarks.clear();
    opts.files = vec![UserBenchmark {
        path: file.clone(),
        question_field: "question".into(),
        answer_field: "answer".into(),
        id_field: None,
        conversation: None,
    }];
    assert_eq!(run(&opts).unwrap().generated, 2);
    let before = std::fs::read(out.join(RESULTS_FILE)).unwrap();

    std::fs::write(&file, rows(["2", "5"])).unwrap();
    let err = one_line_error(&opts);
    assert!(
        err.contains(
            "results.jsonl: mine problem \"1\" holds a response to another problem: its \
             reference (\"4\" there, \"5\" in the data) differs"
        ) && err.contains("new --out, or delete"),
        "{err}"
    );
    std::fs::write(&file, rows(["2", "4"]).replace("1+1", "1+2")).unwrap();
    let err = one_line_error(&opts);
    assert!(
        err.contains("mine problem \"0\" holds a response to another problem: its question"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join(RESULTS_FILE)).unwrap(), before);

    // The same rows and one more: the two are resumed.
    let more = rows(["2", "4"]) + "{\"question\": \"What is 3+3?\", \"answer\": \"6\"}\n";
    std::fs::write(&file, more).unwrap();
    let summary = run(&opts).unwrap();
    assert_eq!((summary.generated, summary.resumed), (1, 2));
}

/// Once a 5M-character question asked the prefill's attention for 100 TB and aborted.
#[test]
fn a_prompt_longer_than_the_model_positions_is_refused() {
    let (_tmp, model, out) = model_and_out();
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = 30.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = one_line_error(&aime(&model, &out, 1));
    let id = &limo_eval::benchmarks::load("aime").unwrap()[0].id;
    assert!(
        err.contains(&format!("benchmark aime: problem {id:?}: its prompt is "))
            && err.contains("tokens, more than the model's 30 positions")
            && err.contains("config.json"),
        "{err}"
    );
    assert!(!out.join(RESULTS_FILE).exists(), "nothing generated");
}

/// The stop ids come from generation_config.json: once a malformed one was skipped, and every
/// response ran to max_new_tokens. A missing one is fine.
#[test]
fn a_generation_config_that_cannot_be_read_is_an_error() {
    let (tmp, model, _) = model_and_out();
    let path = model.join("generation_config.json");
    let cases = [
        ("{", "generation_config.json: malformed"),
        (
            "{\"eos_token_id\": \"x\"}",
            "generation_config.json: eos_token_id: expected a token id or a list of them, \
             found \"x\"",
        ),
        ("{\"eos_token_id\": [1, -2]}", "found [1,-2]"),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        let err = one_line_error(&aime(&model, &tmp.path().join(format!("e{i}")), 1));
        assert!(err.contains(want), "{err}");
    }
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        run(&aime(&model, &tmp.path().join("ok"), 1))
            .unwrap()
            .generated,
        1
    );
}

/// Once a model of NaN weights wrote "!!!!" responses, graded as any others.
#[test]
fn logits_that_are_not_finite_fail_the_run_naming_the_problem() {
    let (_tmp, model, out) = model_and_out();
    let path = model.join("model.safetensors");
    let device = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(&path, &device).unwrap();
    let norm = &tensors["model.norm.weight"];
    let nan = (norm * f64::NAN).unwrap();
    tensors.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = one_line_error(&aime(&model, &out, 1));
    let id = &limo_eval::benchmarks::load("aime").unwrap()[0].id;
    assert!(
        err.contains(&format!(
            "aime problem {id:?} sample 0: the model's logits are not finite"
        )),
        "{err}"
    );
}

/// Once "creating OUT: File exists (os error 17)".
#[test]
fn an_output_path_that_is_a_file_is_named() {
    let (_tmp, model, out) = model_and_out();
    std::fs::write(&out, "x").unwrap();
    let err = one_line_error(&aime(&model, &out, 1));
    assert!(err.contains("eval: a file, not a directory"), "{err}");
}

/// A full disk once left an empty run.json, and every rerun failed with "run.json: malformed:
/// EOF while parsing a value"; a damaged one said nothing of how to go on.
#[test]
fn an_empty_run_json_is_written_again_and_a_damaged_one_says_how_to_recover() {
    let (_tmp, model, out) = model_and_out();
    let opts = aime(&model, &out, 1);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("run.json"), "").unwrap();
    run(&opts).unwrap();
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(settings["max_new_tokens"], 8, "{settings}");

    std::fs::write(out.join("run.json"), "{\"model\": ").unwrap();
    let err = one_line_error(&opts);
    assert!(
        err.contains("run.json: malformed (delete it: it records the settings of the run"),
        "{err}"
    );
    std::fs::remove_file(out.join("run.json")).unwrap();
    assert_eq!(run(&opts).unwrap().resumed, 1);
}

/// A write of in-flight.json that failed (a full disk) once left in-flight.json.tmp behind
/// for good.
#[test]
fn a_run_removes_the_temporary_files_a_stopped_run_left() {
    let (_tmp, model, out) = model_and_out();
    std::fs::create_dir_all(&out).unwrap();
    let left = [
        "in-flight.json.tmp",
        "in-flight.rank-1.json.tmp",
        "summary.json.tmp",
        "run.json.tmp",
        ".done.rank-1.json.tmp",
    ];
    for name in left {
        std::fs::write(out.join(name), "").unwrap();
    }
    std::fs::write(out.join("notes.txt.tmp"), "mine").unwrap();
    run(&aime(&model, &out, 1)).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "notes.txt.tmp",
            "results.jsonl",
            "run.json",
            "summary.json"
        ]
    );
}
