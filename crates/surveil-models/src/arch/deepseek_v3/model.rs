//! The DeepSeek-V3 decoder: multi-head latent attention (MLA, no query LoRA), a dense SwiGLU
//! MLP in the first layers, then sigmoid-routed mixture-of-experts with shared experts.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};

use super::config::{DeepseekV3Config, KV_A_LAYERNORM_EPS};
use crate::generation::TokenSampler;
use crate::layers::{Embedding, Linear, RmsNorm};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

/// Positions by which a layer's KV cache grows when it is full.
const KV_GROW: usize = 256;

/// The compressed attention state of one layer: the normalised key/value latent
/// `(1, capacity, kv_lora_rank)` and the rotated shared key part `(1, capacity,
/// qk_rope_head_dim)`, filled from the front. Per token this is `kv_lora_rank +
/// qk_rope_head_dim` values instead of `heads * (qk_head_dim + v_head_dim)` (576 vs 5120 for
/// Kimi-VL-A3B).
#[derive(Debug, Default)]
struct LayerCache {
    latent: Option<Tensor>,
    k_rot: Option<Tensor>,
    len: usize,
}

fn grow(buf: Option<&Tensor>, like: &Tensor, extra: usize) -> Result<Tensor> {
    let (b, _, d) = like.dims3()?;
    let pad = Tensor::zeros((b, extra, d), like.dtype(), like.device())?;
    Ok(match buf {
        Some(buf) => Tensor::cat(&[buf, &pad], 1)?,
        None => pad,
    })
}

impl LayerCache {
    /// Append `latent` `(1, s, kv_lora_rank)` and `k_rot` `(1, s, rope)`; return views of
    /// everything cached so far.
    fn append(&mut self, latent: &Tensor, k_rot: &Tensor) -> Result<(Tensor, Tensor)> {
        let need = self.len + latent.dim(1)?;
        let cap = self
            .latent
            .as_ref()
            .map(|t| t.dim(1))
            .transpose()?
            .unwrap_or(0);
        if need > cap {
            let extra = (need - cap).div_ceil(KV_GROW) * KV_GROW;
            self.latent = Some(grow(self.latent.as_ref(), latent, extra)?);
            self.k_rot = Some(grow(self.k_rot.as_ref(), k_rot, extra)?);
        }
        let (Some(lb), Some(rb)) = (&self.latent, &self.k_rot) else {
            return Err(ModelError::InvalidInput("kv cache not allocated".into()));
        };
        lb.slice_set(&latent.contiguous()?, 1, self.len)?;
        rb.slice_set(&k_rot.contiguous()?, 1, self.len)?;
        self.len = need;
        Ok((lb.narrow(1, 0, need)?, rb.narrow(1, 0, need)?))
    }
}

/// The KV cache of the whole decoder for one sequence. Not `Clone`: appending writes into
/// the buffers in place, so a shallow copy would see the other's tokens; use
/// [`DeepseekV3Cache::try_clone`] to fork a sequence (e.g. after a shared prompt).
#[derive(Debug)]
pub struct DeepseekV3Cache {
    layers: Vec<LayerCache>,
}

impl DeepseekV3Cache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| LayerCache::default()).collect(),
        }
    }

    /// A deep copy that grows independently of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy()).transpose();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerCache {
                    latent: copy(&l.latent)?,
                    k_rot: copy(&l.k_rot)?,
                    len: l.len,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Positions cached so far (= the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map(|l| l.len).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the cache buffers (capacity, not just the filled part).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.latent, &l.k_rot])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// Which logits [`DeepseekV3Model::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// For every input position: `(1, s, vocab)`.
    All,
    /// Only for the last input position: `(1, 1, vocab)`.
    Last,
}

/// The routing of one MoE layer for the tokens of one forward call.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterChoice {
    /// Decoder layer index.
    pub layer: usize,
    /// Per token: chosen routed experts, ascending id.
    pub experts: Vec<Vec<u32>>,
    /// Per token: the matching weights (after normalisation and `routed_scaling_factor`).
    pub weights: Vec<Vec<f32>>,
}

/// cos/sin tables `(s, qk_rope_head_dim / 2)` for a run of positions.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// Multi-head latent attention with `q_lora_rank = null`.
///
/// Only the latent and the rotated key part are cached. Runs of several tokens (prefill)
/// expand the cached latent into per-head keys and values with `kv_b_proj`; a single token
/// (decode) absorbs `kv_b_proj` into the query and the output instead, attending over the
/// latent directly, so decode reads the small cache only.
struct Attention {
    q_proj: Linear,
    kv_a_proj: Linear,
    kv_a_norm: RmsNorm,
    /// Key half of `kv_b_proj`: `(heads * qk_nope_head_dim, kv_lora_rank)`, f32 (absorption
    /// multiplies by it from both sides, which a quantized matmul cannot).
    w_uk: Tensor,
    /// Value half of `kv_b_proj`: `(heads * v_head_dim, kv_lora_rank)`, f32.
    w_uv: Tensor,
    o_proj: Linear,
    heads: usize,
    kv_lora_rank: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
}

impl Attention {
    fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let (nope, v_dim, rank) = (cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
        let kv_b = w
            .get(&[heads * (nope + v_dim), rank], "kv_b_proj.weight")?
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
            q_proj: w.linear(h, heads * cfg.qk_head_dim(), false, "q_proj")?,
            kv_a_proj: w.linear(h, rank + cfg.qk_rope_head_dim, false, "kv_a_proj_with_mqa")?,
            kv_a_norm: RmsNorm::load(&w.pp("kv_a_layernorm"), rank, KV_A_LAYERNORM_EPS)?,
            w_uk,
            w_uv,
            o_proj: w.linear(heads * v_dim, h, false, "o_proj")?,
            heads,
            kv_lora_rank: rank,
            nope,
            rope: cfg.qk_rope_head_dim,
            v_dim,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rot: &Rotary,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        if b != 1 {
            return Err(ModelError::InvalidInput(format!(
                "batch must be 1, got {b}"
            )));
        }
        let (heads, nope, rope) = (self.heads, self.nope, self.rope);
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, s, heads, nope + rope))?
            .transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_rot = q.narrow(D::Minus1, nope, rope)?.contiguous()?;
        let ckv = self.kv_a_proj.forward(x)?;
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
            let q_lat = q_nope
                .reshape((heads, 1, nope))?
                .matmul(&self.w_uk.reshape((heads, nope, self.kv_lora_rank))?)?
                .reshape((heads, self.kv_lora_rank))?;
            let scores = (q_lat.matmul(&latent.t()?)?
                + q_rot
                    .reshape((heads, rope))?
                    .matmul(&k_rot.squeeze(0)?.t()?)?)?;
            let probs = candle_nn::ops::softmax_last_dim(&(scores * scale)?)?;
            let ctx = probs
                .matmul(&latent)?
                .reshape((heads, 1, self.kv_lora_rank))?;
            ctx.matmul(
                &self
                    .w_uv
                    .reshape((heads, self.v_dim, self.kv_lora_rank))?
                    .transpose(1, 2)?,
            )?
            .reshape((b, s, heads * self.v_dim))?
        } else {
            // Expanded: per-head keys and values of every cached position.
            let latent = latent.squeeze(0)?; // (total, rank)
            let k_nope = latent
                .matmul(&self.w_uk.t()?)?
                .reshape((b, total, heads, nope))?
                .transpose(1, 2)?;
            let v = latent
                .matmul(&self.w_uv.t()?)?
                .reshape((b, total, heads, self.v_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let k_rot = k_rot.unsqueeze(1)?.broadcast_as((b, heads, total, rope))?;
            let q = Tensor::cat(&[&q_nope, &q_rot], D::Minus1)?;
            let k = Tensor::cat(&[&k_nope, &k_rot], D::Minus1)?;
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)?
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, s, heads * self.v_dim))?
        };
        self.o_proj.forward(&out)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(w: &Weights, hidden: usize, inner: usize) -> Result<Self> {
        Ok(Self {
            gate: w.linear(hidden, inner, false, "gate_proj")?,
            up: w.linear(hidden, inner, false, "up_proj")?,
            down: w.linear(inner, hidden, false, "down_proj")?,
        })
    }

    /// Bytes of the three projection weights.
    fn weight_bytes(&self) -> u64 {
        (self.gate.weight_bytes() + self.up.weight_bytes() + self.down.weight_bytes()) as u64
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

/// Routing of a run of tokens: per token, the chosen experts (ascending) and their weights.
struct Routing {
    experts: Vec<Vec<u32>>,
    weights: Vec<Vec<f32>>,
}

/// Sigmoid router with a correction bias that only affects the choice (`noaux_tc`).
struct Router {
    /// `(n_routed_experts, hidden)`, always f32: the choice is sensitive to rounding.
    weight: Tensor,
    bias: Vec<f32>,
    top_k: usize,
    n_group: usize,
    topk_group: usize,
    norm_topk_prob: bool,
    scaling: f32,
}

impl Router {
    fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
        let e = cfg.n_routed_experts;
        Ok(Self {
            weight: w.get(&[e, cfg.hidden_size], "weight")?,
            bias: w
                .get(&[e], "e_score_correction_bias")?
                .to_device(&Device::Cpu)?
                .to_vec1()?,
            top_k: cfg.num_experts_per_tok,
            n_group: cfg.n_group,
            topk_group: cfg.topk_group,
            norm_topk_prob: cfg.norm_topk_prob,
            scaling: cfg.routed_scaling_factor as f32,
        })
    }

    /// Route `x` (`(n, hidden)`, f32).
    fn route(&self, x: &Tensor) -> Result<Routing> {
        let scores = candle_nn::ops::sigmoid(&x.matmul(&self.weight.t()?)?)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        let e = self.bias.len();
        let per_group = e / self.n_group;
        let mut experts = Vec::with_capacity(scores.len());
        let mut weights = Vec::with_capacity(scores.len());
        for row in &scores {
            let biased: Vec<f32> = row.iter().zip(&self.bias).map(|(s, b)| s + b).collect();
            // Group-limited routing: keep the `topk_group` groups whose two best biased scores
            // sum highest (a no-op when n_group = 1). As in transformers, experts of dropped
            // groups compete with a score of 0.
            let mut candidate = biased.clone();
            if self.n_group > 1 {
                let mut groups: Vec<(usize, f32)> = biased
                    .chunks(per_group)
                    .enumerate()
                    .map(|(g, c)| {
                        let mut c = c.to_vec();
                        c.sort_by(|a, b| b.total_cmp(a));
                        (g, c.iter().take(2).sum())
                    })
                    .collect();
                groups.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                for (g, _) in groups.iter().skip(self.topk_group) {
                    candidate[g * per_group..(g + 1) * per_group].fill(0.0);
                }
            }
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| candidate[b].total_cmp(&candidate[a]).then(a.cmp(&b)));
            let mut chosen: Vec<usize> = order.into_iter().take(self.top_k).collect();
            chosen.sort_unstable();
            let raw: Vec<f32> = chosen.iter().map(|&i| row[i]).collect();
            let denom = if self.norm_topk_prob {
                raw.iter().sum::<f32>() + 1e-20
            } else {
                1.0
            };
            weights.push(raw.iter().map(|w| w / denom * self.scaling).collect());
            experts.push(chosen.into_iter().map(|i| i as u32).collect());
        }
        Ok(Routing { experts, weights })
    }
}

/// Routed experts plus shared experts.
struct Moe {
    /// Bytes of routed-expert weights read by forward passes so far (each chosen expert's
    /// three projections, once per pass): the traffic that top-k routing saves.
    routed_bytes_read: std::sync::atomic::AtomicU64,
    router: Router,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

impl Moe {
    fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            routed_bytes_read: std::sync::atomic::AtomicU64::new(0),
            router: Router::load(cfg, &w.pp("gate"))?,
            experts: (0..cfg.n_routed_experts)
                .map(|e| Mlp::load(&w.pp(format!("experts.{e}")), h, cfg.moe_intermediate_size))
                .collect::<Result<_>>()?,
            shared: if cfg.n_shared_experts > 0 {
                Some(Mlp::load(
                    &w.pp("shared_experts"),
                    h,
                    cfg.shared_intermediate_size(),
                )?)
            } else {
                None
            },
        })
    }

    /// `x` is `(1, s, hidden)`. Tokens are grouped per expert: each chosen expert runs once
    /// over the rows routed to it, and its weighted output is scattered back with `index_add`.
    fn forward(
        &self,
        x: &Tensor,
        trace: Option<(usize, &mut Vec<RouterChoice>)>,
    ) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let flat = x.reshape((b * s, h))?;
        let routing = self.router.route(&flat)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut row_weights: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (t, (ex, ws)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            for (&e, &w) in ex.iter().zip(ws) {
                rows[e as usize].push(t as u32);
                row_weights[e as usize].push(w);
            }
        }
        let device = x.device();
        let mut out = match &self.shared {
            Some(shared) => shared.forward(&flat)?,
            None => flat.zeros_like()?,
        };
        for ((expert, idx), ws) in self.experts.iter().zip(&rows).zip(&row_weights) {
            if idx.is_empty() {
                continue;
            }
            self.routed_bytes_read
                .fetch_add(expert.weight_bytes(), std::sync::atomic::Ordering::Relaxed);
            let n = idx.len();
            let idx = Tensor::from_slice(idx, n, device)?;
            let ws = Tensor::from_slice(ws, (n, 1), device)?;
            let y = expert
                .forward(&flat.index_select(&idx, 0)?)?
                .broadcast_mul(&ws)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        if let Some((layer, trace)) = trace {
            trace.push(RouterChoice {
                layer,
                experts: routing.experts,
                weights: routing.weights,
            });
        }
        Ok(out.reshape((b, s, h))?)
    }
}

enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

struct DecoderLayer {
    attn: Attention,
    ff: FeedForward,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

impl DecoderLayer {
    fn load(cfg: &DeepseekV3Config, i: usize, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let ff = if cfg.is_moe_layer(i) {
            FeedForward::Moe(Moe::load(cfg, &w.pp("mlp"))?)
        } else {
            FeedForward::Dense(Mlp::load(&w.pp("mlp"), h, cfg.intermediate_size)?)
        };
        Ok(Self {
            attn: Attention::load(cfg, &w.pp("self_attn"))?,
            ff,
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), h, cfg.rms_norm_eps)?,
        })
    }
}

/// `DeepseekV3ForCausalLM`: token embedding, decoder layers, final norm, output head.
pub struct DeepseekV3Model {
    cfg: DeepseekV3Config,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: QMatMul,
    inv_freq: Vec<f32>,
    device: Device,
}

impl DeepseekV3Model {
    /// Bytes of routed-expert weights read by every forward pass of this model so far (each
    /// chosen expert's gate, up and down projections once per pass; shared experts and dense
    /// layers not counted). The difference over a decode step is what that token read.
    pub fn routed_expert_bytes_read(&self) -> u64 {
        self.moe_layers()
            .map(|m| {
                m.routed_bytes_read
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// Bytes of all routed-expert weights resident (every expert of every MoE layer).
    pub fn routed_expert_bytes(&self) -> u64 {
        self.moe_layers()
            .flat_map(|m| m.experts.iter().map(Mlp::weight_bytes))
            .sum()
    }

    fn moe_layers(&self) -> impl Iterator<Item = &Moe> {
        self.layers.iter().filter_map(|l| match &l.ff {
            FeedForward::Moe(m) => Some(m),
            FeedForward::Dense(_) => None,
        })
    }

    /// Load from `w` scoped at the checkpoint root: names `model.*` and `lm_head.weight`
    /// (for Kimi-VL pass `w.pp("language_model")`).
    pub fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "<deepseek_v3 config>".into(),
            reason,
        })?;
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let m = w.pp("model");
        let embed = Embedding::load(&m.pp("embed_tokens"), vocab, hidden)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, i, &m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), hidden, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            m.matmul_weight(&[vocab, hidden], "embed_tokens.weight")?
        } else {
            w.matmul_weight(&[vocab, hidden], "lm_head.weight")?
        };
        let d = cfg.qk_rope_head_dim;
        let inv_freq = (0..d / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            device: w.device().clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DeepseekV3Config {
        &self.cfg
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> DeepseekV3Cache {
        DeepseekV3Cache::new(self.layers.len())
    }

    /// Embeddings `(1, n, hidden)` of token ids (a VLM splices image features into them).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let t = Tensor::new(ids, &self.device)?;
        Ok(self
            .embed
            .forward(&t)?
            .reshape((1, ids.len(), self.cfg.hidden_size))?)
    }

    fn rotary(&self, start: usize, s: usize) -> Result<Rotary> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for pos in start..start + s {
            for &f in &self.inv_freq {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Rotary {
            cos: Tensor::from_vec(cos, (s, half), &self.device)?,
            sin: Tensor::from_vec(sin, (s, half), &self.device)?,
        })
    }

    /// Run the decoder on input embeddings `(1, s, hidden)` placed after what `cache` holds
    /// (prefill: an empty cache; decode: one embedding), appending to `cache`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        cache: &mut DeepseekV3Cache,
        logits: Logits,
    ) -> Result<Tensor> {
        self.forward_traced(embeds, cache, logits, None)
    }

    /// [`DeepseekV3Model::forward`] on token ids.
    pub fn forward_ids(
        &self,
        ids: &[u32],
        cache: &mut DeepseekV3Cache,
        logits: Logits,
    ) -> Result<Tensor> {
        self.forward(&self.embed(ids)?, cache, logits)
    }

    /// [`DeepseekV3Model::forward`], recording the routing of every MoE layer into `trace`.
    pub fn forward_traced(
        &self,
        embeds: &Tensor,
        cache: &mut DeepseekV3Cache,
        logits: Logits,
        mut trace: Option<&mut Vec<RouterChoice>>,
    ) -> Result<Tensor> {
        let (b, s, hidden) = embeds.dims3()?;
        if b != 1 || s == 0 || hidden != self.cfg.hidden_size {
            return Err(ModelError::InvalidInput(format!(
                "embeddings must be (1, s > 0, {}), got {:?}",
                self.cfg.hidden_size,
                embeds.dims()
            )));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(
                "KV cache belongs to another model".into(),
            ));
        }
        let past = cache.len();
        if past + s > self.cfg.max_position_embeddings {
            return Err(ModelError::InvalidInput(format!(
                "{} positions exceed max_position_embeddings = {}",
                past + s,
                self.cfg.max_position_embeddings
            )));
        }
        let rot = self.rotary(past, s)?;
        let mask = if s > 1 {
            let total = past + s;
            let data: Vec<f32> = (0..s)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(data, (s, total), &self.device)?)
        } else {
            None
        };
        let mut x = embeds.to_dtype(DType::F32)?;
        for (i, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let a = layer
                .attn
                .forward(&layer.input_norm.forward(&x)?, &rot, mask.as_ref(), lc)?;
            x = (x + a)?;
            let hn = layer.post_norm.forward(&x)?;
            let f = match &layer.ff {
                FeedForward::Dense(mlp) => mlp.forward(&hn)?,
                FeedForward::Moe(moe) => moe.forward(&hn, trace.as_deref_mut().map(|t| (i, t)))?,
            };
            x = (x + f)?;
        }
        let x = match logits {
            Logits::All => x,
            Logits::Last => x.narrow(1, s - 1, 1)?,
        };
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x.contiguous()?)?)
    }

    /// Generate up to `max_new_tokens` after the prompt embeddings `(1, s, hidden)`, stopping
    /// after any of `stop_tokens` (included in the result). Returns the new tokens.
    pub fn generate(
        &self,
        embeds: &Tensor,
        max_new_tokens: usize,
        stop_tokens: &[u32],
        sampler: &mut TokenSampler,
    ) -> Result<Vec<u32>> {
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_new_tokens);
        if max_new_tokens == 0 {
            return Ok(out);
        }
        let mut logits = self.forward(embeds, &mut cache, Logits::Last)?;
        loop {
            let tok = sampler.sample(&logits.flatten_all()?)?;
            out.push(tok);
            if out.len() >= max_new_tokens || stop_tokens.contains(&tok) {
                return Ok(out);
            }
            logits = self.forward_ids(&[tok], &mut cache, Logits::Last)?;
        }
    }

    /// Greedy generation from token ids (no stop tokens unless given).
    pub fn generate_greedy(
        &self,
        ids: &[u32],
        max_new_tokens: usize,
        stop_tokens: &[u32],
    ) -> Result<Vec<u32>> {
        let mut sampler = TokenSampler::new(crate::generation::Sampling::Greedy, 0);
        self.generate(&self.embed(ids)?, max_new_tokens, stop_tokens, &mut sampler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(n_group: usize, topk_group: usize, bias: Vec<f32>) -> Router {
        let eye: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        Router {
            weight: Tensor::from_vec(eye, (4, 4), &Device::Cpu).unwrap(),
            bias,
            top_k: 2,
            n_group,
            topk_group,
            norm_topk_prob: true,
            scaling: 2.0,
        }
    }

    #[test]
    fn routing_keeps_best_groups_and_weighs_raw_scores() {
        // Router logits = x: sigmoid scores 0.95, 0.05, 0.88, 0.88.
        let x = Tensor::new(&[[3f32, -3.0, 2.0, 2.0]], &Device::Cpu).unwrap();
        let r = router(1, 1, vec![0.0; 4]).route(&x).unwrap();
        assert_eq!(r.experts, vec![vec![0, 2]]);
        // Two groups {0,1}, {2,3}: the second has the larger sum of its two best scores, so
        // expert 0 (best alone) is dropped.
        let r = router(2, 1, vec![0.0; 4]).route(&x).unwrap();
        assert_eq!(r.experts, vec![vec![2, 3]]);
        assert!((r.weights[0][0] - 1.0).abs() < 1e-6 && (r.weights[0][1] - 1.0).abs() < 1e-6);
        // The correction bias changes the choice, not the weights.
        let r = router(1, 1, vec![0.0, 1.0, 0.0, -1.0]).route(&x).unwrap();
        assert_eq!(r.experts, vec![vec![0, 1]]);
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let (a, b) = (s(3.0), s(-3.0));
        assert!((r.weights[0][0] - 2.0 * a / (a + b)).abs() < 1e-5);
        assert!((r.weights[0][1] - 2.0 * b / (a + b)).abs() < 1e-5);
    }
}
