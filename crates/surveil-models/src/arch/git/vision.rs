//! The CLIP vision transformer GIT uses as its image encoder (`git.image_encoder.vision_model`).
//!
//! Patch embedding (a stride-`patch` convolution without bias, computed as one matmul over
//! flattened patches), class token, learned positions, `pre_layrnorm`, pre-LN encoder layers with
//! the configured activation (quick-GELU), and `post_layernorm` applied to every token: GIT feeds
//! the whole `last_hidden_state` to the decoder, not the pooled class token.

use candle_core::{DType, Tensor};

use super::config::{Activation, GitVisionConfig};
use super::ops::{attention, linear_act, merge_heads, split_qkv};
use crate::layers::{LayerNorm, Linear};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// Names and shapes of the vision tower's tensors, relative to `vision_model`.
pub(crate) fn vision_layout(cfg: &GitVisionConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let p = cfg.patch_size;
    let mut out = vec![
        ("embeddings.class_embedding".to_string(), vec![d]),
        (
            "embeddings.patch_embedding.weight".to_string(),
            vec![d, cfg.num_channels, p, p],
        ),
        (
            "embeddings.position_embedding.weight".to_string(),
            vec![cfg.num_positions(), d],
        ),
        ("pre_layrnorm.weight".to_string(), vec![d]),
        ("pre_layrnorm.bias".to_string(), vec![d]),
        ("post_layernorm.weight".to_string(), vec![d]),
        ("post_layernorm.bias".to_string(), vec![d]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{pre}.self_attn.{proj}.weight"), vec![d, d]));
            out.push((format!("{pre}.self_attn.{proj}.bias"), vec![d]));
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{pre}.{norm}.weight"), vec![d]));
            out.push((format!("{pre}.{norm}.bias"), vec![d]));
        }
        out.push((format!("{pre}.mlp.fc1.weight"), vec![i, d]));
        out.push((format!("{pre}.mlp.fc1.bias"), vec![i]));
        out.push((format!("{pre}.mlp.fc2.weight"), vec![d, i]));
        out.push((format!("{pre}.mlp.fc2.bias"), vec![d]));
    }
    out
}

/// One pre-LN CLIP encoder layer.
#[derive(Debug, Clone)]
struct VisionLayer {
    layer_norm1: LayerNorm,
    /// `q_proj`, `k_proj`, `v_proj` as one matmul.
    qkv: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    scale: f64,
    act: Activation,
}

impl VisionLayer {
    fn load(cfg: &GitVisionConfig, w: &Weights) -> Result<Self> {
        let d = cfg.hidden_size;
        let attn = w.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            qkv: Linear::load_fused(
                &attn,
                d,
                &[("q_proj", d), ("k_proj", d), ("v_proj", d)],
                true,
            )?,
            out_proj: Linear::load(&attn, d, d, true, "out_proj")?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
            fc1: Linear::load(&w.pp("mlp"), d, cfg.intermediate_size, true, "fc1")?,
            fc2: Linear::load(&w.pp("mlp"), cfg.intermediate_size, d, true, "fc2")?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((d / cfg.num_attention_heads) as f64).sqrt(),
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layer_norm1.forward(x)?;
        let (q, k, v) = split_qkv(&self.qkv.forward(&h)?, self.heads)?;
        let a = merge_heads(&attention(&q, &k, &v, None, self.scale)?)?;
        let x = self.out_proj.forward_add(&a, x)?;
        let h = self.layer_norm2.forward(&x)?;
        let h = linear_act(&self.fc1, &h, self.act)?;
        self.fc2.forward_add(&h, &x)
    }
}

/// The CLIP ViT image encoder.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    class_embedding: Tensor,
    /// Patch convolution as a matmul weight, `[C·p·p, D]`.
    patch_weight_t: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    cfg: GitVisionConfig,
    /// The activation dtype of the encoder layers ([`Weights::activation_dtype`]).
    dtype: DType,
}

impl VisionTransformer {
    /// Load from `w` scoped at `...vision_model`.
    pub fn load(cfg: &GitVisionConfig, w: &Weights) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = w.pp("embeddings");
        let patch = emb.get(&[d, cfg.num_channels, p, p], "patch_embedding.weight")?;
        let patch_weight_t = patch
            .reshape((d, cfg.num_channels * p * p))?
            .t()?
            .contiguous()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| VisionLayer::load(cfg, &w.pp(format!("encoder.layers.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            class_embedding: emb.get(&[d], "class_embedding")?,
            patch_weight_t,
            position_embedding: emb.get(&[cfg.num_positions(), d], "position_embedding.weight")?,
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), d, cfg.layer_norm_eps)?,
            layers,
            post_layernorm: LayerNorm::load(&w.pp("post_layernorm"), d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
            dtype: w.activation_dtype(),
        })
    }

    /// `pixel_values` `[B, C, S, S]` (normalised, S = `image_size`) → `last_hidden_state`
    /// after `post_layernorm`, `[B, 1 + patches, D]` in the activation dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, h, w) = pixel_values.dims4().map_err(|_| {
            ModelError::InvalidInput(format!(
                "pixel_values must be [batch, channels, height, width], got {:?}",
                pixel_values.dims()
            ))
        })?;
        if c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            return Err(ModelError::InvalidInput(format!(
                "pixel_values {:?} do not match the vision config ({} channels, {}x{} pixels)",
                pixel_values.dims(),
                cfg.num_channels,
                cfg.image_size,
                cfg.image_size
            )));
        }
        if b == 0 {
            return Err(ModelError::InvalidInput("empty batch of images".into()));
        }
        let (p, g, d) = (cfg.patch_size, cfg.grid(), cfg.hidden_size);
        // [B, C, g, p, g, p] → [B, g, g, C, p, p]: one row per patch in (c, ky, kx) order, the
        // order of the convolution weight.
        let patches = pixel_values
            .to_dtype(DType::F32)?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patch_embeds = patches
            .matmul(&self.patch_weight_t)?
            .reshape((b, g * g, d))?;
        let class = self.class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[&class, &patch_embeds], 1)?;
        // Patch and position embeddings in f32 (their weights'), the layers in the activation
        // dtype.
        let x = x
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?
            .to_dtype(self.dtype)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x)
    }
}
