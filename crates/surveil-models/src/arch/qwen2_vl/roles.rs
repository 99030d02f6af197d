//! How Qwen2-VL keeps each checkpoint tensor once loaded ([`Qwen2VlRoles`]): the rule that both
//! the size estimate ([`crate::arch::ArchConfig::resident_plan`]) and the loader (a
//! [`crate::weights::Weights`] view given these rules by [`super::Qwen2VlModel::load`]) follow.

use surveil_memory::roles::{FLOAT, LINEAR, TABLE, TABLE_AND_LINEAR};
use surveil_memory::{QuantPolicy, TensorRole, TensorRules};

use super::{shares_tied_embedding, Qwen2VlConfig};

/// Name endings of the weights Qwen2-VL loads as linear layers (`Weights::linear`,
/// `Weights::matmul_weight`): quantized under a 4-bit policy.
const LINEAR_WEIGHTS: &[&str] = &[
    // Qwen2 decoder layers (`model.layers.N`).
    ".self_attn.q_proj.weight",
    ".self_attn.k_proj.weight",
    ".self_attn.v_proj.weight",
    ".self_attn.o_proj.weight",
    ".mlp.gate_proj.weight",
    ".mlp.up_proj.weight",
    ".mlp.down_proj.weight",
    // Vision blocks (`visual.blocks.N`).
    ".attn.qkv.weight",
    ".attn.proj.weight",
    ".mlp.fc1.weight",
    ".mlp.fc2.weight",
    // The patch merger's MLP (`visual.merger.mlp.0`, `.2`).
    ".merger.mlp.0.weight",
    ".merger.mlp.2.weight",
    // The untied output head.
    "lm_head.weight",
];

/// Qwen2-VL's tensor rules: the linear layers above as [`TensorRole::Linear`]; everything else
/// but the token table (norms, biases, the 5-D patch embedding) as [`TensorRole::Float`]. The
/// token table `model.embed_tokens.weight` depends on the config and the policy:
///
/// - untied: a [`TensorRole::Table`];
/// - tied, with a policy under which the table is shared with the head
///   ([`shares_tied_embedding`]: 4-bit): once, as the quantized head ([`TensorRole::Linear`]);
/// - tied otherwise: twice, as the table and as the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qwen2VlRoles {
    embed_tokens: &'static [TensorRole],
}

impl Qwen2VlRoles {
    /// The rules of a checkpoint with `cfg`, loaded under `policy`.
    pub fn new(cfg: &Qwen2VlConfig, policy: &QuantPolicy) -> Self {
        let embed_tokens = match (cfg.tie_word_embeddings, shares_tied_embedding(policy)) {
            (false, _) => TABLE,
            (true, true) => LINEAR,
            (true, false) => TABLE_AND_LINEAR,
        };
        Self { embed_tokens }
    }
}

impl TensorRules for Qwen2VlRoles {
    fn roles(&self, name: &str, _shape: &[usize]) -> &'static [TensorRole] {
        if name.ends_with("embed_tokens.weight") {
            self.embed_tokens
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
    use crate::arch::qwen2_vl::{qwen2_vl_2b_config, tensor_layout};
    use surveil_memory::StorageDtype;

    #[test]
    fn the_token_table_follows_tying_and_policy() {
        let mut cfg = qwen2_vl_2b_config();
        let four_bit = QuantPolicy::four_bit(StorageDtype::F16);
        let f16 = QuantPolicy::unquantized(StorageDtype::F16);
        let table = "model.embed_tokens.weight";
        cfg.tie_word_embeddings = true;
        assert_eq!(Qwen2VlRoles::new(&cfg, &four_bit).roles(table, &[]), LINEAR);
        assert_eq!(
            Qwen2VlRoles::new(&cfg, &f16).roles(table, &[]),
            TABLE_AND_LINEAR
        );
        cfg.tie_word_embeddings = false;
        assert_eq!(Qwen2VlRoles::new(&cfg, &four_bit).roles(table, &[]), TABLE);
        let roles = Qwen2VlRoles::new(&cfg, &four_bit);
        assert_eq!(roles.roles("lm_head.weight", &[]), LINEAR);
        assert_eq!(roles.roles("model.norm.weight", &[]), FLOAT);
        assert_eq!(roles.roles("visual.merger.ln_q.weight", &[]), FLOAT);
        assert_eq!(roles.roles("visual.merger.mlp.2.weight", &[]), LINEAR);
        assert_eq!(roles.roles("visual.blocks.0.attn.qkv.bias", &[]), FLOAT);
        // Every 2-D weight of the layout but the token table is a linear layer.
        for (name, shape) in tensor_layout(&cfg) {
            if name != table {
                let expect_linear = shape.len() == 2;
                assert_eq!(
                    roles.roles(&name, &shape) == LINEAR,
                    expect_linear,
                    "{name}"
                );
            }
        }
    }
}
