//! The data section of a training configuration: which file, which format, which columns, and
//! what to do with bad or over-long rows.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// LIMO's system prompt (GAIR-NLP/LIMO eval/prompts/qwen-instruct), used for training too.
pub const LIMO_SYSTEM_PROMPT: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// The LIMO paper trains with 16384-token sequences.
pub const DEFAULT_CUTOFF_LEN: usize = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `question`, `solution`, optional `answer` (GAIR/LIMO).
    Limo,
    /// A list of `{role, content}` messages, multi-turn, optional system message.
    Messages,
    /// `instruction`, `input`, `output` (Stanford Alpaca).
    Alpaca,
    /// Already tokenized: `{"input_ids", "labels", "position_ids"?}` per line, as
    /// `limo data dump` writes it. Taken as is by the trainer (no template, no tokenizer).
    Tokenized,
}

/// `--format` of `limo data`: the serde names are the only list of formats.
impl std::str::FromStr for Format {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        use serde::de::{value::Error, IntoDeserializer};
        Format::deserialize(IntoDeserializer::<Error>::into_deserializer(s))
            .map_err(|e| DataError::Config(format!("format: {e}")))
    }
}

/// Column (field) names in the source records. Only the ones of the chosen format are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub question: String,
    pub solution: String,
    pub answer: String,
    pub messages: String,
    pub role: String,
    pub content: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// Per-example system prompt, any format; overrides [`DataConfig::system`] when non-empty.
    pub system: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            question: "question".into(),
            solution: "solution".into(),
            answer: "answer".into(),
            messages: "messages".into(),
            role: "role".into(),
            content: "content".into(),
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
            system: "system".into(),
        }
    }
}

impl Columns {
    /// Sets one column from a `key=name` pair, as the CLI's `--column` takes it.
    pub fn set(&mut self, key: &str, name: &str) -> Result<()> {
        let slot = match key {
            "question" => &mut self.question,
            "solution" => &mut self.solution,
            "answer" => &mut self.answer,
            "messages" => &mut self.messages,
            "role" => &mut self.role,
            "content" => &mut self.content,
            "instruction" => &mut self.instruction,
            "input" => &mut self.input,
            "output" => &mut self.output,
            "system" => &mut self.system,
            other => {
                return Err(DataError::Config(format!(
                    "unknown column key `{other}` (expected one of question, solution, answer, \
                     messages, role, content, instruction, input, output, system)"
                )))
            }
        };
        if name.is_empty() {
            return Err(DataError::Config(format!(
                "column `{key}` mapped to an empty name"
            )));
        }
        *slot = name.to_string();
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Stop at the first malformed row (the default: silent data loss is worse than a stop).
    #[default]
    Fail,
    /// Skip malformed rows and count them in the load report.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first `cutoff_len` tokens.
    #[default]
    Truncate,
    /// LLaMA-Factory's: each (prompt, response) pair in turn is cut to fit what is left,
    /// prompt and response by `infer_seqlen`'s shares (a short response is kept whole).
    #[serde(rename = "truncate_pairs")]
    TruncatePairs,
    /// Leave examples longer than `cutoff_len` out.
    Drop,
}

fn default_system() -> Option<String> {
    Some(LIMO_SYSTEM_PROMPT.to_string())
}

/// `data.system`: a prompt's text, or `false` / `null` for none.
mod system_prompt {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(text) => s.serialize_str(text),
            None => s.serialize_bool(false),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(Prompt)
    }

    struct Prompt;

    impl<'de> Visitor<'de> for Prompt {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a system prompt's text, or false for the Qwen2.5 template's default")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
            match v {
                false => Ok(None),
                true => Err(E::invalid_value(serde::de::Unexpected::Bool(true), &self)),
            }
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Prompt)
        }
    }
}

fn default_cutoff_len() -> usize {
    DEFAULT_CUTOFF_LEN
}

/// How to turn a dataset into training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A local file or folder, or a Hub dataset id such as `GAIR/LIMO`.
    pub path: String,
    pub format: Format,
    #[serde(default)]
    pub columns: Columns,
    /// System prompt for examples that carry none. `false` (JSON `null`) falls back to the
    /// Qwen2.5 template's own default ("You are Qwen, created by Alibaba Cloud. ..."); it is
    /// written as `false` because TOML has no null and an absent key means LIMO's prompt.
    #[serde(default = "default_system", with = "system_prompt")]
    pub system: Option<String>,
    #[serde(default = "default_cutoff_len")]
    pub cutoff_len: usize,
    #[serde(default)]
    pub overlong: Overlong,
    #[serde(default)]
    pub packing: bool,
    #[serde(default)]
    pub on_bad_row: OnBadRow,
    /// Read at most this many examples (useful for quick checks).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Rows held out for validation, as LLaMA-Factory's `val_size`: a share below 1 (rounded
    /// up), else a count; 0 (the default) holds none out. The rows read are split as Hugging
    /// Face datasets' `train_test_split(seed)` splits them ([`crate::split`]), the training rows
    /// then in that split's order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub val_size: f64,
    /// More datasets, read after `path` in this order, their records appended to its records
    /// (LLaMA-Factory's `dataset: a,b`, concatenated); the rest of this section applies to each,
    /// `limit` too (per dataset, as `max_samples`). `val_size` splits the records of all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Source>,
}

/// One more dataset of [`DataConfig::also`]: where it is and how its records read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A local file or folder, or a Hub dataset id.
    pub path: String,
    pub format: Format,
    #[serde(default)]
    pub columns: Columns,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl DataConfig {
    pub fn new(path: impl Into<String>, format: Format) -> Self {
        DataConfig {
            path: path.into(),
            format,
            columns: Columns::default(),
            system: default_system(),
            cutoff_len: DEFAULT_CUTOFF_LEN,
            overlong: Overlong::default(),
            packing: false,
            on_bad_row: OnBadRow::default(),
            limit: None,
            val_size: 0.0,
            also: Vec::new(),
        }
    }

    /// Every dataset to read, in order: `path` first, then each of `also`, each as a whole
    /// section of its own (the others' `also` empty).
    pub fn sources(&self) -> Vec<DataConfig> {
        let first = DataConfig {
            also: Vec::new(),
            ..self.clone()
        };
        let more = self.also.iter().map(|s| DataConfig {
            path: s.path.clone(),
            format: s.format,
            columns: s.columns.clone(),
            ..first.clone()
        });
        std::iter::once(first.clone()).chain(more).collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.cutoff_len < 2 {
            return Err(DataError::Config(format!(
                "cutoff_len must be at least 2, got {}",
                self.cutoff_len
            )));
        }
        if self.path.is_empty() {
            return Err(DataError::Config("data path is empty".into()));
        }
        if !(self.val_size >= 0.0 && self.val_size.is_finite()) {
            return Err(DataError::Config(format!(
                "val_size {} must be a share below 1 or a count of rows",
                self.val_size
            )));
        }
        for (i, source) in self.also.iter().enumerate() {
            if source.path.is_empty() {
                return Err(DataError::Config(format!("also[{i}].path is empty")));
            }
            if self.format == Format::Tokenized || source.format == Format::Tokenized {
                return Err(DataError::Config(format!(
                    "also[{i}]: tokenized rows are read from one dataset alone (they bypass \
                     the chat template the others go through); merge the files instead"
                )));
            }
        }
        if self.format == Format::Tokenized && self.overlong == Overlong::TruncatePairs {
            return Err(DataError::Config(
                "overlong = \"truncate_pairs\" needs the prompts and responses of a text format; \
                 tokenized rows are cut with \"truncate\" or left out with \"drop\""
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_pairs_needs_a_text_format() {
        let parse = |format: &str| {
            let text =
                format!(r#"{{"path": "x", "format": "{format}", "overlong": "truncate_pairs"}}"#);
            serde_json::from_str::<DataConfig>(&text).unwrap()
        };
        assert_eq!(parse("alpaca").overlong, Overlong::TruncatePairs);
        parse("alpaca").validate().unwrap();
        let err = parse("tokenized").validate().unwrap_err().to_string();
        assert!(
            err.contains("truncate_pairs") && err.contains("tokenized"),
            "{err}"
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: DataConfig = serde_json::from_str(
            r#"{"path": "x.jsonl", "format": "limo", "columns": {"question": "problem"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.columns.question, "problem");
        assert_eq!(cfg.columns.solution, "solution");
        assert_eq!(cfg.system.as_deref(), Some(LIMO_SYSTEM_PROMPT));
        assert_eq!(cfg.cutoff_len, 16384);
        assert_eq!(cfg.on_bad_row, OnBadRow::Fail);

        let null_system: DataConfig =
            serde_json::from_str(r#"{"path": "x", "format": "alpaca", "system": null}"#).unwrap();
        assert_eq!(null_system.system, None);
        // TOML has no null: `false` is none, and is how none is written.
        let no_system: DataConfig =
            toml::from_str("path = \"x\"\nformat = \"alpaca\"\nsystem = false\n").unwrap();
        assert_eq!(no_system.system, None);
        let written = toml::to_string(&no_system).unwrap();
        assert!(written.contains("system = false"), "{written}");
        assert_eq!(toml::from_str::<DataConfig>(&written).unwrap(), no_system);
        let err = toml::from_str::<DataConfig>("path = \"x\"\nformat = \"alpaca\"\nsystem = 3\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("or false for the Qwen2.5"),
            "{err}"
        );

        let err =
            serde_json::from_str::<DataConfig>(r#"{"path": "x", "format": "limo", "cutof": 1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `cutof`"), "{err}");
        let err = serde_json::from_str::<DataConfig>(
            r#"{"path": "x", "format": "limo", "columns": {"questoin": "q"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("questoin"), "{err}");
    }

    #[test]
    fn formats_parse_by_their_serde_names() {
        assert_eq!("tokenized".parse::<Format>().unwrap(), Format::Tokenized);
        let err = "csv".parse::<Format>().unwrap_err().to_string();
        assert!(
            err.contains("unknown variant `csv`, expected one of `limo`, `messages`"),
            "{err}"
        );
    }

    #[test]
    fn column_keys_are_checked() {
        let mut columns = Columns::default();
        columns.set("question", "problem").unwrap();
        assert_eq!(columns.question, "problem");
        assert!(columns.set("questoin", "x").is_err());
        assert!(columns.set("answer", "").is_err());
    }
}
