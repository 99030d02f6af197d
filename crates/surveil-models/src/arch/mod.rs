//! The architectures, one folder each, and the dispatch over them: configs, tensor layouts,
//! loading, the image sizes each takes ([`check_image`]), and the text side behind [`Vlm`].
//!
//! Each folder owns its config (the parser, the full-size published values and the
//! Hugging Face `config.json` writer), its tensor layout, its model and its [`Vlm`]. Adding an
//! architecture means a folder, a variant of [`ArchConfig`] and [`LoadedModel`] with one line
//! in each match below, and a registry entry ([`crate::load::registry`]).

pub mod deepseek_v3;
pub mod git;
pub mod kimi_vl;
pub mod qwen2_vl;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use surveil_memory::{estimate_with_roles, Estimate, QuantPolicy, TensorRole};

use crate::load::registry::{Architecture, ModelSpec};
use crate::load::weights::Weights;
use crate::vlm::Vlm;
use crate::Result;
use git::{GitConfig, GitModel, GitVlm};
use kimi_vl::{KimiVlConfig, KimiVlModel, KimiVlm};
use qwen2_vl::{Qwen2VlConfig, Qwen2VlModel, Qwen2VlVlm};

/// The parsed config of one architecture.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    /// GIT.
    Git(GitConfig),
    /// Qwen2-VL.
    Qwen2Vl(Box<Qwen2VlConfig>),
    /// Kimi-VL.
    KimiVl(Box<KimiVlConfig>),
}

impl ArchConfig {
    /// The published full-size config of `spec` (used for dummy weights).
    pub fn full_size(spec: &ModelSpec) -> Result<Self> {
        Ok(match spec.architecture {
            Architecture::Git => ArchConfig::Git(git::git_base_coco_config()),
            Architecture::Qwen2Vl => {
                ArchConfig::Qwen2Vl(Box::new(qwen2_vl::full_size_config(spec.id)))
            }
            Architecture::KimiVl => ArchConfig::KimiVl(Box::new(kimi_vl::kimi_vl_a3b_config()?)),
        })
    }

    /// Parse a checkpoint's `config.json` for `spec`'s architecture.
    pub fn from_file(spec: &ModelSpec, path: &Path) -> Result<Self> {
        match spec.architecture {
            Architecture::Git => Ok(ArchConfig::Git(GitConfig::from_file(path)?)),
            Architecture::Qwen2Vl => Ok(ArchConfig::Qwen2Vl(Box::new(Qwen2VlConfig::from_file(
                path,
            )?))),
            Architecture::KimiVl => {
                Ok(ArchConfig::KimiVl(Box::new(KimiVlConfig::from_file(path)?)))
            }
        }
    }

    /// What the loader makes resident under `policy`: every checkpoint tensor once per role
    /// the architecture's rules give it ([`crate::arch::git::GitRoles`], [`crate::arch::qwen2_vl::Qwen2VlRoles`],
    /// [`crate::arch::kimi_vl::KimiVlRoles`], which the loader checks every tensor against); a tied
    /// token table appears twice when it is also kept as the output head. Feed it to
    /// `surveil_memory::estimate_with_roles`.
    pub fn resident_plan(
        &self,
        policy: &QuantPolicy,
    ) -> Result<Vec<(String, Vec<usize>, TensorRole)>> {
        let rules: Box<dyn surveil_memory::TensorRules> = match self {
            ArchConfig::Git(_) => Box::new(crate::arch::git::GitRoles),
            ArchConfig::Qwen2Vl(c) => Box::new(crate::arch::qwen2_vl::Qwen2VlRoles::new(c, policy)),
            ArchConfig::KimiVl(c) => Box::new(crate::arch::kimi_vl::KimiVlRoles::new(c)?),
        };
        Ok(surveil_memory::resident_roles(
            self.tensor_layout()?,
            rules.as_ref(),
        ))
    }

    /// The estimate of [`Self::resident_plan`].
    pub fn estimate(&self, policy: &QuantPolicy) -> Result<Estimate> {
        let plan = self.resident_plan(policy)?;
        Ok(estimate_with_roles(
            plan.iter().map(|(n, s, r)| (n.as_str(), s.as_slice(), *r)),
            policy,
        ))
    }

    /// The config as a Hub-layout `config.json` (flat layout for Qwen2-VL), which
    /// [`ArchConfig::from_file`] reads back to the same config.
    pub fn hub_config_json(&self) -> serde_json::Value {
        match self {
            ArchConfig::Git(c) => c.hub_config_json(),
            ArchConfig::Qwen2Vl(c) => c.hub_config_json(),
            ArchConfig::KimiVl(c) => c.hub_config_json(),
        }
    }

    /// Every tensor name and shape of a checkpoint with this config (Hub names).
    pub fn tensor_layout(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(match self {
            ArchConfig::Git(c) => GitModel::tensor_layout(c),
            ArchConfig::Qwen2Vl(c) => qwen2_vl::tensor_layout(c),
            ArchConfig::KimiVl(c) => kimi_vl::full_tensor_layout(c)?,
        })
    }
}

/// Check an image of `width × height` against the limits `architecture`'s image processor puts
/// on every image whatever its settings (Qwen2-VL: [`qwen2_vl::check_image_size`], an aspect
/// ratio of at most [`qwen2_vl::MAX_ASPECT_RATIO`]; GIT and Kimi-VL take any non-empty image).
/// Needs no model: a caller that reads an image before loading one can refuse it in a moment
/// instead of after the load. The processors apply the same rules themselves.
///
/// # Errors
/// [`crate::ModelError::InvalidInput`] saying which limit the size breaks.
pub fn check_image(architecture: Architecture, width: u32, height: u32) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    match architecture {
        Architecture::Qwen2Vl => qwen2_vl::check_image_size(w, h),
        Architecture::Git | Architecture::KimiVl => {
            if w == 0 || h == 0 {
                return Err(crate::ModelError::InvalidInput(format!(
                    "cannot process an empty image ({w}x{h})"
                )));
            }
            Ok(())
        }
    }
}

/// A model made resident. The weights are shared: a clone is a new handle to the same model
/// (what [`crate::vlm::build_vlm`] wraps), and the memory goes back when the last handle drops.
#[derive(Clone)]
pub enum LoadedModel {
    /// GIT.
    Git(Arc<GitModel>),
    /// Qwen2-VL.
    Qwen2Vl(Arc<Qwen2VlModel>),
    /// Kimi-VL.
    KimiVl(Arc<KimiVlModel>),
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadedModel::Git(_) => f.write_str("LoadedModel::Git"),
            LoadedModel::Qwen2Vl(_) => f.write_str("LoadedModel::Qwen2Vl"),
            LoadedModel::KimiVl(_) => f.write_str("LoadedModel::KimiVl"),
        }
    }
}

impl LoadedModel {
    /// Build the model of `cfg` from `w`.
    pub fn load(cfg: &ArchConfig, w: &Weights) -> Result<Self> {
        Ok(match cfg {
            ArchConfig::Git(c) => LoadedModel::Git(Arc::new(GitModel::load(c, w)?)),
            ArchConfig::Qwen2Vl(c) => LoadedModel::Qwen2Vl(Arc::new(Qwen2VlModel::load(c, w)?)),
            ArchConfig::KimiVl(c) => LoadedModel::KimiVl(Arc::new(KimiVlModel::load(c, w)?)),
        })
    }

    /// The model behind [`Vlm`] with its text side: tokenizer and image processor found from
    /// `checkpoint_dir` (the directory of the resolved `config.json`; `None` for dummy
    /// weights) or else the asset cache `assets` (`paths.assets`), see
    /// [`crate::vlm::build_vlm`]. `device` is the model's.
    pub fn into_vlm(
        self,
        device: &Device,
        model_id: &str,
        checkpoint_dir: Option<&Path>,
        assets: &Path,
    ) -> Result<Box<dyn Vlm>> {
        Ok(match self {
            LoadedModel::Git(m) => {
                Box::new(GitVlm::load(m, model_id, checkpoint_dir, assets, device)?)
            }
            LoadedModel::Qwen2Vl(m) => Box::new(Qwen2VlVlm::load(
                m,
                model_id,
                checkpoint_dir,
                assets,
                device,
            )?),
            LoadedModel::KimiVl(m) => Box::new(KimiVlm::load(m, model_id, checkpoint_dir, assets)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_check_applies_each_architectures_limits() {
        // 4000x10: ratio 400, over Qwen2-VL's 200; GIT and Kimi-VL resize it without complaint.
        let err = check_image(Architecture::Qwen2Vl, 4000, 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4000x10") && err.contains("limit 200"),
            "{err}"
        );
        assert!(check_image(Architecture::Git, 4000, 10).is_ok());
        assert!(check_image(Architecture::KimiVl, 4000, 10).is_ok());
        for arch in [
            Architecture::Git,
            Architecture::Qwen2Vl,
            Architecture::KimiVl,
        ] {
            assert!(check_image(arch, 768, 576).is_ok(), "{arch:?}");
            assert!(check_image(arch, 0, 576).is_err(), "{arch:?}");
        }
    }
}
