//! The kernel paths and their run-time choice: a portable scalar reference, AVX2 and
//! AVX-512 VNNI. Each computes, for one row tile of a [`PackedQ4`](super::PackedQ4) or
//! [`PackedQ8`](super::PackedQ8) and up to a few quantized activation rows, the 16 outputs per
//! row (the micro-kernel the drivers in `matmul.rs` tile over).

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use super::activations::{ActRow, QuantizedActivations};
use super::packed_q4::{q4_tile_bytes, Q4_QUANT_BYTES};
use super::packed_q8::{q8_tile_bytes, Q8_QUANT_BYTES};
use super::{QuantError, ThreadPool, WeightFormat, BLOCK, TILE_ROWS};

/// One implementation of the 4-bit kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, one value at a time: the reference the others are tested against, and
    /// the path on CPUs without AVX2 and on other architectures.
    Scalar,
    /// AVX2 + FMA + F16C: `vpmaddubsw` (u8 × i8 pairs into i16) then `vpmaddwd` into i32; a
    /// tile as two halves of 8 rows.
    Avx2,
    /// AVX-512 F/BW + VNNI: `vpdpbusd` (u8 × i8 quads into i32), a tile's 16 rows in one
    /// register.
    Avx512Vnni,
}

impl Kernel {
    /// Every path, slowest first.
    pub const ALL: [Kernel; 3] = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni];

    /// The fastest path this CPU runs, detected once (`is_x86_feature_detected!`) and cached.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let best = Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Scalar);
            tracing::debug!(kernel = ?best, "4-bit matmul kernel");
            best
        })
    }

    /// Whether this CPU has the features the path needs.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512Vnni => false,
        }
    }

    /// The CPU features the path needs, as named in `/proc/cpuinfo`.
    pub fn needs(self) -> &'static str {
        match self {
            Kernel::Scalar => "none",
            Kernel::Avx2 => "x86_64 avx2, fma, f16c",
            Kernel::Avx512Vnni => "x86_64 avx512f, avx512bw, avx512_vnni",
        }
    }

    /// `Ok` when the path can run here, else [`QuantError::KernelUnavailable`].
    pub fn check(self) -> Result<Kernel, QuantError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(QuantError::KernelUnavailable {
                kernel: self,
                needs: self.needs(),
            })
        }
    }

    /// Activation rows one micro-kernel call takes (its weight tile is unpacked once for all
    /// of them): what fits the path's registers.
    pub(crate) fn rows_per_call(self) -> usize {
        match self {
            Kernel::Scalar => 4,
            Kernel::Avx2 => 2,
            Kernel::Avx512Vnni => 4,
        }
    }
}

/// Rows of one call of the unpacked-tile kernel ([`UnpackedTile::outputs`]): on AVX-512 VNNI
/// six rows are twelve independent `vpdpbusd` chains, enough to cover the instruction's
/// latency at two per cycle (four rows' eight chains leave the units idle a third of the
/// time); AVX2 takes a group in one pass too (the weights loaded once per chunk for six rows:
/// 0.67 loads per `vpmaddubsw`).
pub(crate) const GROUP_ROWS: usize = 6;

/// Most activation rows of one micro-kernel call, over all paths.
pub(crate) const MAX_ROWS_PER_CALL: usize = 6;

/// Bytes of one row's block in a [`PackedRows`] group: 32 quants, `d` and `d·Σq` (f32).
pub(crate) const GROUP_BLOCK_BYTES: usize = BLOCK + 8;

/// The outputs of one tile for up to [`MAX_ROWS_PER_CALL`] activation rows: `out[r][j]` =
/// row `r` of `x` · row `j` of the tile. `tile` is the tile's bytes in `format`; every row
/// has `blocks` blocks. A path the CPU lacks falls back to the scalar one.
pub(crate) fn tile_outputs(
    kernel: Kernel,
    format: WeightFormat,
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let need = match format {
        WeightFormat::Q4 => q4_tile_bytes(blocks),
        WeightFormat::Q8 => q8_tile_bytes(blocks),
    };
    assert!(tile.len() >= need, "tile shorter than its blocks");
    assert!(
        rows.len() <= kernel.rows_per_call(),
        "too many rows for one call"
    );
    for r in rows {
        assert!(
            r.q.len() >= blocks * BLOCK
                && r.d.len() >= blocks
                && r.sum.len() >= blocks
                && r.sx.len() >= blocks,
            "activation row shorter than the weight's blocks"
        );
    }
    match (kernel, format) {
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512Vnni, WeightFormat::Q4) => x86::tile_outputs_avx512(tile, blocks, rows, out),
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, WeightFormat::Q4) => x86::tile_outputs_avx2(tile, blocks, rows, out),
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx512Vnni, WeightFormat::Q8) => {
            x86::tile_outputs_q8_avx512(tile, blocks, rows, out)
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, WeightFormat::Q8) => x86::tile_outputs_q8_avx2(tile, blocks, rows, out),
        (_, WeightFormat::Q4) => scalar::tile_outputs(tile, blocks, rows, out),
        (_, WeightFormat::Q8) => scalar::tile_outputs_q8(tile, blocks, rows, out),
    }
}

/// A Q4 tile unpacked once for a panel of activation rows ([`UnpackedTile::unpack`]), on the
/// paths that gain from it (AVX-512 VNNI and AVX2: the nibble split and the decoding of each
/// block's `d` and `m` leave the micro-kernel's loop, and a packed row group reaches every row's block
/// from one pointer).
#[derive(Default)]
pub(crate) struct UnpackedTile {
    #[cfg(target_arch = "x86_64")]
    blocks: Vec<x86::UnpackedBlock>,
    /// The path the tile was last unpacked for.
    kernel: Option<Kernel>,
}

impl UnpackedTile {
    /// Whether `kernel` has an unpacked form of `format`'s tiles on this CPU.
    pub(crate) fn available(kernel: Kernel, format: WeightFormat) -> bool {
        matches!(
            (kernel, format),
            (Kernel::Avx512Vnni | Kernel::Avx2, WeightFormat::Q4)
        ) && kernel.is_available()
    }

    /// Unpack `tile` (`blocks` blocks in `format`) for `kernel`. `false` when the path has no
    /// unpacked form (then use [`tile_outputs`]).
    pub(crate) fn unpack(
        &mut self,
        kernel: Kernel,
        format: WeightFormat,
        tile: &[u8],
        blocks: usize,
    ) -> bool {
        let done = match format {
            #[cfg(target_arch = "x86_64")]
            WeightFormat::Q4 => x86::unpack_tile(kernel, tile, blocks, &mut self.blocks),
            _ => {
                let _ = (tile, blocks);
                false
            }
        };
        self.kernel = done.then_some(kernel);
        done
    }

    /// [`tile_outputs`] on the tile last unpacked (by `unpack` returning `true`) for the
    /// `rows` rows of one group of a [`PackedRows`] (`group`, from [`PackedRows::group`]): the
    /// same outputs, bit for bit.
    pub(crate) fn outputs(
        &self,
        blocks: usize,
        group: &[u8],
        rows: usize,
        out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
    ) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Some(Kernel::Avx512Vnni) => {
                x86::tile_outputs_grouped_avx512(&self.blocks, blocks, group, rows, out)
            }
            #[cfg(target_arch = "x86_64")]
            Some(Kernel::Avx2) => {
                x86::tile_outputs_grouped_avx2(&self.blocks, blocks, group, rows, out)
            }
            _ => {
                let _ = (blocks, group, rows, out);
                unreachable!("no tile unpacked for a grouped path");
            }
        }
    }
}

/// Quantized activation rows repacked for the unpacked-tile kernel: the rows of a matmul, in
/// the order it takes them, cut into groups of up to [`GROUP_ROWS`] (a panel's rows, then the
/// next panel's), each group stored block-major: for each block, the group's 32-byte quant
/// blocks row after row, then their `d`, then their `d·Σq`. One pointer then reaches every
/// row's block (the GotoBLAS packing of the A panel).
///
/// A group that starts at the `i`-th row taken starts at byte `i · blocks · 40`.
#[derive(Default)]
pub(crate) struct PackedRows {
    data: Vec<u8>,
    blocks: usize,
}

impl PackedRows {
    /// Pack the activation rows `rows` (in the order a matmul takes them, cut into panels of
    /// `panel` rows and groups of [`GROUP_ROWS`]) of `x`, over `pool`.
    ///
    /// Errors: a part panicked ([`QuantError::JobPanicked`]).
    pub(crate) fn pack(
        x: &QuantizedActivations,
        rows: &[usize],
        panel: usize,
        pool: &ThreadPool,
    ) -> Result<Self, QuantError> {
        let blocks = x.blocks_per_row();
        let row_bytes = blocks * GROUP_BLOCK_BYTES;
        let mut data = vec![0u8; rows.len() * row_bytes];
        // Groups as (first row taken, rows): a panel's groups, then the next panel's.
        let mut groups = Vec::with_capacity(rows.len().div_ceil(GROUP_ROWS) + 1);
        for (p, chunk) in rows.chunks(panel.max(1)).enumerate() {
            for (g, group) in chunk.chunks(GROUP_ROWS).enumerate() {
                groups.push((p * panel + g * GROUP_ROWS, group.len()));
            }
        }
        let dst = SharedBytes(data.as_mut_ptr());
        let dst = &dst;
        let parts = pool.threads().min(groups.len()).max(1);
        pool.run(parts, |part| {
            let range = groups.len() * part / parts..groups.len() * (part + 1) / parts;
            for &(first, n) in &groups[range] {
                // SAFETY: group `first..first + n` owns bytes `first·row_bytes ..
                // (first + n)·row_bytes` of `data`, which no other group touches.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(dst.0.add(first * row_bytes), n * row_bytes)
                };
                pack_group(x, &rows[first..first + n], out);
            }
        })?;
        Ok(Self { data, blocks })
    }

    /// The bytes of the group whose first row is the `first`-th row taken, of `rows` rows.
    pub(crate) fn group(&self, first: usize, rows: usize) -> &[u8] {
        let row_bytes = self.blocks * GROUP_BLOCK_BYTES;
        &self.data[first * row_bytes..(first + rows) * row_bytes]
    }
}

/// A mutable byte buffer whose disjoint ranges several parts of a pool job write.
struct SharedBytes(*mut u8);

// SAFETY: the parts of `PackedRows::pack` write disjoint ranges.
unsafe impl Sync for SharedBytes {}

/// One group: for each block, the rows' quants, then their `d`, then their `d·Σq`.
fn pack_group(x: &QuantizedActivations, rows: &[usize], out: &mut [u8]) {
    let n = rows.len();
    let act: Vec<ActRow<'_>> = rows.iter().map(|&r| x.row(r)).collect();
    for (b, dst) in out.chunks_exact_mut(n * GROUP_BLOCK_BYTES).enumerate() {
        let (q, scales) = dst.split_at_mut(n * BLOCK);
        let (d, sx) = scales.split_at_mut(4 * n);
        for (i, a) in act.iter().enumerate() {
            for (o, &v) in q[i * BLOCK..(i + 1) * BLOCK]
                .iter_mut()
                .zip(&a.q[b * BLOCK..(b + 1) * BLOCK])
            {
                *o = v as u8;
            }
            d[4 * i..4 * i + 4].copy_from_slice(&a.d[b].to_ne_bytes());
            sx[4 * i..4 * i + 4].copy_from_slice(&a.sx[b].to_ne_bytes());
        }
    }
}

/// [`QuantError::Length`] when `found` is under `expected`.
fn at_least(what: &'static str, expected: usize, found: usize) -> Result<(), QuantError> {
    if found < expected {
        return Err(QuantError::Length {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

/// The integer dot products `Σ q_w·q_x` of one tile block's 256 quant bytes (`quants`, the
/// first 256 of the block's 288) with one activation block (32 `i8`), per row of the tile, as
/// the path computes them inside its kernel.
///
/// Errors: the path is not available ([`QuantError::KernelUnavailable`]); short slices
/// ([`QuantError::Length`]).
pub fn block_dots(
    kernel: Kernel,
    quants: &[u8],
    xq: &[i8],
) -> Result<[i32; TILE_ROWS], QuantError> {
    kernel.check()?;
    at_least("q4 tile block quants", Q4_QUANT_BYTES, quants.len())?;
    at_least("activation block", BLOCK, xq.len())?;
    Ok(match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::block_dots_avx512(quants, xq),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::block_dots_avx2(quants, xq),
        _ => scalar::block_dots(quants, xq),
    })
}

/// [`block_dots`] for a [`PackedQ8`](super::PackedQ8) tile block: `quants` is its 512 quant
/// bytes (offset by 128), `xq` the 32 activation bytes.
///
/// Errors: the path is not available ([`QuantError::KernelUnavailable`]); short slices
/// ([`QuantError::Length`]).
pub fn block_dots_q8(
    kernel: Kernel,
    quants: &[u8],
    xq: &[i8],
) -> Result<[i32; TILE_ROWS], QuantError> {
    kernel.check()?;
    at_least("q8 tile block", Q8_QUANT_BYTES, quants.len())?;
    at_least("activation block", BLOCK, xq.len())?;
    Ok(match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::block_dots_q8_avx512(quants, xq),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::block_dots_q8_avx2(quants, xq),
        _ => scalar::block_dots_q8(quants, xq),
    })
}
