//! [`bf16_matmul`]: `y = x · Wᵀ` for a weight kept in bf16 (`vlm.storage = bf16` on the CPU)
//! and f32 activations, for few rows (decode): each weight row is read once, widened to f32 in
//! registers (a bf16 is the top half of an f32) and multiplied with every activation row.
//! Prefill and the vision tower, with many rows, are compute-bound and better served by a
//! blocked f32 GEMM over a widened copy (the caller's choice).

use half::bf16;

use super::matmul::{part_count, part_range, SharedOut};
use super::{QuantError, ThreadPool};

/// Rows of `x` up to which [`bf16_matmul`] is the better path; above, a blocked GEMM reuses
/// each weight from cache across rows.
pub const BF16_GEMV_MAX_ROWS: usize = 8;

/// `y [m, n] = x [m, k] · Wᵀ` with `W [n, k]` row-major bf16; f32 accumulation (rounding order:
/// 16 lanes × 2 accumulators on AVX-512, then a tree sum, so results differ from a serial sum
/// by f32 rounding only). Rows of `W` are split over `pool`.
///
/// Errors: `w.len() != n × k`, `x.len() != m × k` or `y.len() != m × n`
/// ([`QuantError::Length`]); a part panicked ([`QuantError::JobPanicked`]).
pub fn bf16_matmul(
    w: &[bf16],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    for (what, expected, found) in [
        ("weight", n * k, w.len()),
        ("activations", m * k, x.len()),
        ("output", m * n, y.len()),
    ] {
        if expected != found {
            return Err(QuantError::Length {
                what,
                expected,
                found,
            });
        }
    }
    if n == 0 || m == 0 {
        return Ok(());
    }
    // Parts of 16 weight rows (the unit `part_range` splits), sized by bytes read.
    let units = n.div_ceil(16);
    let parts = part_count(w.len() * 2 * m, units, pool.threads());
    let out = SharedOut::new(y, n);
    let avx512 = is_x86_feature_detected_avx512();
    pool.run(parts, |p| {
        let units = part_range(units, parts, p);
        let rows = units.start * 16..(units.end * 16).min(n);
        let mut vals = vec![0f32; rows.len()];
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            for (v, j) in vals.iter_mut().zip(rows.clone()) {
                *v = dot(&w[j * k..(j + 1) * k], xr, avx512);
            }
            // SAFETY: parts cover disjoint row ranges of every output row.
            unsafe { out.write(r, rows.start, &vals) };
        }
    })
}

fn is_x86_feature_detected_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Σ w_i·x_i` in f32.
fn dot(w: &[bf16], x: &[f32], avx512: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: AVX-512F detected by the caller; `w` and `x` have the same length.
        return unsafe { dot_avx512(w, x) };
    }
    let _ = avx512;
    dot_scalar(w, x)
}

/// The portable reference: 16 partial sums in the lane order of the AVX-512 path.
pub(crate) fn dot_scalar(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let whole = w.len() / 32 * 32;
    for (wc, xc) in w[..whole].chunks_exact(32).zip(x[..whole].chunks_exact(32)) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = wc[i].to_f32().mul_add(xc[i], *a);
        }
    }
    let mut s = tree_sum(&acc);
    for (wv, xv) in w[whole..].iter().zip(&x[whole..]) {
        s = wv.to_f32().mul_add(*xv, s);
    }
    s
}

/// `lanes[0..16] + lanes[16..32]`, then pairwise halves: the AVX-512 path's reduction order.
fn tree_sum(lanes: &[f32; 32]) -> f32 {
    let mut v = [0f32; 16];
    for (i, o) in v.iter_mut().enumerate() {
        *o = lanes[i] + lanes[16 + i];
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            v[i] += v[i + width];
        }
    }
    v[0]
}

/// # Safety
/// AVX-512F available; `w.len() == x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(w: &[bf16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let whole = w.len() / 32 * 32;
    let mut a0 = _mm512_setzero_ps();
    let mut a1 = _mm512_setzero_ps();
    let widen = |p: *const half::bf16| {
        // SAFETY: the caller's loop keeps `p..p + 16` inside `w`.
        let v = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    };
    let mut i = 0;
    while i < whole {
        // SAFETY: `i + 32 <= whole <= len` for both slices.
        unsafe {
            a0 = _mm512_fmadd_ps(
                widen(w.as_ptr().add(i)),
                _mm512_loadu_ps(x.as_ptr().add(i)),
                a0,
            );
            a1 = _mm512_fmadd_ps(
                widen(w.as_ptr().add(i + 16)),
                _mm512_loadu_ps(x.as_ptr().add(i + 16)),
                a1,
            );
        }
        i += 32;
    }
    let mut lanes = [0f32; 32];
    // SAFETY: `lanes` has room for two vectors of 16 f32.
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), a0);
        _mm512_storeu_ps(lanes.as_mut_ptr().add(16), a1);
    }
    let mut s = tree_sum(&lanes);
    for (wv, xv) in w[whole..].iter().zip(&x[whole..]) {
        s = wv.to_f32().mul_add(*xv, s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::{random_activations, random_weights, Lcg};

    #[test]
    fn bf16_matmul_matches_a_wide_reference_and_the_scalar_path() {
        let mut rng = Lcg(21);
        for &(n, k, m) in &[(1, 1, 1), (17, 33, 2), (40, 1536, 1), (33, 100, 3)] {
            let w: Vec<bf16> = random_weights(&mut rng, n, k)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let x = random_activations(&mut rng, m, k);
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads).unwrap();
                let mut y = vec![f32::NAN; m * n];
                bf16_matmul(&w, n, k, &x, m, &mut y, &pool).unwrap();
                for r in 0..m {
                    for j in 0..n {
                        let wr = &w[j * k..(j + 1) * k];
                        let xr = &x[r * k..(r + 1) * k];
                        let exact: f64 =
                            wr.iter().zip(xr).map(|(a, b)| a.to_f64() * *b as f64).sum();
                        let mag: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(a, b)| (a.to_f64() * *b as f64).abs())
                            .sum();
                        let got = y[r * n + j];
                        assert!(
                            (got as f64 - exact).abs() <= 1e-6 * mag.max(1e-30) + 1e-30,
                            "[{n}, {k}] × {m}: ({r}, {j}) {got} vs {exact}"
                        );
                        // The SIMD path sums in the scalar reference's order.
                        assert_eq!(got, dot_scalar(wr, xr), "({r}, {j})");
                    }
                }
            }
        }
        let pool = ThreadPool::new(1).unwrap();
        let err = bf16_matmul(&[bf16::ZERO; 3], 2, 2, &[0.0; 2], 1, &mut [0.0; 2], &pool);
        assert!(matches!(err, Err(QuantError::Length { .. })));
    }
}
