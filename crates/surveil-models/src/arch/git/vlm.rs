//! GIT behind [`Vlm`]: a captioner. The prompt and system text are ignored; the one image is
//! captioned from `[CLS]` until `[SEP]` through the shared generation loop.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::captioner::{check_crop, GitTokenizer};
use super::model::GitModel;
use super::processor::{ClipProcessor, ClipProcessorConfig};
use crate::generation::GenerationParams;
use crate::tokenizer::TextTokenizer;
use crate::vlm::{
    find_tokenizer_file, preprocessor_config, Generation, GenerationHooks, Vlm, VlmKind, VlmRequest,
};
use crate::{ModelError, Result};

/// GIT with its CLIP processor and BERT tokenizer, as a [`VlmKind::Captioner`].
pub struct GitVlm {
    model_id: String,
    model: Arc<GitModel>,
    processor: ClipProcessor,
    tokenizer: GitTokenizer,
}

impl GitVlm {
    /// The captioner of a loaded model: the BERT tokenizer (`tokenizer.json` in
    /// `checkpoint_dir`, else the asset cache `assets`; see [`find_tokenizer_file`]) and the CLIP
    /// processor (the checkpoint's `preprocessor_config.json`, else a square crop of the
    /// model's image size) on `device`, the model's. `checkpoint_dir` is `None` for dummy
    /// weights.
    ///
    /// Errors: a missing or unreadable tokenizer or preprocessor config, a crop that is not the
    /// model's image size.
    pub fn load(
        model: Arc<GitModel>,
        model_id: &str,
        checkpoint_dir: Option<&Path>,
        assets: &Path,
        device: &Device,
    ) -> Result<Self> {
        let path = find_tokenizer_file(
            checkpoint_dir,
            "tokenizer.json",
            assets,
            "tokenizers/bert-base-uncased/tokenizer.json",
        )?;
        let tokenizer = GitTokenizer::from_file(&path)?;
        let config = match preprocessor_config(checkpoint_dir) {
            Some(p) => ClipProcessorConfig::from_file(&p)?,
            None => ClipProcessorConfig::square(model.config().vision_config.image_size as u32),
        };
        let processor = ClipProcessor::new(config, device.clone());
        Self::new(model_id, model, processor, tokenizer)
    }

    /// Assemble the captioner. Errors when the processor's crop is not the model's image size.
    pub fn new(
        model_id: impl Into<String>,
        model: Arc<GitModel>,
        processor: ClipProcessor,
        tokenizer: GitTokenizer,
    ) -> Result<Self> {
        check_crop(&model, &processor)?;
        Ok(Self {
            model_id: model_id.into(),
            model,
            processor,
            tokenizer,
        })
    }
}

impl Vlm for GitVlm {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn kind(&self) -> VlmKind {
        VlmKind::Captioner
    }

    fn tokenizer(&self) -> &dyn TextTokenizer {
        &self.tokenizer
    }

    /// Caption the request's one image (prompt and system text ignored), stopping at the
    /// config's `eos_token_id` (`[SEP]`). Errors unless exactly one image is given.
    fn max_images(&self) -> usize {
        1
    }

    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        params: &GenerationParams,
        hooks: &mut dyn GenerationHooks,
    ) -> Result<Generation> {
        let started = Instant::now();
        let [image] = request.images else {
            return Err(ModelError::InvalidInput(format!(
                "{} captions exactly one image per call, got {}",
                self.model_id,
                request.images.len()
            )));
        };
        let _span = tracing::info_span!("git_analyse", model = %self.model_id).entered();
        let cfg = self.model.config();
        let pixel_values = self.processor.preprocess(image)?;
        let mut session = self.model.session(pixel_values, &[cfg.bos_token_id])?;
        let mut out = crate::generation::generate(
            &mut session,
            Some(&self.tokenizer),
            params,
            &[cfg.eos_token_id],
            hooks,
            started,
        )?;
        out.stats.weight_bytes_per_token = Some(self.model.decode_weight_bytes() as f64);
        Ok(Generation::answer(out).trimmed())
    }
}
