//! [`AlignedBytes`]: the packed weights' buffer, 64-byte aligned so every tile starts on a
//! cache line, and [`pack_parts`], which quantizes stacked weights into it tile by tile.

use super::QuantError;

/// One cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A zero-initialised byte buffer whose start is 64-byte aligned and whose allocation is
/// exactly its length rounded up to 64.
pub(crate) struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// Bytes allocated (the length rounded up to a whole line).
    pub(crate) fn allocated(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<Line>()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Line` is `repr(C)` around `[u8; 64]` (size 64, no padding), so the lines are
        // `64 × lines.len()` ≥ `len` initialised bytes; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; every byte pattern is a valid `Line`, and the slice borrows
        // `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Pack `parts` (`(values, rows_i)`, each `[rows_i, cols]` row-major) one after the other into row tiles of
/// [`TILE_ROWS`](super::TILE_ROWS): part `i` takes `ceil(rows_i / 16)` whole tiles, so every
/// part starts on a tile boundary ([`super::stacked_offsets`]). `tile(values, rows, t, out)`
/// quantizes tile `t` of one part into `out` (`tile_bytes` zeroed bytes). The tiles are split
/// over `threads` scoped threads (the caller included) in contiguous runs.
///
/// Returns the buffer and the tile count.
///
/// Errors: a part's length is not `rows_i × cols` ([`QuantError::Length`]); the first error of
/// `tile` in tile order.
pub(crate) fn pack_parts<T, F>(
    parts: &[(&[T], usize)],
    cols: usize,
    tile_bytes: usize,
    threads: usize,
    tile: F,
) -> Result<(AlignedBytes, usize), QuantError>
where
    T: Sync,
    F: Fn(&[T], usize, usize, &mut [u8]) -> Result<(), QuantError> + Sync,
{
    let mut work = Vec::new();
    for (p, &(values, rows)) in parts.iter().enumerate() {
        let expected = rows.checked_mul(cols).ok_or_else(|| {
            QuantError::Shape(format!("weight shape [{rows}, {cols}] overflows usize"))
        })?;
        if values.len() != expected {
            return Err(QuantError::Length {
                what: "weight",
                expected,
                found: values.len(),
            });
        }
        work.extend((0..rows.div_ceil(super::TILE_ROWS)).map(|t| (p, t)));
    }
    let tiles = work.len();
    let mut buf = AlignedBytes::zeroed(tiles * tile_bytes);
    if tile_bytes == 0 || tiles == 0 {
        return Ok((buf, tiles));
    }
    let jobs: Vec<((usize, usize), &mut [u8])> = work
        .into_iter()
        .zip(buf.as_bytes_mut().chunks_exact_mut(tile_bytes))
        .collect();
    let run_chunk = |chunk: &mut [((usize, usize), &mut [u8])]| -> Result<(), QuantError> {
        for ((p, t), out) in chunk.iter_mut() {
            let (values, rows) = parts[*p];
            tile(values, rows, *t, out)?;
        }
        Ok(())
    };
    let run = &run_chunk;
    let threads = threads.clamp(1, tiles);
    let mut jobs = jobs;
    let per_thread = tiles.div_ceil(threads);
    let results: Vec<Result<(), QuantError>> = std::thread::scope(|scope| {
        let mut chunks = jobs.chunks_mut(per_thread);
        let own = chunks.next();
        let handles: Vec<_> = chunks.map(|c| scope.spawn(move || run(c))).collect();
        let mut results = vec![own.map_or(Ok(()), run)];
        results.extend(handles.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(QuantError::JobPanicked("quantizing a tile".into())))
        }));
        results
    });
    for r in results {
        r?;
    }
    Ok((buf, tiles))
}
