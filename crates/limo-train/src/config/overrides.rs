//! `--set section.key=value`: one field of the config's TOML table replaced before it is read.

use anyhow::{bail, Context};

/// `section.key=value` (value in TOML syntax; bare words are strings).
pub(super) fn apply_override(table: &mut toml::Table, item: &str) -> anyhow::Result<()> {
    let (path, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item}: expected section.key=value"))?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed"),
        // TOML integers are i64: a longer number is not a word.
        Err(_) if is_integer(raw) => bail!("--set {item}: {} is out of range", raw.trim()),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().expect("split gives one item");
    // Every field is in a section: a bare key would be blamed on the config file.
    if parents.is_empty() {
        bail!(
            "--set {item}: expected section.key=value, e.g. train.{}=...",
            path.trim()
        );
    }
    let mut node = table;
    for key in parents {
        node = node
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {item}: {key} is not a section"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn is_integer(raw: &str) -> bool {
    let digits = raw.trim().trim_start_matches(['+', '-']);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
}
