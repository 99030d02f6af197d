//! Multi-head latent attention (MLA, `q_lora_rank = null`) and its cache of the compressed
//! key/value latent.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::config::{DeepseekV3Config, KV_A_LAYERNORM_EPS};
use crate::layers::kernels::{
    flash_attention, mla_decode_attention, runs_cpu_kernel, scaled_softmax,
    scaled_softmax_unmasked, KeyMask,
};
use crate::layers::{KvCache, LayerKvCache, Linear, RmsNorm};
use crate::load::weights::Weights;
use crate::quant::ThreadPool;
use crate::{ModelError, Result};

/// Positions by which a layer's KV cache grows when it is full.
const KV_GROW: usize = 256;

/// The MLA cache of the whole decoder for one sequence: per layer, the compressed attention
/// state instead of keys and values, as a [`KvCache`] pair along axis 1: the normalised
/// key/value latent `(1, capacity, kv_lora_rank)` and the rotated shared key part
/// `(1, capacity, qk_rope_head_dim)`, filled from the front. Per token this is `kv_lora_rank +
/// qk_rope_head_dim` values instead of `heads * (qk_head_dim + v_head_dim)` (576 vs 5120 for
/// Kimi-VL-A3B).
///
/// Not `Clone`: appending writes into the buffers in place, so a shallow copy would see the
/// other's tokens; use [`DeepseekV3Cache::try_clone`] to fork a sequence (e.g. after a shared
/// prompt).
#[derive(Debug)]
pub struct DeepseekV3Cache {
    kv: KvCache,
}

impl DeepseekV3Cache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self {
            kv: KvCache::new(layers, 1, KV_GROW),
        }
    }

    /// A deep copy that grows independently of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            kv: self.kv.try_clone()?,
        })
    }

    /// Positions cached so far (= the position of the next token).
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Bytes held by the cache buffers (capacity, not just the filled part).
    pub fn bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// Decoder layers the cache is for.
    pub(super) fn num_layers(&self) -> usize {
        self.kv.num_layers()
    }

    /// Per layer: the latent (first) and rotated key part (second) pair.
    pub(super) fn layers_mut(&mut self) -> &mut [LayerKvCache] {
        self.kv.layers_mut()
    }
}

/// cos/sin tables `(s, qk_rope_head_dim / 2)` for a run of positions.
pub(super) struct Rotary {
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
}

/// Multi-head latent attention with `q_lora_rank = null`.
///
/// Only the latent and the rotated key part are cached. Runs of several tokens (prefill)
/// expand the cached latent into per-head keys and values with `kv_b_proj`; a single token
/// (decode) absorbs `kv_b_proj` into the query and the output instead, attending over the
/// latent directly, so decode reads the small cache only. `kv_b_proj` is kept in the policy's
/// float type (f16 under the CPU 4-bit policy, f32 for float models): absorption multiplies by
/// it from both sides, which a quantized row layout cannot. On the CPU the absorbed products
/// run on the kernel pool ([`super::absorb`]).
pub(super) struct Attention {
    q_proj: Linear,
    kv_a_proj: Linear,
    kv_a_norm: RmsNorm,
    /// Key half of `kv_b_proj`: `(heads * qk_nope_head_dim, kv_lora_rank)`, in the policy's
    /// float type.
    w_uk: Tensor,
    /// Value half of `kv_b_proj`: `(heads * v_head_dim, kv_lora_rank)`, in the policy's float
    /// type.
    w_uv: Tensor,
    /// The kernel pool the absorbed products run on, for a model on the CPU.
    pool: Option<Arc<ThreadPool>>,
    o_proj: Linear,
    heads: usize,
    kv_lora_rank: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
}

impl Attention {
    /// Bytes of the weights one token's pass reads (the projections and both halves of
    /// `kv_b_proj`).
    pub(super) fn weight_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        (self.q_proj.weight_bytes()
            + self.kv_a_proj.weight_bytes()
            + self.o_proj.weight_bytes()
            + bytes(&self.w_uk)
            + bytes(&self.w_uv)) as u64
    }

    pub(super) fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let (nope, v_dim, rank) = (cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
        let kv_b = w
            .get_table(&[heads * (nope + v_dim), rank], "kv_b_proj.weight")?
            .reshape((heads, nope + v_dim, rank))?;
        let w_uk = kv_b
            .narrow(1, 0, nope)?
            .contiguous()?
            .reshape((heads * nope, rank))?;
        let w_uv = kv_b
            .narrow(1, nope, v_dim)?
            .contiguous()?
            .reshape((heads * v_dim, rank))?;
        Ok(Self {
            q_proj: Linear::load(w, h, heads * cfg.qk_head_dim(), false, "q_proj")?,
            kv_a_proj: Linear::load(
                w,
                h,
                rank + cfg.qk_rope_head_dim,
                false,
                "kv_a_proj_with_mqa",
            )?,
            kv_a_norm: RmsNorm::load(&w.pp("kv_a_layernorm"), rank, KV_A_LAYERNORM_EPS)?,
            w_uk,
            w_uv,
            o_proj: Linear::load(w, heads * v_dim, h, false, "o_proj")?,
            pool: if w.device().is_cpu() {
                Some(w.pool()?)
            } else {
                None
            },
            heads,
            kv_lora_rank: rank,
            nope,
            rope: cfg.qk_rope_head_dim,
            v_dim,
        })
    }

    /// `residual + attention(x)` (the residual added by `o_proj`'s matmul).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rot: &Rotary,
        mask: Option<&Tensor>,
        cache: &mut LayerKvCache,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        if b != 1 {
            return Err(ModelError::InvalidInput(format!(
                "batch must be 1, got {b}"
            )));
        }
        let (heads, nope, rope) = (self.heads, self.nope, self.rope);
        // q and the compressed KV from one quantization of `x` (one pool job on the CPU).
        let mut q_ckv = Linear::forward_shared(&[&self.q_proj, &self.kv_a_proj], x)?.into_iter();
        let (Some(q), Some(ckv)) = (q_ckv.next(), q_ckv.next()) else {
            return Err(ModelError::InvalidInput("q/kv_a projection failed".into()));
        };
        let q = q.reshape((b, s, heads, nope + rope))?.transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_rot = q.narrow(D::Minus1, nope, rope)?.contiguous()?;
        let latent = self
            .kv_a_norm
            .forward(&ckv.narrow(D::Minus1, 0, self.kv_lora_rank)?)?;
        let k_rot = ckv
            .narrow(D::Minus1, self.kv_lora_rank, rope)?
            .reshape((b, s, 1, rope))?
            .transpose(1, 2)?
            .contiguous()?;
        // The rope slices hold interleaved pairs. `rope_i` writes the rotated pairs back in
        // place while the reference writes them de-interleaved; both q and k get the same
        // order, so their dot products (all attention uses) are identical.
        let q_rot = candle_nn::rotary_emb::rope_i(&q_rot, &rot.cos, &rot.sin)?;
        let k_rot = candle_nn::rotary_emb::rope_i(&k_rot, &rot.cos, &rot.sin)?;
        let (latent, k_rot) = cache.append(&latent, &k_rot.reshape((b, s, rope))?)?;
        let total = latent.dim(1)?;
        let scale = 1.0 / ((nope + rope) as f64).sqrt();
        let out = if s == 1 {
            // Absorbed: score = (q_nope W_uk) · latent + q_rot · k_rot; out = (p latent) W_uv.
            let latent = latent.squeeze(0)?; // (total, rank)
            let q_lat = self.absorb_query(&q_nope)?; // (heads, rank)
            let q_rot = q_rot.reshape((heads, rope))?;
            let k_rot = k_rot.squeeze(0)?; // (total, rope)
            let ctx = match &self.pool {
                // On the CPU: one kernel on the model's pool, reading the cache in place.
                Some(pool)
                    if [&q_lat, &q_rot, &latent, &k_rot]
                        .into_iter()
                        .all(runs_cpu_kernel) =>
                {
                    mla_decode_attention(&q_lat, &q_rot, &latent, &k_rot, scale as f32, Some(pool))?
                }
                _ => {
                    let scores = (q_lat.matmul(&latent.t()?)? + q_rot.matmul(&k_rot.t()?)?)?;
                    scaled_softmax_unmasked(&scores, scale as f32)?.matmul(&latent)?
                }
            };
            self.absorb_output(&ctx)?
                .reshape((b, s, heads * self.v_dim))?
        } else {
            // Expanded: per-head keys and values of every cached position, `kv_b_proj` in the
            // latent's dtype (on the CPU widened by `absorb::to_f32`).
            let latent = latent.squeeze(0)?; // (total, rank)
            let widen = |w: &Tensor| -> Result<Tensor> {
                if w.device().is_cpu() && latent.dtype() == candle_core::DType::F32 {
                    super::absorb::to_f32(w)
                } else {
                    Ok(w.to_dtype(latent.dtype())?)
                }
            };
            let k_nope = latent
                .matmul(&widen(&self.w_uk)?.t()?)?
                .reshape((b, total, heads, nope))?
                .transpose(1, 2)?;
            let v = latent
                .matmul(&widen(&self.w_uv)?.t()?)?
                .reshape((b, total, heads, self.v_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let k_rot = k_rot.unsqueeze(1)?.broadcast_as((b, heads, total, rope))?;
            let q = Tensor::cat(&[&q_nope, &q_rot], D::Minus1)?;
            let k = Tensor::cat(&[&k_nope, &k_rot], D::Minus1)?;
            let ctx = match mask {
                // On the CPU the fused kernel applies the causal mask itself (the one
                // `forward_embeds` builds: query `i` at position `past + i`).
                Some(_) if runs_cpu_kernel(&q) => flash_attention(
                    &q,
                    &k,
                    &v,
                    scale as f32,
                    KeyMask::Causal {
                        offset: total - s,
                        period: s,
                    },
                )?,
                _ => {
                    // `scale · (q kᵀ + mask)`: the mask is 0 or -inf.
                    let scores = q.matmul(&k.t()?)?;
                    let scores = match mask {
                        Some(m) => scores.broadcast_add(m)?,
                        None => scores,
                    };
                    scaled_softmax(&scores, scale as f32)?.matmul(&v)?
                }
            };
            ctx.transpose(1, 2)?.reshape((b, s, heads * self.v_dim))?
        };
        self.o_proj.forward_add(&out, residual)
    }

    /// `q_nope W_uk` per head for one token: `q_nope` `(1, heads, 1, nope)`, returns `(heads,
    /// rank)` in the query's dtype. On the kernel pool for a model on the CPU, else candle's
    /// batched matmul in the table's dtype (f16 or bf16 under a quantized policy: the query is
    /// rounded to it, the 2·heads·nope·rank bytes of the table are read as they are).
    fn absorb_query(&self, q_nope: &Tensor) -> Result<Tensor> {
        let (heads, nope, rank) = (self.heads, self.nope, self.kv_lora_rank);
        let q = q_nope.reshape((heads, 1, nope))?;
        if let (Some(pool), true) = (&self.pool, runs_cpu_kernel(&q)) {
            let x = q.flatten_all()?.to_vec1::<f32>()?;
            let y = super::absorb::vec_mat_per_head(&x, &self.w_uk, heads, nope, rank, pool)?;
            return Ok(Tensor::from_vec(y, (heads, rank), q.device())?);
        }
        // In the table's dtype: the query (heads × nope values) is converted, not the table.
        let w = self.w_uk.reshape((heads, nope, rank))?;
        Ok(q.to_dtype(w.dtype())?
            .matmul(&w)?
            .reshape((heads, rank))?
            .to_dtype(q.dtype())?)
    }

    /// `ctx W_uvᵀ` per head for one token: `ctx` `(heads, rank)` (the attended latent),
    /// returns `(heads, v_dim)`; placed as [`Self::absorb_query`].
    fn absorb_output(&self, ctx: &Tensor) -> Result<Tensor> {
        let (heads, v_dim, rank) = (self.heads, self.v_dim, self.kv_lora_rank);
        let ctx = &ctx.reshape((heads, 1, rank))?;
        if let (Some(pool), true) = (&self.pool, runs_cpu_kernel(ctx)) {
            let x = ctx.flatten_all()?.to_vec1::<f32>()?;
            let y = super::absorb::mat_vec_per_head(&x, &self.w_uv, heads, v_dim, rank, pool)?;
            return Ok(Tensor::from_vec(y, (heads, v_dim), ctx.device())?);
        }
        let w = self.w_uv.reshape((heads, v_dim, rank))?.transpose(1, 2)?;
        Ok(ctx
            .to_dtype(w.dtype())?
            .matmul(&w)?
            .reshape((heads, v_dim))?
            .to_dtype(ctx.dtype())?)
    }
}
