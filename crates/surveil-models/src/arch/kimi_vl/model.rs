//! `KimiVLForConditionalGeneration`: MoonViT + projector features spliced into the token
//! embeddings at the placeholder positions, then the DeepSeek-V3 decoder.

use candle_core::{Device, Tensor};

use super::config::KimiVlConfig;
use super::vision::{GridHw, KimiVlProjector, MoonVit};
use crate::arch::deepseek_v3::{DeepseekV3Cache, DeepseekV3Config, DeepseekV3Model, Logits};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// The whole Kimi-VL model.
pub struct KimiVlModel {
    cfg: KimiVlConfig,
    vision: MoonVit,
    projector: KimiVlProjector,
    language_model: DeepseekV3Model,
}

impl KimiVlModel {
    /// Load from `w` scoped at the checkpoint root (`vision_tower.*`,
    /// `multi_modal_projector.*`, `language_model.*`). Every tensor is checked against
    /// [`super::KimiVlRoles`].
    pub fn load(cfg: &KimiVlConfig, w: &Weights) -> Result<Self> {
        let text_cfg = DeepseekV3Config::from_value(&cfg.text_config)?;
        let w = &w.with_rules(std::sync::Arc::new(super::KimiVlRoles::for_decoder(
            &text_cfg,
        )));
        if text_cfg.hidden_size != cfg.text_hidden_size {
            return Err(ModelError::Config {
                path: "kimi-vl config.json".into(),
                reason: format!(
                    "text_config.hidden_size {} differs from the decoder's {}",
                    cfg.text_hidden_size, text_cfg.hidden_size
                ),
            });
        }
        let _span = tracing::info_span!("kimi_vl_load").entered();
        Ok(Self {
            cfg: cfg.clone(),
            vision: MoonVit::load(&cfg.vision, &w.pp("vision_tower"))?,
            projector: KimiVlProjector::load(
                &cfg.vision,
                cfg.text_hidden_size,
                &w.pp("multi_modal_projector"),
            )?,
            language_model: DeepseekV3Model::load(&text_cfg, &w.pp("language_model"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KimiVlConfig {
        &self.cfg
    }

    /// The vision tower.
    pub fn vision(&self) -> &MoonVit {
        &self.vision
    }

    /// The decoder.
    pub fn language_model(&self) -> &DeepseekV3Model {
        &self.language_model
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.language_model.device()
    }

    /// A fresh KV cache.
    pub fn new_cache(&self) -> DeepseekV3Cache {
        self.language_model.new_cache()
    }

    /// Image features in the text width: `(tokens, hidden)`, images in order.
    pub fn image_features(&self, pixel_values: &Tensor, grids: &[GridHw]) -> Result<Tensor> {
        let merged = self.vision.forward(pixel_values, grids)?;
        self.projector.forward(&merged)
    }

    /// Token embeddings `(1, n, hidden)` with the placeholder rows replaced, in order, by the
    /// rows of `image_features` `(tokens, hidden)`; the counts must agree.
    pub fn splice(&self, ids: &[u32], image_features: Option<&Tensor>) -> Result<Tensor> {
        let text = self.language_model.embed(ids)?;
        let placeholder = self.cfg.media_placeholder_token_id;
        let slots = ids.iter().filter(|&&t| t == placeholder).count();
        let rows = match image_features {
            Some(f) => f.dim(0)?,
            None => 0,
        };
        if slots != rows {
            return Err(ModelError::InvalidInput(format!(
                "the prompt has {slots} image placeholder tokens but the images give {rows} features"
            )));
        }
        let Some(features) = image_features.filter(|_| rows > 0) else {
            return Ok(text);
        };
        let (n, hidden) = (ids.len(), text.dim(2)?);
        // Gather from [text rows; image rows]: position i takes text row i, or image row k for
        // the k-th placeholder.
        let mut next = 0u32;
        let index: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == placeholder {
                    next += 1;
                    (n as u32) + next - 1
                } else {
                    i as u32
                }
            })
            .collect();
        let table = Tensor::cat(
            &[
                text.squeeze(0)?,
                features.to_dtype(text.dtype())?.to_device(text.device())?,
            ],
            0,
        )?;
        let index = Tensor::new(index.as_slice(), text.device())?;
        Ok(table.index_select(&index, 0)?.reshape((1, n, hidden))?)
    }

    /// Input embeddings `(1, n, hidden)` of a prompt with its images (`pixel_values`
    /// `(patches, 3, 14, 14)` and one grid per image, or `None` for text only).
    pub fn input_embeds(
        &self,
        ids: &[u32],
        images: Option<(&Tensor, &[GridHw])>,
    ) -> Result<Tensor> {
        let features = match images {
            Some((pixels, grids)) => Some(self.image_features(pixels, grids)?),
            None => None,
        };
        self.splice(ids, features.as_ref())
    }

    /// Run the prompt through the decoder, filling `cache`; returns the requested logits.
    pub fn prefill(
        &self,
        ids: &[u32],
        images: Option<(&Tensor, &[GridHw])>,
        cache: &mut DeepseekV3Cache,
        logits: Logits,
    ) -> Result<Tensor> {
        let _span = tracing::debug_span!("kimi_vl_prefill", tokens = ids.len()).entered();
        let embeds = self.input_embeds(ids, images)?;
        self.language_model.forward(&embeds, cache, logits)
    }

    /// One decode step: logits `(1, 1, vocab)` for `token` placed after what `cache` holds.
    pub fn decode_step(&self, token: u32, cache: &mut DeepseekV3Cache) -> Result<Tensor> {
        self.language_model
            .forward_ids(&[token], cache, Logits::Last)
    }
}
