//! The storage type of weights: what `vlm.quant` names, what validation resolves `vlm.storage`
//! to, what `surveil-memory` sizes and `surveil-models` loads. One type for all of them, defined
//! here because the configuration is the lowest crate (`surveil-memory` re-exports it).

use serde::{Deserialize, Serialize};

use crate::schema::{deserialize_choice, Choice};

/// How a tensor is stored once resident: a float type, or a block-quantized type of GGML's
/// layout (blocks of `block_len` weights taking `block_bytes` bytes each).
///
/// The declaration order (f32 … q4k) is the order of reports (`Ord`); [`Choice::NAMES`] lists
/// the types as configurations and messages do, 4-bit first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks of 32 weights with one f16 scale: 34 bytes per block.
    Q8_0,
    /// The CPU layout of [`StorageDtype::Q8_0`]: the same blocks, rows in tiles of 16 with
    /// their blocks interleaved (`surveil_models::quant::PackedQ8`): 544 bytes per 16 × 32
    /// weights, each tile padded to 64 bytes; rows padded to 16 and columns to 32.
    #[serde(rename = "q8_0x16")]
    Q8_0x16,
    /// 4-bit blocks of 32 weights with one f16 scale: 18 bytes per block.
    Q4_0,
    /// 4-bit k-quant super-blocks of 256 weights: 144 bytes per block.
    #[default]
    #[serde(rename = "q4k")]
    Q4K,
    /// The CPU layout of the 4-bit types: blocks of 32 4-bit values with a scale and a minimum
    /// each (`Q4_1` math), stored as 8-bit codes of a bf16 scale and minimum per row and
    /// super-block of 8 blocks (as `Q4_K`), rows in tiles of 16 with their blocks interleaved
    /// (`surveil_models::quant::PackedQ4`): per tile, 64 bytes per super-block and 288 per
    /// block of 16 × 32 weights (4.625 bits per weight), each tile padded to 64 bytes; rows
    /// padded to 16 and columns to 32.
    #[serde(rename = "q4kx16")]
    Q4Kx16,
}

impl StorageDtype {
    /// Lower-case name as written in configs and reports (`q4k`, `q4_0`, `f16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "f32",
            StorageDtype::F16 => "f16",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::Q8_0 => "q8_0",
            StorageDtype::Q4_0 => "q4_0",
            StorageDtype::Q4K => "q4k",
            StorageDtype::Q8_0x16 => "q8_0x16",
            StorageDtype::Q4Kx16 => "q4kx16",
        }
    }

    /// Whether this is a block-quantized type (q8_0, q4_0, q4k and their CPU tile layouts).
    pub fn is_quantized(self) -> bool {
        !matches!(
            self,
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::Bf16
        )
    }

    /// Whether this is a 4-bit type (q4_0, q4k, q4kx16).
    pub fn is_four_bit(self) -> bool {
        matches!(
            self,
            StorageDtype::Q4_0 | StorageDtype::Q4K | StorageDtype::Q4Kx16
        )
    }

    /// Whether this is a CPU tile layout (q4kx16, q8_0x16), which takes any shape: rows and
    /// columns are padded to whole tiles and blocks.
    pub fn is_tiled(self) -> bool {
        matches!(self, StorageDtype::Q4Kx16 | StorageDtype::Q8_0x16)
    }

    /// The CPU tile layout that stands for this type on the CPU: q4kx16 for the 4-bit types,
    /// q8_0x16 for q8_0; float and tiled types are their own.
    pub fn cpu_layout(self) -> StorageDtype {
        match self {
            StorageDtype::Q4_0 | StorageDtype::Q4K => StorageDtype::Q4Kx16,
            StorageDtype::Q8_0 => StorageDtype::Q8_0x16,
            other => other,
        }
    }

    /// Weights per block (1 for float types).
    pub fn block_len(self) -> usize {
        match self {
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::Bf16 => 1,
            StorageDtype::Q8_0 | StorageDtype::Q4_0 => 32,
            StorageDtype::Q4K => 256,
            StorageDtype::Q8_0x16 | StorageDtype::Q4Kx16 => 32,
        }
    }

    /// Bytes per block (bytes per element for float types).
    pub fn block_bytes(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::Bf16 => 2,
            StorageDtype::Q8_0 => 34,
            StorageDtype::Q4_0 => 18,
            StorageDtype::Q4K => 144,
            // Per row and block, super-block headers and tile padding aside (see `bytes_for`).
            StorageDtype::Q8_0x16 => 34,
            StorageDtype::Q4Kx16 => 18,
        }
    }

    /// Exact bytes a tensor of `shape` occupies in this storage type. GGML quantized types
    /// require the last dimension to be a multiple of [`Self::block_len`] (the quantization
    /// policy of `surveil-memory` guarantees it). The tile layouts take any shape `[.., n, k]`
    /// as `n' = Π leading dims` rows: `ceil(n'/16)` tiles of `b = ceil(k/32)` blocks, each
    /// tile `64·ceil(b/8) + 288·b` bytes for q4kx16 and `544·b` for q8_0x16, rounded up to 64.
    pub fn bytes_for(self, shape: &[usize]) -> u64 {
        if self.is_tiled() {
            let k = shape.last().copied().unwrap_or(0) as u64;
            let rows: u64 = shape[..shape.len().saturating_sub(1)]
                .iter()
                .map(|&d| d as u64)
                .product();
            let (tiles, blocks) = (rows.div_ceil(16), k.div_ceil(32));
            let tile = match self {
                StorageDtype::Q4Kx16 => blocks.div_ceil(8) * 64 + blocks * 288,
                _ => blocks * 544,
            };
            let tile = tile.next_multiple_of(64);
            return tiles * tile;
        }
        let elems: u64 = shape.iter().map(|&d| d as u64).product();
        elems / self.block_len() as u64 * self.block_bytes() as u64
    }

    /// The storage type of linear weights for the two keys users write: with `load_in_4bit`,
    /// `quant` when it is a 4-bit type and q4k when it names a wider one; without, `quant`
    /// when it names a wider type and bf16 (the checkpoints' own type) when it names a 4-bit
    /// one, so that `LOAD_IN_4BIT=false` never loads 4-bit weights. Validation applies this
    /// rule once (`vlm.storage`); nothing after it combines the keys.
    pub fn resolve(load_in_4bit: bool, quant: StorageDtype) -> StorageDtype {
        match (load_in_4bit, quant) {
            (true, q) if q.is_four_bit() => q,
            (true, _) => StorageDtype::Q4K,
            (false, q) if q.is_four_bit() => StorageDtype::Bf16,
            (false, q) => q,
        }
    }
}

impl Choice for StorageDtype {
    const ALL: &'static [Self] = &[
        StorageDtype::Q4K,
        StorageDtype::Q4_0,
        StorageDtype::Q8_0,
        StorageDtype::F16,
        StorageDtype::Bf16,
        StorageDtype::F32,
    ];
    const NAMES: &'static [&'static str] = &["q4k", "q4_0", "q8_0", "f16", "bf16", "f32"];
}

impl std::fmt::Display for StorageDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StorageDtype {
    type Err = String;

    /// A name of [`Choice::NAMES`] in any case; the error lists them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_choice(s).ok_or_else(|| {
            format!(
                "unknown storage type `{s}`; allowed: {}",
                Self::NAMES.join(", ")
            )
        })
    }
}

impl<'de> Deserialize<'de> for StorageDtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_choice(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_folds_into_one_storage_type() {
        use StorageDtype::*;
        for (four_bit, quant, storage) in [
            (true, Q4K, Q4K),
            (true, Q4_0, Q4_0),
            (true, Q8_0, Q4K),
            (true, F16, Q4K),
            (true, F32, Q4K),
            (false, Q4K, Bf16),
            (false, Q4_0, Bf16),
            (false, Q8_0, Q8_0),
            (false, Bf16, Bf16),
        ] {
            assert_eq!(
                StorageDtype::resolve(four_bit, quant),
                storage,
                "load_in_4bit={four_bit} quant={quant}"
            );
        }
    }

    #[test]
    fn tile_layouts_size_whole_tiles_of_any_shape() {
        use StorageDtype::*;
        // 16 × 32 weights: one tile block.
        assert_eq!(Q4Kx16.bytes_for(&[16, 32]), 384); // 64 + 288 rounded up to 64
        assert_eq!(Q8_0x16.bytes_for(&[16, 32]), 576); // 544 rounded up to 64
                                                       // Rows padded to 16, columns to 32: 17 × 33 is 2 tiles of 2 blocks.
        assert_eq!(Q4Kx16.bytes_for(&[17, 33]), 2 * 640); // 64 + 2 · 288 = 640
        assert_eq!(Q4Kx16.bytes_for(&[16, 1408]), 5 * 2368 + 64 + 4 * 288); // 5.5 super-blocks
        assert_eq!(Q8_0x16.bytes_for(&[17, 33]), 2 * 1088);
        // Leading dimensions count as rows; 4.625 bits per weight when nothing is padded.
        assert_eq!(Q4Kx16.bytes_for(&[2, 8, 256]) * 8, 16 * 256 * 37 / 8);
        assert_eq!(Q4Kx16.bytes_for(&[0, 64]), 0);
        for q in [Q4Kx16, Q8_0x16] {
            assert!(q.is_tiled() && q.is_quantized());
            assert!(!q.cpu_layout().is_four_bit() || q == Q4Kx16);
            assert!(
                !StorageDtype::ALL.contains(&q),
                "{q} is not a configuration value"
            );
        }
        assert_eq!(Q4K.cpu_layout(), Q4Kx16);
        assert_eq!(Q4_0.cpu_layout(), Q4Kx16);
        assert_eq!(Q8_0.cpu_layout(), Q8_0x16);
        assert_eq!(Bf16.cpu_layout(), Bf16);
        assert_eq!(serde_json::to_value(Q4Kx16).unwrap(), "q4kx16");
    }

    #[test]
    fn names_parse_in_any_case_and_serialize_canonically() {
        for (value, name) in StorageDtype::ALL.iter().zip(StorageDtype::NAMES) {
            assert_eq!(value.name(), *name);
            assert_eq!(value.to_string(), *name);
            assert_eq!(
                name.to_ascii_uppercase().parse::<StorageDtype>(),
                Ok(*value)
            );
            assert_eq!(serde_json::to_value(value).unwrap(), *name);
        }
        let err = "q5k".parse::<StorageDtype>().unwrap_err();
        assert_eq!(
            err,
            "unknown storage type `q5k`; allowed: q4k, q4_0, q8_0, f16, bf16, f32"
        );
    }
}
