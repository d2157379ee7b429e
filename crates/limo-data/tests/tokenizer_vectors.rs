//! The tokenizer reproduces the reference ids of all 99 test vectors (HF tokenizers + tiktoken
//! verified, see shared/data/README.md).

mod common;

use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    source: String,
    text: String,
    ids: Vec<u32>,
}

#[test]
fn all_99_test_vectors_give_their_ids() {
    let path = common::tokenizer_dir().join("testvectors/test_vectors.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let vectors: Vec<Vector> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(vectors.len(), 99);
    let tokenizer = common::tokenizer();
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let ids = tokenizer.encode(&v.text).unwrap();
        if ids != v.ids {
            failures.push(format!("row {} ({}): {:?}", i + 1, v.source, v.text));
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn special_ids_are_qwen25() {
    let tokenizer = common::tokenizer();
    assert_eq!(tokenizer.im_start_id(), 151644);
    assert_eq!(tokenizer.im_end_id(), 151645);
    assert_eq!(tokenizer.encode("<|endoftext|>").unwrap(), vec![151643]);
    // A folder and the file itself both work.
    let direct =
        limo_data::ChatTokenizer::from_path(&common::tokenizer_dir().join("tokenizer.json"))
            .unwrap();
    assert_eq!(direct.encode("Hello world").unwrap(), vec![9707, 1879]);
    let err = limo_data::ChatTokenizer::from_path(std::path::Path::new("/nonexistent/tok"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/tok"), "{err}");
}
