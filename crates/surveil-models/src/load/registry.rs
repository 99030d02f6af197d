//! The models surveil knows: where each lives on the Hub, its architecture, its size, its
//! default generation settings and the files a checkpoint needs.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The network families implemented in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// GIT: CLIP ViT-B/16 + BERT-style decoder.
    Git,
    /// Qwen2-VL: ViT with 2-D RoPE + Qwen2 decoder with M-RoPE.
    Qwen2Vl,
    /// Kimi-VL: MoonViT + DeepSeek-V3-style MoE decoder.
    KimiVl,
}

impl Architecture {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Git => "git",
            Architecture::Qwen2Vl => "qwen2_vl",
            Architecture::KimiVl => "kimi_vl",
        }
    }
}

/// Generation defaults of a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GenerationDefaults {
    /// Token limit.
    pub max_new_tokens: usize,
    /// Temperature (0 = greedy).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
}

/// One entry of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelSpec {
    /// Our id (`qwen2-vl-2b-instruct`).
    pub id: &'static str,
    /// Hugging Face repository.
    pub hf_repo: &'static str,
    /// Network family.
    pub architecture: Architecture,
    /// Parameter count of the published checkpoint.
    pub parameters: u64,
    /// Generation defaults.
    pub generation: GenerationDefaults,
    /// Files besides the weights that a checkpoint directory must hold.
    pub required_files: &'static [&'static str],
}

const CAPTION: GenerationDefaults = GenerationDefaults {
    max_new_tokens: 32,
    temperature: 0.0,
    top_p: 1.0,
};
const CHAT: GenerationDefaults = GenerationDefaults {
    max_new_tokens: 512,
    temperature: 0.1,
    top_p: 0.9,
};
const THINKING: GenerationDefaults = GenerationDefaults {
    max_new_tokens: 2048,
    temperature: 0.6,
    top_p: 0.95,
};

/// Every model surveil can load. Ids and repo ids equal those of `surveil_config::KNOWN_MODELS`,
/// the one list configuration validation and [`find`] accept names from.
pub const REGISTRY: &[ModelSpec] = &[
    ModelSpec {
        id: "git-base-coco",
        hf_repo: "microsoft/git-base-coco",
        architecture: Architecture::Git,
        parameters: 176_619_066,
        generation: CAPTION,
        required_files: &["config.json"],
    },
    ModelSpec {
        id: "qwen2-vl-2b-instruct",
        hf_repo: "Qwen/Qwen2-VL-2B-Instruct",
        architecture: Architecture::Qwen2Vl,
        parameters: 2_208_985_600,
        generation: CHAT,
        required_files: &["config.json", "tokenizer.json"],
    },
    ModelSpec {
        id: "qwen2-vl-7b-instruct",
        hf_repo: "Qwen/Qwen2-VL-7B-Instruct",
        architecture: Architecture::Qwen2Vl,
        parameters: 8_291_375_616,
        generation: CHAT,
        required_files: &["config.json", "tokenizer.json"],
    },
    ModelSpec {
        id: "kimi-vl-a3b-thinking",
        hf_repo: "moonshotai/Kimi-VL-A3B-Thinking",
        architecture: Architecture::KimiVl,
        parameters: 16_407_657_472,
        generation: THINKING,
        required_files: &["config.json", "tokenizer_config.json"],
    },
    ModelSpec {
        id: "kimi-vl-a3b-thinking-2506",
        hf_repo: "moonshotai/Kimi-VL-A3B-Thinking-2506",
        architecture: Architecture::KimiVl,
        parameters: 16_407_657_472,
        generation: THINKING,
        required_files: &["config.json", "tokenizer_config.json"],
    },
    ModelSpec {
        id: "kimi-vl-a3b-instruct",
        hf_repo: "moonshotai/Kimi-VL-A3B-Instruct",
        architecture: Architecture::KimiVl,
        parameters: 16_407_657_472,
        generation: CHAT,
        required_files: &["config.json", "tokenizer_config.json"],
    },
];

/// Look a model up by our id or its Hugging Face repo id, in any letter case
/// (`microsoft/git-base-coco`, `Git-Base-Coco`); see [`surveil_config::canonical_model_id`].
/// Anything else (a path, an unknown name) never matches.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    let id = surveil_config::canonical_model_id(name)?;
    REGISTRY.iter().find(|m| m.id == id)
}

/// All ids.
pub fn ids() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.id).collect()
}

impl ModelSpec {
    /// The cache folder of this repo under a hub cache (`models--org--name`).
    pub fn cache_folder(&self, hub_cache: &Path) -> PathBuf {
        hub_cache.join(format!("models--{}", self.hf_repo.replace('/', "--")))
    }

    /// The snapshot directory in the hub cache holding this model's `config.json` at the
    /// revision `refs/main` points to, if any.
    pub fn cached_snapshot(&self, hub_cache: &Path) -> Option<PathBuf> {
        let cache = hf_hub::Cache::new(hub_cache.to_path_buf());
        let config = cache.model(self.hf_repo.to_string()).get("config.json")?;
        config.parent().map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_ids_equal_the_config_list() {
        let mut ours = ids();
        let mut config: Vec<&str> = surveil_config::KNOWN_MODEL_IDS.to_vec();
        ours.sort();
        config.sort();
        assert_eq!(ours, config);
    }

    #[test]
    fn registry_repo_ids_equal_the_config_table() {
        let ours: Vec<(&str, &str)> = REGISTRY.iter().map(|m| (m.id, m.hf_repo)).collect();
        let config: Vec<(&str, &str)> = surveil_config::KNOWN_MODELS
            .iter()
            .map(|m| (m.id, m.hf_repo))
            .collect();
        assert_eq!(ours, config);
    }

    #[test]
    fn lookup_rejects_paths() {
        assert!(find("qwen2-vl-2b-instruct").is_some());
        assert!(find("../qwen2-vl-2b-instruct").is_none());
        assert!(find("../Qwen/Qwen2-VL-2B-Instruct").is_none());
        assert!(find("models--Qwen--Qwen2-VL-2B-Instruct").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn lookup_by_repo_id_and_any_case() {
        for (name, id) in [
            ("microsoft/git-base-coco", "git-base-coco"),
            ("MICROSOFT/GIT-BASE-COCO", "git-base-coco"),
            ("Git-Base-Coco", "git-base-coco"),
            (" git-base-coco ", "git-base-coco"),
            ("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b-instruct"),
            ("qwen/qwen2-vl-7b-instruct", "qwen2-vl-7b-instruct"),
            ("moonshotai/Kimi-VL-A3B-Thinking", "kimi-vl-a3b-thinking"),
            (
                "moonshotai/Kimi-VL-A3B-Thinking-2506",
                "kimi-vl-a3b-thinking-2506",
            ),
            ("KIMI-VL-A3B-INSTRUCT", "kimi-vl-a3b-instruct"),
        ] {
            assert_eq!(find(name).map(|m| m.id), Some(id), "{name}");
        }
        // A repo's owner alone, or a repo id with our id's owner, is not a model.
        assert!(find("microsoft").is_none());
        assert!(find("microsoft/qwen2-vl-2b-instruct").is_none());
    }

    #[test]
    fn cache_snapshot_resolution() {
        let hub = tempfile::tempdir().unwrap();
        let spec = find("git-base-coco").unwrap();
        assert_eq!(spec.cached_snapshot(hub.path()), None);
        let folder = spec.cache_folder(hub.path());
        let snap = folder.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(spec.cached_snapshot(hub.path()), Some(snap));
    }
}
