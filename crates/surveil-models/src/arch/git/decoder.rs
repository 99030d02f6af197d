//! The BERT-style text decoder of GIT (`git.embeddings`, `git.encoder`): embeddings
//! `LayerNorm(word + position)`, then post-LN transformer layers over the concatenation
//! `[image tokens, text tokens]` with GIT's mask, and a key/value cache.

use candle_core::{Device, Tensor};

use super::config::{Activation, GitConfig};
use super::ops::{attention, linear_act, merge_heads, split_qkv, DecoderMask};
use crate::layers::kernels::KeyMask;
use crate::layers::{Embedding, KvCache, LayerKvCache, LayerNorm, Linear};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// Names and shapes of the decoder's tensors, relative to `git`.
pub(crate) fn decoder_layout(cfg: &GitConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let mut out = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![cfg.max_position_embeddings, h],
        ),
        ("embeddings.LayerNorm.weight".to_string(), vec![h]),
        ("embeddings.LayerNorm.bias".to_string(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("encoder.layer.{l}");
        for proj in ["query", "key", "value"] {
            out.push((format!("{pre}.attention.self.{proj}.weight"), vec![h, h]));
            out.push((format!("{pre}.attention.self.{proj}.bias"), vec![h]));
        }
        out.push((format!("{pre}.attention.output.dense.weight"), vec![h, h]));
        out.push((format!("{pre}.attention.output.dense.bias"), vec![h]));
        out.push((format!("{pre}.attention.output.LayerNorm.weight"), vec![h]));
        out.push((format!("{pre}.attention.output.LayerNorm.bias"), vec![h]));
        out.push((format!("{pre}.intermediate.dense.weight"), vec![i, h]));
        out.push((format!("{pre}.intermediate.dense.bias"), vec![i]));
        out.push((format!("{pre}.output.dense.weight"), vec![h, i]));
        out.push((format!("{pre}.output.dense.bias"), vec![h]));
        out.push((format!("{pre}.output.LayerNorm.weight"), vec![h]));
        out.push((format!("{pre}.output.LayerNorm.bias"), vec![h]));
    }
    out
}

/// `LayerNorm(word_embeddings(ids) + position_embeddings(positions))`.
#[derive(Debug, Clone)]
pub(crate) struct TextEmbeddings {
    word: Embedding,
    position: Tensor,
    layer_norm: LayerNorm,
    max_positions: usize,
}

impl TextEmbeddings {
    /// Load from `w` scoped at `git.embeddings`.
    pub(crate) fn load(cfg: &GitConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: Embedding::load(&w.pp("word_embeddings"), cfg.vocab_size, h)?,
            position: w.get(
                &[cfg.max_position_embeddings, h],
                "position_embeddings.weight",
            )?,
            layer_norm: LayerNorm::load(&w.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Embed `ids` `[B, T]` (u32) at text positions `start..start + T`.
    pub(crate) fn forward(&self, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if start + t > self.max_positions {
            return Err(ModelError::InvalidInput(format!(
                "text of {} tokens exceeds max_position_embeddings {}",
                start + t,
                self.max_positions
            )));
        }
        // Word rows come in the activation dtype; the f32 position rows are rounded to it.
        let words = self.word.forward(ids)?;
        let positions = self
            .position
            .narrow(0, start, t)?
            .unsqueeze(0)?
            .to_dtype(words.dtype())?;
        self.layer_norm.forward(&words.broadcast_add(&positions)?)
    }

    /// The word embedding table (for a tied output head).
    pub(crate) fn word_table(&self) -> &Tensor {
        self.word.table()
    }
}

/// One post-LN BERT layer (`git.encoder.layer.N`).
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    /// `query`, `key`, `value` as one matmul.
    qkv: Linear,
    attn_dense: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output_dense: Linear,
    output_norm: LayerNorm,
    heads: usize,
    scale: f64,
    act: Activation,
}

impl DecoderLayer {
    /// Bytes of the linear weights one token's pass reads.
    pub(crate) fn weight_bytes(&self) -> usize {
        [
            &self.qkv,
            &self.attn_dense,
            &self.intermediate,
            &self.output_dense,
        ]
        .iter()
        .map(|l| l.weight_bytes())
        .sum()
    }

    /// Load from `w` scoped at `git.encoder.layer.N`.
    pub(crate) fn load(cfg: &GitConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let sa = w.pp("attention.self");
        let ao = w.pp("attention.output");
        Ok(Self {
            qkv: Linear::load_fused(&sa, h, &[("query", h), ("key", h), ("value", h)], true)?,
            attn_dense: Linear::load(&ao, h, h, true, "dense")?,
            attn_norm: LayerNorm::load(&ao.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            intermediate: Linear::load(&w.pp("intermediate"), h, i, true, "dense")?,
            output_dense: Linear::load(&w.pp("output"), i, h, true, "dense")?,
            output_norm: LayerNorm::load(&w.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((h / cfg.num_attention_heads) as f64).sqrt(),
            act: cfg.hidden_act,
        })
    }

    /// `x` `[B, L, H]` are the new positions; `kv` holds the keys/values of earlier positions
    /// and receives the new ones.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mask: Option<&DecoderMask>,
        kv: Option<&mut LayerKvCache>,
    ) -> Result<Tensor> {
        let (q, mut k, mut v) = split_qkv(&self.qkv.forward(x)?, self.heads)?;
        if let Some(cache) = kv {
            (k, v) = cache.append(&k, &v)?;
        }
        let a = merge_heads(&attention(&q, &k, &v, mask, self.scale)?)?;
        let x = self
            .attn_norm
            .forward(&self.attn_dense.forward_add(&a, x)?)?;
        let h = linear_act(&self.intermediate, &x, self.act)?;
        self.output_norm
            .forward(&self.output_dense.forward_add(&h, &x)?)
    }
}

/// Keys and values of every decoder layer for the positions processed so far: the image tokens
/// (they attend only to each other, so they never change) followed by the text tokens. Buffers
/// are preallocated for a capacity and grow by that capacity again when it is exceeded.
#[derive(Debug)]
pub struct GitCache {
    /// Keys and values `[B, heads, positions, head_dim]` of every layer.
    pub(crate) kv: KvCache,
    pub(crate) image_tokens: usize,
    pub(crate) text_tokens: usize,
    pub(crate) batch: usize,
}

impl GitCache {
    /// An empty cache for a decoder of `layers` layers, with room for `capacity` positions
    /// (image + text) before it has to grow.
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self {
            kv: KvCache::new(layers, 2, capacity.max(1)),
            image_tokens: 0,
            text_tokens: 0,
            batch: 0,
        }
    }

    /// Whether nothing has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.image_tokens + self.text_tokens == 0
    }

    /// Image tokens held.
    pub fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    /// Text tokens held (the next text position).
    pub fn text_tokens(&self) -> usize {
        self.text_tokens
    }

    /// Sequences in the batch (0 while empty).
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// GIT's additive attention mask for `image_new` image tokens followed by `text_new` text tokens,
/// after `past` cached positions: image tokens see all image tokens and no text; text tokens see
/// every image token, all earlier text and themselves. `None` when nothing is masked.
pub(crate) fn decoder_mask(
    past: usize,
    image_new: usize,
    text_new: usize,
    device: &Device,
) -> Result<Option<DecoderMask>> {
    let rows = image_new + text_new;
    let cols = past + rows;
    let visible = |row: usize| {
        if row < image_new {
            past + image_new
        } else {
            past + row + 1
        }
    };
    if (0..rows).all(|r| visible(r) == cols) {
        return Ok(None);
    }
    let mut data = vec![0f32; rows * cols];
    for r in 0..rows {
        for v in &mut data[r * cols + visible(r)..(r + 1) * cols] {
            *v = f32::NEG_INFINITY;
        }
    }
    Ok(Some(DecoderMask {
        additive: Tensor::from_vec(data, (rows, cols), device)?,
        // Row `r` sees `max(past + image_new, past + r + 1)` keys: the rule of `visible`.
        keys: KeyMask::PrefixCausal {
            prefix: past + image_new,
            offset: past,
            period: rows,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_follows_git_rules() {
        let m = decoder_mask(0, 2, 3, &Device::Cpu).unwrap().unwrap();
        assert_eq!(
            m.keys,
            KeyMask::PrefixCausal {
                prefix: 2,
                offset: 0,
                period: 5
            }
        );
        let m: Vec<Vec<f32>> = m.additive.to_vec2().unwrap();
        let ninf = f32::NEG_INFINITY;
        assert_eq!(m[0], vec![0.0, 0.0, ninf, ninf, ninf]);
        assert_eq!(m[1], vec![0.0, 0.0, ninf, ninf, ninf]);
        assert_eq!(m[2], vec![0.0, 0.0, 0.0, ninf, ninf]);
        assert_eq!(m[4], vec![0.0; 5]);
        // one new text token after a cache: sees everything
        assert!(decoder_mask(7, 0, 1, &Device::Cpu).unwrap().is_none());
        // two new text tokens after a cache: causal between them
        let m: Vec<Vec<f32>> = decoder_mask(3, 0, 2, &Device::Cpu)
            .unwrap()
            .unwrap()
            .additive
            .to_vec2()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, 0.0, ninf]);
        assert_eq!(m[1], vec![0.0; 5]);
    }
}
