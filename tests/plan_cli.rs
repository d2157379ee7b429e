//! End-to-end tests of `limo plan` on the LIMO recipe.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn limo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .expect("the limo binary runs")
}

fn recipe() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("configs/limo-qwen2.5-32b.toml");
    path.to_str().unwrap().to_string()
}

fn plan_json(gpus: &str) -> Value {
    let out = limo(&["plan", "--config", &recipe(), "--gpus", gpus, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON document")
}

#[test]
fn the_32b_recipe_fits_on_32_gpus_and_not_on_8() {
    let (p8, p32) = (plan_json("8"), plan_json("32"));
    // The model the recipe names is not here: its shape comes from "Qwen2.5-32B-Instruct".
    let params = p8["params"].as_u64().unwrap() as f64;
    assert!((params / 1e9 - 32.76).abs() < 0.1, "{params}");
    assert_eq!(p8["tokens_per_micro_batch"], 16384);
    assert_eq!(p8["with_checkpointing"]["memory"]["fits"], false);
    assert_eq!(p32["with_checkpointing"]["memory"]["fits"], true);
    assert_eq!(p32["without_checkpointing"]["memory"]["fits"], false);
    // The parts add up to the total, and the sharded state is 18 B per owned parameter.
    let m = &p32["with_checkpointing"]["memory"];
    let parts: u64 = [
        "weight_shard",
        "grad_shard",
        "master",
        "adam",
        "gathered",
        "activations",
        "loss",
        "workspace",
    ]
    .iter()
    .map(|k| m[*k].as_u64().unwrap())
    .sum();
    assert_eq!(parts, m["total"].as_u64().unwrap());
    let state = ["weight_shard", "grad_shard", "master", "adam"]
        .iter()
        .map(|k| m[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(state, 18 * p32["shard_params"].as_u64().unwrap());
    // Each GPU has the same work at any world size (data parallel): the same step time.
    let t8 = p8["with_checkpointing"]["step_seconds"].as_f64().unwrap();
    let t32 = p32["with_checkpointing"]["step_seconds"].as_f64().unwrap();
    assert!(t8 > 0.0 && (t8 / t32 - 1.0).abs() < 1e-9, "{t8} {t32}");
}

#[test]
fn the_table_names_every_term_and_the_verdict() {
    let out = limo(&["plan", "--config", &recipe(), "--gpus", "16"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for term in [
        "weight shard",
        "gradient shard",
        "master",
        "Adam",
        "gathered",
        "activations",
        "loss chunk",
        "workspace",
        "fits in 80.00 GiB",
        "step:",
    ] {
        assert!(text.contains(term), "{term:?} missing from\n{text}");
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for (args, needle) in [
        (vec!["--gpus", "0"], "--gpus"),
        (vec!["--gpus", "8", "--gpu-mem", "80XB"], "--gpu-mem"),
        (vec!["--gpus", "8", "--mfu", "1.5"], "--mfu"),
    ] {
        let recipe = recipe();
        let mut all = vec!["plan", "--config", recipe.as_str()];
        all.extend(args);
        let out = limo(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
        let line = err.lines().last().unwrap_or("");
        assert!(
            line.starts_with("error: ") && line.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn a_model_of_unknown_size_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(recipe()).unwrap();
    let config = tmp.path().join("recipe.toml");
    std::fs::write(&config, text.replace("Qwen2.5-32B-Instruct", "my-model")).unwrap();
    let out = limo(&["plan", "--config", config.to_str().unwrap(), "--gpus", "8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recipe.toml") && err.contains("names no Qwen2.5 size"),
        "{err}"
    );
}

#[test]
fn a_local_checkpoint_is_read_from_its_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    // Only config.json matters to the planner: no weights needed.
    let model = tmp.path().join("weights");
    std::fs::create_dir(&model).unwrap();
    let mut config = limo_model::init::preset_config("0.5b").unwrap();
    config["num_hidden_layers"] = 2.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let out = limo(&[
        "plan",
        "--config",
        &recipe(),
        "--gpus",
        "2",
        "--json",
        "--set",
        &format!("model.path={:?}", model.to_str().unwrap()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two layers of the 0.5B shape, not the 32B preset the recipe's file name suggests.
    assert_eq!(plan["layers"], 2);
    assert_eq!(plan["hidden"], 896);
}
