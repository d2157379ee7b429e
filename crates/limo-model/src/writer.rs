//! Writing weights in Hugging Face layout: `model.safetensors` when everything fits one shard,
//! else `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`. Tensors are
//! added one at a time and a shard is written as soon as it is full, so memory stays bounded by
//! one shard whatever the model size.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::json;

use crate::checkpoint::{INDEX_FILE, SINGLE_FILE};
use crate::{Error, Result};

pub struct ShardedWriter {
    dir: PathBuf,
    max_shard_bytes: usize,
    pending: Vec<(String, Tensor)>,
    pending_bytes: usize,
    /// Written shards: temporary path and the tensor names it holds.
    shards: Vec<(PathBuf, Vec<String>)>,
    total_bytes: usize,
}

impl ShardedWriter {
    /// Writes into `dir` (created if missing); a shard holds at most `max_shard_bytes` unless
    /// one tensor alone is larger.
    pub fn new(dir: &Path, max_shard_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_shard_bytes: max_shard_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
            total_bytes: 0,
        })
    }

    /// Adds a tensor, already in its output dtype.
    pub fn add(&mut self, name: &str, tensor: Tensor) -> Result<()> {
        let bytes = tensor.elem_count() * tensor.dtype().size_in_bytes();
        if !self.pending.is_empty() && self.pending_bytes + bytes > self.max_shard_bytes {
            self.flush()?;
        }
        self.pending.push((name.to_string(), tensor));
        self.pending_bytes += bytes;
        self.total_bytes += bytes;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!(".shard-{}.safetensors.tmp", self.shards.len()));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let data = self.pending.iter().map(|(n, t)| (n.as_str(), t));
        safetensors::serialize_to_file(data, Some(metadata), &path)
            .map_err(|e| Error::file(&path, e.to_string()))?;
        let names = self.pending.drain(..).map(|(n, _)| n).collect();
        self.shards.push((path, names));
        self.pending_bytes = 0;
        Ok(())
    }

    /// Writes the last shard, gives the shards their final names and writes the index.
    pub fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() || self.shards.is_empty() {
            self.flush()?;
        }
        let count = self.shards.len();
        if count == 1 {
            let (tmp, _) = &self.shards[0];
            let target = self.dir.join(SINGLE_FILE);
            return publish(tmp, &target);
        }
        let mut weight_map = BTreeMap::new();
        for (k, (tmp, names)) in self.shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, count);
            let target = self.dir.join(&file);
            publish(tmp, &target)?;
            for name in names {
                weight_map.insert(name.clone(), file.clone());
            }
        }
        let index = json!({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map});
        write_json(&self.dir.join(INDEX_FILE), &index)
    }
}

/// Renames a finished shard into place, readable by everyone (0644) as other tools write model
/// files: the safetensors writer creates its file private to the owner.
fn publish(tmp: &Path, target: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::file(tmp, e.to_string()))?;
    }
    std::fs::rename(tmp, target).map_err(|e| Error::file(target, e.to_string()))
}

/// Writes pretty JSON the way transformers does (2-space indent).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::file(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::file(path, e.to_string()))
}
