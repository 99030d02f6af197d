//! The Qwen2-VL vision tower: Conv3d patch embedding (as a matmul), 2-D rotary positions,
//! transformer blocks whose attention stays inside each image (or each temporal slice of a
//! video), and the 2×2 patch merger that projects to the text width.
//!
//! Images of different sizes are packed one after another in a single `(patches, 1176)` tensor
//! (the processor's row order); nothing is padded to a common size.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::config::VisionConfig;
use crate::layers::kernels::{packed_rope_attention, Activation, AttentionPrecision, RopeLayout};
use crate::layers::{LayerNorm, Linear};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// Size of one image or video in 14-px patches before the 2×2 merge: `[t, h, w]` as in the
/// reference's `image_grid_thw` / `video_grid_thw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GridThw {
    /// Temporal patches (1 for an image, frames / 2 for a video).
    pub t: usize,
    /// Patch rows.
    pub h: usize,
    /// Patch columns.
    pub w: usize,
}

impl GridThw {
    /// A grid of `t × h × w` patches.
    pub fn new(t: usize, h: usize, w: usize) -> Self {
        Self { t, h, w }
    }

    /// Patches (rows of `pixel_values`) of this image.
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }

    /// Text tokens this image becomes after the `merge × merge` merge.
    pub fn merged_tokens(&self, merge: usize) -> usize {
        self.patches() / (merge * merge)
    }
}

struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    num_heads: usize,
    /// bf16 attention operands where the weights are not f32 ([`AttentionPrecision::for_weights`]).
    precision: AttentionPrecision,
}

impl VisionBlock {
    fn load(cfg: &VisionConfig, w: &Weights) -> Result<Self> {
        let e = cfg.embed_dim;
        Ok(Self {
            norm1: LayerNorm::load(&w.pp("norm1"), e, 1e-6)?,
            norm2: LayerNorm::load(&w.pp("norm2"), e, 1e-6)?,
            qkv: Linear::load(&w.pp("attn"), e, 3 * e, true, "qkv")?,
            proj: Linear::load(&w.pp("attn"), e, e, true, "proj")?,
            fc1: Linear::load(&w.pp("mlp"), e, cfg.mlp_hidden(), true, "fc1")?,
            fc2: Linear::load(&w.pp("mlp"), cfg.mlp_hidden(), e, true, "fc2")?,
            num_heads: cfg.num_heads,
            precision: AttentionPrecision::for_weights(w.policy().linear),
        })
    }

    /// `x`: `(n, E)`; `cos`/`sin`: `(n, head_dim/2)`; `segments`: `(start, len)` row ranges that
    /// attend only among themselves.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[(usize, usize)],
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        let attn = packed_rope_attention(
            &qkv,
            self.num_heads,
            cos,
            sin,
            RopeLayout::Halves,
            segments,
            self.precision,
        )?;
        let x = self.proj.forward_add(&attn, x)?;
        let hdn = self
            .fc1
            .forward_act(&self.norm2.forward(&x)?, Activation::QuickGelu)?;
        self.fc2.forward_add(&hdn, &x)
    }
}

struct PatchMerger {
    ln_q: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    unit_dim: usize,
}

impl PatchMerger {
    fn load(cfg: &VisionConfig, w: &Weights) -> Result<Self> {
        let m = cfg.embed_dim * cfg.merge_unit();
        Ok(Self {
            ln_q: LayerNorm::load(&w.pp("ln_q"), cfg.embed_dim, 1e-6)?,
            fc1: Linear::load(&w.pp("mlp"), m, m, true, "0")?,
            fc2: Linear::load(&w.pp("mlp"), m, cfg.out_hidden_size, true, "2")?,
            unit_dim: m,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let x = self
            .ln_q
            .forward(x)?
            .reshape((n * x.dim(1)? / self.unit_dim, self.unit_dim))?;
        let x = self.fc1.forward(&x)?.gelu_erf()?;
        self.fc2.forward(&x)
    }
}

/// The vision tower: pixel patches → image embeddings in the text width.
pub struct VisionTower {
    cfg: VisionConfig,
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    inv_freq: Vec<f32>,
    device: Device,
    /// The activation dtype ([`Weights::activation_dtype`]).
    dtype: DType,
}

/// Output of [`VisionTower::forward_with_hidden`].
pub struct VisionOutput {
    /// Output of the last block, before the merger: `(patches, embed_dim)` in processor order.
    pub last_hidden: Tensor,
    /// Merger output: `(patches / 4, text hidden)`, concatenated over the images in order.
    pub embeds: Tensor,
}

impl VisionTower {
    /// Load from `w` scoped at the tower (`visual`).
    pub fn load(cfg: &VisionConfig, w: &Weights) -> Result<Self> {
        let e = cfg.embed_dim;
        let conv = w.pp("patch_embed.proj").get(
            &[
                e,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ],
            "weight",
        )?;
        let patch_embed = Linear::new(QMatMul::Tensor(conv.reshape((e, cfg.patch_dim()))?), None);
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::load(cfg, &w.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let merger = PatchMerger::load(cfg, &w.pp("merger"))?;
        // VisionRotaryEmbedding(dim = head_dim / 2): dim/2 frequencies per axis.
        let dim = cfg.head_dim() / 2;
        let inv_freq = crate::layers::kernels::rope_inv_freq(dim, cfg.rope_theta);
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            blocks,
            merger,
            inv_freq,
            device: w.device().clone(),
            dtype: w.activation_dtype(),
        })
    }

    /// The configuration this tower was built with.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Check `pixel_values` against `grids`: returns the number of patches.
    fn check(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<usize> {
        let (n, dim) = pixel_values.dims2().map_err(|_| {
            ModelError::InvalidInput(format!(
                "pixel_values must be 2-D, got {:?}",
                pixel_values.dims()
            ))
        })?;
        if dim != self.cfg.patch_dim() {
            return Err(ModelError::InvalidInput(format!(
                "pixel_values rows have {dim} values, expected {}",
                self.cfg.patch_dim()
            )));
        }
        if grids.is_empty() {
            return Err(ModelError::InvalidInput("no image grid given".into()));
        }
        let m = self.cfg.spatial_merge_size;
        for g in grids {
            if g.t == 0 || g.h == 0 || g.w == 0 || g.h % m != 0 || g.w % m != 0 {
                return Err(ModelError::InvalidInput(format!(
                    "grid {g:?} is empty or not divisible by the merge size {m}"
                )));
            }
        }
        let total: usize = grids.iter().map(GridThw::patches).sum();
        if total != n {
            return Err(ModelError::InvalidInput(format!(
                "pixel_values has {n} patches but the grids add up to {total}"
            )));
        }
        Ok(n)
    }

    /// Rotary cos/sin `(patches, head_dim/2)` for the packed images, patches listed 2×2-window
    /// major (the processor's order): angle row = `[row · inv_freq, col · inv_freq]`.
    fn rotary(&self, grids: &[GridThw], n: usize) -> Result<(Tensor, Tensor)> {
        let m = self.cfg.spatial_merge_size;
        let f = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * 2 * f);
        let mut sin = Vec::with_capacity(n * 2 * f);
        let mut push = |pos: usize| {
            for &fr in &self.inv_freq {
                let a = (pos as f32 * fr) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        };
        for g in grids {
            for _ in 0..g.t {
                for br in 0..g.h / m {
                    for bc in 0..g.w / m {
                        for ir in 0..m {
                            for ic in 0..m {
                                push(br * m + ir);
                                push(bc * m + ic);
                            }
                        }
                    }
                }
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n, 2 * f), &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)?)
        };
        Ok((table(cos)?, table(sin)?))
    }

    /// Run the tower; returns the last block's output and the merged embeddings.
    pub fn forward_with_hidden(
        &self,
        pixel_values: &Tensor,
        grids: &[GridThw],
    ) -> Result<VisionOutput> {
        let n = self.check(pixel_values, grids)?;
        let _span =
            tracing::debug_span!("qwen2_vl_vision", patches = n, images = grids.len()).entered();
        let (cos, sin) = self.rotary(grids, n)?;
        // Attention is restricted to each temporal slice of each image (cu_seqlens in the
        // reference): one segment of h*w patches per temporal patch.
        let mut segments = Vec::new();
        let mut start = 0;
        for g in grids {
            for _ in 0..g.t {
                segments.push((start, g.h * g.w));
                start += g.h * g.w;
            }
        }
        let pixel_values = pixel_values.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut x = self.patch_embed.forward(&pixel_values)?;
        for block in &self.blocks {
            x = block.forward(&x, &cos, &sin, &segments)?;
        }
        let embeds = self.merger.forward(&x)?;
        Ok(VisionOutput {
            last_hidden: x,
            embeds,
        })
    }

    /// Image embeddings `(patches / 4, text hidden)` for packed `pixel_values` `(patches, 1176)`.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<Tensor> {
        Ok(self.forward_with_hidden(pixel_values, grids)?.embeds)
    }
}
