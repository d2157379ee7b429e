//! Bad input gives an error naming file, row and field, or is skipped and counted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use limo_data::{tokenize_untruncated, DataConfig, Format, HubSettings, OnBadRow};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

fn offline() -> HubSettings {
    HubSettings {
        cache_dir: PathBuf::from("/nonexistent"),
        offline: true,
        endpoint: None,
    }
}

fn load(
    path: &Path,
    format: Format,
    on_bad_row: OnBadRow,
) -> limo_data::Result<(usize, limo_data::LoadReport)> {
    let mut config = DataConfig::new(path.display().to_string(), format);
    config.on_bad_row = on_bad_row;
    tokenize_untruncated(&config, common::tokenizer(), &offline())
        .map(|(examples, report)| (examples.len(), report))
}

/// The load failed with an error that contains every one of `parts`.
fn assert_fails_naming<T: std::fmt::Debug>(loaded: limo_data::Result<T>, parts: &[&str]) {
    let err = loaded.unwrap_err().to_string();
    for part in parts {
        assert!(err.contains(part), "{part:?} is not in: {err}");
    }
}

/// A fresh folder holding one file `name` of `bytes`, and the file's path.
fn file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, bytes);
    (dir, path)
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// [`file`], checked to be a LIMO-format file the strict loader (`on_bad_row = fail`) rejects
/// with an error naming `expected`.
fn rejected_limo_file(name: &str, bytes: &[u8], expected: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = file(name, bytes);
    assert_fails_naming(load(&path, Format::Limo, OnBadRow::Fail), &[expected]);
    (dir, path)
}

const GOOD: &str = r#"{"question": "1+1?", "solution": "\\boxed{2}"}"#;

#[test]
fn bad_json_line_names_file_and_line() {
    let (_dir, path) = rejected_limo_file(
        "bad.jsonl",
        format!("{GOOD}\n{GOOD}\n{{\"question\": \"q\",\n{GOOD}\n").as_bytes(),
        "bad.jsonl: row 3: invalid JSON",
    );
    let (examples, report) = load(&path, Format::Limo, OnBadRow::Skip).unwrap();
    assert_eq!((examples, report.rows, report.skipped), (3, 4, 1));
    assert!(
        report.skipped_examples[0].contains("bad.jsonl: row 3"),
        "{:?}",
        report.skipped_examples
    );
}

#[test]
fn missing_field_wrong_type_empty_answer_and_unknown_role() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Format, &str); 5] = [
        (
            r#"{"question": "q"}"#,
            Format::Limo,
            "row 2: field `solution`: missing",
        ),
        (
            r#"{"question": "q", "solution": 42}"#,
            Format::Limo,
            "row 2: field `solution`: expected a string, found a number",
        ),
        (
            r#"{"question": "q", "solution": ""}"#,
            Format::Limo,
            "row 2: field `solution`: empty",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}"#,
            Format::Messages,
            "row 2: field `messages[1].role`: unknown role `bot`",
        ),
        (
            r#"{"instruction": "i", "output": ["o"]}"#,
            Format::Alpaca,
            "row 2: field `output`: expected a string, found a list",
        ),
    ];
    // A valid first row of the same format, so the bad one is row 2.
    let first_row = |format: Format| {
        if format == Format::Messages {
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#
        } else if format == Format::Alpaca {
            r#"{"instruction": "i", "output": "o"}"#
        } else {
            GOOD
        }
    };
    for (i, (bad, format, expected)) in cases.iter().enumerate() {
        let path = write(
            &dir,
            &format!("case{i}.jsonl"),
            format!("{}\n{bad}\n", first_row(*format)).as_bytes(),
        );
        assert_fails_naming(
            load(&path, *format, OnBadRow::Fail),
            &[&format!("case{i}.jsonl: {expected}")],
        );
        let (examples, report) = load(&path, *format, OnBadRow::Skip).unwrap();
        assert_eq!((examples, report.skipped), (1, 1));
    }
}

#[test]
fn non_utf8_line_is_an_error_not_a_panic() {
    let (_dir, path) = rejected_limo_file(
        "latin1.jsonl",
        b"{\"question\": \"caf\xe9\", \"solution\": \"s\"}\n",
        "latin1.jsonl: row 1: not valid UTF-8",
    );
    // Skipping everything leaves nothing: that is an error too, with the first reason.
    assert_fails_naming(
        load(&path, Format::Limo, OnBadRow::Skip),
        &["no usable examples", "UTF-8"],
    );
}

#[test]
fn json_array_rows_are_element_numbers() {
    rejected_limo_file(
        "a.json",
        format!("[{GOOD}, {{\"question\": \"q\", \"solution\": null}}]").as_bytes(),
        "a.json: row 2: field `solution`: expected a string, found null",
    );
}

/// Writes one row group to a Parquet file of `schema` (its leaves UTF-8 strings): `leaf(i)`
/// gives the values of leaf column `i` with their definition and repetition levels, if any.
fn write_parquet(
    path: &Path,
    schema: &str,
    compression: Compression,
    mut leaf: impl FnMut(usize) -> (Vec<ByteArray>, Option<Vec<i16>>, Option<Vec<i16>>),
) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut index = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        let (values, defs, reps) = leaf(index);
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, defs.as_deref(), reps.as_deref())
            .unwrap();
        column.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// Writes a Parquet file of required UTF-8 string columns.
fn write_string_parquet(path: &Path, columns: &[(&str, Vec<&str>)]) {
    let fields: String = columns
        .iter()
        .map(|(name, _)| format!("REQUIRED BYTE_ARRAY {name} (UTF8);"))
        .collect();
    let schema = format!("message schema {{ {fields} }}");
    write_parquet(path, &schema, Compression::SNAPPY, |index| {
        let values = columns[index].1.iter().map(|v| ByteArray::from(*v));
        (values.collect(), None, None)
    });
}

/// Writes `messages: list<struct<role, content>>` the way Hub chat datasets store it.
fn write_messages_parquet(path: &Path, rows: &[Vec<(&str, &str)>]) {
    let schema = "message schema { OPTIONAL group messages (LIST) { REPEATED group list { \
                  OPTIONAL group element { OPTIONAL BYTE_ARRAY role (UTF8); \
                  OPTIONAL BYTE_ARRAY content (UTF8); } } } }";
    let compression = Compression::ZSTD(Default::default());
    write_parquet(path, schema, compression, |leaf| {
        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            for (i, message) in row.iter().enumerate() {
                values.push(ByteArray::from(if leaf == 0 {
                    message.0
                } else {
                    message.1
                }));
                defs.push(4); // messages, list, element and the leaf all present
                reps.push(if i == 0 { 0 } else { 1 });
            }
        }
        (values, Some(defs), Some(reps))
    });
}

#[test]
fn parquet_limo_and_messages_read_like_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000.parquet");
    write_string_parquet(
        &path,
        &[
            ("question", vec!["1+1?", "2+2?"]),
            ("solution", vec!["\\boxed{2}", "\\boxed{4}"]),
        ],
    );
    let mut config = DataConfig::new(path.display().to_string(), Format::Limo);
    let (from_parquet, _) = tokenize_untruncated(&config, common::tokenizer(), &offline()).unwrap();
    let json = write(&dir, "same.jsonl", b"{\"question\": \"1+1?\", \"solution\": \"\\\\boxed{2}\"}\n{\"question\": \"2+2?\", \"solution\": \"\\\\boxed{4}\"}\n");
    config.path = json.display().to_string();
    let (from_json, _) = tokenize_untruncated(&config, common::tokenizer(), &offline()).unwrap();
    assert_eq!(from_parquet, from_json);

    let chat = dir.path().join("chat.parquet");
    write_messages_parquet(
        &chat,
        &[
            vec![("user", "Hi"), ("assistant", "Hello")],
            vec![("system", "S"), ("user", "a"), ("assistant", "b")],
        ],
    );
    let config = DataConfig::new(chat.display().to_string(), Format::Messages);
    let (examples, _) = tokenize_untruncated(&config, common::tokenizer(), &offline()).unwrap();
    let text = common::tokenizer().decode(&examples[1].input_ids).unwrap();
    assert_eq!(text, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n");
}

#[test]
fn parquet_with_wrong_columns_names_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.parquet");
    write_string_parquet(&path, &[("prompt", vec!["q"]), ("response", vec!["a"])]);
    assert_fails_naming(
        load(&path, Format::Limo, OnBadRow::Fail),
        &["wrong.parquet: row 1: field `question`: missing (record has: prompt, response"],
    );
}

#[test]
fn broken_parquet_file_is_an_error() {
    let (_dir, path) = file("broken.parquet", b"PAR1 definitely not parquet");
    assert_fails_naming(
        load(&path, Format::Limo, OnBadRow::Skip),
        &["broken.parquet: not a readable Parquet file"],
    );
}
