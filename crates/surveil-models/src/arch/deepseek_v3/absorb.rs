//! MLA's absorbed products for one decoded token on the CPU: the query through the key half of
//! `kv_b_proj` (`q_lat[h] = W_ukᵀ[h] q_nope[h]`) and the attended latent through its value half
//! (`out[h] = W_uv[h] ctx[h]`), every head at once (DeepSeek-V2, Liu et al. 2024, §2.1.2:
//! "W_UK can be absorbed into W_Q, and W_UV into W_O").
//!
//! Per head these are a vector–matrix and a matrix–vector product over `kv_b_proj`'s rows,
//! which the weights' size makes memory-bound: 16 heads × 256 rows × 512 values a layer for
//! Kimi-VL-A3B. Here the heads are spread over the model's kernel pool and each row is read
//! once, in the weights' storage type (f32, or f16 / bf16 widened a row at a time), where a
//! batched candle matmul ran them on one thread from f32 weights.

use std::sync::Mutex;

use candle_core::{CpuStorage, Storage, Tensor};
use half::{bf16, f16};

use crate::layers::kernels::dot;
use crate::quant::ThreadPool;
use crate::{ModelError, Result};

/// One head-major weight `[heads, rows, cols]` on the host, in its storage type.
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::F32(w) => w.len(),
            Rows::F16(w) => w.len(),
            Rows::Bf16(w) => w.len(),
        }
    }

    /// Values `start..start + dst.len()` as f32 into `dst`, or the f32 slice itself.
    fn row<'s>(&'s self, start: usize, dst: &'s mut [f32]) -> &'s [f32] {
        let end = start + dst.len();
        match *self {
            Rows::F32(w) => &w[start..end],
            Rows::F16(w) => {
                widen_f16(&w[start..end], dst);
                dst
            }
            Rows::Bf16(w) => {
                for (d, s) in dst.iter_mut().zip(&w[start..end]) {
                    *d = s.to_f32();
                }
                dst
            }
        }
    }
}

/// `src` as f32 into `dst` (same length): F16C's `vcvtph2ps` when the CPU has it.
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
        // SAFETY: the features were just checked; the lengths are equal.
        unsafe { widen_f16_f16c(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// [`widen_f16`] with F16C, 8 values at a time.
///
/// # Safety
/// The CPU has AVX and F16C; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    debug_assert_eq!(src.len(), dst.len());
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (si, di) in (&mut s).zip(&mut d) {
        // SAFETY: 8 halves (16 bytes) read, 8 floats written, within the chunks.
        unsafe {
            let h = _mm_loadu_si128(si.as_ptr().cast());
            _mm256_storeu_ps(di.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for (di, si) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *di = si.to_f32();
    }
}

/// The host values of a contiguous CPU tensor of f32, f16 or bf16, borrowed for `f`.
fn with_rows<T>(w: &Tensor, f: impl FnOnce(Rows<'_>) -> Result<T>) -> Result<T> {
    let (storage, layout) = w.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Err(ModelError::Unsupported(
            "absorbed MLA weights must be contiguous".into(),
        ));
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => f(Rows::F32(&v[a..b])),
        Storage::Cpu(CpuStorage::F16(v)) => f(Rows::F16(&v[a..b])),
        Storage::Cpu(CpuStorage::BF16(v)) => f(Rows::Bf16(&v[a..b])),
        _ => Err(ModelError::Unsupported(format!(
            "absorbed MLA weights on the host in f32, f16 or bf16, got {:?} on {:?}",
            w.dtype(),
            w.device()
        ))),
    }
}

/// `w` (a contiguous CPU tensor of f32, f16 or bf16) as f32 of the same shape: f16 widened 8
/// values at a time with F16C ([`widen_f16`]), where candle's `to_dtype` converts one value
/// per call. What a prefill multiplies the cached latent by.
///
/// # Errors
/// `w` not contiguous, not on the CPU, or of another dtype.
pub(super) fn to_f32(w: &Tensor) -> Result<Tensor> {
    let values = with_rows(w, |rows| {
        Ok(match rows {
            Rows::F32(v) => v.to_vec(),
            _ => {
                let mut out = vec![0f32; rows.len()];
                rows.row(0, &mut out);
                out
            }
        })
    })?;
    Ok(Tensor::from_vec(values, w.shape(), w.device())?)
}

/// Checks `x` (`heads × x_width`) and `w` (`heads × rows × cols`) against each other.
fn check(
    x: &[f32],
    w: Rows<'_>,
    heads: usize,
    rows: usize,
    cols: usize,
    x_width: usize,
) -> Result<()> {
    if x.len() != heads * x_width || w.len() != heads * rows * cols {
        return Err(ModelError::InvalidInput(format!(
            "absorbed MLA product: {} inputs for {heads} heads of {x_width}, {} weights for \
             {heads} × {rows} × {cols}",
            x.len(),
            w.len()
        )));
    }
    Ok(())
}

/// Runs `part(h, out_h)` for every head on `pool`, `out_h` head `h`'s `width` outputs.
fn per_head(
    heads: usize,
    width: usize,
    pool: &ThreadPool,
    part: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    let mut out = vec![0f32; heads * width];
    if width == 0 {
        return Ok(out);
    }
    {
        let slots: Vec<Mutex<&mut [f32]>> = out.chunks_mut(width).map(Mutex::new).collect();
        pool.run(heads, |h| {
            // Each head's slot is locked by its own part only.
            let mut o = slots[h]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            part(h, &mut o);
        })?;
    }
    Ok(out)
}

/// `y[h] = x[h] · w[h]` for every head: `x` `heads × rows` f32, `w` `[heads, rows, cols]`
/// (f32, f16 or bf16, contiguous, on the CPU); returns `heads × cols` f32. MLA's
/// `q_nope · W_uk` with `w` the key half of `kv_b_proj` as `[heads, nope, kv_lora_rank]`.
///
/// # Errors
/// Sizes that do not agree; a weight not on the CPU or of another dtype; a panicked part.
pub(super) fn vec_mat_per_head(
    x: &[f32],
    w: &Tensor,
    heads: usize,
    rows: usize,
    cols: usize,
    pool: &ThreadPool,
) -> Result<Vec<f32>> {
    with_rows(w, |w| {
        check(x, w, heads, rows, cols, rows)?;
        per_head(heads, cols, pool, |h, y| {
            let mut buf = vec![0f32; cols];
            for (r, &xr) in x[h * rows..(h + 1) * rows].iter().enumerate() {
                let row = w.row((h * rows + r) * cols, &mut buf);
                for (yi, &wi) in y.iter_mut().zip(row) {
                    *yi += xr * wi;
                }
            }
        })
    })
}

/// `y[h] = w[h] · x[h]` for every head: `x` `heads × cols` f32, `w` `[heads, rows, cols]`
/// (f32, f16 or bf16, contiguous, on the CPU); returns `heads × rows` f32. MLA's `W_uv · ctx`
/// with `w` the value half of `kv_b_proj` as `[heads, v_head_dim, kv_lora_rank]`.
///
/// # Errors
/// As [`vec_mat_per_head`].
pub(super) fn mat_vec_per_head(
    x: &[f32],
    w: &Tensor,
    heads: usize,
    rows: usize,
    cols: usize,
    pool: &ThreadPool,
) -> Result<Vec<f32>> {
    with_rows(w, |w| {
        check(x, w, heads, rows, cols, cols)?;
        per_head(heads, rows, pool, |h, y| {
            let mut buf = vec![0f32; cols];
            let xh = &x[h * cols..(h + 1) * cols];
            for (r, yr) in y.iter_mut().enumerate() {
                let row = w.row((h * rows + r) * cols, &mut buf);
                *yr = dot(row, xh);
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The prefill's widening gives candle's conversion bit for bit, in the same shape, for
    /// each storage type (odd lengths: the F16C loop's tail).
    #[test]
    fn to_f32_matches_candle_conversion() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let w = Tensor::randn(0f32, 3.0, (3, 7, 13), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = to_f32(&w).unwrap();
            assert_eq!(got.dims(), &[3, 7, 13]);
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "{dtype:?}"
            );
        }
    }

    /// Both products against candle's batched matmul, for f32, f16 and bf16 weights, at
    /// Kimi-VL-A3B's shape (16 heads, 128 × 512) and an odd one (3 heads, 7 × 13): equal within
    /// f32 rounding of the sums (the weights are widened exactly).
    #[test]
    fn match_candle_batched_matmul() {
        let dev = Device::Cpu;
        let pool = ThreadPool::new(2).unwrap();
        for (heads, rows, cols) in [(16usize, 128usize, 512usize), (3, 7, 13)] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let w = Tensor::randn(0f32, 1.0, (heads, rows, cols), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let w32 = w.to_dtype(DType::F32).unwrap();
                let q = Tensor::randn(0f32, 1.0, (heads, 1, rows), &dev).unwrap();
                let c = Tensor::randn(0f32, 1.0, (heads, 1, cols), &dev).unwrap();
                let want_q = q.matmul(&w32).unwrap().flatten_all().unwrap();
                let want_o = c
                    .matmul(&w32.transpose(1, 2).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap();
                let qv = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let cv = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got_q = vec_mat_per_head(&qv, &w, heads, rows, cols, &pool).unwrap();
                let got_o = mat_vec_per_head(&cv, &w, heads, rows, cols, &pool).unwrap();
                for (got, want) in [(got_q, want_q), (got_o, want_o)] {
                    let want = want.to_vec1::<f32>().unwrap();
                    assert_eq!(got.len(), want.len());
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-4 * b.abs().max(1.0),
                            "{dtype:?}: {a} {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_sizes_that_do_not_agree() {
        let pool = ThreadPool::new(1).unwrap();
        let w = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(vec_mat_per_head(&[0.0; 5], &w, 2, 3, 4, &pool).is_err());
        assert!(mat_vec_per_head(&[0.0; 8], &w, 2, 4, 3, &pool).is_err());
        let wi = Tensor::zeros((2, 3, 4), DType::U32, &Device::Cpu).unwrap();
        assert!(vec_mat_per_head(&[0.0; 6], &wi, 2, 3, 4, &pool).is_err());
    }
}
