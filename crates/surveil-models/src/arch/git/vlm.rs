//! GIT behind [`Vlm`]: a captioner. The prompt and system text are ignored; the one image is
//! captioned from `[CLS]` until `[SEP]` through the shared generation loop.

use std::sync::Arc;
use std::time::Instant;

use super::captioner::{check_crop, GitTokenizer};
use super::model::GitModel;
use super::processor::ClipProcessor;
use crate::generation::GenerationParams;
use crate::tokenizer::TextTokenizer;
use crate::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};
use crate::{ModelError, Result};

/// GIT with its CLIP processor and BERT tokenizer, as a [`VlmKind::Captioner`].
pub struct GitVlm {
    model_id: String,
    model: Arc<GitModel>,
    processor: ClipProcessor,
    tokenizer: GitTokenizer,
}

impl GitVlm {
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
        let out = crate::generation::generate(
            &mut session,
            Some(&self.tokenizer),
            params,
            &[cfg.eos_token_id],
            hooks,
            started,
        )?;
        Ok(Generation::answer(out).trimmed())
    }
}
