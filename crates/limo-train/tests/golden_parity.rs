//! Parity with Hugging Face transformers: loss and every gradient of the golden tiny Qwen2 on a
//! plain and a packed batch (fixtures computed by transformers in float64, see
//! tests/fixtures/golden/README.md), through the training step's forward and backward (a
//! world-size-1 ZeRO-3 model, `limo_train::parity`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use limo_model::Batch;
use limo_train::parity::batch_loss_and_grads;
use serde::Deserialize;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny")
}

#[derive(Deserialize)]
struct BatchFile {
    input_ids: Vec<Vec<u32>>,
    labels: Vec<Vec<i64>>,
    position_ids: Option<Vec<Vec<u32>>>,
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    limo_ops::rel_l2(a, b).unwrap()
}

/// Worst relative errors (loss, gradients) against the golden for one batch and dtype.
fn errors(batch_name: &str, dtype: DType, loss_chunk: usize) -> (f64, f64) {
    let dir = golden_dir();
    let text = std::fs::read_to_string(dir.join(format!("{batch_name}.json"))).unwrap();
    let file: BatchFile = serde_json::from_str(&text).unwrap();
    let batch =
        Batch::from_rows(&file.input_ids, &file.labels, file.position_ids.as_deref()).unwrap();
    let reference = candle_core::safetensors::load(
        dir.join(format!("{batch_name}.ref.safetensors")),
        &Device::Cpu,
    )
    .unwrap();

    let out =
        batch_loss_and_grads(&dir.join("model"), dtype, &Device::Cpu, &batch, loss_chunk).unwrap();

    let ref_loss = reference["loss"].to_scalar::<f64>().unwrap();
    let loss_err = (out.loss() - ref_loss).abs() / ref_loss.abs();
    let token_err = rel_l2(
        &out.per_token_loss,
        &reference["per_token_loss"].flatten_all().unwrap(),
    );
    assert!(
        token_err < 1e-5,
        "per-token loss rel L2 error {token_err:e}"
    );
    let named = &out.grads;
    let n_ref_grads = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(named.len(), n_ref_grads, "one gradient per golden gradient");
    let mut worst = 0.0f64;
    for (name, grad) in named {
        let golden = &reference[&format!("grad.{name}")];
        assert_eq!(grad.dims(), golden.dims(), "{name}");
        let err = rel_l2(grad, golden);
        assert!(err.is_finite(), "{name}");
        worst = worst.max(err);
    }
    (loss_err, worst)
}

/// Asserts the loss and the worst gradient of `batch_name` are within the tolerances.
fn assert_parity(batch_name: &str, dtype: DType, loss_chunk: usize, loss_tol: f64, grad_tol: f64) {
    let (loss, grads) = errors(batch_name, dtype, loss_chunk);
    assert!(
        loss <= loss_tol,
        "{batch_name} {dtype:?}: loss rel error {loss:e}"
    );
    assert!(
        grads <= grad_tol,
        "{batch_name} {dtype:?}: worst gradient rel L2 error {grads:e}"
    );
}

/// `parity_test!(name: args..)`: a test `name` that calls [`assert_parity`]`(args..)`.
macro_rules! parity_test {
    ($name:ident: $($arg:expr),+) => {
        #[test]
        fn $name() {
            assert_parity($($arg),+);
        }
    };
}

parity_test!(plain_batch_f32: "batch", DType::F32, 1024, 1e-6, 1e-5);
parity_test!(packed_batch_f32: "packed", DType::F32, 1024, 1e-6, 1e-5);
parity_test!(plain_batch_f64: "batch", DType::F64, 1024, 1e-12, 1e-12);
// Chunks of 5 tokens split documents and rows: the chunked loss must not care.
parity_test!(packed_batch_f64_with_small_loss_chunks: "packed", DType::F64, 5, 1e-12, 1e-12);

#[test]
fn packed_positions_make_documents() {
    let text = std::fs::read_to_string(golden_dir().join("packed.json")).unwrap();
    let file: BatchFile = serde_json::from_str(&text).unwrap();
    let batch =
        Batch::from_rows(&file.input_ids, &file.labels, file.position_ids.as_deref()).unwrap();
    assert_eq!(batch.cu_seqlens, vec![0, 10, 17, 32]);
    // Ignoring the positions would let documents attend to each other: the loss must change.
    let plain = Batch::from_rows(&file.input_ids, &file.labels, None).unwrap();
    assert_eq!(plain.cu_seqlens, vec![0, 32]);
    let model = golden_dir().join("model");
    let loss = |b: &Batch| {
        batch_loss_and_grads(&model, DType::F64, &Device::Cpu, b, 64)
            .unwrap()
            .loss()
    };
    let (packed, unpacked) = (loss(&batch), loss(&plain));
    assert!((packed - unpacked).abs() > 1e-3, "{packed} vs {unpacked}");
}
