//! ZeRO-3 at world sizes 1 to 4 on the golden tiny model, ranks as threads of this process:
//! the same rows per step give the same losses and final weights whatever the split, and a
//! checkpoint written at one world size resumes at another on the same trajectory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Tensor};
use limo_dist::comm::thread_group;
use limo_train::{checkpoint, train, RunOptions, TrainConfig};

/// Rows per optimizer step in every run: divisible by 1, 2, 3 and 4.
const ROWS_PER_STEP: usize = 12;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny")
}

fn config(out: &Path, dtype: &str, world: usize, save_steps: usize) -> TrainConfig {
    let text = format!(
        r#"
[model]
path = {model:?}
dtype = "{dtype}"
[data]
path = {data:?}
format = "tokenized"
[train]
lr = 1e-3
schedule = "cosine"
warmup_steps = 2
max_steps = 10
batch_size = {batch}
weight_decay = 0.01
max_grad_norm = 1.0
shuffle = false
[output]
dir = {out:?}
save_steps = {save_steps}
keep_last = 10
export_dtype = "none"
"#,
        model = golden().join("model").display().to_string(),
        data = golden().join("train/data.jsonl").display().to_string(),
        batch = ROWS_PER_STEP / world,
        out = out.display().to_string(),
    );
    TrainConfig::parse(&text, "test", &[]).unwrap()
}

/// Trains with `world` ranks in threads; every rank must succeed.
fn run(config: TrainConfig, world: usize, resume: Option<PathBuf>) {
    let handles: Vec<_> = thread_group(world, Duration::from_secs(120))
        .into_iter()
        .map(|comm| {
            let (config, resume) = (config.clone(), resume.clone());
            std::thread::spawn(move || {
                let options = RunOptions {
                    resume: resume.map(|p| p.display().to_string()),
                    progress: false,
                    comm: Some(Box::new(comm)),
                    ..Default::default()
                };
                train(&config, options).map(|s| (s.rank, s.world_size))
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let (r, w) = h.join().unwrap().unwrap();
        assert_eq!((r, w), (rank, world));
    }
}

fn metrics(out: &Path) -> Vec<(f64, f64)> {
    limo_train::metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| (m.loss, m.grad_norm))
        .collect()
}

fn final_master(out: &Path) -> BTreeMap<String, Tensor> {
    let latest = checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
    checkpoint::load_params(&latest, "master").unwrap()
}

/// Squared L2 norm of `a - b` and of `b`, in f64.
fn squares(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let sum_sq = |t: &Tensor| -> f64 {
        let t = t.to_dtype(DType::F64).unwrap();
        t.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    (
        sum_sq(&(a.to_dtype(b.dtype()).unwrap() - b).unwrap()),
        sum_sq(b),
    )
}

/// Same step count, per-step loss and grad norm within `tol` (relative) of the reference.
fn assert_same_steps(what: &str, ours: &[(f64, f64)], reference: &[(f64, f64)], tol: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: steps");
    for (step, (o, r)) in ours.iter().zip(reference).enumerate() {
        for (name, a, b) in [("loss", o.0, r.0), ("grad_norm", o.1, r.1)] {
            assert!(
                (a - b).abs() <= tol * b.abs(),
                "{what} step {}: {name} {a} vs {b}",
                step + 1
            );
        }
    }
}

/// Worst per-parameter relative error, and the relative error of all weights together.
fn weight_errors(
    ours: &BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
) -> (f64, f64) {
    assert_eq!(ours.len(), reference.len());
    let (mut worst, mut diff2, mut norm2) = (0.0f64, 0.0, 0.0);
    for (name, r) in reference {
        let (d, n) = squares(&ours[name], r);
        worst = worst.max((d / n).sqrt());
        diff2 += d;
        norm2 += n;
    }
    (worst, (diff2 / norm2).sqrt())
}

#[test]
fn every_world_size_trains_the_same_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    // f64 shows the split changes nothing but the order of additions (final weights within
    // 5e-15). In f32 that order moves losses and norms by < 1e-6 but the final weights by
    // ~2e-6 overall and up to ~5e-5 for single parameters: Adam divides each gradient by its
    // own size, so the rounding noise of near-zero gradients (the k_proj biases: softmax
    // ignores a shift of the scores) becomes a full-size update difference. One rank with
    // gradient accumulation shows the same residual, and at world 2 ZeRO-3 is bit-identical
    // to it: the residual is f32 summation order, not sharding.
    for (dtype, step_tol, model_tol, param_tol) in
        [("f64", 1e-12, 1e-12, 1e-10), ("f32", 1e-6, 1e-5, 1e-4)]
    {
        let reference_out = tmp.path().join(format!("{dtype}-w1"));
        run(config(&reference_out, dtype, 1, 0), 1, None);
        let reference = metrics(&reference_out);
        let reference_final = final_master(&reference_out);
        // The control: one rank, the same rows split into 2 micro-batches of 6 (gradient
        // accumulation). It differs from the reference only in the order of additions, as
        // the ZeRO-3 splits do.
        let control_out = tmp.path().join(format!("{dtype}-w1-accum2"));
        let mut control = config(&control_out, dtype, 2, 0);
        control.train.grad_accum = 2;
        run(control, 1, None);
        let (control_worst, control_model) =
            weight_errors(&final_master(&control_out), &reference_final);
        eprintln!(
            "{dtype} control (1 rank, 2 micro-batches): final weights rel L2 {control_model:e} overall, worst parameter {control_worst:e}"
        );
        for world in [2, 3, 4] {
            let out = tmp.path().join(format!("{dtype}-w{world}"));
            run(config(&out, dtype, world, 0), world, None);
            let what = format!("{dtype} world {world}");
            assert_same_steps(&what, &metrics(&out), &reference, step_tol);
            let checkpoint = checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
            let manifest = checkpoint::read_manifest(&checkpoint).unwrap();
            assert_eq!(manifest.world_size, world);
            assert_eq!(
                manifest
                    .files
                    .keys()
                    .filter(|f| f.starts_with("rank-"))
                    .count(),
                world
            );
            let (worst, model) = weight_errors(&final_master(&out), &reference_final);
            eprintln!("{what}: final weights rel L2 {model:e} overall, worst parameter {worst:e}");
            assert!(model <= model_tol, "{what}: final weights rel L2 {model:e}");
            if world == 2 && dtype == "f32" {
                // Two partial gradient sums added once, exactly rounded, either way:
                // bit-identical weights and losses. The grad norm's squares are summed per
                // slice, so the norm differs in its last bits (in f64 that shows in the
                // clipped update, so this holds in f32 only).
                let (w, m) = weight_errors(&final_master(&out), &final_master(&control_out));
                assert_eq!((w, m), (0.0, 0.0), "{what} vs the 2-micro-batch control");
                let losses = |out: &Path| metrics(out).iter().map(|m| m.0).collect::<Vec<_>>();
                assert_eq!(losses(&out), losses(&control_out), "{what} vs the control");
            }
            assert!(
                worst <= param_tol,
                "{what}: worst parameter rel L2 {worst:e}"
            );
        }
    }
}

/// Copies a run directory (to resume a copy while keeping the original for comparison).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn checkpoints_resume_at_another_world_size_on_the_same_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let dtype = "f64";
    let reference_out = tmp.path().join("w1");
    run(config(&reference_out, dtype, 1, 0), 1, None);
    let reference = metrics(&reference_out);

    // World 4 saves at steps 4 and 8; world 2 resumes its step 4 and saves at 8; world 3
    // resumes that step 8 and finishes.
    let w4 = tmp.path().join("w4");
    run(config(&w4, dtype, 4, 4), 4, None);
    let w2 = tmp.path().join("w4-then-w2");
    copy_dir(&w4, &w2);
    let step4 = w2.join("checkpoints").join(checkpoint::step_dir_name(4));
    run(config(&w2, dtype, 2, 4), 2, Some(step4));
    let w3 = tmp.path().join("w2-then-w3");
    copy_dir(&w2, &w3);
    let step8 = w3.join("checkpoints").join(checkpoint::step_dir_name(8));
    assert_eq!(checkpoint::read_manifest(&step8).unwrap().world_size, 2);
    run(config(&w3, dtype, 3, 4), 3, Some(step8));

    assert_same_steps("4 -> 2", &metrics(&w2), &reference, 1e-12);
    assert_same_steps("2 -> 3", &metrics(&w3), &reference, 1e-12);
    let (worst, _) = weight_errors(&final_master(&w3), &final_master(&reference_out));
    assert!(
        worst <= 1e-10,
        "4 -> 2 -> 3: final weights rel L2 {worst:e}"
    );
    let moments = |out: &Path| {
        let latest = checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
        checkpoint::load_params(&latest, "exp_avg_sq").unwrap()
    };
    let (worst, _) = weight_errors(&moments(&w3), &moments(&reference_out));
    assert!(
        worst <= 1e-10,
        "4 -> 2 -> 3: final second moments rel L2 {worst:e}"
    );

    // A different number of rows per step is a different trajectory: refused, by every rank.
    let mut other = config(&w3, dtype, 2, 4);
    other.train.batch_size = 2;
    let handles: Vec<_> = thread_group(2, Duration::from_secs(60))
        .into_iter()
        .map(|comm| {
            let config = other.clone();
            std::thread::spawn(move || {
                let options = RunOptions {
                    resume: Some("latest".into()),
                    progress: false,
                    comm: Some(Box::new(comm)),
                    ..Default::default()
                };
                train(&config, options).err().map(|e| format!("{e:#}"))
            })
        })
        .collect();
    for h in handles {
        let err = h.join().unwrap().expect("refused");
        assert!(
            err.contains("train.rows_per_step: here 4, the checkpoint's run 12")
                || err.contains("rank(s)"),
            "{err}"
        );
    }
}

#[test]
fn a_bf16_reduce_scatter_rounds_the_gradients_but_keeps_the_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let (fp32_out, bf16_out) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    run(config(&fp32_out, "f32", 2, 0), 2, None);
    let mut bf16 = config(&bf16_out, "f32", 2, 0);
    bf16.train.reduce_dtype = limo_train::config::ReduceDtype::Bf16;
    run(bf16, 2, None);
    // bf16 keeps 8 bits of mantissa: each partial sum moves by up to 2^-9 relative.
    assert_same_steps(
        "bf16 reduce",
        &metrics(&bf16_out),
        &metrics(&fp32_out),
        1e-2,
    );
    let (worst, model) = weight_errors(&final_master(&bf16_out), &final_master(&fp32_out));
    eprintln!("bf16 reduce vs fp32: final weights rel L2 {model:e}, worst parameter {worst:e}");
    assert!(model > 0.0, "the bf16 wire must round something");
    assert!(model < 1e-2, "bf16 reduce: final weights rel L2 {model:e}");
}

#[test]
fn optimizer_offload_changes_no_bit_and_resumes_either_way() {
    use limo_train::config::OptimizerOffload;
    let tmp = tempfile::tempdir().unwrap();
    let offloaded = |out: &Path, world: usize, save_steps: usize| {
        let mut c = config(out, "f32", world, save_steps);
        c.train.optimizer_offload = OptimizerOffload::Cpu;
        c
    };
    let losses = |out: &Path| metrics(out).iter().map(|m| m.0).collect::<Vec<_>>();
    for world in [1, 2, 3] {
        let (plain, off) = (
            tmp.path().join(format!("plain-w{world}")),
            tmp.path().join(format!("offload-w{world}")),
        );
        run(config(&plain, "f32", world, 0), world, None);
        run(offloaded(&off, world, 0), world, None);
        assert_eq!(losses(&off), losses(&plain), "world {world}");
        let (w, m) = weight_errors(&final_master(&off), &final_master(&plain));
        assert_eq!((w, m), (0.0, 0.0), "world {world}: final weights");
    }
    // Saved with offload at step 4, resumed without it (and the reverse): the same bits as the
    // uninterrupted run.
    let reference = tmp.path().join("plain-w2");
    for (first_offloaded, name) in [(true, "offload-then-plain"), (false, "plain-then-offload")] {
        let (saved, out) = (
            tmp.path().join(format!("{name}-saved")),
            tmp.path().join(name),
        );
        let first = if first_offloaded {
            offloaded(&saved, 2, 4)
        } else {
            config(&saved, "f32", 2, 4)
        };
        run(first, 2, None);
        copy_dir(&saved, &out);
        let second = if first_offloaded {
            config(&out, "f32", 2, 4)
        } else {
            offloaded(&out, 2, 4)
        };
        run(
            second,
            2,
            Some(out.join("checkpoints").join(checkpoint::step_dir_name(4))),
        );
        assert_eq!(losses(&out), losses(&reference), "{name}");
        let (w, m) = weight_errors(&final_master(&out), &final_master(&reference));
        assert_eq!((w, m), (0.0, 0.0), "{name}: final weights");
    }
}

#[test]
fn what_the_forward_keeps_changes_no_number() {
    // Activation checkpointing that keeps the attention's output (the default), that
    // recomputes the attention too, of the first layer only, "auto" (every layer on the CPU)
    // and none at all: the same operations on the same values, so the same bits, in f32, at
    // world sizes 1 and 2.
    use limo_train::config::Checkpointing;
    let tmp = tempfile::tempdir().unwrap();
    for world in [1, 2] {
        let mut runs = Vec::new();
        for (name, checkpointing, recompute_attention) in [
            ("keep attention", Checkpointing::All, false),
            ("recompute attention", Checkpointing::All, true),
            ("the first layer", Checkpointing::Layers(1), false),
            ("auto", Checkpointing::Auto, false),
            ("no checkpointing", Checkpointing::None, false),
        ] {
            let out = tmp.path().join(format!("w{world}-{name}"));
            let mut cfg = config(&out, "f32", world, 0);
            cfg.train.activation_checkpointing = checkpointing;
            cfg.train.recompute_attention = recompute_attention;
            run(cfg, world, None);
            runs.push((name, metrics(&out), final_master(&out)));
        }
        let (_, steps, weights) = &runs[0];
        assert_eq!(steps.len(), 10);
        for (name, s, w) in &runs[1..] {
            assert_eq!(s, steps, "world {world}: {name}: losses and grad norms");
            assert_eq!(
                weight_errors(w, weights),
                (0.0, 0.0),
                "world {world}: {name}: final weights"
            );
        }
    }
}

#[test]
fn no_decay_leaves_its_parameters_undecayed_at_every_split() {
    use limo_train::config::{NoDecay, OptimizerOffload};
    let tmp = tempfile::tempdir().unwrap();
    let decayed = |out: &Path, dtype: &str, world: usize, no_decay: NoDecay| {
        let mut c = config(out, dtype, world, 0);
        c.train.weight_decay = 0.5;
        c.train.no_decay = no_decay;
        c
    };
    // One update from the same weights (no warmup, so its lr is not 0): the gradients are the
    // same, so with "biases_and_norms" exactly the biases and norm weights end elsewhere than
    // when everything decays, each rank cutting its slice at world 3 as at world 1.
    for world in [1, 3] {
        let mut finals = Vec::new();
        for no_decay in [NoDecay::None, NoDecay::BiasesAndNorms] {
            let out = tmp.path().join(format!("one-step-w{world}-{no_decay}"));
            let mut c = decayed(&out, "f64", world, no_decay);
            (c.train.max_steps, c.train.warmup_steps) = (Some(1), 0);
            run(c, world, None);
            finals.push(final_master(&out));
        }
        for (name, all) in &finals[0] {
            let (d, _) = squares(&finals[1][name], all);
            let undecayed = !NoDecay::BiasesAndNorms.decays(name);
            assert_eq!(d > 0.0, undecayed, "world {world}: {name}");
        }
    }
    // The whole run: the same trajectory at every split (f64), and with optimizer offload the
    // same bits (f32).
    let reference = tmp.path().join("f64-w1");
    run(
        decayed(&reference, "f64", 1, NoDecay::BiasesAndNorms),
        1,
        None,
    );
    for world in [2, 3] {
        let out = tmp.path().join(format!("f64-w{world}"));
        run(
            decayed(&out, "f64", world, NoDecay::BiasesAndNorms),
            world,
            None,
        );
        assert_same_steps("no_decay", &metrics(&out), &metrics(&reference), 1e-12);
        let (worst, _) = weight_errors(&final_master(&out), &final_master(&reference));
        assert!(
            worst <= 1e-10,
            "world {world}: worst parameter rel L2 {worst:e}"
        );
    }
    let (plain, off) = (tmp.path().join("f32-w3"), tmp.path().join("f32-w3-off"));
    run(decayed(&plain, "f32", 3, NoDecay::BiasesAndNorms), 3, None);
    let mut c = decayed(&off, "f32", 3, NoDecay::BiasesAndNorms);
    c.train.optimizer_offload = OptimizerOffload::Cpu;
    run(c, 3, None);
    assert_eq!(metrics(&off), metrics(&plain));
    let (w, m) = weight_errors(&final_master(&off), &final_master(&plain));
    assert_eq!((w, m), (0.0, 0.0), "offload: final weights");
}

#[test]
fn validation_changes_no_training_number_and_agrees_at_every_split() {
    // The golden rows: 2 of 6 held out (datasets' split), the 4 others trained on; the
    // validation loss after the last step, and with eval_steps every 3 steps too.
    let tmp = tempfile::tempdir().unwrap();
    let held_out = |out: &Path, world: usize, eval_steps: usize| {
        let mut c = config(out, "f64", world, 0);
        c.data.val_size = 2.0;
        c.train.batch_size = 4 / world;
        c.train.global_batch_size = Some(4);
        c.train.eval_steps = eval_steps;
        c
    };
    let quiet = tmp.path().join("w1-no-eval");
    run(held_out(&quiet, 1, 0), 1, None);
    let eval_losses = |out: &Path| -> Vec<(usize, f64)> {
        limo_train::metrics::read(&out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter_map(|m| m.eval_loss.map(|l| (m.step, l)))
            .collect()
    };
    let reference = tmp.path().join("w1");
    run(held_out(&reference, 1, 3), 1, None);
    assert_eq!(
        metrics(&reference),
        metrics(&quiet),
        "validation changed a step"
    );
    let (w, m) = weight_errors(&final_master(&reference), &final_master(&quiet));
    assert_eq!((w, m), (0.0, 0.0));
    let want = eval_losses(&reference);
    let steps: Vec<usize> = want.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [3, 6, 9, 10]);
    // Without eval_steps: the last step's alone, the same number.
    assert_eq!(eval_losses(&quiet), want[3..]);
    // Falling from the first to the last (the rows are the golden run's kind of text).
    assert!(want[3].1 < want[0].1, "{want:?}");
    // At world 4, ranks 2 and 3 have no row of their own and only take part.
    for world in [2, 4] {
        let out = tmp.path().join(format!("w{world}"));
        run(held_out(&out, world, 3), world, None);
        let ours = eval_losses(&out);
        let steps_of = |v: &[(usize, f64)]| v.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        assert_eq!(steps_of(&ours), steps_of(&want), "world {world}");
        for ((step, ours), (_, theirs)) in ours.iter().zip(&want) {
            assert!(
                (ours - theirs).abs() <= 1e-12 * theirs,
                "world {world} step {step}: eval_loss {ours} vs {theirs}"
            );
        }
    }
}

/// A document: input ids and labels (positions from 0).
type Doc = (Vec<u32>, Vec<i64>);

/// Twelve tokenized rows of 7 to 31 tokens whose targets (3 to 26) differ row by row, so that
/// weighing every example the same differs from weighing every token the same. Row 4 packs a
/// second document after its first (positions restart at 0); row 7 is a prompt alone, with no
/// target. Returns the file and the documents that have targets (the step's 12 examples).
fn varied_rows(dir: &Path) -> (PathBuf, Vec<Doc>) {
    let doc = |r: usize, prompt: usize, answer: usize| -> Doc {
        let ids: Vec<u32> = (0..prompt + answer)
            .map(|t| ((r * 131 + t * 17) % 500 + 3) as u32)
            .collect();
        let labels = (0..ids.len())
            .map(|t| if t < prompt { -100 } else { ids[t] as i64 })
            .collect();
        (ids, labels)
    };
    let mut lines = Vec::new();
    let mut examples = Vec::new();
    for r in 0..ROWS_PER_STEP {
        let first = doc(r, 4 + r % 5, 3 + (r * 7) % 27);
        let row = match r {
            4 => {
                let second = doc(100, 6, 19);
                let positions: Vec<usize> = (0..first.0.len()).chain(0..second.0.len()).collect();
                let ids = [first.0.clone(), second.0.clone()].concat();
                let labels = [first.1.clone(), second.1.clone()].concat();
                examples.extend([first, second]);
                serde_json::json!({"input_ids": ids, "labels": labels, "position_ids": positions})
            }
            7 => {
                let labels = vec![-100; first.0.len()];
                serde_json::json!({"input_ids": first.0, "labels": labels})
            }
            _ => {
                let row = serde_json::json!({"input_ids": first.0, "labels": first.1});
                examples.push(first);
                row
            }
        };
        lines.push(row.to_string());
    }
    let path = dir.join("varied.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, examples)
}

#[test]
fn loss_average_sequences_weighs_every_example_the_same_at_every_split() {
    use limo_train::config::LossAverage;
    use limo_train::parity::batch_loss_and_grads;
    let tmp = tempfile::tempdir().unwrap();
    let (data, examples) = varied_rows(tmp.path());
    assert_eq!(examples.len(), 12);
    let with = |out: &Path, world: usize, average: LossAverage, steps: usize| {
        let mut c = config(out, "f64", world, 0);
        c.data.path = data.display().to_string();
        c.train.loss_average = average;
        c.train.max_steps = Some(steps);
        c
    };

    // Step 1 against each row's own mean loss and gradient (the parity path, one row each).
    let model = golden().join("model");
    let per_row: Vec<_> = examples
        .iter()
        .map(|(ids, labels)| {
            let batch = limo_model::Batch::from_rows(
                std::slice::from_ref(ids),
                std::slice::from_ref(labels),
                None,
            )
            .unwrap();
            batch_loss_and_grads(&model, DType::F64, &candle_core::Device::Cpu, &batch, 64).unwrap()
        })
        .collect();
    let all_targets: usize = per_row.iter().map(|g| g.n_targets).sum();
    for average in [LossAverage::Tokens, LossAverage::Sequences] {
        // Each row's weight in the step's loss.
        let weight = |g: &limo_train::parity::BatchGrads| match average {
            LossAverage::Sequences => 1.0 / examples.len() as f64,
            LossAverage::Tokens => g.n_targets as f64 / all_targets as f64,
        };
        let loss: f64 = per_row.iter().map(|g| weight(g) * g.loss()).sum();
        let mut norm_sq = 0.0;
        for (i, (name, _)) in per_row[0].grads.iter().enumerate() {
            let mut sum = per_row[0].grads[i].1.zeros_like().unwrap();
            for g in &per_row {
                assert_eq!(&g.grads[i].0, name);
                sum = (sum + (&g.grads[i].1 * weight(g)).unwrap()).unwrap();
            }
            norm_sq += sum
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
        }
        let out = tmp.path().join(format!("one-step-{average}"));
        run(with(&out, 1, average, 1), 1, None);
        // Every row was read, the prompt-only one too; the loss below also needs row 4's two
        // documents kept apart beside the unpacked rows of its micro-batch.
        let m = &limo_train::metrics::read(&out.join("metrics.jsonl")).unwrap()[0];
        assert_eq!(m.n_target_tokens, all_targets);
        let (got_loss, got_norm) = metrics(&out)[0];
        let what = format!("{average}: step 1");
        assert!(
            (got_loss - loss).abs() <= 1e-12 * loss,
            "{what}: loss {got_loss} vs {loss}"
        );
        let norm = norm_sq.sqrt();
        assert!(
            (got_norm - norm).abs() <= 1e-12 * norm,
            "{what}: grad norm {got_norm} vs {norm}"
        );
    }
    let tokens = metrics(&tmp.path().join("one-step-tokens"))[0];
    let sequences = metrics(&tmp.path().join("one-step-sequences"))[0];
    assert!(
        (tokens.0 - sequences.0).abs() > 1e-6,
        "the data must tell them apart"
    );

    // Any split of the same rows trains the same trajectory: worlds 2 and 3, and one rank
    // with 2 micro-batches.
    let reference_out = tmp.path().join("w1");
    run(with(&reference_out, 1, LossAverage::Sequences, 6), 1, None);
    let reference = metrics(&reference_out);
    let accum_out = tmp.path().join("w1-accum2");
    let mut accum = with(&accum_out, 2, LossAverage::Sequences, 6);
    accum.train.grad_accum = 2;
    run(accum, 1, None);
    assert_same_steps(
        "sequences, 2 micro-batches",
        &metrics(&accum_out),
        &reference,
        1e-12,
    );
    for world in [2, 3] {
        let out = tmp.path().join(format!("w{world}"));
        run(with(&out, world, LossAverage::Sequences, 6), world, None);
        let what = format!("sequences, world {world}");
        assert_same_steps(&what, &metrics(&out), &reference, 1e-12);
        let (_, model) = weight_errors(&final_master(&out), &final_master(&reference_out));
        assert!(model <= 1e-12, "{what}: final weights rel L2 {model:e}");
    }

    // train.global_batch_size makes the split by itself: 2 rows per rank and micro-batch, 3
    // micro-batches at world 2. A split it does not divide into is refused before any data.
    let global = |out: &Path, world: usize, batch: usize| {
        let mut c = with(out, world, LossAverage::Sequences, 6);
        (c.train.batch_size, c.train.global_batch_size) = (batch, Some(ROWS_PER_STEP));
        c
    };
    let out = tmp.path().join("w2-global");
    run(global(&out, 2, 2), 2, None);
    assert_same_steps("global batch, world 2", &metrics(&out), &reference, 1e-12);
    let refused = global(&tmp.path().join("w1-global-5"), 1, 5);
    let err = format!(
        "{:#}",
        train(&refused, RunOptions::default()).err().unwrap()
    );
    assert!(
        err.contains("global_batch_size 12 is not a multiple of batch_size 5"),
        "{err}"
    );
    assert!(
        !tmp.path().join("w1-global-5").exists(),
        "refused before writing"
    );
}
