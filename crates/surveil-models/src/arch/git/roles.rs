//! How GIT keeps each checkpoint tensor once loaded ([`GitRoles`]): the rule that both the size
//! estimate ([`crate::arch::ArchConfig::resident_plan`]) and the loader (a
//! [`crate::weights::Weights`] view given these rules by [`super::GitModel::load`]) follow.

use surveil_memory::roles::{FLOAT, LINEAR, TABLE};
use surveil_memory::{TensorRole, TensorRules};

/// Name endings of the weights GIT loads as linear layers (`Weights::linear`,
/// `Weights::matmul_weight`, fused or not): quantized under a 4-bit policy.
const LINEAR_WEIGHTS: &[&str] = &[
    // CLIP vision encoder layers (`git.image_encoder.vision_model.encoder.layers.N`).
    ".self_attn.q_proj.weight",
    ".self_attn.k_proj.weight",
    ".self_attn.v_proj.weight",
    ".self_attn.out_proj.weight",
    ".mlp.fc1.weight",
    ".mlp.fc2.weight",
    // The projection of image features into the decoder width.
    ".visual_projection.0.weight",
    // BERT decoder layers (`git.encoder.layer.N`): attention and its output, the MLP.
    ".attention.self.query.weight",
    ".attention.self.key.weight",
    ".attention.self.value.weight",
    ".output.dense.weight",
    ".intermediate.dense.weight",
];

/// GIT's tensor rules: the linear layers above and the untied output head `output.weight` as
/// [`TensorRole::Linear`]; the word embedding table as a [`TensorRole::Table`] (a tied head
/// multiplies with that resident table, no second copy is made); everything else (layer norms,
/// biases, the class, patch and position embeddings) as [`TensorRole::Float`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GitRoles;

impl TensorRules for GitRoles {
    fn roles(&self, name: &str, _shape: &[usize]) -> &'static [TensorRole] {
        if name == "output.weight" || LINEAR_WEIGHTS.iter().any(|end| name.ends_with(end)) {
            LINEAR
        } else if name.ends_with(".word_embeddings.weight") {
            TABLE
        } else {
            FLOAT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::git::{git_base_coco_config, GitModel};

    #[test]
    fn every_tensor_of_git_base_coco_has_one_role() {
        let layout = GitModel::tensor_layout(&git_base_coco_config());
        let role = |name: &str| {
            let (_, shape) = layout.iter().find(|(n, _)| n == name).unwrap();
            GitRoles.roles(name, shape)
        };
        assert_eq!(role("git.embeddings.word_embeddings.weight"), TABLE);
        assert_eq!(role("git.embeddings.position_embeddings.weight"), FLOAT);
        assert_eq!(
            role("git.encoder.layer.0.attention.self.query.weight"),
            LINEAR
        );
        assert_eq!(role("git.encoder.layer.0.attention.self.query.bias"), FLOAT);
        assert_eq!(role("git.encoder.layer.5.output.dense.weight"), LINEAR);
        assert_eq!(role("git.encoder.layer.5.output.LayerNorm.weight"), FLOAT);
        assert_eq!(
            role("git.image_encoder.vision_model.embeddings.patch_embedding.weight"),
            FLOAT
        );
        assert_eq!(
            role("git.image_encoder.vision_model.encoder.layers.11.self_attn.out_proj.weight"),
            LINEAR
        );
        assert_eq!(
            role("git.visual_projection.visual_projection.0.weight"),
            LINEAR
        );
        assert_eq!(
            role("git.visual_projection.visual_projection.1.weight"),
            FLOAT
        );
        assert_eq!(role("output.weight"), LINEAR);
        assert_eq!(role("output.bias"), FLOAT);
        // Every 2-D weight that is not a table or a position embedding is a linear layer.
        for (name, shape) in &layout {
            let expect_linear = shape.len() == 2 && !name.contains("embedding");
            assert_eq!(
                GitRoles.roles(name, shape) == LINEAR,
                expect_linear,
                "{name}"
            );
        }
    }
}
