//! CLIP image preprocessing as transformers' `CLIPImageProcessor` does it for GIT: resize the
//! short side (Pillow bicubic), center crop, rescale by 1/255, normalise with the CLIP mean/std.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;

use crate::image_ops::{center_crop_u8, normalize_chw, resize_bicubic_u8, CLIP_MEAN, CLIP_STD};
use crate::{ModelError, Result};

/// Settings of a `CLIPImageProcessor` (the fields of `preprocessor_config.json` that matter).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipProcessorConfig {
    /// Target length of the short side after resizing.
    pub shortest_edge: u32,
    /// Center crop width.
    pub crop_width: u32,
    /// Center crop height.
    pub crop_height: u32,
    /// Per-channel mean (RGB) subtracted after rescaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

impl ClipProcessorConfig {
    /// microsoft/git-base-coco: short side 224, crop 224×224, OpenAI CLIP mean/std.
    pub fn git_base_coco() -> Self {
        Self::square(224)
    }

    /// Short side and square crop of `size` pixels, CLIP mean/std (git-base-coco's settings
    /// scaled to a vision tower of `image_size` = `size`).
    pub fn square(size: u32) -> Self {
        Self {
            shortest_edge: size,
            crop_width: size,
            crop_height: size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Read a Hub `preprocessor_config.json` of a `CLIPImageProcessor`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config { reason, .. } => ModelError::Config {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parse the JSON of a `CLIPImageProcessor` `preprocessor_config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Size {
            shortest_edge: Option<u32>,
        }
        #[derive(Deserialize)]
        struct Crop {
            height: u32,
            width: u32,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum CropField {
            Square(u32),
            Rect(Crop),
        }
        #[derive(Deserialize)]
        struct Raw {
            size: Option<Size>,
            crop_size: Option<CropField>,
            image_mean: Option<[f32; 3]>,
            image_std: Option<[f32; 3]>,
            resample: Option<u32>,
            do_resize: Option<bool>,
            do_center_crop: Option<bool>,
            do_rescale: Option<bool>,
            rescale_factor: Option<f64>,
            do_normalize: Option<bool>,
        }
        let bad = |reason: String| ModelError::Config {
            path: "<CLIP preprocessor JSON>".into(),
            reason,
        };
        let raw: Raw = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if raw.resample.is_some_and(|r| r != 3) {
            return Err(bad("`resample` must be 3 (bicubic)".into()));
        }
        for (key, value) in [
            ("do_resize", raw.do_resize),
            ("do_center_crop", raw.do_center_crop),
            ("do_rescale", raw.do_rescale),
            ("do_normalize", raw.do_normalize),
        ] {
            if value == Some(false) {
                return Err(bad(format!("`{key}: false` is not supported")));
            }
        }
        if raw
            .rescale_factor
            .is_some_and(|f| (f - 1.0 / 255.0).abs() > 1e-12)
        {
            return Err(bad("`rescale_factor` must be 1/255".into()));
        }
        let shortest_edge = raw.size.and_then(|s| s.shortest_edge).unwrap_or(224);
        let (crop_width, crop_height) = match raw.crop_size {
            None => (224, 224),
            Some(CropField::Square(s)) => (s, s),
            Some(CropField::Rect(c)) => (c.width, c.height),
        };
        let cfg = Self {
            shortest_edge,
            crop_width,
            crop_height,
            mean: raw.image_mean.unwrap_or(CLIP_MEAN),
            std: raw.image_std.unwrap_or(CLIP_STD),
        };
        if cfg.shortest_edge == 0 || cfg.crop_width == 0 || cfg.crop_height == 0 {
            return Err(bad("sizes must be positive".into()));
        }
        if cfg.std.iter().any(|&s| s <= 0.0) {
            return Err(bad("`image_std` must be positive".into()));
        }
        Ok(cfg)
    }
}

/// Turns RGB frames into the `pixel_values` the GIT vision tower takes.
#[derive(Debug, Clone)]
pub struct ClipProcessor {
    cfg: ClipProcessorConfig,
    device: Device,
}

impl ClipProcessor {
    /// A processor producing tensors on `device`.
    pub fn new(cfg: ClipProcessorConfig, device: Device) -> Self {
        Self { cfg, device }
    }

    /// The settings in use.
    pub fn config(&self) -> &ClipProcessorConfig {
        &self.cfg
    }

    /// Size after the shortest-edge resize, `(width, height)`: the short side becomes
    /// `shortest_edge`, the long side `int(shortest_edge · long / short)`.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let s = u64::from(self.cfg.shortest_edge);
        let (w, h) = (u64::from(width), u64::from(height));
        if w <= h {
            (s as u32, (s * h / w.max(1)) as u32)
        } else {
            ((s * w / h.max(1)) as u32, s as u32)
        }
    }

    /// Resize (Pillow bicubic) and center crop: the uint8 image that gets normalised.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        if img.width() == 0 || img.height() == 0 {
            return Err(ModelError::InvalidInput("empty image".into()));
        }
        let (w, h) = self.resized_size(img.width(), img.height());
        let resized = resize_bicubic_u8(img, w, h)?;
        center_crop_u8(&resized, self.cfg.crop_width, self.cfg.crop_height)
    }

    /// One image → `pixel_values` `[1, 3, crop_height, crop_width]` (f32).
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        self.preprocess_batch(std::slice::from_ref(img))
    }

    /// Several images → `[B, 3, crop_height, crop_width]` (f32).
    pub fn preprocess_batch(&self, imgs: &[RgbImage]) -> Result<Tensor> {
        if imgs.is_empty() {
            return Err(ModelError::InvalidInput("no images".into()));
        }
        let (cw, ch) = (self.cfg.crop_width as usize, self.cfg.crop_height as usize);
        let mut data = Vec::with_capacity(imgs.len() * 3 * cw * ch);
        for img in imgs {
            let cropped = self.resize_and_crop(img)?;
            data.extend(normalize_chw(&cropped, self.cfg.mean, self.cfg.std));
        }
        Ok(Tensor::from_vec(
            data,
            (imgs.len(), 3, ch, cw),
            &self.device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_the_long_side() {
        let p = ClipProcessor::new(ClipProcessorConfig::git_base_coco(), Device::Cpu);
        assert_eq!(p.resized_size(768, 576), (298, 224));
        assert_eq!(p.resized_size(333, 517), (224, 347));
        assert_eq!(p.resized_size(224, 224), (224, 224));
    }

    #[test]
    fn reads_hub_preprocessor_config() {
        let json = r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
            "do_normalize": true, "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": {"shortest_edge": 224}}"#;
        assert_eq!(
            ClipProcessorConfig::from_json(json).unwrap(),
            ClipProcessorConfig::git_base_coco()
        );
        let err = ClipProcessorConfig::from_json(r#"{"resample": 2}"#).unwrap_err();
        assert!(err.to_string().contains("resample"), "{err}");
        let err = ClipProcessorConfig::from_json(r#"{"do_center_crop": false}"#).unwrap_err();
        assert!(err.to_string().contains("do_center_crop"), "{err}");
    }

    #[test]
    fn output_shape_and_batch() {
        let p = ClipProcessor::new(ClipProcessorConfig::square(32), Device::Cpu);
        let img = RgbImage::from_pixel(50, 40, image::Rgb([10, 20, 30]));
        let t = p.preprocess_batch(&[img.clone(), img]).unwrap();
        assert_eq!(t.dims(), &[2, 3, 32, 32]);
        let first: f32 = t
            .flatten_all()
            .unwrap()
            .get(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        let expected = ((10.0f64 / 255.0) as f32 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert_eq!(first, expected);
        assert!(p.preprocess_batch(&[]).is_err());
    }
}
