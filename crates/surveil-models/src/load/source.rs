//! Resolving a model id and a `weights` setting to the files (or dummy layout) to load.

use std::path::{Path, PathBuf};

use surveil_config::WeightsSpec;
use surveil_memory::checkpoint;

use crate::load::registry::ModelSpec;
use crate::{ModelError, Result};

/// Where a model's weights will come from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedWeights {
    /// Deterministic random weights with the real shapes; nothing is read from disk.
    Dummy,
    /// A checkpoint directory.
    Files(CheckpointFiles),
}

/// The files of one checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// The file the checkpoint is read from: `model.safetensors`, or else
    /// `model.safetensors.index.json` ([`surveil_memory::checkpoint::checkpoint_file`]).
    pub checkpoint: PathBuf,
    /// The safetensors files (one, or the shards named by the index).
    pub safetensors: Vec<PathBuf>,
    /// How it was found (`hf cache`, `directory`, `SURVEIL_MODEL_DIR`).
    pub found_in: String,
}

impl ResolvedWeights {
    /// Short description for reports: `dummy`, or the directory.
    pub fn describe(&self) -> String {
        match self {
            ResolvedWeights::Dummy => "dummy".into(),
            ResolvedWeights::Files(f) => f.dir.display().to_string(),
        }
    }
}

/// The files of the checkpoint in `dir`: `config.json` plus `model.safetensors` or the shards of
/// `model.safetensors.index.json` (read with [`surveil_memory::checkpoint::shard_paths`]: plain
/// file names next to the index, each present). `Err` lists what is missing or wrong.
pub fn checkpoint_in(
    dir: &Path,
    found_in: &str,
) -> std::result::Result<CheckpointFiles, Vec<String>> {
    let mut missing = Vec::new();
    let config = dir.join("config.json");
    if !config.is_file() {
        missing.push("config.json".to_string());
    }
    let checkpoint = checkpoint::checkpoint_file(dir);
    let safetensors = match &checkpoint {
        Some(path) if path.ends_with(checkpoint::INDEX_FILE_NAME) => {
            match checkpoint::shard_paths(path) {
                Ok(paths) => paths,
                Err(e) => {
                    missing.push(e.to_string());
                    Vec::new()
                }
            }
        }
        Some(single) => vec![single.clone()],
        None => {
            missing.push("model.safetensors (or model.safetensors.index.json)".to_string());
            Vec::new()
        }
    };
    match checkpoint {
        Some(checkpoint) if missing.is_empty() => Ok(CheckpointFiles {
            dir: dir.to_path_buf(),
            config,
            checkpoint,
            safetensors,
            found_in: found_in.to_string(),
        }),
        _ => Err(missing),
    }
}

/// Resolve `weights` for `spec`. `auto` searches the Hugging Face cache (`hub_cache`), then
/// `model_dir/<id>` (from `SURVEIL_MODEL_DIR`) — never the network. The error names the repo,
/// the files needed and every place searched.
pub fn resolve(
    spec: &ModelSpec,
    weights: &WeightsSpec,
    hub_cache: &Path,
    model_dir: Option<&Path>,
) -> Result<ResolvedWeights> {
    match weights {
        WeightsSpec::Dummy => Ok(ResolvedWeights::Dummy),
        WeightsSpec::Dir(dir) => checkpoint_in(dir, "directory")
            .map(ResolvedWeights::Files)
            .map_err(|missing| ModelError::WeightsNotFound {
                model: spec.id.to_string(),
                repo: spec.hf_repo.to_string(),
                missing: missing.join(", "),
                searched: vec![dir.display().to_string()],
            }),
        WeightsSpec::Auto => {
            let mut searched = Vec::new();
            let mut missing = Vec::new();
            let cache_dir = spec.cache_folder(hub_cache);
            match spec.cached_snapshot(hub_cache) {
                Some(snapshot) => match checkpoint_in(&snapshot, "hf cache") {
                    Ok(files) => return Ok(ResolvedWeights::Files(files)),
                    Err(m) => {
                        searched.push(snapshot.display().to_string());
                        missing = m;
                    }
                },
                None => searched.push(cache_dir.display().to_string()),
            }
            if let Some(root) = model_dir {
                let dir = root.join(spec.id);
                match checkpoint_in(&dir, "SURVEIL_MODEL_DIR") {
                    Ok(files) => return Ok(ResolvedWeights::Files(files)),
                    Err(m) => {
                        searched.push(dir.display().to_string());
                        if missing.is_empty() {
                            missing = m;
                        }
                    }
                }
            }
            if missing.is_empty() {
                missing.push("config.json".into());
                missing.push("model.safetensors (or model.safetensors.index.json)".into());
            }
            Err(ModelError::WeightsNotFound {
                model: spec.id.to_string(),
                repo: spec.hf_repo.to_string(),
                missing: missing.join(", "),
                searched,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::registry::find;

    #[test]
    fn missing_everywhere_names_repo_files_and_places() {
        let hub = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let spec = find("qwen2-vl-2b-instruct").unwrap();
        let err = resolve(spec, &WeightsSpec::Auto, hub.path(), Some(models.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Qwen/Qwen2-VL-2B-Instruct"), "{err}");
        assert!(
            err.contains("config.json") && err.contains("model.safetensors"),
            "{err}"
        );
        assert!(err.contains(&hub.path().display().to_string()), "{err}");
        assert!(err.contains(&models.path().display().to_string()), "{err}");
    }

    #[test]
    fn model_dir_and_explicit_dir() {
        let models = tempfile::tempdir().unwrap();
        let dir = models.path().join("git-base-coco");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), b"").unwrap();
        let spec = find("git-base-coco").unwrap();
        let hub = tempfile::tempdir().unwrap();
        let r = resolve(spec, &WeightsSpec::Auto, hub.path(), Some(models.path())).unwrap();
        assert!(matches!(r, ResolvedWeights::Files(ref f) if f.found_in == "SURVEIL_MODEL_DIR"));
        let r = resolve(spec, &WeightsSpec::Dir(dir.clone()), hub.path(), None).unwrap();
        assert!(matches!(r, ResolvedWeights::Files(ref f) if f.dir == dir));
        assert_eq!(
            resolve(spec, &WeightsSpec::Dummy, hub.path(), None).unwrap(),
            ResolvedWeights::Dummy
        );
    }

    #[test]
    fn index_pointing_at_missing_shard() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let spec = find("git-base-coco").unwrap();
        let err = resolve(spec, &WeightsSpec::Dir(dir.path().into()), dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    }
}
