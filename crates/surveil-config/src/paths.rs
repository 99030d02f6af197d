//! Where things are on disk: the Hugging Face hub cache, a directory of local checkpoints and
//! the asset cache filled by `scripts/setup.sh` (sample video, detector, tokenizers).
//!
//! The configuration resolves them once, into [`PathsConfig`] (`SystemConfig::paths`, section
//! `[paths]`): `--set paths.<key>=...` first, then the environment variables the tools share
//! (`HF_HUB_CACHE`, else `HF_HOME` + `/hub`; `SURVEIL_MODEL_DIR`; `SURVEIL_ASSETS`; empty ones
//! count as unset) or `SURVEIL_PATHS__<KEY>`, then a profile file, then the defaults under the
//! home directory. `surveil config show` says which. Code holding a configuration takes paths
//! from it and reads none of these variables.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// One file of the asset cache, as `scripts/setup.sh` installs it.
#[derive(Debug, Clone, Copy)]
pub struct AssetFile {
    /// Path relative to the asset cache.
    pub path: &'static str,
    /// What it is for.
    pub purpose: &'static str,
    /// Whether setup fails without it.
    pub required: bool,
}

/// Every file `scripts/setup.sh` puts in the asset cache.
pub const ASSET_FILES: &[AssetFile] = &[
    AssetFile {
        path: "video/vtest.avi",
        purpose: "sample footage (768x576, 795 frames)",
        required: true,
    },
    AssetFile {
        path: "video/bikes.mp4",
        purpose: "small H.264 clip",
        required: false,
    },
    AssetFile {
        path: "yolov3-tiny/yolov3-tiny.weights",
        purpose: "person detector weights",
        required: true,
    },
    AssetFile {
        path: "yolov3-tiny/yolov3-tiny.cfg",
        purpose: "person detector config (trained anchor mask)",
        required: true,
    },
    AssetFile {
        path: "yolov3-tiny/coco.names",
        purpose: "detector class names",
        required: true,
    },
    AssetFile {
        path: "tokenizers/bert-base-uncased/tokenizer.json",
        purpose: "git-base-coco tokenizer",
        required: true,
    },
    AssetFile {
        path: "tokenizers/qwen2-vl/tokenizer.json",
        purpose: "Qwen2-VL tokenizer",
        required: true,
    },
    AssetFile {
        path: "tokenizers/kimi/tiktoken.model",
        purpose: "Kimi-VL tokenizer (tiktoken BPE)",
        required: true,
    },
];

/// The home directory among the variables `var` looks up: `HOME`, else `/` (as before any
/// configuration existed).
pub(crate) fn home_dir(var: impl Fn(&str) -> Option<String>) -> PathBuf {
    var("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The hub cache when nothing names one: `<home>/.cache/huggingface/hub`.
pub fn default_hub_cache(home: &Path) -> PathBuf {
    home.join(".cache/huggingface/hub")
}

/// The asset cache when nothing names one: `<home>/.cache/surveil/assets`.
pub fn default_assets(home: &Path) -> PathBuf {
    home.join(".cache/surveil/assets")
}

/// The `[paths]` section as written: each path, or absent for its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawPathsConfig {
    /// The Hugging Face hub cache; absent: [`default_hub_cache`].
    pub hub_cache: Option<PathBuf>,
    /// A directory of checkpoints, one `<model id>/` folder each; absent: none.
    pub model_dir: Option<PathBuf>,
    /// The asset cache; absent: [`default_assets`].
    pub assets: Option<PathBuf>,
}

/// Where things are, resolved: every path as the configuration gives it (a relative path is
/// relative to the working directory; `~` is not expanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathsConfig {
    /// The Hugging Face hub cache searched for checkpoints
    /// (`models--<org>--<name>/snapshots/<revision>/`).
    pub hub_cache: PathBuf,
    /// A directory searched for `<model id>/` (config.json and safetensors) after the hub
    /// cache; `None`: no such directory.
    pub model_dir: Option<PathBuf>,
    /// The asset cache: sample footage, the detector's files, tokenizers ([`ASSET_FILES`]).
    pub assets: PathBuf,
}

impl PathsConfig {
    /// A file or folder of the asset cache, e.g. `yolov3-tiny` or `video/vtest.avi`.
    pub fn asset(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.assets.join(relative)
    }
}

impl RawPathsConfig {
    /// Absent paths get their defaults under `home`; a path given as empty text is refused
    /// (`rule(key, value, rule)` builds the error).
    pub(crate) fn resolve(
        self,
        home: &Path,
        rule: &impl Fn(&str, String, String) -> ConfigError,
    ) -> Result<PathsConfig, ConfigError> {
        for (key, path) in [
            ("paths.hub_cache", &self.hub_cache),
            ("paths.model_dir", &self.model_dir),
            ("paths.assets", &self.assets),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(rule(
                    key,
                    "\"\"".to_string(),
                    "must be a path; leave the key out for its default".to_string(),
                ));
            }
        }
        Ok(self.with_defaults(home))
    }

    /// Every absent path replaced by its default under `home`.
    pub(crate) fn with_defaults(self, home: &Path) -> PathsConfig {
        PathsConfig {
            hub_cache: self.hub_cache.unwrap_or_else(|| default_hub_cache(home)),
            model_dir: self.model_dir,
            assets: self.assets.unwrap_or_else(|| default_assets(home)),
        }
    }
}

/// The paths this process's environment gives, without a profile or flags: what
/// `SystemConfig::paths` holds when neither sets them. For tests, examples and benchmarks
/// that have no configuration; a command takes its paths from its configuration.
pub fn from_environment() -> PathsConfig {
    crate::ConfigLoader::new().environment_paths()
}

/// The asset cache this process's environment gives ([`from_environment`]): `SURVEIL_ASSETS`,
/// else `~/.cache/surveil/assets`.
pub fn assets_dir() -> PathBuf {
    from_environment().assets
}

/// A file of the asset cache this process's environment gives ([`assets_dir`]).
pub fn asset(relative: impl AsRef<Path>) -> PathBuf {
    assets_dir().join(relative)
}
