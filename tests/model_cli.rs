//! End-to-end tests of `limo init-model` and `limo debug loss-grad`.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{
    assert_mentions, golden, init_tiny_model, loss_grad_args, loss_grad_summary, rel_l2, run_err,
    run_ok,
};

#[test]
fn loss_grad_matches_transformers_for_both_batches_and_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    for (batch, dtype, loss_tol, grad_tol) in [
        ("batch", "f32", 1e-6, 1e-5),
        ("packed", "f32", 1e-6, 1e-5),
        ("batch", "f64", 1e-9, 1e-8),
        ("packed", "f64", 1e-9, 1e-8),
    ] {
        let out = tmp.path().join(format!("{batch}-{dtype}.safetensors"));
        let model = golden().join("model");
        let batch_file = golden().join(format!("{batch}.json"));
        let mut args = loss_grad_args(&model, &batch_file, &out);
        args.extend(["--dtype".to_string(), dtype.to_string()]);
        run_ok(&args);
        let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let reference = candle_core::safetensors::load(
            golden().join(format!("{batch}.ref.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let loss_err = rel_l2(&ours["loss"], &reference["loss"]);
        assert!(
            loss_err <= loss_tol,
            "{batch} {dtype}: loss rel error {loss_err:e}"
        );
        let mut checked = 0;
        for (name, golden_grad) in reference.iter().filter(|(k, _)| k.starts_with("grad.")) {
            let err = rel_l2(&ours[name], golden_grad);
            assert!(
                err <= grad_tol,
                "{batch} {dtype}: {name} rel L2 error {err:e}"
            );
            checked += 1;
        }
        assert_eq!(checked, 26, "every parameter of the tied 2-layer model");
        assert_eq!(ours.keys().filter(|k| k.starts_with("grad.")).count(), 26);
        assert!(rel_l2(&ours["per_token_loss"], &reference["per_token_loss"]) <= grad_tol);
    }
}

#[test]
fn init_model_then_loss_grad_gives_uniform_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    init_tiny_model(&model);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 151936);
    assert_eq!(config["torch_dtype"], "bfloat16");
    // Its config gone, its weights still there: a second model is not written beside them
    // (they would load in place of its own).
    let config_json = std::fs::read(model.join("config.json")).unwrap();
    std::fs::remove_file(model.join("config.json")).unwrap();
    let out = model.to_str().unwrap();
    let err = run_err(&["init-model", "--shape", "tiny", "--seed", "1", "--out", out]);
    assert_mentions(
        &err,
        &["already holds a checkpoint's files (model.safetensors)"],
    );
    std::fs::write(model.join("config.json"), config_json).unwrap();
    let batch = tmp.path().join("batch.json");
    let ids: Vec<u32> = (0..40).map(|i| 1000 + 37 * i).collect();
    let labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| if t < 10 { -100 } else { id as i64 })
        .collect();
    std::fs::write(
        &batch,
        serde_json::json!({"input_ids": [ids], "labels": [labels]}).to_string(),
    )
    .unwrap();
    let out = tmp.path().join("out.safetensors");
    let summary = loss_grad_summary(&model, &batch, &out);
    // Weights of std 0.02 give near-zero logits: the loss of a fresh model is ln(vocab).
    let loss = summary["loss"].as_f64().unwrap();
    assert!((loss - (151936f64).ln()).abs() < 0.05, "loss {loss}");
    assert_eq!(summary["n_target_tokens"], 30);
    assert!(summary["grad_global_l2_norm"].as_f64().unwrap() > 0.0);
}

#[test]
fn broken_checkpoints_fail_with_one_line_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let batch = golden().join("batch.json");
    let out = tmp.path().join("out.safetensors");
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(golden().join("model").join(f), dir.join(f)).unwrap();
        }
        dir
    };
    let loss_grad = |dir: &Path| run_err(&loss_grad_args(dir, &batch, &out));
    let edit_config = |dir: &Path, edit: fn(String) -> String| {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    };

    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    assert_mentions(&loss_grad(&truncated), &["model.safetensors", "truncated"]);

    let wrong_hidden = copy("wrong-hidden");
    edit_config(&wrong_hidden, |c| {
        c.replace("\"hidden_size\": 64", "\"hidden_size\": 128")
    });
    assert_mentions(
        &loss_grad(&wrong_hidden),
        &["model.embed_tokens.weight", "[512, 128]"],
    );

    let wrong_shape = copy("wrong-shape");
    let weights =
        candle_core::safetensors::load(wrong_shape.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut weights: Vec<(String, Tensor)> = weights.into_iter().collect();
    for (name, t) in weights.iter_mut() {
        if name == "model.layers.0.self_attn.q_proj.bias" {
            *t = t.narrow(0, 0, 63).unwrap();
        }
    }
    let map: std::collections::HashMap<String, Tensor> = weights.into_iter().collect();
    candle_core::safetensors::save(&map, wrong_shape.join("model.safetensors")).unwrap();
    assert_mentions(
        &loss_grad(&wrong_shape),
        &["model.layers.0.self_attn.q_proj.bias", "[63]"],
    );

    let not_qwen = copy("not-qwen");
    edit_config(&not_qwen, |c| {
        c.replace("\"qwen2\"", "\"llama\"")
            .replace("Qwen2ForCausalLM", "LlamaForCausalLM")
    });
    assert_mentions(&loss_grad(&not_qwen), &["config.json", "llama"]);

    let err = run_err(&loss_grad_args(&tmp.path().join("nope"), &batch, &out));
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn bad_batches_are_reported_with_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let model = golden().join("model");
    let cases = [
        (
            "ragged.json",
            r#"{"input_ids": [[1, 2, 3]], "labels": [[1, 2]]}"#,
            "row 0",
        ),
        (
            "oov.json",
            r#"{"input_ids": [[1, 600, 3]], "labels": [[1, 2, 3]]}"#,
            "token id 600",
        ),
        // Once an error with a backtrace from inside the loss.
        (
            "oov-label.json",
            r#"{"input_ids": [[1, 2, 3]], "labels": [[1, 2, 600]]}"#,
            "token id 600",
        ),
        (
            "no-targets.json",
            r#"{"input_ids": [[1, 2, 3]], "labels": [[1, -100, -100]]}"#,
            "no target",
        ),
        (
            "typo.json",
            r#"{"input_ids": [[1, 2]], "label": [[1, 2]]}"#,
            "label",
        ),
    ];
    for (name, text, expected) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = run_err(&loss_grad_args(&model, &path, &out));
        assert!(err.contains(name), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    // A far position is no error: it once hung building a RoPE table of 2^32 rows.
    let far = tmp.path().join("far.json");
    let text = r#"{"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]], "position_ids": [[0, 4294967295, 2]]}"#;
    std::fs::write(&far, text).unwrap();
    run_ok(&loss_grad_args(&model, &far, &out));
}

/// The default build has no CUDA; a CUDA build on a machine without a GPU names the device.
fn assert_no_gpu_error(err: &str) {
    assert!(
        err.contains("--features cuda") || err.contains("no usable GPU"),
        "{err}"
    );
}

#[test]
fn doctor_says_what_is_missing_without_a_gpu() {
    assert_no_gpu_error(&run_err(&["doctor"]));
    assert_no_gpu_error(&run_err(&[
        "doctor",
        "--only",
        "attention",
        "--dtype",
        "bf16",
    ]));
    // A group that does not exist is named before any GPU is looked for.
    let err = run_err(&["doctor", "--only", "attention,norms"]);
    assert!(
        err.contains("--only norms: no such group of checks (groups: attention, norm_rope_swiglu"),
        "{err}"
    );
}

#[test]
fn warm_jit_says_what_is_missing_without_a_gpu() {
    assert_no_gpu_error(&run_err(&["debug", "warm-jit"]));
    assert_no_gpu_error(&run_err(&["debug", "warm-jit", "--gpu", "1"]));
}

#[test]
fn loss_grad_on_cuda_needs_the_feature_and_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden().join("model");
    let batch = golden().join("batch.json");
    let out = tmp.path().join("out.safetensors");
    let mut args = loss_grad_args(&model, &batch, &out);
    args.extend(["--device", "cuda", "--dtype", "f32"].map(String::from));
    if cfg!(feature = "cuda")
        && common::limo()
            .args(&args)
            .output()
            .unwrap()
            .status
            .success()
    {
        // A CUDA build on a machine with a GPU: the f32 kernels against the f64 goldens.
        let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let reference =
            candle_core::safetensors::load(golden().join("batch.ref.safetensors"), &Device::Cpu)
                .unwrap();
        assert!(rel_l2(&ours["loss"], &reference["loss"]) <= 1e-4);
        for (name, golden_grad) in reference.iter().filter(|(k, _)| k.starts_with("grad.")) {
            let err = rel_l2(&ours[name], golden_grad);
            assert!(err <= 1e-3, "{name} rel L2 error {err:e}");
        }
        return;
    }
    assert_no_gpu_error(&run_err(&args));
    assert!(!out.exists(), "nothing written");
}

#[test]
fn loss_grad_refuses_dtypes_and_devices_it_does_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden().join("model");
    let batch = golden().join("batch.json");
    let out = tmp.path().join("out.safetensors");
    for (extra, expected) in [
        // bf16 is the GPU's dtype; the CPU reference is f32/f64 (checked before any GPU).
        (&["--dtype", "bf16"][..], "bf16 needs --device cuda"),
        (
            &["--dtype", "bf16", "--device", "cpu"][..],
            "bf16 needs --device cuda",
        ),
        (
            &["--dtype", "f64", "--device", "cuda"][..],
            "--device cuda runs in bf16 or f32",
        ),
        (
            &["--device", "tpu"][..],
            "--device tpu: expected cpu or cuda",
        ),
    ] {
        let mut args = loss_grad_args(&model, &batch, &out);
        args.extend(extra.iter().map(|s| s.to_string()));
        let err = run_err(&args);
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    assert!(!out.exists(), "nothing written");
}

#[test]
fn loss_grad_summary_names_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let summary = loss_grad_summary(&golden().join("model"), &golden().join("batch.json"), &out);
    assert_eq!(summary["device"], "cpu");
    assert_eq!(summary["dtype"], "f32");
}

/// init-model writes aside and moves config.json in last: a failure part-way (a full disk
/// once left a cut-off tokenizer.json beside a config.json) leaves no directory that looks like
/// a model, and a rerun finishes the job.
#[test]
fn init_model_never_leaves_a_model_that_looks_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    // A directory where tokenizer.json goes: the move of that file fails.
    std::fs::create_dir_all(model.join("tokenizer.json")).unwrap();
    let args = [
        "init-model",
        "--shape",
        "tiny",
        "--layers",
        "1",
        "--dtype",
        "f32",
        "--out",
    ];
    let err = run_err(&[&args[..], &[model.to_str().unwrap()]].concat());
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(!model.join("config.json").exists(), "{err}");
    std::fs::remove_dir(model.join("tokenizer.json")).unwrap();
    run_ok(&[&args[..], &[model.to_str().unwrap()]].concat());
    let names: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('.')), "{names:?}");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(names.iter().any(|n| n == name), "{name}: {names:?}");
    }
}
