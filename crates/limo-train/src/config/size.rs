//! Sizes in a config ("5GB", "1.5GiB", a byte count): parsed once, written back as given.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A size as the config writes it ("5GB"): parsed once when the config is read, written back
/// as the same text (so the TOML a run stores, and its hash, do not change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSize {
    text: String,
    bytes: usize,
}

impl ByteSize {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl std::str::FromStr for ByteSize {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        Ok(Self {
            bytes: parse_size(text)?,
            text: text.to_string(),
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare TOML integer is a byte count, as the same number in quotes.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Bytes(i64),
        }
        let text = match Given::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"5GB\" or a byte count")
        })? {
            Given::Text(text) => text,
            Given::Bytes(n) => n.to_string(),
        };
        text.parse()
            .map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// "5GB", "500MB", "1.5GiB" or a plain byte count.
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a size like 5GB"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!("{text:?}: unknown unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    };
    let bytes = number * scale;
    // `as` would saturate: -5GB to 0 (a file per tensor), 1e30 to usize::MAX.
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        bail!("{text:?}: a size must be at least 1 byte and at most 16 EiB");
    }
    Ok(bytes as usize)
}
