//! End-to-end tests of `limo bench step` and `limo bench generate` on the CPU: the reports'
//! fields, a simulated rank's share of the state, one-line errors for bad flags, and generation
//! checked against the full forward.

use std::process::{Command, Output};

use serde_json::Value;

fn limo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the limo binary runs")
}

/// Runs `bench step` on the tiny shape with `extra` flags; returns the JSON report and stdout.
fn bench(extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("step.json");
    let mut args = vec![
        "bench", "step", "--device", "cpu", "--shape", "tiny", "--tokens", "96", "--docs", "3",
        "--warmup", "1", "--steps", "2", "--json",
    ];
    args.push(json.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = limo(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, String::from_utf8(out.stdout).unwrap())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn the_report_has_every_field_and_adds_up() {
    let (r, table) = bench(&["--peak-tflops", "1"]);
    for key in [
        "step time",
        "tokens/s",
        "model TFLOP/s",
        "MFU",
        "peak memory",
        "forward",
    ] {
        assert!(table.contains(key), "{key} missing from\n{table}");
    }
    let step = &r["step_s"];
    let (median, min, max) = (f(&step["median"]), f(&step["min"]), f(&step["max"]));
    assert!(0.0 < min && min <= median && median <= max, "{step}");
    assert!((f(&r["tokens_per_s"]) - 96.0 / median).abs() < 1e-9 * f(&r["tokens_per_s"]));
    // The peer's formula on the tiny shape: 2 layers, hidden 64, 4/2 heads of 16, MLP 128.
    let n_mm = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 151936 * 64;
    assert_eq!(r["n_matmul_params"], n_mm);
    let flops = 6.0 * n_mm as f64 * 96.0 + 6.0 * 2.0 * 64.0 * 3.0 * 32.0 * 32.0;
    assert_eq!(f(&r["flops_per_step"]), flops);
    assert!((f(&r["model_tflops"]) - flops / median / 1e12).abs() < 1e-12);
    assert_eq!(f(&r["mfu"]), f(&r["model_tflops"]));
    let phases = r["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "forward",
            "backward",
            "head + loss",
            "optimizer",
            "communication",
            "host<->device copies",
            "other"
        ]
    );
    let shares: f64 = phases.iter().map(|p| f(&p["share"])).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
    for busy in &phases[..4] {
        assert!(f(&busy["seconds"]) > 0.0, "{busy}");
    }
    assert!(f(&r["peak_mem"]["host_rss_gib"]) > 0.0);
    assert!(f(&r["peak_mem"]["plan_estimate_gib"]) > 0.0);
    // The same batch every step: training on it lowers its loss.
    let losses: Vec<f64> = r["losses"].as_array().unwrap().iter().map(f).collect();
    assert_eq!(losses.len(), 3);
    assert!((losses[0] - (151936f64).ln()).abs() < 0.5, "{losses:?}");
    assert!(losses[2] < losses[0], "{losses:?}");
}

#[test]
fn a_simulated_rank_of_four_holds_a_quarter_of_the_state() {
    let (one, _) = bench(&[]);
    let (four, table) = bench(&["--simulate-world", "4", "--rank", "3"]);
    assert!(table.contains("rank 3 of 4 (simulated)"), "{table}");
    assert_eq!(four["world"], 4);
    assert_eq!(four["rank"], 3);
    let kinds = ["compute", "master", "adam", "grads"];
    for kind in kinds {
        let (a, b) = (f(&one["state_bytes"][kind]), f(&four["state_bytes"][kind]));
        // A quarter, up to the padding of each group to a multiple of 4 elements.
        assert!((b - a / 4.0).abs() <= 3.0 * 16.0, "{kind}: {b} vs {a}/4");
    }
    assert!(f(&four["state_bytes_total"]) < f(&one["state_bytes_total"]) / 3.9);
    // The rank still computes a whole micro-batch: the same FLOPs.
    assert_eq!(four["flops_per_step"], one["flops_per_step"]);
    assert!(f(&four["peak_mem"]["plan_estimate_gib"]) < f(&one["peak_mem"]["plan_estimate_gib"]));
}

#[test]
fn a_global_batch_size_makes_each_step_several_micro_batches() {
    let (one, _) = bench(&["--simulate-world", "4"]);
    // 16 rows per step over 4 ranks of 1 row: 4 micro-batches of the same batch.
    let set = [
        "--set",
        "train.batch_size=1",
        "--set",
        "train.global_batch_size=16",
    ];
    let (four, table) = bench(&[&["--simulate-world", "4"][..], &set].concat());
    assert_eq!(four["grad_accum"], 4);
    assert_eq!(one["grad_accum"], 1);
    assert!(table.contains("x 4 micro-batches per step"), "{table}");
    assert_eq!(f(&four["flops_per_step"]), 4.0 * f(&one["flops_per_step"]));
    let median = f(&four["step_s"]["median"]);
    assert!(
        (f(&four["tokens_per_s"]) - 4.0 * 96.0 / median).abs() < 1e-9 * f(&four["tokens_per_s"])
    );
    // The accumulators are full while the later micro-batches run, but this model's step
    // peaks at the embedding's gradient (a 152k vocabulary, 96 tokens), when they are full
    // either way: the plan is the same (tests/plan_cli.rs: where accumulation costs more).
    let plan = |r: &Value| f(&r["peak_mem"]["plan_estimate_gib"]);
    assert_eq!(plan(&four), plan(&one));
    let err = bench_err(&[
        "--simulate-world",
        "3",
        "--set",
        "train.global_batch_size=16",
    ]);
    assert!(
        err.contains("global_batch_size 16 is not a multiple"),
        "{err}"
    );
}

/// `train.activation_checkpointing` as a number of layers, and "auto" (every layer on the
/// CPU): the report says how many layers were checkpointed; an impossible count is an error.
#[test]
fn the_report_counts_the_checkpointed_layers() {
    for (setting, layers, words) in [
        ("true", 2, "on (attention kept)"),
        ("1", 1, "on for 1 of 2 layers (attention kept)"),
        ("auto", 2, "on (attention kept)"),
        ("false", 0, "activation checkpointing off"),
    ] {
        let set = format!("train.activation_checkpointing={setting}");
        let (r, table) = bench(&["--set", &set]);
        assert_eq!(r["checkpointed_layers"], layers, "{setting}");
        assert_eq!(r["activation_checkpointing"], layers > 0, "{setting}");
        assert!(table.contains(words), "{setting}: {table}");
    }
    let err = bench_err(&["--set", "train.activation_checkpointing=3"]);
    assert!(err.contains("= 3: the model has 2 layers"), "{err}");
}

/// Runs `bench step --shape tiny --tokens 16 EXTRA...`, which must fail with exit code 1;
/// returns stderr.
fn bench_err(extra: &[&str]) -> String {
    let out = limo(
        &[
            &["bench", "step", "--shape", "tiny", "--tokens", "16"][..],
            extra,
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
    err
}

#[test]
fn bad_flags_are_one_line_errors() {
    let cases: [(&[&str], &str); 8] = [
        (&["--rank", "1"], "--rank needs --simulate-world"),
        // Once a capacity-overflow panic on the communication thread.
        (
            &["--simulate-world", "18446744073709551615"],
            "more than 1048576 ranks",
        ),
        (&["--peak-tflops", "nan"], "--peak-tflops NaN"),
        (
            &["--simulate-world", "2", "--rank", "2"],
            "not a rank of a 2-way job",
        ),
        (&["--dtype", "bf16"], "bf16 runs on --device cuda"),
        (
            &["--mem-cap", "80GiB"],
            "--mem-cap applies to --device cuda",
        ),
        (&["--docs", "0"], "--docs must be between 1 and --tokens"),
        (
            &["--profile-range"],
            "--profile-range applies to --device cuda",
        ),
    ];
    for (extra, expect) in cases {
        let err = bench_err(&[&["--steps", "1"][..], extra].concat());
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    }
    // Sizes past the kernels' 32-bit token counts: once capacity-overflow panics and
    // allocation aborts.
    let huge = "4294967296";
    for (args, expect) in [
        (
            &["bench", "step", "--shape", "tiny", "--tokens", huge][..],
            "--tokens 4294967296 is more than",
        ),
        (
            &["bench", "generate", "--shape", "tiny", "--batch", huge][..],
            "--batch 4294967296 x --prompt-tokens 128",
        ),
        (
            &["bench", "generate", "--shape", "tiny", "--new-tokens", huge][..],
            "--new-tokens 4294967296 positions",
        ),
    ] {
        let out = limo(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn cuda_without_a_gpu_build_says_so() {
    let err = bench_err(&["--device", "cuda"]);
    assert!(err.contains("GPU"), "{err}");
}

#[test]
fn bench_generate_reports_its_tokens_and_verifies_them_against_the_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("generate.json");
    let out = limo(&[
        "bench",
        "generate",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "3",
        "--prompt-tokens",
        "7",
        "--new-tokens",
        "260",
        "--verify",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("batch 3, 7 prompt + 260 new tokens"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verify against the full forward"),
        "{stdout}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (r["batch"].clone(), r["new_tokens"].clone()),
        (3.into(), 260.into())
    );
    let total = f(&r["total_s"]);
    assert!((f(&r["tokens_per_s"]) - 3.0 * 260.0 / total).abs() < 1e-6 * f(&r["tokens_per_s"]));
    assert!((f(&r["prefill_s"]) + f(&r["decode_s"]) - total).abs() < 1e-9);
    // The first and last sequence, after the prefill, one step, one step past a 256-key split
    // of the decode kernel, and the last step; f32 on the CPU agrees to summation order.
    let v = &r["verify"];
    assert_eq!(v["sequences"], serde_json::json!([0, 2]));
    assert_eq!(v["steps"], serde_json::json!([0, 1, 257, 259]));
    assert_eq!(v["passed"], true);
    assert!(
        f(&v["max_rel_l2"]) < 1e-5 && f(&v["max_gap_sd"]) == 0.0,
        "{v}"
    );
}
