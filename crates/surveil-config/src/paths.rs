//! Well-known locations: the asset cache filled by `scripts/setup.sh` and the Hugging Face
//! cache.

use std::path::{Path, PathBuf};

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

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The asset cache: `$SURVEIL_ASSETS`, else `~/.cache/surveil/assets`.
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("SURVEIL_ASSETS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => home().join(".cache/surveil/assets"),
    }
}

/// A file of the asset cache.
pub fn asset(relative: impl AsRef<Path>) -> PathBuf {
    assets_dir().join(relative)
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hub");
    }
    home().join(".cache/huggingface/hub")
}
