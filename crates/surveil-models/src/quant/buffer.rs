//! [`AlignedBytes`]: the packed weights' buffer, 64-byte aligned so every tile starts on a
//! cache line.

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
