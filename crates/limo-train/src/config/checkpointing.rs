//! `train.activation_checkpointing`: which decoder layers keep only their input in the forward
//! and run again in the backward.

use serde::{Deserialize, Serialize};

/// `true`, `false`, a number of layers, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// `true`: every layer (the default).
    #[default]
    All,
    /// `false`: none; every layer keeps all its activations.
    None,
    /// `n`: the first n layers; the others keep all their activations (their backward comes
    /// first, so that memory frees first).
    Layers(usize),
    /// `"auto"`: the fewest layers with which `limo plan` fits the run in the GPU's memory;
    /// every layer when nothing fits, and on the CPU (whose memory the plan does not model).
    Auto,
}

impl Checkpointing {
    /// Layers checkpointed of a model's `layers`, when the setting fixes it (not `"auto"`).
    pub fn fixed(self, layers: usize) -> anyhow::Result<Option<usize>> {
        Ok(match self {
            Checkpointing::All => Some(layers),
            Checkpointing::None => Some(0),
            Checkpointing::Layers(n) if n > layers => anyhow::bail!(
                "train.activation_checkpointing = {n}: the model has {layers} layers (true \
                 checkpoints all of them)"
            ),
            Checkpointing::Layers(n) => Some(n),
            Checkpointing::Auto => None,
        })
    }

    /// Whether any layer may be recomputed (the default, a count above 0, or "auto").
    pub fn any(self) -> bool {
        !matches!(self, Checkpointing::None | Checkpointing::Layers(0))
    }
}

impl From<bool> for Checkpointing {
    fn from(on: bool) -> Self {
        if on {
            Checkpointing::All
        } else {
            Checkpointing::None
        }
    }
}

impl Serialize for Checkpointing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Checkpointing::All => s.serialize_bool(true),
            Checkpointing::None => s.serialize_bool(false),
            Checkpointing::Layers(n) => s.serialize_u64(n as u64),
            Checkpointing::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Checkpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            On(bool),
            Layers(i64),
            Fraction(f64),
            Text(String),
        }
        let expected = "expected true, false, a number of layers or \"auto\"";
        match Given::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
            Given::On(on) => Ok(on.into()),
            Given::Fraction(x) => Err(serde::de::Error::custom(format!("{x}: {expected}"))),
            Given::Layers(n) => usize::try_from(n)
                .map(Checkpointing::Layers)
                .map_err(|_| serde::de::Error::custom(format!("{n}: {expected}"))),
            Given::Text(t) if t == "auto" => Ok(Checkpointing::Auto),
            Given::Text(t) => Err(serde::de::Error::custom(format!("{t:?}: {expected}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        c: Checkpointing,
    }

    #[test]
    fn every_form_reads_and_writes_back_the_same() {
        for (text, want) in [
            ("c = true", Checkpointing::All),
            ("c = false", Checkpointing::None),
            ("c = 12", Checkpointing::Layers(12)),
            ("c = 0", Checkpointing::Layers(0)),
            ("c = \"auto\"", Checkpointing::Auto),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.c, want, "{text}");
            assert_eq!(toml::to_string(&t).unwrap().trim(), text);
        }
        for (bad, named) in [
            ("c = -1", "-1: "),
            ("c = \"sometimes\"", "\"sometimes\": "),
            ("c = 1.5", "1.5: "),
        ] {
            let err = toml::from_str::<T>(bad).unwrap_err().to_string();
            assert!(err.contains(named), "{bad}: {err}");
            assert!(
                err.contains("a number of layers or \"auto\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_fixed_setting_counts_the_layers_it_checkpoints() {
        assert_eq!(Checkpointing::All.fixed(28).unwrap(), Some(28));
        assert_eq!(Checkpointing::None.fixed(28).unwrap(), Some(0));
        assert_eq!(Checkpointing::Layers(28).fixed(28).unwrap(), Some(28));
        assert_eq!(Checkpointing::Auto.fixed(28).unwrap(), None);
        let err = Checkpointing::Layers(29).fixed(28).unwrap_err().to_string();
        assert!(err.contains("= 29: the model has 28 layers"), "{err}");
        assert!(!Checkpointing::Layers(0).any() && Checkpointing::Auto.any());
    }
}
