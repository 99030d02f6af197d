//! The role each tensor is kept in once loaded: the one rule that the size estimate and the
//! loader both follow.
//!
//! An architecture states, for every tensor name of its checkpoints, the [`TensorRole`]s in
//! which its model code makes that tensor resident ([`TensorRules`]). The estimate sizes exactly
//! those entries ([`resident_roles`], then [`crate::estimate_with_roles`]), and the loader of
//! `surveil-models` checks every tensor it stores against the same rules, so a call site that
//! loads a tensor in another role fails with an error naming the tensor instead of silently
//! making the estimate wrong.
//!
//! For a checkpoint whose architecture is unknown (a bare `.safetensors` file), [`GuessedRoles`]
//! guesses each role from the name and shape ([`TensorRole::guess`]).

use crate::quant::TensorRole;

/// Resident once, in f32 (norms, biases, convolutions, position tables, routers).
pub const FLOAT: &[TensorRole] = &[TensorRole::Float];
/// Resident once, as a linear (matmul) weight that the policy may quantize.
pub const LINEAR: &[TensorRole] = &[TensorRole::Linear];
/// Resident once, as a lookup table in the policy's float type (token embeddings).
pub const TABLE: &[TensorRole] = &[TensorRole::Table];
/// Resident twice: a token table that is also the output head (tied embeddings), kept as a
/// float table for lookups and as a linear weight for the head.
pub const TABLE_AND_LINEAR: &[TensorRole] = &[TensorRole::Table, TensorRole::Linear];

/// How an architecture keeps each checkpoint tensor once loaded.
pub trait TensorRules: Send + Sync {
    /// The roles in which the tensor `name` (its full checkpoint name, e.g.
    /// `model.layers.0.mlp.up_proj.weight`) of `shape` is made resident: usually one
    /// ([`FLOAT`], [`LINEAR`], [`TABLE`]); two for a tied table that is also the output head
    /// ([`TABLE_AND_LINEAR`]); none for a tensor the model does not load.
    fn roles(&self, name: &str, shape: &[usize]) -> &'static [TensorRole];
}

/// The rules of a checkpoint whose architecture is unknown: one role per tensor, guessed from
/// its name and shape with [`TensorRole::guess`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuessedRoles;

impl TensorRules for GuessedRoles {
    fn roles(&self, name: &str, shape: &[usize]) -> &'static [TensorRole] {
        match TensorRole::guess(name, shape) {
            TensorRole::Linear => LINEAR,
            TensorRole::Table => TABLE,
            TensorRole::Float => FLOAT,
        }
    }
}

/// Every resident entry of `tensors` (`(name, shape)`, e.g. an architecture's tensor layout)
/// under `rules`: one `(name, shape, role)` per role, in the order of `tensors`. Feed it to
/// [`crate::estimate_with_roles`].
pub fn resident_roles<I>(
    tensors: I,
    rules: &dyn TensorRules,
) -> Vec<(String, Vec<usize>, TensorRole)>
where
    I: IntoIterator<Item = (String, Vec<usize>)>,
{
    let mut out = Vec::new();
    for (name, shape) in tensors {
        match rules.roles(&name, &shape) {
            [] => {}
            [one] => out.push((name, shape, *one)),
            many => {
                for role in many {
                    out.push((name.clone(), shape.clone(), *role));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tied;

    impl TensorRules for Tied {
        fn roles(&self, name: &str, _shape: &[usize]) -> &'static [TensorRole] {
            match name {
                "embed.weight" => TABLE_AND_LINEAR,
                "unused.weight" => &[],
                _ => FLOAT,
            }
        }
    }

    #[test]
    fn one_entry_per_role_in_layout_order() {
        let layout = vec![
            ("embed.weight".to_string(), vec![10, 4]),
            ("unused.weight".to_string(), vec![4]),
            ("norm.weight".to_string(), vec![4]),
        ];
        let plan = resident_roles(layout, &Tied);
        let got: Vec<(&str, TensorRole)> = plan.iter().map(|(n, _, r)| (n.as_str(), *r)).collect();
        assert_eq!(
            got,
            vec![
                ("embed.weight", TensorRole::Table),
                ("embed.weight", TensorRole::Linear),
                ("norm.weight", TensorRole::Float),
            ]
        );
        assert_eq!(plan[1].1, vec![10, 4]);
    }

    #[test]
    fn guessed_roles_follow_the_guess() {
        for (name, shape) in [
            ("model.layers.0.mlp.up_proj.weight", &[8960usize, 1536][..]),
            ("model.embed_tokens.weight", &[151936, 1536]),
            ("model.norm.weight", &[1536]),
        ] {
            assert_eq!(
                GuessedRoles.roles(name, shape),
                &[TensorRole::guess(name, shape)][..],
                "{name}"
            );
        }
    }
}
