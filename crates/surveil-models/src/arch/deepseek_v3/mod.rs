//! DeepSeek-V3-style MoE decoder (Kimi-VL text model): MLA attention, sigmoid-routed experts.
//!
//! - [`DeepseekV3Config`]: from a `DeepseekV3ForCausalLM` `config.json` or the `text_config`
//!   of a Kimi-VL config; [`kimi_vl_a3b_text_config`]; [`tensor_layout`] (Hub names);
//! - [`DeepseekV3Model`]: load through [`crate::load::weights::Weights`],
//!   [`DeepseekV3Model::embed`] (for splicing image features), [`DeepseekV3Model::forward`]
//!   with a [`DeepseekV3Cache`] (prefill, then one token per step),
//!   [`DeepseekV3Model::generate`]; [`DeepseekV3Model::forward_traced`] also returns the
//!   routing of every MoE layer.
//!
//! Files: `mla.rs` (multi-head latent attention and its latent cache), `moe.rs` (router,
//! routed and shared experts, the SwiGLU MLP), `model.rs` (the decoder), `config.rs`.
//!
//! Supported: `q_lora_rank = null`, default RoPE (interleaved pairs), `noaux_tc` sigmoid routing
//! with group-limited choice. The KV cache holds the compressed latent (576 values per token and
//! layer for Kimi-VL-A3B instead of 5120); decode attends over it with `kv_b_proj` absorbed.
//! Routed experts run once per forward over the rows routed to them (grouped by expert).
//!
//! Not here: query LoRA (full DeepSeek-V3), YaRN RoPE, the multi-token-prediction layers,
//! batches of several sequences.

mod absorb;
mod config;
mod mla;
mod model;
mod moe;

pub use crate::layers::Logits;
pub use config::{
    kimi_vl_a3b_text_config, tensor_layout, tensor_layout_with_prefix, DeepseekV3Config,
    KV_A_LAYERNORM_EPS,
};
pub use mla::DeepseekV3Cache;
pub use model::DeepseekV3Model;
pub use moe::RouterChoice;
