//! Kimi-VL behind the model-agnostic [`Vlm`] interface: the Kimi image processor, the chat
//! template of [`super::chat`], MoonViT + projector, the DeepSeek-V3 decoder driven by the
//! shared generation loop, and the `◁think▷ … ◁/think▷` reasoning split of
//! [`crate::generation::thinking`] for the Thinking models.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::chat::{check_image_placeholders, encode_chat, KimiMessage, KimiPrompt};
use super::model::KimiVlModel;
use super::processor::{KimiVlImageProcessor, PackedImages};
use super::tokenizer::{KimiSpecialIds, KimiTokenizer};
use crate::arch::deepseek_v3::{DeepseekV3Cache, Logits};
use crate::generation::thinking::{split_thinking_closed, ThinkingMarkers};
use crate::generation::{generate, DecodeSession, GenerationParams};
use crate::tokenizer::TextTokenizer;
use crate::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};
use crate::{ModelError, Result};

/// A resident Kimi-VL model with its tokenizer and image processor.
pub struct KimiVlm {
    model_id: String,
    kind: VlmKind,
    model: Arc<KimiVlModel>,
    tokenizer: KimiTokenizer,
    processor: KimiVlImageProcessor,
    max_positions: usize,
}

impl std::fmt::Debug for KimiVlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KimiVlm")
            .field("model_id", &self.model_id)
            .field("kind", &self.kind)
            .field("tokenizer", &self.tokenizer)
            .finish_non_exhaustive()
    }
}

/// What a Kimi-VL model id does with the prompt: the `-thinking` models (Kimi-VL-A3B-Thinking,
/// -Thinking-2506) reason first, the others (`-instruct`) answer directly.
pub fn kimi_vlm_kind(model_id: &str) -> VlmKind {
    if model_id.to_ascii_lowercase().contains("thinking") {
        VlmKind::Thinking
    } else {
        VlmKind::Instruction
    }
}

impl KimiVlm {
    /// Wrap a loaded model; the tokenizer is found with [`KimiTokenizer::locate`] from
    /// `checkpoint_dir` (`None` for dummy weights: the asset cache `assets` only).
    ///
    /// # Errors
    /// Tokenizer errors (not found, malformed).
    pub fn load(
        model: Arc<KimiVlModel>,
        model_id: &str,
        checkpoint_dir: Option<&Path>,
        assets: &Path,
    ) -> Result<Self> {
        let tokenizer = KimiTokenizer::load(checkpoint_dir, assets)?;
        Ok(Self::new(model, model_id, tokenizer))
    }

    /// Wrap a loaded model and its tokenizer. A model whose image placeholder id or
    /// vocabulary disagrees with the tokenizer (the tiny test checkpoints) is accepted with a
    /// warning; [`Vlm::analyse`] then refuses it (see [`Self::check_vocabulary`]).
    pub fn new(model: Arc<KimiVlModel>, model_id: &str, tokenizer: KimiTokenizer) -> Self {
        let cfg = model.config();
        let text = model.language_model().config();
        let processor = KimiVlImageProcessor {
            patch_size: cfg.vision.patch_size,
            merge_kernel_size: cfg.vision.merge_kernel_size,
            ..KimiVlImageProcessor::default()
        };
        let vlm = Self {
            model_id: model_id.to_string(),
            kind: kimi_vlm_kind(model_id),
            max_positions: text.max_position_embeddings,
            model,
            tokenizer,
            processor,
        };
        if let Err(e) = vlm.check_vocabulary() {
            tracing::warn!(model = model_id, "{e}");
        }
        vlm
    }

    /// Check that the model can take this tokenizer's prompts: its `media_placeholder_token_id`
    /// is `<|media_pad|>` and its embedding has a row for every id of the tokenizer.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the disagreeing values.
    pub fn check_vocabulary(&self) -> Result<()> {
        let placeholder = self.model.config().media_placeholder_token_id;
        let rows = self.model.language_model().config().vocab_size;
        let ids = self.tokenizer.vocabulary().map_or(0, |v| v.len());
        let reason = if placeholder != KimiSpecialIds::MEDIA_PAD {
            format!(
                "media_placeholder_token_id is {placeholder}, the tokenizer's <|media_pad|> is {}",
                KimiSpecialIds::MEDIA_PAD
            )
        } else if rows < ids {
            format!("vocab_size {rows} is smaller than the tokenizer's {ids} ids")
        } else {
            return Ok(());
        };
        Err(ModelError::Config {
            path: format!("{} config.json", self.model_id).into(),
            reason: format!("{reason}: this checkpoint cannot take Kimi-VL prompts"),
        })
    }

    /// The model.
    pub fn model(&self) -> &KimiVlModel {
        &self.model
    }

    /// The image processor.
    pub fn processor(&self) -> &KimiVlImageProcessor {
        &self.processor
    }

    /// The conversation of `request`: the system text when given (else the template's default
    /// system turn), then a user turn with the images followed by the prompt.
    pub fn messages(request: &VlmRequest<'_>) -> Vec<KimiMessage> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = request.system {
            messages.push(KimiMessage::system(system));
        }
        messages.push(KimiMessage::user_with_images(
            request.images.len(),
            request.prompt,
        ));
        messages
    }

    /// Preprocess the images of `request` and render its prompt (with the generation prompt).
    ///
    /// # Errors
    /// Image processing, template and tokenizer errors.
    pub fn build_prompt(
        &self,
        request: &VlmRequest<'_>,
    ) -> Result<(KimiPrompt, Option<PackedImages>)> {
        let packed = self.preprocess(request.images)?;
        let grids = packed.as_ref().map_or(&[][..], |p| p.grids.as_slice());
        let prompt = encode_chat(
            &self.tokenizer,
            &Self::messages(request),
            grids,
            self.processor.merge_kernel_size,
            true,
        )?;
        Ok((prompt, packed))
    }

    fn preprocess(&self, images: &[RgbImage]) -> Result<Option<PackedImages>> {
        if images.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.processor
                .preprocess_images(images, self.model.device())?,
        ))
    }
}

impl Vlm for KimiVlm {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn kind(&self) -> VlmKind {
        self.kind
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
        let _span = tracing::info_span!("kimi_vl_analyse", model = %self.model_id).entered();
        self.check_vocabulary()?;
        let (prompt, images) = self.build_prompt(request)?;
        let mut session = KimiSession::new(self, &prompt, images.as_ref())?;
        let stop = self.tokenizer.stop_token_ids();
        let mut out = generate(
            &mut session,
            Some(&self.tokenizer),
            params,
            &stop,
            hooks,
            started,
        )?;
        let lm = self.model.language_model();
        out.stats.routed_expert_bytes_total = Some(lm.routed_expert_bytes());
        if session.decode_steps > 0 {
            let routed = session.decode_expert_bytes as f64 / session.decode_steps as f64;
            out.stats.routed_expert_bytes_per_token = Some(routed);
            out.stats.weight_bytes_per_token = Some(lm.dense_weight_bytes() as f64 + routed);
        }
        drop(session);
        Ok(match self.kind {
            VlmKind::Thinking => {
                let split = split_thinking_closed(&out.text, ThinkingMarkers::KIMI);
                Generation::thinking(out, split)
            }
            VlmKind::Instruction | VlmKind::Captioner => Generation::answer(out).trimmed(),
        })
    }
}

/// One Kimi-VL prompt being decoded: its ids, packed images, image features once the vision
/// tower ran, and the decoder's KV cache.
struct KimiSession<'a> {
    model: &'a KimiVlModel,
    ids: &'a [u32],
    images: Option<&'a PackedImages>,
    features: Option<Tensor>,
    cache: DeepseekV3Cache,
    max_positions: usize,
    /// Routed-expert weight bytes read by the decode steps, and their number.
    decode_expert_bytes: u64,
    decode_steps: u64,
}

impl<'a> KimiSession<'a> {
    fn new(
        vlm: &'a KimiVlm,
        prompt: &'a KimiPrompt,
        images: Option<&'a PackedImages>,
    ) -> Result<Self> {
        let ids = prompt.input_ids.as_slice();
        if ids.is_empty() {
            return Err(ModelError::InvalidInput("empty prompt".into()));
        }
        if ids.len() >= vlm.max_positions {
            return Err(ModelError::InvalidInput(format!(
                "the prompt has {} tokens, the context holds {}",
                ids.len(),
                vlm.max_positions
            )));
        }
        check_image_placeholders(ids, &prompt.image_tokens)?;
        Ok(Self {
            model: &vlm.model,
            ids,
            images,
            features: None,
            cache: vlm.model.new_cache(),
            max_positions: vlm.max_positions,
            decode_expert_bytes: 0,
            decode_steps: 0,
        })
    }
}

/// The last row of logits `(1, s, vocab)` as f32.
fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    let (_, s, _) = logits.dims3()?;
    let row = logits.narrow(1, s.saturating_sub(1), 1)?;
    Ok(row.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

impl DecodeSession for KimiSession<'_> {
    fn prompt_tokens(&self) -> usize {
        self.ids.len()
    }

    fn encode_images(&mut self) -> Result<()> {
        if let Some(images) = self.images {
            self.features = Some(
                self.model
                    .image_features(&images.pixel_values, &images.grids)?,
            );
        }
        Ok(())
    }

    fn prefill(&mut self) -> Result<Vec<f32>> {
        if self.features.is_none() {
            self.encode_images()?;
        }
        let embeds = self.model.splice(self.ids, self.features.take().as_ref())?;
        let logits = self
            .model
            .language_model()
            .forward(&embeds, &mut self.cache, Logits::Last)?;
        last_row(&logits)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let lm = self.model.language_model();
        let before = lm.routed_expert_bytes_read();
        let logits = last_row(&self.model.decode_step(token, &mut self.cache)?)?;
        self.decode_expert_bytes += lm.routed_expert_bytes_read().saturating_sub(before);
        self.decode_steps += 1;
        Ok(logits)
    }

    fn remaining_context(&self) -> usize {
        self.max_positions.saturating_sub(self.cache.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_follows_the_model_id() {
        assert_eq!(kimi_vlm_kind("kimi-vl-a3b-thinking"), VlmKind::Thinking);
        assert_eq!(
            kimi_vlm_kind("kimi-vl-a3b-thinking-2506"),
            VlmKind::Thinking
        );
        assert_eq!(kimi_vlm_kind("kimi-vl-a3b-instruct"), VlmKind::Instruction);
    }

    #[test]
    fn request_becomes_system_and_user_turns() {
        let images = [RgbImage::new(28, 28)];
        let req = VlmRequest {
            images: &images,
            system: None,
            prompt: "What happens?",
        };
        let m = KimiVlm::messages(&req);
        assert_eq!(m, vec![KimiMessage::user_with_images(1, "What happens?")]);
        let req = VlmRequest {
            system: Some("Be brief."),
            ..req
        };
        let m = KimiVlm::messages(&req);
        assert_eq!(m[0], KimiMessage::system("Be brief."));
        assert_eq!(m.len(), 2);
    }
}
