//! How Kimi-VL keeps each checkpoint tensor once loaded ([`KimiVlRoles`]), its DeepSeek-V3
//! decoder included: the rule that both the size estimate
//! ([`crate::arch::ArchConfig::resident_plan`]) and the loader (a [`crate::weights::Weights`]
//! view given these rules by [`super::KimiVlModel::load`]) follow.

use surveil_memory::roles::{FLOAT, LINEAR, TABLE, TABLE_AND_LINEAR};
use surveil_memory::{TensorRole, TensorRules};

use super::KimiVlConfig;
use crate::arch::deepseek_v3::DeepseekV3Config;
use crate::Result;

/// Name endings of the weights Kimi-VL loads as linear layers (`Weights::linear`,
/// `Weights::matmul_weight`): quantized under a 4-bit policy.
///
/// Two 2-D weights of the decoder are not listed: the MoE router (`mlp.gate.weight`), kept in
/// f32 because the expert choice is sensitive to its logits, and MLA's `kv_b_proj.weight`,
/// which decoding splits and absorbs into the query and output (multiplied from both sides,
/// which a quantized row layout cannot), kept as a [`TensorRole::Table`] in the policy's float
/// type.
const LINEAR_WEIGHTS: &[&str] = &[
    // MoonViT blocks (`vision_tower.encoder.blocks.N`).
    ".wqkv.weight",
    ".wo.weight",
    ".mlp.fc0.weight",
    ".mlp.fc1.weight",
    // The projector into the decoder width.
    "multi_modal_projector.linear_1.weight",
    "multi_modal_projector.linear_2.weight",
    // DeepSeek-V3 attention (MLA).
    ".self_attn.q_proj.weight",
    ".self_attn.kv_a_proj_with_mqa.weight",
    ".self_attn.o_proj.weight",
    // Dense MLPs, routed and shared experts.
    ".gate_proj.weight",
    ".up_proj.weight",
    ".down_proj.weight",
    // The untied output head.
    "lm_head.weight",
];

/// Kimi-VL's tensor rules: the linear layers above as [`TensorRole::Linear`]; the token table
/// `embed_tokens.weight` as a [`TensorRole::Table`], and when the decoder ties its head to it
/// also as the head ([`TensorRole::Linear`], a second resident copy); MLA's `kv_b_proj` as a
/// [`TensorRole::Table`]; everything else (norms, biases, the patch convolution and position
/// table, the MoE routers and their correction biases) as [`TensorRole::Float`]. The names may
/// carry any prefix (`language_model.` inside Kimi-VL, none for the decoder on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KimiVlRoles {
    embed_tokens: &'static [TensorRole],
}

impl KimiVlRoles {
    /// The rules of a Kimi-VL checkpoint with `cfg` (its `text_config` parsed for the decoder).
    pub fn new(cfg: &KimiVlConfig) -> Result<Self> {
        Ok(Self::for_decoder(&DeepseekV3Config::from_value(
            &cfg.text_config,
        )?))
    }

    /// The rules for a DeepSeek-V3 decoder with `text` (and any vision tower).
    pub fn for_decoder(text: &DeepseekV3Config) -> Self {
        let embed_tokens = if text.tie_word_embeddings {
            TABLE_AND_LINEAR
        } else {
            TABLE
        };
        Self { embed_tokens }
    }
}

impl TensorRules for KimiVlRoles {
    fn roles(&self, name: &str, _shape: &[usize]) -> &'static [TensorRole] {
        if name.ends_with("embed_tokens.weight") {
            self.embed_tokens
        } else if name.ends_with("kv_b_proj.weight") {
            TABLE
        } else if LINEAR_WEIGHTS.iter().any(|end| name.ends_with(end)) {
            LINEAR
        } else {
            FLOAT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ArchConfig;
    use crate::load::registry;

    #[test]
    fn routers_stay_float_kv_b_proj_is_a_table_every_other_matrix_is_linear() {
        let spec = registry::find("kimi-vl-a3b-thinking").unwrap();
        let ArchConfig::KimiVl(cfg) = ArchConfig::full_size(spec).unwrap() else {
            panic!("not Kimi-VL");
        };
        let roles = KimiVlRoles::new(&cfg).unwrap();
        let layout = crate::arch::kimi_vl::full_tensor_layout(&cfg).unwrap();
        for (name, shape) in &layout {
            let got = roles.roles(name, shape);
            let expect =
                if name.ends_with("embed_tokens.weight") || name.ends_with("kv_b_proj.weight") {
                    TABLE
                } else if name.ends_with("mlp.gate.weight") {
                    FLOAT
                } else if shape.len() == 2 {
                    LINEAR
                } else {
                    FLOAT
                };
            assert_eq!(got, expect, "{name} {shape:?}");
        }
        let mut text = DeepseekV3Config::from_value(&cfg.text_config).unwrap();
        text.tie_word_embeddings = true;
        assert_eq!(
            KimiVlRoles::for_decoder(&text).roles("model.embed_tokens.weight", &[]),
            TABLE_AND_LINEAR
        );
    }
}
