//! GGML's `Q4_K` blocks, the 4-bit storage a GPU load uploads and candle's CUDA kernels
//! multiply, written by a vectorized quantizer of our own.
//!
//! A block holds 256 consecutive values of a row as eight sub-blocks of 32:
//! `w ≈ d·sc·q − dmin·m`, with `q ∈ 0..=15` per value, 6-bit codes `sc` and `m` per sub-block,
//! and an f16 `d` and `dmin` per block (llama.cpp's `block_q4_K`, candle's `BlockQ4K`):
//!
//! ```text
//! byte   0..2    d     f16, little-endian
//! byte   2..4    dmin  f16
//! byte   4..16   the 6-bit codes: bytes 0..4 hold sc[0..4] (low 6 bits), bytes 4..8 m[0..4];
//!                bytes 8..12 hold sc[4..8] (low nibble) and m[4..8] (high nibble), whose top
//!                two bits sit in the top bits of bytes 0..4 (sc) and 4..8 (m)
//! byte  16..144  q: for each 64 values c, byte 32·c + i = q[64c + i] | q[64c + 32 + i] << 4
//! ```
//!
//! The numbers are those of candle 0.11's `BlockQ4K::from_float` (its port of llama.cpp's
//! k-quants reference quantizer): per sub-block, `make_qkx1_quants(15, 5, …)` fits a scale and
//! a non-positive minimum by up to five rounds of rounding the values and solving least squares
//! for the scale and the mean for the minimum; the block's largest scale and minimum set `d`
//! and `dmin`, the codes are their rounded fractions, and each value is rounded against the
//! coded scale and minimum. The blocks are byte for byte candle's (a test compares them on
//! random, constant, zero, one-signed and outlying rows). candle's quantizer works one
//! sub-block at a time with a scalar loop and an allocation per sub-block (344 ms for a
//! 1536 × 8960 weight on one thread of the development machine, `cargo bench -p
//! surveil-models --bench kernels -- quantize/`); this one runs the sixteen sub-blocks of two
//! blocks side by side in vector lanes, each lane summing its values in candle's order, so
//! every float operation is the same (28 ms in the same run).

use super::{small_int, QuantError};
use half::f16;

/// Values per `Q4_K` block (`QK_K`).
pub const Q4K_BLOCK_VALUES: usize = 256;

/// Bytes per `Q4_K` block: f16 `d` and `dmin`, 12 bytes of codes, 128 of quants.
pub const Q4K_BLOCK_BYTES: usize = 144;

/// Sub-blocks per block (values per sub-block: 32).
const SUBS: usize = 8;
const SUB: usize = 32;

/// Largest quant.
const NMAX: i32 = 15;

/// Rounds of `make_qkx1_quants`.
const ROUNDS: usize = 5;

/// Quantize `x` (whole blocks of [`Q4K_BLOCK_VALUES`] values, a row's blocks in order) into
/// `out` ([`Q4K_BLOCK_BYTES`] per block), the bytes candle's `BlockQ4K::from_float` writes for
/// the same values. Non-finite values are quantized as candle does (they give meaningless
/// blocks): callers check finiteness when they need to.
///
/// On x86-64 with AVX2 the same code runs compiled for 256-bit vectors (no FMA: the compiler
/// does not fuse a multiply and an add on its own, so the bytes are the same on every CPU).
///
/// Errors: [`QuantError::Length`] when `x` is not whole blocks or `out` has another size.
pub fn quantize_q4k(x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    if !x.len().is_multiple_of(Q4K_BLOCK_VALUES) {
        return Err(QuantError::Length {
            what: "q4_K input (whole 256-value blocks)",
            expected: x.len().next_multiple_of(Q4K_BLOCK_VALUES),
            found: x.len(),
        });
    }
    let blocks = x.len() / Q4K_BLOCK_VALUES;
    if out.len() != blocks * Q4K_BLOCK_BYTES {
        return Err(QuantError::Length {
            what: "q4_K output bytes",
            expected: blocks * Q4K_BLOCK_BYTES,
            found: out.len(),
        });
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { quantize_blocks_avx2(x, out) };
        return Ok(());
    }
    quantize_blocks_any(x, out);
    Ok(())
}

/// [`quantize_q4k`]'s loop compiled with AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], out: &mut [u8]) {
    quantize_blocks_any(x, out)
}

/// The loop over blocks, inlined into each compiled form.
#[inline(always)]
fn quantize_blocks_any(x: &[f32], out: &mut [u8]) {
    // What `Iterator::sum` of f32 starts from (candle's minimum update sums with it).
    let sum_start: f32 = std::iter::empty::<f32>().sum();
    // Two blocks at a time: sixteen lanes, two vectors per step, whose in-order sums are
    // independent chains (one block's eight lanes alone wait on their adds' latency).
    let pairs = x.len() / (2 * Q4K_BLOCK_VALUES);
    let (x2, x1) = x.split_at(pairs * 2 * Q4K_BLOCK_VALUES);
    let (o2, o1) = out.split_at_mut(pairs * 2 * Q4K_BLOCK_BYTES);
    for (values, blocks) in x2
        .chunks_exact(2 * Q4K_BLOCK_VALUES)
        .zip(o2.chunks_exact_mut(2 * Q4K_BLOCK_BYTES))
    {
        quantize_group::<{ 2 * SUBS }>(values, blocks, sum_start);
    }
    for (values, block) in x1
        .chunks_exact(Q4K_BLOCK_VALUES)
        .zip(o1.chunks_exact_mut(Q4K_BLOCK_BYTES))
    {
        quantize_group::<SUBS>(values, block, sum_start);
    }
}

/// `v` rounded half away from zero, as an `i32` (saturating): llama.cpp's `nearest_int` as
/// candle writes it.
#[inline(always)]
fn nearest(v: f32) -> i32 {
    v.round() as i32
}

/// `clamp(nearest(v), 0, 15)` as an f32 whole number: NaN gives 0, as the reference's
/// saturating conversion does, and so does `-0` (+0, as the reference's integer 0 converts).
#[inline(always)]
fn quant(v: f32) -> f32 {
    let r = v.round();
    let r = if r > NMAX as f32 { NMAX as f32 } else { r };
    if r > 0.0 {
        r
    } else {
        0.0
    }
}

/// `L / 8` consecutive blocks: `x` `L · 32` values, `out` `L / 8 · 144` bytes. Sub-block `j`
/// (of all the blocks, in order) runs in lane `j`.
#[inline(always)]
fn quantize_group<const L: usize>(x: &[f32], out: &mut [u8], sum_start: f32) {
    // xt[i][j] = x[32·j + i].
    let mut xt = [[0f32; L]; SUB];
    for (j, sub) in x.chunks_exact(SUB).enumerate() {
        for (i, &v) in sub.iter().enumerate() {
            xt[i][j] = v;
        }
    }
    let (scales, mins) = fit_sub_blocks(&xt, sum_start);
    for (b, (values, block)) in x
        .chunks_exact(Q4K_BLOCK_VALUES)
        .zip(out.chunks_exact_mut(Q4K_BLOCK_BYTES))
        .enumerate()
    {
        let lanes = b * SUBS..(b + 1) * SUBS;
        encode_block(values, block, &scales[lanes.clone()], &mins[lanes]);
    }
}

/// One block's bytes (`out`, 144) from its 256 values and its sub-blocks' fitted scales and
/// negated minimums (8 each).
#[inline(always)]
fn encode_block(x: &[f32], out: &mut [u8], scales: &[f32], mins: &[f32]) {
    // The block's scale and minimum, and each sub-block's 6-bit fraction of them.
    let max_scale = scales.iter().fold(0.0f32, |m, &v| v.max(m));
    let max_min = mins.iter().fold(0.0f32, |m, &v| v.max(m));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; SUBS];
    let mut mc = [0u8; SUBS];
    for j in 0..SUBS {
        sc[j] = nearest(inv_scale * scales[j]).min(63) as u8;
        mc[j] = nearest(inv_min * mins[j]).min(63) as u8;
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    out[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_bits().to_le_bytes());
    let codes = &mut out[4..16];
    codes.fill(0);
    for j in 0..SUBS {
        if j < 4 {
            codes[j] = sc[j];
            codes[j + 4] = mc[j];
        } else {
            codes[j + 4] = (sc[j] & 0xF) | ((mc[j] & 0xF) << 4);
            codes[j - 4] |= (sc[j] >> 4) << 6;
            codes[j] |= (mc[j] >> 4) << 6;
        }
    }

    // Each value against its sub-block's coded scale and minimum.
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    let mut q = [0u8; Q4K_BLOCK_VALUES];
    for (j, (sub, qs)) in x.chunks_exact(SUB).zip(q.chunks_exact_mut(SUB)).enumerate() {
        let scale = d * f32::from(sc[j]);
        if scale == 0.0 {
            continue;
        }
        let shift = dmin * f32::from(mc[j]);
        for (qv, &v) in qs.iter_mut().zip(sub) {
            *qv = small_int(quant((v + shift) / scale));
        }
    }
    let packed = &mut out[16..Q4K_BLOCK_BYTES];
    for (lo_hi, bytes) in q.chunks_exact(2 * SUB).zip(packed.chunks_exact_mut(SUB)) {
        let (lo, hi) = lo_hi.split_at(SUB);
        for ((b, &l), &h) in bytes.iter_mut().zip(lo).zip(hi) {
            *b = l | (h << 4);
        }
    }
}

/// `make_qkx1_quants(15, 5, …)` of the `L` sub-blocks in `xt` (`xt[i][j]` = value `i` of
/// sub-block `j`), lane by lane: returns each sub-block's scale and its minimum negated
/// (`≥ 0`). A constant sub-block gets `(0, 0)`.
///
/// Per lane, as the reference: `min ← min(smallest, 0)`, `iscale = 15 / (largest − min)`;
/// then up to five rounds of `l_i = clamp(round(iscale·(x_i − min)), 0, 15)`,
/// `scale = Σ(x_i − min)·l_i / Σ l_i²`, `min ← min(mean(x_i − scale·l_i), 0)`,
/// `iscale = 1/scale`, stopping after a round that left every `l_i` as it was. The lanes run
/// their rounds together; a lane that stopped keeps its scale and minimum while the others go
/// on. The sums run over `i` in order, as the reference's.
#[inline(always)]
fn fit_sub_blocks<const L: usize>(xt: &[[f32; L]; SUB], sum_start: f32) -> ([f32; L], [f32; L]) {
    let mut lo = xt[0];
    let mut hi = xt[0];
    for row in &xt[1..] {
        for j in 0..L {
            lo[j] = if row[j] < lo[j] { row[j] } else { lo[j] };
            hi[j] = if row[j] > hi[j] { row[j] } else { hi[j] };
        }
    }
    let mut min = [0f32; L];
    let mut iscale = [0f32; L];
    let mut scale = [0f32; L];
    for j in 0..L {
        min[j] = lo[j].min(0.0);
        iscale[j] = NMAX as f32 / (hi[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    // The quants as f32 (whole numbers 0..=15, so every product and the sum of squares,
    // at most 32·225, are exact, as the reference's integers are).
    let mut l = [[0f32; L]; SUB];
    // Lanes still iterating: a lane stops after a round that left its quants as they were.
    let mut active = [true; L];
    for _ in 0..ROUNDS {
        let mut sumlx = [0f32; L];
        let mut suml2 = [0f32; L];
        let mut changed = [0u32; L];
        for (row, li) in xt.iter().zip(l.iter_mut()) {
            for j in 0..L {
                let v = quant(iscale[j] * (row[j] - min[j]));
                changed[j] |= u32::from(v != li[j]);
                li[j] = v;
                sumlx[j] += (row[j] - min[j]) * v;
                suml2[j] += v * v;
            }
        }
        let mut next_scale = [0f32; L];
        for j in 0..L {
            next_scale[j] = sumlx[j] / suml2[j];
        }
        let mut sum = [sum_start; L];
        for (row, li) in xt.iter().zip(&l) {
            for j in 0..L {
                sum[j] += row[j] - next_scale[j] * li[j];
            }
        }
        for j in 0..L {
            let mut next_min = sum[j] / SUB as f32;
            if next_min > 0.0 {
                next_min = 0.0;
            }
            // A stopped lane keeps its result (its quants are not read again).
            if active[j] {
                scale[j] = next_scale[j];
                min[j] = next_min;
                iscale[j] = 1.0 / next_scale[j];
            }
            active[j] &= changed[j] != 0;
        }
        if !active.iter().any(|&a| a) {
            break;
        }
    }
    let mut mins = [0f32; L];
    for j in 0..L {
        if hi[j] == lo[j] {
            scale[j] = 0.0;
        } else {
            mins[j] = -min[j];
        }
    }
    (scale, mins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// candle's bytes for `rows × cols` values.
    fn candle_bytes(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
        let t = Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        q.data().unwrap().into_owned()
    }

    fn ours(values: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; values.len() / Q4K_BLOCK_VALUES * Q4K_BLOCK_BYTES];
        quantize_q4k(values, &mut out).unwrap();
        out
    }

    /// Rows that exercise every branch: random normal rows at several scales, a zero block,
    /// constant blocks (positive, negative), one-signed blocks (the minimum clamped to 0),
    /// outliers, tiny values (subnormal f16 scales) and huge ones (an f16 overflow, as
    /// candle's).
    fn awkward_rows(cols: usize) -> Vec<Vec<f32>> {
        let mut rng = crate::quant::test_data::Lcg(17);
        let mut rows = Vec::new();
        for scale in [1.0f32, 0.02, 300.0] {
            rows.push((0..cols).map(|_| scale * rng.normal()).collect());
        }
        rows.push(vec![0.0; cols]);
        rows.push(vec![0.75; cols]);
        rows.push(vec![-2.5; cols]);
        rows.push((0..cols).map(|_| rng.normal().abs() + 0.1).collect());
        rows.push((0..cols).map(|_| -rng.normal().abs() - 0.1).collect());
        let mut outliers: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        for i in (0..cols).step_by(37) {
            outliers[i] *= 50.0;
        }
        rows.push(outliers);
        rows.push((0..cols).map(|_| 1e-6 * rng.normal()).collect());
        rows.push((0..cols).map(|_| 1e6 * rng.normal()).collect());
        // Mixed sub-blocks in one block: zeros, a constant, one-signed and normal values.
        let mut mixed: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        for b in mixed.chunks_mut(SUB).step_by(3) {
            b.fill(0.0);
        }
        for b in mixed.chunks_mut(SUB).skip(1).step_by(5) {
            b.fill(-1.25);
        }
        rows.push(mixed);
        rows
    }

    #[test]
    fn blocks_are_candles_bytes() {
        let cols = 4 * Q4K_BLOCK_VALUES;
        let rows = awkward_rows(cols);
        for (r, row) in rows.iter().enumerate() {
            let want = candle_bytes(row, 1, cols);
            let got = ours(row);
            assert_eq!(got.len(), want.len());
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "row {r}: first differing byte {at} (block {}, byte {}): ours {} candle {}",
                    at / Q4K_BLOCK_BYTES,
                    at % Q4K_BLOCK_BYTES,
                    got[at],
                    want[at]
                );
            }
        }
        // A whole matrix at once.
        let flat: Vec<f32> = rows.concat();
        assert_eq!(ours(&flat), candle_bytes(&flat, rows.len(), cols));
        // An odd number of blocks: pairs, then one alone.
        for row in awkward_rows(3 * Q4K_BLOCK_VALUES) {
            assert_eq!(ours(&row), candle_bytes(&row, 1, row.len()));
        }
    }

    /// The AVX2 form and the portable form write the same bytes.
    #[test]
    fn compiled_forms_agree() {
        let flat: Vec<f32> = awkward_rows(2 * Q4K_BLOCK_VALUES).concat();
        let mut portable = vec![0u8; flat.len() / Q4K_BLOCK_VALUES * Q4K_BLOCK_BYTES];
        quantize_blocks_any(&flat, &mut portable);
        assert_eq!(ours(&flat), portable);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let x = vec![0f32; 300];
        let err = quantize_q4k(&x, &mut [0u8; 144]).unwrap_err().to_string();
        assert!(err.contains("256-value blocks"), "{err}");
        let x = vec![0f32; 256];
        let err = quantize_q4k(&x, &mut [0u8; 143]).unwrap_err().to_string();
        assert!(err.contains("output bytes"), "{err}");
    }
}
