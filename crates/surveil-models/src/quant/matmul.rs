//! The matmul drivers: `y [m, n] = x [m, k] · Wᵀ` over a [`PackedWeight`], tiled over (rows of x) ×
//! (row tiles of W) and split over a [`ThreadPool`] by row tiles. `m = 1` is the decode GEMV
//! (one pass over the weight); `m > 1` the prefill / vision GEMM, where each weight tile is
//! reused from cache by a panel of up to [`PANEL_ROWS`] activation rows, a few rows per
//! micro-kernel call.

use std::marker::PhantomData;
use std::ops::Range;

use super::activations::QuantizedActivations;
use super::kernels::{tile_outputs, PackedRows, UnpackedTile, GROUP_ROWS, MAX_ROWS_PER_CALL};
use super::{Kernel, PackedWeight, QuantError, ThreadPool, TILE_ROWS};

/// Activation rows that share one pass over a weight tile (the tile's `k` range stays in
/// L1/L2 while they run): 60 rows of `k = 1536` are 92 KB of activations. A multiple of every
/// path's rows per call (2, 4 and [`GROUP_ROWS`]).
pub(crate) const PANEL_ROWS: usize = 60;

/// Work (weight bytes × activation rows) below which a job runs on the calling thread alone:
/// waking a parked worker costs the caller a few microseconds (a futex call), about the time
/// of streaming 256 KiB, and each thread should get at least that.
const MIN_SPLIT_WORK: usize = 512 * 1024;

/// Work per part once a job is split: the pool gives each thread a contiguous run of parts
/// and lets a thread that is done take parts from the back of another's run, so the threads
/// finish within about one part of each other. 64 KiB of weight streams in about 4 µs on one
/// core; taking a part is one compare-and-swap.
const PART_WORK: usize = 64 * 1024;

/// `y [rows, n] = x [rows, k] · Wᵀ` with the fastest kernel of this CPU ([`Kernel::best`]).
/// `x` and `y` are row-major f32; `x` is quantized to 8 bits per 32-block first.
///
/// Errors: see [`matmul_with`].
pub fn matmul<W: PackedWeight>(
    w: &W,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    matmul_with(Kernel::best(), w, x, rows, y, pool)
}

/// [`matmul`] on the path `kernel`.
///
/// Errors: the path is not available on this CPU ([`QuantError::KernelUnavailable`]);
/// `x.len() != rows × k` or `y.len() != rows × n` ([`QuantError::Length`]); a part panicked
/// ([`QuantError::JobPanicked`]).
pub fn matmul_with<W: PackedWeight>(
    kernel: Kernel,
    w: &W,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    kernel.check()?;
    let acts = QuantizedActivations::quantize(x, rows, w.cols())?;
    matmul_quantized(kernel, w, &acts, y, pool)
}

/// `y [rows, n] = x · Wᵀ` from activations quantized once (to share them between weights
/// with the same input, e.g. q/k/v or gate/up).
///
/// Errors: the path is not available ([`QuantError::KernelUnavailable`]); `x` has another
/// width than `W` ([`QuantError::Shape`]); `y.len() != rows × n` ([`QuantError::Length`]); a
/// part panicked ([`QuantError::JobPanicked`]).
pub fn matmul_quantized<W: PackedWeight>(
    kernel: Kernel,
    w: &W,
    x: &QuantizedActivations,
    y: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    matmul_quantized_then(kernel, w, x, y, pool, Epilogue::default())
}

/// [`matmul_quantized`] with `epilogue` applied to each output as it is written:
/// `y = act(x·Wᵀ + bias) + residual`, on the thread that computed the output, while it is in
/// cache (no second pass over `y`, no second buffer).
///
/// Errors: as [`matmul_quantized`]; a bias of another width than `n` or a residual of another
/// length than `rows × n` ([`QuantError::Length`]).
pub fn matmul_quantized_then<W: PackedWeight>(
    kernel: Kernel,
    w: &W,
    x: &QuantizedActivations,
    y: &mut [f32],
    pool: &ThreadPool,
    epilogue: Epilogue<'_>,
) -> Result<(), QuantError> {
    matmul_quantized_many(kernel, &mut [MatmulOut { w, y, epilogue }], x, pool)
}

/// One product of [`matmul_quantized_many`]: `y [rows, n] = epilogue(x · Wᵀ)`.
pub struct MatmulOut<'a, 'y, W> {
    /// The weight `[n, k]`.
    pub w: &'a W,
    /// The output, row-major `[rows, n]`.
    pub y: &'y mut [f32],
    /// Applied to each output as it is written.
    pub epilogue: Epilogue<'a>,
}

/// Several products of the same input in one pool job: `outs[i].y = epilogue_i(x · W_iᵀ)` (a
/// layer's q, k and v projections; an MLP's gate and up). One job instead of one per weight:
/// the threads meet once, and a small weight (a GQA layer's k or v, 0.25 MB) is split over the
/// threads with the others instead of running on one.
///
/// Errors: as [`matmul_quantized_then`], for the first product at fault.
pub fn matmul_quantized_many<W: PackedWeight>(
    kernel: Kernel,
    outs: &mut [MatmulOut<'_, '_, W>],
    x: &QuantizedActivations,
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    kernel.check()?;
    for o in outs.iter() {
        let w = o.w;
        if x.cols() != w.cols() {
            return Err(QuantError::Shape(format!(
                "activations have width {}, the weight [{}, {}] takes {}",
                x.cols(),
                w.rows(),
                w.cols(),
                w.cols()
            )));
        }
        let expected = x.rows() * w.rows();
        if o.y.len() != expected {
            return Err(QuantError::Length {
                what: "output",
                expected,
                found: o.y.len(),
            });
        }
        o.epilogue.check(x.rows(), w.rows())?;
    }
    let Some(first) = outs.first() else {
        return Ok(());
    };
    let pairs: Vec<(usize, usize)> = (0..x.rows()).map(|r| (r, r)).collect();
    // The packed rows depend on `x` and the weights' format only: one packing for all.
    let packed = pack_rows(kernel, first.w, x, &pairs, pool)?;
    let work: usize = outs
        .iter()
        .map(|o| o.w.bytes().saturating_mul(pairs.len()))
        .sum();
    let split = pool.threads() > 1 && work >= MIN_SPLIT_WORK;
    // Parts per product, and where each product's parts start in the job.
    // One part per `PART_WORK`, and at least the product's share of one part per thread.
    let threads = pool.threads();
    let parts: Vec<usize> = outs
        .iter()
        .map(|o| {
            let w = o.w.bytes().saturating_mul(pairs.len());
            if split {
                (w / PART_WORK)
                    .max((threads * w).div_ceil(work.max(1)))
                    .clamp(1, o.w.tiles().max(1))
            } else {
                1
            }
        })
        .collect();
    let starts: Vec<usize> = parts
        .iter()
        .scan(0, |at, &n| {
            let s = *at;
            *at += n;
            Some(s)
        })
        .collect();
    let total: usize = parts.iter().sum();
    let shared: Vec<(&W, SharedOut<'_>)> = outs
        .iter_mut()
        .map(|o| {
            let rows = o.w.rows();
            (o.w, SharedOut::new(&mut *o.y, rows).then(o.epilogue))
        })
        .collect();
    let run_part = |p: usize| {
        let i = starts.partition_point(|&s| s <= p) - 1;
        let (w, out) = &shared[i];
        let tiles = part_range(w.tiles(), parts[i], p - starts[i]);
        // SAFETY: parts cover disjoint tile ranges of their product's output, so no two
        // write the same outputs.
        unsafe { tiles_times_rows(kernel, *w, x, &pairs, packed.as_ref(), tiles, out) }
    };
    if split {
        pool.run(total, run_part)
    } else {
        // Too little work to share: every part on the calling thread.
        pool.run(1, |_| (0..total).for_each(run_part))
    }
}

/// The activation rows of `pairs` packed for the unpacked-tile kernel, when `kernel` has one
/// for `w`'s format and there are more rows than one plain call takes; else `None`.
///
/// Errors: a part of the packing panicked ([`QuantError::JobPanicked`]).
pub(crate) fn pack_rows<W: PackedWeight>(
    kernel: Kernel,
    w: &W,
    x: &QuantizedActivations,
    pairs: &[(usize, usize)],
    pool: &ThreadPool,
) -> Result<Option<PackedRows>, QuantError> {
    if pairs.len() <= kernel.rows_per_call() || !UnpackedTile::available(kernel, w.format()) {
        return Ok(None);
    }
    let rows: Vec<usize> = pairs.iter().map(|&(r, _)| r).collect();
    PackedRows::pack(x, &rows, PANEL_ROWS, pool).map(Some)
}

/// How many parts to split `tiles` row tiles into for `work` = weight bytes × rows: one below
/// [`MIN_SPLIT_WORK`] or with one thread, else one per [`PART_WORK`] (at least one per
/// thread, at most one per tile).
pub(crate) fn part_count(work: usize, tiles: usize, threads: usize) -> usize {
    if threads <= 1 || work < MIN_SPLIT_WORK {
        return 1;
    }
    (work / PART_WORK).max(threads).min(tiles.max(1))
}

/// Tiles of part `p` of `parts` (contiguous, sizes differing by at most one).
pub(crate) fn part_range(tiles: usize, parts: usize, p: usize) -> Range<usize> {
    tiles * p / parts..tiles * (p + 1) / parts
}

/// The outputs `(act_row, out_row)` of `pairs` for the tiles `tiles` of `w`: for each panel
/// of rows, each tile, each group of rows one micro-kernel call, written to `out` row
/// `out_row`, columns of the tile (cut at `n`). With `packed` (the rows of `pairs` packed by
/// [`pack_rows`]), a panel of more rows than one plain call takes unpacks each tile once and
/// runs the unpacked-tile kernel on groups of [`GROUP_ROWS`].
///
/// # Safety
/// No concurrent call writes the same `(out_row, tile)` of `out`.
pub(crate) unsafe fn tiles_times_rows<W: PackedWeight>(
    kernel: Kernel,
    w: &W,
    x: &QuantizedActivations,
    pairs: &[(usize, usize)],
    packed: Option<&PackedRows>,
    tiles: Range<usize>,
    out: &SharedOut<'_>,
) {
    let blocks = w.blocks_per_row();
    let mut res = [[0f32; TILE_ROWS]; MAX_ROWS_PER_CALL];
    let mut unpacked = UnpackedTile::default();
    for (p, panel) in pairs.chunks(PANEL_ROWS).enumerate() {
        for t in tiles.clone() {
            let tile = w.tile(t);
            let col = t * TILE_ROWS;
            let width = (w.rows() - col).min(TILE_ROWS);
            let grouped = match packed {
                Some(packed) if panel.len() > kernel.rows_per_call() => unpacked
                    .unpack(kernel, w.format(), tile, blocks)
                    .then_some(packed),
                _ => None,
            };
            let per_call = if grouped.is_some() {
                GROUP_ROWS
            } else {
                kernel.rows_per_call()
            };
            for (g, group) in panel.chunks(per_call).enumerate() {
                if let Some(packed) = grouped {
                    let first = p * PANEL_ROWS + g * GROUP_ROWS;
                    unpacked.outputs(
                        blocks,
                        packed.group(first, group.len()),
                        group.len(),
                        &mut res,
                    );
                } else {
                    let mut acts = [x.row(group[0].0); MAX_ROWS_PER_CALL];
                    for (a, &(r, _)) in acts.iter_mut().zip(group) {
                        *a = x.row(r);
                    }
                    tile_outputs(
                        kernel,
                        w.format(),
                        tile,
                        blocks,
                        &acts[..group.len()],
                        &mut res,
                    );
                }
                for (vals, &(_, out_row)) in res.iter().zip(group) {
                    // SAFETY: the caller guarantees no concurrent writer of this tile's
                    // columns in `out_row`.
                    unsafe { out.write(out_row, col, &vals[..width]) };
                }
            }
        }
    }
}

/// What a matmul does to each output `y[r, c]` as it writes it: `act(y + bias[c]) +
/// residual[r, c]`, on the thread that computed the output, while it is in registers or L1 (a
/// layer's bias, its activation and the residual connection after it, with no second pass over
/// the output). The default does nothing.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[n]`, added to every output row.
    pub bias: Option<&'a [f32]>,
    /// Applied in place after the bias, to runs of up to [`TILE_ROWS`] consecutive outputs of
    /// one row (an elementwise function: it must not depend on where a run starts or ends).
    pub activation: Option<fn(&mut [f32])>,
    /// `[rows, n]`, row-major like `y`, added last (a residual connection).
    pub residual: Option<&'a [f32]>,
}

impl std::fmt::Debug for Epilogue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epilogue")
            .field("bias", &self.bias.map(<[f32]>::len))
            .field("activation", &self.activation.is_some())
            .field("residual", &self.residual.map(<[f32]>::len))
            .finish()
    }
}

impl Epilogue<'_> {
    /// `d = act(v + bias[col..]) + residual[at..]` for one run of outputs.
    #[inline(always)]
    fn run<D: AsMut<[f32]> + ?Sized, V: AsRef<[f32]> + ?Sized>(
        &self,
        d: &mut D,
        v: &V,
        at: usize,
        col: usize,
    ) {
        let (d, v) = (d.as_mut(), v.as_ref());
        d.copy_from_slice(v);
        if let Some(b) = self.bias {
            d.iter_mut().zip(&b[col..]).for_each(|(y, b)| *y += b);
        }
        if let Some(act) = self.activation {
            act(d);
        }
        if let Some(r) = self.residual {
            d.iter_mut().zip(&r[at..]).for_each(|(y, r)| *y += r);
        }
    }

    /// Whether it leaves the outputs as they are.
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.activation.is_none() && self.residual.is_none()
    }

    /// Errors: a bias of another width than `n`, a residual of another length than `rows × n`.
    pub(crate) fn check(&self, rows: usize, n: usize) -> Result<(), QuantError> {
        if let Some(b) = self.bias.filter(|b| b.len() != n) {
            return Err(QuantError::Length {
                what: "bias",
                expected: n,
                found: b.len(),
            });
        }
        if let Some(r) = self.residual.filter(|r| r.len() != rows * n) {
            return Err(QuantError::Length {
                what: "residual",
                expected: rows * n,
                found: r.len(),
            });
        }
        Ok(())
    }
}

/// An output matrix `[rows, cols]` that several threads write, each its own cells, through an
/// [`Epilogue`].
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    epilogue: Epilogue<'a>,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedOut` only hands out writes through `write`, whose contract forbids two
// threads writing the same cells; the buffer is borrowed mutably for `'a`.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// Over `y` as rows of `cols` values (`y.len()` a multiple of `cols`).
    pub(crate) fn new(y: &'a mut [f32], cols: usize) -> Self {
        Self {
            ptr: y.as_mut_ptr(),
            rows: y.len().checked_div(cols).unwrap_or(0),
            cols,
            epilogue: Epilogue::default(),
            _y: PhantomData,
        }
    }

    /// The same output, each write going through `epilogue` (checked against the output's
    /// shape by the caller, [`Epilogue::check`]).
    pub(crate) fn then(self, epilogue: Epilogue<'a>) -> Self {
        Self { epilogue, ..self }
    }

    /// Write `vals` through the epilogue at `(row, col..col + vals.len())`.
    ///
    /// # Safety
    /// No other thread reads or writes these cells during the call.
    pub(crate) unsafe fn write(&self, row: usize, col: usize, vals: &[f32]) {
        assert!(
            row < self.rows && col + vals.len() <= self.cols,
            "output write out of bounds"
        );
        let at = row * self.cols + col;
        // SAFETY: in bounds (checked above) of the buffer borrowed for `'a`; exclusive per the
        // caller's guarantee.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), vals.len()) };
        let e = &self.epilogue;
        if e.is_identity() {
            dst.copy_from_slice(vals);
            return;
        }
        for (i, (d, v)) in dst
            .chunks_mut(TILE_ROWS)
            .zip(vals.chunks(TILE_ROWS))
            .enumerate()
        {
            let (at, col) = (at + i * TILE_ROWS, col + i * TILE_ROWS);
            // A whole tile's run (all but the last tile of a row) at a fixed size, so the
            // compiler keeps it in registers with no bounds checks or copies.
            let whole = (
                <&mut [f32; TILE_ROWS]>::try_from(&mut *d),
                <&[f32; TILE_ROWS]>::try_from(v),
            );
            if let (Ok(d), Ok(v)) = whole {
                e.run(d, v, at, col);
            } else {
                e.run(d, v, at, col);
            }
        }
    }
}
