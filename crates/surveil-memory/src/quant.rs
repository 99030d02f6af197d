//! Per-tensor storage decisions shared by the size estimate and the loader.
//!
//! A [`QuantPolicy`] maps each tensor (its [`TensorRole`] and shape) to the [`StorageDtype`] it is
//! kept in once loaded, and [`StorageDtype::bytes_for`] gives the exact bytes that takes. The
//! model loader and [`crate::estimate`] both call this one function, so the estimate and the
//! real allocation cannot drift apart. [`QuantPolicy::for_storage`] builds the policy from the
//! storage type the validated configuration resolved (`vlm.storage`).

use serde::{Deserialize, Serialize};

/// How a tensor is stored once resident: the configuration's type (`vlm.quant`, `vlm.storage`),
/// re-exported so this crate's users need not name `surveil-config`.
pub use surveil_config::StorageDtype;

/// What a tensor is for, as far as quantization is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    /// The weight of a linear (matmul) layer, `[out, in]`: may be quantized.
    Linear,
    /// A large lookup table (token embeddings): kept in the policy's float type.
    Table,
    /// Anything else (norms, biases, convolutions, position embeddings): kept in f32.
    Float,
}

impl TensorRole {
    /// The role a checkpoint tensor most likely has, from its name and shape alone. Used by the
    /// header-only size estimate; architectures load linear layers explicitly as linear, and the
    /// two agree for every tensor of the supported architectures.
    pub fn guess(name: &str, shape: &[usize]) -> TensorRole {
        let lower = name.to_ascii_lowercase();
        let table_hint = ["embed_tokens", "word_embeddings", "wte", "tok_embeddings"];
        let float_hint = [
            "embed",
            "norm",
            "wte",
            "wpe",
            "position",
            "ln_",
            "layernorm",
        ];
        if shape.len() == 2 && table_hint.iter().any(|h| lower.contains(h)) {
            TensorRole::Table
        } else if shape.len() == 2
            && lower.ends_with(".weight")
            && !float_hint.iter().any(|h| lower.contains(h))
        {
            TensorRole::Linear
        } else {
            TensorRole::Float
        }
    }
}

/// Decides the storage type of every tensor of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantPolicy {
    /// What linear weights are stored as when their row length allows it.
    pub linear: StorageDtype,
    /// What lookup tables (token embeddings) and linear weights whose rows do not divide into
    /// blocks are stored as. Other float tensors (norms, biases, convolutions, position
    /// embeddings) always stay `f32`: they are small and used in f32 arithmetic.
    pub float: StorageDtype,
}

impl QuantPolicy {
    /// The policy for the storage type of linear weights (`SystemConfig::vlm.storage`):
    /// quantized types keep tables and fallback layers in f16; a float type stores everything
    /// in that type.
    pub fn for_storage(storage: StorageDtype) -> Self {
        match storage {
            StorageDtype::Q4K => Self::four_bit(StorageDtype::F16),
            StorageDtype::Q4_0
            | StorageDtype::Q8_0
            | StorageDtype::Q4Kx16
            | StorageDtype::Q8_0x16 => Self {
                linear: storage,
                float: StorageDtype::F16,
            },
            StorageDtype::F16 | StorageDtype::Bf16 | StorageDtype::F32 => {
                Self::unquantized(storage)
            }
        }
    }

    /// This policy as it stands on the CPU, where linear weights are kept in the kernels' tile
    /// layouts ([`StorageDtype::cpu_layout`]: q4kx16 for 4-bit, q8_0x16 for 8-bit), which take
    /// any shape; float policies are unchanged.
    pub fn on_cpu(self) -> Self {
        Self {
            linear: self.linear.cpu_layout(),
            float: self.float,
        }
    }

    /// 4-bit: Q4K where rows divide by 256, else Q4_0 where they divide by 32, else `float`.
    pub fn four_bit(float: StorageDtype) -> Self {
        Self {
            linear: StorageDtype::Q4K,
            float,
        }
    }

    /// Everything in one float type (no quantization).
    pub fn unquantized(float: StorageDtype) -> Self {
        Self {
            linear: float,
            float,
        }
    }

    /// Short description for reports, e.g. `q4k (q4_0 / f16 fallback)`.
    pub fn describe(&self) -> String {
        match self.linear {
            StorageDtype::Q4K => format!(
                "q4k linear (q4_0, then {} where rows do not divide)",
                self.float
            ),
            q if q.is_tiled() => format!(
                "{q} linear (the CPU tile layout of {}-bit weights; any row length)",
                if q.is_four_bit() { 4 } else { 8 }
            ),
            q if q.is_quantized() => {
                format!("{q} linear ({} where rows do not divide)", self.float)
            }
            f => format!("{f} (no quantization)"),
        }
    }

    /// The storage type of one tensor.
    pub fn storage_for(&self, role: TensorRole, shape: &[usize]) -> StorageDtype {
        match role {
            TensorRole::Float => return StorageDtype::F32,
            _ if shape.len() <= 1 => return StorageDtype::F32,
            TensorRole::Table => return self.float,
            TensorRole::Linear => {}
        }
        let row = shape.last().copied().unwrap_or(0);
        let fits = |d: StorageDtype| row > 0 && row % d.block_len() == 0;
        match self.linear {
            q if q.is_tiled() && row > 0 => q,
            StorageDtype::Q4K if fits(StorageDtype::Q4K) => StorageDtype::Q4K,
            StorageDtype::Q4K | StorageDtype::Q4_0 if fits(StorageDtype::Q4_0) => {
                StorageDtype::Q4_0
            }
            StorageDtype::Q8_0 if fits(StorageDtype::Q8_0) => StorageDtype::Q8_0,
            q if q.is_quantized() => self.float,
            f => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(StorageDtype::Q4K.bytes_for(&[2, 512]), 4 * 144);
        assert_eq!(StorageDtype::Q4_0.bytes_for(&[1, 64]), 2 * 18);
        assert_eq!(StorageDtype::Q8_0.bytes_for(&[3, 32]), 3 * 34);
        assert_eq!(StorageDtype::F16.bytes_for(&[3, 5]), 30);
    }

    #[test]
    fn four_bit_policy_falls_back_by_row_length() {
        let p = QuantPolicy::four_bit(StorageDtype::F16);
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[64, 1536]),
            StorageDtype::Q4K
        );
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[64, 1280 + 32]),
            StorageDtype::Q4_0
        );
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[64, 100]),
            StorageDtype::F16
        );
        assert_eq!(
            p.storage_for(TensorRole::Table, &[151936, 1536]),
            StorageDtype::F16
        );
        assert_eq!(
            p.storage_for(TensorRole::Float, &[1280, 3, 2, 14, 14]),
            StorageDtype::F32
        );
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[1536]),
            StorageDtype::F32
        );
    }

    #[test]
    fn q8_policy_and_unquantized() {
        let p = QuantPolicy {
            linear: StorageDtype::Q8_0,
            float: StorageDtype::Bf16,
        };
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[8, 96]),
            StorageDtype::Q8_0
        );
        assert_eq!(
            p.storage_for(TensorRole::Linear, &[8, 100]),
            StorageDtype::Bf16
        );
        let u = QuantPolicy::unquantized(StorageDtype::F32);
        assert_eq!(
            u.storage_for(TensorRole::Linear, &[8, 256]),
            StorageDtype::F32
        );
    }

    #[test]
    fn policy_for_each_resolved_storage_type() {
        use StorageDtype::*;
        for (storage, linear, float) in [
            (Q4K, Q4K, F16),
            (Q4_0, Q4_0, F16),
            (Q8_0, Q8_0, F16),
            (F16, F16, F16),
            (Bf16, Bf16, Bf16),
            (F32, F32, F32),
        ] {
            assert_eq!(
                QuantPolicy::for_storage(storage),
                QuantPolicy { linear, float },
                "{storage}"
            );
        }
        assert_eq!(
            QuantPolicy::for_storage(Q4K),
            QuantPolicy::four_bit(StorageDtype::F16)
        );
    }

    #[test]
    fn role_guess() {
        assert_eq!(
            TensorRole::guess("model.layers.0.mlp.up_proj.weight", &[8960, 1536]),
            TensorRole::Linear
        );
        assert_eq!(
            TensorRole::guess("model.embed_tokens.weight", &[151936, 1536]),
            TensorRole::Table
        );
        assert_eq!(
            TensorRole::guess("git.embeddings.position_embeddings.weight", &[1024, 768]),
            TensorRole::Float
        );
        assert_eq!(
            TensorRole::guess("model.norm.weight", &[1536]),
            TensorRole::Float
        );
        assert_eq!(
            TensorRole::guess("visual.patch_embed.proj.weight", &[1280, 3, 2, 14, 14]),
            TensorRole::Float
        );
    }
}
