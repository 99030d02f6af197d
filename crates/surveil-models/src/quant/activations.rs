//! [`QuantizedActivations`]: the input rows of a quantized matmul, 8 bits per value per block.

use super::{QuantError, BLOCK};

/// Activations `x [rows, k]` quantized per 32-block of each row: `x ≈ d·q`, `q ∈ −127..=127`
/// (`i8`), `d = max|x|/127` (f32), plus each block's `Σ q` (i32) for the weights' minimum term
/// (GGML `Q8_1` in spirit). `k` is padded to a multiple of 32 with `q = 0`.
///
/// A NaN or infinity in a block makes that block's `d` NaN (its `q` are then meaningless), so
/// the outputs that read it are NaN, as an f32 matmul's would be.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivations {
    rows: usize,
    cols: usize,
    blocks: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
}

/// One quantized row: `blocks × 32` values, `blocks` scales and sums.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) sum: &'a [i32],
}

impl QuantizedActivations {
    /// Quantize `x [rows, cols]` (row-major f32).
    ///
    /// Errors: `x.len() != rows × cols` ([`QuantError::Length`]).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Self, QuantError> {
        let mut a = Self::default();
        a.requantize(x, rows, cols)?;
        Ok(a)
    }

    /// [`QuantizedActivations::quantize`] into this value's buffers (no allocation when they
    /// are large enough already).
    pub fn requantize(&mut self, x: &[f32], rows: usize, cols: usize) -> Result<(), QuantError> {
        if Some(x.len()) != rows.checked_mul(cols) {
            return Err(QuantError::Length {
                what: "activations",
                expected: rows.saturating_mul(cols),
                found: x.len(),
            });
        }
        let blocks = cols.div_ceil(BLOCK);
        self.rows = rows;
        self.cols = cols;
        self.blocks = blocks;
        self.q.clear();
        self.q.resize(rows * blocks * BLOCK, 0);
        self.d.clear();
        self.d.resize(rows * blocks, 0.0);
        self.sum.clear();
        self.sum.resize(rows * blocks, 0);
        if blocks == 0 {
            return Ok(());
        }
        for (r, x_row) in x.chunks_exact(cols).enumerate() {
            let span = r * blocks..(r + 1) * blocks;
            let q_row = &mut self.q[span.start * BLOCK..span.end * BLOCK];
            for (((xb, qb), d), s) in x_row
                .chunks(BLOCK)
                .zip(q_row.chunks_exact_mut(BLOCK))
                .zip(&mut self.d[span.clone()])
                .zip(&mut self.sum[span])
            {
                (*d, *s) = quantize_block(xb, qb);
            }
        }
        Ok(())
    }

    /// Rows of `x`.
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

    /// Row `r` (< [`QuantizedActivations::rows`]).
    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let b = self.blocks;
        ActRow {
            q: &self.q[r * b * BLOCK..(r + 1) * b * BLOCK],
            d: &self.d[r * b..(r + 1) * b],
            sum: &self.sum[r * b..(r + 1) * b],
        }
    }

    /// The dequantized activations `[rows, k]`, `d·q` per value (tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            let row = self.row(r);
            out.extend((0..self.cols).map(|c| row.d[c / BLOCK] * f32::from(row.q[c])));
        }
        out
    }
}

/// Quantize up to 32 values into `q` (32 entries, the tail left 0); returns `(d, Σ q)`.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let (mut amax, mut finite) = (0f32, true);
    for &v in x {
        amax = amax.max(v.abs());
        finite &= v.is_finite();
    }
    // A non-finite input makes the block's scale NaN, so every output that reads it is NaN.
    let d = if finite { amax / 127.0 } else { f32::NAN };
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (qv, &v) in q.iter_mut().zip(x) {
        // Round half away from zero; `as` saturates (NaN becomes 0).
        let t = v * inv;
        let r = ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127);
        *qv = r as i8;
        sum += r;
    }
    (d, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_scaled_by_their_largest_magnitude() {
        let x: Vec<f32> = (0..40).map(|i| i as f32 - 20.0).collect();
        let a = QuantizedActivations::quantize(&x, 1, 40).unwrap();
        assert_eq!(a.blocks_per_row(), 2);
        let row = a.row(0);
        assert_eq!(row.d[0], 20.0 / 127.0);
        assert_eq!(row.q[0], -127);
        // The padded tail of the last block is zero and does not count in its sum.
        assert!(row.q[40..].iter().all(|&q| q == 0));
        let s: i32 = row.q[32..64].iter().map(|&q| i32::from(q)).sum();
        assert_eq!(row.sum[1], s);
        for (a, b) in a.dequantize().iter().zip(&x) {
            assert!((a - b).abs() <= 20.0 / 127.0 / 2.0 * 1.0001, "{a} vs {b}");
        }
    }

    #[test]
    fn zero_blocks_and_nan_do_not_panic() {
        let mut x = vec![0f32; 64];
        x[40] = f32::NAN;
        let a = QuantizedActivations::quantize(&x, 1, 64).unwrap();
        assert_eq!(a.row(0).d[0], 0.0);
        assert!(a.row(0).d[1].is_nan());
        let err = QuantizedActivations::quantize(&x, 2, 64).unwrap_err();
        assert!(matches!(
            err,
            QuantError::Length {
                expected: 128,
                found: 64,
                ..
            }
        ));
    }
}
