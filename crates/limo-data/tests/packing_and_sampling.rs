//! Packing real examples: content is preserved, positions restart per document, no token can
//! attend across documents, no document's first token is a target; and sampling over rows resumes.

mod common;

use limo_data::{
    apply_cutoff, document_ids, load_dataset, may_attend, pack, DataConfig, Example, Format,
    Overlong, Sampler, IGNORE_INDEX,
};

fn math_examples(limit: usize) -> Vec<Example> {
    let mut config = DataConfig::new(
        common::data("math.jsonl").display().to_string(),
        Format::Limo,
    );
    config.columns.set("question", "problem").unwrap();
    config.limit = Some(limit);
    load_dataset(&config, common::tokenizer()).unwrap().examples
}

#[test]
fn packed_rows_hold_every_example_once_and_isolate_documents() {
    let cutoff = 1024;
    let (examples, _) = apply_cutoff(math_examples(120), cutoff, Overlong::Truncate);
    let rows = pack(&examples, cutoff).unwrap();
    assert!(
        rows.len() < examples.len(),
        "packing should combine examples"
    );

    let mut seen: Vec<usize> = rows.iter().flat_map(|r| r.examples.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..examples.len()).collect::<Vec<_>>());

    for row in &rows {
        assert!(row.len() <= cutoff);
        assert_eq!(
            (row.labels.len(), row.position_ids.len()),
            (row.len(), row.len())
        );
        // Which example every position came from, from the row's own bookkeeping.
        let source: Vec<usize> = row
            .examples
            .iter()
            .flat_map(|&e| std::iter::repeat_n(e, examples[e].len()))
            .collect();
        let docs = document_ids(&row.position_ids);
        let mut offset = 0;
        for &e in &row.examples {
            let n = examples[e].len();
            assert_eq!(
                &row.input_ids[offset..offset + n],
                &examples[e].input_ids[..]
            );
            assert_eq!(
                row.position_ids[offset..offset + n],
                (0..n as u32).collect::<Vec<_>>()
            );
            // The first token of each document is never a target; the rest keep their labels.
            assert_eq!(row.labels[offset], IGNORE_INDEX);
            assert_eq!(
                &row.labels[offset + 1..offset + n],
                &examples[e].labels[1..]
            );
            offset += n;
        }
        // The mask built from position_ids allows exactly causal attention within one example.
        for q in 0..row.len() {
            for k in 0..row.len() {
                assert_eq!(
                    may_attend(&docs, q, k),
                    k <= q && source[k] == source[q],
                    "row pos {q} -> {k}"
                );
            }
        }
        let bounds = row.cu_seqlens();
        assert_eq!(bounds.len(), row.examples.len() + 1);
        assert_eq!(*bounds.last().unwrap(), row.len());
    }
}

#[test]
fn packing_is_deterministic_and_refuses_overlong() {
    let examples = math_examples(60);
    let (fitted, _) = apply_cutoff(examples.clone(), 2048, Overlong::Drop);
    assert_eq!(pack(&fitted, 2048).unwrap(), pack(&fitted, 2048).unwrap());
    let longest = examples.iter().map(Example::len).max().unwrap();
    let err = pack(&examples, longest - 1).unwrap_err().to_string();
    assert!(err.contains("more than cutoff_len"), "{err}");
}

#[test]
fn sampler_over_packed_rows_resumes_exactly() {
    let (examples, _) = apply_cutoff(math_examples(80), 1024, Overlong::Truncate);
    let rows = pack(&examples, 1024).unwrap();
    let full: Vec<Vec<u32>> = Sampler::new(rows.len(), 17)
        .unwrap()
        .take(3 * rows.len())
        .map(|i| rows[i].input_ids.clone())
        .collect();
    let mut first = Sampler::new(rows.len(), 17).unwrap();
    let mut seen: Vec<Vec<u32>> = first
        .next_batch(rows.len() + 5)
        .into_iter()
        .map(|i| rows[i].input_ids.clone())
        .collect();
    let saved = serde_json::to_vec(&first.state()).unwrap();
    let mut resumed =
        Sampler::from_state(serde_json::from_slice(&saved).unwrap(), rows.len()).unwrap();
    seen.extend(
        resumed
            .next_batch(2 * rows.len() - 5)
            .into_iter()
            .map(|i| rows[i].input_ids.clone()),
    );
    assert_eq!(seen, full);
}
