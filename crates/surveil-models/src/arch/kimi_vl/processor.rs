//! The Kimi-VL image processor (`pad_input = true` branch): shrink to the token limit with
//! Pillow-exact bicubic, pad right/bottom with black to multiples of `merge × patch` pixels,
//! rescale + normalise, and cut into `(3, 14, 14)` patches in row-major grid order.
//!
//! The Hub processor code was not available; this follows the reconstruction the parity
//! fixtures were made with (see `shared/fixtures/kimi_vl/README.md`). The `pad_input = false`
//! (centre-crop) branch is not implemented.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::vision::GridHw;
use crate::image_ops::{normalize_chw, resize_bicubic_u8};
use crate::{ModelError, Result};

/// Settings of the Kimi-VL image processor (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct KimiVlImageProcessor {
    /// Patch side in pixels (14).
    pub patch_size: usize,
    /// Largest number of 14-px patches before the image is shrunk (4096).
    pub in_token_limit: usize,
    /// Merge window `[rows, cols]` the padded size must divide into (`[2, 2]`).
    pub merge_kernel_size: [usize; 2],
    /// Per-channel mean (RGB).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub image_std: [f32; 3],
}

impl Default for KimiVlImageProcessor {
    fn default() -> Self {
        Self {
            patch_size: 14,
            in_token_limit: 4096,
            merge_kernel_size: [2, 2],
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// `(patches, 3·p·p)` row-major values; each row is a channel-first `(3, p, p)` patch.
    pub pixel_values: Vec<f32>,
    /// Grid in patches.
    pub grid: GridHw,
    /// `(width, height)` after the token-limit resize, before padding.
    pub resized_wh: (u32, u32),
}

/// Several images packed for the vision tower.
#[derive(Debug, Clone)]
pub struct PackedImages {
    /// `(patches, 3, p, p)`, images one after another.
    pub pixel_values: Tensor,
    /// One grid per image, in order.
    pub grids: Vec<GridHw>,
}

impl KimiVlImageProcessor {
    /// The `(width, height)` an image of `width × height` is resized to before padding.
    pub fn target_size(&self, width: u32, height: u32) -> (u32, u32) {
        let p = self.patch_size as u64;
        let patches = (u64::from(width) / p) * (u64::from(height) / p);
        if patches > self.in_token_limit as u64 {
            let scale = (self.in_token_limit as f64 / patches as f64).sqrt();
            (
                ((f64::from(width) * scale) as u32).max(1),
                ((f64::from(height) * scale) as u32).max(1),
            )
        } else {
            (width, height)
        }
    }

    /// Resize an image to the token limit (unchanged when it already fits).
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = self.target_size(img.width(), img.height());
        if (w, h) == img.dimensions() {
            Ok(img.clone())
        } else {
            resize_bicubic_u8(img, w, h)
        }
    }

    /// Preprocess one image.
    pub fn preprocess(&self, img: &RgbImage) -> Result<ProcessedImage> {
        if img.width() == 0 || img.height() == 0 {
            return Err(ModelError::InvalidInput(format!(
                "cannot process an empty image ({}x{})",
                img.width(),
                img.height()
            )));
        }
        if self.patch_size == 0 || self.merge_kernel_size.contains(&0) {
            return Err(ModelError::InvalidInput(format!(
                "invalid processor settings: patch {} merge {:?}",
                self.patch_size, self.merge_kernel_size
            )));
        }
        let resized = self.resize(img)?;
        let (rw, rh) = resized.dimensions();
        let p = self.patch_size;
        let (ph, pw) = (
            (rh as usize).next_multiple_of(self.merge_kernel_size[0] * p),
            (rw as usize).next_multiple_of(self.merge_kernel_size[1] * p),
        );
        let mut padded = RgbImage::new(pw as u32, ph as u32);
        image::imageops::replace(&mut padded, &resized, 0, 0);
        let chw = normalize_chw(&padded, self.image_mean, self.image_std);
        let grid = GridHw::new(ph / p, pw / p);
        let plane = ph * pw;
        let mut pixel_values = Vec::with_capacity(3 * plane);
        for r in 0..grid.h {
            for c in 0..grid.w {
                for ch in 0..3 {
                    for y in 0..p {
                        let row = ch * plane + (r * p + y) * pw + c * p;
                        pixel_values.extend_from_slice(&chw[row..row + p]);
                    }
                }
            }
        }
        Ok(ProcessedImage {
            pixel_values,
            grid,
            resized_wh: (rw, rh),
        })
    }

    /// Preprocess and pack several images for [`super::MoonVit`].
    pub fn preprocess_images(&self, images: &[RgbImage], device: &Device) -> Result<PackedImages> {
        if images.is_empty() {
            return Err(ModelError::InvalidInput("no image given".into()));
        }
        let mut values = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let out = self.preprocess(img)?;
            values.extend_from_slice(&out.pixel_values);
            grids.push(out.grid);
        }
        let n: usize = grids.iter().map(GridHw::patches).sum();
        let p = self.patch_size;
        Ok(PackedImages {
            pixel_values: Tensor::from_vec(values, (n, 3, p, p), device)?,
            grids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_limit_decides_the_resize() {
        let p = KimiVlImageProcessor::default();
        assert_eq!(p.target_size(150, 97), (150, 97));
        let small = KimiVlImageProcessor {
            in_token_limit: 32,
            ..Default::default()
        };
        // 10 × 6 = 60 patches > 32: scale sqrt(32/60).
        assert_eq!(small.target_size(150, 97), (109, 70));
    }

    #[test]
    fn padding_is_black_and_patches_are_row_major() {
        let img = RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8, y as u8, 255]));
        let out = KimiVlImageProcessor::default().preprocess(&img).unwrap();
        // Padded to 56 × 28: grid 2 × 4.
        assert_eq!(out.grid, GridHw::new(2, 4));
        assert_eq!(out.pixel_values.len(), 8 * 588);
        // Patch 1 (row 0, col 1), channel 0, pixel (0, 0) is x = 14.
        let v = out.pixel_values[588];
        assert!((v - ((14.0 / 255.0) - 0.5) / 0.5).abs() < 1e-6, "{v}");
        // Patch 3 (row 0, col 3) lies entirely in the padding: -1.
        assert!(out.pixel_values[3 * 588..4 * 588]
            .iter()
            .all(|&v| v == -1.0));
        assert!(KimiVlImageProcessor::default()
            .preprocess(&RgbImage::new(0, 4))
            .is_err());
    }
}
