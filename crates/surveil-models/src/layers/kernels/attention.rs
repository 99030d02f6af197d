//! Attention helpers: a scaled row softmax, quick-GELU, GELU's tanh form and exact GELU (in
//! place, for the tiled matmul's epilogue, and as tensor ops) with fused CPU kernels, the packed-image attention of the vision
//! towers (rope, then [`full_attention`]: the fused kernel of `flash.rs` on f32 CPU tensors,
//! chunked softmax attention on candle's matmuls elsewhere).
//!
//! candle's `softmax_last_dim` evaluates `exp` one element at a time through libm; for the
//! vision tower (16 heads × 2268² scores per block, 32 blocks) that alone costs more than all
//! the tower's matmuls. [`scaled_softmax`] computes `softmax(scale · x)` over the last
//! dimension with a polynomial `exp` (relative error ≈ 1e-7, the size of f32 rounding) that the
//! compiler vectorises, using AVX2+FMA when the CPU has it, on all candle threads.
//!
//! The kernels are CPU-only custom ops: [`scaled_softmax`] and [`quick_gelu`] run them for f32
//! CPU tensors ([`super::runs_cpu_kernel`]) and otherwise the candle compositions
//! [`scaled_softmax_composed`] and [`quick_gelu_composed`] (candle-nn's softmax and sigmoid,
//! which have CUDA kernels).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

use super::flash::AttentionPrecision;
use super::{contiguous_f32, runs_cpu_kernel};
use crate::Result;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Coefficients of `2^f` on `[-0.5, 0.5]`, degree 0 to 6 (relative error ≈ 1e-7).
pub(super) const EXP2_POLY: [f32; 7] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// `2^t` for `t` in `[-126, 127]` (callers clamp): `t = n + f`, `2^f` by a degree-6 polynomial
/// on `[-0.5, 0.5]`, `2^n` written into the exponent bits. Branch-free and without
/// float-to-int casts, so loops over it vectorise.
#[inline(always)]
fn exp2_in_range(t: f32) -> f32 {
    // 1.5·2²³ + t rounds t to the nearest integer n, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let r = t + MAGIC;
    let n = r - MAGIC;
    let f = t - n;
    let c = EXP2_POLY;
    let p = c[0] + f * (c[1] + f * (c[2] + f * (c[3] + f * (c[4] + f * (c[5] + f * c[6])))));
    let n_int = r.to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// `2^t` for `t ≤ 0`; exactly 0 below 2⁻¹²⁶ (and for `-inf`).
#[inline(always)]
pub(super) fn exp2_nonpositive(t: f32) -> f32 {
    let v = exp2_in_range(t.max(-126.0));
    if t < -126.0 {
        0.0
    } else {
        v
    }
}

/// `e^x` for any finite `x` (saturating at 2^±126 outside `[-87, 87]`).
#[inline(always)]
fn exp_clamped(x: f32) -> f32 {
    exp2_in_range((x * LOG2_E).clamp(-126.0, 126.0))
}

/// Softmax of `scale · row` in place of `dst`, reading `src` (same length).
#[inline(always)]
pub(super) fn softmax_row(src: &[f32], dst: &mut [f32], scale: f32) {
    const L: usize = 8;
    let mut m = [f32::NEG_INFINITY; L];
    let chunks = src.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            m[i] = m[i].max(c[i]);
        }
    }
    let mut max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in tail {
        max = max.max(x);
    }
    if max == f32::NEG_INFINITY {
        // Fully masked row: no key is visible; return zeros rather than NaN.
        dst.iter_mut().for_each(|d| *d = 0.0);
        return;
    }
    let k = scale * LOG2_E;
    let mut s = [0f32; L];
    let n = src.len() / L * L;
    for (sc, dc) in src[..n].chunks_exact(L).zip(dst[..n].chunks_exact_mut(L)) {
        for i in 0..L {
            let e = exp2_nonpositive((sc[i] - max) * k);
            dc[i] = e;
            s[i] += e;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for (x, d) in src[n..].iter().zip(dst[n..].iter_mut()) {
        let e = exp2_nonpositive((x - max) * k);
        *d = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    dst.iter_mut().for_each(|d| *d *= inv);
}

/// [`softmax_row`] in 16-lane AVX-512 vectors (a masked load and store for the tail): the
/// same exp2 polynomial and clamps, written with intrinsics because the compiler keeps the
/// portable loop scalar inside AVX-512 functions. Equal to [`softmax_row`] up to the order of
/// the additions in the sum.
///
/// # Safety
/// AVX-512F available; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_row_avx512(src: &[f32], dst: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    debug_assert_eq!(src.len(), dst.len());
    let len = src.len().min(dst.len());
    let mask = |at: usize| -> __mmask16 {
        let left = len - at;
        if left >= 16 {
            0xFFFF
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    };
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    for at in (0..len).step_by(16) {
        // SAFETY: the mask covers only `at..len`.
        let x = unsafe { _mm512_mask_loadu_ps(vmax, mask(at), sp.add(at)) };
        vmax = _mm512_max_ps(vmax, x);
    }
    let max = _mm512_reduce_max_ps(vmax);
    if max == f32::NEG_INFINITY {
        // Fully masked row: no key is visible; zeros rather than NaN.
        dst.iter_mut().for_each(|d| *d = 0.0);
        return;
    }
    let k = _mm512_set1_ps(scale * LOG2_E);
    let vmax = _mm512_set1_ps(max);
    let magic = _mm512_set1_ps(12_582_912.0);
    let floor = _mm512_set1_ps(-126.0);
    let c = EXP2_POLY.map(|v| _mm512_set1_ps(v));
    let mut sum = _mm512_setzero_ps();
    for at in (0..len).step_by(16) {
        let mk = mask(at);
        // SAFETY: the mask covers only `at..len`.
        let x = unsafe { _mm512_maskz_loadu_ps(mk, sp.add(at)) };
        let t = _mm512_mul_ps(_mm512_sub_ps(x, vmax), k);
        let tc = _mm512_max_ps(t, floor);
        let r = _mm512_add_ps(tc, magic);
        let n = _mm512_sub_ps(r, magic);
        let f = _mm512_sub_ps(tc, n);
        let mut p = c[6];
        for &ci in c[..6].iter().rev() {
            p = _mm512_fmadd_ps(p, f, ci);
        }
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_sub_epi32(_mm512_castps_si512(r), _mm512_castps_si512(magic)),
            _mm512_set1_epi32(127),
        ));
        let e = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
        // Exactly 0 below 2⁻¹²⁶ (and for -inf), and in the lanes past the end; a NaN `t` (a
        // +inf score against a +inf maximum) is kept at 2⁻¹²⁶, as the portable row keeps it.
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(t, floor) & mk;
        let e = _mm512_maskz_mov_ps(keep, e);
        sum = _mm512_add_ps(sum, e);
        // SAFETY: the mask covers only `at..len`.
        unsafe { _mm512_mask_storeu_ps(dp.add(at), mk, e) };
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for at in (0..len).step_by(16) {
        let mk = mask(at);
        // SAFETY: the mask covers only `at..len`.
        unsafe {
            let e = _mm512_maskz_loadu_ps(mk, dp.add(at));
            _mm512_mask_storeu_ps(dp.add(at), mk, _mm512_mul_ps(e, inv));
        }
    }
}

fn softmax_rows_portable(src: &[f32], dst: &mut [f32], width: usize, scale: f32) {
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        softmax_row(s, d, scale);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(src: &[f32], dst: &mut [f32], width: usize, scale: f32) {
    // Same code, compiled with 256-bit vectors.
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
        softmax_row(s, d, scale);
    }
}

fn softmax_rows(src: &[f32], dst: &mut [f32], width: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { softmax_rows_avx2(src, dst, width, scale) };
            return;
        }
    }
    softmax_rows_portable(src, dst, width, scale)
}

struct ScaledSoftmax {
    scale: f32,
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "qwen2-vl-scaled-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = op_input(self.name(), storage, layout)?;
        let width = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        let dst = parallel_map(src, width, |s, d| softmax_rows(s, d, width, scale));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `softmax(scale · x)` over the last dimension of `x` (any shape, `scale > 0`), in `x`'s
/// dtype and on its device. Rows that are entirely `-inf` (every key masked) give zeros, not
/// NaN.
///
/// f32 on the CPU runs the fused kernel (a non-contiguous `x` is copied first); any other
/// device or dtype runs [`scaled_softmax_composed`].
pub(crate) fn scaled_softmax(x: &Tensor, scale: f32) -> Result<Tensor> {
    if !runs_cpu_kernel(x) {
        return scaled_softmax_composed(x, scale);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    Ok(x.apply_op1_no_bwd(&ScaledSoftmax { scale })?)
}

/// [`scaled_softmax`] of scores that hold no `-inf` (attention without a mask: a decode step,
/// a vision tower): the composition off the f32 CPU path leaves out the fully-masked-row guard
/// of [`scaled_softmax_composed`], three kernels and a fill per call on a GPU. Finite inputs
/// give the same values as [`scaled_softmax`].
pub(crate) fn scaled_softmax_unmasked(x: &Tensor, scale: f32) -> Result<Tensor> {
    if runs_cpu_kernel(x) {
        return scaled_softmax(x, scale);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&x.affine(f64::from(scale), 0.0)?)?;
    Ok(probs.to_dtype(dtype)?)
}

/// [`scaled_softmax`] as candle ops, for any device and float dtype: candle-nn's
/// `softmax_last_dim` of `scale · x`, then rows whose maximum is `-inf` (where that softmax
/// gives `0/0 = NaN`) set to zeros as the kernel does. Matches the kernel within 1e-6 on f32
/// (the kernel's polynomial `exp` against libm's or CUDA's). f16 and bf16 scores are widened
/// to f32 for the softmax and the probabilities rounded back, as the reference
/// implementations' eager attention does (`softmax(..., dtype=torch.float32)`).
pub(crate) fn scaled_softmax_composed(x: &Tensor, scale: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = &x.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&x.affine(f64::from(scale), 0.0)?)?;
    // Fully masked rows: a per-row flag, broadcast over the row, selects zeros there.
    let live = x
        .max_keepdim(D::Minus1)?
        .ne(f64::NEG_INFINITY)?
        .broadcast_as(probs.shape())?;
    let zeros = Tensor::zeros((), probs.dtype(), probs.device())?.broadcast_as(probs.shape())?;
    Ok(live.where_cond(&probs, &zeros)?.to_dtype(dtype)?)
}

/// Quick GELU `x · sigmoid(1.702 x)` in one pass.
#[inline(always)]
fn quick_gelu_slice(src: &[f32], dst: &mut [f32]) {
    for (x, d) in src.iter().zip(dst.iter_mut()) {
        *d = x / (1.0 + exp_clamped(-1.702 * x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quick_gelu_avx2(src: &[f32], dst: &mut [f32]) {
    quick_gelu_slice(src, dst)
}

fn quick_gelu_any(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { quick_gelu_avx2(src, dst) };
            return;
        }
    }
    quick_gelu_slice(src, dst)
}

/// Split `src` into contiguous pieces (multiples of `unit` values) processed on candle's thread
/// count with `f(src_piece, dst_piece)`.
fn parallel_map(src: &[f32], unit: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    let units = src.len() / unit.max(1);
    let threads = candle_core::utils::get_num_threads().clamp(1, units.max(1));
    if threads <= 1 || src.len() < 1 << 15 {
        f(src, &mut dst);
    } else {
        let per = units.div_ceil(threads) * unit;
        let f = &f;
        std::thread::scope(|scope| {
            for (s, d) in src.chunks(per).zip(dst.chunks_mut(per)) {
                scope.spawn(move || f(s, d));
            }
        });
    }
    dst
}

/// SwiGLU's inner activation in place of the gate: `g ← silu(g) · u = g / (1 + e^−g) · u`
/// (`g` and `u` the same length), on up to candle's thread count for large slices.
pub(crate) fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gate and up outputs differ in length");
    let threads = candle_core::utils::get_num_threads().clamp(1, g.len().max(1));
    if threads <= 1 || g.len() < super::PARALLEL_MIN_ELEMS {
        swiglu_any(g, u);
        return;
    }
    let per = g.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = g.chunks_mut(per).zip(u.chunks(per));
        let first = parts.next();
        for (gp, up) in parts {
            scope.spawn(move || swiglu_any(gp, up));
        }
        if let Some((gp, up)) = first {
            swiglu_any(gp, up);
        }
    });
}

#[inline(always)]
fn swiglu_slice(g: &mut [f32], u: &[f32]) {
    for (x, &v) in g.iter_mut().zip(u) {
        *x = *x / (1.0 + exp_clamped(-*x)) * v;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(g: &mut [f32], u: &[f32]) {
    swiglu_slice(g, u)
}

fn swiglu_any(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { swiglu_avx2(g, u) };
            return;
        }
    }
    swiglu_slice(g, u)
}

/// `√(2/π)`, GELU's tanh-form constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn gate_slice<const TANH: bool>(y: &mut [f32]) {
    for x in y.iter_mut() {
        let g = if TANH {
            2.0 * SQRT_2_OVER_PI * (*x + 0.044_715 * *x * *x * *x)
        } else {
            1.702 * *x
        };
        *x /= 1.0 + exp_clamped(-g);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gate_avx2<const TANH: bool>(y: &mut [f32]) {
    gate_slice::<TANH>(y)
}

/// `x · sigmoid(g(x))` in place, where `g` is `1.702 x` (quick GELU) or, for GELU's tanh
/// form, `2·√(2/π)·(x + 0.044715 x³)` (`0.5 x (1 + tanh(u)) = x · sigmoid(2u)`), on the calling
/// thread.
pub(super) fn gate_any<const TANH: bool>(y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { gate_avx2::<TANH>(y) };
            return;
        }
    }
    gate_slice::<TANH>(y)
}

/// `e^x` for f32 by range reduction to `2^n · e^g`, |g| ≤ ln2/2, and a degree-7 Taylor
/// polynomial: relative error ~1e-7 (f32 rounding), branch-free so loops vectorise.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cody–Waite) so that `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let g = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + g * (1.0
            + g * (1.0 / 2.0
                + g * (1.0 / 6.0
                    + g * (1.0 / 24.0
                        + g * (1.0 / 120.0 + g * (1.0 / 720.0 + g * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `erf` by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
#[inline(always)]
fn erf_f32(z: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_f32(-a * a);
    y.copysign(z)
}

#[inline(always)]
fn gelu_erf_slice(y: &mut [f32]) {
    for x in y.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf_f32(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_avx2(y: &mut [f32]) {
    gelu_erf_slice(y)
}

/// Exact (erf) GELU in place, `0.5 x (1 + erf(x / √2))` (PyTorch's `gelu`, BERT's and GIT's
/// decoder activation), on the calling thread. Within 5e-7 of the f64 formula for |x| ≤ 20
/// (the `erf` of Abramowitz & Stegun 7.1.26 and a polynomial `exp`).
pub(crate) fn gelu_erf_in_place(y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { gelu_erf_avx2(y) };
            return;
        }
    }
    gelu_erf_slice(y)
}

/// The input of an elementwise op: a contiguous f32 CPU tensor's values, or an error naming
/// the op.
fn op_input<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    contiguous_f32(storage, layout).map_err(|e| candle_core::Error::Msg(format!("{op}: {e}")))
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "qwen2-vl-quick-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = op_input(self.name(), storage, layout)?;
        let dst = parallel_map(src, 1, quick_gelu_any);
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `x · sigmoid(1.702 x)` (the vision MLP activation), elementwise, in `x`'s dtype and on its
/// device.
///
/// f32 on the CPU runs the fused kernel (a non-contiguous `x` is copied first); any other
/// device or dtype runs [`quick_gelu_composed`].
pub(crate) fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if !runs_cpu_kernel(x) {
        return quick_gelu_composed(x);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    Ok(x.apply_op1_no_bwd(&QuickGelu)?)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = op_input(self.name(), storage, layout)?;
        let dst = parallel_map(src, 1, |s, d| {
            d.copy_from_slice(s);
            gelu_erf_in_place(d);
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Exact GELU `0.5 x (1 + erf(x / √2))`, elementwise, in `x`'s dtype and on its device: f32 on
/// the CPU runs the kernel of [`gelu_erf_in_place`] (a non-contiguous `x` is copied first);
/// anything else candle's `gelu_erf`.
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !runs_cpu_kernel(x) {
        return Ok(x.gelu_erf()?);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    Ok(x.apply_op1_no_bwd(&GeluErf)?)
}

/// [`quick_gelu`] as candle ops, for any device and float dtype: `x · sigmoid(1.702 x)` with
/// candle-nn's `sigmoid`. Matches the kernel within 1e-5 on f32 for |x| up to ~20 (a few f32
/// steps: the kernel's polynomial `exp`).
pub(crate) fn quick_gelu_composed(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?)?)
}

/// How the rotary embedding pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeLayout {
    /// First half with second half (`rotate_half`, Qwen2-VL's vision tower).
    Halves,
    /// Consecutive pairs `(x[2j], x[2j+1])` (MoonViT).
    Interleaved,
}

/// Self-attention of packed images: `qkv` `(n, 3·H·d)` for `n` patches of several images,
/// rotary embedding `cos`/`sin` `(n, d/2)`, and attention restricted to each `(start, len)`
/// segment, in the arithmetic `precision` allows ([`full_attention`]). Returns `(n, H·d)`.
pub(crate) fn packed_rope_attention(
    qkv: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    rope: RopeLayout,
    segments: &[(usize, usize)],
    precision: AttentionPrecision,
) -> Result<Tensor> {
    let (n, width) = qkv.dims2()?;
    let d = width / (3 * heads);
    let qkv = qkv.reshape((n, 3, heads, d))?;
    // (n, H, d) -> (1, H, n, d), contiguous for the rope kernel.
    let split = |i: usize| -> Result<Tensor> {
        Ok(qkv
            .narrow(1, i, 1)?
            .squeeze(1)?
            .transpose(0, 1)?
            .contiguous()?
            .unsqueeze(0)?)
    };
    let apply_rope = |t: Tensor| -> Result<Tensor> {
        Ok(match rope {
            RopeLayout::Halves => candle_nn::rotary_emb::rope(&t, cos, sin)?,
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&t, cos, sin)?,
        })
    };
    let q = apply_rope(split(0)?)?;
    let k = apply_rope(split(1)?)?;
    let v = split(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let mut parts = Vec::with_capacity(segments.len());
    for &(start, len) in segments {
        parts.push(full_attention(
            &q.narrow(2, start, len)?.contiguous()?,
            &k.narrow(2, start, len)?.contiguous()?,
            &v.narrow(2, start, len)?.contiguous()?,
            scale,
            precision,
        )?);
    }
    let attn = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(&parts, 2)?
    };
    // (1, H, n, d) -> (n, H·d)
    Ok(attn
        .squeeze(0)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, heads * d))?)
}

/// Largest attention-score block materialised at once by [`full_attention_composed`] (bytes);
/// queries are processed in row chunks so that the `(heads, rows, keys)` score matrix stays
/// under this size.
const SCORE_BLOCK_BYTES: usize = 16 << 20;

/// Unmasked softmax attention of `q` `(1, H, n, d)` against `k`, `v` `(1, H, m, d)`.
///
/// f32 on the CPU runs the fused kernel [`super::flash::flash_attention_with`] (no score
/// matrix in memory) on the fastest path for `precision`; any other device or dtype runs
/// [`full_attention_composed`].
pub(crate) fn full_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    precision: AttentionPrecision,
) -> Result<Tensor> {
    if runs_cpu_kernel(q) && k.dim(2)? > 0 {
        return super::flash::flash_attention_with(
            q,
            k,
            v,
            scale as f32,
            super::flash::KeyMask::All,
            super::flash::FlashPath::best_for(precision),
        );
    }
    full_attention_composed(q, k, v, scale)
}

/// Unmasked softmax attention as candle ops, for any device and dtype: `q` `(1, H, n, d)`
/// against `k`, `v` `(1, H, m, d)`, returns `(1, H, n, d)`. `Q Kᵀ` by candle's matmul, the
/// scaled softmax (the polynomial-`exp` kernel on f32 CPU tensors, candle-nn's elsewhere), then
/// `P V`, in query row chunks that bound the score matrix to 16 MB. What the fused
/// [`super::flash_attention`] replaces on the CPU, and what runs on other devices.
///
/// # Errors
/// Shapes that do not multiply; candle's errors.
pub fn full_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, heads, n, _) = q.dims4()?;
    let m = k.dim(2)?;
    let kt = k.t()?;
    let rows = (SCORE_BLOCK_BYTES / (4 * heads * m.max(1))).clamp(1, n.max(1));
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let qc = q.narrow(2, start, len)?;
        let probs = scaled_softmax_unmasked(&qc.matmul(&kt)?, scale as f32)?;
        outs.push(probs.matmul(v)?);
        start += len;
    }
    Ok(if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 2)?
    })
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use candle_core::{DType, Device};

    /// Reference erf in f64 (candle's port of the Boost/Cephes implementation).
    fn erf(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
    }

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let (mut worst_exp, mut worst_erf) = (0f64, 0f64);
        for i in -4000..4000 {
            let x = i as f32 * 0.005;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((exp_f32(x) as f64 - e) / e).abs());
            worst_erf = worst_erf.max((erf_f32(x) as f64 - erf(x as f64)).abs());
        }
        // f32 carries ~6e-8 relative; A&S 7.1.26 is within 1.5e-7 before f32 rounding.
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
        assert!(worst_erf < 4e-7, "erf absolute error {worst_erf:e}");
    }

    #[test]
    fn exp2_is_accurate_to_f32_rounding() {
        let mut worst = 0f64;
        let mut t = -125.0f32;
        while t <= 0.0 {
            let ours = exp2_nonpositive(t) as f64;
            let exact = (t as f64).exp2();
            worst = worst.max((ours - exact).abs() / exact);
            t += 0.001_37;
        }
        assert!(worst < 3e-7, "{worst}");
        assert_eq!(exp2_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2_nonpositive(-200.0), 0.0);
    }

    /// The kernel against the composition that runs off the CPU (the formula in candle ops),
    /// contiguous and transposed. Measured: up to 7.2e-7 over N(0, 4²).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_softmax_row_matches_the_portable_row() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the AVX-512 softmax is not exercised");
            return;
        }
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
        };
        for len in [1usize, 7, 15, 16, 17, 33, 647, 1000] {
            let mut src: Vec<f32> = (0..len).map(|_| next()).collect();
            if len > 3 {
                src[1] = f32::NEG_INFINITY;
                src[2] = -1e9;
            }
            if len > 17 {
                // Two +inf scores: the portable row spreads the weight over them.
                src[5] = f32::INFINITY;
                src[len - 1] = f32::INFINITY;
            }
            for scale in [0.088f32, 1.0, 30.0] {
                let (mut want, mut got) = (vec![0f32; len], vec![f32::NAN; len]);
                softmax_row(&src, &mut want, scale);
                // SAFETY: AVX-512F checked above; equal lengths.
                unsafe { softmax_row_avx512(&src, &mut got, scale) };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g == w || (g - w).abs() <= 1e-6 * w.abs().max(1e-30) + 1e-9,
                        "len {len} scale {scale} at {i}: {g} vs {w}"
                    );
                }
            }
        }
        let src = [f32::NEG_INFINITY; 20];
        let mut got = [1f32; 20];
        // SAFETY: as above.
        unsafe { softmax_row_avx512(&src, &mut got, 1.0) };
        assert_eq!(got, [0f32; 20]);
    }

    #[test]
    fn quick_gelu_matches_the_formula() {
        let x = Tensor::randn(0f32, 4.0, (7, 1000), &Device::Cpu).unwrap();
        let d = max_abs_diff(&quick_gelu(&x).unwrap(), &quick_gelu_composed(&x).unwrap());
        assert!(d < 1e-5, "{d}");
        let xt = x.t().unwrap();
        let d = max_abs_diff(
            &quick_gelu(&xt).unwrap(),
            &quick_gelu_composed(&xt).unwrap(),
        );
        assert!(d < 1e-5, "transposed: {d}");
        let big = Tensor::new(&[-200f32, -90.0, 0.0, 90.0, 200.0], &Device::Cpu).unwrap();
        let v: Vec<f32> = quick_gelu(&big).unwrap().to_vec1().unwrap();
        let d = max_abs_diff(
            &quick_gelu(&big).unwrap(),
            &quick_gelu_composed(&big).unwrap(),
        );
        assert!(d < 1e-5, "saturated: {d}");
        assert!(v[0].abs() < 1e-30, "{v:?}");
        assert_eq!(v[2], 0.0);
        assert!(
            (v[4] - 200.0).abs() < 1e-3 && v.iter().all(|x| x.is_finite()),
            "{v:?}"
        );
    }

    /// Against candle's `silu(g) * u`, on one thread and split over threads (40 000 values),
    /// with saturated gates.
    #[test]
    fn swiglu_matches_candle_silu_times_up() {
        let mut rng = crate::quant::test_data::Lcg(0x2545_F491);
        let mut next = move || 16.0 * rng.uniform() - 8.0;
        for len in [7, 40_000] {
            let mut g: Vec<f32> = (0..len).map(|_| next()).collect();
            let u: Vec<f32> = (0..len).map(|_| next()).collect();
            g[0] = -200.0;
            g[len - 1] = 200.0;
            let gt = Tensor::from_vec(g.clone(), len, &Device::Cpu).unwrap();
            let ut = Tensor::from_vec(u.clone(), len, &Device::Cpu).unwrap();
            let want = (candle_nn::ops::silu(&gt).unwrap() * ut).unwrap();
            swiglu_in_place(&mut g, &u);
            let got = Tensor::from_vec(g.clone(), len, &Device::Cpu).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-5, "len {len}: {d}");
            assert!(g.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn matches_candle_softmax_with_masks() {
        let x = Tensor::randn(0f32, 3.0, (3, 5, 37), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..37)
            .map(|j| if j > 20 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let x = x
            .broadcast_add(&Tensor::new(mask.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
        let ours = scaled_softmax(&x, 0.7).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&(x * 0.7).unwrap()).unwrap();
        let d = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }

    /// The composition that runs off the CPU gives what the kernel gives, on the same input:
    /// rows with some keys masked, rows with every key masked (zeros from both, not NaN), and a
    /// non-contiguous input. Measured: up to 1.8e-7 (f32 rounding of the two `exp`s).
    #[test]
    fn composed_softmax_matches_the_kernel() {
        let dev = Device::Cpu;
        let (rows, keys) = (9, 300);
        let x = Tensor::randn(0f32, 3.0, (2, 4, rows, keys), &dev).unwrap();
        // Row i sees keys 0..=30·i (causal-like); rows 7 and 8 see no key at all.
        let mask: Vec<f32> = (0..rows)
            .flat_map(|i| {
                (0..keys).map(move |j| {
                    if i >= 7 || j > 30 * i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, keys), &dev).unwrap();
        let x = x.broadcast_add(&mask).unwrap();
        for scale in [0.125f32, 0.7, 1.0] {
            let kernel = scaled_softmax(&x, scale).unwrap();
            let composed = scaled_softmax_composed(&x, scale).unwrap();
            let d = max_abs_diff(&kernel, &composed);
            assert!(d < 1e-6, "scale {scale}: {d}");
            let masked = composed.narrow(2, 7, 2).unwrap();
            assert_eq!(max_abs_diff(&masked, &masked.zeros_like().unwrap()), 0.0);
            let sums = composed.narrow(2, 0, 7).unwrap().sum(3).unwrap();
            assert!(max_abs_diff(&sums, &sums.ones_like().unwrap()) < 1e-5);
        }
        // A transposed (non-contiguous) input: the kernel copies it, the composition does not.
        let xt = x.transpose(2, 3).unwrap();
        let d = max_abs_diff(
            &scaled_softmax(&xt, 0.7).unwrap(),
            &scaled_softmax_composed(&xt, 0.7).unwrap(),
        );
        assert!(d < 1e-6, "transposed: {d}");
    }

    /// Off the CPU kernel's dtype (bf16 here, on the CPU) the dispatch takes the composition,
    /// which keeps the dtype and tracks the f32 kernel to bf16 precision. Measured: softmax
    /// 3.9e-3 (the scores and probabilities rounded to bf16; it sums in f32; candle's bf16
    /// softmax alone, summing in bf16, was 1.2e-2), quick-GELU 0.3 % of max |y|.
    #[test]
    fn other_dtypes_take_the_composition() {
        // Fixed inputs (seeded, roughly N(0, 3²)), so that the bf16 bounds below hold for the
        // data they were measured on.
        let mut rng = crate::quant::test_data::Lcg(5);
        let values: Vec<f32> = (0..3 * 5 * 37).map(|_| 3.0 * rng.normal()).collect();
        let x = Tensor::from_vec(values, (3, 5, 37), &Device::Cpu).unwrap();
        let xb = x.to_dtype(DType::BF16).unwrap();
        let soft = scaled_softmax(&xb, 0.7).unwrap();
        assert_eq!(soft.dtype(), DType::BF16);
        let d = max_abs_diff(&soft, &scaled_softmax(&x, 0.7).unwrap());
        assert!(d < 1e-2, "softmax bf16: {d}");
        // Without a mask the guard is left out; finite scores give the same values.
        for t in [&xb, &x.to_dtype(DType::F16).unwrap()] {
            let unmasked = scaled_softmax_unmasked(t, 0.7).unwrap();
            assert_eq!(unmasked.dtype(), t.dtype());
            let guarded = scaled_softmax_composed(t, 0.7).unwrap();
            assert_eq!(max_abs_diff(&unmasked, &guarded), 0.0, "{:?}", t.dtype());
        }
        let gelu = quick_gelu(&xb).unwrap();
        assert_eq!(gelu.dtype(), DType::BF16);
        let y = quick_gelu(&x).unwrap();
        // The input and the output each round by up to 2⁻⁸ relative.
        let (d, scale) = (
            max_abs_diff(&gelu, &y),
            max_abs_diff(&y, &y.zeros_like().unwrap()),
        );
        assert!(d < 1e-2 * scale, "quick gelu bf16: {d} (max |y| {scale})");
    }
}
