//! Reading a Hugging Face Qwen2 checkpoint directory: `config.json` plus `model.safetensors`, or
//! sharded `model-*.safetensors` listed by `model.safetensors.index.json`. Files are
//! memory-mapped; each tensor is checked against the config before it is converted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::params::{ModelWeights, ParamSpec, LM_HEAD};
use crate::{Error, Qwen2Config, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Loads config and weights from `dir`, converting every tensor to `dtype` on `device`.
pub fn load_checkpoint(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(Qwen2Config, ModelWeights)> {
    let config = Qwen2Config::from_file(&dir.join(CONFIG_FILE))?;
    let files = SafetensorFiles::open(dir)?;
    let weights = files.load_weights(&config, dtype, device)?;
    Ok((config, weights))
}

/// The memory-mapped safetensors files of one checkpoint.
pub struct SafetensorFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    /// For every tensor name, the index of the file that holds it.
    location: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        // transformers' order: a whole model.safetensors before an index beside it.
        let (paths, index) = if single.exists() {
            (vec![single], None)
        } else if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::file(&index_path, e.to_string()))?;
            let index: Index = serde_json::from_str(&text)
                .map_err(|e| Error::file(&index_path, format!("bad index: {e}")))?;
            let names: BTreeSet<&String> = index.weight_map.values().collect();
            if names.is_empty() {
                return Err(Error::file(&index_path, "bad index: weight_map is empty"));
            }
            for name in &names {
                if name.contains('/') || name.contains("..") {
                    return Err(Error::file(
                        &index_path,
                        format!("bad index: file name {name:?}"),
                    ));
                }
            }
            (
                names.into_iter().map(|n| dir.join(n)).collect::<Vec<_>>(),
                Some((index_path, index)),
            )
        } else {
            return Err(Error::file(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} found"),
            ));
        };

        let mut maps = Vec::with_capacity(paths.len());
        for path in &paths {
            let file = File::open(path).map_err(|e| Error::file(path, e.to_string()))?;
            // SAFETY: the map is read-only; a checkpoint rewritten while we train is the user's
            // error and safetensors' header check catches a shortened file.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(path, e.to_string()))?;
            maps.push(map);
        }

        let mut location: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (path, map)) in paths.iter().zip(&maps).enumerate() {
            let st = deserialize(path, map)?;
            for name in st.names() {
                if location.insert(name.to_string(), i).is_some() {
                    return Err(Error::file(
                        path,
                        format!("tensor {name} appears in two files"),
                    ));
                }
            }
        }
        if let Some((index_path, index)) = index {
            for (name, file) in &index.weight_map {
                match location.get(name) {
                    Some(&i) if paths[i].file_name().is_some_and(|f| f == file.as_str()) => {}
                    _ => {
                        return Err(Error::file(
                            &index_path,
                            format!("bad index: tensor {name} is not in {file}"),
                        ));
                    }
                }
            }
            if let Some(name) = location.keys().find(|n| !index.weight_map.contains_key(*n)) {
                return Err(Error::file(
                    &index_path,
                    format!("bad index: tensor {name} is missing from weight_map"),
                ));
            }
        }
        Ok(Self {
            paths,
            maps,
            location,
        })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.location.keys()
    }

    /// Every parameter of `config`, shape-checked, as `dtype` on `device`.
    pub fn load_weights(
        &self,
        config: &Qwen2Config,
        dtype: DType,
        device: &Device,
    ) -> Result<ModelWeights> {
        self.check_names(config)?;
        ModelWeights::build(config, |spec| {
            Ok(self.load_param(spec, dtype)?.to_device(device)?)
        })
    }

    /// Fails on a tensor that is not a parameter of `config` (a checkpoint of another model).
    pub fn check_names(&self, config: &Qwen2Config) -> Result<()> {
        let specs = ModelWeights::specs(config);
        let expected: HashMap<&str, &[usize]> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.shape.as_slice()))
            .collect();
        for (name, &file) in &self.location {
            if !expected.contains_key(name.as_str()) && !ignorable(name, config) {
                return Err(Error::file(
                    &self.paths[file],
                    format!("unexpected tensor {name} (not a parameter of this Qwen2 config)"),
                ));
            }
        }
        Ok(())
    }

    /// One parameter, shape- and dtype-checked, as `dtype` on the CPU. Reading parameters one
    /// at a time lets ZeRO-3 ranks keep only their slices.
    pub fn load_param(&self, spec: &ParamSpec, dtype: DType) -> Result<Tensor> {
        let Some(&file) = self.location.get(&spec.name) else {
            let where_ = self
                .paths
                .first()
                .map(|p| p.parent().unwrap_or(p).to_path_buf())
                .unwrap_or_default();
            return Err(Error::file(where_, format!("missing tensor {}", spec.name)));
        };
        let path = &self.paths[file];
        let tensors = deserialize(path, &self.maps[file])?;
        let view = tensors
            .tensor(&spec.name)
            .map_err(|e| Error::file(path, e.to_string()))?;
        if view.shape() != spec.shape.as_slice() {
            return Err(Error::file(
                path,
                format!(
                    "tensor {} has shape {:?}, but config.json implies {:?}",
                    spec.name,
                    view.shape(),
                    spec.shape
                ),
            ));
        }
        if !matches!(
            view.dtype(),
            Dtype::BF16 | Dtype::F16 | Dtype::F32 | Dtype::F64
        ) {
            return Err(Error::file(
                path,
                format!(
                    "tensor {} has dtype {:?}; expected bf16, f16, f32 or f64",
                    spec.name,
                    view.dtype()
                ),
            ));
        }
        let tensor = view
            .load(&Device::Cpu)
            .map_err(|e| Error::file(path, format!("tensor {}: {e}", spec.name)))?;
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// Tensors some exporters write that carry no parameters of ours.
fn ignorable(name: &str, config: &Qwen2Config) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (name == LM_HEAD && config.tie_word_embeddings)
}

fn deserialize<'a>(path: &Path, map: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(map).map_err(|e| {
        Error::file(
            path,
            format!("not a readable safetensors file (truncated or corrupt?): {e}"),
        )
    })
}
