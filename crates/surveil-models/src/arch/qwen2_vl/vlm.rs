//! Qwen2-VL-Instruct behind [`Vlm`]: the images and the prompt in one user turn of the chat
//! template, answered through the shared generation loop until `<|im_end|>` /
//! `<|endoftext|>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::chat::{ChatMessage, Qwen2VlTokenizer};
use super::model::{MultimodalInput, Qwen2VlModel};
use super::processor::Qwen2VlImageProcessor;
use crate::generation::GenerationParams;
use crate::tokenizer::TextTokenizer;
use crate::vlm::{
    find_tokenizer_file, preprocessor_config, Generation, GenerationHooks, Vlm, VlmKind, VlmRequest,
};
use crate::{ModelError, Result};

/// Qwen2-VL with its tokenizer and image processor, as a [`VlmKind::Instruction`] model.
pub struct Qwen2VlVlm {
    model_id: String,
    model: Arc<Qwen2VlModel>,
    tokenizer: Qwen2VlTokenizer,
    processor: Qwen2VlImageProcessor,
    device: Device,
}

impl Qwen2VlVlm {
    /// The text side of a loaded model: the Qwen tokenizer (`tokenizer.json` in
    /// `checkpoint_dir`, else the asset cache `assets`; see [`find_tokenizer_file`]) and the image
    /// processor (the checkpoint's `preprocessor_config.json`, else the published defaults);
    /// `device` is the model's. `checkpoint_dir` is `None` for dummy weights.
    ///
    /// Errors: a missing or unreadable tokenizer or preprocessor config.
    pub fn load(
        model: Arc<Qwen2VlModel>,
        model_id: &str,
        checkpoint_dir: Option<&Path>,
        assets: &Path,
        device: &Device,
    ) -> Result<Self> {
        let path = find_tokenizer_file(
            checkpoint_dir,
            "tokenizer.json",
            assets,
            "tokenizers/qwen2-vl/tokenizer.json",
        )?;
        let tokenizer = Qwen2VlTokenizer::from_file(&path)?;
        let processor = match preprocessor_config(checkpoint_dir) {
            Some(p) => {
                let json = std::fs::read_to_string(&p).map_err(|source| ModelError::Io {
                    path: p.clone(),
                    source,
                })?;
                Qwen2VlImageProcessor::from_preprocessor_config(&json)?
            }
            None => Qwen2VlImageProcessor::default(),
        };
        Ok(Self::new(
            model_id,
            model,
            tokenizer,
            processor,
            device.clone(),
        ))
    }

    /// Assemble the model's text side; `device` is where the pixel values go (the model's).
    pub fn new(
        model_id: impl Into<String>,
        model: Arc<Qwen2VlModel>,
        tokenizer: Qwen2VlTokenizer,
        processor: Qwen2VlImageProcessor,
        device: Device,
    ) -> Self {
        Self {
            model_id: model_id.into(),
            model,
            tokenizer,
            processor,
            device,
        }
    }

    /// The prompt ids and pixels of `request`: an optional system turn, then one user turn
    /// with every image (in order) before the text, then the assistant turn's start.
    pub fn prepare(&self, request: &VlmRequest<'_>) -> Result<MultimodalInput> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = request.system {
            messages.push(ChatMessage::text("system", system));
        }
        messages.push(ChatMessage::user_with_images(
            request.images.len(),
            request.prompt,
        ));
        let (pixel_values, grids) = if request.images.is_empty() {
            (None, Vec::new())
        } else {
            let packed = self
                .processor
                .preprocess_images(request.images, &self.device)?;
            (Some(packed.pixel_values), packed.grids)
        };
        let merge = self.model.config().vision.spatial_merge_size;
        let prompt = self.tokenizer.encode_chat(&messages, &grids, &[], merge)?;
        Ok(MultimodalInput {
            input_ids: prompt.input_ids,
            pixel_values,
            image_grids: grids,
            ..MultimodalInput::default()
        })
    }
}

impl Vlm for Qwen2VlVlm {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn kind(&self) -> VlmKind {
        VlmKind::Instruction
    }

    fn tokenizer(&self) -> &dyn TextTokenizer {
        &self.tokenizer
    }

    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        params: &GenerationParams,
        hooks: &mut dyn GenerationHooks,
    ) -> Result<Generation> {
        let started = Instant::now();
        let _span = tracing::info_span!(
            "qwen2_vl_analyse",
            model = %self.model_id,
            images = request.images.len()
        )
        .entered();
        let input = self.prepare(request)?;
        let mut session = self.model.session(&input)?;
        let stop = self.tokenizer.stop_token_ids();
        let mut out = crate::generation::generate(
            &mut session,
            Some(&self.tokenizer),
            params,
            &stop,
            hooks,
            started,
        )?;
        out.stats.weight_bytes_per_token = Some(self.model.text().decode_weight_bytes() as f64);
        Ok(Generation::answer(out))
    }
}
