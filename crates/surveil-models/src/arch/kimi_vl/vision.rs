//! MoonViT, Kimi-VL's native-resolution vision tower, and the 2×2 patch-merge projector.
//!
//! Images of different sizes are packed one after another in one `(patches, 3, 14, 14)`
//! tensor, each image's patches in row-major grid order; nothing is padded to a common size.
//! Every block's attention stays inside its image (the reference's `cu_seqlens`).
//!
//! Per image: patch embedding (the 14×14/stride-14 convolution as a matmul) + the learned
//! position grid resized bicubically to the image's grid, blocks with 2-D rotary positions,
//! the final LayerNorm, then the merge of each 2×2 window into one `(4, D)` token; the
//! projector normalises each sub-token, concatenates them and maps `4D → 4D → text width`.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::config::MoonVitConfig;
use crate::layers::kernels::{packed_rope_attention, Activation, AttentionPrecision, RopeLayout};
use crate::layers::{LayerNorm, Linear};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// LayerNorm epsilon of every MoonViT and projector norm.
const LN_EPS: f64 = 1e-5;
/// Base of MoonViT's 2-D rotary embedding.
const ROPE_THETA: f32 = 10_000.0;

/// Size of one image in patches before the merge: `(rows, cols)` as in the reference's
/// `image_grid_hws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GridHw {
    /// Patch rows.
    pub h: usize,
    /// Patch columns.
    pub w: usize,
}

impl GridHw {
    /// A grid of `h × w` patches.
    pub fn new(h: usize, w: usize) -> Self {
        Self { h, w }
    }

    /// Patches (rows of `pixel_values`) of this image.
    pub fn patches(&self) -> usize {
        self.h * self.w
    }

    /// Text tokens this image becomes after a `kh × kw` merge.
    pub fn merged_tokens(&self, merge: [usize; 2]) -> usize {
        (self.h / merge[0]) * (self.w / merge[1])
    }
}

/// PyTorch's cubic convolution weights (A = −0.75) of the four taps around a sample at
/// fractional offset `t` from its floor.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// The `(out, in)` matrix of PyTorch's `interpolate(mode="bicubic", align_corners=False)`
/// along one axis: source `(dst + 0.5)·in/out − 0.5`, taps `floor − 1 ..= floor + 2` clamped.
fn bicubic_matrix(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut m = vec![0f64; out_size * in_size];
    let scale = in_size as f64 / out_size as f64;
    for o in 0..out_size {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let f = src.floor();
        let w = cubic_weights(src - f);
        for (k, wk) in w.iter().enumerate() {
            let idx = (f as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
            m[o * in_size + idx] += wk;
        }
    }
    m.into_iter().map(|x| x as f32).collect()
}

struct EncoderBlock {
    norm0: LayerNorm,
    norm1: LayerNorm,
    wqkv: Linear,
    wo: Linear,
    fc0: Linear,
    fc1: Linear,
    num_heads: usize,
    /// bf16 attention operands where the weights are not f32 ([`AttentionPrecision::for_weights`]).
    precision: AttentionPrecision,
}

impl EncoderBlock {
    fn load(cfg: &MoonVitConfig, w: &Weights) -> Result<Self> {
        let e = cfg.hidden_size;
        Ok(Self {
            norm0: LayerNorm::load(&w.pp("norm0"), e, LN_EPS)?,
            norm1: LayerNorm::load(&w.pp("norm1"), e, LN_EPS)?,
            wqkv: Linear::load(w, e, 3 * e, true, "wqkv")?,
            wo: Linear::load(w, e, e, true, "wo")?,
            fc0: Linear::load(&w.pp("mlp"), e, cfg.intermediate_size, true, "fc0")?,
            fc1: Linear::load(&w.pp("mlp"), cfg.intermediate_size, e, true, "fc1")?,
            num_heads: cfg.num_attention_heads,
            precision: AttentionPrecision::for_weights(w.policy().linear),
        })
    }

    /// `x`: `(n, D)`; `cos`/`sin`: `(n, head_dim/2)`; `segments`: `(start, len)` row ranges
    /// that attend only among themselves.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[(usize, usize)],
    ) -> Result<Tensor> {
        let qkv = self.wqkv.forward(&self.norm0.forward(x)?)?;
        let attn = packed_rope_attention(
            &qkv,
            self.num_heads,
            cos,
            sin,
            RopeLayout::Interleaved,
            segments,
            self.precision,
        )?;
        let x = self.wo.forward_add(&attn, x)?;
        let hdn = self
            .fc0
            .forward_act(&self.norm1.forward(&x)?, Activation::GeluTanh)?;
        self.fc1.forward_add(&hdn, &x)
    }
}

/// Intermediate tensors of one [`MoonVit::forward_with_intermediates`] run, for debugging and
/// parity checks.
pub struct MoonVitOutput {
    /// The position embeddings added to each patch: `(patches, D)`.
    pub pos_embeds: Tensor,
    /// Patch embedding plus position embedding: `(patches, D)`.
    pub patch_embed_out: Tensor,
    /// Cosines of the 2-D rotary angles: `(patches, head_dim/2)`.
    pub rope_cos: Tensor,
    /// Sines of the 2-D rotary angles: `(patches, head_dim/2)`.
    pub rope_sin: Tensor,
    /// Residual stream after each block (before the final LayerNorm): `(patches, D)` each.
    pub block_outs: Vec<Tensor>,
    /// After the final LayerNorm, before the merge: `(patches, D)`.
    pub encoder_out: Tensor,
}

/// The MoonViT vision tower: pixel patches → per-patch features.
pub struct MoonVit {
    cfg: MoonVitConfig,
    patch_embed: Linear,
    /// Learned position grid `(init_h, init_w, D)`.
    pos_emb: Tensor,
    blocks: Vec<EncoderBlock>,
    final_norm: LayerNorm,
    inv_freq: Vec<f32>,
    device: Device,
    /// The activation dtype of the blocks ([`Weights::activation_dtype`]).
    dtype: DType,
}

impl MoonVit {
    /// Load from `w` scoped at the tower (`vision_tower`).
    pub fn load(cfg: &MoonVitConfig, w: &Weights) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "kimi-vl vision_config".into(),
            reason,
        })?;
        let e = cfg.hidden_size;
        let p = cfg.patch_size;
        let proj = w.pp("patch_embed.proj");
        let conv = proj.get(&[e, 3, p, p], "weight")?;
        let bias = proj.get(&[e], "bias")?;
        let patch_embed = Linear::new(
            QMatMul::Tensor(conv.reshape((e, cfg.patch_dim()))?),
            Some(bias),
        );
        let pos_emb = w.pp("patch_embed.pos_emb").get(
            &[cfg.init_pos_emb_height, cfg.init_pos_emb_width, e],
            "weight",
        )?;
        let enc = w.pp("encoder");
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| EncoderBlock::load(cfg, &enc.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = LayerNorm::load(&enc.pp("final_layernorm"), e, LN_EPS)?;
        // freqs = 1 / theta^(arange(0, head_dim, 4)[: head_dim / 4] / head_dim), in f32 as the
        // reference computes them.
        let hd = cfg.head_dim();
        let inv_freq = (0..hd / 4)
            .map(|k| 1.0 / ROPE_THETA.powf((4 * k) as f32 / hd as f32))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            pos_emb,
            blocks,
            final_norm,
            inv_freq,
            device: w.device().clone(),
            dtype: w.activation_dtype(),
        })
    }

    /// The configuration this tower was built with.
    pub fn config(&self) -> &MoonVitConfig {
        &self.cfg
    }

    /// Check `pixel_values` `(patches, 3, p, p)` against `grids`; returns them as
    /// `(patches, 3·p·p)` f32 on the tower's device.
    fn flatten_pixels(&self, pixel_values: &Tensor, grids: &[GridHw]) -> Result<Tensor> {
        let p = self.cfg.patch_size;
        let dims = pixel_values.dims();
        let n = match dims {
            [n, 3, a, b] if *a == p && *b == p => *n,
            [n, k] if *k == self.cfg.patch_dim() => *n,
            _ => {
                return Err(ModelError::InvalidInput(format!(
                    "pixel_values must be (patches, 3, {p}, {p}), got {dims:?}"
                )))
            }
        };
        if grids.is_empty() {
            return Err(ModelError::InvalidInput("no image grid given".into()));
        }
        if let Some(g) = grids.iter().find(|g| g.h == 0 || g.w == 0) {
            return Err(ModelError::InvalidInput(format!("empty image grid {g:?}")));
        }
        let total: usize = grids.iter().map(GridHw::patches).sum();
        if total != n {
            return Err(ModelError::InvalidInput(format!(
                "pixel_values has {n} patches but the grids add up to {total}"
            )));
        }
        Ok(pixel_values
            .reshape((n, self.cfg.patch_dim()))?
            .to_device(&self.device)?
            .to_dtype(DType::F32)?)
    }

    /// The learned position grid resized to `grid` (bicubic, as PyTorch's `interpolate`),
    /// flattened row-major: `(h·w, D)`.
    fn position_embedding(&self, grid: GridHw) -> Result<Tensor> {
        let (ih, iw) = (self.cfg.init_pos_emb_height, self.cfg.init_pos_emb_width);
        let e = self.cfg.hidden_size;
        if (grid.h, grid.w) == (ih, iw) {
            return Ok(self.pos_emb.reshape((ih * iw, e))?);
        }
        let wy = Tensor::from_vec(bicubic_matrix(ih, grid.h), (grid.h, ih), &self.device)?;
        let wx = Tensor::from_vec(bicubic_matrix(iw, grid.w), (grid.w, iw), &self.device)?;
        // Rows first: (h, ih) @ (ih, iw·D) -> (h, iw, D); then columns per output row.
        let rows = wy
            .matmul(&self.pos_emb.reshape((ih, iw * e))?)?
            .reshape((grid.h, iw, e))?;
        let wx = wx
            .unsqueeze(0)?
            .broadcast_as((grid.h, grid.w, iw))?
            .contiguous()?;
        Ok(wx.matmul(&rows)?.reshape((grid.h * grid.w, e))?)
    }

    /// Rotary cos/sin `(patches, head_dim/2)`: pair `2k` turns by `col · freq_k`, pair `2k+1`
    /// by `row · freq_k` (rows/cols counted inside each image).
    fn rotary(&self, grids: &[GridHw]) -> Result<(Tensor, Tensor)> {
        let n: usize = grids.iter().map(GridHw::patches).sum();
        let half = 2 * self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for g in grids {
            for r in 0..g.h {
                for c in 0..g.w {
                    for &f in &self.inv_freq {
                        for pos in [c, r] {
                            // The angle is an f32 product in the reference.
                            let a = f64::from(pos as f32 * f);
                            cos.push(a.cos() as f32);
                            sin.push(a.sin() as f32);
                        }
                    }
                }
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (n, half), &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)?)
        };
        Ok((table(cos)?, table(sin)?))
    }

    /// Run the tower on packed `pixel_values` (`(patches, 3, p, p)`, or already flattened to
    /// `(patches, 3·p·p)`) with one grid per image, and keep the intermediates.
    pub fn forward_with_intermediates(
        &self,
        pixel_values: &Tensor,
        grids: &[GridHw],
    ) -> Result<MoonVitOutput> {
        let pixels = self.flatten_pixels(pixel_values, grids)?;
        let n = pixels.dim(0)?;
        let _span = tracing::debug_span!("moonvit", patches = n, images = grids.len()).entered();
        let pos = grids
            .iter()
            .map(|&g| self.position_embedding(g))
            .collect::<Result<Vec<_>>>()?;
        let pos_embeds = Tensor::cat(&pos, 0)?;
        // Patch and position embeddings in f32 (their weights'), the blocks in the activation
        // dtype.
        let patch_embed_out = self
            .patch_embed
            .forward(&pixels)?
            .add(&pos_embeds)?
            .to_dtype(self.dtype)?;
        let (cos, sin) = self.rotary(grids)?;
        let mut segments = Vec::with_capacity(grids.len());
        let mut start = 0;
        for g in grids {
            segments.push((start, g.patches()));
            start += g.patches();
        }
        let mut x = patch_embed_out.clone();
        let mut block_outs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(&x, &cos, &sin, &segments)?;
            block_outs.push(x.clone());
        }
        let encoder_out = self.final_norm.forward(&x)?;
        Ok(MoonVitOutput {
            pos_embeds,
            patch_embed_out,
            rope_cos: cos,
            rope_sin: sin,
            block_outs,
            encoder_out,
        })
    }

    /// Per-patch features after the final LayerNorm: `(patches, D)`.
    pub fn encode(&self, pixel_values: &Tensor, grids: &[GridHw]) -> Result<Tensor> {
        Ok(self
            .forward_with_intermediates(pixel_values, grids)?
            .encoder_out)
    }

    /// Gather each image's `kh × kw` windows: `(patches, D)` → `(tokens, kh·kw, D)`, windows
    /// row-major per image, the patches of a window row-major, images in order.
    pub fn merge_patches(&self, features: &Tensor, grids: &[GridHw]) -> Result<Tensor> {
        let [kh, kw] = self.cfg.merge_kernel_size;
        let e = features.dim(1)?;
        let mut parts = Vec::with_capacity(grids.len());
        let mut start = 0;
        for g in grids {
            if !g.h.is_multiple_of(kh) || !g.w.is_multiple_of(kw) {
                return Err(ModelError::InvalidInput(format!(
                    "grid {g:?} cannot be merged in {kh}x{kw} windows"
                )));
            }
            let x = features
                .narrow(0, start, g.patches())?
                .reshape((g.h / kh, kh, g.w / kw, kw, e))?
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((g.merged_tokens(self.cfg.merge_kernel_size), kh * kw, e))?;
            parts.push(x);
            start += g.patches();
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The tower's output as the projector takes it: `(tokens, kh·kw, D)`.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridHw]) -> Result<Tensor> {
        let x = self.encode(pixel_values, grids)?;
        self.merge_patches(&x, grids)
    }
}

/// The projector: LayerNorm over each merged sub-token, concatenation to `kh·kw·D`, then
/// Linear → exact (erf) GELU → Linear to the text width.
pub struct KimiVlProjector {
    pre_norm: LayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    in_dim: usize,
}

impl KimiVlProjector {
    /// Load from `w` scoped at `multi_modal_projector`.
    pub fn load(cfg: &MoonVitConfig, text_hidden_size: usize, w: &Weights) -> Result<Self> {
        let e = cfg.hidden_size;
        let m = e * cfg.merge_unit();
        Ok(Self {
            pre_norm: LayerNorm::load(&w.pp("pre_norm"), e, LN_EPS)?,
            linear_1: Linear::load(w, m, m, true, "linear_1")?,
            linear_2: Linear::load(w, m, text_hidden_size, true, "linear_2")?,
            in_dim: m,
        })
    }

    /// `(tokens, kh·kw, D)` → `(tokens, text hidden)`.
    pub fn forward(&self, merged: &Tensor) -> Result<Tensor> {
        let n = merged.dim(0)?;
        let x = self.pre_norm.forward(merged)?.reshape((n, self.in_dim))?;
        let x = self.linear_1.forward(&x)?.gelu_erf()?;
        self.linear_2.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_same_size_is_identity() {
        let m = bicubic_matrix(6, 6);
        for o in 0..6 {
            for i in 0..6 {
                assert_eq!(m[o * 6 + i], if o == i { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn bicubic_rows_sum_to_one_and_keep_constants() {
        for (i, o) in [(6, 10), (8, 6), (8, 12), (6, 4), (64, 37)] {
            let m = bicubic_matrix(i, o);
            for row in m.chunks(i) {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-6, "{i}->{o}: {s}");
            }
        }
        // Up-sampling 2 → 4: sources -0.25, 0.25, 0.75, 1.25 (clamped taps).
        let m = bicubic_matrix(2, 4);
        let w = cubic_weights(0.75);
        assert!((f64::from(m[0]) - (w[0] + w[1] + w[2])).abs() < 1e-7);
        assert!((f64::from(m[1]) - w[3]).abs() < 1e-7);
    }
}
