//! Resolving a data path: a local file or folder, or a Hugging Face Hub dataset id.
//!
//! `GAIR/LIMO` (or `hf://datasets/GAIR/LIMO`) is looked up in the Hub cache (`HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), laid out as `huggingface_hub` writes
//! it. With `HF_HUB_OFFLINE` set only the cache is used; otherwise the repository is listed and
//! its data files downloaded through `hf-hub` into that cache, and a failing network falls back to
//! a cached snapshot. A local path that exists always wins over a Hub id.
//!
//! Which files: every `.json`, `.jsonl`, `.ndjson` and `.parquet` file; if some of them have
//! `train` in their path (the Hub's split naming), only those.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::reader::{data_files_in, FileKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// Overrides `https://huggingface.co` (HF_ENDPOINT).
    pub endpoint: Option<String>,
}

impl HubSettings {
    /// Reads HF_HUB_CACHE (or HUGGINGFACE_HUB_CACHE), HF_HOME, XDG_CACHE_HOME, HF_HUB_OFFLINE and
    /// HF_ENDPOINT.
    pub fn from_env() -> Self {
        // huggingface_hub's order: HF_HUB_CACHE, its older name, HF_HOME/hub,
        // XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
        let var = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        let cache_dir = match (
            var("HF_HUB_CACHE").or(var("HUGGINGFACE_HUB_CACHE")),
            var("HF_HOME"),
        ) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, None) if var("XDG_CACHE_HOME").is_some() => {
                PathBuf::from(var("XDG_CACHE_HOME").unwrap_or_default()).join("huggingface/hub")
            }
            _ => hf_hub::Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        HubSettings {
            cache_dir,
            offline,
            endpoint,
        }
    }
}

/// The Hub dataset id in `spec`, if it is shaped like one (`owner/name`).
pub fn hub_dataset_id(spec: &str) -> Option<&str> {
    let id = spec.strip_prefix("hf://datasets/").unwrap_or(spec);
    let mut parts = id.split('/');
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(name), None) if valid(owner) && valid(name) => Some(id),
        _ => None,
    }
}

/// The checkpoint directory behind a model path, with a note for the log: the path itself
/// when it exists or is not shaped like a Hub id (`owner/name`), else that model's snapshot in
/// the Hub cache (`models--owner--name/snapshots/<refs/main>`, as `huggingface_hub` writes
/// it). limo does not download models: an id not in the cache comes back as given, with a
/// note saying so, for the caller's missing-config.json error.
pub fn resolve_model(path: &Path, hub: &HubSettings) -> (PathBuf, Option<String>) {
    let id = path
        .to_str()
        .filter(|_| !path.exists())
        .and_then(hub_dataset_id);
    let Some(id) = id else {
        return (path.to_path_buf(), None);
    };
    let repo = hub
        .cache_dir
        .join(format!("models--{}", id.replace('/', "--")));
    let snapshot = std::fs::read_to_string(repo.join("refs").join("main"))
        .ok()
        .map(|sha| repo.join("snapshots").join(sha.trim()))
        .filter(|dir| dir.join("config.json").exists());
    match snapshot {
        Some(dir) => {
            let note = format!("{id} from the Hub cache: {}", dir.display());
            (dir, Some(note))
        }
        None => (
            path.to_path_buf(),
            Some(format!(
                "{id} is neither a local directory nor in the Hub cache ({}); limo does not \
                 download models (huggingface-cli download {id})",
                hub.cache_dir.display()
            )),
        ),
    }
}

/// The data files behind a data path, in a fixed order.
pub fn resolve_data_files(spec: &str, hub: &HubSettings) -> Result<Vec<PathBuf>> {
    let local = Path::new(spec);
    if local.is_file() {
        return Ok(vec![local.to_path_buf()]);
    }
    if local.is_dir() {
        let files = data_files_in(local)?;
        if files.is_empty() {
            return Err(DataError::file(
                local,
                "folder holds no .json, .jsonl or .parquet files",
            ));
        }
        return Ok(files);
    }
    // is_file/is_dir say false for a path they may not look at: say why, not "no such file".
    if let Err(e) = std::fs::metadata(local) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(DataError::io(local, e));
        }
    }
    let Some(id) = hub_dataset_id(spec) else {
        return Err(DataError::file(
            local,
            "no such file or folder (and not a Hub dataset id like `GAIR/LIMO`)",
        ));
    };
    if hub.offline {
        return cached_files(id, hub).map_err(|why| {
            DataError::Hub(format!(
                "dataset `{id}` is not usable offline (HF_HUB_OFFLINE is set): {why}"
            ))
        });
    }
    match download_files(id, hub) {
        Ok(files) => Ok(files),
        Err(network) => cached_files(id, hub).map_err(|cache| {
            DataError::Hub(format!(
                "dataset `{id}`: download failed ({network}) and {cache}"
            ))
        }),
    }
}

fn cached_files(id: &str, hub: &HubSettings) -> Result<Vec<PathBuf>, String> {
    let repo_dir = hub
        .cache_dir
        .join(format!("datasets--{}", id.replace('/', "--")));
    let ref_file = repo_dir.join("refs").join("main");
    let commit = std::fs::read_to_string(&ref_file)
        .map_err(|_| format!("it is not in the Hub cache (no {})", ref_file.display()))?;
    let snapshot = repo_dir.join("snapshots").join(commit.trim());
    let files = data_files_in(&snapshot).map_err(|e| format!("cached snapshot unreadable: {e}"))?;
    let relative: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&snapshot).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let chosen = select_training_files(relative);
    if chosen.is_empty() {
        return Err(format!(
            "cached snapshot {} holds no data files",
            snapshot.display()
        ));
    }
    Ok(chosen.into_iter().map(|name| snapshot.join(name)).collect())
}

fn download_files(id: &str, hub: &HubSettings) -> Result<Vec<PathBuf>, String> {
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub.cache_dir.clone()))
            .with_progress(false);
    if let Some(endpoint) = &hub.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.dataset(id.to_string());
    let info = repo.info().map_err(|e| e.to_string())?;
    let names: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|name| FileKind::from_path(Path::new(name)).is_some())
        .collect();
    let chosen = select_training_files(names);
    if chosen.is_empty() {
        return Err("the repository holds no .json, .jsonl or .parquet files".into());
    }
    chosen
        .iter()
        .map(|name| repo.get(name).map_err(|e| format!("{name}: {e}")))
        .collect()
}

/// Keeps the training split when the files name their splits; sorted for a stable order.
fn select_training_files(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    let train: Vec<String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().contains("train"))
        .cloned()
        .collect();
    if train.is_empty() {
        names
    } else {
        train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Hub cache as huggingface_hub lays it out: blobs, refs/main, snapshots/<sha>/ with links.
    fn fake_cache(files: &[&str]) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let repo = home.path().join("hub/datasets--GAIR--LIMO");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("refs/main"), sha).unwrap();
        for (i, name) in files.iter().enumerate() {
            let blob = repo.join(format!("blobs/blob{i}"));
            std::fs::write(&blob, format!("{{\"n\": {i}}}\n")).unwrap();
            let link = repo.join("snapshots").join(sha).join(name);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&blob, &link).unwrap();
        }
        home
    }

    fn settings(home: &Path, offline: bool, endpoint: Option<&str>) -> HubSettings {
        HubSettings {
            cache_dir: home.join("hub"),
            offline,
            endpoint: endpoint.map(String::from),
        }
    }

    #[test]
    fn hub_ids_are_recognized() {
        assert_eq!(hub_dataset_id("GAIR/LIMO"), Some("GAIR/LIMO"));
        assert_eq!(hub_dataset_id("hf://datasets/GAIR/LIMO"), Some("GAIR/LIMO"));
        assert_eq!(hub_dataset_id("data/x/y.jsonl"), None);
        assert_eq!(hub_dataset_id("./a"), None);
        assert_eq!(hub_dataset_id("limo.jsonl"), None);
    }

    #[test]
    fn model_ids_resolve_to_their_cached_snapshot() {
        let home = tempfile::tempdir().unwrap();
        let hub = settings(home.path(), true, None);
        let repo = home.path().join("hub/models--Qwen--Qwen2.5-0.5B-Instruct");
        let snapshot = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        // refs/main names a snapshot without config.json: not a model, said so.
        let id = Path::new("Qwen/Qwen2.5-0.5B-Instruct");
        let (dir, note) = resolve_model(id, &hub);
        assert_eq!(dir, id);
        let note = note.unwrap();
        assert!(
            note.contains("neither a local directory nor in the Hub cache"),
            "{note}"
        );
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        let (dir, note) = resolve_model(id, &hub);
        assert_eq!(dir, snapshot);
        assert!(note.unwrap().contains("from the Hub cache"));
        // A local path that exists, or one not shaped like an id, is used as it is.
        for local in [home.path(), Path::new("a/b/c"), Path::new("model")] {
            assert_eq!(resolve_model(local, &hub), (local.to_path_buf(), None));
        }
    }

    #[test]
    fn offline_resolves_from_cache_snapshot() {
        let home = fake_cache(&["limo.jsonl", "README.md"]);
        let files = resolve_data_files("GAIR/LIMO", &settings(home.path(), true, None)).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with("limo.jsonl"));
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "{\"n\": 0}\n");
    }

    #[test]
    fn offline_prefers_train_split() {
        let home = fake_cache(&[
            "data/test-00000.parquet",
            "data/train-00001.parquet",
            "data/train-00000.parquet",
        ]);
        let files = resolve_data_files("GAIR/LIMO", &settings(home.path(), true, None)).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, vec!["train-00000.parquet", "train-00001.parquet"]);
    }

    #[test]
    fn offline_missing_dataset_is_a_clear_error() {
        let home = tempfile::tempdir().unwrap();
        let err = resolve_data_files("GAIR/LIMO", &settings(home.path(), true, None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GAIR/LIMO") && err.contains("HF_HUB_OFFLINE") && err.contains("refs"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_hub_falls_back_to_cache() {
        let home = fake_cache(&["limo.jsonl"]);
        // Port 9 (discard) on loopback: the connection is refused at once, no network needed.
        let online = settings(home.path(), false, Some("http://127.0.0.1:9"));
        let files = resolve_data_files("GAIR/LIMO", &online).unwrap();
        assert!(files[0].ends_with("limo.jsonl"));
        let empty = tempfile::tempdir().unwrap();
        let err = resolve_data_files(
            "GAIR/LIMO",
            &settings(empty.path(), false, Some("http://127.0.0.1:9")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("download failed"), "{err}");
    }

    #[test]
    fn missing_local_path_is_reported() {
        let err = resolve_data_files(
            "no/such/file.jsonl",
            &settings(Path::new("/nonexistent"), true, None),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no/such/file.jsonl") && err.contains("no such file"),
            "{err}"
        );
    }
}
