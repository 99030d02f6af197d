//! The x86-64 paths: AVX-512 VNNI and AVX2. Same integer sums and the same float operations
//! in the same order as [`super::scalar`], so the outputs agree bit for bit.
//!
//! Safety contract of every `unsafe fn` here: the CPU has the features of its
//! `#[target_feature]` (the safe wrappers check [`Kernel::is_available`]), `tile` points to
//! the `blocks` blocks of its format (Q4: `q4_tile_bytes(blocks)` bytes; Q8: `blocks × 544`),
//! and each
//! activation row to `blocks × 32` `i8` and `blocks` f32 scales, i32 sums and f32 `d·Σq` (the
//! wrappers take them from slices checked by [`super::tile_outputs`]), or a packed row group
//! to `blocks × rows × 40` bytes ([`super::PackedRows`]).

use std::arch::x86_64::*;

use crate::quant::activations::ActRow;
use crate::quant::packed_q4::{
    q4_block_offset, q4_header_offset, q4_tile_bytes, HEADER_M_OFFSET, MN_OFFSET, Q4_BLOCK_BYTES,
    Q4_QUANT_BYTES, SC_OFFSET,
};
use crate::quant::packed_q8::{Q8_QUANT_BYTES, Q8_SCALE_BYTES};
use crate::quant::{Kernel, BLOCK, SUPER_BLOCK, TILE_ROWS};

use super::{GROUP_BLOCK_BYTES, MAX_ROWS_PER_CALL};

/// Tile blocks the Q4 kernels prefetch ahead of the one they compute (4.5 KB at 16): enough
/// lines in flight to cover DRAM latency in the decode GEMV, where each weight byte is read
/// once and the hardware prefetcher alone leaves the loop waiting. 16 rather than 8: on an AMD
/// EPYC Zen 5, whose bandwidth per core is higher, one thread's GEMV from DRAM went from
/// 26–31 to 32–34 GB/s (docs/performance.md), and 5 KB ahead still sits well inside any L1.
/// A Q4 super-block's 64-byte header between its blocks shifts the stream by less than a
/// block, which the prefetches' overlap (5 lines per 288-byte block) mostly covers.
const PREFETCH_BLOCKS: usize = 16;

/// Prefetch the `block_bytes` bytes [`PREFETCH_BLOCKS`] blocks after `block` (into the next
/// tile at a tile's end: tiles are contiguous). A prefetch never faults, so an address past
/// the buffer is harmless; `wrapping_add` keeps the pointer arithmetic defined.
#[inline(always)]
fn prefetch_ahead(block: *const u8, block_bytes: usize) {
    let ahead = block.wrapping_add(PREFETCH_BLOCKS * block_bytes);
    for line in 0..block_bytes.div_ceil(64) {
        // SAFETY: SSE is part of x86-64; prefetching any address is defined behaviour.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line).cast()) };
    }
}

/// Raw pointers to one activation row's blocks.
#[derive(Clone, Copy)]
struct RowPtrs {
    q: *const i8,
    d: *const f32,
    sum: *const i32,
    sx: *const f32,
}

/// The first `R` rows as pointers (`rows` has at least `R`).
fn row_ptrs<const R: usize>(rows: &[ActRow<'_>]) -> [RowPtrs; R] {
    std::array::from_fn(|i| RowPtrs::new(&rows[i]))
}

impl RowPtrs {
    fn new(row: &ActRow<'_>) -> Self {
        Self {
            q: row.q.as_ptr(),
            d: row.d.as_ptr(),
            sum: row.sum.as_ptr(),
            sx: row.sx.as_ptr(),
        }
    }
}

/// Four activation bytes `q[at..at + 4]` as one `i32` (little-endian), to broadcast.
///
/// # Safety
/// `q.add(at)` points to 4 readable bytes.
#[inline(always)]
unsafe fn quad(q: *const i8, at: usize) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes at `q + at`; no alignment is assumed.
    unsafe { q.add(at).cast::<i32>().read_unaligned() }
}

/// `(d_x, d_x·Σq_x)` of block `b` of a row, as quantization stored them.
///
/// # Safety
/// Block `b` exists in `row`.
#[inline(always)]
unsafe fn block_scales(row: RowPtrs, b: usize) -> (f32, f32) {
    // SAFETY: the caller guarantees block `b` is inside the row's scale arrays.
    unsafe { (*row.d.add(b), *row.sx.add(b)) }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI
// ---------------------------------------------------------------------------------------------

/// The four 64-byte chunks of a tile block as eight `u8` operands: `[lo0, hi0, lo1, hi1, …]`,
/// where `lo_c` holds `k = 4c..4c+4` and `hi_c` `k = 16+4c..16+4c+4` of the 16 rows.
///
/// # Safety
/// AVX-512F/BW available; `tb` points to 256 readable bytes.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn unpack_avx512(tb: *const u8) -> [__m512i; 8] {
    let mask = _mm512_set1_epi8(0x0F);
    let mut w = [_mm512_setzero_si512(); 8];
    for c in 0..4 {
        // SAFETY: chunk `c` is bytes 64c..64c+64 of the 256 the caller guarantees.
        let v = unsafe { _mm512_loadu_si512(tb.add(64 * c).cast()) };
        w[2 * c] = _mm512_and_si512(v, mask);
        w[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
    }
    w
}

/// `Σ q_w·q_x` of the 16 rows (one `i32` lane each) for the unpacked block `w` and the 32
/// activation bytes at `xq`: eight `vpdpbusd` in two chains.
///
/// # Safety
/// AVX-512F/BW/VNNI available; `xq` points to 32 readable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn idot_avx512(w: &[__m512i; 8], xq: *const i8) -> __m512i {
    let mut lo = _mm512_setzero_si512();
    let mut hi = _mm512_setzero_si512();
    for c in 0..4 {
        // SAFETY: offsets 4c and 16+4c (+4) stay within the 32 bytes the caller guarantees.
        let (xl, xh) = unsafe { (quad(xq, 4 * c), quad(xq, 16 + 4 * c)) };
        lo = _mm512_dpbusd_epi32(lo, w[2 * c], _mm512_set1_epi32(xl));
        hi = _mm512_dpbusd_epi32(hi, w[2 * c + 1], _mm512_set1_epi32(xh));
    }
    _mm512_add_epi32(lo, hi)
}

/// 16 bf16 at `p` widened to f32 (exact: a bf16 is the high half of an f32).
///
/// # Safety
/// AVX-512F available; `p` points to 32 readable bytes.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn widen_bf16_avx512(p: *const u8) -> __m512 {
    // SAFETY: 32 readable bytes at `p` (the caller's contract); no alignment is assumed.
    let v = unsafe { _mm256_loadu_si256(p.cast()) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
}

/// A super-block header's `D` and `M` of the 16 rows, as f32.
///
/// # Safety
/// AVX-512F available; `header` points to a 64-byte super-block header.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn header_avx512(header: *const u8) -> (__m512, __m512) {
    // SAFETY: `D` at 0..32 and `M` at 32..64 of the header (the caller's contract).
    unsafe {
        (
            widen_bf16_avx512(header),
            widen_bf16_avx512(header.add(HEADER_M_OFFSET)),
        )
    }
}

/// A tile block's `d = D·sc` and `m = M·mn` of the 16 rows, from its super-block's `(D, M)`.
/// Exact products (8 significant bits times an 8-bit integer), as the scalar path's.
///
/// # Safety
/// AVX-512F available; `tb` points to a 288-byte tile block.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_params_avx512(tb: *const u8, (d, m): (__m512, __m512)) -> (__m512, __m512) {
    // SAFETY: the codes are 16 bytes each at 256 and 272 of the tile block (the contract).
    let (sc, mn) = unsafe {
        (
            _mm_loadu_si128(tb.add(SC_OFFSET).cast()),
            _mm_loadu_si128(tb.add(MN_OFFSET).cast()),
        )
    };
    (
        _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc))),
        _mm512_mul_ps(m, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(mn))),
    )
}

/// See [`super::block_dots`].
pub(super) fn block_dots_avx512(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    let mut out = [0i32; TILE_ROWS];
    if !Kernel::Avx512Vnni.is_available() || quants.len() < Q4_QUANT_BYTES || xq.len() < BLOCK {
        return super::scalar::block_dots(quants, xq);
    }
    // SAFETY: features checked above; 256 quant bytes and 32 activation bytes checked above;
    // `out` has room for 16 i32.
    unsafe {
        let v = idot_avx512(&unpack_avx512(quants.as_ptr()), xq.as_ptr());
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
    }
    out
}

/// Adds one block of `R` activation rows to their accumulators: the eight `vpdpbusd` per row
/// against the unpacked block `w`, then `dot · d_w·d_x + m_w · (d_x Σq_x)` in two FMAs (the
/// scalar path's order). `quad(r, at)` is the 4 bytes at offset `at` of row `r`'s 32
/// activation bytes, `scales(r)` its `(d_x, d_x·Σq_x)`.
///
/// The `vpdpbusd` are issued chunk-major over the rows (`lo`/`hi` of row 0, of row 1, …, then
/// the next chunk), so that neighbouring instructions belong to independent chains: each
/// chain waits the instruction's latency (5 cycles) between its steps, and with the rows
/// interleaved the scheduler finds other work in that time without looking far ahead.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn accumulate<const R: usize>(
    acc: &mut [__m512; R],
    w: &[__m512i; 8],
    dw: __m512,
    mw: __m512,
    quad: impl Fn(usize, usize) -> i32,
    scales: impl Fn(usize) -> (f32, f32),
) {
    let mut lo = [_mm512_setzero_si512(); R];
    let mut hi = [_mm512_setzero_si512(); R];
    for c in 0..4 {
        for r in 0..R {
            let (xl, xh) = (quad(r, 4 * c), quad(r, 16 + 4 * c));
            lo[r] = _mm512_dpbusd_epi32(lo[r], w[2 * c], _mm512_set1_epi32(xl));
            hi[r] = _mm512_dpbusd_epi32(hi[r], w[2 * c + 1], _mm512_set1_epi32(xh));
        }
    }
    for r in 0..R {
        let (dx, sx) = scales(r);
        let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(lo[r], hi[r]));
        acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[r]);
        acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), acc[r]);
    }
}

/// [`accumulate`] for block `b` of `R` separate rows.
///
/// # Safety
/// AVX-512F/BW/VNNI available; block `b` of every row exists.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn accumulate_rows<const R: usize>(
    acc: &mut [__m512; R],
    w: &[__m512i; 8],
    dw: __m512,
    mw: __m512,
    rows: [RowPtrs; R],
    b: usize,
) {
    accumulate(
        acc,
        w,
        dw,
        mw,
        // SAFETY: block `b` of every row exists (the caller's contract); `at + 4 ≤ 32`.
        |r, at| unsafe { quad(rows[r].q.add(b * BLOCK), at) },
        // SAFETY: as above.
        |r| unsafe { block_scales(rows[r], b) },
    )
}

/// The `R` rows' 16 outputs into `out`.
#[target_feature(enable = "avx512f")]
#[inline]
fn store_rows<const R: usize>(acc: &[__m512; R], out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// `R` activation rows against one tile: per super-block its `D` and `M` widened once, then
/// per tile block the nibbles unpacked and `d`, `m` formed once, and per row eight
/// `vpdpbusd`, one `vcvtdq2ps` and two FMAs into that row's 16 f32 accumulators.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_avx512<const R: usize>(
    tile: *const u8,
    blocks: usize,
    rows: [RowPtrs; R],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for s in 0..blocks.div_ceil(SUPER_BLOCK) {
        // SAFETY: super-block `s` and its blocks `b` < `blocks` lie inside the tile (module
        // contract): a 64-byte header, then 288-byte blocks with quants at 0..256 and the
        // codes at 256..288.
        unsafe {
            let header = header_avx512(tile.add(q4_header_offset(s)));
            for b in s * SUPER_BLOCK..blocks.min((s + 1) * SUPER_BLOCK) {
                let tb = tile.add(q4_block_offset(b));
                prefetch_ahead(tb, Q4_BLOCK_BYTES);
                let w = unpack_avx512(tb);
                let (dw, mw) = block_params_avx512(tb, header);
                accumulate_rows(&mut acc, &w, dw, mw, rows, b);
            }
        }
    }
    store_rows(&acc, out);
}

/// See [`super::tile_outputs`]; falls back to the scalar path if the CPU lacks the features.
pub(super) fn tile_outputs_avx512(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    if !Kernel::Avx512Vnni.is_available() {
        return super::scalar::tile_outputs(tile, blocks, rows, out);
    }
    let t = tile.as_ptr();
    // SAFETY: features checked above; `super::tile_outputs` checked the tile and rows hold
    // `blocks` blocks.
    unsafe {
        match rows.len() {
            0 => {}
            1 => tile_avx512::<1>(t, blocks, row_ptrs(rows), out),
            2 => tile_avx512::<2>(t, blocks, row_ptrs(rows), out),
            3 => tile_avx512::<3>(t, blocks, row_ptrs(rows), out),
            _ => tile_avx512::<4>(t, blocks, row_ptrs(rows), out),
        }
    }
}

/// One tile block unpacked for [`tile_grouped_avx512`] and [`tile_grouped_avx2`]: the eight
/// `u8` operands of [`unpack_avx512`] (each 64 bytes: rows 0–7 in the low 32, the AVX2
/// operand of half 0, rows 8–15 in the high 32), then the 16 rows' scales `d` and minimums `m`
/// as f32 (`D·sc`, `M·mn`).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct UnpackedBlock {
    w: [[u8; 64]; 8],
    d: [f32; TILE_ROWS],
    m: [f32; TILE_ROWS],
}

impl UnpackedBlock {
    pub(crate) const ZERO: Self = Self {
        w: [[0; 64]; 8],
        d: [0.0; TILE_ROWS],
        m: [0.0; TILE_ROWS],
    };
}

/// Unpack the `blocks` blocks of a Q4 tile into `dst` (one [`UnpackedBlock`] each), so that a
/// panel of activation rows pays the nibble unpacking and the scales' decoding once per tile
/// instead of once per micro-kernel call.
///
/// # Safety
/// AVX-512F/BW available; `tile` points to a Q4 tile of `blocks` blocks; `dst` has `blocks`
/// entries.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack_tile_avx512(tile: *const u8, blocks: usize, dst: *mut UnpackedBlock) {
    for b in 0..blocks {
        // SAFETY: block `b` < `blocks` and its super-block's header lie inside the tile, and
        // entry `b` inside `dst` (the contract); `UnpackedBlock` is 64-aligned.
        unsafe {
            let tb = tile.add(q4_block_offset(b));
            let header = header_avx512(tile.add(q4_header_offset(b / SUPER_BLOCK)));
            let out = dst.add(b);
            let w = unpack_avx512(tb);
            for (i, v) in w.iter().enumerate() {
                _mm512_store_si512((*out).w[i].as_mut_ptr().cast(), *v);
            }
            let (d, m) = block_params_avx512(tb, header);
            _mm512_store_ps((*out).d.as_mut_ptr(), d);
            _mm512_store_ps((*out).m.as_mut_ptr(), m);
        }
    }
}

/// [`accumulate`] for block `b` of a group of `R` packed rows ([`super::PackedRows`]: per block
/// the rows' 32 quants, then their `d`, then their `d·Σq`, at `grp`).
///
/// # Safety
/// AVX-512F/BW/VNNI available; `grp` points to the group's `blocks` packed blocks, `b` below.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn accumulate_group<const R: usize>(
    acc: &mut [__m512; R],
    w: &[__m512i; 8],
    dw: __m512,
    mw: __m512,
    grp: *const u8,
    b: usize,
) {
    // Block `b` of the group (inside it by the caller's contract): `R × 32` quant bytes, then
    // `R` f32 scales, then `R` f32 `d·Σq`, unaligned (the packing does not align them).
    let base = grp.wrapping_add(b * R * GROUP_BLOCK_BYTES);
    let q = base.cast::<i8>();
    let scales = base.wrapping_add(R * BLOCK).cast::<f32>();
    accumulate(
        acc,
        w,
        dw,
        mw,
        // SAFETY: row `r`'s 32 quants are at `q + 32r` (contract); `at + 4 ≤ 32`.
        |r, at| unsafe { quad(q, 32 * r + at) },
        // SAFETY: the `R` scales then the `R` `d·Σq` follow the quants (contract).
        |r| unsafe {
            (
                scales.add(r).read_unaligned(),
                scales.add(R + r).read_unaligned(),
            )
        },
    )
}

/// [`tile_avx512`] on a tile unpacked by [`unpack_tile_avx512`] and a group of `R` rows packed
/// together ([`super::PackedRows`]): the same integer and float operations in the same order
/// (so the same bits), the weights loaded ready instead of unpacked, and every row's block
/// found from one pointer (six rows' separate pointers would not fit the general registers).
///
/// # Safety
/// AVX-512F/BW/VNNI available; `un` points to `blocks` unpacked blocks; `grp` to a group of
/// `R` rows of `blocks` packed blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_grouped_avx512<const R: usize>(
    un: *const UnpackedBlock,
    blocks: usize,
    grp: *const u8,
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        // SAFETY: block `b` < `blocks` of `un` (the contract); 64-aligned.
        let (w, dw, mw) = unsafe {
            let ub = un.add(b);
            let mut w = [_mm512_setzero_si512(); 8];
            for (i, v) in w.iter_mut().enumerate() {
                *v = _mm512_load_si512((*ub).w[i].as_ptr().cast());
            }
            (
                w,
                _mm512_load_ps((*ub).d.as_ptr()),
                _mm512_load_ps((*ub).m.as_ptr()),
            )
        };
        // SAFETY: block `b` of the group exists (the contract).
        unsafe { accumulate_group(&mut acc, &w, dw, mw, grp, b) };
    }
    store_rows(&acc, out);
}

/// Unpack a Q4 tile of `blocks` blocks into `dst` (resized to `blocks`) for `kernel`'s
/// grouped micro-kernel ([`tile_outputs_grouped_avx512`], [`tile_outputs_grouped_avx2`]; both
/// read the same layout). Returns `false` (and leaves `dst` alone) when `kernel` has no
/// unpacked form, the CPU lacks its features, or `tile` is short.
pub(super) fn unpack_tile(
    kernel: Kernel,
    tile: &[u8],
    blocks: usize,
    dst: &mut Vec<UnpackedBlock>,
) -> bool {
    let has = match kernel {
        Kernel::Avx512Vnni | Kernel::Avx2 => kernel.is_available(),
        Kernel::Scalar => false,
    };
    if !has || tile.len() < q4_tile_bytes(blocks) {
        return false;
    }
    dst.resize(blocks, UnpackedBlock::ZERO);
    // SAFETY: features and tile length checked above; `dst` has `blocks` entries.
    unsafe {
        if kernel == Kernel::Avx512Vnni {
            unpack_tile_avx512(tile.as_ptr(), blocks, dst.as_mut_ptr());
        } else {
            unpack_tile_avx2(tile.as_ptr(), blocks, dst.as_mut_ptr());
        }
    }
    true
}

/// `$f::<R>(args)` for a group of `R = $rows` rows (1 to [`MAX_ROWS_PER_CALL`]; 0 runs
/// nothing).
macro_rules! by_group_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            0 => {}
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $f::<6>($($arg),*),
        }
    };
}

/// [`tile_outputs_avx512`] on a tile unpacked by [`unpack_tile`], for the `rows` rows of a
/// group packed at `group` ([`super::PackedRows`]): same outputs, bit for bit.
///
/// # Panics
/// When `un` has fewer than `blocks` entries, `group` is shorter than `rows` rows of `blocks`
/// blocks, `rows` is over [`MAX_ROWS_PER_CALL`], or the CPU lacks the features (callers
/// unpack with [`unpack_tile`] first, which checks them).
pub(super) fn tile_outputs_grouped_avx512(
    un: &[UnpackedBlock],
    blocks: usize,
    group: &[u8],
    rows: usize,
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    check_grouped(Kernel::Avx512Vnni, un, blocks, group, rows);
    let (u, g) = (un.as_ptr(), group.as_ptr());
    // SAFETY: features, `un` and the group's length checked above.
    unsafe { by_group_rows!(rows, tile_grouped_avx512(u, blocks, g, out)) }
}

/// The checks of the grouped entry points (see their `# Panics`).
fn check_grouped(kernel: Kernel, un: &[UnpackedBlock], blocks: usize, group: &[u8], rows: usize) {
    assert!(
        un.len() >= blocks && kernel.is_available(),
        "tile not unpacked"
    );
    assert!(
        rows <= MAX_ROWS_PER_CALL && group.len() >= rows * blocks * GROUP_BLOCK_BYTES,
        "row group shorter than its blocks"
    );
}

// ---------------------------------------------------------------------------------------------
// AVX2
// ---------------------------------------------------------------------------------------------

/// Chunk `c` of a tile block for the 8 rows of half `h`: `(lo, hi)` as in [`unpack_avx512`].
///
/// # Safety
/// AVX2 available; `tb` points to 256 readable bytes; `c < 4`, `h < 2`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn unpack_avx2(tb: *const u8, c: usize, h: usize) -> (__m256i, __m256i) {
    let mask = _mm256_set1_epi8(0x0F);
    // SAFETY: bytes 64c + 32h .. +32 lie inside the 256 the caller guarantees.
    let v = unsafe { _mm256_loadu_si256(tb.add(64 * c + 32 * h).cast()) };
    (
        _mm256_and_si256(v, mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
    )
}

/// Adds chunk `c`'s products of one half to the `i16` pair sums `s`: two `vpmaddubsw`
/// (u8 × i8, adjacent pairs summed into i16). Each lane adds 8 pairs of at most
/// 2·15·127 = 3810 in magnitude over a block: ≤ 30 480, no `i16` overflow, and `vpmaddubsw`
/// never saturates (weights ≤ 15, |q_x| ≤ 127).
///
/// # Safety
/// AVX2 available; `xq` points to 32 readable bytes; `c < 4`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_chunk_avx2(
    s: __m256i,
    (lo, hi): (__m256i, __m256i),
    xq: *const i8,
    c: usize,
) -> __m256i {
    // SAFETY: offsets 4c and 16+4c (+4) stay within the 32 bytes the caller guarantees.
    let (xl, xh) = unsafe { (quad(xq, 4 * c), quad(xq, 16 + 4 * c)) };
    let s = _mm256_add_epi16(s, _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xl)));
    _mm256_add_epi16(s, _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xh)))
}

/// The `i16` pair sums of a half into one `i32` per row (`vpmaddwd` with ones).
#[target_feature(enable = "avx2")]
#[inline]
fn finish_avx2(s: __m256i) -> __m256i {
    _mm256_madd_epi16(s, _mm256_set1_epi16(1))
}

/// `d = D·sc` and `m = M·mn` of the 8 rows of half `h` of a tile block `tb` in the
/// super-block whose header is at `header`, as f32 (exact products, as the scalar path's).
///
/// # Safety
/// AVX2 available; `tb` points to a 288-byte tile block, `header` to a 64-byte header; `h < 2`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_params_avx2(tb: *const u8, header: *const u8, h: usize) -> (__m256, __m256) {
    // SAFETY: `D` and `M` of rows 8h..8h+8 are 16 bytes at 16h and 32 + 16h of the header,
    // their codes 8 bytes at 256 + 8h and 272 + 8h of the block (the caller's contract).
    let (d, m, sc, mn) = unsafe {
        (
            _mm_loadu_si128(header.add(16 * h).cast()),
            _mm_loadu_si128(header.add(HEADER_M_OFFSET + 16 * h).cast()),
            _mm_loadl_epi64(tb.add(SC_OFFSET + 8 * h).cast()),
            _mm_loadl_epi64(tb.add(MN_OFFSET + 8 * h).cast()),
        )
    };
    (
        _mm256_mul_ps(
            widen_bf16_avx2(d),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)),
        ),
        _mm256_mul_ps(
            widen_bf16_avx2(m),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(mn)),
        ),
    )
}

/// 8 bf16 widened to f32 (exact: a bf16 is the high half of an f32).
#[target_feature(enable = "avx2")]
#[inline]
fn widen_bf16_avx2(v: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

/// See [`super::block_dots`].
pub(super) fn block_dots_avx2(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    let mut out = [0i32; TILE_ROWS];
    if !Kernel::Avx2.is_available() || quants.len() < Q4_QUANT_BYTES || xq.len() < BLOCK {
        return super::scalar::block_dots(quants, xq);
    }
    for h in 0..2 {
        // SAFETY: features checked above; 256 quant bytes and 32 activation bytes checked
        // above; `out[8h..8h + 8]` is 8 writable i32.
        unsafe {
            let mut s = _mm256_setzero_si256();
            for c in 0..4 {
                s = add_chunk_avx2(s, unpack_avx2(quants.as_ptr(), c, h), xq.as_ptr(), c);
            }
            _mm256_storeu_si256(out.as_mut_ptr().add(8 * h).cast(), finish_avx2(s));
        }
    }
    out
}

/// `R` activation rows against one tile, both 8-row halves in one pass (so a GEMV reads each
/// tile block once): per chunk one load per half, two `vpmaddubsw` per row and half.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const R: usize>(
    tile: *const u8,
    blocks: usize,
    rows: [RowPtrs; R],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        // SAFETY: block `b` < `blocks` and its super-block's header lie inside the tile
        // (module contract).
        let (tb, header) = unsafe {
            (
                tile.add(q4_block_offset(b)),
                tile.add(q4_header_offset(b / SUPER_BLOCK)),
            )
        };
        prefetch_ahead(tb, Q4_BLOCK_BYTES);
        let mut s = [[_mm256_setzero_si256(); 2]; R];
        for c in 0..4 {
            for h in 0..2 {
                // SAFETY: the tile block has 256 bytes of quants; `c < 4`, `h < 2`.
                let w = unsafe { unpack_avx2(tb, c, h) };
                for (sr, row) in s.iter_mut().zip(rows) {
                    // SAFETY: block `b` of every row exists (module contract).
                    sr[h] = unsafe { add_chunk_avx2(sr[h], w, row.q.add(b * BLOCK), c) };
                }
            }
        }
        for h in 0..2 {
            // SAFETY: a 288-byte tile block and a 64-byte header (above); `h < 2`.
            let (dw, mw) = unsafe { block_params_avx2(tb, header, h) };
            for ((a, sr), row) in acc.iter_mut().zip(&s).zip(rows) {
                // SAFETY: block `b` of every row exists (module contract).
                let (dx, sx) = unsafe { block_scales(row, b) };
                let dot = _mm256_cvtepi32_ps(finish_avx2(sr[h]));
                a[h] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, _mm256_set1_ps(dx)), a[h]);
                a[h] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), a[h]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32, two halves of 8.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}

/// See [`super::tile_outputs`]; falls back to the scalar path if the CPU lacks the features.
pub(super) fn tile_outputs_avx2(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    if !Kernel::Avx2.is_available() {
        return super::scalar::tile_outputs(tile, blocks, rows, out);
    }
    let t = tile.as_ptr();
    let r = |i: usize| RowPtrs::new(&rows[i]);
    // SAFETY: features checked above; `super::tile_outputs` checked the tile and rows hold
    // `blocks` blocks.
    unsafe {
        match rows.len() {
            0 => {}
            1 => tile_avx2::<1>(t, blocks, [r(0)], out),
            _ => tile_avx2::<2>(t, blocks, [r(0), r(1)], out),
        }
    }
}

/// [`unpack_tile_avx512`] with AVX2 + F16C: the same [`UnpackedBlock`] bytes (a 64-byte
/// operand's low half holds rows 0–7, its high half rows 8–15, as [`unpack_avx2`] reads them).
///
/// # Safety
/// AVX2 available; `tile` points to a Q4 tile of `blocks` blocks; `dst` has `blocks` entries.
#[target_feature(enable = "avx2")]
unsafe fn unpack_tile_avx2(tile: *const u8, blocks: usize, dst: *mut UnpackedBlock) {
    for b in 0..blocks {
        // SAFETY: block `b` < `blocks` and its super-block's header lie inside the tile, and
        // entry `b` inside `dst` (the contract); `UnpackedBlock` is 64-aligned, so each
        // 32-byte half and each 8-float half is 32-aligned.
        unsafe {
            let tb = tile.add(q4_block_offset(b));
            let header = tile.add(q4_header_offset(b / SUPER_BLOCK));
            let out = dst.add(b);
            for c in 0..4 {
                for h in 0..2 {
                    let (lo, hi) = unpack_avx2(tb, c, h);
                    _mm256_store_si256((*out).w[2 * c].as_mut_ptr().add(32 * h).cast(), lo);
                    _mm256_store_si256((*out).w[2 * c + 1].as_mut_ptr().add(32 * h).cast(), hi);
                }
            }
            for h in 0..2 {
                let (d, m) = block_params_avx2(tb, header, h);
                _mm256_store_ps((*out).d.as_mut_ptr().add(8 * h), d);
                _mm256_store_ps((*out).m.as_mut_ptr().add(8 * h), m);
            }
        }
    }
}

/// One chunk `c` of a packed group's rows for [`tile_grouped_avx2`], on the `i16` sums of its
/// rows (`self[r][h]`: row `r`, 8-row half `h` of the tile), implemented for one to six rows
/// by `chunk_rows_avx2!`.
trait ChunkStepAvx2 {
    /// For each of the chunk's two `u8` operands (`lo_c`, then `hi_c`, 64 bytes each and
    /// adjacent in the [`UnpackedBlock`], at `w`) its two halves are loaded once for all the
    /// rows, then per row the activation quad that operand multiplies (`k = 4c..4c+4` for
    /// `lo_c`, `16+4c..16+4c+4` for `hi_c`) is broadcast and `self[r][h] += vpmaddubsw(half_h,
    /// x)` for both halves.
    ///
    /// # Safety
    /// AVX2 available; `w` points to the chunk's 128 bytes of operands, 32-aligned; `q` to the
    /// group block's quants plus `4c` (row `r`'s quads at `q + 32r` and `q + 32r + 16`).
    unsafe fn chunk_step(&mut self, w: *const u8, q: *const i8);
}

/// Implements [`ChunkStepAvx2`] for the sums of `$rows` rows, each row listed as its two
/// sums' names and the offsets of its two quads from `q` (row `r`'s block starts `32r` bytes
/// after row 0's).
///
/// One `asm!` block because the compiler, given the same steps as intrinsics over a fully
/// unrolled block, issues all of a block's loads and broadcasts first and spills them to the
/// stack; an `asm!` block that is not `pure` stays in program order, so only the `i16` sums
/// live across the steps. `2·rows + 4` registers: the sums, the two halves, the broadcast
/// and a product (the second product of a broadcast overwrites it): all sixteen at six rows.
/// Per chunk and row: two broadcasts, four `vpmaddubsw` + `vpaddw`; per chunk four loads of
/// weights whatever the rows (so at six rows 0.67 loads per multiply, against 1 in passes of
/// two rows). The weights cannot be `vpmaddubsw`'s memory operand: that one is the signed
/// operand, the activations, which need the broadcast.
macro_rules! chunk_rows_avx2 {
    ($rows:literal: $($s0:ident $s1:ident $xl:literal $xh:literal),+) => {
        impl ChunkStepAvx2 for [[__m256i; 2]; $rows] {
            #[target_feature(enable = "avx2")]
            #[inline]
            unsafe fn chunk_step(&mut self, w: *const u8, q: *const i8) {
                let [$([$s0, $s1]),+] = self;
                // SAFETY: the reads are those of the contract; no stack, no flags, no writes
                // to memory.
                unsafe {
                    std::arch::asm!(
                        "vmovdqa {w0}, ymmword ptr [{w}]",
                        "vmovdqa {w1}, ymmword ptr [{w} + 32]",
                        $(
                            concat!("vpbroadcastd {x}, dword ptr [{q} + ", $xl, "]"),
                            "vpmaddubsw {t}, {w0}, {x}",
                            concat!("vpaddw {", stringify!($s0), "}, {", stringify!($s0), "}, {t}"),
                            "vpmaddubsw {x}, {w1}, {x}",
                            concat!("vpaddw {", stringify!($s1), "}, {", stringify!($s1), "}, {x}"),
                        )+
                        "vmovdqa {w0}, ymmword ptr [{w} + 64]",
                        "vmovdqa {w1}, ymmword ptr [{w} + 96]",
                        $(
                            concat!("vpbroadcastd {x}, dword ptr [{q} + ", $xh, "]"),
                            "vpmaddubsw {t}, {w0}, {x}",
                            concat!("vpaddw {", stringify!($s0), "}, {", stringify!($s0), "}, {t}"),
                            "vpmaddubsw {x}, {w1}, {x}",
                            concat!("vpaddw {", stringify!($s1), "}, {", stringify!($s1), "}, {x}"),
                        )+
                        w = in(reg) w,
                        q = in(reg) q,
                        $($s0 = inout(ymm_reg) *$s0, $s1 = inout(ymm_reg) *$s1,)+
                        w0 = out(ymm_reg) _,
                        w1 = out(ymm_reg) _,
                        x = out(ymm_reg) _,
                        t = out(ymm_reg) _,
                        options(readonly, nostack, preserves_flags),
                    );
                }
            }
        }
    };
}

chunk_rows_avx2!(1: a0 a1 0 16);
chunk_rows_avx2!(2: a0 a1 0 16, b0 b1 32 48);
chunk_rows_avx2!(3: a0 a1 0 16, b0 b1 32 48, c0 c1 64 80);
chunk_rows_avx2!(4: a0 a1 0 16, b0 b1 32 48, c0 c1 64 80, d0 d1 96 112);
chunk_rows_avx2!(5: a0 a1 0 16, b0 b1 32 48, c0 c1 64 80, d0 d1 96 112, e0 e1 128 144);
chunk_rows_avx2!(
    6: a0 a1 0 16, b0 b1 32 48, c0 c1 64 80, d0 d1 96 112, e0 e1 128 144, f0 f1 160 176
);

/// Adds one block of one row to its 16 accumulators at `acc` (in memory): the `i16` sums
/// `s` of both halves widen (`vpmaddwd` with `ones`) and convert, then
/// `acc = dot · (d_w·d_x) + acc` and `acc = m_w · (d_x Σq_x) + acc`, the two FMAs of the
/// other paths in the same order (an FMA rounds once, and its product does not depend on
/// the order of its factors: the same bits).
///
/// # Safety
/// AVX2 and FMA available; `ub` points to an [`UnpackedBlock`]; `dx` and `sx` to the row's
/// block scale and `d·Σq` (unaligned); `acc` to 16 writable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn finish_row_avx2(
    [s0, s1]: [__m256i; 2],
    ones: __m256i,
    ub: *const UnpackedBlock,
    dx: *const f32,
    sx: *const f32,
    acc: *mut f32,
) {
    // SAFETY: the reads and writes are those of the contract (`d` and `m` are 64 bytes each
    // at their offsets in the block); no stack, no flags.
    unsafe {
        std::arch::asm!(
            "vpmaddwd {s0}, {s0}, {ones}",
            "vpmaddwd {s1}, {s1}, {ones}",
            "vcvtdq2ps {s0}, {s0}",
            "vcvtdq2ps {s1}, {s1}",
            "vbroadcastss {t}, dword ptr [{dx}]",
            "vmulps {u}, {t}, ymmword ptr [{ub} + {d}]",
            "vfmadd213ps {s0}, {u}, ymmword ptr [{acc}]",
            "vmulps {u}, {t}, ymmword ptr [{ub} + {d} + 32]",
            "vfmadd213ps {s1}, {u}, ymmword ptr [{acc} + 32]",
            "vbroadcastss {t}, dword ptr [{sx}]",
            "vfmadd231ps {s0}, {t}, ymmword ptr [{ub} + {m}]",
            "vfmadd231ps {s1}, {t}, ymmword ptr [{ub} + {m} + 32]",
            "vmovups ymmword ptr [{acc}], {s0}",
            "vmovups ymmword ptr [{acc} + 32], {s1}",
            ub = in(reg) ub,
            dx = in(reg) dx,
            sx = in(reg) sx,
            acc = in(reg) acc,
            d = const std::mem::offset_of!(UnpackedBlock, d),
            m = const std::mem::offset_of!(UnpackedBlock, m),
            ones = in(ymm_reg) ones,
            s0 = inout(ymm_reg) s0 => _,
            s1 = inout(ymm_reg) s1 => _,
            t = out(ymm_reg) _,
            u = out(ymm_reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// [`tile_avx2`] on a tile unpacked by [`unpack_tile_avx2`] for a group of `R` rows packed
/// together ([`super::PackedRows`]), all in one pass over the tile: per block four
/// [`ChunkStepAvx2::chunk_step`] (the weights loaded once for the `R` rows), then per row
/// [`finish_row_avx2`]. The `R` rows' `i16` sums take every register at six rows, so the f32
/// accumulators stay in memory ([`AccRows`], copied to `out` at the end): one load, FMA and
/// store per block, row and half. The same integer and float operations as the other paths,
/// in the same order (so the same bits).
///
/// # Safety
/// AVX2 and FMA available; `un` points to `blocks` unpacked blocks; `grp` to a group of `R`
/// rows of `blocks` packed blocks; `R ≤ MAX_ROWS_PER_CALL`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_grouped_avx2<const R: usize>(
    un: *const UnpackedBlock,
    blocks: usize,
    grp: *const u8,
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) where
    [[__m256i; 2]; R]: ChunkStepAvx2,
{
    const { assert!(R <= MAX_ROWS_PER_CALL) };
    let mut rows_acc = AccRows([[0.0; TILE_ROWS]; MAX_ROWS_PER_CALL]);
    let acc = rows_acc.0.as_mut_ptr().cast::<f32>();
    let ones = _mm256_set1_epi16(1);
    for b in 0..blocks {
        // SAFETY (every access in the block): block `b` < `blocks` of `un` and of the group
        // (the contract). The group's block holds `R × 32` quant bytes, then `R` f32 scales,
        // then `R` f32 `d·Σq`, unaligned; `acc + 16r` is row `r < R` of `rows_acc`.
        let ub = unsafe { un.add(b) };
        let base = grp.wrapping_add(b * R * GROUP_BLOCK_BYTES);
        let mut s = [[_mm256_setzero_si256(); 2]; R];
        for c in 0..4 {
            // SAFETY: as above; chunk `c`'s operands `w[2c]`, `w[2c + 1]` are adjacent and
            // 64-aligned, its quads `4c` bytes into each row's quants.
            unsafe { s.chunk_step((*ub).w[2 * c].as_ptr(), base.cast::<i8>().add(4 * c)) };
        }
        let scales = base.wrapping_add(R * BLOCK).cast::<f32>();
        for (r, &sr) in s.iter().enumerate() {
            // SAFETY: as above: row `r`'s scale and `d·Σq` at `scales + r` and
            // `scales + R + r`, its 16 accumulators at `acc + 16r`.
            unsafe {
                finish_row_avx2(
                    sr,
                    ones,
                    ub,
                    scales.add(r),
                    scales.add(R + r),
                    acc.add(TILE_ROWS * r),
                )
            };
        }
    }
    for (o, a) in out[..R].iter_mut().zip(&rows_acc.0) {
        // SAFETY: `a` is 16 readable f32, 64-aligned; `o` 16 writable f32; two halves of 8.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_load_ps(a.as_ptr()));
            _mm256_storeu_ps(o.as_mut_ptr().add(8), _mm256_load_ps(a.as_ptr().add(8)));
        }
    }
}

/// The f32 accumulators of [`tile_grouped_avx2`]: 64-aligned, so that the per-block loads
/// and stores of a row's halves never straddle two cache lines (the caller's `out` may sit
/// anywhere on its stack).
#[repr(C, align(64))]
struct AccRows([[f32; TILE_ROWS]; MAX_ROWS_PER_CALL]);

/// [`tile_outputs_avx2`] on a tile unpacked by [`unpack_tile`] for the `rows` rows of a group
/// packed at `group` ([`super::PackedRows`]), in one pass: same outputs, bit for bit.
///
/// # Panics
/// As [`tile_outputs_grouped_avx512`], for AVX2.
pub(super) fn tile_outputs_grouped_avx2(
    un: &[UnpackedBlock],
    blocks: usize,
    group: &[u8],
    rows: usize,
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    check_grouped(Kernel::Avx2, un, blocks, group, rows);
    let (u, g) = (un.as_ptr(), group.as_ptr());
    // SAFETY: features, `un` and the group's length checked above.
    unsafe { by_group_rows!(rows, tile_grouped_avx2(u, blocks, g, out)) }
}

// ---------------------------------------------------------------------------------------------
// 8-bit weights (quants offset by +128)
// ---------------------------------------------------------------------------------------------

/// The eight 64-byte chunks of a Q8 tile block's quants.
///
/// # Safety
/// AVX-512F available; `wq` points to 512 readable bytes.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_q8_avx512(wq: *const u8) -> [__m512i; 8] {
    let mut w = [_mm512_setzero_si512(); 8];
    for (c, v) in w.iter_mut().enumerate() {
        // SAFETY: chunk `c` is bytes 64c..64c+64 of the 512 the caller guarantees.
        *v = unsafe { _mm512_loadu_si512(wq.add(64 * c).cast()) };
    }
    w
}

/// `Σ q_w·q_x` of the 16 rows: `vpdpbusd` on the offset quants, minus `128·Σ q_x`.
///
/// # Safety
/// AVX-512F/VNNI available; `xq` points to 32 readable bytes.
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn idot_q8_avx512(w: &[__m512i; 8], xq: *const i8, sum: i32) -> __m512i {
    let mut acc = [_mm512_setzero_si512(); 2];
    for c in 0..8 {
        // SAFETY: offset 4c (+4) stays within the 32 bytes the caller guarantees.
        let x = _mm512_set1_epi32(unsafe { quad(xq, 4 * c) });
        acc[c % 2] = _mm512_dpbusd_epi32(acc[c % 2], w[c], x);
    }
    _mm512_sub_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_set1_epi32(128 * sum),
    )
}

/// See [`super::block_dots_q8`].
pub(super) fn block_dots_q8_avx512(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    if !Kernel::Avx512Vnni.is_available() || quants.len() < Q8_QUANT_BYTES || xq.len() < BLOCK {
        return super::scalar::block_dots_q8(quants, xq);
    }
    let sum: i32 = xq[..BLOCK].iter().map(|&q| i32::from(q)).sum();
    let mut out = [0i32; TILE_ROWS];
    // SAFETY: features checked above; 512 quant bytes and 32 activation bytes checked above;
    // `out` has room for 16 i32.
    unsafe {
        let v = idot_q8_avx512(&load_q8_avx512(quants.as_ptr()), xq.as_ptr(), sum);
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
    }
    out
}

/// `R` activation rows against one Q8 tile.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q8_avx512<const R: usize>(
    tile: *const u8,
    blocks: usize,
    rows: [RowPtrs; R],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        prefetch_ahead(tile.wrapping_add(b * Q8_QUANT_BYTES), Q8_QUANT_BYTES);
        // SAFETY: block `b` < `blocks`: its quants are 512 bytes at 512b, its scales 32 bytes
        // at 512·blocks + 32b, inside the tile (module contract).
        let (w, dw) = unsafe {
            (
                load_q8_avx512(tile.add(b * Q8_QUANT_BYTES)),
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    tile.add(blocks * Q8_QUANT_BYTES + b * Q8_SCALE_BYTES)
                        .cast(),
                )),
            )
        };
        for (a, row) in acc.iter_mut().zip(rows) {
            // SAFETY: block `b` of every row exists (module contract).
            let dot = unsafe {
                let sum = *row.sum.add(b);
                idot_q8_avx512(&w, row.q.add(b * BLOCK), sum)
            };
            // SAFETY: as above.
            let dx = unsafe { *row.d.add(b) };
            let dot = _mm512_cvtepi32_ps(dot);
            *a = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(dx)), *a);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
}

/// See [`super::tile_outputs`]; falls back to the scalar path if the CPU lacks the features.
pub(super) fn tile_outputs_q8_avx512(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    if !Kernel::Avx512Vnni.is_available() {
        return super::scalar::tile_outputs_q8(tile, blocks, rows, out);
    }
    let t = tile.as_ptr();
    // SAFETY: features checked above; `super::tile_outputs` checked the tile and rows hold
    // `blocks` blocks.
    unsafe {
        match rows.len() {
            0 => {}
            1 => tile_q8_avx512::<1>(t, blocks, row_ptrs(rows), out),
            2 => tile_q8_avx512::<2>(t, blocks, row_ptrs(rows), out),
            3 => tile_q8_avx512::<3>(t, blocks, row_ptrs(rows), out),
            _ => tile_q8_avx512::<4>(t, blocks, row_ptrs(rows), out),
        }
    }
}

/// Adds chunk `c`'s products of 8 rows to `acc` (i32 per row): the offset quants back to
/// signed (`xor 0x80`), then `vpmaddubsw(|w|, x·sign(w))` — at most 2·127·127 = 32 258 per
/// i16, no saturation — and `vpmaddwd` with ones.
///
/// # Safety
/// AVX2 available; `xq` points to 32 readable bytes; `c < 8`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_chunk_q8_avx2(acc: __m256i, v: __m256i, xq: *const i8, c: usize) -> __m256i {
    // SAFETY: offset 4c (+4) stays within the 32 bytes the caller guarantees.
    let x = _mm256_set1_epi32(unsafe { quad(xq, 4 * c) });
    let w = _mm256_xor_si256(v, _mm256_set1_epi8(i8::MIN));
    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
}

/// See [`super::block_dots_q8`].
pub(super) fn block_dots_q8_avx2(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    if !Kernel::Avx2.is_available() || quants.len() < Q8_QUANT_BYTES || xq.len() < BLOCK {
        return super::scalar::block_dots_q8(quants, xq);
    }
    let mut out = [0i32; TILE_ROWS];
    for h in 0..2 {
        // SAFETY: features checked above; 512 quant bytes and 32 activation bytes checked
        // above; `out[8h..8h + 8]` is 8 writable i32.
        unsafe {
            let mut acc = _mm256_setzero_si256();
            for c in 0..8 {
                let v = _mm256_loadu_si256(quants.as_ptr().add(64 * c + 32 * h).cast());
                acc = add_chunk_q8_avx2(acc, v, xq.as_ptr(), c);
            }
            _mm256_storeu_si256(out.as_mut_ptr().add(8 * h).cast(), acc);
        }
    }
    out
}

/// `R` activation rows against one Q8 tile, both halves in one pass.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q8_avx2<const R: usize>(
    tile: *const u8,
    blocks: usize,
    rows: [RowPtrs; R],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        // SAFETY: block `b` < `blocks` lies inside the tile (module contract).
        let wq = unsafe { tile.add(b * Q8_QUANT_BYTES) };
        prefetch_ahead(wq, Q8_QUANT_BYTES);
        let mut s = [[_mm256_setzero_si256(); 2]; R];
        for c in 0..8 {
            for h in 0..2 {
                // SAFETY: bytes 64c + 32h .. +32 lie inside the block's 512 quant bytes.
                let v = unsafe { _mm256_loadu_si256(wq.add(64 * c + 32 * h).cast()) };
                for (sr, row) in s.iter_mut().zip(rows) {
                    // SAFETY: block `b` of every row exists (module contract).
                    sr[h] = unsafe { add_chunk_q8_avx2(sr[h], v, row.q.add(b * BLOCK), c) };
                }
            }
        }
        for h in 0..2 {
            // SAFETY: the scales of rows 8h..8h+8 are 16 bytes at 512·blocks + 32b + 16h,
            // inside the tile (module contract).
            let dw = unsafe {
                _mm256_cvtph_ps(_mm_loadu_si128(
                    tile.add(blocks * Q8_QUANT_BYTES + b * Q8_SCALE_BYTES + 16 * h)
                        .cast(),
                ))
            };
            for ((a, sr), row) in acc.iter_mut().zip(&s).zip(rows) {
                // SAFETY: block `b` of every row exists (module contract).
                let dx = unsafe { *row.d.add(b) };
                let dot = _mm256_cvtepi32_ps(sr[h]);
                a[h] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, _mm256_set1_ps(dx)), a[h]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32, two halves of 8.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}

/// See [`super::tile_outputs`]; falls back to the scalar path if the CPU lacks the features.
pub(super) fn tile_outputs_q8_avx2(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    if !Kernel::Avx2.is_available() {
        return super::scalar::tile_outputs_q8(tile, blocks, rows, out);
    }
    let t = tile.as_ptr();
    let r = |i: usize| RowPtrs::new(&rows[i]);
    // SAFETY: features checked above; `super::tile_outputs` checked the tile and rows hold
    // `blocks` blocks.
    unsafe {
        match rows.len() {
            0 => {}
            1 => tile_q8_avx2::<1>(t, blocks, [r(0)], out),
            _ => tile_q8_avx2::<2>(t, blocks, [r(0), r(1)], out),
        }
    }
}
