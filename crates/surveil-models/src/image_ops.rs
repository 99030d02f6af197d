//! Image resizing and normalisation shared by the image processors.
//!
//! [`resize_bicubic_u8`] reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB images bit
//! for bit: the separable bicubic convolution (a = −0.5) whose support is stretched by the
//! downscale factor (antialias), the horizontal pass first, and Pillow's fixed-point arithmetic
//! (`ImagingResample`, 22 fractional bits) with the intermediate image rounded and clamped to
//! `u8`. The transformers image processors (CLIP, Qwen2-VL) resize with Pillow, so this is what
//! their reference outputs were computed with.
//!
//! Not here: model-specific size rules (shortest edge, `smart_resize`), patchify.

use image::RgbImage;

use crate::{ModelError, Result};

/// OpenAI CLIP channel means (RGB), as used by CLIP, GIT and Qwen2-VL processors.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP channel standard deviations (RGB).
// The digits are the published constants as processor configs write them.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Fractional bits of Pillow's fixed-point resampling coefficients (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Support (half width) of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Pillow's bicubic kernel with a = −0.5.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of one resampling pass (Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc`).
struct PassCoeffs {
    /// Taps per output sample (some trailing ones may be unused).
    ksize: usize,
    /// Per output sample: first input index and number of taps used.
    bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` coefficients scaled by `2^PRECISION_BITS`.
    taps: Vec<i32>,
}

impl PassCoeffs {
    fn new(in_size: usize, out_size: usize) -> Self {
        // Pillow keeps the box in `float`; for whole-image boxes the values are exact integers.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut taps = vec![0i32; out_size * ksize];
        let mut weights = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's `(int)` truncates toward zero; Rust's `as` does the same.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, w) in weights.iter_mut().enumerate().take(count) {
                *w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
                total += *w;
            }
            let row = &mut taps[xx * ksize..(xx + 1) * ksize];
            for (tap, &w) in row.iter_mut().zip(&weights).take(count) {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *tap = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((xmin, count));
        }
        Self {
            ksize,
            bounds,
            taps,
        }
    }

    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[out_index];
        let row = &self.taps[out_index * self.ksize..out_index * self.ksize + count];
        (start, row)
    }
}

/// Pillow's `clip8`: drop the fractional bits and clamp to `0..=255`.
#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Rounding offset every accumulator starts from (one half in fixed point).
const ROUND_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resize an 8-bit RGB image to `width × height` exactly like Pillow's
/// `Image.resize((width, height), Image.BICUBIC)`.
///
/// Separable bicubic (a = −0.5); when shrinking, the kernel is stretched by the downscale factor
/// (antialias). The horizontal pass runs first and its result is rounded and clamped to `u8`
/// before the vertical pass, with Pillow's 22-bit fixed-point coefficients, so the output is
/// bit-identical to Pillow's.
pub fn resize_bicubic_u8(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    if in_w == 0 || in_h == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot resize an empty image ({in_w}x{in_h})"
        )));
    }
    if width == 0 || height == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot resize to an empty size ({width}x{height})"
        )));
    }
    let (out_w, out_h) = (width as usize, height as usize);
    let horiz = PassCoeffs::new(in_w, out_w);
    let vert = PassCoeffs::new(in_h, out_h);
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;

    // Rows of the source the vertical pass reads: only those go through the horizontal pass.
    let first_row = vert.bounds.first().map_or(0, |b| b.0);
    let last_row = vert.bounds.last().map_or(in_h, |b| b.0 + b.1);
    let src_raw = src.as_raw();

    // Horizontal pass into an intermediate u8 image of `out_w × (last_row - first_row)`.
    let (mid, mid_w, row_offset) = if need_horizontal {
        let rows = last_row - first_row;
        let mut mid = vec![0u8; out_w * rows * 3];
        for r in 0..rows {
            let src_row = &src_raw[(first_row + r) * in_w * 3..(first_row + r + 1) * in_w * 3];
            let dst_row = &mut mid[r * out_w * 3..(r + 1) * out_w * 3];
            for xx in 0..out_w {
                let (start, taps) = horiz.taps(xx);
                let mut acc = [ROUND_HALF; 3];
                for (i, &k) in taps.iter().enumerate() {
                    let px = &src_row[(start + i) * 3..(start + i) * 3 + 3];
                    acc[0] += i32::from(px[0]) * k;
                    acc[1] += i32::from(px[1]) * k;
                    acc[2] += i32::from(px[2]) * k;
                }
                dst_row[xx * 3] = clip8(acc[0]);
                dst_row[xx * 3 + 1] = clip8(acc[1]);
                dst_row[xx * 3 + 2] = clip8(acc[2]);
            }
        }
        (mid, out_w, first_row)
    } else {
        (src_raw.clone(), in_w, 0)
    };

    let out = if need_vertical {
        let mut out = vec![0u8; out_w * out_h * 3];
        let stride = mid_w * 3;
        for yy in 0..out_h {
            let (start, taps) = vert.taps(yy);
            let start = start - row_offset;
            let dst_row = &mut out[yy * stride..(yy + 1) * stride];
            for (c, dst) in dst_row.iter_mut().enumerate() {
                let mut acc = ROUND_HALF;
                for (i, &k) in taps.iter().enumerate() {
                    acc += i32::from(mid[(start + i) * stride + c]) * k;
                }
                *dst = clip8(acc);
            }
        }
        out
    } else if need_horizontal {
        // Only the rows the (skipped) vertical pass would read were resampled: all of them.
        mid
    } else {
        src_raw.clone()
    };

    RgbImage::from_raw(width, height, out).ok_or_else(|| {
        ModelError::InvalidInput(format!("resized buffer does not fit {width}x{height}"))
    })
}

/// Crop the centre `width × height` window, with Hugging Face's offsets:
/// `top = (H - height) / 2`, `left = (W - width) / 2` (integer division).
pub fn center_crop_u8(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width > src.width() || height > src.height() || width == 0 || height == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot crop {width}x{height} out of a {}x{} image",
            src.width(),
            src.height()
        )));
    }
    let top = (src.height() - height) / 2;
    let left = (src.width() - width) / 2;
    Ok(image::imageops::crop_imm(src, left, top, width, height).to_image())
}

/// Rescale by 1/255 and normalise `(x − mean) / std` per channel, in channel-first (CHW)
/// order: `3 × H × W` values.
///
/// Matches the transformers processors: the rescale is computed in f64 and stored as f32, the
/// normalisation in f32.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = (f64::from(px[c]) * (1.0 / 255.0)) as f32;
            out[c * plane + i] = (x - mean[c]) / std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn same_size_is_identity() {
        let img = gradient(17, 9);
        let out = resize_bicubic_u8(&img, 17, 9).unwrap();
        assert_eq!(out.as_raw(), img.as_raw());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 3, 255]));
        for (w, h) in [(11, 7), (80, 50), (37, 5), (4, 23)] {
            let out = resize_bicubic_u8(&img, w, h).unwrap();
            assert!(out.pixels().all(|p| p.0 == [200, 3, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(768, 298), (576, 224), (40, 298), (7, 7)] {
            let c = PassCoeffs::new(i, o);
            for xx in 0..o {
                let (_, taps) = c.taps(xx);
                let sum: i32 = taps.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= taps.len() as i32,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn downscale_is_antialiased() {
        // Alternating columns 0/255: a 4x downscale must average them to mid grey, which a
        // plain 4-tap bicubic (no antialias) does not do.
        let img = RgbImage::from_fn(64, 4, |x, _| {
            let v = if x % 2 == 0 { 0 } else { 255 };
            image::Rgb([v, v, v])
        });
        let out = resize_bicubic_u8(&img, 16, 4).unwrap();
        for p in out.pixels().skip(2).take(12) {
            assert!((i32::from(p.0[0]) - 128).abs() <= 2, "{:?}", p.0);
        }
    }

    #[test]
    fn rejects_empty_sizes() {
        let img = gradient(4, 4);
        assert!(resize_bicubic_u8(&img, 0, 4).is_err());
        assert!(resize_bicubic_u8(&RgbImage::new(0, 3), 4, 4).is_err());
        assert!(center_crop_u8(&img, 5, 4).is_err());
    }

    #[test]
    fn crop_takes_hf_offsets() {
        let img = gradient(9, 6);
        let out = center_crop_u8(&img, 4, 3).unwrap();
        // left = (9-4)/2 = 2, top = (6-3)/2 = 1
        assert_eq!(out.get_pixel(0, 0), img.get_pixel(2, 1));
    }

    #[test]
    fn normalize_is_chw() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 0, 51]));
        let v = normalize_chw(&img, [0.5; 3], [0.5; 3]);
        assert_eq!(v.len(), 6);
        assert_eq!(&v[0..2], &[-1.0, 1.0]);
        assert_eq!(&v[2..4], &[-1.0, -1.0]);
        assert!((v[4] - (-0.6)).abs() < 1e-6);
    }
}
