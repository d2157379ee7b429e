//! A user's benchmark in limo's training formats (`limo eval --data FILE --format F`): alpaca
//! and messages rows become prompts with their reference answers, end to end on a random tiny
//! model, and a bad row is one error line naming the file and line.

use std::path::Path;

use limo_data::config::{Columns, Format};
use limo_eval::benchmarks::ConversationRows;
use limo_eval::run::{run, EvalOptions, ResultRecord, UserBenchmark, RESULTS_FILE};

mod common;

fn benchmark(path: &Path, format: Format, columns: Columns) -> UserBenchmark {
    UserBenchmark {
        path: path.to_path_buf(),
        question_field: "question".into(),
        answer_field: "answer".into(),
        id_field: None,
        conversation: Some(ConversationRows { format, columns }),
    }
}

fn references(out: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out.join(RESULTS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<ResultRecord>(l).unwrap())
        .map(|r| (r.benchmark, r.reference))
        .collect()
}

#[test]
fn alpaca_and_messages_rows_are_evaluated() {
    let (tmp, model) = common::model_in_tempdir(None);
    let alpaca = tmp.path().join("alp.jsonl");
    std::fs::write(
        &alpaca,
        "{\"instruction\": \"Add.\", \"input\": \"1+1\", \"response\": \"So \\\\boxed{2}.\"}\n\
         {\"instruction\": \"What is 3*3?\", \"response\": \"9\"}\n",
    )
    .unwrap();
    let messages = tmp.path().join("msg.jsonl");
    std::fs::write(
        &messages,
        "{\"conversations\": [{\"role\": \"user\", \"content\": \"2+2?\"}, \
         {\"role\": \"assistant\", \"content\": \"\\\\boxed{4}\"}]}\n",
    )
    .unwrap();
    let out = tmp.path().join("eval");
    let mut opts = EvalOptions::new(&model, &out);
    opts.benchmarks.clear();
    opts.max_new_tokens = 3;
    let alpaca_cols = Columns {
        output: "response".into(),
        ..Columns::default()
    };
    let message_cols = Columns {
        messages: "conversations".into(),
        ..Columns::default()
    };
    opts.files = vec![
        benchmark(&alpaca, Format::Alpaca, alpaca_cols),
        benchmark(&messages, Format::Messages, message_cols.clone()),
    ];
    let summary = run(&opts).unwrap();
    assert_eq!(summary.generated, 3);
    let mut refs = references(&out);
    refs.sort();
    let want = [("alp", "2"), ("alp", "9"), ("msg", "4")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(b, r)| (b.to_string(), r.to_string()))
        .collect();
    assert_eq!(refs, want);

    // A row without an assistant reply: one line naming the file, the line and the field.
    std::fs::write(
        &messages,
        "{\"conversations\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    opts.out_dir = tmp.path().join("eval2");
    opts.files = vec![benchmark(&messages, Format::Messages, message_cols)];
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(err.contains("msg.jsonl: line 1: conversations"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    // limo's rows read as alpaca: the hint names eval's flag (once `limo data`'s --column).
    let limo_rows = tmp.path().join("q.jsonl");
    std::fs::write(&limo_rows, "{\"question\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
    opts.out_dir = tmp.path().join("eval3");
    opts.files = vec![benchmark(&limo_rows, Format::Alpaca, Columns::default())];
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        err.contains("q.jsonl: line 1: instruction: missing")
            && err.contains("map columns with --field KEY=NAME")
            && !err.contains("--column"),
        "{err}"
    );
}
