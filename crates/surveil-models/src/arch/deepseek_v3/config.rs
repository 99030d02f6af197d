//! DeepSeek-V3 decoder configuration: one validated [`DeepseekV3Config`] from a `config.json`
//! of `DeepseekV3ForCausalLM`, or from the `text_config` of a Kimi-VL config.
//!
//! The JSON is read into a loose `RawConfig` (Hub configs carry many keys we do not use, so
//! unknown keys are accepted) and validated once; code after [`DeepseekV3Config::from_value`]
//! never re-checks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// A complete, validated DeepSeek-V3 decoder configuration (MLA attention, sigmoid-routed MoE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeepseekV3Config {
    /// Vocabulary size (rows of the embedding table and of the output head).
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// SwiGLU inner width of the dense layers (`layers < first_k_dense_replace`).
    pub intermediate_size: usize,
    /// SwiGLU inner width of one routed expert.
    pub moe_intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the compressed key/value latent.
    pub kv_lora_rank: usize,
    /// Per-head query/key width without rotary positions.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key width with rotary positions (the key part is shared by all heads).
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Routed experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Shared experts (run on every token, fused into one MLP of width
    /// `moe_intermediate_size * n_shared_experts`).
    pub n_shared_experts: usize,
    /// Layers before this index are dense.
    pub first_k_dense_replace: usize,
    /// From `first_k_dense_replace` on, every `moe_layer_freq`-th layer is MoE.
    pub moe_layer_freq: usize,
    /// Expert groups for group-limited routing.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Whether the chosen routing weights are normalised to sum 1.
    pub norm_topk_prob: bool,
    /// Factor applied to the routing weights.
    pub routed_scaling_factor: f64,
    /// RMSNorm epsilon of the layer norms (not of `kv_a_layernorm`, which uses 1e-6).
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output head reuses `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    /// `bos_token_id`, if given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (one or several), default stop tokens.
    pub eos_token_ids: Vec<u32>,
}

/// Epsilon of `kv_a_layernorm`: the `DeepseekV3RMSNorm` default, not `rms_norm_eps`.
pub const KV_A_LAYERNORM_EPS: f64 = 1e-6;

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    rope_theta: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    moe_intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    q_lora_rank: Option<usize>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    n_routed_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    n_shared_experts: Option<usize>,
    first_k_dense_replace: Option<usize>,
    moe_layer_freq: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    norm_topk_prob: Option<bool>,
    routed_scaling_factor: Option<f64>,
    scoring_func: Option<String>,
    topk_method: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    rope_interleave: Option<bool>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: PathBuf::from("<deepseek_v3 config>"),
        reason: reason.into(),
    }
}

fn token_ids(v: Option<&serde_json::Value>) -> std::result::Result<Vec<u32>, String> {
    let one = |x: &serde_json::Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("token id {x} is not a u32"))
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

impl DeepseekV3Config {
    /// Read and validate a `config.json` file (a `DeepseekV3ForCausalLM` config, or a Kimi-VL
    /// config whose `text_config` is used).
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::error::parse_config_file(path, Self::from_json_str)
    }

    /// Parse and validate JSON text (see [`DeepseekV3Config::from_value`]).
    pub fn from_json_str(json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Validate a parsed config: either the decoder config itself or an object holding it as
    /// `text_config` (Kimi-VL).
    pub fn from_value(v: &serde_json::Value) -> Result<Self> {
        let v = match v.get("text_config") {
            Some(t) if t.is_object() => t,
            _ => v,
        };
        let raw: RawConfig = serde_json::from_value(v.clone())
            .map_err(|e| bad(format!("unexpected config value: {e}")))?;
        let cfg = Self::from_raw(raw).map_err(bad)?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    fn from_raw(r: RawConfig) -> std::result::Result<Self, String> {
        if let Some(mt) = &r.model_type {
            if mt != "deepseek_v3" {
                return Err(format!("model_type is `{mt}`, expected `deepseek_v3`"));
            }
        }
        if let Some(q) = r.q_lora_rank {
            return Err(format!(
                "q_lora_rank = {q} is not supported (only q_lora_rank = null: a plain q_proj)"
            ));
        }
        if let Some(f) = r.scoring_func.as_deref() {
            if f != "sigmoid" {
                return Err(format!(
                    "scoring_func `{f}` is not supported (expected sigmoid)"
                ));
            }
        }
        if let Some(m) = r.topk_method.as_deref() {
            if m != "noaux_tc" {
                return Err(format!(
                    "topk_method `{m}` is not supported (expected noaux_tc)"
                ));
            }
        }
        if let Some(a) = r.hidden_act.as_deref() {
            if a != "silu" {
                return Err(format!("hidden_act `{a}` is not supported (expected silu)"));
            }
        }
        if r.attention_bias == Some(true) {
            return Err("attention_bias = true is not supported".into());
        }
        if r.rope_interleave == Some(false) {
            return Err("rope_interleave = false is not supported".into());
        }
        let rope = r.rope_parameters.as_ref().or(r.rope_scaling.as_ref());
        if let Some(rope) = rope {
            let kind = rope
                .rope_type
                .as_deref()
                .or(rope.kind.as_deref())
                .unwrap_or("default");
            if kind != "default" {
                return Err(format!(
                    "rope type `{kind}` is not supported (only default RoPE)"
                ));
            }
        }
        let rope_theta = r
            .rope_theta
            .or(rope.and_then(|p| p.rope_theta))
            .ok_or("missing `rope_theta` (top level or in `rope_parameters`)")?;
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| format!("missing `{name}`"));
        let num_attention_heads = need(r.num_attention_heads, "num_attention_heads")?;
        if let Some(kv) = r.num_key_value_heads {
            if kv != num_attention_heads {
                return Err(format!(
                    "num_key_value_heads = {kv} must equal num_attention_heads = \
                     {num_attention_heads} (MLA has one key/value per head)"
                ));
            }
        }
        Ok(Self {
            vocab_size: need(r.vocab_size, "vocab_size")?,
            hidden_size: need(r.hidden_size, "hidden_size")?,
            intermediate_size: need(r.intermediate_size, "intermediate_size")?,
            moe_intermediate_size: need(r.moe_intermediate_size, "moe_intermediate_size")?,
            num_hidden_layers: need(r.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            kv_lora_rank: need(r.kv_lora_rank, "kv_lora_rank")?,
            qk_nope_head_dim: need(r.qk_nope_head_dim, "qk_nope_head_dim")?,
            qk_rope_head_dim: need(r.qk_rope_head_dim, "qk_rope_head_dim")?,
            v_head_dim: need(r.v_head_dim, "v_head_dim")?,
            n_routed_experts: need(r.n_routed_experts, "n_routed_experts")?,
            num_experts_per_tok: need(r.num_experts_per_tok, "num_experts_per_tok")?,
            n_shared_experts: r.n_shared_experts.unwrap_or(0),
            first_k_dense_replace: r.first_k_dense_replace.unwrap_or(0),
            moe_layer_freq: r.moe_layer_freq.unwrap_or(1),
            n_group: r.n_group.unwrap_or(1),
            topk_group: r.topk_group.unwrap_or(1),
            norm_topk_prob: r.norm_topk_prob.unwrap_or(true),
            routed_scaling_factor: r.routed_scaling_factor.unwrap_or(1.0),
            rms_norm_eps: r.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: r.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(r.bos_token_id.as_ref())?.first().copied(),
            eos_token_ids: token_ids(r.eos_token_id.as_ref())?,
        })
    }

    /// Check the invariants the model relies on; the message names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("n_routed_experts", self.n_routed_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("moe_layer_freq", self.moe_layer_freq),
            ("n_group", self.n_group),
            ("topk_group", self.topk_group),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be > 0"));
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(format!(
                "`qk_rope_head_dim` must be even, got {}",
                self.qk_rope_head_dim
            ));
        }
        if self.num_experts_per_tok > self.n_routed_experts {
            return Err(format!(
                "`num_experts_per_tok` = {} exceeds `n_routed_experts` = {}",
                self.num_experts_per_tok, self.n_routed_experts
            ));
        }
        if !self.n_routed_experts.is_multiple_of(self.n_group) {
            return Err(format!(
                "`n_routed_experts` = {} is not divisible by `n_group` = {}",
                self.n_routed_experts, self.n_group
            ));
        }
        if self.topk_group > self.n_group {
            return Err(format!(
                "`topk_group` = {} exceeds `n_group` = {}",
                self.topk_group, self.n_group
            ));
        }
        let per_group = self.n_routed_experts / self.n_group;
        if self.num_experts_per_tok > per_group * self.topk_group {
            return Err(format!(
                "`num_experts_per_tok` = {} exceeds the experts of the kept groups ({})",
                self.num_experts_per_tok,
                per_group * self.topk_group
            ));
        }
        if self.first_k_dense_replace > self.num_hidden_layers {
            return Err(format!(
                "`first_k_dense_replace` = {} exceeds `num_hidden_layers` = {}",
                self.first_k_dense_replace, self.num_hidden_layers
            ));
        }
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
            ("routed_scaling_factor", self.routed_scaling_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`{name}` must be a positive number, got {v}"));
            }
        }
        if let Some(bad) = self
            .eos_token_ids
            .iter()
            .chain(self.bos_token_id.iter())
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(format!(
                "special token id {bad} is outside the vocabulary ({})",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// Whether layer `i` is a MoE layer (otherwise a dense SwiGLU MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        i >= self.first_k_dense_replace && i.is_multiple_of(self.moe_layer_freq)
    }

    /// Query/key width per head (`qk_nope_head_dim + qk_rope_head_dim`).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Inner width of the fused shared experts.
    pub fn shared_intermediate_size(&self) -> usize {
        self.moe_intermediate_size * self.n_shared_experts
    }
}

/// The text decoder of `moonshotai/Kimi-VL-A3B-Instruct` (and `-Thinking`): DeepSeek-V3-style,
/// 27 layers (layer 0 dense), 64 routed experts top-6 + 2 shared, MLA without query LoRA.
pub fn kimi_vl_a3b_text_config() -> DeepseekV3Config {
    DeepseekV3Config {
        vocab_size: 163_840,
        hidden_size: 2048,
        intermediate_size: 11_264,
        moe_intermediate_size: 1408,
        num_hidden_layers: 27,
        num_attention_heads: 16,
        kv_lora_rank: 512,
        qk_nope_head_dim: 128,
        qk_rope_head_dim: 64,
        v_head_dim: 128,
        n_routed_experts: 64,
        num_experts_per_tok: 6,
        n_shared_experts: 2,
        first_k_dense_replace: 1,
        moe_layer_freq: 1,
        n_group: 1,
        topk_group: 1,
        norm_topk_prob: true,
        routed_scaling_factor: 2.446,
        rms_norm_eps: 1e-5,
        rope_theta: 800_000.0,
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        bos_token_id: Some(163_584),
        eos_token_ids: vec![163_585],
    }
}

/// Every tensor of a Hub `DeepseekV3ForCausalLM` checkpoint with its shape (`model.*`,
/// `lm_head.weight` when untied; experts stored one by one). Used for dummy weights and size
/// estimates.
pub fn tensor_layout(cfg: &DeepseekV3Config) -> Vec<(String, Vec<usize>)> {
    tensor_layout_with_prefix(cfg, "")
}

/// [`tensor_layout`] with every name prefixed by `root` (e.g. `"language_model."` inside a
/// Kimi-VL checkpoint, giving `language_model.model.*` and `language_model.lm_head.weight`).
pub fn tensor_layout_with_prefix(cfg: &DeepseekV3Config, root: &str) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push((format!("{root}{name}"), shape));
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    add("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]);
    let mlp = |add: &mut dyn FnMut(String, Vec<usize>), p: &str, inner: usize| {
        add(format!("{p}.gate_proj.weight"), vec![inner, h]);
        add(format!("{p}.up_proj.weight"), vec![inner, h]);
        add(format!("{p}.down_proj.weight"), vec![h, inner]);
    };
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![h]);
        add(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        let a = format!("{p}.self_attn");
        add(
            format!("{a}.q_proj.weight"),
            vec![heads * cfg.qk_head_dim(), h],
        );
        add(
            format!("{a}.kv_a_proj_with_mqa.weight"),
            vec![cfg.kv_lora_rank + cfg.qk_rope_head_dim, h],
        );
        add(format!("{a}.kv_a_layernorm.weight"), vec![cfg.kv_lora_rank]);
        add(
            format!("{a}.kv_b_proj.weight"),
            vec![
                heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                cfg.kv_lora_rank,
            ],
        );
        add(
            format!("{a}.o_proj.weight"),
            vec![h, heads * cfg.v_head_dim],
        );
        if cfg.is_moe_layer(i) {
            let m = format!("{p}.mlp");
            add(format!("{m}.gate.weight"), vec![cfg.n_routed_experts, h]);
            add(
                format!("{m}.gate.e_score_correction_bias"),
                vec![cfg.n_routed_experts],
            );
            for e in 0..cfg.n_routed_experts {
                mlp(
                    &mut add,
                    &format!("{m}.experts.{e}"),
                    cfg.moe_intermediate_size,
                );
            }
            if cfg.n_shared_experts > 0 {
                mlp(
                    &mut add,
                    &format!("{m}.shared_experts"),
                    cfg.shared_intermediate_size(),
                );
            }
        } else {
            mlp(&mut add, &format!("{p}.mlp"), cfg.intermediate_size);
        }
    }
    add("model.norm.weight".into(), vec![h]);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), vec![cfg.vocab_size, h]);
    }
    out
}
