//! [`QuantizedActivations`]: the input rows of a quantized matmul, 8 bits per value per block.

use std::ops::Range;

use super::{QuantError, ThreadPool, BLOCK};

/// Activations `x [rows, k]` quantized per 32-block of each row: `x ≈ d·q`, `q ∈ −127..=127`
/// (`i8`), `d = max|x|/127` (f32), plus each block's `Σ q` (i32) and `d·Σq` (f32, the factor of
/// a 4-bit weight's minimum term, computed once here rather than in every kernel call) (GGML
/// `Q8_1` in spirit). `k` is padded to a multiple of 32 with `q = 0`.
///
/// A NaN or infinity in a block makes that block's `d` NaN (and its `q` and sum 0), so the
/// outputs that read it are NaN, as an f32 matmul's would be.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivations {
    rows: usize,
    cols: usize,
    blocks: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<i32>,
    sx: Vec<f32>,
}

/// One quantized row: `blocks × 32` values, `blocks` scales, sums and `d·Σq`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) sum: &'a [i32],
    /// `d·Σq` per block, `d[b] * sum[b] as f32`.
    pub(crate) sx: &'a [f32],
}

/// Values (`rows × k`) below which quantizing on one thread beats waking the pool.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// The row-major buffers of [`QuantizedActivations`] as raw pointers, for parts of a pool job
/// that each write their own rows.
struct RowsOut {
    q: *mut i8,
    d: *mut f32,
    sum: *mut i32,
    sx: *mut f32,
}

// SAFETY: every part of the job writes a disjoint range of rows (see `requantize_on`).
unsafe impl Sync for RowsOut {}

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
        self.requantize_on(x, rows, cols, None)
    }

    /// [`QuantizedActivations::quantize`] with the rows split over `pool` when there are many
    /// (at least 64 Ki values): the same bytes as on one thread.
    ///
    /// Errors: `x.len() != rows × cols` ([`QuantError::Length`]); a part panicked
    /// ([`QuantError::JobPanicked`]).
    pub fn quantize_on(
        x: &[f32],
        rows: usize,
        cols: usize,
        pool: &ThreadPool,
    ) -> Result<Self, QuantError> {
        let mut a = Self::default();
        a.requantize_on(x, rows, cols, Some(pool))?;
        Ok(a)
    }

    fn requantize_on(
        &mut self,
        x: &[f32],
        rows: usize,
        cols: usize,
        pool: Option<&ThreadPool>,
    ) -> Result<(), QuantError> {
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
        self.sx.clear();
        self.sx.resize(rows * blocks, 0.0);
        if blocks == 0 || rows == 0 {
            return Ok(());
        }
        let out = RowsOut {
            q: self.q.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            sum: self.sum.as_mut_ptr(),
            sx: self.sx.as_mut_ptr(),
        };
        // The whole struct (not its fields, which are not `Sync`) is what the closure borrows.
        let out = &out;
        let one_part = |span: Range<usize>| {
            for r in span {
                let b0 = r * blocks;
                // SAFETY: row `r` < `rows` lies inside the buffers sized above; no other part
                // writes it.
                let (q_row, d_row, sum_row, sx_row) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(out.q.add(b0 * BLOCK), blocks * BLOCK),
                        std::slice::from_raw_parts_mut(out.d.add(b0), blocks),
                        std::slice::from_raw_parts_mut(out.sum.add(b0), blocks),
                        std::slice::from_raw_parts_mut(out.sx.add(b0), blocks),
                    )
                };
                let x_row = &x[r * cols..(r + 1) * cols];
                for ((((xb, qb), d), s), sx) in x_row
                    .chunks(BLOCK)
                    .zip(q_row.chunks_exact_mut(BLOCK))
                    .zip(d_row)
                    .zip(sum_row)
                    .zip(sx_row)
                {
                    (*d, *s) = quantize_block_fast(xb, qb);
                    *sx = *d * *s as f32;
                }
            }
        };
        match pool {
            Some(pool) if pool.threads() > 1 && rows > 1 && x.len() >= PARALLEL_MIN_VALUES => {
                let parts = pool.threads().min(rows);
                pool.run(parts, |p| {
                    one_part(rows * p / parts..rows * (p + 1) / parts)
                })?;
            }
            _ => one_part(0..rows),
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
            sx: &self.sx[r * b..(r + 1) * b],
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
/// The reference for [`quantize_block_fast`], which must give the same bytes.
///
/// `d = max|x|/127`; `q = x/d` rounded half away from zero (`t + copysign(0.5, t)`,
/// truncated). A block with a NaN or infinity gets `d = NaN`, `q = 0`, `Σq = 0`, so every
/// output that reads it is NaN.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let (mut amax, mut finite) = (0f32, true);
    for &v in x {
        amax = amax.max(v.abs());
        finite &= v.is_finite();
    }
    if !finite {
        q.fill(0);
        return (f32::NAN, 0);
    }
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (qv, &v) in q.iter_mut().zip(x) {
        let t = v * inv;
        let r = ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127);
        *qv = r as i8;
        sum += r;
    }
    (d, sum)
}

/// [`quantize_block`] with AVX2 where the CPU has it (the same operations on 8 lanes, so
/// the same bytes); the scalar reference otherwise. A short tail block goes through a
/// zero-padded copy (zeros change neither the maximum nor the sum).
fn quantize_block_fast(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && q.len() >= BLOCK {
        let mut padded = [0f32; BLOCK];
        let full: &[f32] = if x.len() >= BLOCK {
            &x[..BLOCK]
        } else {
            padded[..x.len()].copy_from_slice(x);
            &padded
        };
        // SAFETY: AVX2 checked above; `full` has 32 values and `q` at least 32 bytes.
        return unsafe { x86::quantize_block_avx2(full.as_ptr(), q.as_mut_ptr()) };
    }
    quantize_block(x, q)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 32 values at `x` into 32 bytes at `q`; returns `(d, Σ q)`, bit for bit as
    /// [`super::quantize_block`]: the maximum over the magnitudes' bit patterns (ordered as
    /// the floats for non-negative values; a NaN or infinity shows as ≥ `0x7F80_0000`), then
    /// `vmulps`, `t + copysign(0.5, t)` (`vorps` of the sign), `vcvttps2dq` (truncation, as
    /// `as i32` in range), clamp, and packing to bytes in order.
    ///
    /// # Safety
    /// AVX2 available; `x` points to 32 readable f32, `q` to 32 writable bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block_avx2(x: *const f32, q: *mut i8) -> (f32, i32) {
        let abs_mask = _mm256_set1_epi32(0x7FFF_FFFF);
        let mut v = [_mm256_setzero_ps(); 4];
        let mut bits = _mm256_setzero_si256();
        for (i, vi) in v.iter_mut().enumerate() {
            // SAFETY: values 8i..8i+8 of the 32 the caller guarantees.
            *vi = unsafe { _mm256_loadu_ps(x.add(8 * i)) };
            bits = _mm256_max_epu32(bits, _mm256_and_si256(_mm256_castps_si256(*vi), abs_mask));
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 8 writable u32.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), bits) };
        let amax_bits = lanes.into_iter().max().unwrap_or(0);
        if amax_bits >= 0x7F80_0000 {
            // SAFETY: 32 writable bytes at `q`.
            unsafe { std::ptr::write_bytes(q, 0, 32) };
            return (f32::NAN, 0);
        }
        let d = f32::from_bits(amax_bits) / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.5);
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let mut qi = [_mm256_setzero_si256(); 4];
        for (qv, &vi) in qi.iter_mut().zip(&v) {
            let t = _mm256_mul_ps(vi, inv);
            let r = _mm256_add_ps(t, _mm256_or_ps(half, _mm256_and_ps(t, sign)));
            *qv = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(r), lo), hi);
        }
        let s = _mm256_add_epi32(
            _mm256_add_epi32(qi[0], qi[1]),
            _mm256_add_epi32(qi[2], qi[3]),
        );
        let mut sums = [0i32; 8];
        // SAFETY: `sums` is 8 writable i32.
        unsafe { _mm256_storeu_si256(sums.as_mut_ptr().cast(), s) };
        // packs work per 128-bit lane: bytes come out as q0[0..4] q1[0..4] q2[0..4] q3[0..4]
        // q0[4..8] …; the permutation puts each vector's 8 values back together in order.
        let p01 = _mm256_packs_epi32(qi[0], qi[1]);
        let p23 = _mm256_packs_epi32(qi[2], qi[3]);
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(p01, p23),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        // SAFETY: 32 writable bytes at `q`.
        unsafe { _mm256_storeu_si256(q.cast(), bytes) };
        (d, sums.iter().sum())
    }
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
        assert_eq!(row.sx[1].to_bits(), (row.d[1] * s as f32).to_bits());
        for (a, b) in a.dequantize().iter().zip(&x) {
            assert!((a - b).abs() <= 20.0 / 127.0 / 2.0 * 1.0001, "{a} vs {b}");
        }
    }

    #[test]
    fn the_fast_path_gives_the_reference_bytes() {
        use crate::quant::test_data::Lcg;
        let mut rng = Lcg(31);
        for len in [1, 5, 31, 32] {
            for case in 0..2000 {
                let scale = 10f32.powi((case % 13) - 6);
                let mut x: Vec<f32> = (0..len).map(|_| scale * rng.normal()).collect();
                match case % 7 {
                    0 => x.fill(0.0),
                    1 => x[0] = f32::NAN,
                    2 => x[len - 1] = f32::NEG_INFINITY,
                    3 => x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0), // ties
                    4 => x[0] = -0.0,
                    _ => {}
                }
                let (mut qa, mut qb) = ([0i8; BLOCK], [0i8; BLOCK]);
                let (da, sa) = quantize_block(&x, &mut qa);
                let (db, sb) = quantize_block_fast(&x, &mut qb);
                assert_eq!(da.to_bits(), db.to_bits(), "{x:?}");
                assert_eq!((qa, sa), (qb, sb), "{x:?}");
            }
        }
    }

    #[test]
    fn quantizing_on_a_pool_gives_the_same_bytes() {
        use crate::quant::test_data::Lcg;
        let mut rng = Lcg(7);
        let pool = ThreadPool::new(3).unwrap();
        for (rows, cols) in [(1, 70_000), (5, 20_000), (301, 1280), (2, 33)] {
            let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
            let one = QuantizedActivations::quantize(&x, rows, cols).unwrap();
            let many = QuantizedActivations::quantize_on(&x, rows, cols, &pool).unwrap();
            assert_eq!(one.q, many.q);
            assert_eq!(one.sum, many.sum);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one.d), bits(&many.d));
            assert_eq!(bits(&one.sx), bits(&many.sx));
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
