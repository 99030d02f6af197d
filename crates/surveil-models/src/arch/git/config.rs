//! GIT configuration: the Hub's `config.json` (`GitConfig` with a nested `vision_config`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ModelError, Result};

/// Activation functions used by GIT checkpoints (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU with `erf` (`"gelu"`): the BERT-style text decoder.
    Gelu,
    /// GELU with the tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// `x · σ(1.702 x)` (`"quick_gelu"`): the CLIP vision tower.
    QuickGelu,
    /// `max(x, 0)`.
    Relu,
    /// `x · σ(x)` (`"silu"`, `"swish"`).
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    /// The `hidden_act` string of a Hub `config.json`.
    pub fn hub_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }
}

fn default_vision_hidden() -> usize {
    768
}
fn default_vision_intermediate() -> usize {
    3072
}
fn default_vision_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_channels() -> usize {
    3
}
fn default_image_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    16
}
fn default_quick_gelu() -> Activation {
    Activation::QuickGelu
}
fn default_vision_eps() -> f64 {
    1e-5
}

/// The CLIP vision tower (`vision_config`). Defaults are transformers' `GitVisionConfig`
/// defaults (the git-base values), used for keys a config leaves out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GitVisionConfig {
    /// Width of the vision transformer.
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "default_vision_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Input channels (3, RGB).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Square input resolution in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Square patch size in pixels.
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: Activation,
    /// Epsilon of every vision LayerNorm and of the visual projection's LayerNorm.
    #[serde(default = "default_vision_eps")]
    pub layer_norm_eps: f64,
}

impl Default for GitVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: default_vision_hidden(),
            intermediate_size: default_vision_intermediate(),
            num_hidden_layers: default_vision_layers(),
            num_attention_heads: default_heads(),
            num_channels: default_channels(),
            image_size: default_image_size(),
            patch_size: default_patch_size(),
            hidden_act: default_quick_gelu(),
            layer_norm_eps: default_vision_eps(),
        }
    }
}

impl GitVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Image tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

fn default_vocab() -> usize {
    30522
}
fn default_text_layers() -> usize {
    6
}
fn default_max_positions() -> usize {
    1024
}
fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_text_eps() -> f64 {
    1e-12
}
fn default_absolute() -> String {
    "absolute".to_string()
}
fn default_bos() -> u32 {
    101
}
fn default_eos() -> u32 {
    102
}

/// GIT (`GitForCausalLM`) as described by the Hub's `config.json`. Keys a config leaves out take
/// transformers' `GitConfig` defaults (the git-base values); keys this implementation does not
/// use (dropout, architectures, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GitConfig {
    /// The image encoder.
    #[serde(default)]
    pub vision_config: GitVisionConfig,
    /// Vocabulary size (BERT uncased: 30522).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Width of the text decoder.
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    /// Decoder layers.
    #[serde(default = "default_text_layers")]
    pub num_hidden_layers: usize,
    /// Decoder attention heads.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Decoder MLP width.
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    /// Decoder MLP activation.
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// Text positions available (prompt + generated tokens).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Epsilon of the decoder LayerNorms.
    #[serde(default = "default_text_eps")]
    pub layer_norm_eps: f64,
    /// Only `"absolute"` is supported.
    #[serde(default = "default_absolute")]
    pub position_embedding_type: String,
    /// Temporal embeddings for video checkpoints (git-*-vatex); must be null here.
    #[serde(default)]
    pub num_image_with_embedding: Option<usize>,
    /// Whether the output head reuses the word embeddings (then `output.weight` is absent).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `[CLS]`: the first token of every caption.
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    /// `[SEP]`: generation stops here.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// `[PAD]`.
    #[serde(default)]
    pub pad_token_id: u32,
}

/// The full-size microsoft/git-base-coco configuration (177 M parameters): CLIP ViT-B/16 at
/// 224 px and a 6-layer BERT-base decoder over the uncased BERT vocabulary. These are the values
/// of transformers' `GitConfig`/`GitVisionConfig` defaults, which describe git-base; the Hub's
/// `config.json` of git-base-coco has the same architecture fields.
pub fn git_base_coco_config() -> GitConfig {
    GitConfig {
        vision_config: GitVisionConfig::default(),
        vocab_size: 30522,
        hidden_size: 768,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 3072,
        hidden_act: Activation::Gelu,
        max_position_embeddings: 1024,
        layer_norm_eps: 1e-12,
        position_embedding_type: default_absolute(),
        num_image_with_embedding: None,
        tie_word_embeddings: false,
        bos_token_id: 101,
        eos_token_id: 102,
        pad_token_id: 0,
    }
}

impl GitConfig {
    /// Read and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path.to_path_buf())
    }

    /// Parse and validate a `config.json` held in memory.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::parse(json, PathBuf::from("<GIT config JSON>"))
    }

    fn parse(json: &str, path: PathBuf) -> Result<Self> {
        let cfg: GitConfig = serde_json::from_str(json).map_err(|e| ModelError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        cfg.validate()
            .map_err(|reason| ModelError::Config { path, reason })?;
        Ok(cfg)
    }

    /// Check the values this implementation relies on; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision_config;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("`{key}` must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "`vision_config.hidden_size` {} is not a multiple of `vision_config.num_attention_heads` {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "`vision_config.image_size` {} is not a multiple of `vision_config.patch_size` {}",
                v.image_size, v.patch_size
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "`position_embedding_type` {:?} is not supported; only \"absolute\"",
                self.position_embedding_type
            ));
        }
        if let Some(n) = self.num_image_with_embedding {
            return Err(format!(
                "`num_image_with_embedding` = {n} (video GIT) is not supported; expected null"
            ));
        }
        for (key, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "`{key}` {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Image tokens the decoder sees per image (class token + patches).
    pub fn num_image_tokens(&self) -> usize {
        self.vision_config.num_positions()
    }
}

impl GitConfig {
    /// The config as a Hub `config.json`, which [`GitConfig::from_file`] reads back to the
    /// same config.
    pub fn hub_config_json(&self) -> serde_json::Value {
        let v = &self.vision_config;
        serde_json::json!({
            "architectures": ["GitForCausalLM"],
            "model_type": "git",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act.hub_name(),
            "max_position_embeddings": self.max_position_embeddings,
            "layer_norm_eps": self.layer_norm_eps,
            "position_embedding_type": self.position_embedding_type,
            "num_image_with_embedding": self.num_image_with_embedding,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "vision_config": {
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": v.hidden_act.hub_name(),
                "layer_norm_eps": v.layer_norm_eps,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_git_base_defaults() {
        let cfg =
            GitConfig::from_json(r#"{"model_type": "git", "architectures": ["GitForCausalLM"]}"#)
                .unwrap();
        assert_eq!(cfg, git_base_coco_config());
        assert_eq!(cfg.num_image_tokens(), 197);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = GitConfig::from_json(r#"{"num_image_with_embedding": 6}"#).unwrap_err();
        assert!(
            err.to_string().contains("num_image_with_embedding"),
            "{err}"
        );
        let err = GitConfig::from_json(r#"{"hidden_size": 100}"#).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
        let err = GitConfig::from_json(r#"{"vision_config": {"image_size": 100}}"#).unwrap_err();
        assert!(err.to_string().contains("patch_size"), "{err}");
        let err = GitConfig::from_json(r#"{"hidden_act": "mish"}"#).unwrap_err();
        assert!(err.to_string().contains("mish"), "{err}");
        let err = GitConfig::from_json(r#"{"eos_token_id": 40000}"#).unwrap_err();
        assert!(err.to_string().contains("eos_token_id"), "{err}");
        let err =
            GitConfig::from_json(r#"{"position_embedding_type": "relative_key"}"#).unwrap_err();
        assert!(err.to_string().contains("relative_key"), "{err}");
    }
}
