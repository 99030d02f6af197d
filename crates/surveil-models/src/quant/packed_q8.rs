//! [`PackedQ8`]: 8-bit symmetric weights in the same 16-row tiles as [`PackedQ4`](super::PackedQ4).

use half::f16;

use super::buffer::{pack_parts, AlignedBytes};
use super::packed_q4::f16_toward;
use super::{QuantError, QuantInput, BLOCK, TILE_ROWS};

/// Quant bytes of one Q8 tile block (16 rows × 32).
pub(crate) const Q8_QUANT_BYTES: usize = TILE_ROWS * BLOCK;
/// Scale bytes of one Q8 tile block (16 × f16).
pub(crate) const Q8_SCALE_BYTES: usize = 2 * TILE_ROWS;

/// Little-endian f16 number `r` at `offset` of `bytes`, as f32.
#[inline]
pub(crate) fn read_f16(bytes: &[u8], offset: usize, r: usize) -> f32 {
    let at = offset + 2 * r;
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Bytes of one Q8 tile of `blocks` blocks: quants, scales, padding to 64.
pub(crate) fn q8_tile_bytes(blocks: usize) -> usize {
    (blocks * (Q8_QUANT_BYTES + Q8_SCALE_BYTES)).next_multiple_of(64)
}

/// A linear weight `W [n, k]` quantized to 8 bits per value in row tiles of [`TILE_ROWS`].
///
/// Per (row, 32-block): `w ≈ d·q`, `q ∈ −127..=127`, f16 `d` rounded up from `max|w|/127` so
/// `|w − d·q| ≤ d/2` (GGML `Q8_0`). The quants are stored offset by +128 as `u8`, so
/// `vpdpbusd` (unsigned × signed) applies directly; the offset comes back out exactly through
/// the activation block's sum: `Σ q_w·q_x = Σ (q_w + 128)·q_x − 128·Σ q_x`. One tile holds its
/// blocks' quants, then its blocks' scales, padded to a cache line:
///
/// ```text
/// block b, bytes 512b .. 512b+512: chunk c = 0..8 (64 bytes): row r's 4 bytes = q[r][4c..4c+4] + 128
/// then bytes 512·blocks + 32b .. +32: d of rows 0..15 (f16)
/// ```
///
/// 544 bytes per 512 weights = 8.5 bits per weight; `k` is padded to a multiple of 32 and `n`
/// to a multiple of 16 (zero blocks, counted by [`PackedQ8::bytes`]).
pub struct PackedQ8 {
    rows: usize,
    cols: usize,
    blocks: usize,
    tiles: usize,
    buf: AlignedBytes,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQ8")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PackedQ8 {
    /// Quantize the row-major weight `w [rows, cols]` straight into the packed buffer, one
    /// row tile at a time.
    ///
    /// Errors: `w.len() != rows × cols` ([`QuantError::Length`]); a NaN or infinite value
    /// ([`QuantError::NonFiniteWeight`]); a block whose scale overflows f16
    /// ([`QuantError::OutOfRange`]).
    pub fn quantize<T: QuantInput>(w: &[T], rows: usize, cols: usize) -> Result<Self, QuantError> {
        Self::quantize_parts(&[(w, rows)], cols, 1)
    }

    /// Several weights with the same input width stacked into one, as
    /// [`PackedQ4::quantize_parts`](super::PackedQ4::quantize_parts) does.
    ///
    /// Errors: as [`PackedQ8::quantize`], for the first part at fault.
    pub fn quantize_parts<T: QuantInput>(
        parts: &[(&[T], usize)],
        cols: usize,
        threads: usize,
    ) -> Result<Self, QuantError> {
        let blocks = cols.div_ceil(BLOCK);
        let tile_bytes = if blocks > 0 { q8_tile_bytes(blocks) } else { 0 };
        let (buf, tiles) = pack_parts(parts, cols, tile_bytes, threads, |w, rows, t, out| {
            quantize_tile(w, rows, cols, blocks, t, out)
        })?;
        Ok(Self {
            rows: super::stacked_rows(parts.iter().map(|&(_, rows)| rows)),
            cols,
            blocks,
            tiles,
            buf,
        })
    }

    /// Output count `n`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width `k`.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Blocks of 32 per row.
    pub fn blocks_per_row(&self) -> usize {
        self.blocks
    }

    /// Row tiles.
    pub fn tiles(&self) -> usize {
        self.tiles
    }

    /// Bytes resident: the packed buffer's allocation (padding included).
    pub fn bytes(&self) -> usize {
        self.buf.allocated()
    }

    /// The bytes of tile `tile`.
    pub(crate) fn tile(&self, tile: usize) -> &[u8] {
        let len = q8_tile_bytes(self.blocks);
        &self.buf.as_bytes()[tile * len..(tile + 1) * len]
    }

    /// The stored `q ∈ −127..=127` of `W[row, col]` (padding included).
    pub fn quant(&self, row: usize, col: usize) -> i8 {
        let (b, i) = (col / BLOCK, col % BLOCK);
        let byte = self.tile(row / TILE_ROWS)
            [b * Q8_QUANT_BYTES + (i / 4) * 64 + (row % TILE_ROWS) * 4 + i % 4];
        (byte ^ 0x80) as i8
    }

    /// The stored scale `d` of block `block` of row `row`.
    pub fn block_scale(&self, row: usize, block: usize) -> f32 {
        let at = self.blocks * Q8_QUANT_BYTES + block * Q8_SCALE_BYTES + 2 * (row % TILE_ROWS);
        let tile = self.tile(row / TILE_ROWS);
        f16::from_le_bytes([tile[at], tile[at + 1]]).to_f32()
    }

    /// Row `row` (< [`PackedQ8::rows`]) dequantized into `out` (`k` values).
    ///
    /// Panics when `row` or `out.len()` is out of range (callers check ids first).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "row {row} of {self:?}"
        );
        for (c, v) in out.iter_mut().enumerate() {
            *v = self.block_scale(row, c / BLOCK) * f32::from(self.quant(row, c));
        }
    }

    /// The dequantized weight `[n, k]`, `d·q` per value (tests, debugging).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            out.extend(
                (0..self.cols)
                    .map(|c| self.block_scale(row, c / BLOCK) * f32::from(self.quant(row, c))),
            );
        }
        out
    }
}

fn quantize_tile<T: QuantInput>(
    w: &[T],
    rows: usize,
    cols: usize,
    blocks: usize,
    t: usize,
    tile: &mut [u8],
) -> Result<(), QuantError> {
    let row0 = t * TILE_ROWS;
    let live_rows = (rows - row0).min(TILE_ROWS);
    let (quants, scales) = tile.split_at_mut(blocks * Q8_QUANT_BYTES);
    // Zero weights are 128 offset; padding rows and columns too.
    quants.fill(0x80);
    for b in 0..blocks {
        let col0 = b * BLOCK;
        let width = (cols - col0).min(BLOCK);
        let qb = &mut quants[b * Q8_QUANT_BYTES..(b + 1) * Q8_QUANT_BYTES];
        for r in 0..live_rows {
            let row = row0 + r;
            let src = &w[row * cols + col0..row * cols + col0 + width];
            let mut vals = [0f32; BLOCK];
            let mut amax = 0f32;
            for (i, (v, s)) in vals.iter_mut().zip(src).enumerate() {
                *v = s.to_f32();
                if !v.is_finite() {
                    return Err(QuantError::NonFiniteWeight {
                        row,
                        col: col0 + i,
                        value: *v,
                    });
                }
                amax = amax.max(v.abs());
            }
            let d = f16_toward(amax / 127.0, true);
            if !d.is_finite() {
                return Err(QuantError::OutOfRange {
                    row,
                    col: col0,
                    min: -amax,
                    max: amax,
                });
            }
            let df = d.to_f32();
            let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
            for (i, &v) in vals[..width].iter().enumerate() {
                let x = v * inv;
                let q = ((x + 0.5f32.copysign(x)) as i32).clamp(-127, 127);
                qb[(i / 4) * 64 + r * 4 + i % 4] = (q + 128) as u8;
            }
            let at = b * Q8_SCALE_BYTES + 2 * r;
            scales[at..at + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::{random_weights, Lcg};

    #[test]
    fn dequantized_values_are_within_half_a_step() {
        let mut rng = Lcg(21);
        for &(n, k) in &[(1, 1), (1, 31), (15, 33), (17, 64), (16, 4304), (3, 1408)] {
            let w = random_weights(&mut rng, n, k);
            let q = PackedQ8::quantize(&w, n, k).unwrap();
            let deq = q.dequantize();
            for row in 0..n {
                for col in 0..k {
                    let d = q.block_scale(row, col / BLOCK);
                    let (a, b) = (w[row * k + col], deq[row * k + col]);
                    assert!(
                        (a - b).abs() <= d / 2.0 + 4.0 * f32::EPSILON * a.abs(),
                        "[{row}, {col}]: {a} vs {b}, d = {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn sizes_padding_and_errors() {
        let q = PackedQ8::quantize(&[0f32; 17 * 33], 17, 33).unwrap();
        assert_eq!(q.bytes(), 2 * q8_tile_bytes(2));
        assert_eq!(q.bytes(), 2 * 1088);
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
        assert_eq!(q.quant(31, 63), 0);
        // 8.5 bits per weight when nothing is padded (an even block count).
        let q = PackedQ8::quantize(&vec![1f32; 32 * 64], 32, 64).unwrap();
        assert_eq!(q.bytes() * 16, 32 * 64 * 17);
        let mut w = vec![0.5f32; 40];
        w[37] = f32::NAN;
        assert!(matches!(
            PackedQ8::quantize(&w, 2, 20),
            Err(QuantError::NonFiniteWeight {
                row: 1,
                col: 17,
                ..
            })
        ));
        assert!(matches!(
            PackedQ8::quantize(&[1e7f32], 1, 1),
            Err(QuantError::OutOfRange { .. })
        ));
    }
}
