//! The Qwen2-VL image processor: `smart_resize` (sides multiples of 28, pixel count within
//! `[min_pixels, max_pixels]`, aspect ratio kept), Pillow-exact bicubic resize, rescale + CLIP
//! normalisation, and patch flattening in the reference's row order.
//!
//! Rows of `pixel_values` are ordered temporal patch → 2×2 merge window (row-major) → patch
//! inside the window (row-major); each row holds `C × T × 14 × 14` values. A still image is
//! repeated to fill the temporal patch; video frames are taken in temporal pairs.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::vision::GridThw;
use crate::image_ops::{normalize_chw, resize_bicubic_u8, CLIP_MEAN, CLIP_STD};
use crate::{ModelError, Result};

/// Largest ratio between the long and the short side the reference accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Whether the processor takes an image of `width × height` whatever its settings: both sides
/// positive and the long side at most [`MAX_ASPECT_RATIO`] times the short one. [`smart_resize`]
/// applies it; a caller that has the image long before the model (a CLI that reads a file,
/// then loads for half a minute) can check it first.
///
/// # Errors
/// [`ModelError::InvalidInput`] naming the size, the ratio and the limit.
pub fn check_image_size(width: usize, height: usize) -> Result<()> {
    if height == 0 || width == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot resize a {width}x{height} image"
        )));
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(ModelError::InvalidInput(format!(
            "image of {width}x{height} has aspect ratio {ratio:.1}, above the limit {MAX_ASPECT_RATIO}"
        )));
    }
    Ok(())
}

/// The reference's `smart_resize`: the `(height, width)` to resize to. Each side is rounded to
/// a multiple of `factor` (Python's round-half-to-even); if the area is then above
/// `max_pixels` both sides shrink by `sqrt(h·w / max_pixels)` (rounded down to a multiple of
/// `factor`, at least `factor`), if below `min_pixels` they grow by `sqrt(min_pixels / (h·w))`
/// (rounded up). Sizes [`check_image_size`] refuses are errors.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if factor == 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot resize a {width}x{height} image to a multiple of 0"
        )));
    }
    check_image_size(width, height)?;
    let (h, w) = (height as f64, width as f64);
    let f = factor as f64;
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Patches and grid of one image or video.
#[derive(Debug, Clone)]
pub struct ProcessedVision {
    /// `(patches, C·T·p·p)` row-major values.
    pub pixel_values: Vec<f32>,
    /// Values per row (1176 with the default settings).
    pub patch_dim: usize,
    /// Grid in patches.
    pub grid: GridThw,
    /// `(height, width)` the frames were resized to.
    pub resized_hw: (usize, usize),
}

impl ProcessedVision {
    /// `pixel_values` as a `(patches, patch_dim)` tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.pixel_values,
            (self.grid.patches(), self.patch_dim),
            device,
        )?)
    }
}

/// Images of one prompt, packed as the model takes them.
#[derive(Debug, Clone)]
pub struct PackedImages {
    /// `(total patches, patch_dim)`.
    pub pixel_values: Tensor,
    /// One grid per image, in order.
    pub grids: Vec<GridThw>,
}

/// Qwen2-VL image/video preprocessing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    /// Lower bound on resized pixels (`size.shortest_edge`; 56·56).
    pub min_pixels: usize,
    /// Upper bound on resized pixels (`size.longest_edge`).
    pub max_pixels: usize,
    /// Patch side (14).
    pub patch_size: usize,
    /// Frames per temporal patch (2).
    pub temporal_patch_size: usize,
    /// Spatial merge (2): sides are multiples of `patch_size · merge_size`.
    pub merge_size: usize,
    /// Channel means (OpenAI CLIP).
    pub image_mean: [f32; 3],
    /// Channel standard deviations (OpenAI CLIP).
    pub image_std: [f32; 3],
}

impl Default for Qwen2VlImageProcessor {
    /// transformers' `Qwen2VLImageProcessor` defaults: `min_pixels` 3136,
    /// `max_pixels` 1003520 (28·28·1280).
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

impl Qwen2VlImageProcessor {
    /// Defaults with other pixel bounds.
    pub fn with_pixels(min_pixels: usize, max_pixels: usize) -> Result<Self> {
        if min_pixels == 0 || min_pixels > max_pixels {
            return Err(ModelError::InvalidInput(format!(
                "min_pixels {min_pixels} must be positive and at most max_pixels {max_pixels}"
            )));
        }
        Ok(Self {
            min_pixels,
            max_pixels,
            ..Self::default()
        })
    }

    /// Settings from a `preprocessor_config.json` (Hub v4 keys `min_pixels` / `max_pixels`, or
    /// v5 `size: {shortest_edge, longest_edge}`; `patch_size`, `temporal_patch_size`,
    /// `merge_size`, `image_mean`, `image_std`). Missing keys keep their defaults.
    pub fn from_preprocessor_config(json: &str) -> Result<Self> {
        let bad = |reason: String| ModelError::Config {
            path: "preprocessor_config.json".into(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let d = Self::default();
        let uint = |key: &str, size_key: &str, default: usize| -> Result<usize> {
            let x = v
                .get(key)
                .or_else(|| v.get("size").and_then(|s| s.get(size_key)));
            match x {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(format!("`{key}` must be a positive integer, got {x}"))),
            }
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => {
                    let vals: Vec<f32> = x
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|n| n.as_f64())
                                .map(|n| n as f32)
                                .collect()
                        })
                        .unwrap_or_default();
                    <[f32; 3]>::try_from(vals.as_slice())
                        .map_err(|_| bad(format!("`{key}` must be 3 numbers, got {x}")))
                }
            }
        };
        let p = Self {
            min_pixels: uint("min_pixels", "shortest_edge", d.min_pixels)?,
            max_pixels: uint("max_pixels", "longest_edge", d.max_pixels)?,
            patch_size: uint("patch_size", "", d.patch_size)?,
            temporal_patch_size: uint("temporal_patch_size", "", d.temporal_patch_size)?,
            merge_size: uint("merge_size", "", d.merge_size)?,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: triple("image_std", d.image_std)?,
        };
        if p.min_pixels == 0
            || p.min_pixels > p.max_pixels
            || p.patch_size == 0
            || p.temporal_patch_size == 0
            || p.merge_size == 0
            || p.image_std.contains(&0.0)
        {
            return Err(bad(format!("unusable processor settings {p:?}")));
        }
        Ok(p)
    }

    /// Side granularity: `patch_size · merge_size` (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per patch row for RGB input.
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// `(height, width)` an image of this size is resized to.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
    }

    fn resize(&self, img: &RgbImage, (h, w): (usize, usize)) -> Result<RgbImage> {
        if (img.height() as usize, img.width() as usize) == (h, w) {
            return Ok(img.clone());
        }
        resize_bicubic_u8(img, w as u32, h as u32)
    }

    /// One still image → patches (the frame is repeated to fill the temporal patch).
    pub fn preprocess_image(&self, img: &RgbImage) -> Result<ProcessedVision> {
        let size = self.target_size(img.height() as usize, img.width() as usize)?;
        let resized = self.resize(img, size)?;
        self.patchify(&[resized])
    }

    /// Several images → one packed tensor and their grids, for [`super::MultimodalInput`].
    pub fn preprocess_images(&self, images: &[RgbImage], device: &Device) -> Result<PackedImages> {
        if images.is_empty() {
            return Err(ModelError::InvalidInput("no images given".into()));
        }
        let mut values = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let p = self.preprocess_image(img)?;
            values.extend_from_slice(&p.pixel_values);
            grids.push(p.grid);
        }
        let rows = grids.iter().map(GridThw::patches).sum::<usize>();
        Ok(PackedImages {
            pixel_values: Tensor::from_vec(values, (rows, self.patch_dim()), device)?,
            grids,
        })
    }

    /// Video frames (all of one size) → patches with `t = ceil(frames / 2)`; an odd last frame
    /// is repeated. The size is chosen from the first frame with the same `smart_resize`.
    pub fn preprocess_video(&self, frames: &[RgbImage]) -> Result<ProcessedVision> {
        let first = frames
            .first()
            .ok_or_else(|| ModelError::InvalidInput("a video needs at least one frame".into()))?;
        if let Some(bad) = frames.iter().find(|f| f.dimensions() != first.dimensions()) {
            return Err(ModelError::InvalidInput(format!(
                "video frames differ in size: {:?} and {:?}",
                first.dimensions(),
                bad.dimensions()
            )));
        }
        let size = self.target_size(first.height() as usize, first.width() as usize)?;
        let resized = frames
            .iter()
            .map(|f| self.resize(f, size))
            .collect::<Result<Vec<_>>>()?;
        self.patchify(&resized)
    }

    /// Normalise already-resized frames and flatten them into patches (the exact part of the
    /// pipeline). Sides must be multiples of [`Self::factor`].
    pub fn patchify(&self, frames: &[RgbImage]) -> Result<ProcessedVision> {
        let first = frames
            .first()
            .ok_or_else(|| ModelError::InvalidInput("no frames to patchify".into()))?;
        let (h, w) = (first.height() as usize, first.width() as usize);
        let factor = self.factor();
        if h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
            return Err(ModelError::InvalidInput(format!(
                "frame of {w}x{h} is not a multiple of {factor} on both sides"
            )));
        }
        if frames.iter().any(|f| f.dimensions() != first.dimensions()) {
            return Err(ModelError::InvalidInput("frames differ in size".into()));
        }
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let planes: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| normalize_chw(f, self.image_mean, self.image_std))
            .collect();
        let grid = GridThw::new(frames.len().div_ceil(tp), h / p, w / p);
        let patch_dim = 3 * tp * p * p;
        let plane = h * w;
        let mut out = Vec::with_capacity(grid.patches() * patch_dim);
        for gt in 0..grid.t {
            // Frames of this temporal patch; past the end, the last frame is repeated.
            let fr: Vec<&[f32]> = (0..tp)
                .map(|k| planes[(gt * tp + k).min(planes.len() - 1)].as_slice())
                .collect();
            for bh in 0..grid.h / m {
                for bw in 0..grid.w / m {
                    for ih in 0..m {
                        for iw in 0..m {
                            let (y0, x0) = ((bh * m + ih) * p, (bw * m + iw) * p);
                            for c in 0..3 {
                                for f in &fr {
                                    for y in y0..y0 + p {
                                        let row = c * plane + y * w + x0;
                                        out.extend_from_slice(&f[row..row + p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(ProcessedVision {
            pixel_values: out,
            patch_dim,
            grid,
            resized_hw: (h, w),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_follows_the_reference_rules() {
        let d = Qwen2VlImageProcessor::default();
        assert_eq!(d.target_size(576, 768).unwrap(), (588, 756));
        assert_eq!(
            smart_resize(576, 768, 28, 3136, 200_704).unwrap(),
            (364, 504)
        );
        assert_eq!(d.target_size(30, 40).unwrap(), (56, 84));
        // 1x1 grows to the minimum; 10000x10000 shrinks under max_pixels.
        assert_eq!(d.target_size(1, 1).unwrap(), (56, 56));
        let (h, w) = d.target_size(10_000, 10_000).unwrap();
        assert!(
            h * w <= d.max_pixels && h % 28 == 0 && w % 28 == 0,
            "{h}x{w}"
        );
        // Half-way sides round to even like Python's round(): 14/28 = 0.5 -> 0, 42/28 = 1.5 -> 2.
        assert_eq!(
            smart_resize(42, 2800, 28, 1, usize::MAX).unwrap(),
            (56, 2800)
        );
        assert!(smart_resize(10, 2500, 28, 3136, 1_003_520).is_err());
        assert!(smart_resize(0, 5, 28, 3136, 1_003_520).is_err());
    }

    #[test]
    fn image_size_check_is_the_one_smart_resize_applies() {
        // 2000x10 is exactly the limit; one pixel wider is over it, either way round.
        assert!(check_image_size(2000, 10).is_ok());
        assert!(check_image_size(10, 2000).is_ok());
        for (w, h) in [(2001, 10), (10, 2001), (4000, 10)] {
            let err = check_image_size(w, h).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{w}x{h}")) && err.contains("above the limit 200"),
                "{err}"
            );
            let resized = smart_resize(h, w, 28, 3136, 1_003_520)
                .unwrap_err()
                .to_string();
            assert_eq!(resized, err);
        }
        assert!(check_image_size(0, 5).is_err());
        assert!(check_image_size(5, 0).is_err());
    }

    #[test]
    fn patch_rows_are_window_major() {
        // A 56x56 frame: 4x4 patches, merged windows of 2x2. Mark each pixel with its patch.
        let img = RgbImage::from_fn(56, 56, |x, y| {
            image::Rgb([(y / 14 * 4 + x / 14) as u8, 0, 0])
        });
        let proc = Qwen2VlImageProcessor {
            image_mean: [0.0; 3],
            image_std: [1.0 / 255.0; 3],
            ..Qwen2VlImageProcessor::default()
        };
        let out = proc.patchify(&[img]).unwrap();
        assert_eq!(out.grid, GridThw::new(1, 4, 4));
        let first_of_row: Vec<f32> = out
            .pixel_values
            .chunks(out.patch_dim)
            .map(|r| r[0])
            .collect();
        // window (0,0): patches 0,1,4,5; window (0,1): 2,3,6,7; ...
        let expected = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];
        for (got, want) in first_of_row.iter().zip(expected) {
            assert!((got - want as f32).abs() < 1e-3, "{first_of_row:?}");
        }
    }
}
