//! The keys of a LLaMA-Factory YAML, read with the types HfArgumentParser accepts.

use anyhow::{anyhow, bail};
use serde_yaml::{Number, Value};

/// The YAML's arguments, with typed getters that name the key and the file on a wrong type.
/// Numbers and booleans may be written as strings (as HfArgumentParser accepts them).
pub(super) struct Args {
    pub(super) origin: String,
    pub(super) entries: Vec<(String, Value)>,
}

impl Args {
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    pub(super) fn wrong(&self, key: &str, what: &str, value: &Value) -> anyhow::Error {
        let shown = serde_yaml::to_string(value).unwrap_or_default();
        anyhow!(
            "{}: {key}: expected {what}, got {}",
            self.origin,
            shown.trim()
        )
    }

    pub(super) fn str(&self, key: &str) -> anyhow::Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    pub(super) fn float(&self, key: &str) -> anyhow::Result<Option<f64>> {
        self.number(key, "a number", Number::as_f64)
    }

    pub(super) fn int(&self, key: &str) -> anyhow::Result<Option<i64>> {
        self.number(key, "an integer", Number::as_i64)
    }

    /// The value at `key`: a YAML number `from_number` takes, or a string that parses as one.
    fn number<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
        from_number: fn(&Number) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => from_number(n)
                .map(Some)
                .ok_or_else(|| self.wrong(key, what, v)),
            Some(v @ Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.wrong(key, what, v)),
            Some(v) => Err(self.wrong(key, what, v)),
        }
    }

    pub(super) fn uint(&self, key: &str) -> anyhow::Result<Option<u64>> {
        match self.int(key)? {
            None => Ok(None),
            Some(v) if v >= 0 => Ok(Some(v as u64)),
            Some(v) => bail!("{}: {key}: {v} must not be negative", self.origin),
        }
    }

    pub(super) fn bool(&self, key: &str) -> anyhow::Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }
}
