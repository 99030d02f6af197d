//! [`PackedQ4`]: 4-bit weights in row tiles of k-quant super-blocks, and the quantizer that
//! writes them (layout and math in the [module docs](super)).

use half::{bf16, f16};

use super::buffer::{pack_parts, AlignedBytes};
use super::{small_int, QuantError, BLOCK, SUPER_BLOCK, TILE_ROWS};

/// Quant bytes of one tile block: 16 rows × 32 nibbles.
pub(crate) const Q4_QUANT_BYTES: usize = TILE_ROWS * BLOCK / 2;
/// Offset in a tile block of its 16 scale codes (`u8`, rows 0..15).
pub(crate) const SC_OFFSET: usize = Q4_QUANT_BYTES;
/// Offset in a tile block of its 16 minimum codes (`i8`, rows 0..15).
pub(crate) const MN_OFFSET: usize = SC_OFFSET + TILE_ROWS;
/// Bytes of one tile block: quants, scale codes, minimum codes.
pub(crate) const Q4_BLOCK_BYTES: usize = MN_OFFSET + TILE_ROWS;
/// Bytes of a super-block's header: 16 bf16 scales `D`, then 16 bf16 minimums `M`.
pub(crate) const Q4_HEADER_BYTES: usize = 4 * TILE_ROWS;
/// Offset in a header of its minimums `M`.
pub(crate) const HEADER_M_OFFSET: usize = 2 * TILE_ROWS;
/// Bytes of a whole super-block: header and [`SUPER_BLOCK`] tile blocks (37 cache lines).
pub(crate) const Q4_SUPER_BYTES: usize = Q4_HEADER_BYTES + SUPER_BLOCK * Q4_BLOCK_BYTES;

// A whole super-block is a whole number of cache lines, so every header is 64-byte aligned.
const _: () = assert!(Q4_SUPER_BYTES.is_multiple_of(64));

/// Bytes of one Q4 tile of `blocks` blocks: its super-blocks (the last one holding
/// `blocks mod 8` blocks when that is not 0), padded to 64.
pub(crate) fn q4_tile_bytes(blocks: usize) -> usize {
    (blocks.div_ceil(SUPER_BLOCK) * Q4_HEADER_BYTES + blocks * Q4_BLOCK_BYTES).next_multiple_of(64)
}

/// Offset in a tile of tile block `b`.
#[inline(always)]
pub(crate) fn q4_block_offset(b: usize) -> usize {
    (b / SUPER_BLOCK + 1) * Q4_HEADER_BYTES + b * Q4_BLOCK_BYTES
}

/// Offset in a tile of the header of super-block `s` (blocks `8s..8s + 8`).
#[inline(always)]
pub(crate) fn q4_header_offset(s: usize) -> usize {
    s * Q4_SUPER_BYTES
}

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

/// A linear weight `W [n, k]` quantized to 4 bits per value in the tiled layout of the
/// [module docs](super): 32-wide asymmetric blocks along `k` (`w ≈ d·q + m`, GGML `Q4_1`
/// math), whose `d` and `m` are 8-bit multiples of a bf16 scale `D` and minimum `M` shared by
/// the 8 blocks of a 256-wide super-block (GGML `Q4_K`'s idea, with 8-bit codes); rows in
/// tiles of [`TILE_ROWS`] with their blocks interleaved. 4.625 bits per weight; `k` is padded
/// to a multiple of 32 and `n` to a multiple of 16 with zero blocks.
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
    /// ([`QuantError::NonFiniteWeight`], with its row and column); a super-block whose range
    /// overflows f32 ([`QuantError::OutOfRange`], with the row, the super-block's first column
    /// and its smallest and largest values).
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
            q4_tile_bytes(blocks),
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
    /// `tiles × (64·ceil(blocks/8) + 288·blocks)` with each tile rounded up to 64); the
    /// struct itself adds 64 bytes.
    pub fn bytes(&self) -> usize {
        self.buf.allocated()
    }

    /// The packed buffer (64-byte aligned), `tiles` tiles of `q4_tile_bytes(blocks)` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }

    /// The bytes of tile `tile` (< [`PackedQ4::tiles`]).
    pub(crate) fn tile(&self, tile: usize) -> &[u8] {
        let len = q4_tile_bytes(self.blocks);
        &self.as_bytes()[tile * len..(tile + 1) * len]
    }

    /// The stored 4-bit value `q ∈ 0..=15` of `W[row, col]` (padding included: `row` <
    /// [`PackedQ4::padded_rows`], `col` < [`PackedQ4::padded_cols`]).
    pub fn quant(&self, row: usize, col: usize) -> u8 {
        let tb = self.tile_block(row / TILE_ROWS, col / BLOCK);
        nibble(tb, row % TILE_ROWS, col % BLOCK)
    }

    /// The `(d, m)` of the block `block` of row `row`, as f32: `d = D·sc` and `m = M·mn` from
    /// the super-block's bf16 `D`, `M` and the block's codes (exact products).
    pub fn block_params(&self, row: usize, block: usize) -> (f32, f32) {
        let tile = self.tile(row / TILE_ROWS);
        let header = &tile[q4_header_offset(block / SUPER_BLOCK)..][..Q4_HEADER_BYTES];
        let tb = &tile[q4_block_offset(block)..][..Q4_BLOCK_BYTES];
        block_scale_min(header, tb, row % TILE_ROWS)
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
        let (tile, r) = (self.tile(row / TILE_ROWS), row % TILE_ROWS);
        for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
            let header = &tile[q4_header_offset(b / SUPER_BLOCK)..][..Q4_HEADER_BYTES];
            let tb = &tile[q4_block_offset(b)..][..Q4_BLOCK_BYTES];
            let (d, m) = block_scale_min(header, tb, r);
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = d * f32::from(nibble(tb, r, i)) + m;
            }
        }
    }

    /// The dequantized weight `[n, k]` row-major, `d·q + m` per value (tests, debugging).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols == 0 {
            return out;
        }
        for (row, out_row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(row, out_row);
        }
        out
    }

    /// The 288 bytes of block `block` of tile `tile`.
    fn tile_block(&self, tile: usize, block: usize) -> &[u8] {
        &self.tile(tile)[q4_block_offset(block)..][..Q4_BLOCK_BYTES]
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

/// Little-endian bf16 number `r` at `offset` of `bytes`, as f32 (exact).
#[inline]
pub(crate) fn read_bf16(bytes: &[u8], offset: usize, r: usize) -> f32 {
    let at = offset + 2 * r;
    bf16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `(d, m)` of row `r` of a tile block (`block`, 288 bytes) in the super-block whose header
/// is `header` (64 bytes): `D·sc` and `M·mn`, products of an 8-bit-mantissa bf16 and an
/// 8-bit integer, so exact in f32 whatever the order of the factors.
#[inline]
pub(crate) fn block_scale_min(header: &[u8], block: &[u8], r: usize) -> (f32, f32) {
    let d = read_bf16(header, 0, r) * f32::from(block[SC_OFFSET + r]);
    let m = read_bf16(header, HEADER_M_OFFSET, r) * f32::from(block[MN_OFFSET + r] as i8);
    (d, m)
}

/// The smallest bf16 at or above `x` (`x ≥ 0`, finite; +∞ when `x` is above bf16's largest
/// finite value).
fn bf16_up(x: f32) -> bf16 {
    let bits = x.to_bits();
    let high = (bits >> 16) as u16;
    bf16::from_bits(if bits & 0xFFFF == 0 { high } else { high + 1 })
}

/// Rounds of least squares in [`fit_lanes`]: on N(0, 1) weights two bring the RMS error 6 %
/// below the blocks' plain range (the accuracy test measures it).
const LS_ROUNDS: usize = 2;

/// Lanes of the quantizer: the rows of a tile, side by side.
type Lanes = [f32; TILE_ROWS];

/// Each row's block scale `d` and minimum `m` for `w ≈ d·q + m`,
/// `q = clamp(round((w − m)/d), 0, 15)`, for one block of a tile: `xt[i][r]` is value `i` of
/// row `r` (`i < len`). Per row, starting from the block's range (`m = lo`,
/// `d = (hi − lo)/15`), [`LS_ROUNDS`] rounds of quantizing the values and solving least squares
/// for `d` and `m` jointly (`Σ(w − d·q − m)²` smallest for those quants). Each round lowers the
/// squared error or keeps it (the quants are the nearest for the previous `d`, `m`; the new
/// `d`, `m` are the best for those quants); a round whose system is singular (all quants
/// equal) or whose `d` is not positive ends that row's fit. Values beyond `[m, m + 15·d]` are
/// clamped to the ends by the quantizer. A constant block gets `d = 0`, `m = lo`. Returns
/// `(lo, hi, d, m)` per row.
///
/// The rows run in vector lanes; each row's sums run over its values in order.
#[inline(always)]
fn fit_lanes(xt: &[Lanes], len: usize) -> (Lanes, Lanes, Lanes, Lanes) {
    let xt = &xt[..len];
    let (mut lo, mut hi) = ([f32::INFINITY; TILE_ROWS], [f32::NEG_INFINITY; TILE_ROWS]);
    let mut sx = [0f32; TILE_ROWS];
    for x in xt {
        for r in 0..TILE_ROWS {
            lo[r] = if x[r] < lo[r] { x[r] } else { lo[r] };
            hi[r] = if x[r] > hi[r] { x[r] } else { hi[r] };
            sx[r] += x[r];
        }
    }
    let n = len as f32;
    let mut d = [0f32; TILE_ROWS];
    let mut m = lo;
    // Rows still fitting: not constant, and no round has failed.
    let mut live = [false; TILE_ROWS];
    for r in 0..TILE_ROWS {
        live[r] = hi[r] > lo[r];
        d[r] = if live[r] { (hi[r] - lo[r]) / 15.0 } else { 0.0 };
    }
    for _ in 0..LS_ROUNDS {
        let mut inv = [0f32; TILE_ROWS];
        for r in 0..TILE_ROWS {
            inv[r] = if live[r] { 1.0 / d[r] } else { 0.0 };
        }
        let (mut sq, mut sqq, mut sxq) = ([0f32; TILE_ROWS], [0f32; TILE_ROWS], [0f32; TILE_ROWS]);
        for x in xt {
            for r in 0..TILE_ROWS {
                let q = ((x[r] - m[r]) * inv[r] + 0.5).clamp(0.0, 15.0).floor();
                sq[r] += q;
                sqq[r] += q * q;
                sxq[r] += x[r] * q;
            }
        }
        for r in 0..TILE_ROWS {
            let det = n * sqq[r] - sq[r] * sq[r];
            let d_next = (n * sxq[r] - sx[r] * sq[r]) / det;
            let m_next = (sx[r] - d_next * sq[r]) / n;
            let ok =
                live[r] && det > 0.0 && d_next > 0.0 && d_next.is_finite() && m_next.is_finite();
            d[r] = if ok { d_next } else { d[r] };
            m[r] = if ok { m_next } else { m[r] };
            live[r] = ok;
        }
    }
    (lo, hi, d, m)
}

/// One row's codes for a super-block of up to [`SUPER_BLOCK`] blocks, from each block's fitted
/// scale `d ≥ 0` and minimum `m` ([`fit_lanes`], finite):
///
/// - `M` = bf16 at or above `max|m| / 127`, and per block `mn = round(m / M) ∈ −127..=127`;
/// - `D` = bf16 at or above `max d / 255`, and per block `sc = round(d / D) ∈ 0..=255`;
///
/// so each block's coded `M·mn` and `D·sc` are within half a code step of its fit. `None`
/// when `M` or `D` overflows bf16.
struct SuperCodes {
    /// The scale `D`.
    d: bf16,
    /// The minimum `M`.
    m: bf16,
    /// Per block, the scale code `sc` (`d = D·sc`).
    sc: [u8; SUPER_BLOCK],
    /// Per block, the minimum code `mn` (`m = M·mn`).
    mn: [i8; SUPER_BLOCK],
}

impl SuperCodes {
    /// The codes of the blocks whose fitted scales and minimums are `d[j]`, `m[j]` (at most
    /// [`SUPER_BLOCK`]); `None` when a code base overflows bf16.
    fn new(d: &[f32], m: &[f32]) -> Option<Self> {
        // The smallest positive normal keeps a base of tiny values away from bf16 subnormals.
        let base = |max: f32, codes: f32| -> bf16 {
            if max > 0.0 {
                bf16_up((max / codes).max(f32::MIN_POSITIVE))
            } else {
                bf16::ZERO
            }
        };
        let mq = base(m.iter().fold(0f32, |a, &v| a.max(v.abs())), 127.0);
        let dq = base(d.iter().fold(0f32, |a, &v| a.max(v)), 255.0);
        if !mq.is_finite() || !dq.is_finite() {
            return None;
        }
        let (mf, df) = (mq.to_f32(), dq.to_f32());
        let mut mn = [0i8; SUPER_BLOCK];
        let mut sc = [0u8; SUPER_BLOCK];
        for (j, (&dj, &mj)) in d.iter().zip(m).enumerate() {
            if mf > 0.0 {
                mn[j] = (mj / mf).round().clamp(-127.0, 127.0) as i8;
            }
            if df > 0.0 {
                sc[j] = (dj / df).round().clamp(0.0, 255.0) as u8;
            }
        }
        Some(Self {
            d: dq,
            m: mq,
            sc,
            mn,
        })
    }
}

/// Quantize row tile `t` of `w [rows, cols]` into `out` (`q4_tile_bytes(blocks)` bytes,
/// zeroed): per super-block, every block fitted in the tile's rows at once, each row's
/// [`SuperCodes`], then each value's 4-bit quant ([`quantize_tile_any`]).
///
/// On x86-64 with AVX2 the same code runs compiled for 256-bit vectors (no FMA: the compiler
/// does not fuse a multiply and an add on its own, so the bytes are the same on every CPU).
fn quantize_tile<T: QuantInput>(
    w: &[T],
    rows: usize,
    cols: usize,
    t: usize,
    out: &mut [u8],
) -> Result<(), QuantError> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { quantize_tile_avx2(w, rows, cols, t, out) };
    }
    quantize_tile_any(w, rows, cols, t, out)
}

/// [`quantize_tile`] compiled with AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_tile_avx2<T: QuantInput>(
    w: &[T],
    rows: usize,
    cols: usize,
    t: usize,
    out: &mut [u8],
) -> Result<(), QuantError> {
    quantize_tile_any(w, rows, cols, t, out)
}

/// The body of [`quantize_tile`], inlined into each compiled form: per super-block, the tile's
/// rows widened side by side (`xt[column][row]`; rows past the weight's last stay 0, columns
/// past its last are not read), each block fitted in all rows at once ([`fit_lanes`]), then
/// each row's [`SuperCodes`], then every value's quant.
#[inline(always)]
fn quantize_tile_any<T: QuantInput>(
    w: &[T],
    rows: usize,
    cols: usize,
    t: usize,
    out: &mut [u8],
) -> Result<(), QuantError> {
    let row0 = t * TILE_ROWS;
    let live_rows = (rows - row0).min(TILE_ROWS);
    let blocks = cols.div_ceil(BLOCK);
    let mut xt = [[0f32; TILE_ROWS]; SUPER_BLOCK * BLOCK];
    for s in 0..blocks.div_ceil(SUPER_BLOCK) {
        let first = s * SUPER_BLOCK;
        let nb = (blocks - first).min(SUPER_BLOCK);
        let col0 = first * BLOCK;
        let width = (cols - col0).min(nb * BLOCK);
        // Widen, then look for a non-finite value (a loop without early exits, so that it
        // vectorizes; the first one found is named in the error).
        let mut bad = false;
        for r in 0..live_rows {
            let src = &w[(row0 + r) * cols + col0..][..width];
            for (x, v) in xt.iter_mut().zip(src) {
                x[r] = v.to_f32();
                bad |= !x[r].is_finite();
            }
        }
        if bad {
            for r in 0..live_rows {
                let found = xt[..width]
                    .iter()
                    .enumerate()
                    .find(|(_, x)| !x[r].is_finite());
                if let Some((col, x)) = found {
                    return Err(QuantError::NonFiniteWeight {
                        row: row0 + r,
                        col: col0 + col,
                        value: x[r],
                    });
                }
            }
        }
        let mut fits = [(
            [0f32; TILE_ROWS],
            [0f32; TILE_ROWS],
            [0f32; TILE_ROWS],
            [0f32; TILE_ROWS],
        ); SUPER_BLOCK];
        for (j, fit) in fits.iter_mut().enumerate().take(nb) {
            let len = (width - j * BLOCK).min(BLOCK);
            *fit = fit_lanes(&xt[j * BLOCK..], len);
        }
        let header = q4_header_offset(s);
        let mut d = [[0f32; TILE_ROWS]; SUPER_BLOCK];
        let mut m = [[0f32; TILE_ROWS]; SUPER_BLOCK];
        for r in 0..live_rows {
            let (mut dr, mut mr) = ([0f32; SUPER_BLOCK], [0f32; SUPER_BLOCK]);
            for j in 0..nb {
                (dr[j], mr[j]) = (fits[j].2[r], fits[j].3[r]);
            }
            let codes =
                SuperCodes::new(&dr[..nb], &mr[..nb]).ok_or_else(|| QuantError::OutOfRange {
                    row: row0 + r,
                    col: col0,
                    min: fits[..nb]
                        .iter()
                        .map(|f| f.0[r])
                        .fold(f32::INFINITY, f32::min),
                    max: fits[..nb]
                        .iter()
                        .map(|f| f.1[r])
                        .fold(f32::NEG_INFINITY, f32::max),
                })?;
            out[header + 2 * r..][..2].copy_from_slice(&codes.d.to_le_bytes());
            out[header + HEADER_M_OFFSET + 2 * r..][..2].copy_from_slice(&codes.m.to_le_bytes());
            for j in 0..nb {
                let tb = &mut out[q4_block_offset(first + j)..][..Q4_BLOCK_BYTES];
                tb[SC_OFFSET + r] = codes.sc[j];
                tb[MN_OFFSET + r] = codes.mn[j] as u8;
                m[j][r] = codes.m.to_f32() * f32::from(codes.mn[j]);
                d[j][r] = codes.d.to_f32() * f32::from(codes.sc[j]);
            }
        }
        // The nearest of the 16 levels, in all rows at once: values beyond the block's ends
        // clamp to them; padding rows and columns stay 0.
        for j in 0..nb {
            let len = (width - j * BLOCK).min(BLOCK);
            let mut inv = [0f32; TILE_ROWS];
            for r in 0..TILE_ROWS {
                inv[r] = if d[j][r] > 0.0 && r < live_rows {
                    1.0 / d[j][r]
                } else {
                    0.0
                };
            }
            let mut q = [[0u8; TILE_ROWS]; BLOCK];
            for (qi, x) in q.iter_mut().zip(&xt[j * BLOCK..j * BLOCK + len]) {
                for r in 0..TILE_ROWS {
                    let level = ((x[r] - m[j][r]) * inv[r] + 0.5).clamp(0.0, 15.0).floor();
                    qi[r] = small_int(level);
                }
            }
            // Byte i of row r in chunk c: q[4c + i] low, q[16 + 4c + i] high.
            let tb = &mut out[q4_block_offset(first + j)..][..Q4_QUANT_BYTES];
            for c in 0..4 {
                for r in 0..TILE_ROWS {
                    for i in 0..4 {
                        tb[c * 64 + r * 4 + i] = q[4 * c + i][r] | (q[16 + 4 * c + i][r] << 4);
                    }
                }
            }
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

    /// Every value dequantizes to the nearest of its block's 16 levels `m + d·q` (within f32
    /// rounding of the division), with the stored `d`, `m`.
    fn assert_nearest_level(w: &[f32], q: &PackedQ4) {
        let (n, k) = (q.rows(), q.cols());
        let deq = q.dequantize();
        for row in 0..n {
            for col in 0..k {
                let (d, m) = q.block_params(row, col / BLOCK);
                let (a, b) = (w[row * k + col], deq[row * k + col]);
                let nearest = (0..16)
                    .map(|l| (a - (m + d * l as f32)).abs())
                    .fold(f32::INFINITY, f32::min);
                let slack = 4.0 * f32::EPSILON * a.abs().max(m.abs()).max((m + 15.0 * d).abs());
                assert!(
                    (a - b).abs() <= nearest + slack,
                    "[{row}, {col}] of [{n}, {k}]: {a} vs {b}, d = {d}, m = {m}"
                );
            }
        }
    }

    /// Root mean square of `a − b`.
    fn rms(a: &[f32], b: &[f32]) -> f64 {
        let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        (s / a.len() as f64).sqrt()
    }

    #[test]
    fn dequantized_values_are_the_nearest_level() {
        let mut rng = Lcg(7);
        for &(n, k) in &[(1, 1), (1, 31), (15, 33), (17, 64), (16, 4304), (3, 1408)] {
            let w = random_weights(&mut rng, n, k);
            let q = PackedQ4::quantize(&w, n, k).unwrap();
            assert_nearest_level(&w, &q);
        }
    }

    /// The least-squares fit beats GGML's Q4_K as candle quantizes it (`make_qkx1_quants` per
    /// 32 values, 6-bit codes; 4.5 bits per weight against our 4.625) on normal and
    /// heavy-tailed (Student t, 4 degrees of freedom) weights, and beats the blocks' plain
    /// range (`m = lo`, `d = (hi − lo)/15`, the fit's start, with exact f32 `d` and `m`).
    /// Measured RMS error relative to candle's: normal 0.988, heavy-tailed 0.989; to the
    /// plain range 0.938, 0.948.
    #[test]
    fn the_fit_is_more_accurate_than_candles_q4k_and_the_plain_range() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let (n, k) = (64, 1024);
        let mut rng = Lcg(11);
        let normal: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        // t(4) = z / sqrt(χ²₄ / 4).
        let heavy: Vec<f32> = (0..n * k)
            .map(|_| {
                let chi: f32 = (0..4).map(|_| rng.normal().powi(2)).sum();
                rng.normal() / (chi / 4.0).sqrt()
            })
            .collect();
        for (name, w) in [("normal", normal), ("heavy-tailed", heavy)] {
            let ours = rms(&w, &PackedQ4::quantize(&w, n, k).unwrap().dequantize());
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let candle: Vec<f32> = QTensor::quantize(&t, GgmlDType::Q4K)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let candle = rms(&w, &candle);
            let range: Vec<f32> = w
                .chunks(BLOCK)
                .flat_map(|b| {
                    let lo = b.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (hi - lo) / 15.0;
                    b.iter()
                        .map(move |&v| lo + d * ((v - lo) / d).round().clamp(0.0, 15.0))
                })
                .collect();
            let range = rms(&w, &range);
            println!(
                "{name}: RMS error ours {ours:.5}, candle Q4K {candle:.5} ({:.3}), range {range:.5} ({:.3})",
                ours / candle,
                ours / range
            );
            assert!(
                ours < candle,
                "{name}: ours {ours} against candle's {candle}"
            );
            assert!(
                ours < 0.97 * range,
                "{name}: ours {ours} against the range's {range}"
            );
        }
    }

    #[test]
    fn shapes_and_bytes_count_the_padding() {
        for &(n, k) in &[
            (1, 1),
            (15, 31),
            (17, 33),
            (16, 32),
            (30522, 1),
            (3, 1408),
            (5, 300),
        ] {
            let w = vec![0.5f32; n * k];
            let q = PackedQ4::quantize(&w, n, k).unwrap();
            let (tiles, blocks) = (n.div_ceil(16), k.div_ceil(32));
            assert_eq!((q.tiles(), q.blocks_per_row()), (tiles, blocks));
            assert_eq!(
                (q.padded_rows(), q.padded_cols()),
                (tiles * 16, blocks * 32)
            );
            let tile = (64 * blocks.div_ceil(8) + 288 * blocks).next_multiple_of(64);
            assert_eq!(q.bytes(), tiles * tile);
            assert_eq!(q.as_bytes().len(), q.bytes());
            assert_eq!(q.as_bytes().as_ptr() as usize % 64, 0);
        }
        // 4.625 bits per weight when nothing is padded.
        let q = PackedQ4::quantize(&vec![1f32; 64 * 256], 64, 256).unwrap();
        assert_eq!(q.bytes() * 8, 64 * 256 * 37 / 8);
        // Block offsets: headers at each super-block's start, blocks of 288 bytes after them.
        assert_eq!((q4_block_offset(0), q4_block_offset(7)), (64, 64 + 7 * 288));
        assert_eq!((q4_header_offset(1), q4_block_offset(8)), (2368, 2368 + 64));
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
        let (n, k) = (4, 300);
        let mut w = vec![0f32; n * k];
        w[k..2 * k].fill(0.1); // not a bf16 value: m rounds down, d covers the gap
        w[2 * k..3 * k].fill(-3.0);
        w[3 * k..].fill(1e-40); // subnormal
        let q = PackedQ4::quantize(&w, n, k).unwrap();
        let deq = q.dequantize();
        assert!(deq.iter().all(|v| v.is_finite()));
        assert!(deq[..k].iter().all(|&v| v == 0.0));
        assert_eq!(q.block_params(0, 0), (0.0, 0.0));
        assert_eq!(q.block_params(0, 9), (0.0, 0.0));
        // A constant block keeps d = 0 and its value in m, to half a code of M = 3/127.
        let (d, m) = q.block_params(2, 9);
        assert_eq!(d, 0.0);
        assert!((m + 3.0).abs() <= 0.5 * 3.0 / 127.0 * 1.01, "m = {m}");
        assert!(deq[2 * k..3 * k].iter().all(|&v| v == m));
        assert_nearest_level(&w, &q);
    }

    #[test]
    fn blocks_of_a_super_block_keep_their_own_precision() {
        // One block of each super-block 100× wider than the others, and blocks wholly
        // positive or negative: each block's `m` and `d` are coded on the super-block's
        // bases, so a narrow block beside a wide one gets coarser codes, but its error stays
        // within its own step: RMS at most 0.45 · (hi − lo) / 15 (uniform rounding error is
        // 0.29 of a step), plus half a code of `M` for its minimum.
        let (n, k) = (3, 600);
        let mut rng = Lcg(5);
        let mut w = random_weights(&mut rng, n, k);
        for (i, v) in w.iter_mut().enumerate() {
            let (row, col) = (i / k, i % k);
            if col / 32 % 8 == 3 {
                *v *= 100.0;
            }
            if row == 1 && col / 32 % 2 == 0 {
                *v = v.abs() + 0.05;
            }
            if row == 2 {
                *v = -v.abs() - 0.05;
            }
        }
        let q = PackedQ4::quantize(&w, n, k).unwrap();
        assert_nearest_level(&w, &q);
        let deq = q.dequantize();
        for row in 0..n {
            for b in 0..k.div_ceil(32) {
                let span = row * k + b * 32..row * k + (b * 32 + 32).min(k);
                let vals = &w[span.clone()];
                let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // M = max|m| / 127 over the super-block: at most its widest |value| / 127.
                let sup = b / 8 * 8..(b / 8 * 8 + 8).min(k.div_ceil(32));
                let wide: f32 = sup
                    .map(|c| {
                        let v = &w[row * k + c * 32..row * k + (c * 32 + 32).min(k)];
                        v.iter().fold(0f32, |a, x| a.max(x.abs()))
                    })
                    .fold(0f32, f32::max);
                let err = rms(vals, &deq[span]);
                let bound = 0.45 * f64::from(hi - lo) / 15.0 + f64::from(wide) / 127.0;
                assert!(err <= bound, "[{row}, {b}] RMS error {err} > {bound}");
            }
        }
    }

    #[test]
    fn every_compiled_form_writes_the_same_bytes() {
        // The dispatching entry (AVX2 where the CPU has it) against the portable form.
        let mut rng = Lcg(9);
        let (n, k) = (20, 600);
        let w = random_weights(&mut rng, n, k);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        for t in 0..n.div_ceil(16) {
            let mut a = vec![0u8; q4_tile_bytes(k.div_ceil(32))];
            let mut b = a.clone();
            quantize_tile(&w, n, k, t, &mut a).unwrap();
            quantize_tile_any(&w, n, k, t, &mut b).unwrap();
            assert_eq!(a, b, "f32 tile {t}");
            let (mut a, mut b) = (vec![0u8; a.len()], vec![0u8; a.len()]);
            quantize_tile(&wb, n, k, t, &mut a).unwrap();
            quantize_tile_any(&wb, n, k, t, &mut b).unwrap();
            assert_eq!(a, b, "bf16 tile {t}");
        }
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
        let err = PackedQ4::quantize(&[3e38f32, -3e38], 1, 2).unwrap_err();
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
    fn f16_and_bf16_rounding_is_directed() {
        let mut rng = Lcg(11);
        for _ in 0..10_000 {
            let x = rng.normal() * 10f32.powi((rng.next_u32() % 9) as i32 - 6);
            assert!(f16_toward(x, true).to_f32() >= x, "{x}");
            assert!(f16_toward(x, false).to_f32() <= x, "{x}");
        }
        assert_eq!(f16_toward(0.0, true).to_f32(), 0.0);
        assert!(f16_toward(1e-9, true).to_f32() > 0.0);
        assert!(f16_toward(-1e-9, false).to_f32() < 0.0);
        for _ in 0..10_000 {
            let x = rng.uniform() * 10f32.powi((rng.next_u32() % 60) as i32 - 30);
            let up = bf16_up(x).to_f32();
            assert!(up >= x && (up == x || bf16::from_bits(bf16_up(x).to_bits() - 1).to_f32() < x));
        }
        assert_eq!(bf16_up(0.0).to_f32(), 0.0);
        assert_eq!(bf16_up(1.0).to_f32(), 1.0);
        assert!(bf16_up(f32::MAX).is_infinite());
    }
}
