//! [`PackedWeight`]: what the matmul drivers need of a packed weight, for every format.

use super::{PackedQ4, PackedQ8};

/// The packed formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// [`PackedQ4`]: 4-bit asymmetric (`d·q + m`, `d` and `m` 8-bit codes per 256), 4.625 bits
    /// per weight.
    Q4,
    /// [`PackedQ8`]: 8-bit symmetric (`d·q`), 8.5 bits per weight.
    Q8,
}

/// A weight `W [n, k]` packed in row tiles of 16 for the kernels ([`PackedQ4`], [`PackedQ8`]).
/// Sealed: the kernels rely on each format's layout.
pub trait PackedWeight: Sync + private::Sealed {
    /// The format.
    fn format(&self) -> WeightFormat;
    /// Outputs `n`.
    fn rows(&self) -> usize;
    /// Input width `k`.
    fn cols(&self) -> usize;
    /// Row tiles, `ceil(n / 16)`.
    fn tiles(&self) -> usize;
    /// Blocks of 32 per row, `ceil(k / 32)`.
    fn blocks_per_row(&self) -> usize;
    /// Bytes resident (the packed buffer's allocation, padding included).
    fn bytes(&self) -> usize;
    /// The packed bytes of row tile `tile` (< [`PackedWeight::tiles`]).
    fn tile(&self, tile: usize) -> &[u8];
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::PackedQ4 {}
    impl Sealed for super::PackedQ8 {}
    impl<W: Sealed> Sealed for &W {}
}

/// A reference to a packed weight is one (lists of experts held elsewhere).
impl<W: PackedWeight> PackedWeight for &W {
    fn format(&self) -> WeightFormat {
        (**self).format()
    }
    fn rows(&self) -> usize {
        (**self).rows()
    }
    fn cols(&self) -> usize {
        (**self).cols()
    }
    fn tiles(&self) -> usize {
        (**self).tiles()
    }
    fn blocks_per_row(&self) -> usize {
        (**self).blocks_per_row()
    }
    fn bytes(&self) -> usize {
        (**self).bytes()
    }
    fn tile(&self, tile: usize) -> &[u8] {
        (**self).tile(tile)
    }
}

impl PackedWeight for PackedQ4 {
    fn format(&self) -> WeightFormat {
        WeightFormat::Q4
    }
    fn rows(&self) -> usize {
        PackedQ4::rows(self)
    }
    fn cols(&self) -> usize {
        PackedQ4::cols(self)
    }
    fn tiles(&self) -> usize {
        PackedQ4::tiles(self)
    }
    fn blocks_per_row(&self) -> usize {
        PackedQ4::blocks_per_row(self)
    }
    fn bytes(&self) -> usize {
        PackedQ4::bytes(self)
    }
    fn tile(&self, tile: usize) -> &[u8] {
        PackedQ4::tile(self, tile)
    }
}

impl PackedWeight for PackedQ8 {
    fn format(&self) -> WeightFormat {
        WeightFormat::Q8
    }
    fn rows(&self) -> usize {
        PackedQ8::rows(self)
    }
    fn cols(&self) -> usize {
        PackedQ8::cols(self)
    }
    fn tiles(&self) -> usize {
        PackedQ8::tiles(self)
    }
    fn blocks_per_row(&self) -> usize {
        PackedQ8::blocks_per_row(self)
    }
    fn bytes(&self) -> usize {
        PackedQ8::bytes(self)
    }
    fn tile(&self, tile: usize) -> &[u8] {
        PackedQ8::tile(self, tile)
    }
}
