//! Time to read, render and tokenize MATH-500 (500 rows, LIMO format with `problem` mapped to
//! `question`): `cargo bench -p limo-data --bench tokenize_math`. The budget is 2 s.

use std::path::PathBuf;
use std::time::Instant;

use limo_data::{load_dataset, ChatTokenizer, DataConfig, Example, Format};

fn main() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let started = Instant::now();
    let tokenizer =
        ChatTokenizer::from_path(&fixtures.join("qwen2.5-tokenizer")).expect("tokenizer loads");
    println!("tokenizer load: {:.3} s", started.elapsed().as_secs_f64());

    let mut config = DataConfig::new(
        fixtures.join("data/math.jsonl").display().to_string(),
        Format::Limo,
    );
    config
        .columns
        .set("question", "problem")
        .expect("valid column");
    let mut seconds = Vec::new();
    let mut tokens = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let dataset = load_dataset(&config, &tokenizer).expect("math.jsonl loads");
        seconds.push(started.elapsed().as_secs_f64());
        tokens = dataset.examples.iter().map(Example::len).sum::<usize>();
        assert_eq!(dataset.examples.len(), 500);
    }
    seconds.sort_by(f64::total_cmp);
    println!(
        "math.jsonl, 500 rows, {tokens} tokens: read+render+tokenize min {:.3} s, median {:.3} s (5 runs)",
        seconds[0], seconds[2]
    );
}
