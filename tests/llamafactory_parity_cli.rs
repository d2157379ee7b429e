//! limo runs a LLaMA-Factory YAML as LLaMA-Factory does: `scripts/llamafactory-parity.sh` ran
//! LLaMA-Factory itself (versions in `meta.json`) on CPU in float32 with
//! `tests/fixtures/llamafactory-parity/train.yaml` and limo's tiny random model, and kept its
//! tokenized rows and its per-step log. LIMO's columns through `dataset_info.json`, the qwen
//! template with its default system prompt, a 160-token cutoff that cuts 10 of 11 rows pair by
//! pair (one with a long problem and a short answer), torch's shuffle, 2 x 2 micro-batches per
//! step with each epoch's short last step, cosine with a warmup share.

mod common;

use std::path::{Path, PathBuf};

use common::{read_jsonl, run_ok};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llamafactory-parity")
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn runs_a_llamafactory_yaml_as_llamafactory_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, out) = (
        tmp.path().join("model"),
        tmp.path().join("data"),
        tmp.path().join("out"),
    );
    run_ok(&[
        "init-model",
        "--shape",
        "tiny",
        "--dtype",
        "f32",
        "--out",
        &path(&model),
    ]);
    std::fs::create_dir_all(&data).unwrap();
    for file in ["limo.json", "dataset_info.json"] {
        std::fs::copy(fixture().join(file), data.join(file)).unwrap();
    }
    let yaml = std::fs::read_to_string(fixture().join("train.yaml"))
        .unwrap()
        .replace("MODEL", &path(&model))
        .replace("DATA", &path(&data))
        .replace("OUT", &path(&out));
    let config = tmp.path().join("train.yaml");
    std::fs::write(&config, yaml).unwrap();

    // The rows, token for token: what the YAML's data settings make of limo.json.
    let dump = tmp.path().join("rows.jsonl");
    let columns = ["instruction=question", "output=solution"];
    let mut args = vec![
        "data",
        "dump",
        "--format",
        "alpaca",
        "--qwen-default-system",
    ];
    args.extend([
        "--cutoff-len",
        "160",
        "--truncate-pairs",
        "--column",
        columns[0],
    ]);
    args.extend(["--column", columns[1]]);
    let (rows, tokenizer, dump_arg) = (path(&data.join("limo.json")), path(&model), path(&dump));
    args.extend([
        "--data",
        &rows,
        "--tokenizer",
        &tokenizer,
        "--out",
        &dump_arg,
    ]);
    run_ok(&args);
    assert_eq!(
        read_jsonl(&dump),
        read_jsonl(&fixture().join("tokenized.jsonl"))
    );

    // The run: the same steps, lr exactly, the loss to float32 rounding.
    run_ok(&["train", "--config", &path(&config)]);
    let ours = read_jsonl(&out.join("metrics.jsonl"));
    let theirs = read_jsonl(&fixture().join("log.jsonl"));
    assert_eq!(ours.len(), theirs.len());
    for (o, r) in ours.iter().zip(&theirs) {
        let step = &r["step"];
        let value = |m: &serde_json::Value, key: &str| m[key].as_f64().unwrap();
        assert_eq!(value(o, "lr"), value(r, "learning_rate"), "step {step}: lr");
        let (loss, want) = (value(o, "loss"), value(r, "loss"));
        assert!(
            (loss - want).abs() <= 1e-6 * want,
            "step {step}: loss {loss} vs {want}"
        );
        // The Trainer sums the 10M squares of its norm in float32 and reports it ~1e-4 low
        // (its clipped gradient then has norm 1.00003, not 1); limo sums them in float64.
        let (norm, want) = (value(o, "grad_norm"), value(r, "grad_norm"));
        assert!(
            (norm - want).abs() <= 5e-4 * want,
            "step {step}: grad_norm {norm} vs {want}"
        );
    }
}
