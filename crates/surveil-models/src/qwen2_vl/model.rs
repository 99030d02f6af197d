//! [`Qwen2VlModel`]: vision tower + text decoder, prompt preparation (image embeddings placed
//! on the `<|image_pad|>` tokens, M-RoPE positions), and generation with a KV cache.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::config::Qwen2VlConfig;
use super::rope_index::{rope_index, RopeIndex, VisionTokens};
use super::text::{KvCache, Logits, TextModel};
use super::vision::{GridThw, VisionTower};
use crate::generation::{Sampling, TokenSampler};
use crate::weights::Weights;
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

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// Upper bound on new tokens.
    pub max_new_tokens: usize,
    /// Greedy or temperature + top-p.
    pub sampling: Sampling,
    /// Seed of the sampler (ignored for greedy).
    pub seed: u64,
    /// Token ids that end generation (the stop token is included in the output).
    pub stop_tokens: Vec<u32>,
}

impl GenerationParams {
    /// Greedy decoding of up to `max_new_tokens`, stopping at `stop_tokens`.
    pub fn greedy(max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was produced (it is the last output token).
    StopToken(u32),
    /// `max_new_tokens` were produced.
    MaxNewTokens,
    /// The context (`max_position_embeddings`) is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// Timings of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens produced.
    pub generated_tokens: usize,
    /// Vision tower time (seconds).
    pub vision_s: f64,
    /// Decoder prefill time (seconds).
    pub prefill_s: f64,
    /// From the call to the first sampled token (vision + prefill + sampling), seconds.
    pub time_to_first_token_s: f64,
    /// Time of the incremental decode steps (after the first token), seconds.
    pub decode_s: f64,
    /// Decode speed: tokens after the first divided by `decode_s`.
    pub decode_tokens_per_s: f64,
    /// Wall time of the whole call, seconds.
    pub total_s: f64,
}

/// Result of [`Qwen2VlModel::generate`].
#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    /// New token ids (including the stop token when one ended generation).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timings.
    pub stats: GenerationStats,
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
    /// `lm_head.weight`), quantizing linear weights as the weights' policy says.
    pub fn load(cfg: &Qwen2VlConfig, w: &Weights) -> Result<Self> {
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

    /// Generate from a prompt. `on_token` is called with each new token as soon as it is
    /// chosen; returning `ControlFlow::Break(())` stops generation.
    pub fn generate(
        &self,
        input: &MultimodalInput,
        params: &GenerationParams,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        let start = Instant::now();
        let _span =
            tracing::info_span!("qwen2_vl_generate", prompt = input.input_ids.len()).entered();
        let mut sampler = TokenSampler::new(params.sampling, params.seed);
        let mut tokens = Vec::new();
        let ctx = self.cfg.text.max_position_embeddings as i64;
        if params.max_new_tokens == 0 {
            self.check_prompt(input)?;
            self.rope_index(input)?;
            return Ok(GenerationOutput {
                tokens,
                stop_reason: StopReason::MaxNewTokens,
                stats: GenerationStats {
                    prompt_tokens: input.input_ids.len(),
                    generated_tokens: 0,
                    vision_s: 0.0,
                    prefill_s: 0.0,
                    time_to_first_token_s: 0.0,
                    decode_s: 0.0,
                    decode_tokens_per_s: 0.0,
                    total_s: start.elapsed().as_secs_f64(),
                },
            });
        }
        let mut state = self.prefill(input, Logits::Last)?;
        let mut position = state.rope.next_position();
        let mut logits = TextModel::last_logits_vec(&state.logits)?;
        let mut ttft = Duration::ZERO;
        let mut decode_start = Instant::now();
        let stop_reason = loop {
            let tok = sampler.sample_slice(&logits)?;
            tokens.push(tok);
            if tokens.len() == 1 {
                ttft = start.elapsed();
                decode_start = Instant::now();
            }
            if on_token(tok).is_break() {
                break StopReason::Cancelled;
            }
            if params.stop_tokens.contains(&tok) {
                break StopReason::StopToken(tok);
            }
            if tokens.len() >= params.max_new_tokens {
                break StopReason::MaxNewTokens;
            }
            if position >= ctx {
                break StopReason::ContextFull;
            }
            let l = self.decode_step(tok, position, &mut state.cache)?;
            logits = TextModel::last_logits_vec(&l)?;
            position += 1;
        };
        let decode_s = if tokens.len() > 1 {
            decode_start.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let stats = GenerationStats {
            prompt_tokens: input.input_ids.len(),
            generated_tokens: tokens.len(),
            vision_s: state.vision_time.as_secs_f64(),
            prefill_s: state.prefill_time.as_secs_f64(),
            time_to_first_token_s: ttft.as_secs_f64(),
            decode_s,
            decode_tokens_per_s: if decode_s > 0.0 {
                (tokens.len() - 1) as f64 / decode_s
            } else {
                0.0
            },
            total_s: start.elapsed().as_secs_f64(),
        };
        tracing::info!(
            generated = stats.generated_tokens,
            ttft_s = stats.time_to_first_token_s,
            tok_per_s = stats.decode_tokens_per_s,
            "qwen2-vl generation done"
        );
        Ok(GenerationOutput {
            tokens,
            stop_reason,
            stats,
        })
    }
}
