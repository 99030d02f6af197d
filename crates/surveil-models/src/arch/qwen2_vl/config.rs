//! Qwen2-VL configuration: one validated [`Qwen2VlConfig`] from either `config.json` layout.
//!
//! Two layouts exist in the wild:
//! - the **flat** layout of the Hub checkpoints (transformers v4): text fields at the top level,
//!   `rope_theta`, `rope_scaling: {"type": "mrope", "mrope_section": [...]}`, and a
//!   `vision_config` with `embed_dim`, `in_chans`, `hidden_size` (= the text width);
//! - the **nested** layout transformers v5 writes: `text_config` (with `rope_parameters`
//!   holding `rope_theta` and `mrope_section`), `vision_config` with `in_channels`, and the
//!   special token ids at the top level.
//!
//! Both are read into loose `Raw*` structs and then validated once into the plain config types
//! below; code after [`Qwen2VlConfig::from_json_str`] never re-checks.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// The text decoder (Qwen2 with multimodal RoPE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextConfig {
    /// Vocabulary size (rows of the embedding table and of the output head).
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// How the `head_dim / 2` rotary frequencies are split between the temporal, height and
    /// width position axes.
    pub mrope_section: [usize; 3],
    /// Longest context the model was trained for; prompts + generation must fit.
    pub max_position_embeddings: usize,
}

impl TextConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The vision tower (ViT with 2-D rotary positions and a 2×2 patch merger).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VisionConfig {
    /// Number of transformer blocks.
    pub depth: usize,
    /// Width of the vision transformer.
    pub embed_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width = `embed_dim * mlp_ratio`.
    pub mlp_ratio: f64,
    /// Image channels (3).
    pub in_channels: usize,
    /// Output width of the merger (= the text hidden size).
    pub out_hidden_size: usize,
    /// Spatial patch side in pixels (14).
    pub patch_size: usize,
    /// Side of the square of patches merged into one token (2).
    pub spatial_merge_size: usize,
    /// Frames per temporal patch (2).
    pub temporal_patch_size: usize,
    /// Base of the 2-D rotary embedding.
    pub rope_theta: f64,
}

impl VisionConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Hidden width of the block MLP.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Values per flattened patch: `in_channels * temporal_patch_size * patch_size²` (1176).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches merged into one text token (`spatial_merge_size²`, 4).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

/// A complete, validated Qwen2-VL configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Qwen2VlConfig {
    /// Text decoder.
    pub text: TextConfig,
    /// Vision tower.
    pub vision: VisionConfig,
    /// Whether the output head reuses `model.embed_tokens.weight` (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// `<|image_pad|>`.
    pub image_token_id: u32,
    /// `<|video_pad|>`.
    pub video_token_id: u32,
    /// `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>`.
    pub vision_end_token_id: u32,
    /// `bos_token_id` of the config (`<|endoftext|>` for Qwen2-VL), if given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of the config (one or several), used as default stop tokens.
    pub eos_token_ids: Vec<u32>,
}

// ----- raw (unvalidated) layouts -------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    mrope_section: Option<Vec<usize>>,
    rope_theta: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawText {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawVision {
    depth: Option<usize>,
    embed_dim: Option<usize>,
    num_heads: Option<usize>,
    mlp_ratio: Option<f64>,
    in_channels: Option<usize>,
    in_chans: Option<usize>,
    hidden_size: Option<usize>,
    out_hidden_size: Option<usize>,
    patch_size: Option<usize>,
    spatial_patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    hidden_act: Option<String>,
    rope_parameters: Option<RawRope>,
    rope_theta: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTop {
    text_config: Option<RawText>,
    vision_config: Option<RawVision>,
    tie_word_embeddings: Option<bool>,
    image_token_id: Option<u32>,
    video_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
    model_type: Option<String>,
    #[serde(flatten)]
    flat: RawText,
}

fn token_ids(v: &Option<serde_json::Value>) -> std::result::Result<Vec<u32>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| vec![n])
            .ok_or_else(|| format!("token id {n} is not a u32")),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("token id {x} is not a u32"))
            })
            .collect(),
        Some(other) => Err(format!("token id must be a number or a list, got {other}")),
    }
}

impl Qwen2VlConfig {
    /// Read and validate a `config.json` file (either layout).
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::error::parse_config_file(path, Self::from_json_str)
    }

    /// Parse and validate a config from JSON text (either layout).
    pub fn from_json_str(json: &str) -> Result<Self> {
        let raw: RawTop =
            serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        Self::from_raw(raw).map_err(bad)
    }

    fn from_raw(raw: RawTop) -> std::result::Result<Self, String> {
        if let Some(mt) = &raw.model_type {
            if mt != "qwen2_vl" {
                return Err(format!("model_type is `{mt}`, expected `qwen2_vl`"));
            }
        }
        let nested = raw.text_config.is_some();
        let t = raw.text_config.unwrap_or_default();
        let flat = raw.flat;
        // In the nested layout, text fields live in `text_config`; a few (eos, tie) may sit at
        // the top level in either layout.
        let tx = if nested { &t } else { &flat };
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| format!("missing `{name}` in the text config"))
        };
        let hidden_size = need(tx.hidden_size, "hidden_size")?;
        let num_attention_heads = need(tx.num_attention_heads, "num_attention_heads")?;
        let rope = if nested {
            t.rope_parameters.as_ref().or(t.rope_scaling.as_ref())
        } else {
            flat.rope_scaling.as_ref().or(flat.rope_parameters.as_ref())
        };
        let rope = rope.ok_or("missing `rope_scaling` / `rope_parameters` with `mrope_section`")?;
        let kind = rope
            .kind
            .as_deref()
            .or(rope.rope_type.as_deref())
            .unwrap_or("default");
        if !matches!(kind, "mrope" | "default") {
            return Err(format!(
                "rope type `{kind}` is not supported (expected mrope)"
            ));
        }
        if let Some(rt) = rope.rope_type.as_deref() {
            if !matches!(rt, "mrope" | "default") {
                return Err(format!(
                    "rope_type `{rt}` is not supported (expected default/mrope)"
                ));
            }
        }
        let section = rope
            .mrope_section
            .clone()
            .ok_or("rope settings have no `mrope_section`")?;
        let mrope_section: [usize; 3] = section
            .as_slice()
            .try_into()
            .map_err(|_| format!("mrope_section must have 3 entries, got {section:?}"))?;
        let rope_theta = rope
            .rope_theta
            .or(tx.rope_theta)
            .or(flat.rope_theta)
            .unwrap_or(10_000.0);
        if let Some(act) = &tx.hidden_act {
            if act != "silu" {
                return Err(format!(
                    "text hidden_act `{act}` is not supported (expected silu)"
                ));
            }
        }
        if tx.use_sliding_window == Some(true) {
            return Err("use_sliding_window=true is not supported".into());
        }
        let text = TextConfig {
            vocab_size: need(tx.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(tx.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(tx.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: tx.num_key_value_heads.unwrap_or(num_attention_heads),
            rms_norm_eps: tx.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            max_position_embeddings: tx.max_position_embeddings.unwrap_or(32_768),
        };

        let v = raw.vision_config.ok_or("missing `vision_config`")?;
        let vneed = |x: Option<usize>, name: &str| {
            x.ok_or_else(|| format!("missing `vision_config.{name}`"))
        };
        if let Some(act) = &v.hidden_act {
            if act != "quick_gelu" {
                return Err(format!(
                    "vision hidden_act `{act}` is not supported (expected quick_gelu)"
                ));
            }
        }
        let vision = VisionConfig {
            depth: vneed(v.depth, "depth")?,
            embed_dim: vneed(v.embed_dim, "embed_dim")?,
            num_heads: vneed(v.num_heads, "num_heads")?,
            mlp_ratio: v.mlp_ratio.unwrap_or(4.0),
            in_channels: v.in_channels.or(v.in_chans).unwrap_or(3),
            out_hidden_size: v.out_hidden_size.or(v.hidden_size).unwrap_or(hidden_size),
            patch_size: v.patch_size.or(v.spatial_patch_size).unwrap_or(14),
            spatial_merge_size: v.spatial_merge_size.unwrap_or(2),
            temporal_patch_size: v.temporal_patch_size.unwrap_or(2),
            rope_theta: v
                .rope_parameters
                .as_ref()
                .and_then(|r| r.rope_theta)
                .or(v.rope_theta)
                .unwrap_or(10_000.0),
        };

        let tie_word_embeddings = raw
            .tie_word_embeddings
            .or(t.tie_word_embeddings)
            .or(flat.tie_word_embeddings)
            .unwrap_or(false);
        let eos_src = if tx.eos_token_id.is_some() {
            &tx.eos_token_id
        } else {
            &flat.eos_token_id
        };
        let bos_src = if tx.bos_token_id.is_some() {
            &tx.bos_token_id
        } else {
            &flat.bos_token_id
        };
        let eos_token_ids = token_ids(eos_src)?;
        let bos_token_id = token_ids(bos_src)?.first().copied();
        let id = |x: Option<u32>, name: &str| x.ok_or_else(|| format!("missing `{name}`"));
        let cfg = Qwen2VlConfig {
            text,
            vision,
            tie_word_embeddings,
            image_token_id: id(raw.image_token_id, "image_token_id")?,
            video_token_id: id(raw.video_token_id, "video_token_id")?,
            vision_start_token_id: id(raw.vision_start_token_id, "vision_start_token_id")?,
            vision_end_token_id: id(raw.vision_end_token_id, "vision_end_token_id")?,
            bos_token_id,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the relations the architecture relies on. Called by the parsers; call it yourself
    /// after building a config by hand.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("vocab_size", t.vocab_size),
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("max_position_embeddings", t.max_position_embeddings),
            ("vision_config.depth", v.depth),
            ("vision_config.embed_dim", v.embed_dim),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.in_channels", v.in_channels),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.temporal_patch_size", v.temporal_patch_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, x)| *x == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        let half = t.head_dim() / 2;
        if !t.head_dim().is_multiple_of(2) || t.mrope_section.iter().sum::<usize>() != half {
            return Err(format!(
                "mrope_section {:?} must sum to head_dim/2 = {half}",
                t.mrope_section
            ));
        }
        if !v.embed_dim.is_multiple_of(v.num_heads) || !v.head_dim().is_multiple_of(4) {
            return Err(format!(
                "vision embed_dim {} / num_heads {} must give a head size divisible by 4",
                v.embed_dim, v.num_heads
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(format!(
                "vision_config hidden size {} differs from the text hidden_size {}",
                v.out_hidden_size, t.hidden_size
            ));
        }
        if v.mlp_ratio.is_nan() || v.mlp_ratio <= 0.0 || v.mlp_hidden() == 0 {
            return Err(format!("vision mlp_ratio {} must be positive", v.mlp_ratio));
        }
        if [t.rms_norm_eps, t.rope_theta, v.rope_theta]
            .iter()
            .any(|x| x.is_nan() || *x <= 0.0)
        {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        let special = [
            self.image_token_id,
            self.video_token_id,
            self.vision_start_token_id,
            self.vision_end_token_id,
        ];
        if let Some(bad) = special.iter().find(|&&id| id as usize >= t.vocab_size) {
            return Err(format!(
                "special token id {bad} is outside the vocabulary ({})",
                t.vocab_size
            ));
        }
        Ok(())
    }
}

fn bad(reason: String) -> ModelError {
    ModelError::Config {
        path: "qwen2-vl config.json".into(),
        reason,
    }
}

fn real_special_ids(cfg: &mut Qwen2VlConfig) {
    cfg.bos_token_id = Some(151_643);
    cfg.eos_token_ids = vec![151_645];
    cfg.vision_start_token_id = 151_652;
    cfg.vision_end_token_id = 151_653;
    cfg.image_token_id = 151_655;
    cfg.video_token_id = 151_656;
}

/// The full-size `Qwen/Qwen2-VL-2B-Instruct` configuration (flat Hub `config.json` values:
/// hidden 1536, 28 layers, 12 heads / 2 KV heads, intermediate 8960, vocab 151936,
/// rope_theta 1e6, mrope_section [16, 24, 24], tied embeddings; vision depth 32, embed 1280,
/// 16 heads, mlp_ratio 4, patch 14, merge 2, temporal patch 2).
pub fn qwen2_vl_2b_config() -> Qwen2VlConfig {
    let mut cfg = Qwen2VlConfig {
        text: TextConfig {
            vocab_size: 151_936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_hidden_layers: 28,
            num_attention_heads: 12,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            mrope_section: [16, 24, 24],
            max_position_embeddings: 32_768,
        },
        vision: VisionConfig {
            depth: 32,
            embed_dim: 1280,
            num_heads: 16,
            mlp_ratio: 4.0,
            in_channels: 3,
            out_hidden_size: 1536,
            patch_size: 14,
            spatial_merge_size: 2,
            temporal_patch_size: 2,
            rope_theta: 10_000.0,
        },
        tie_word_embeddings: true,
        image_token_id: 0,
        video_token_id: 0,
        vision_start_token_id: 0,
        vision_end_token_id: 0,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    };
    real_special_ids(&mut cfg);
    cfg
}

/// The full-size `Qwen/Qwen2-VL-7B-Instruct` configuration (hidden 3584, 28 layers, 28 heads /
/// 4 KV heads, intermediate 18944, vocab 152064, untied `lm_head`; same vision tower as 2B with
/// the merger projecting to 3584).
pub fn qwen2_vl_7b_config() -> Qwen2VlConfig {
    let mut cfg = qwen2_vl_2b_config();
    cfg.text.vocab_size = 152_064;
    cfg.text.hidden_size = 3584;
    cfg.text.intermediate_size = 18_944;
    cfg.text.num_attention_heads = 28;
    cfg.text.num_key_value_heads = 4;
    cfg.vision.out_hidden_size = 3584;
    cfg.tie_word_embeddings = false;
    cfg
}

/// The full-size config of the registry model `model_id`: [`qwen2_vl_7b_config`] for
/// `qwen2-vl-7b-instruct`, else [`qwen2_vl_2b_config`].
pub fn full_size_config(model_id: &str) -> Qwen2VlConfig {
    match model_id {
        "qwen2-vl-7b-instruct" => qwen2_vl_7b_config(),
        _ => qwen2_vl_2b_config(),
    }
}

/// Every tensor of a Hub Qwen2-VL checkpoint with its shape, in the Hub's names
/// (`model.*`, `visual.*`, `lm_head.weight` when untied). Used for dummy weights and for size
/// estimates.
pub fn tensor_layout(cfg: &Qwen2VlConfig) -> Vec<(String, Vec<usize>)> {
    let t = &cfg.text;
    let v = &cfg.vision;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
    let h = t.hidden_size;
    let kv = t.num_key_value_heads * t.head_dim();
    add("model.embed_tokens.weight".into(), vec![t.vocab_size, h]);
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![h]);
        add(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        add(format!("{p}.self_attn.q_proj.weight"), vec![h, h]);
        add(format!("{p}.self_attn.q_proj.bias"), vec![h]);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
        add(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
        add(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
        add(format!("{p}.self_attn.o_proj.weight"), vec![h, h]);
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![t.intermediate_size, h],
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![t.intermediate_size, h],
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, t.intermediate_size],
        );
    }
    add("model.norm.weight".into(), vec![h]);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![t.vocab_size, h]);
    }
    let e = v.embed_dim;
    add(
        "visual.patch_embed.proj.weight".into(),
        vec![
            e,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
    );
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        add(format!("{p}.norm1.weight"), vec![e]);
        add(format!("{p}.norm1.bias"), vec![e]);
        add(format!("{p}.norm2.weight"), vec![e]);
        add(format!("{p}.norm2.bias"), vec![e]);
        add(format!("{p}.attn.qkv.weight"), vec![3 * e, e]);
        add(format!("{p}.attn.qkv.bias"), vec![3 * e]);
        add(format!("{p}.attn.proj.weight"), vec![e, e]);
        add(format!("{p}.attn.proj.bias"), vec![e]);
        add(format!("{p}.mlp.fc1.weight"), vec![v.mlp_hidden(), e]);
        add(format!("{p}.mlp.fc1.bias"), vec![v.mlp_hidden()]);
        add(format!("{p}.mlp.fc2.weight"), vec![e, v.mlp_hidden()]);
        add(format!("{p}.mlp.fc2.bias"), vec![e]);
    }
    let m = e * v.merge_unit();
    add("visual.merger.ln_q.weight".into(), vec![e]);
    add("visual.merger.ln_q.bias".into(), vec![e]);
    add("visual.merger.mlp.0.weight".into(), vec![m, m]);
    add("visual.merger.mlp.0.bias".into(), vec![m]);
    add(
        "visual.merger.mlp.2.weight".into(),
        vec![v.out_hidden_size, m],
    );
    add("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]);
    out
}

impl Qwen2VlConfig {
    /// The config as a Hub `config.json` in the flat layout, which
    /// [`Qwen2VlConfig::from_file`] reads back to the same config.
    pub fn hub_config_json(&self) -> serde_json::Value {
        let (t, v) = (&self.text, &self.vision);
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
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_configs_validate_and_count_parameters() {
        let two = qwen2_vl_2b_config();
        two.validate().unwrap();
        let params: usize = tensor_layout(&two)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // Qwen2-VL-2B: 2.21 B parameters (1.54 B text + 0.67 B vision).
        assert!((2_150_000_000..2_250_000_000).contains(&params), "{params}");
        let seven = qwen2_vl_7b_config();
        seven.validate().unwrap();
        let params: usize = tensor_layout(&seven)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert!((8_200_000_000..8_350_000_000).contains(&params), "{params}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let mut c = qwen2_vl_2b_config();
        c.text.mrope_section = [16, 24, 23];
        assert!(c.validate().unwrap_err().contains("mrope_section"));
        let mut c = qwen2_vl_2b_config();
        c.text.num_key_value_heads = 5;
        assert!(c.validate().unwrap_err().contains("num_key_value_heads"));
        let err = Qwen2VlConfig::from_json_str("{\"model_type\": \"llama\"}").unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let err = Qwen2VlConfig::from_json_str("{\"hidden_size\": 8, \"vision_config\": {}}")
            .unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }
}
