//! The scalar reference: plain Rust over the packed layout, the same float operations in the
//! same order as the SIMD paths.

use crate::quant::activations::ActRow;
use crate::quant::packed_q4::{
    block_scale_min, q4_block_offset, q4_header_offset, Q4_BLOCK_BYTES, Q4_HEADER_BYTES,
};
use crate::quant::packed_q8::{read_f16, Q8_QUANT_BYTES, Q8_SCALE_BYTES};
use crate::quant::{BLOCK, SUPER_BLOCK, TILE_ROWS};

use super::MAX_ROWS_PER_CALL;

/// `Σ_i q_w[r][i]·q_x[i]` for the 16 rows `r` of one tile block (`quants`: its 256 quant
/// bytes).
pub(super) fn block_dots(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    let mut dots = [0i32; TILE_ROWS];
    for c in 0..4 {
        let chunk = &quants[c * 64..(c + 1) * 64];
        for (r, dot) in dots.iter_mut().enumerate() {
            for i in 0..4 {
                let byte = chunk[r * 4 + i];
                *dot += i32::from(byte & 0x0F) * i32::from(xq[4 * c + i])
                    + i32::from(byte >> 4) * i32::from(xq[16 + 4 * c + i]);
            }
        }
    }
    dots
}

/// See [`super::tile_outputs`].
pub(super) fn tile_outputs(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    for (x, acc) in rows.iter().zip(out.iter_mut()) {
        *acc = [0.0; TILE_ROWS];
        for b in 0..blocks {
            let header = &tile[q4_header_offset(b / SUPER_BLOCK)..][..Q4_HEADER_BYTES];
            let tb = &tile[q4_block_offset(b)..][..Q4_BLOCK_BYTES];
            let dots = block_dots(tb, &x.q[b * BLOCK..(b + 1) * BLOCK]);
            let dx = x.d[b];
            let sx = x.sx[b];
            for (j, (a, &dot)) in acc.iter_mut().zip(&dots).enumerate() {
                let (dw, mw) = block_scale_min(header, tb, j);
                *a = (dot as f32).mul_add(dw * dx, *a);
                *a = mw.mul_add(sx, *a);
            }
        }
    }
}

/// `Σ_i q_w[r][i]·q_x[i]` for the 16 rows of one Q8 tile block (`quants`: 512 bytes, offset
/// by 128).
pub(super) fn block_dots_q8(quants: &[u8], xq: &[i8]) -> [i32; TILE_ROWS] {
    let mut dots = [0i32; TILE_ROWS];
    for c in 0..8 {
        let chunk = &quants[c * 64..(c + 1) * 64];
        for (r, dot) in dots.iter_mut().enumerate() {
            for i in 0..4 {
                *dot += (i32::from(chunk[r * 4 + i]) - 128) * i32::from(xq[4 * c + i]);
            }
        }
    }
    dots
}

/// See [`super::tile_outputs`], for a Q8 tile.
pub(super) fn tile_outputs_q8(
    tile: &[u8],
    blocks: usize,
    rows: &[ActRow<'_>],
    out: &mut [[f32; TILE_ROWS]; MAX_ROWS_PER_CALL],
) {
    let (quants, scales) = tile.split_at(blocks * Q8_QUANT_BYTES);
    for (x, acc) in rows.iter().zip(out.iter_mut()) {
        *acc = [0.0; TILE_ROWS];
        for (b, qb) in quants.chunks_exact(Q8_QUANT_BYTES).enumerate() {
            let dots = block_dots_q8(qb, &x.q[b * BLOCK..(b + 1) * BLOCK]);
            let dx = x.d[b];
            for (j, (a, &dot)) in acc.iter_mut().zip(&dots).enumerate() {
                let dw = read_f16(scales, b * Q8_SCALE_BYTES, j);
                *a = (dot as f32).mul_add(dw * dx, *a);
            }
        }
    }
}
