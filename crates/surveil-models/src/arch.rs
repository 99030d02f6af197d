//! Dispatch over the implemented architectures: configs, tensor layouts, loading.

use std::path::Path;

use crate::git::{git_base_coco_config, GitConfig, GitModel};
use crate::qwen2_vl::{qwen2_vl_2b_config, qwen2_vl_7b_config, Qwen2VlConfig, Qwen2VlModel};
use crate::registry::{Architecture, ModelSpec};
use crate::weights::Weights;
use crate::{ModelError, Result};

/// The parsed config of one architecture.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    /// GIT.
    Git(GitConfig),
    /// Qwen2-VL.
    Qwen2Vl(Box<Qwen2VlConfig>),
}

fn unsupported(spec: &ModelSpec) -> ModelError {
    ModelError::Unsupported(format!(
        "{} ({}) uses the {} architecture, which this build does not implement yet; \
         implemented: git (git-base-coco), qwen2_vl (qwen2-vl-2b-instruct, qwen2-vl-7b-instruct)",
        spec.id,
        spec.hf_repo,
        spec.architecture.name()
    ))
}

impl ArchConfig {
    /// The published full-size config of `spec` (used for dummy weights).
    pub fn full_size(spec: &ModelSpec) -> Result<Self> {
        match (spec.architecture, spec.id) {
            (Architecture::Git, _) => Ok(ArchConfig::Git(git_base_coco_config())),
            (Architecture::Qwen2Vl, "qwen2-vl-7b-instruct") => {
                Ok(ArchConfig::Qwen2Vl(Box::new(qwen2_vl_7b_config())))
            }
            (Architecture::Qwen2Vl, _) => Ok(ArchConfig::Qwen2Vl(Box::new(qwen2_vl_2b_config()))),
            (Architecture::KimiVl, _) => Err(unsupported(spec)),
        }
    }

    /// Parse a checkpoint's `config.json` for `spec`'s architecture.
    pub fn from_file(spec: &ModelSpec, path: &Path) -> Result<Self> {
        match spec.architecture {
            Architecture::Git => Ok(ArchConfig::Git(GitConfig::from_file(path)?)),
            Architecture::Qwen2Vl => Ok(ArchConfig::Qwen2Vl(Box::new(Qwen2VlConfig::from_file(
                path,
            )?))),
            Architecture::KimiVl => Err(unsupported(spec)),
        }
    }

    /// What the loader makes resident: the checkpoint layout plus a quantized copy of the
    /// token table when the output head is tied to it (the table stays a float lookup table,
    /// the head becomes a quantized matmul). Feed this to `surveil_memory::estimate_tensors`.
    pub fn resident_layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut layout = self.tensor_layout();
        if let ArchConfig::Qwen2Vl(c) = self {
            if c.tie_word_embeddings {
                layout.push((
                    "lm_head.weight".to_string(),
                    vec![c.text.vocab_size, c.text.hidden_size],
                ));
            }
        }
        layout
    }

    /// Every tensor name and shape of a checkpoint with this config (Hub names).
    pub fn tensor_layout(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            ArchConfig::Git(c) => GitModel::tensor_layout(c),
            ArchConfig::Qwen2Vl(c) => crate::qwen2_vl::tensor_layout(c),
        }
    }
}

/// A model made resident.
pub enum LoadedModel {
    /// GIT.
    Git(Box<GitModel>),
    /// Qwen2-VL.
    Qwen2Vl(Box<Qwen2VlModel>),
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadedModel::Git(_) => f.write_str("LoadedModel::Git"),
            LoadedModel::Qwen2Vl(_) => f.write_str("LoadedModel::Qwen2Vl"),
        }
    }
}

impl LoadedModel {
    /// Build the model of `cfg` from `w`.
    pub fn load(cfg: &ArchConfig, w: &Weights) -> Result<Self> {
        Ok(match cfg {
            ArchConfig::Git(c) => LoadedModel::Git(Box::new(GitModel::load(c, w)?)),
            ArchConfig::Qwen2Vl(c) => LoadedModel::Qwen2Vl(Box::new(Qwen2VlModel::load(c, w)?)),
        })
    }
}
