//! [`GitModel`]: `GitForCausalLM` — vision tower, visual projection, text decoder, output head,
//! and generation with a key/value cache: one image through the shared loop
//! ([`GitModel::session`], [`crate::generation::generate`]), a batch of images in lockstep
//! ([`GitModel::generate`]) with the same stop rule.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Tensor};

use super::config::GitConfig;
use super::decoder::{decoder_layout, decoder_mask, DecoderLayer, GitCache, TextEmbeddings};
use super::vision::{vision_layout, VisionTransformer};
use crate::generation::{DecodeSession, TokenSampler};
use crate::layers::{LayerNorm, Linear};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// Prefix of the vision tower inside the checkpoint.
const VISION_PREFIX: &str = "git.image_encoder.vision_model";
/// Prefix of the visual projection (`nn.Sequential(Linear, LayerNorm)`).
const PROJECTION_PREFIX: &str = "git.visual_projection.visual_projection";

/// GIT for captioning (`GitForCausalLM`).
#[derive(Debug, Clone)]
pub struct GitModel {
    cfg: GitConfig,
    vision: VisionTransformer,
    projection: Linear,
    projection_norm: LayerNorm,
    embeddings: TextEmbeddings,
    layers: Vec<DecoderLayer>,
    /// The language-model head: its own `output.weight` (row-padded for the tiled kernels) or
    /// the tied word embeddings.
    output: Linear,
}

impl GitModel {
    /// Every tensor of a `GitForCausalLM` checkpoint with its shape, with the Hub names
    /// (`git.*`, `output.*`): for dummy weights and size estimates. A tied head
    /// (`tie_word_embeddings`) has no `output.weight`.
    pub fn tensor_layout(cfg: &GitConfig) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let vh = cfg.vision_config.hidden_size;
        let mut out: Vec<(String, Vec<usize>)> = vision_layout(&cfg.vision_config)
            .into_iter()
            .map(|(name, shape)| (format!("{VISION_PREFIX}.{name}"), shape))
            .collect();
        out.extend(
            decoder_layout(cfg)
                .into_iter()
                .map(|(name, shape)| (format!("git.{name}"), shape)),
        );
        out.push((format!("{PROJECTION_PREFIX}.0.weight"), vec![h, vh]));
        out.push((format!("{PROJECTION_PREFIX}.0.bias"), vec![h]));
        out.push((format!("{PROJECTION_PREFIX}.1.weight"), vec![h]));
        out.push((format!("{PROJECTION_PREFIX}.1.bias"), vec![h]));
        if !cfg.tie_word_embeddings {
            out.push(("output.weight".to_string(), vec![cfg.vocab_size, h]));
        }
        out.push(("output.bias".to_string(), vec![cfg.vocab_size]));
        out
    }

    /// Load every tensor through `w` (scoped at the checkpoint root), each checked against
    /// [`super::GitRoles`].
    pub fn load(cfg: &GitConfig, w: &Weights) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "<GitConfig>".into(),
            reason,
        })?;
        let w = &w.with_rules(std::sync::Arc::new(super::GitRoles));
        let h = cfg.hidden_size;
        let vh = cfg.vision_config.hidden_size;
        let _span = tracing::info_span!("git_load", layers = cfg.num_hidden_layers).entered();
        let vision = VisionTransformer::load(&cfg.vision_config, &w.pp(VISION_PREFIX))?;
        let proj = w.pp(PROJECTION_PREFIX);
        let projection = Linear::load(&proj, vh, h, true, "0")?;
        let projection_norm = LayerNorm::load(&proj.pp("1"), h, cfg.vision_config.layer_norm_eps)?;
        let embeddings = TextEmbeddings::load(cfg, &w.pp("git.embeddings"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| DecoderLayer::load(cfg, &w.pp(format!("git.encoder.layer.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        let output = if cfg.tie_word_embeddings {
            let table = embeddings.word_table();
            let weight = match table.dtype() {
                DType::F16 => QMatMul::TensorF16(table.clone()),
                _ => QMatMul::Tensor(table.to_dtype(DType::F32)?),
            };
            Linear::new(weight, Some(w.get(&[cfg.vocab_size], "output.bias")?))
        } else {
            Linear::load_fused(w, h, &[("output", cfg.vocab_size)], true)?
        };
        tracing::debug!(tensors = w.report().tensors_loaded, "git loaded");
        Ok(Self {
            cfg: cfg.clone(),
            vision,
            projection,
            projection_norm,
            embeddings,
            layers,
            output,
        })
    }

    /// Weight bytes one decoded token reads: every decoder layer's linear weights and the
    /// output head (the image tokens' keys and values are cached; the vision tower, the
    /// embeddings and the norms are not counted). Bandwidth divided by this is the decode
    /// speed limit.
    pub fn decode_weight_bytes(&self) -> u64 {
        let layers: usize = self.layers.iter().map(DecoderLayer::weight_bytes).sum();
        (layers + self.output.weight_bytes()) as u64
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &GitConfig {
        &self.cfg
    }

    /// Image tokens per image in the decoder sequence.
    pub fn num_image_tokens(&self) -> usize {
        self.cfg.num_image_tokens()
    }

    /// Vision tower output (after `post_layernorm`, all tokens): `[B, n_img, vision hidden]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("git_vision").entered();
        self.vision.forward(pixel_values)
    }

    /// The visual projection (Linear + LayerNorm) of [`Self::image_features`]:
    /// `[B, n_img, hidden]`, the image tokens the decoder sees.
    pub fn project_image_features(&self, features: &Tensor) -> Result<Tensor> {
        self.projection_norm
            .forward(&self.projection.forward(features)?)
    }

    /// Projected image tokens for `pixel_values` `[B, C, S, S]`.
    pub fn image_embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.project_image_features(&self.image_features(pixel_values)?)
    }

    /// Logits of every position (f32), without a cache: `[B, n_img + T, vocab]` for `pixel_values`
    /// `[B, C, S, S]` and `input_ids` `[B, T]` (the first `n_img` rows are image positions).
    pub fn forward(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
        let image = self.image_embeddings(pixel_values)?;
        let hidden = self.decode(Some(&image), input_ids, None)?;
        Ok(self.output.forward(&hidden)?.to_dtype(DType::F32)?)
    }

    /// A fresh key/value cache for [`Self::prefill`] / [`Self::step`], with room for the image
    /// tokens and `text_tokens` text positions (it grows beyond that if needed).
    pub fn new_cache(&self, text_tokens: usize) -> GitCache {
        GitCache::new(self.layers.len(), self.num_image_tokens() + text_tokens)
    }

    /// Start decoding: run the image tokens `image_embeds` `[B, n_img, hidden]` (from
    /// [`Self::image_embeddings`]) and the prompt `input_ids` `[B, T]` through the decoder,
    /// filling the empty `cache`. Returns the logits of the last position, `[B, vocab]` f32.
    pub fn prefill(
        &self,
        image_embeds: &Tensor,
        input_ids: &Tensor,
        cache: &mut GitCache,
    ) -> Result<Tensor> {
        if !cache.is_empty() {
            return Err(ModelError::InvalidInput(
                "prefill needs an empty cache (image tokens come first)".into(),
            ));
        }
        let hidden = self.decode(Some(image_embeds), input_ids, Some(cache))?;
        self.last_logits(&hidden)
    }

    /// Continue decoding with `input_ids` `[B, T]` (usually T = 1: the token just chosen).
    /// Returns the logits of the last position, `[B, vocab]` f32.
    pub fn step(&self, input_ids: &Tensor, cache: &mut GitCache) -> Result<Tensor> {
        if cache.is_empty() {
            return Err(ModelError::InvalidInput(
                "step needs a cache filled by prefill".into(),
            ));
        }
        let hidden = self.decode(None, input_ids, Some(cache))?;
        self.last_logits(&hidden)
    }

    fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let len = hidden.dim(1)?;
        let last = hidden.narrow(1, len - 1, 1)?.squeeze(1)?;
        Ok(self.output.forward(&last)?.to_dtype(DType::F32)?)
    }

    /// Run the decoder over `[image tokens?, text tokens]`, returning the hidden states of the
    /// new positions.
    fn decode(
        &self,
        image: Option<&Tensor>,
        input_ids: &Tensor,
        mut cache: Option<&mut GitCache>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2().map_err(|_| {
            ModelError::InvalidInput(format!(
                "input_ids must be [batch, tokens], got {:?}",
                input_ids.dims()
            ))
        })?;
        if t == 0 {
            return Err(ModelError::InvalidInput("no input tokens".into()));
        }
        self.check_ids(input_ids)?;
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let (past_image, past_text) = cache
            .as_ref()
            .map_or((0, 0), |c| (c.image_tokens, c.text_tokens));
        if let Some(c) = cache.as_ref() {
            if !c.is_empty() && c.batch != b {
                return Err(ModelError::InvalidInput(format!(
                    "batch of {b} sequences does not match the cache's {}",
                    c.batch
                )));
            }
        }
        let text = self.embeddings.forward(&input_ids, past_text)?;
        let (x, image_new) = match image {
            Some(img) => {
                let (ib, n, _) = img.dims3()?;
                if ib != b {
                    return Err(ModelError::InvalidInput(format!(
                        "{ib} images for {b} token sequences"
                    )));
                }
                (Tensor::cat(&[img, &text], 1)?, n)
            }
            None => (text, 0),
        };
        let mask = decoder_mask(past_image + past_text, image_new, t, x.device())?;
        let mut x = x;
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.kv.layers_mut()[l]);
            x = layer.forward(&x, mask.as_ref(), slot)?;
        }
        if let Some(c) = cache {
            c.image_tokens += image_new;
            c.text_tokens += t;
            c.batch = b;
        }
        Ok(x)
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let ids = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id < 0 || id as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// A decode session of one image `pixel_values` `[1, C, S, S]` and the prompt
    /// `prompt_ids` (usually `[bos]`) for the shared generation loop
    /// ([`crate::generation::generate`]). The vision tower runs in
    /// [`DecodeSession::encode_images`].
    pub fn session(&self, pixel_values: Tensor, prompt_ids: &[u32]) -> Result<GitSession<'_>> {
        let b = pixel_values.dim(0)?;
        if b != 1 {
            return Err(ModelError::InvalidInput(format!(
                "a decode session takes one image, got a batch of {b}"
            )));
        }
        self.check_prompt(prompt_ids)?;
        Ok(GitSession {
            model: self,
            pixel_values,
            image: None,
            prompt: prompt_ids.to_vec(),
            cache: self.new_cache(prompt_ids.len()),
        })
    }

    fn check_prompt(&self, prompt_ids: &[u32]) -> Result<()> {
        if prompt_ids.is_empty() {
            return Err(ModelError::InvalidInput(
                "the prompt needs at least one token (bos)".into(),
            ));
        }
        let max_positions = self.cfg.max_position_embeddings;
        if prompt_ids.len() > max_positions {
            return Err(ModelError::InvalidInput(format!(
                "prompt of {} tokens exceeds max_position_embeddings {max_positions}",
                prompt_ids.len()
            )));
        }
        Ok(())
    }

    /// Generate up to `max_new_tokens` tokens after `prompt_ids` (usually `[bos]`) for each
    /// image of `pixel_values` `[B, C, S, S]`, with the image tokens and text in a key/value
    /// cache, all sequences in lockstep. The stop rule is the shared loop's
    /// ([`crate::generation::generate`]): a sequence ends at `stop_token` (not included in its
    /// output), after `max_new_tokens`, or when the next token would have no text position
    /// left (`max_position_embeddings`); with `None` every sequence gets `max_new_tokens`
    /// tokens (context permitting). Returns the new tokens per image.
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        prompt_ids: &[u32],
        max_new_tokens: usize,
        sampler: &mut TokenSampler,
        stop_token: Option<u32>,
    ) -> Result<Vec<Vec<u32>>> {
        let image = self.image_embeddings(pixel_values)?;
        self.generate_from_embeddings(&image, prompt_ids, max_new_tokens, sampler, stop_token)
    }

    /// [`Self::generate`] from projected image tokens `[B, n_img, hidden]`
    /// ([`Self::image_embeddings`]).
    pub fn generate_from_embeddings(
        &self,
        image: &Tensor,
        prompt_ids: &[u32],
        max_new_tokens: usize,
        sampler: &mut TokenSampler,
        stop_token: Option<u32>,
    ) -> Result<Vec<Vec<u32>>> {
        self.check_prompt(prompt_ids)?;
        let max_positions = self.cfg.max_position_embeddings;
        // The last new token is never fed back, so the text may grow to max_positions + 1.
        let room = max_positions + 1 - prompt_ids.len();
        if max_new_tokens > room {
            tracing::warn!(
                max_new_tokens,
                room,
                "max_new_tokens capped by max_position_embeddings"
            );
        }
        let max_new_tokens = max_new_tokens.min(room);
        let b = image.dim(0)?;
        let _span = tracing::debug_span!("git_generate", batch = b, max_new_tokens).entered();
        let device = image.device().clone();
        let prompt = Tensor::new(prompt_ids, &device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let mut out = vec![Vec::with_capacity(max_new_tokens); b];
        if max_new_tokens == 0 {
            return Ok(out);
        }
        let mut cache = self.new_cache(prompt_ids.len() + max_new_tokens);
        let mut logits = self.prefill(image, &prompt, &mut cache)?;
        let mut done = vec![false; b];
        // Finished sequences keep the batch in step by feeding this token; outputs are ignored.
        let filler = stop_token.unwrap_or(self.cfg.pad_token_id);
        for n in 0..max_new_tokens {
            let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            let mut next = Vec::with_capacity(b);
            for (i, row) in rows.iter().enumerate() {
                if done[i] {
                    next.push(filler);
                    continue;
                }
                let token = sampler.sample_slice(row)?;
                if Some(token) == stop_token {
                    done[i] = true;
                } else {
                    out[i].push(token);
                }
                next.push(token);
            }
            if done.iter().all(|&d| d) || n + 1 == max_new_tokens {
                break;
            }
            let next = Tensor::from_vec(next, (b, 1), &device)?;
            logits = self.step(&next, &mut cache)?;
        }
        Ok(out)
    }
}

/// One image and prompt of a [`GitModel`] being decoded: the image tokens, then the text, in a
/// key/value cache. Built by [`GitModel::session`].
pub struct GitSession<'a> {
    model: &'a GitModel,
    pixel_values: Tensor,
    image: Option<Tensor>,
    prompt: Vec<u32>,
    cache: GitCache,
}

impl GitSession<'_> {
    fn logits_row(logits: &Tensor) -> Result<Vec<f32>> {
        Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }
}

impl DecodeSession for GitSession<'_> {
    fn prompt_tokens(&self) -> usize {
        self.model.num_image_tokens() + self.prompt.len()
    }

    fn encode_images(&mut self) -> Result<()> {
        self.image = Some(self.model.image_embeddings(&self.pixel_values)?);
        Ok(())
    }

    fn prefill(&mut self) -> Result<Vec<f32>> {
        let image = match self.image.take() {
            Some(i) => i,
            None => self.model.image_embeddings(&self.pixel_values)?,
        };
        let device = image.device().clone();
        let prompt = Tensor::new(self.prompt.as_slice(), &device)?.unsqueeze(0)?;
        let logits = self.model.prefill(&image, &prompt, &mut self.cache)?;
        Self::logits_row(&logits)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let next = Tensor::new(&[[token]], self.pixel_values.device())?;
        let logits = self.model.step(&next, &mut self.cache)?;
        Self::logits_row(&logits)
    }

    fn remaining_context(&self) -> usize {
        // Text positions count from 0 after the image tokens.
        self.model
            .cfg
            .max_position_embeddings
            .saturating_sub(self.cache.text_tokens())
    }
}
