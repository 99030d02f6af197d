//! Kimi-VL configuration: the Hub `KimiVLConfig` layout (`vision_config` with the MoonViT
//! fields, `text_config` with the DeepSeek-V3 fields, `media_placeholder_token_id`) read into
//! loose `Raw*` structs and validated once into [`KimiVlConfig`].
//!
//! The text side is kept as the raw JSON value (`text_config`) for the decoder's own parser;
//! only `hidden_size` is read here because the projector's output width depends on it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::tokenizer::KimiSpecialIds;
use crate::{ModelError, Result};

/// The MoonViT vision tower and its 2×2 patch merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoonVitConfig {
    /// Side of a square patch in pixels (14).
    pub patch_size: usize,
    /// Rows of the learned position-embedding grid.
    pub init_pos_emb_height: usize,
    /// Columns of the learned position-embedding grid.
    pub init_pos_emb_width: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Encoder blocks.
    pub num_hidden_layers: usize,
    /// Width of the vision transformer.
    pub hidden_size: usize,
    /// Hidden width of the block MLP.
    pub intermediate_size: usize,
    /// Patches merged into one text token: `[rows, cols]` (`[2, 2]`).
    pub merge_kernel_size: [usize; 2],
}

impl MoonVitConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Values per flattened patch: `3 × patch_size²` (588).
    pub fn patch_dim(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    /// Patches merged into one text token (`kh × kw`, 4).
    pub fn merge_unit(&self) -> usize {
        self.merge_kernel_size[0] * self.merge_kernel_size[1]
    }

    /// Check the relations the tower relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("patch_size", self.patch_size),
            ("init_pos_emb_height", self.init_pos_emb_height),
            ("init_pos_emb_width", self.init_pos_emb_width),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("merge_kernel_size[0]", self.merge_kernel_size[0]),
            ("merge_kernel_size[1]", self.merge_kernel_size[1]),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, x)| *x == 0) {
            return Err(format!("`vision_config.{name}` must be positive"));
        }
        // The 2-D rotary embedding rotates pairs, half of them by the column, half by the row.
        if !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(4)
        {
            return Err(format!(
                "vision hidden_size {} / num_attention_heads {} must give a head size divisible by 4",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// A complete, validated Kimi-VL configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KimiVlConfig {
    /// The vision tower.
    pub vision: MoonVitConfig,
    /// The decoder's `text_config` as written in `config.json` (DeepSeek-V3 fields), for
    /// `DeepseekV3Config::from_value`.
    pub text_config: serde_json::Value,
    /// `text_config.hidden_size`: the projector's output width.
    pub text_hidden_size: usize,
    /// The token id whose positions receive the image features (`<|media_pad|>`).
    pub media_placeholder_token_id: u32,
}

#[derive(Debug, Default, Deserialize)]
struct RawVision {
    patch_size: Option<usize>,
    init_pos_emb_height: Option<usize>,
    init_pos_emb_width: Option<usize>,
    num_attention_heads: Option<usize>,
    num_hidden_layers: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    merge_kernel_size: Option<Vec<usize>>,
    model_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTop {
    model_type: Option<String>,
    vision_config: Option<RawVision>,
    text_config: Option<serde_json::Value>,
    media_placeholder_token_id: Option<u32>,
}

impl KimiVlConfig {
    /// Read and validate a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::error::parse_config_file(path, Self::from_json_str)
    }

    /// Parse and validate a config from JSON text.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let raw: RawTop =
            serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        Self::from_raw(raw).map_err(bad)
    }

    fn from_raw(raw: RawTop) -> std::result::Result<Self, String> {
        if let Some(mt) = &raw.model_type {
            if mt != "kimi_vl" {
                return Err(format!("model_type is `{mt}`, expected `kimi_vl`"));
            }
        }
        let v = raw.vision_config.ok_or("missing `vision_config`")?;
        if let Some(mt) = &v.model_type {
            if mt != "moonvit" {
                return Err(format!(
                    "vision_config.model_type is `{mt}`, expected `moonvit`"
                ));
            }
        }
        let need = |x: Option<usize>, name: &str| {
            x.ok_or_else(|| format!("missing `vision_config.{name}`"))
        };
        let merge = v.merge_kernel_size.unwrap_or_else(|| vec![2, 2]);
        let merge_kernel_size: [usize; 2] = merge.as_slice().try_into().map_err(|_| {
            format!("vision_config.merge_kernel_size must have 2 entries, got {merge:?}")
        })?;
        let vision = MoonVitConfig {
            patch_size: v.patch_size.unwrap_or(14),
            init_pos_emb_height: need(v.init_pos_emb_height, "init_pos_emb_height")?,
            init_pos_emb_width: need(v.init_pos_emb_width, "init_pos_emb_width")?,
            num_attention_heads: need(v.num_attention_heads, "num_attention_heads")?,
            num_hidden_layers: need(v.num_hidden_layers, "num_hidden_layers")?,
            hidden_size: need(v.hidden_size, "hidden_size")?,
            intermediate_size: need(v.intermediate_size, "intermediate_size")?,
            merge_kernel_size,
        };
        let text_config = raw.text_config.ok_or("missing `text_config`")?;
        let text_hidden_size = text_config
            .get("hidden_size")
            .and_then(serde_json::Value::as_u64)
            .ok_or("missing `text_config.hidden_size`")? as usize;
        let cfg = KimiVlConfig {
            vision,
            text_config,
            text_hidden_size,
            media_placeholder_token_id: raw
                .media_placeholder_token_id
                .ok_or("missing `media_placeholder_token_id`")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the relations the architecture relies on. Called by the parsers; call it yourself
    /// after building a config by hand.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.vision.validate()?;
        if self.text_hidden_size == 0 {
            return Err("`text_config.hidden_size` must be positive".into());
        }
        if let Some(vocab) = self
            .text_config
            .get("vocab_size")
            .and_then(serde_json::Value::as_u64)
        {
            if u64::from(self.media_placeholder_token_id) >= vocab {
                return Err(format!(
                    "media_placeholder_token_id {} is outside the vocabulary ({vocab})",
                    self.media_placeholder_token_id
                ));
            }
        }
        Ok(())
    }
}

fn bad(reason: String) -> ModelError {
    ModelError::Config {
        path: "kimi-vl config.json".into(),
        reason,
    }
}

/// The MoonViT of `moonshotai/Kimi-VL-A3B-Instruct` / `-Thinking`: hidden 1152, 27 blocks,
/// 16 heads (head dim 72), MLP 4304, patch 14, learned position grid 64 × 64, merge 2 × 2.
///
/// Values are the defaults of the Hub's `MoonViTConfig` as mirrored by public inference
/// engines (vLLM's `configs/moonvit.py`); the Hub `config.json` itself was not read.
pub fn kimi_vl_a3b_vision_config() -> MoonVitConfig {
    MoonVitConfig {
        patch_size: 14,
        init_pos_emb_height: 64,
        init_pos_emb_width: 64,
        num_attention_heads: 16,
        num_hidden_layers: 27,
        hidden_size: 1152,
        intermediate_size: 4304,
        merge_kernel_size: [2, 2],
    }
}

/// The published Kimi-VL-A3B config: [`kimi_vl_a3b_vision_config`], the DeepSeek-V3-style
/// decoder of [`crate::arch::deepseek_v3::kimi_vl_a3b_text_config`] and `<|media_pad|>` as the
/// image placeholder.
pub fn kimi_vl_a3b_config() -> Result<KimiVlConfig> {
    let text = crate::arch::deepseek_v3::kimi_vl_a3b_text_config();
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
        media_placeholder_token_id: KimiSpecialIds::MEDIA_PAD,
    })
}

/// Every tensor of the vision tower and projector of a Hub Kimi-VL checkpoint with its shape,
/// in the Hub's names (`vision_tower.*`, `multi_modal_projector.*`); `text_hidden_size` is the
/// projector's output width. The decoder's tensors (`language_model.*`) are not listed.
pub fn tensor_layout(vision: &MoonVitConfig, text_hidden_size: usize) -> Vec<(String, Vec<usize>)> {
    let v = vision;
    let e = v.hidden_size;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
    add(
        "vision_tower.patch_embed.proj.weight".into(),
        vec![e, 3, v.patch_size, v.patch_size],
    );
    add("vision_tower.patch_embed.proj.bias".into(), vec![e]);
    add(
        "vision_tower.patch_embed.pos_emb.weight".into(),
        vec![v.init_pos_emb_height, v.init_pos_emb_width, e],
    );
    for i in 0..v.num_hidden_layers {
        let p = format!("vision_tower.encoder.blocks.{i}");
        for norm in ["norm0", "norm1"] {
            add(format!("{p}.{norm}.weight"), vec![e]);
            add(format!("{p}.{norm}.bias"), vec![e]);
        }
        add(format!("{p}.wqkv.weight"), vec![3 * e, e]);
        add(format!("{p}.wqkv.bias"), vec![3 * e]);
        add(format!("{p}.wo.weight"), vec![e, e]);
        add(format!("{p}.wo.bias"), vec![e]);
        add(format!("{p}.mlp.fc0.weight"), vec![v.intermediate_size, e]);
        add(format!("{p}.mlp.fc0.bias"), vec![v.intermediate_size]);
        add(format!("{p}.mlp.fc1.weight"), vec![e, v.intermediate_size]);
        add(format!("{p}.mlp.fc1.bias"), vec![e]);
    }
    add(
        "vision_tower.encoder.final_layernorm.weight".into(),
        vec![e],
    );
    add("vision_tower.encoder.final_layernorm.bias".into(), vec![e]);
    let m = e * v.merge_unit();
    add("multi_modal_projector.pre_norm.weight".into(), vec![e]);
    add("multi_modal_projector.pre_norm.bias".into(), vec![e]);
    add("multi_modal_projector.linear_1.weight".into(), vec![m, m]);
    add("multi_modal_projector.linear_1.bias".into(), vec![m]);
    add(
        "multi_modal_projector.linear_2.weight".into(),
        vec![text_hidden_size, m],
    );
    add(
        "multi_modal_projector.linear_2.bias".into(),
        vec![text_hidden_size],
    );
    out
}

/// Every tensor of a Hub Kimi-VL checkpoint: [`tensor_layout`] of the vision side followed by
/// the decoder's tensors under `language_model.` (`text_config` parsed by
/// [`crate::arch::deepseek_v3::DeepseekV3Config::from_value`]).
pub fn full_tensor_layout(cfg: &KimiVlConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let text = crate::arch::deepseek_v3::DeepseekV3Config::from_value(&cfg.text_config)?;
    let mut out = tensor_layout(&cfg.vision, cfg.text_hidden_size);
    out.extend(crate::arch::deepseek_v3::tensor_layout_with_prefix(
        &text,
        "language_model.",
    ));
    Ok(out)
}

impl KimiVlConfig {
    /// The config as a Hub `config.json`, which [`KimiVlConfig::from_file`] reads back to the
    /// same config.
    pub fn hub_config_json(&self) -> serde_json::Value {
        let v = &self.vision;
        serde_json::json!({
            "architectures": ["KimiVLForConditionalGeneration"],
            "model_type": "kimi_vl",
            "media_placeholder_token_id": self.media_placeholder_token_id,
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
            "text_config": self.text_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3b_vision_validates_and_counts_parameters() {
        let v = kimi_vl_a3b_vision_config();
        v.validate().unwrap();
        assert_eq!(v.head_dim(), 72);
        let params: usize = tensor_layout(&v, 2048)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // MoonViT 416.9 M parameters (the paper's "400M"), projector 30.7 M.
        assert_eq!(params, 447_545_840);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let mut v = kimi_vl_a3b_vision_config();
        v.num_attention_heads = 5;
        assert!(v.validate().unwrap_err().contains("num_attention_heads"));
        let mut v = kimi_vl_a3b_vision_config();
        v.merge_kernel_size = [0, 2];
        assert!(v.validate().unwrap_err().contains("merge_kernel_size"));
        let err = KimiVlConfig::from_json_str("{\"model_type\": \"llama\"}").unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let err = KimiVlConfig::from_json_str(
            "{\"vision_config\": {\"init_pos_emb_height\": 4, \"init_pos_emb_width\": 4, \
             \"num_attention_heads\": 2, \"hidden_size\": 32, \"intermediate_size\": 64}, \
             \"text_config\": {\"hidden_size\": 64}, \"media_placeholder_token_id\": 3}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
        let err = KimiVlConfig::from_json_str(
            "{\"vision_config\": {\"init_pos_emb_height\": 4, \"init_pos_emb_width\": 4, \
             \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"hidden_size\": 32, \
             \"intermediate_size\": 64}, \"text_config\": {\"hidden_size\": 64, \
             \"vocab_size\": 10}, \"media_placeholder_token_id\": 10}",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("media_placeholder_token_id"),
            "{err}"
        );
    }
}
