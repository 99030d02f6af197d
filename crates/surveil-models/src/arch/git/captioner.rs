//! The BERT uncased tokenizer GIT uses, and [`GitCaptioner`]: frames in, captions out.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::model::GitModel;
use super::processor::ClipProcessor;
use crate::generation::{GenerationParams, Sampling, TokenSampler};
use crate::tokenizer::{TextTokenizer, Vocabulary};
use crate::vlm::NoHooks;
use crate::{ModelError, Result};

/// The uncased BERT WordPiece tokenizer (`tokenizer.json`) of git-base-coco, with the file's
/// built-in padding and truncation (to 128) switched off.
#[derive(Clone)]
pub struct GitTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for GitTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl GitTokenizer {
    /// Load a `tokenizer.json`; padding and truncation are disabled.
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |reason: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(err(
                "file not found (run scripts/setup.sh to fetch it)".into()
            ));
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text`; with `add_special_tokens`, wrapped in `[CLS] … [SEP]`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` without special tokens, word pieces joined (`"un ##bel"` → `"unbel"`) and
    /// spaces before punctuation removed, trimmed.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(text.trim().to_string())
    }

    /// Id of a token such as `[CLS]`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn error(&self, reason: String) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            reason,
        }
    }
}

impl TextTokenizer for GitTokenizer {
    /// Word pieces of `text`, without `[CLS]` / `[SEP]`.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        GitTokenizer::encode(self, text, false)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        GitTokenizer::decode(self, ids)
    }

    /// `None`: word pieces are not byte strings.
    fn vocabulary(&self) -> Option<&Vocabulary> {
        None
    }

    /// `[SEP]`, which ends a caption.
    fn stop_token_ids(&self) -> Vec<u32> {
        self.token_id("[SEP]").into_iter().collect()
    }
}

/// How captions are generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionSettings {
    /// Most tokens per caption (after `[CLS]`).
    pub max_new_tokens: usize,
    /// Greedy or nucleus sampling.
    pub sampling: Sampling,
    /// Seed of the sampler (ignored by greedy decoding).
    pub seed: u64,
}

impl Default for CaptionSettings {
    /// Greedy, up to 20 tokens (transformers' default `max_length` of 20 for GIT).
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            sampling: Sampling::Greedy,
            seed: 0,
        }
    }
}

/// Processor, tokenizer and model together: frames in, one caption per frame out.
#[derive(Debug, Clone)]
pub struct GitCaptioner {
    processor: ClipProcessor,
    tokenizer: GitTokenizer,
    model: GitModel,
    settings: CaptionSettings,
}

impl GitCaptioner {
    /// Assemble a captioner. The processor's crop must match the model's image size.
    pub fn new(
        processor: ClipProcessor,
        tokenizer: GitTokenizer,
        model: GitModel,
        settings: CaptionSettings,
    ) -> Result<Self> {
        check_crop(&model, &processor)?;
        Ok(Self {
            processor,
            tokenizer,
            model,
            settings,
        })
    }

    /// The model.
    pub fn model(&self) -> &GitModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GitTokenizer {
        &self.tokenizer
    }

    /// Change how captions are generated.
    pub fn set_settings(&mut self, settings: CaptionSettings) {
        self.settings = settings;
    }

    /// Token ids of one caption per frame (without `[CLS]` and `[SEP]`). One frame goes
    /// through the shared generation loop ([`crate::generation::generate`]); several go in
    /// one batch ([`GitModel::generate`]), with the same stop rule and the same tokens.
    pub fn caption_ids(&self, frames: &[RgbImage]) -> Result<Vec<Vec<u32>>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let _span = tracing::info_span!("git_caption", frames = frames.len()).entered();
        let pixel_values = self.processor.preprocess_batch(frames)?;
        let cfg = self.model.config();
        if frames.len() == 1 {
            let params = GenerationParams {
                max_new_tokens: self.settings.max_new_tokens,
                sampling: self.settings.sampling,
                seed: self.settings.seed,
                ignore_stop_tokens: false,
            };
            let mut session = self.model.session(pixel_values, &[cfg.bos_token_id])?;
            let out = crate::generation::generate(
                &mut session,
                None,
                &params,
                &[cfg.eos_token_id],
                &mut NoHooks,
                std::time::Instant::now(),
            )?;
            return Ok(vec![out.tokens]);
        }
        let mut sampler = TokenSampler::new(self.settings.sampling, self.settings.seed);
        self.model.generate(
            &pixel_values,
            &[cfg.bos_token_id],
            self.settings.max_new_tokens,
            &mut sampler,
            Some(cfg.eos_token_id),
        )
    }

    /// One caption per frame, all frames in one batch.
    pub fn caption(&self, frames: &[RgbImage]) -> Result<Vec<String>> {
        self.caption_ids(frames)?
            .iter()
            .map(|ids| self.tokenizer.decode(ids))
            .collect()
    }
}

/// Errors unless `processor` crops to the square image size `model` takes.
pub(crate) fn check_crop(model: &GitModel, processor: &ClipProcessor) -> Result<()> {
    let size = model.config().vision_config.image_size as u32;
    let p = processor.config();
    if p.crop_width != size || p.crop_height != size {
        return Err(ModelError::InvalidInput(format!(
            "processor crops {}x{} but the model takes {size}x{size} images",
            p.crop_width, p.crop_height
        )));
    }
    Ok(())
}
