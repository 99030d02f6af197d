//! Dispatch over the implemented architectures: configs, tensor layouts, loading.

use std::path::Path;
use std::sync::Arc;

use crate::git::{git_base_coco_config, GitConfig, GitModel};
use crate::kimi_vl::{kimi_vl_a3b_vision_config, KimiVlConfig, KimiVlModel};
use crate::qwen2_vl::{qwen2_vl_2b_config, qwen2_vl_7b_config, Qwen2VlConfig, Qwen2VlModel};
use surveil_memory::{estimate_with_roles, Estimate, QuantPolicy, TensorRole};

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
    /// Kimi-VL.
    KimiVl(Box<KimiVlConfig>),
}

/// `<|media_pad|>` of the Kimi-VL tokenizer.
const KIMI_MEDIA_PLACEHOLDER: u32 = 163_605;

/// The published Kimi-VL-A3B config: MoonViT + the DeepSeek-V3-style decoder.
fn kimi_vl_a3b_config() -> Result<KimiVlConfig> {
    let text = crate::deepseek_v3::kimi_vl_a3b_text_config();
    let mut text_config = serde_json::to_value(&text)
        .map_err(|e| ModelError::InvalidInput(format!("text config: {e}")))?;
    if let Some(obj) = text_config.as_object_mut() {
        obj.insert("model_type".into(), "deepseek_v3".into());
        obj.insert(
            "eos_token_id".into(),
            serde_json::json!(text.eos_token_ids.first()),
        );
    }
    Ok(KimiVlConfig {
        vision: kimi_vl_a3b_vision_config(),
        text_hidden_size: text.hidden_size,
        text_config,
        media_placeholder_token_id: KIMI_MEDIA_PLACEHOLDER,
    })
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
            (Architecture::KimiVl, _) => Ok(ArchConfig::KimiVl(Box::new(kimi_vl_a3b_config()?))),
        }
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
    /// the architecture's rules give it ([`crate::git::GitRoles`], [`crate::qwen2_vl::Qwen2VlRoles`],
    /// [`crate::kimi_vl::KimiVlRoles`], which the loader checks every tensor against); a tied
    /// token table appears twice when it is also kept as the output head. Feed it to
    /// `surveil_memory::estimate_with_roles`.
    pub fn resident_plan(
        &self,
        policy: &QuantPolicy,
    ) -> Result<Vec<(String, Vec<usize>, TensorRole)>> {
        let rules: Box<dyn surveil_memory::TensorRules> = match self {
            ArchConfig::Git(_) => Box::new(crate::git::GitRoles),
            ArchConfig::Qwen2Vl(c) => Box::new(crate::qwen2_vl::Qwen2VlRoles::new(c, policy)),
            ArchConfig::KimiVl(c) => Box::new(crate::kimi_vl::KimiVlRoles::new(c)?),
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
        use crate::git::Activation;
        let act = |a: Activation| match a {
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        };
        match self {
            ArchConfig::Git(c) => {
                let v = &c.vision_config;
                serde_json::json!({
                    "architectures": ["GitForCausalLM"],
                    "model_type": "git",
                    "vocab_size": c.vocab_size,
                    "hidden_size": c.hidden_size,
                    "num_hidden_layers": c.num_hidden_layers,
                    "num_attention_heads": c.num_attention_heads,
                    "intermediate_size": c.intermediate_size,
                    "hidden_act": act(c.hidden_act),
                    "max_position_embeddings": c.max_position_embeddings,
                    "layer_norm_eps": c.layer_norm_eps,
                    "position_embedding_type": c.position_embedding_type,
                    "num_image_with_embedding": c.num_image_with_embedding,
                    "tie_word_embeddings": c.tie_word_embeddings,
                    "bos_token_id": c.bos_token_id,
                    "eos_token_id": c.eos_token_id,
                    "pad_token_id": c.pad_token_id,
                    "vision_config": {
                        "hidden_size": v.hidden_size,
                        "intermediate_size": v.intermediate_size,
                        "num_hidden_layers": v.num_hidden_layers,
                        "num_attention_heads": v.num_attention_heads,
                        "num_channels": v.num_channels,
                        "image_size": v.image_size,
                        "patch_size": v.patch_size,
                        "hidden_act": act(v.hidden_act),
                        "layer_norm_eps": v.layer_norm_eps,
                    },
                })
            }
            ArchConfig::Qwen2Vl(c) => {
                let (t, v) = (&c.text, &c.vision);
                serde_json::json!({
                    "architectures": ["Qwen2VLForConditionalGeneration"],
                    "model_type": "qwen2_vl",
                    "vocab_size": t.vocab_size,
                    "hidden_size": t.hidden_size,
                    "intermediate_size": t.intermediate_size,
                    "num_hidden_layers": t.num_hidden_layers,
                    "num_attention_heads": t.num_attention_heads,
                    "num_key_value_heads": t.num_key_value_heads,
                    "rms_norm_eps": t.rms_norm_eps,
                    "rope_theta": t.rope_theta,
                    "max_position_embeddings": t.max_position_embeddings,
                    "hidden_act": "silu",
                    "rope_scaling": {"type": "mrope", "mrope_section": t.mrope_section},
                    "tie_word_embeddings": c.tie_word_embeddings,
                    "image_token_id": c.image_token_id,
                    "video_token_id": c.video_token_id,
                    "vision_start_token_id": c.vision_start_token_id,
                    "vision_end_token_id": c.vision_end_token_id,
                    "bos_token_id": c.bos_token_id,
                    "eos_token_id": c.eos_token_ids.first(),
                    "vision_config": {
                        "depth": v.depth,
                        "embed_dim": v.embed_dim,
                        "num_heads": v.num_heads,
                        "mlp_ratio": v.mlp_ratio,
                        "in_chans": v.in_channels,
                        "hidden_size": v.out_hidden_size,
                        "patch_size": v.patch_size,
                        "spatial_merge_size": v.spatial_merge_size,
                        "temporal_patch_size": v.temporal_patch_size,
                        "hidden_act": "quick_gelu",
                    },
                })
            }
            ArchConfig::KimiVl(c) => {
                let v = &c.vision;
                serde_json::json!({
                    "architectures": ["KimiVLForConditionalGeneration"],
                    "model_type": "kimi_vl",
                    "media_placeholder_token_id": c.media_placeholder_token_id,
                    "vision_config": {
                        "model_type": "moonvit",
                        "patch_size": v.patch_size,
                        "init_pos_emb_height": v.init_pos_emb_height,
                        "init_pos_emb_width": v.init_pos_emb_width,
                        "num_attention_heads": v.num_attention_heads,
                        "num_hidden_layers": v.num_hidden_layers,
                        "hidden_size": v.hidden_size,
                        "intermediate_size": v.intermediate_size,
                        "merge_kernel_size": v.merge_kernel_size,
                    },
                    "text_config": c.text_config,
                })
            }
        }
    }

    /// Every tensor name and shape of a checkpoint with this config (Hub names).
    pub fn tensor_layout(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(match self {
            ArchConfig::Git(c) => GitModel::tensor_layout(c),
            ArchConfig::Qwen2Vl(c) => crate::qwen2_vl::tensor_layout(c),
            ArchConfig::KimiVl(c) => crate::kimi_vl::full_tensor_layout(c)?,
        })
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
}
