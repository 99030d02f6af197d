//! Our own 4-bit (and 8-bit) CPU matmul: a packed weight layout chosen for the kernels, the
//! quantizer that writes straight into it (one copy of the weights), and the kernels (scalar
//! reference, AVX2, AVX-512 VNNI) with a small parking thread pool; and a bf16 GEMV
//! (`bf16_matmul`) for weights kept in bf16. Every CPU load keeps its 4-bit and 8-bit linear
//! weights in these layouts (storage types `q4kx16` and `q8_0x16`): the loader quantizes into
//! them and `Linear` runs them through `MatWeight` (`crate::load::weights`).
//!
//! # The numbers
//!
//! Weights `W [n, k]` (row `j` = output `j`, `k` = input width) are cut along `k` into blocks of
//! [`BLOCK`] = 32 values. Each row's block is stored asymmetrically, as in GGML's `Q4_1`:
//! `w ≈ d·q + m` with `q ∈ 0..=15`. As in GGML's k-quants (`Q4_K`), `d` and `m` are themselves
//! quantized: the [`SUPER_BLOCK`] = 8 blocks of a row's 256-wide super-block share a bf16 scale
//! `D` and a bf16 minimum `M`, and each block keeps 8-bit codes, `d = D·sc` (`sc ∈ 0..=255`)
//! and `m = M·mn` (`mn ∈ −127..=127`; `Q4_K` has 6-bit codes and a non-positive minimum). The
//! quantizer fits each block's `d` and `m` by least squares (from its range, two rounds of
//! quantizing and solving for both; llama.cpp's k-quants fit theirs alike), codes them to the
//! nearest `sc` and `mn` on the super-block's `D = max d / 255` and `M = max|m| / 127`, and
//! gives each value the nearest of the block's 16 levels `d·q + m` (values beyond the ends
//! clamp to them). On N(0, 1) weights the RMS error is 6 % below that of the blocks' plain range
//! and 1 % below candle's `Q4_K` at 4.5 bits per weight (a test measures both). `d` and `m` are exact f32 products
//! (8 significant bits times 8), so every path computes them alike. A zero block gets
//! `d = m = 0`; a constant block `d = 0`.
//!
//! Activations `x [m_rows, k]` are quantized per 32-block to `i8` (`GGML Q8_1` in spirit):
//! `x ≈ d_x·q_x`, `d_x = max|x|/127`, `q_x ∈ −127..=127` (rounded half away from zero), and
//! each block keeps `s_x = Σ q_x`. One output is then
//!
//! ```text
//! y = Σ_blocks  d_w·d_x·Σ_i(q_w,i·q_x,i)  +  m_w·d_x·s_x
//! ```
//!
//! The inner sum is an exact integer (|·| ≤ 32·15·127 = 60 960): the kernels compute it with
//! `vpdpbusd` (AVX-512 VNNI: unsigned weight bytes × signed activation bytes, four at a time
//! into 32-bit lanes) or `vpmaddubsw` + `vpmaddwd` (AVX2), and every path gives bit-identical
//! integers. The float part is, per row and block in block order,
//! `acc = fma(f32(dot), d_w·d_x, acc); acc = fma(m_w, d_x·f32(s_x), acc)` — the same
//! operations in every path, so the outputs agree bit for bit too; the documented tolerance
//! ([`KERNEL_TOLERANCE`]) allows for a later path that sums in another order.
//! Padding columns (k not a multiple of 32) carry `q_x = 0`, so they add nothing.
//!
//! # The layout
//!
//! Rows are grouped in tiles of [`TILE_ROWS`] = 16: one AVX-512 register holds 16 `i32` lanes,
//! one per row, so one `vpdpbusd` advances 16 rows by 4 values of `k`; AVX2 takes the tile as
//! two halves of 8 rows. Within a tile the super-blocks follow each other in `k` order, and the
//! tiles follow each other: a GEMV reads the buffer once, front to back. A super-block is a
//! 64-byte header, then its (up to 8) *tile blocks* of 16 rows × 32 values of k, 288 bytes
//! each:
//!
//! ```text
//! header   byte  0..32  D: 16 × bf16, rows 0..15
//!          byte 32..64  M: 16 × bf16, rows 0..15
//! block    byte   0.. 64  chunk 0   row 0: [4 bytes] row 1: [4 bytes] … row 15: [4 bytes]
//!          byte  64..128  chunk 1   (same, next 4 values of k)
//!          byte 128..192  chunk 2
//!          byte 192..256  chunk 3
//!                         byte i of row r in chunk c: low nibble = q[r][4c + i], high nibble = q[r][16 + 4c + i]
//!          byte 256..272  sc: 16 × u8, rows 0..15
//!          byte 272..288  mn: 16 × i8, rows 0..15
//! ```
//!
//! So the low nibbles of the four chunks hold `k = 0..16` of the block and the high nibbles
//! `k = 16..32` (the within-row nibble order of GGML `Q4_1`), and one 64-byte load, masked or
//! shifted, is a ready `vpdpbusd` operand for 16 rows. A whole super-block is 64 + 8 × 288 =
//! 2368 bytes (37 cache lines) per 4096 weights = **4.625 bits per weight**; a tile whose
//! block count is not a multiple of 8 ends with a shorter super-block and is padded to 64
//! bytes. Plus padding: `k` rounded up to 32 and `n` to 16 (padded rows and columns are real
//! zero blocks in the buffer and counted by [`PackedQ4::bytes`]).
//!
//! # Sources
//!
//! - GGML block formats `Q4_1` (32 × 4-bit + f16 `d` + f16 `m`), `Q4_K` (super-blocks of 8 such
//!   blocks whose scales and minimums are 6-bit codes of an f16 pair) and `Q8_1` (32 × i8 +
//!   scale + sum), ggml/src/ggml-common.h, <https://github.com/ggml-org/llama.cpp>.
//! - llama.cpp's load-time repacking of several rows into interleaved blocks for AVX2/AVX-512
//!   (`ggml-cpu/repack.cpp`, `block_q4_0x8`/`x16`): the idea of streaming R rows at once.
//! - Intel® Intrinsics Guide / SDM: `VPDPBUSD` (AVX512_VNNI), `VPMADDUBSW`, `VPMADDWD`,
//!   `VCVTPH2PS` (F16C / AVX-512F), `VPMOVZXBD`/`VPMOVSXBD` (the codes widened to `i32`).
//!
//! # Tolerances (what the tests check)
//!
//! - quantize → dequantize: each 4-bit value is the nearest of its block's 16 levels (within
//!   f32 rounding of the division), and the RMS error is below candle's `Q4_K` and the blocks'
//!   plain range on normal and heavy-tailed weights; 8-bit: `|w − ŵ| ≤ d/2 + 4·ε·|w|`;
//! - reference GEMV vs an f32 matmul of the dequantized weight with the dequantized activation:
//!   float rounding only;
//! - each SIMD path vs the scalar reference: integer block dots bit-exact; outputs within
//!   [`KERNEL_TOLERANCE`].
//!
//! # 8-bit weights
//!
//! [`PackedQ8`] uses the same tiles for symmetric 8-bit weights (`w ≈ d·q`, `q ∈ −127..=127`,
//! f16 `d` per row and block, GGML `Q8_0` math; 8.5 bits per weight): quants stored +128 so
//! `vpdpbusd` applies, the offset removed exactly with the activation sums; AVX2 uses
//! `vpsignb`/`vpabsb` around `vpmaddubsw`. Its layout is drawn on [`PackedQ8`]; the drivers
//! take any [`PackedWeight`]. `y = Σ_blocks d_w·d_x·Σ_i(q_w,i·q_x,i)`, same tolerances.
//!
//! # Kernels and threads
//!
//! - [`Kernel`]: the path, [`Kernel::best`] detected once per process; every path can be
//!   forced ([`matmul_with`]) and a path the CPU lacks is an error, never undefined behaviour.
//! - [`matmul`] / [`matmul_with`] / [`matmul_quantized`]: `y [m, n] = x [m, k]·Wᵀ`. `m = 1` is
//!   the decode GEMV (one pass over the weight, front to back); for `m > 1` each weight tile
//!   is reused by a panel of up to 60 activation rows while it is in cache, so the GEMM reads
//!   the weight once per 60 rows: on AVX-512 VNNI and AVX2 the tile is unpacked once per
//!   panel and the rows are packed in groups of 6 for the whole call; AVX-512 takes a group
//!   in one micro-kernel call, and so does AVX2 (the six rows' `i16` sums fill its 16
//!   registers, its f32 accumulators stay in L1), each chunk's steps written as one `asm!`
//!   block so that the compiler cannot hoist and spill them. A panel of no more rows than one plain call takes (4; 2 on AVX2), and the scalar
//!   path, go straight from the packed tile.
//! - [`matmul_quantized_then`]: the same with an [`Epilogue`] (bias, elementwise activation,
//!   residual) applied to each run of 16 outputs by the thread that computed it, as it writes
//!   them: a layer's bias, its activation and the residual connection after it cost no
//!   second pass over the output and no second buffer.
//! - [`grouped_expert_gemv`]: a mixture-of-experts layer's routed (expert, token) pairs in one
//!   job; only the chosen experts are read, each once.
//! - [`ThreadPool`]: `threads` in all (the caller included, the `vlm.threads` setting); work
//!   is split by row tiles into parts of about 64 KiB, each thread takes its own contiguous
//!   run of them front to back and then steals from the back of the others' runs; idle
//!   workers sleep on a condition variable after watching for the next job for 50 µs. Results do not depend on the
//!   thread count (each output is computed whole by one thread).
//!
//! Stacked weights (`quantize_parts`: q/k/v, gate/up) start each part on a tile boundary, so a
//! part's bytes are what `StorageDtype::bytes_for` gives for it alone and the memory estimate
//! equals the load report.

mod activations;
mod bf16;
mod buffer;
mod error;
mod experts;
mod ggml_q4k;
pub mod kernels;
mod matmul;
mod packed_q4;
mod packed_q8;
mod pool;
#[cfg(test)]
mod tests;
mod weight;

pub use activations::QuantizedActivations;
pub use bf16::{bf16_matmul, BF16_GEMV_MAX_ROWS};
pub use error::QuantError;
pub use experts::{grouped_expert_gemv, ExpertRoute};
pub use ggml_q4k::{quantize_q4k, Q4K_BLOCK_BYTES, Q4K_BLOCK_VALUES};
pub use kernels::Kernel;
pub use matmul::{
    matmul, matmul_quantized, matmul_quantized_many, matmul_quantized_then, matmul_with, Epilogue,
    MatmulOut,
};
pub use packed_q4::{PackedQ4, QuantInput};
pub use packed_q8::PackedQ8;
pub use pool::physical_cores;
pub use pool::ThreadPool;
pub use weight::{PackedWeight, WeightFormat};

/// A whole number `0 ≤ r ≤ 255` held in an f32, as a byte: added to 2²³ it is the low byte
/// of the sum's mantissa (a bit cast, which vectorizes where a saturating conversion does
/// not).
#[inline(always)]
pub(crate) fn small_int(r: f32) -> u8 {
    (r + 8_388_608.0).to_bits() as u8
}

/// Output offset of each part of a stacked weight ([`PackedQ4::quantize_parts`]): part `i`
/// starts at the sum of the earlier parts' rows, each rounded up to a multiple of
/// [`TILE_ROWS`].
pub fn stacked_offsets(rows: &[usize]) -> Vec<usize> {
    let mut at = 0;
    rows.iter()
        .map(|&n| {
            let start = at;
            at += n.next_multiple_of(TILE_ROWS);
            start
        })
        .collect()
}

/// Rows (outputs) of a stacked weight: the last part's offset plus its rows (0 for none).
pub(crate) fn stacked_rows(rows: impl Iterator<Item = usize>) -> usize {
    let rows: Vec<usize> = rows.collect();
    match (stacked_offsets(&rows).last(), rows.last()) {
        (Some(start), Some(n)) => start + n,
        _ => 0,
    }
}

/// Values of `k` per quantization block (weights and activations).
pub const BLOCK: usize = 32;

/// Rows per tile of a [`PackedQ4`]: one AVX-512 register of 16 `i32` lanes, one lane per row.
pub const TILE_ROWS: usize = 16;

/// Blocks per super-block of a [`PackedQ4`] row: the blocks whose `d` and `m` are codes of one
/// bf16 scale and minimum (256 values of `k`, as GGML's k-quants).
pub const SUPER_BLOCK: usize = 8;

/// Allowed difference between a SIMD path's output and the scalar reference's, relative to the
/// sum of the magnitudes of the terms (`Σ_blocks |d_w·d_x·dot| + |m_w·d_x·s_x|`) of that
/// output, per block of `k`: `|y − y_ref| ≤ KERNEL_TOLERANCE · blocks · Σ|terms|`. Today's paths
/// use the same operations in the same order and agree exactly; this is the bound of any f32
/// summation order (about two roundings per term).
pub const KERNEL_TOLERANCE: f32 = 2.0 * f32::EPSILON;

#[cfg(test)]
pub(crate) mod test_data {
    //! Deterministic random data for the kernel tests.

    /// A 64-bit linear congruential generator (Knuth's MMIX constants).
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 32) as u32
        }

        /// Uniform in [0, 1).
        pub(crate) fn uniform(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
        }

        /// Approximately standard normal (sum of 4 uniforms, rescaled).
        pub(crate) fn normal(&mut self) -> f32 {
            let s: f32 = (0..4).map(|_| self.uniform()).sum();
            (s - 2.0) * 3f32.sqrt()
        }
    }

    /// `[n, k]` weights like a trained linear's: normal, scale 0.02, a per-row offset and an
    /// occasional outlier.
    pub(crate) fn random_weights(rng: &mut Lcg, n: usize, k: usize) -> Vec<f32> {
        let mut w = Vec::with_capacity(n * k);
        for _ in 0..n {
            let offset = 0.01 * rng.normal();
            for _ in 0..k {
                let outlier = if rng.next_u32().is_multiple_of(1000) {
                    8.0
                } else {
                    1.0
                };
                w.push(offset + 0.02 * outlier * rng.normal());
            }
        }
        w
    }

    /// `[m, k]` activations: normal, unit scale, a few large channels.
    pub(crate) fn random_activations(rng: &mut Lcg, m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| {
                let big = if (i % k) % 97 == 5 { 20.0 } else { 1.0 };
                big * rng.normal()
            })
            .collect()
    }
}
