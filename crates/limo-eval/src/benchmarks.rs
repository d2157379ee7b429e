//! LIMO's nine evaluation sets, embedded in the binary (`benchmarks/*.jsonl`, copied unchanged
//! from GAIR-NLP/LIMO `eval/data/<name>/test.jsonl`), and user JSONL files.
//!
//! Field mapping (the question / the id / the reference answer):
//!
//! | name | file | question | id | answer |
//! | --- | --- | --- | --- | --- |
//! | aime | aime.jsonl | problem | id | answer |
//! | math500 | math.jsonl | problem | unique_id | answer |
//! | amc23 | amc.jsonl | problem | id | answer (a JSON number: `27.0` -> `27`) |
//! | cn_math_2024 | cn_math_2024.jsonl | problem | id | answer |
//! | gaokao | gaokao.jsonl | question | idx | choice_answer when not empty, else answer |
//! | grade_school_math | grade_school_math.jsonl | problem | row index | answer |
//! | kaoyan | kaoyan.jsonl | problem | id | answer |
//! | minerva | minerva.jsonl | question | row index | answer |
//! | olympiadbench | olympiadbench.jsonl | question | id | answer |
//!
//! Answers that are JSON arrays or objects (a few in grade_school_math and kaoyan: several
//! answers, or named parts) become their values joined with `, `, which the grader compares as
//! an unordered list. Embedded rows without a reference answer are skipped and counted (there
//! are none in the shipped files); in user files they are an error naming the row.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use limo_data::config::{Columns, Format};
use limo_data::format::{parse_record, Role};
use limo_data::hub::{resolve_data_files, HubSettings};
use limo_data::reader::{read_records, without_bom, FileKind};
use serde_json::{Map, Value};

use crate::grader::{extract_answer, value_text};

/// A user's rows in one of the conversation formats of limo's training data (`limo eval
/// --format alpaca|messages`): the last user turn before the final assistant turn is the
/// question, the final assistant turn the reference answer (its last `\boxed{}` when it has
/// one, else the whole turn). Columns are named as in `limo train`'s `data.columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRows {
    pub format: Format,
    pub columns: Columns,
}

impl ConversationRows {
    /// The question and reference answer of one row, or what is wrong with it.
    fn question_answer(
        &self,
        obj: &Map<String, Value>,
    ) -> std::result::Result<(String, String), String> {
        let record = Value::Object(obj.clone());
        let conv = parse_record(&record, self.format, &self.columns).map_err(|e| {
            // limo_data's hint names `limo data`'s flag; `limo eval` maps columns with --field.
            let message = e.message.replace("--column/`columns`", "--field KEY=NAME");
            match e.field {
                Some(f) => format!("{f}: {message}"),
                None => message,
            }
        })?;
        let (reply, before) = conv
            .turns
            .split_last()
            .ok_or_else(|| "no assistant turn".to_string())?;
        let question = before
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.trim().to_string())
            .filter(|q| !q.is_empty())
            .ok_or_else(|| "no user turn before the last assistant turn".to_string())?;
        let answer =
            extract_answer(&reply.content).unwrap_or_else(|| reply.content.trim().to_string());
        if answer.is_empty() {
            return Err("empty reference answer (the last assistant turn)".into());
        }
        Ok((question, answer))
    }
}

/// How the rows of a user's benchmark give their question and reference answer.
#[derive(Debug, Clone, Copy)]
pub enum RowsAs<'a> {
    /// Two fields (LIMO's test files; `limo eval --format limo`, the default).
    Fields { question: &'a str, answer: &'a str },
    /// A conversation ([`ConversationRows`]).
    Conversation(&'a ConversationRows),
}

impl RowsAs<'_> {
    /// The question and answer of `obj`, errors prefixed with `at` (file and line or row).
    fn question_answer(
        &self,
        obj: &Map<String, Value>,
        origin: &str,
        line_no: usize,
        at: &str,
    ) -> Result<(String, String)> {
        match self {
            RowsAs::Fields { question, answer } => {
                // LIMO reads the first of these its rows have (its AIME and MATH files say
                // "problem"), so a folder of its sets needs no --field.
                let question = match *question {
                    "question" if !obj.contains_key("question") => ["problem", "Question", "input"]
                        .into_iter()
                        .find(|k| obj.contains_key(*k))
                        .unwrap_or(question),
                    _ => question,
                };
                let q = question_text(obj, question, origin, line_no)?;
                let a = obj.get(*answer).map(value_text);
                match a {
                    None => bail!("{at}: {}", missing(obj, answer, "answer")),
                    Some(a) if a.is_empty() => {
                        bail!("{at}: no reference answer ({answer:?} is empty)")
                    }
                    Some(a) => Ok((q, a)),
                }
            }
            RowsAs::Conversation(c) => c.question_answer(obj).map_err(|e| anyhow!("{at}: {e}")),
        }
    }
}

/// The benchmarks' short names, in LIMO's table order.
pub const NAMES: [&str; 9] = [
    "aime",
    "math500",
    "amc23",
    "cn_math_2024",
    "gaokao",
    "grade_school_math",
    "kaoyan",
    "minerva",
    "olympiadbench",
];

/// One evaluation problem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The benchmark's short name (for a user file: the file's stem).
    pub benchmark: String,
    /// The row's id field, or its 0-based row index.
    pub id: String,
    /// The question as the model sees it (LIMO's prompt puts it as the user message).
    pub question: String,
    /// The reference answer (non-empty).
    pub answer: String,
}

struct Spec {
    name: &'static str,
    file: &'static str,
    text: &'static str,
    question: &'static str,
    id: Option<&'static str>,
    /// The answer fields, first non-empty wins.
    answer: &'static [&'static str],
}

const SPECS: [Spec; 9] = [
    Spec {
        name: "aime",
        file: "aime.jsonl",
        text: include_str!("../benchmarks/aime.jsonl"),
        question: "problem",
        id: Some("id"),
        answer: &["answer"],
    },
    Spec {
        name: "math500",
        file: "math.jsonl",
        text: include_str!("../benchmarks/math.jsonl"),
        question: "problem",
        id: Some("unique_id"),
        answer: &["answer"],
    },
    Spec {
        name: "amc23",
        file: "amc.jsonl",
        text: include_str!("../benchmarks/amc.jsonl"),
        question: "problem",
        id: Some("id"),
        answer: &["answer"],
    },
    Spec {
        name: "cn_math_2024",
        file: "cn_math_2024.jsonl",
        text: include_str!("../benchmarks/cn_math_2024.jsonl"),
        question: "problem",
        id: Some("id"),
        answer: &["answer"],
    },
    Spec {
        name: "gaokao",
        file: "gaokao.jsonl",
        text: include_str!("../benchmarks/gaokao.jsonl"),
        question: "question",
        id: Some("idx"),
        answer: &["choice_answer", "answer"],
    },
    Spec {
        name: "grade_school_math",
        file: "grade_school_math.jsonl",
        text: include_str!("../benchmarks/grade_school_math.jsonl"),
        question: "problem",
        id: None,
        answer: &["answer"],
    },
    Spec {
        name: "kaoyan",
        file: "kaoyan.jsonl",
        text: include_str!("../benchmarks/kaoyan.jsonl"),
        question: "problem",
        id: Some("id"),
        answer: &["answer"],
    },
    Spec {
        name: "minerva",
        file: "minerva.jsonl",
        text: include_str!("../benchmarks/minerva.jsonl"),
        question: "question",
        id: None,
        answer: &["answer"],
    },
    Spec {
        name: "olympiadbench",
        file: "olympiadbench.jsonl",
        text: include_str!("../benchmarks/olympiadbench.jsonl"),
        question: "question",
        id: Some("id"),
        answer: &["answer"],
    },
];

fn spec(name: &str) -> Result<&'static Spec> {
    // the file stems work too
    let name = match name {
        "math" => "math500",
        "amc" => "amc23",
        n => n,
    };
    SPECS.iter().find(|s| s.name == name).ok_or_else(|| {
        anyhow!(
            "unknown benchmark {name:?}: the benchmarks are {}",
            NAMES.join(", ")
        )
    })
}

/// The embedded file a benchmark is read from (`math500` -> `math.jsonl`).
pub fn file_name(name: &str) -> Result<&'static str> {
    Ok(spec(name)?.file)
}

/// The problems of an embedded benchmark (one of [`NAMES`]). Rows without a reference answer are
/// skipped with a warning (see [`load_counted`]).
pub fn load(name: &str) -> Result<Vec<Problem>> {
    let (problems, skipped) = load_counted(name)?;
    if skipped > 0 {
        tracing::warn!(
            benchmark = name,
            skipped,
            "rows without a reference answer skipped"
        );
    }
    Ok(problems)
}

/// [`load`], and how many rows were skipped for having no reference answer.
pub fn load_counted(name: &str) -> Result<(Vec<Problem>, usize)> {
    let spec = spec(name)?;
    let origin = format!("benchmarks/{}", spec.file);
    let mut problems = Vec::new();
    let mut skipped = 0;
    for (row, (line_no, obj)) in rows(spec.text, &origin)?.into_iter().enumerate() {
        let question = question_text(&obj, spec.question, &origin, line_no)?;
        let answer = spec
            .answer
            .iter()
            .map(|f| obj.get(*f).map(value_text).unwrap_or_default())
            .find(|a| !a.is_empty());
        let Some(answer) = answer else {
            skipped += 1;
            continue;
        };
        let id = match spec.id {
            Some(f) => id_text(&obj, f, &origin, line_no)?,
            None => row.to_string(),
        };
        problems.push(Problem {
            benchmark: spec.name.to_string(),
            id,
            question,
            answer,
        });
    }
    Ok((problems, skipped))
}

/// The problems of a user JSONL file, its rows read as `rows_as` says (e.g. two fields); ids
/// come from `id_field` or are the 0-based row index. Every row needs a non-empty question and
/// reference answer; errors name the file and line.
pub fn load_file(path: &Path, rows_as: RowsAs, id_field: Option<&str>) -> Result<Vec<Problem>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let origin = path.display().to_string();
    let text = utf8_text(without_bom(&bytes), &origin)?;
    let reader = RowReader::new(path, rows_as, id_field);
    let mut problems = Vec::new();
    for (row, (line_no, obj)) in rows(text, &origin)?.into_iter().enumerate() {
        let at = format!("{origin}: line {line_no}");
        problems.push(reader.problem(&obj, &origin, line_no, &at, row)?);
    }
    if problems.is_empty() {
        bail!("{origin}: no rows");
    }
    Ok(problems)
}

/// A user's benchmarks from anything `limo train` reads as data: a JSONL file (read by
/// [`load_file`], errors by line), a .json or .parquet file, a folder of them, or a Hub dataset
/// id like `GAIR/LIMO` (from the Hugging Face cache, or downloaded, as in training); errors name
/// the file and row. Rows are read as `rows_as` says (`limo eval --format`). One benchmark,
/// but for a folder of folders: one per subfolder (LIMO's eval/data/aime, .../gpqa, ...).
pub fn load_data(spec: &str, rows_as: RowsAs, id_field: Option<&str>) -> Result<Vec<Vec<Problem>>> {
    let path = Path::new(spec);
    if path.is_file() && FileKind::from_path(path) == Some(FileKind::Jsonl) {
        return Ok(vec![load_file(path, rows_as, id_field)?]);
    }
    let files = resolve_data_files(spec, &HubSettings::from_env()).map_err(|e| anyhow!("{e}"))?;
    let mut groups: Vec<(RowReader, Vec<Problem>)> = Vec::new();
    for file in files {
        // A file in a subfolder of a folder given: the subfolder's benchmark.
        let subfolder = file.strip_prefix(path).ok().and_then(|r| {
            let mut parts = r.components();
            let first = parts.next()?;
            parts.next().map(|_| os_name(Some(first.as_os_str())))
        });
        let reader = match subfolder.filter(|_| path.is_dir()) {
            Some(name) => RowReader::named(name, rows_as, id_field),
            None => RowReader::new(path, rows_as, id_field),
        };
        let at_group = groups
            .iter()
            .position(|(r, _)| r.benchmark == reader.benchmark);
        let group = match at_group {
            Some(i) => i,
            None => {
                groups.push((reader, Vec::new()));
                groups.len() - 1
            }
        };
        let (reader, problems) = &mut groups[group];
        let origin = file.display().to_string();
        for record in read_records(&file).map_err(|e| anyhow!("{e}"))? {
            let row = record.location.row;
            let obj = match record.value {
                Ok(Value::Object(obj)) => obj,
                Ok(_) => bail!("{}: not a JSON object", record.location),
                Err(e) => bail!("{}: {}", record.location, e.message),
            };
            let at = record.location.to_string();
            problems.push(reader.problem(&obj, &origin, row, &at, problems.len())?);
        }
    }
    if groups.iter().all(|(_, problems)| problems.is_empty()) {
        bail!("{spec}: no rows");
    }
    Ok(groups
        .into_iter()
        .map(|(_, problems)| problems)
        .filter(|problems| !problems.is_empty())
        .collect())
}

fn os_name(name: Option<&std::ffi::OsStr>) -> String {
    name.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// File names that name a split, not a benchmark.
const SPLITS: [&str; 5] = ["test", "train", "validation", "val", "dev"];

/// Turns a user's rows into problems of the benchmark named after the file (its stem), or after
/// its folder when the file is named for a split (LIMO's `eval/data/gpqa/test.jsonl` is gpqa).
struct RowReader<'a> {
    rows_as: RowsAs<'a>,
    id_field: Option<&'a str>,
    benchmark: String,
}

impl<'a> RowReader<'a> {
    fn new(path: &Path, rows_as: RowsAs<'a>, id_field: Option<&'a str>) -> Self {
        let stem = os_name(path.file_stem());
        let folder = os_name(path.parent().and_then(Path::file_name));
        let benchmark = match SPLITS.contains(&stem.as_str()) && !folder.is_empty() {
            true => folder,
            false => stem,
        };
        Self::named(benchmark, rows_as, id_field)
    }

    fn named(benchmark: String, rows_as: RowsAs<'a>, id_field: Option<&'a str>) -> Self {
        Self {
            rows_as,
            id_field,
            benchmark,
        }
    }

    /// The problem of row `obj` (row or line `row` of `origin`, `at` naming it in errors); its
    /// id is the id field's, else `index`.
    fn problem(
        &self,
        obj: &Map<String, Value>,
        origin: &str,
        row: usize,
        at: &str,
        index: usize,
    ) -> Result<Problem> {
        let (question, answer) = self.rows_as.question_answer(obj, origin, row, at)?;
        let id = match self.id_field {
            Some(f) => id_text(obj, f, origin, row)?,
            None => index.to_string(),
        };
        Ok(Problem {
            benchmark: self.benchmark.clone(),
            id,
            question,
            answer,
        })
    }
}

/// `bytes` as text, or an error naming the line and column of the first invalid byte (as
/// `limo data stats` does).
fn utf8_text<'a>(bytes: &'a [u8], origin: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!(
            "{origin}: line {line}: not valid UTF-8 (invalid byte at column {})",
            before.len() - line_start + 1
        )
    })
}

/// The JSON objects of a JSONL text with their 1-based line numbers; blank lines skipped.
fn rows(text: &str, origin: &str) -> Result<Vec<(usize, Map<String, Value>)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let obj: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| anyhow!("{origin}: line {}: not a JSON object: {e}", n + 1))?;
        out.push((n + 1, obj));
    }
    Ok(out)
}

fn question_text(
    obj: &Map<String, Value>,
    field: &str,
    origin: &str,
    line_no: usize,
) -> Result<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) => bail!("{origin}: line {line_no}: empty question ({field:?})"),
        Some(_) => bail!("{origin}: line {line_no}: the question field {field:?} is not a string"),
        None => bail!(
            "{origin}: line {line_no}: {}",
            missing(obj, field, "question")
        ),
    }
}

/// `no field "answer" (the row has: problem, solution; --field answer=NAME names another)`.
fn missing(obj: &Map<String, Value>, field: &str, role: &str) -> String {
    let has: Vec<&str> = obj.keys().map(String::as_str).collect();
    let has = match has.is_empty() {
        true => "no fields".to_string(),
        false => format!("the row has: {}", has.join(", ")),
    };
    format!("no field {field:?} ({has}; --field {role}=NAME names another)")
}

fn id_text(obj: &Map<String, Value>, field: &str, origin: &str, line_no: usize) -> Result<String> {
    match obj.get(field) {
        None | Some(Value::Null) => bail!("{origin}: line {line_no}: no id field {field:?}"),
        Some(v) => Ok(value_text(v)),
    }
}

#[cfg(test)]
mod conversation_tests {
    use super::*;

    fn rows(format: Format) -> ConversationRows {
        ConversationRows {
            format,
            columns: Columns::default(),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn alpaca_and_messages_rows_give_question_and_reference() {
        let alpaca = rows(Format::Alpaca);
        let (q, a) = alpaca
            .question_answer(&obj(serde_json::json!({
                "instruction": "Add.", "input": "1+1", "output": "So \\boxed{2}."
            })))
            .unwrap();
        assert_eq!((q.as_str(), a.as_str()), ("Add.\n1+1", "2"));
        let (_, a) = alpaca
            .question_answer(&obj(
                serde_json::json!({"instruction": "x", "output": " 7 "}),
            ))
            .unwrap();
        assert_eq!(a, "7", "no boxed answer: the whole output");

        let messages = rows(Format::Messages);
        let conv = serde_json::json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": " What is 2+2? "},
            {"role": "assistant", "content": "It is \\boxed{4}"}
        ]});
        let (q, a) = messages.question_answer(&obj(conv)).unwrap();
        assert_eq!((q.as_str(), a.as_str()), ("What is 2+2?", "4"));

        let err = alpaca
            .question_answer(&obj(serde_json::json!({"instruction": "x"})))
            .unwrap_err();
        assert!(err.starts_with("output: missing"), "{err}");
        let err = messages
            .question_answer(&obj(serde_json::json!({"messages": [
                {"role": "assistant", "content": "\\boxed{1}"}
            ]})))
            .unwrap_err();
        assert!(err.contains("no user turn"), "{err}");
    }

    /// LIMO's own training rows (question, solution, answer) lack nothing; rows named
    /// otherwise are told what they have and how to map it.
    #[test]
    fn a_missing_field_names_the_row_s_fields_and_the_flag() {
        let fields = RowsAs::Fields {
            question: "question",
            answer: "answer",
        };
        let at = |v: Value| {
            fields
                .question_answer(&obj(v), "f.jsonl", 2, "f.jsonl: line 2")
                .unwrap_err()
                .to_string()
        };
        let err = at(serde_json::json!({"question": "q", "solution": "s"}));
        assert_eq!(
            err,
            "f.jsonl: line 2: no field \"answer\" (the row has: question, solution; \
             --field answer=NAME names another)"
        );
        let err = at(serde_json::json!({"prompt": "q", "answer": "1"}));
        assert!(
            err.contains(
                "no field \"question\" (the row has: answer, prompt; --field question=NAME"
            ),
            "{err}"
        );
        // LIMO reads a "problem" (its AIME and MATH files) when there is no "question".
        let problem = obj(serde_json::json!({"problem": "q", "answer": "1"}));
        let read = fields.question_answer(&problem, "f.jsonl", 2, "f.jsonl: line 2");
        assert_eq!(read.unwrap(), ("q".to_string(), "1".to_string()));
        let err = at(serde_json::json!({}));
        assert!(err.contains("(no fields; --field question=NAME"), "{err}");
    }
}
