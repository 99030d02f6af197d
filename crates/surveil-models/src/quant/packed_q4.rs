//! [`PackedQ4`]: 4-bit weights in row tiles with interleaved blocks, and the quantizer that
//! writes them (layout and math in the [module docs](super)).

use half::{bf16, f16};

use super::buffer::{pack_parts, AlignedBytes};
use super::{QuantError, BLOCK, TILE_BLOCK_BYTES, TILE_ROWS};

/// Offset of the 16 f16 scales `d` in a tile block.
pub(crate) const D_OFFSET: usize = TILE_ROWS * BLOCK / 2;
/// Offset of the 16 f16 minimums `m` in a tile block.
pub(crate) const M_OFFSET: usize = D_OFFSET + 2 * TILE_ROWS;

/// A float type weights can be quantized from: f32, bf16 or f16, read as f32 exactly.
pub trait QuantInput: Copy + Send + Sync + private::Sealed {
    /// The value as f32 (exact for every implementing type).
    fn to_f32(self) -> f32;
}

impl QuantInput for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl QuantInput for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl QuantInput for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

// A tile block is a whole number of cache lines.
const _: () = assert!(TILE_BLOCK_BYTES.is_multiple_of(64));

/// A linear weight `W [n, k]` quantized to 4 bits per value in the tiled layout of the
/// [module docs](super): 32-wide asymmetric blocks along `k` (f16 `d` and `m`, GGML `Q4_1`
/// math), rows in tiles of [`TILE_ROWS`] with their blocks interleaved. 5 bits per weight;
/// `k` is padded to a multiple of 32 and `n` to a multiple of 16 with zero blocks.
pub struct PackedQ4 {
    rows: usize,
    cols: usize,
    blocks: usize,
    tiles: usize,
    buf: AlignedBytes,
}

impl std::fmt::Debug for PackedQ4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQ4")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PackedQ4 {
    /// Quantize the row-major weight `w [rows, cols]` (rows = outputs `n`, cols = input width
    /// `k`) straight into the packed buffer, one row tile at a time: no full-size intermediate
    /// copy, the only allocation is the result.
    ///
    /// Errors: `w.len() != rows × cols` ([`QuantError::Length`]); a NaN or infinite value
    /// ([`QuantError::NonFiniteWeight`], with its row and column); a block whose minimum or
    /// scale overflows f16 ([`QuantError::OutOfRange`]).
    pub fn quantize<T: QuantInput>(w: &[T], rows: usize, cols: usize) -> Result<Self, QuantError> {
        Self::quantize_parts(&[(w, rows)], cols, 1)
    }

    /// Quantize several weights with the same input width, `parts[i] = (w_i [rows_i, cols],
    /// rows_i)`, stacked into one: part `i` starts at output
    /// [`stacked_offsets`](super::stacked_offsets)`(..)[i]` (a tile boundary; the rows between
    /// parts are zero). The tiles are quantized on `threads` threads; the result does not
    /// depend on the thread count.
    ///
    /// Errors: as [`PackedQ4::quantize`], for the first part at fault (rows counted within it).
    pub fn quantize_parts<T: QuantInput>(
        parts: &[(&[T], usize)],
        cols: usize,
        threads: usize,
    ) -> Result<Self, QuantError> {
        let blocks = cols.div_ceil(BLOCK);
        let (buf, tiles) = pack_parts(
            parts,
            cols,
            blocks * TILE_BLOCK_BYTES,
            threads,
            |w, rows, t, out| quantize_tile(w, rows, cols, t, out),
        )?;
        Ok(Self {
            rows: super::stacked_rows(parts.iter().map(|&(_, rows)| rows)),
            cols,
            blocks,
            tiles,
            buf,
        })
    }

    /// Output count `n` (rows of `W`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width `k` (columns of `W`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Blocks of 32 per row: `ceil(k / 32)`.
    pub fn blocks_per_row(&self) -> usize {
        self.blocks
    }

    /// Row tiles: `ceil(n / 16)`.
    pub fn tiles(&self) -> usize {
        self.tiles
    }

    /// `k` rounded up to a multiple of 32 (the stored width).
    pub fn padded_cols(&self) -> usize {
        self.blocks * BLOCK
    }

    /// `n` rounded up to a multiple of 16 (the stored rows).
    pub fn padded_rows(&self) -> usize {
        self.tiles * TILE_ROWS
    }

    /// Bytes resident for this weight: the packed buffer's allocation (padding included,
    /// `tiles × blocks × 320`); the struct itself adds 64 bytes.
    pub fn bytes(&self) -> usize {
        self.buf.allocated()
    }

    /// The packed buffer (64-byte aligned), `tiles × blocks × 320` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }

    /// The `blocks × 320` bytes of tile `tile` (< [`PackedQ4::tiles`]).
    pub(crate) fn tile(&self, tile: usize) -> &[u8] {
        let len = self.blocks * TILE_BLOCK_BYTES;
        &self.as_bytes()[tile * len..(tile + 1) * len]
    }

    /// The stored 4-bit value `q ∈ 0..=15` of `W[row, col]` (padding included: `row` <
    /// [`PackedQ4::padded_rows`], `col` < [`PackedQ4::padded_cols`]).
    pub fn quant(&self, row: usize, col: usize) -> u8 {
        let tb = self.tile_block(row / TILE_ROWS, col / BLOCK);
        nibble(tb, row % TILE_ROWS, col % BLOCK)
    }

    /// The stored `(d, m)` of the block `block` of row `row`, as f32.
    pub fn block_params(&self, row: usize, block: usize) -> (f32, f32) {
        let tb = self.tile_block(row / TILE_ROWS, block);
        (
            read_f16(tb, D_OFFSET, row % TILE_ROWS),
            read_f16(tb, M_OFFSET, row % TILE_ROWS),
        )
    }

    /// Row `row` (< [`PackedQ4::rows`]) dequantized into `out` (`k` values), `d·q + m` per
    /// value: an embedding lookup in a table stored as this weight.
    ///
    /// Panics when `row` or `out.len()` is out of range (callers check ids first).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "row {row} of {self:?}"
        );
        for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
            let (d, m) = self.block_params(row, b);
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = d * f32::from(self.quant(row, b * BLOCK + i)) + m;
            }
        }
    }

    /// The dequantized weight `[n, k]` row-major, `d·q + m` per value (tests, debugging).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (row, out_row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            if self.cols == 0 {
                break;
            }
            for (b, chunk) in out_row.chunks_mut(BLOCK).enumerate() {
                let (d, m) = self.block_params(row, b);
                for (i, v) in chunk.iter_mut().enumerate() {
                    *v = d * f32::from(self.quant(row, b * BLOCK + i)) + m;
                }
            }
        }
        out
    }

    /// The 320 bytes of block `block` of tile `tile`.
    fn tile_block(&self, tile: usize, block: usize) -> &[u8] {
        let at = (tile * self.blocks + block) * TILE_BLOCK_BYTES;
        &self.as_bytes()[at..at + TILE_BLOCK_BYTES]
    }
}

/// The 4-bit value of row `r` (0..16), position `i` (0..32) in a tile block.
#[inline]
pub(crate) fn nibble(tile_block: &[u8], r: usize, i: usize) -> u8 {
    let (chunk, shift) = if i < 16 {
        (i / 4, 0)
    } else {
        ((i - 16) / 4, 4)
    };
    (tile_block[chunk * 64 + r * 4 + i % 4] >> shift) & 0x0F
}

/// Little-endian f16 number `r` at `offset` of a tile block, as f32.
#[inline]
pub(crate) fn read_f16(tile_block: &[u8], offset: usize, r: usize) -> f32 {
    let at = offset + 2 * r;
    f16::from_le_bytes([tile_block[at], tile_block[at + 1]]).to_f32()
}

/// Quantize row tile `t` of `w [rows, cols]` into `out` (`blocks × 320` bytes, zeroed).
fn quantize_tile<T: QuantInput>(
    w: &[T],
    rows: usize,
    cols: usize,
    t: usize,
    out: &mut [u8],
) -> Result<(), QuantError> {
    let row0 = t * TILE_ROWS;
    let live_rows = (rows - row0).min(TILE_ROWS);
    for (b, tb) in out.chunks_exact_mut(TILE_BLOCK_BYTES).enumerate() {
        let col0 = b * BLOCK;
        let width = (cols - col0).min(BLOCK);
        for r in 0..live_rows {
            let row = row0 + r;
            let src = &w[row * cols + col0..row * cols + col0 + width];
            let mut vals = [0f32; BLOCK];
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for (i, (v, s)) in vals.iter_mut().zip(src).enumerate() {
                *v = s.to_f32();
                if !v.is_finite() {
                    return Err(QuantError::NonFiniteWeight {
                        row,
                        col: col0 + i,
                        value: *v,
                    });
                }
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            // m rounded down and d up, so every value lies in [m, m + 15·d].
            let m = f16_toward(lo, false);
            let d = f16_toward((hi - m.to_f32()) / 15.0, true);
            if !m.is_finite() || !d.is_finite() {
                return Err(QuantError::OutOfRange {
                    row,
                    col: col0,
                    min: lo,
                    max: hi,
                });
            }
            let (mf, df) = (m.to_f32(), d.to_f32());
            let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
            for (i, &v) in vals[..width].iter().enumerate() {
                // Non-negative up to rounding: `as u8` saturates at 0, the min caps at 15.
                let q = (((v - mf) * inv + 0.5) as u8).min(15);
                let (chunk, shift) = if i < 16 {
                    (i / 4, 0)
                } else {
                    ((i - 16) / 4, 4)
                };
                tb[chunk * 64 + r * 4 + i % 4] |= q << shift;
            }
            tb[D_OFFSET + 2 * r..D_OFFSET + 2 * r + 2].copy_from_slice(&d.to_le_bytes());
            tb[M_OFFSET + 2 * r..M_OFFSET + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
        }
    }
    Ok(())
}

/// `x` as f16, rounded toward +∞ (`up`) or −∞ instead of to nearest.
pub(crate) fn f16_toward(x: f32, up: bool) -> f16 {
    let h = f16::from_f32(x);
    let back = h.to_f32();
    if back == x || back.is_nan() || (up && back > x) || (!up && back < x) {
        return h;
    }
    let bits = h.to_bits();
    let zero = bits & 0x7FFF == 0;
    let negative = bits & 0x8000 != 0;
    let next = match (up, zero, negative) {
        (true, true, _) => 0x0001,
        (false, true, _) => 0x8001,
        (true, false, false) | (false, false, true) => bits + 1,
        (true, false, true) | (false, false, false) => bits - 1,
    };
    f16::from_bits(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::{random_weights, Lcg};

    /// `|w − ŵ| ≤ d/2 + 4·ε·max(|w|, |m|)` for every value, with the stored `d`, `m`.
    fn assert_within_half_step(w: &[f32], q: &PackedQ4) {
        let (n, k) = (q.rows(), q.cols());
        let deq = q.dequantize();
        for row in 0..n {
            for col in 0..k {
                let (d, m) = q.block_params(row, col / BLOCK);
                let (a, b) = (w[row * k + col], deq[row * k + col]);
                let bound = d / 2.0 + 4.0 * f32::EPSILON * a.abs().max(m.abs());
                assert!(
                    (a - b).abs() <= bound,
                    "[{row}, {col}] of [{n}, {k}]: {a} vs {b}, d = {d}, m = {m}"
                );
            }
        }
    }

    #[test]
    fn dequantized_values_are_within_half_a_step() {
        let mut rng = Lcg(7);
        for &(n, k) in &[(1, 1), (1, 31), (15, 33), (17, 64), (16, 4304), (3, 1408)] {
            let w = random_weights(&mut rng, n, k);
            let q = PackedQ4::quantize(&w, n, k).unwrap();
            assert_within_half_step(&w, &q);
        }
    }

    #[test]
    fn shapes_and_bytes_count_the_padding() {
        for &(n, k) in &[(1, 1), (15, 31), (17, 33), (16, 32), (30522, 1)] {
            let w = vec![0.5f32; n * k];
            let q = PackedQ4::quantize(&w, n, k).unwrap();
            let (tiles, blocks) = (n.div_ceil(16), k.div_ceil(32));
            assert_eq!((q.tiles(), q.blocks_per_row()), (tiles, blocks));
            assert_eq!(
                (q.padded_rows(), q.padded_cols()),
                (tiles * 16, blocks * 32)
            );
            assert_eq!(q.bytes(), tiles * blocks * 320);
            assert_eq!(q.as_bytes().len(), q.bytes());
            assert_eq!(q.as_bytes().as_ptr() as usize % 64, 0);
        }
        // 5 bits per weight when nothing is padded.
        let q = PackedQ4::quantize(&vec![1f32; 64 * 256], 64, 256).unwrap();
        assert_eq!(q.bytes() * 8, 64 * 256 * 5);
    }

    #[test]
    fn padding_rows_and_columns_are_zero_blocks() {
        let (n, k) = (17, 33);
        let w: Vec<f32> = (0..n * k).map(|i| 1.0 + i as f32).collect();
        let q = PackedQ4::quantize(&w, n, k).unwrap();
        for row in 0..q.padded_rows() {
            for col in 0..q.padded_cols() {
                if row >= n || col >= k {
                    assert_eq!(q.quant(row, col), 0, "[{row}, {col}]");
                }
            }
        }
        for row in n..q.padded_rows() {
            assert_eq!(q.block_params(row, 0), (0.0, 0.0));
        }
    }

    #[test]
    fn zero_and_constant_rows_have_no_nan() {
        let (n, k) = (3, 70);
        let mut w = vec![0f32; n * k];
        w[k..2 * k].fill(0.1); // not an f16 value: m rounds down, d covers the gap
        w[2 * k..].fill(-3.0);
        let q = PackedQ4::quantize(&w, n, k).unwrap();
        let deq = q.dequantize();
        assert!(deq.iter().all(|v| v.is_finite()));
        assert!(deq[..k].iter().all(|&v| v == 0.0));
        assert_eq!(q.block_params(0, 0), (0.0, 0.0));
        assert_eq!(q.block_params(2, 1), (0.0, -3.0));
        assert_within_half_step(&w, &q);
    }

    #[test]
    fn bf16_and_f32_inputs_give_the_same_packing() {
        let mut rng = Lcg(3);
        let w = random_weights(&mut rng, 20, 100);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let back: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let a = PackedQ4::quantize(&wb, 20, 100).unwrap();
        let b = PackedQ4::quantize(&back, 20, 100).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn non_finite_weights_are_errors_that_name_the_value() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = vec![0.25f32; 20 * 40];
            w[17 * 40 + 35] = bad;
            let err = PackedQ4::quantize(&w, 20, 40).unwrap_err();
            match &err {
                QuantError::NonFiniteWeight {
                    row: 17, col: 35, ..
                } => {}
                other => panic!("unexpected error {other:?}"),
            }
            assert!(err.to_string().contains("[17, 35]"), "{err}");
        }
        let err = PackedQ4::quantize(&[1e6f32, -1e6], 1, 2).unwrap_err();
        assert!(
            matches!(err, QuantError::OutOfRange { row: 0, col: 0, .. }),
            "{err}"
        );
        let err = PackedQ4::quantize(&[1f32; 5], 2, 3).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::Length {
                    expected: 6,
                    found: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn f16_rounding_is_directed() {
        let mut rng = Lcg(11);
        for _ in 0..10_000 {
            let x = rng.normal() * 10f32.powi((rng.next_u32() % 9) as i32 - 6);
            assert!(f16_toward(x, true).to_f32() >= x, "{x}");
            assert!(f16_toward(x, false).to_f32() <= x, "{x}");
        }
        assert_eq!(f16_toward(0.0, true).to_f32(), 0.0);
        assert!(f16_toward(1e-9, true).to_f32() > 0.0);
        assert!(f16_toward(-1e-9, false).to_f32() < 0.0);
    }
}
