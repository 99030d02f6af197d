//! [`Qwen2VlModel`]: vision tower + text decoder, prompt preparation (image embeddings placed
//! on the `<|image_pad|>` tokens, M-RoPE positions), and generation with a KV cache.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::config::Qwen2VlConfig;
use super::rope_index::{rope_index, RopeIndex, VisionTokens};
use super::text::TextModel;
use super::vision::{GridThw, VisionTower};
use crate::generation::{DecodeSession, GenerationOutput, GenerationParams};
use crate::layers::{KvCache, Logits};
use crate::load::weights::Weights;
use crate::tokenizer::TextTokenizer;
use crate::vlm::GenerationHooks;
use crate::{ModelError, Result};

/// One prompt with its images and videos, as the processor and tokenizer prepared them.
#[derive(Debug, Clone, Default)]
pub struct MultimodalInput {
    /// Token ids, with `<|image_pad|>` / `<|video_pad|>` repeated once per merged patch.
    pub input_ids: Vec<u32>,
    /// Packed image patches `(patches, 1176)`, all images in prompt order; `None` without images.
    pub pixel_values: Option<Tensor>,
    /// One grid per image, in prompt order.
    pub image_grids: Vec<GridThw>,
    /// Packed video patches `(patches, 1176)`; `None` without videos.
    pub pixel_values_videos: Option<Tensor>,
    /// One grid per video, in prompt order.
    pub video_grids: Vec<GridThw>,
}

/// A prompt after the prefill: the cache and where decoding continues.
pub struct PrefillState {
    /// KV cache holding the prompt.
    pub cache: KvCache,
    /// M-RoPE positions of the prompt.
    pub rope: RopeIndex,
    /// Logits of the prompt (`(1, n, vocab)` with [`Logits::All`], else `(1, 1, vocab)`).
    pub logits: Tensor,
    /// Time spent in the vision tower.
    pub vision_time: Duration,
    /// Time spent in the decoder prefill.
    pub prefill_time: Duration,
}

/// Qwen2-VL for conditional generation.
pub struct Qwen2VlModel {
    cfg: Qwen2VlConfig,
    vision: VisionTower,
    text: TextModel,
    device: Device,
}

impl Qwen2VlModel {
    /// Load every tensor through `w` (scoped at the checkpoint root: `model.*`, `visual.*`,
    /// `lm_head.weight`), quantizing linear weights as the weights' policy says. Every tensor is
    /// checked against [`super::Qwen2VlRoles`].
    pub fn load(cfg: &Qwen2VlConfig, w: &Weights) -> Result<Self> {
        let w = &w.with_rules(std::sync::Arc::new(super::Qwen2VlRoles::new(
            cfg,
            &w.policy(),
        )));
        let _span = tracing::info_span!("qwen2_vl_load", policy = %w.policy().describe()).entered();
        let text = TextModel::load(&cfg.text, cfg.tie_word_embeddings, w)?;
        let vision = VisionTower::load(&cfg.vision, &w.pp("visual"))?;
        let report = w.report();
        tracing::info!(
            tensors = report.tensors_loaded,
            bytes = report.total_bytes(),
            fallbacks = report.fallback_tensors.len(),
            "qwen2-vl loaded"
        );
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            text,
            device: w.device().clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Qwen2VlConfig {
        &self.cfg
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    /// The text decoder.
    pub fn text(&self) -> &TextModel {
        &self.text
    }

    /// Which ids are vision placeholders.
    pub fn vision_tokens(&self) -> VisionTokens {
        VisionTokens {
            image_token_id: self.cfg.image_token_id,
            video_token_id: self.cfg.video_token_id,
            spatial_merge_size: self.cfg.vision.spatial_merge_size,
        }
    }

    /// M-RoPE positions of a prompt (the reference's `get_rope_index`).
    pub fn rope_index(&self, input: &MultimodalInput) -> Result<RopeIndex> {
        rope_index(
            &input.input_ids,
            &input.image_grids,
            &input.video_grids,
            self.vision_tokens(),
        )
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Input embeddings `(1, n, hidden)`: token embeddings with the rows of `<|image_pad|>` /
    /// `<|video_pad|>` tokens replaced by the vision tower's output, in order.
    pub fn input_embeddings(&self, input: &MultimodalInput) -> Result<Tensor> {
        let ids = &input.input_ids;
        let text = self.text.embed(ids)?.squeeze(0)?;
        let mut tables = vec![text];
        let mut index: Vec<u32> = (0..ids.len() as u32).collect();
        let mut offset = ids.len();
        let kinds = [
            (
                self.cfg.image_token_id,
                &input.pixel_values,
                &input.image_grids,
                "image",
            ),
            (
                self.cfg.video_token_id,
                &input.pixel_values_videos,
                &input.video_grids,
                "video",
            ),
        ];
        for (token, pixels, grids, kind) in kinds {
            let slots: Vec<usize> = ids
                .iter()
                .enumerate()
                .filter(|(_, &t)| t == token)
                .map(|(i, _)| i)
                .collect();
            match pixels {
                None if slots.is_empty() && grids.is_empty() => continue,
                None => {
                    return Err(ModelError::InvalidInput(format!(
                    "the prompt has {} {kind} placeholder tokens / {} grids but no {kind} pixels",
                    slots.len(),
                    grids.len()
                )))
                }
                Some(pixels) => {
                    let embeds = self.vision.forward(pixels, grids)?;
                    let rows = embeds.dim(0)?;
                    if rows != slots.len() {
                        return Err(ModelError::InvalidInput(format!(
                            "{kind} features and {kind} tokens do not match: {rows} embeddings for {} placeholder tokens",
                            slots.len()
                        )));
                    }
                    for (k, &slot) in slots.iter().enumerate() {
                        index[slot] = (offset + k) as u32;
                    }
                    offset += rows;
                    tables.push(embeds);
                }
            }
        }
        let table = if tables.len() == 1 {
            tables.remove(0)
        } else {
            Tensor::cat(&tables, 0)?
        };
        let index = Tensor::new(index.as_slice(), self.device())?;
        Ok(table.index_select(&index, 0)?.unsqueeze(0)?)
    }

    /// Check a prompt before any work: non-empty, fits the context with room for one token.
    fn check_prompt(&self, input: &MultimodalInput) -> Result<()> {
        let n = input.input_ids.len();
        if n == 0 {
            return Err(ModelError::InvalidInput(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        let ctx = self.cfg.text.max_position_embeddings;
        if n >= ctx {
            return Err(ModelError::InvalidInput(format!(
                "prompt of {n} tokens does not fit the context of {ctx} tokens (max_position_embeddings)"
            )));
        }
        Ok(())
    }

    /// Vision tower + decoder prefill of a prompt.
    pub fn prefill(&self, input: &MultimodalInput, logits: Logits) -> Result<PrefillState> {
        self.check_prompt(input)?;
        let rope = self.rope_index(input)?;
        let max_pos = rope.next_position() as usize;
        let ctx = self.cfg.text.max_position_embeddings;
        if max_pos >= ctx {
            return Err(ModelError::InvalidInput(format!(
                "prompt reaches position {max_pos}, beyond the context of {ctx}"
            )));
        }
        let t0 = Instant::now();
        let embeds = self.input_embeddings(input)?;
        let vision_time = t0.elapsed();
        let t1 = Instant::now();
        let mut cache = self.text.new_cache();
        let [p0, p1, p2] = &rope.positions;
        let logits = self
            .text
            .forward(&embeds, [p0, p1, p2], &mut cache, logits)?;
        let prefill_time = t1.elapsed();
        tracing::debug!(
            tokens = input.input_ids.len(),
            vision_ms = vision_time.as_millis() as u64,
            prefill_ms = prefill_time.as_millis() as u64,
            "qwen2-vl prefill"
        );
        Ok(PrefillState {
            cache,
            rope,
            logits,
            vision_time,
            prefill_time,
        })
    }

    /// One decode step: feed `token` at M-RoPE position `position` (all three axes); returns
    /// the logits `(1, 1, vocab)` of the next token.
    pub fn decode_step(&self, token: u32, position: i64, cache: &mut KvCache) -> Result<Tensor> {
        let e = self.text.embed(&[token])?;
        let p = [position];
        self.text.forward(&e, [&p, &p, &p], cache, Logits::Last)
    }

    /// A decode session of `input` for the shared generation loop. The prompt is checked
    /// here (non-empty, inside the context, placeholders matching the grids); the vision
    /// tower runs in [`DecodeSession::encode_images`].
    pub fn session<'a>(&'a self, input: &'a MultimodalInput) -> Result<Qwen2VlSession<'a>> {
        self.check_prompt(input)?;
        let rope = self.rope_index(input)?;
        let position = rope.next_position();
        let ctx = self.cfg.text.max_position_embeddings;
        if position as usize >= ctx {
            return Err(ModelError::InvalidInput(format!(
                "prompt reaches position {position}, beyond the context of {ctx}"
            )));
        }
        Ok(Qwen2VlSession {
            model: self,
            input,
            rope,
            embeds: None,
            cache: self.text.new_cache(),
            position,
        })
    }

    /// Generate from a prompt with the shared loop ([`crate::generation::generate`]):
    /// stops at any of `stop_tokens` (left out of the output), after
    /// `params.max_new_tokens`, when the context is full, or when a hook says so. With
    /// `tokenizer`, the hooks and the output get the text of the tokens.
    pub fn generate(
        &self,
        input: &MultimodalInput,
        params: &GenerationParams,
        stop_tokens: &[u32],
        tokenizer: Option<&dyn TextTokenizer>,
        hooks: &mut dyn GenerationHooks,
    ) -> Result<GenerationOutput> {
        let started = Instant::now();
        let _span =
            tracing::info_span!("qwen2_vl_generate", prompt = input.input_ids.len()).entered();
        let mut session = self.session(input)?;
        crate::generation::generate(&mut session, tokenizer, params, stop_tokens, hooks, started)
    }
}

/// One prompt of a [`Qwen2VlModel`] being decoded: input embeddings, M-RoPE positions and the
/// KV cache. Built by [`Qwen2VlModel::session`].
pub struct Qwen2VlSession<'a> {
    model: &'a Qwen2VlModel,
    input: &'a MultimodalInput,
    rope: RopeIndex,
    embeds: Option<Tensor>,
    cache: KvCache,
    /// The M-RoPE position of the next token fed.
    position: i64,
}

impl DecodeSession for Qwen2VlSession<'_> {
    fn prompt_tokens(&self) -> usize {
        self.input.input_ids.len()
    }

    fn encode_images(&mut self) -> Result<()> {
        self.embeds = Some(self.model.input_embeddings(self.input)?);
        Ok(())
    }

    fn prefill(&mut self) -> Result<Vec<f32>> {
        let embeds = match self.embeds.take() {
            Some(e) => e,
            None => self.model.input_embeddings(self.input)?,
        };
        let [p0, p1, p2] = &self.rope.positions;
        let logits =
            self.model
                .text
                .forward(&embeds, [p0, p1, p2], &mut self.cache, Logits::Last)?;
        TextModel::last_logits_vec(&logits)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let logits = self
            .model
            .decode_step(token, self.position, &mut self.cache)?;
        self.position += 1;
        TextModel::last_logits_vec(&logits)
    }

    fn remaining_context(&self) -> usize {
        let ctx = self.model.cfg.text.max_position_embeddings as i64;
        (ctx - self.position).max(0) as usize
    }
}
