//! Reading raw records from JSON arrays, JSONL and Parquet into `serde_json::Value`s.
//!
//! A record that cannot be decoded (bad JSON line, non-UTF-8 bytes) is returned as an error in
//! its slot rather than failing the whole file, so that `on_bad_row = skip` can count it. Errors
//! that make the whole file unreadable (no valid JSON array, broken Parquet footer) fail at once.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, FieldError, Result, RowLocation};

/// One raw record and where it came from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub location: RowLocation,
    pub value: Result<Value, FieldError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Json,
    Jsonl,
    Parquet,
}

impl FileKind {
    /// The kind from the file name; `None` for files that are not data (README.md, .gitattributes).
    pub fn from_path(path: &Path) -> Option<FileKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(FileKind::Jsonl)
        } else if name.ends_with(".json") {
            Some(FileKind::Json)
        } else if name.ends_with(".parquet") {
            Some(FileKind::Parquet)
        } else {
            None
        }
    }
}

/// Reads every record of one data file.
pub fn read_records(path: &Path) -> Result<Vec<RawRecord>> {
    let kind = FileKind::from_path(path).ok_or_else(|| {
        DataError::file(
            path,
            "unknown data file type (expected .json, .jsonl, .ndjson or .parquet)",
        )
    })?;
    match kind {
        FileKind::Jsonl => read_jsonl(path),
        // Hub repositories often name JSON Lines files `.json`; like HF `datasets`, a `.json`
        // file that starts with an object is read as JSON Lines.
        FileKind::Json if starts_with_object(path)? => read_jsonl(path),
        FileKind::Json => read_json_array(path),
        FileKind::Parquet => read_parquet(path),
    }
}

/// `bytes` without a leading UTF-8 byte-order mark, which Windows editors and Python's
/// `utf-8-sig` write and JSON parsers reject.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

fn location(path: &Path, row: usize) -> RowLocation {
    RowLocation {
        file: path.to_path_buf(),
        row,
    }
}

fn starts_with_object(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| DataError::io(path, e))?;
    Ok(without_bom(&head).iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

fn read_jsonl(path: &Path) -> Result<Vec<RawRecord>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut records = Vec::new();
    for (index, line) in without_bom(&bytes).split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // blank lines (and the one after the final newline) are not records
        }
        let value = match std::str::from_utf8(line) {
            Err(e) => Err(FieldError::record(format!(
                "not valid UTF-8 (invalid byte at column {})",
                e.valid_up_to() + 1
            ))),
            Ok(text) => serde_json::from_str::<Value>(text)
                .map_err(|e| FieldError::record(format!("invalid JSON: {e}"))),
        };
        records.push(RawRecord {
            location: location(path, index + 1),
            value,
        });
    }
    Ok(records)
}

fn read_json_array(path: &Path) -> Result<Vec<RawRecord>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = without_bom(&bytes);
    // UTF-8 is checked first so the message says what is wrong, not just "invalid JSON".
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        return Err(DataError::file(
            path,
            format!("not valid UTF-8 (invalid byte on line {line})"),
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| DataError::file(path, format!("invalid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(DataError::file(
            path,
            "a .json data file must hold one JSON array of records (use .jsonl for one record per line)",
        ));
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, value)| RawRecord {
            location: location(path, index + 1),
            value: Ok(value),
        })
        .collect())
}

fn read_parquet(path: &Path) -> Result<Vec<RawRecord>> {
    // The parquet crate's row API panics (`unimplemented!`) on some column types instead of
    // returning an error; a bad file must give an error, not a crash.
    std::panic::catch_unwind(|| read_parquet_rows(path)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown reason".into());
        Err(DataError::file(
            path,
            format!("the Parquet reader failed: {why}"),
        ))
    })
}

fn read_parquet_rows(path: &Path) -> Result<Vec<RawRecord>> {
    use parquet::file::reader::SerializedFileReader;

    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::file(path, format!("not a readable Parquet file: {e}")))?;
    let mut records = Vec::new();
    for (index, row) in reader.into_iter().enumerate() {
        let value = row
            .map(|row| row.to_json_value())
            .map_err(|e| FieldError::record(format!("cannot decode Parquet row: {e}")));
        records.push(RawRecord {
            location: location(path, index + 1),
            value,
        });
    }
    Ok(records)
}

/// All data files under a folder, sorted by path so the order never depends on the file system.
pub fn data_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| DataError::io(&current, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&current, e))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if FileKind::from_path(&path).is_some() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn jsonl_rows_are_line_numbers_and_bad_lines_stay_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "d.jsonl",
            b"{\"a\": 1}\r\n\n{\"a\": \n{\"a\": \"\xff\"}\n{\"a\": 3}\n",
        );
        let records = read_records(&path).unwrap();
        let rows: Vec<usize> = records.iter().map(|r| r.location.row).collect();
        assert_eq!(rows, vec![1, 3, 4, 5]);
        assert_eq!(records[0].value.as_ref().unwrap()["a"], 1);
        assert!(records[1]
            .value
            .as_ref()
            .unwrap_err()
            .message
            .contains("invalid JSON"));
        assert!(records[2]
            .value
            .as_ref()
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert_eq!(records[3].value.as_ref().unwrap()["a"], 3);
    }

    /// A leading byte-order mark (Python's `utf-8-sig`, Windows editors) once made row 1
    /// invalid JSON; in a .json file it also hid the JSON Lines check's first `{`.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("l.jsonl", &b"\xef\xbb\xbf{\"a\": 1}\n{\"a\": 2}\n"[..]),
            ("o.json", b"\xef\xbb\xbf{\"a\": 1}\n{\"a\": 2}\n"),
            ("a.json", b"\xef\xbb\xbf[{\"a\": 1}, {\"a\": 2}]"),
        ] {
            let records = read_records(&write(&dir, name, body)).unwrap();
            let values: Vec<&Value> = records.iter().map(|r| r.value.as_ref().unwrap()).collect();
            assert_eq!(values.len(), 2, "{name}");
            assert_eq!(
                (values[0]["a"].as_i64(), values[1]["a"].as_i64()),
                (Some(1), Some(2))
            );
        }
    }

    #[test]
    fn json_array_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "good.json", br#"[{"a": 1}, {"a": 2}]"#);
        let records = read_records(&good).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].location.row, 2);

        // JSON Lines under a .json name, as on the Hub.
        let lines = write(&dir, "lines.json", b"{\"a\": 1}\n{\"a\": 2}\n");
        let records = read_records(&lines).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].value.as_ref().unwrap()["a"], 2);

        // Each unreadable file: the error names it and says what is wrong, and where.
        let broken: [(&str, &[u8], &[&str]); 4] = [
            ("number.json", b"42", &["JSON array"]),
            ("broken.json", b"[{\"a\": 1},\n {\"a\" 2}]", &["line 2"]),
            (
                "latin1.json",
                b"[\n{\"a\": \"caf\xe9\"}]",
                &["UTF-8", "line 2"],
            ),
            ("data.csv", b"a,b\n", &["unknown data file type"]),
        ];
        for (name, bytes, expected) in broken {
            let err = read_records(&write(&dir, name, bytes))
                .unwrap_err()
                .to_string();
            for part in [name].iter().chain(expected) {
                assert!(err.contains(part), "{part:?} is not in: {err}");
            }
        }
    }

    #[test]
    fn data_files_are_found_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        write(&dir, "data/b.parquet", b"");
        write(&dir, "a.jsonl", b"");
        write(&dir, "README.md", b"");
        write(&dir, ".hidden.json", b"");
        let files = data_files_in(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a.jsonl", "data/b.parquet"]);
    }
}
