//! The Qwen2 text decoder of Qwen2-VL: GQA attention with q/k/v biases, multimodal RoPE,
//! RMSNorm, SwiGLU MLP, tied or untied output head, and a growable KV cache.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use super::config::TextConfig;
use crate::layers::kernels::{
    decode_attention, flash_attention, runs_cpu_kernel, scaled_softmax, scaled_softmax_unmasked,
    KeyMask, DECODE_MAX_ROWS,
};
use surveil_memory::QuantPolicy;

use crate::layers::{KvCache, LayerKvCache, Linear, Logits, RmsNorm};
use crate::load::weights::Weights;
use crate::quant::ThreadPool;
use crate::{ModelError, Result};

/// Positions by which the KV cache grows when it is full.
const KV_GROW: usize = 512;

/// Multimodal rotary tables for a run of tokens.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// The kernels' pool on the CPU: a decode step's attention spreads its heads over it.
    pool: Option<Arc<ThreadPool>>,
}

impl Attention {
    fn load(cfg: &TextConfig, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let d = cfg.head_dim();
        let kv = cfg.num_key_value_heads * d;
        Ok(Self {
            q: Linear::load(w, h, h, true, "q_proj")?,
            k: Linear::load(w, h, kv, true, "k_proj")?,
            v: Linear::load(w, h, kv, true, "v_proj")?,
            o: Linear::load(w, h, h, false, "o_proj")?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            pool: if w.device().is_cpu() {
                Some(w.pool()?)
            } else {
                None
            },
        })
    }

    /// `residual + attention(x)` (the residual added by `o_proj`'s matmul).
    fn forward(
        &self,
        x: &Tensor,
        rot: &Rotary,
        mask: Option<&Tensor>,
        cache: &mut LayerKvCache,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let mut qkv = Linear::forward_shared(&[&self.q, &self.k, &self.v], x)?.into_iter();
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            return Err(ModelError::InvalidInput("q/k/v projection failed".into()));
        };
        let q = heads(q, self.heads)?;
        let k = heads(k, self.kv_heads)?;
        let v = heads(v, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &rot.cos, &rot.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &rot.cos, &rot.sin)?;
        let (k, v) = cache.append(&k, &v)?;
        let total = k.dim(2)?;
        // Grouped-query attention without repeating K/V: query head h uses KV head h / rep, so
        // (heads, s) regroups as (kv_heads, rep * s).
        let rep = self.heads / self.kv_heads;
        let q = q.reshape((b, self.kv_heads, rep * s, d))?;
        let scale = 1.0 / (d as f32).sqrt();
        let out = match mask {
            // A prefill on the CPU: the fused kernel applies the causal mask itself (the one
            // `forward_embeds` builds), row `r` at position `past + r % s`.
            Some(_) if runs_cpu_kernel(&q) => flash_attention(
                &q,
                &k,
                &v,
                scale,
                KeyMask::Causal {
                    offset: total - s,
                    period: s,
                },
            )?,
            // A decode step on the CPU: the query rows see every cached key; the keys and
            // values are read in place from the cache.
            None if runs_cpu_kernel(&q) && rep * s <= DECODE_MAX_ROWS => {
                decode_attention(&q, &k, &v, scale, self.pool.as_deref())?
            }
            _ => {
                let scores = q.matmul(&k.t()?)?;
                let probs = match mask {
                    Some(mask) => scaled_softmax(
                        &scores
                            .reshape((b, self.kv_heads, rep, s, total))?
                            .broadcast_add(mask)?
                            .reshape((b, self.kv_heads, rep * s, total))?,
                        scale,
                    )?,
                    None => scaled_softmax_unmasked(&scores, scale)?,
                };
                probs.matmul(&v)?
            }
        }; // (b, kv_heads, rep*s, d)
        let out = out
            .reshape((b, self.heads, s, d))?
            .transpose(1, 2)?
            .reshape((b, s, self.heads * d))?;
        self.o.forward_add(&out, residual)
    }
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(cfg: &TextConfig, w: &Weights) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: Linear::load(w, h, i, false, "gate_proj")?,
            up: Linear::load(w, h, i, false, "up_proj")?,
            down: Linear::load(w, i, h, false, "down_proj")?,
        })
    }

    /// `residual + mlp(x)` (the residual added by `down_proj`'s matmul).
    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.down
            .forward_add(&Linear::swiglu(&self.gate, &self.up, x)?, residual)
    }
}

struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

impl DecoderLayer {
    /// Bytes of the linear weights one token's pass reads.
    fn weight_bytes(&self) -> usize {
        let a = &self.attn;
        let m = &self.mlp;
        [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
            .iter()
            .map(|l| l.weight_bytes())
            .sum()
    }

    fn load(cfg: &TextConfig, w: &Weights) -> Result<Self> {
        Ok(Self {
            attn: Attention::load(cfg, &w.pp("self_attn"))?,
            mlp: Mlp::load(cfg, &w.pp("mlp"))?,
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            post_norm: RmsNorm::load(
                &w.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rot: &Rotary,
        mask: Option<&Tensor>,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.input_norm.forward(x)?, rot, mask, cache, x)?;
        self.mlp.forward(&self.post_norm.forward(&h)?, &h)
    }
}

/// Whether a tied token table is kept once, as the quantized output matrix, with input rows
/// dequantized on lookup (as llama.cpp does). True at 4 bits, where a float table would cost
/// more memory than all decoder layers of a 2B model together; at 8 bits and in float the table
/// stays a float table beside the output head, because its rows feed every layer and 8-bit rows
/// measurably move the logits (they flip greedy tokens on the parity fixture).
pub fn shares_tied_embedding(policy: &QuantPolicy) -> bool {
    policy.linear.is_four_bit()
}

/// Token embedding table: a float table, or — for tied checkpoints loaded with a quantized
/// policy — the quantized output-head matrix itself (rows are dequantized on lookup, so the
/// vocabulary is resident once, not twice).
enum TokenEmbedding {
    Table(crate::layers::Embedding),
    SharedWithHead,
}

/// The Qwen2 decoder with M-RoPE.
pub struct TextModel {
    cfg: TextConfig,
    embed: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: crate::layers::MatWeight,
    inv_freq: Vec<f32>,
    device: Device,
    /// The dtype of hidden states, KV cache and attention scores
    /// ([`Weights::activation_dtype`]).
    dtype: DType,
}

impl TextModel {
    /// Load from `w` scoped at the checkpoint root (names `model.*`, `lm_head.weight`).
    pub fn load(cfg: &TextConfig, tie_word_embeddings: bool, w: &Weights) -> Result<Self> {
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let m = w.pp("model");
        let share = tie_word_embeddings && shares_tied_embedding(&w.policy());
        let (embed, lm_head) = if share {
            let head = m.matmul_weight(&[vocab, hidden], "embed_tokens.weight")?;
            (TokenEmbedding::SharedWithHead, head)
        } else {
            let table = crate::layers::Embedding::load(&m.pp("embed_tokens"), vocab, hidden)?;
            let head = if tie_word_embeddings {
                m.matmul_weight(&[vocab, hidden], "embed_tokens.weight")?
            } else {
                w.matmul_weight(&[vocab, hidden], "lm_head.weight")?
            };
            (TokenEmbedding::Table(table), head)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, &m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), hidden, cfg.rms_norm_eps)?;
        let d = cfg.head_dim();
        let inv_freq = crate::layers::kernels::rope_inv_freq(d, cfg.rope_theta);
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            device: w.device().clone(),
            dtype: w.activation_dtype(),
        })
    }

    /// Weight bytes one decoded token reads: every layer's linear weights and the output head
    /// (the token table lookup, the norms and the vision tower are not counted). Bandwidth
    /// divided by this is the decode speed limit.
    pub fn decode_weight_bytes(&self) -> u64 {
        let layers: usize = self.layers.iter().map(DecoderLayer::weight_bytes).sum();
        (layers + self.lm_head.bytes()) as u64
    }

    /// The configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len(), 2, KV_GROW)
    }

    /// Embeddings `(1, n, hidden)` of token ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let t = Tensor::new(ids, &self.device)?;
        let e = match &self.embed {
            TokenEmbedding::Table(e) => e.forward(&t)?,
            TokenEmbedding::SharedWithHead => self.lm_head.embedding(&t)?.to_dtype(self.dtype)?,
        };
        Ok(e.reshape((1, ids.len(), self.cfg.hidden_size))?)
    }

    /// cos/sin `(s, head_dim/2)`: frequency j takes its angle from axis 0 (temporal) for the
    /// first `mrope_section[0]` frequencies, axis 1 (height) for the next, axis 2 (width) last.
    fn rotary(&self, positions: [&[i64]; 3]) -> Result<Rotary> {
        let s = positions[0].len();
        let half = self.inv_freq.len();
        let [s0, s1, _] = self.cfg.mrope_section;
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        let [pt, ph, pw] = positions;
        for ((&t, &h), &w) in pt.iter().zip(ph).zip(pw) {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                let pos = if j < s0 {
                    t
                } else if j < s0 + s1 {
                    h
                } else {
                    w
                };
                let a = (pos as f32 * f) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        // Angles in f64, tables rounded once to the activation dtype on the host.
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (s, half), &Device::Cpu)?
                .to_dtype(self.dtype)?
                .to_device(&self.device)?)
        };
        Ok(Rotary {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Run the decoder on input embeddings `(1, s, hidden)` at M-RoPE `positions` (three
    /// slices of length `s`), appending to `cache`. Returns logits as asked, in f32.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: [&[i64]; 3],
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        let (b, s, hidden) = embeds.dims3()?;
        if b != 1 || hidden != self.cfg.hidden_size {
            return Err(ModelError::InvalidInput(format!(
                "embeddings must be (1, s, {}), got {:?}",
                self.cfg.hidden_size,
                embeds.dims()
            )));
        }
        if positions.iter().any(|p| p.len() != s) || s == 0 {
            return Err(ModelError::InvalidInput(format!(
                "need {s} > 0 positions on each of the 3 axes"
            )));
        }
        if cache.num_layers() != self.layers.len() {
            return Err(ModelError::InvalidInput(
                "KV cache belongs to another model".into(),
            ));
        }
        let past = cache.len();
        let rot = self.rotary(positions)?;
        let mask = if s > 1 {
            let total = past + s;
            let data: Vec<f32> = (0..s)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(
                Tensor::from_vec(data, (s, total), &Device::Cpu)?
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?,
            )
        } else {
            None
        };
        let mut x = embeds.to_dtype(self.dtype)?;
        for (layer, lc) in self.layers.iter().zip(cache.layers_mut()) {
            x = layer.forward(&x, &rot, mask.as_ref(), lc)?;
        }
        let x = logits.select(&x)?;
        let x = self.norm.forward(&x)?;
        // Logits in f32 whatever the activations (as the reference upcasts them).
        Ok(self
            .lm_head
            .forward(&x.contiguous()?)?
            .to_dtype(DType::F32)?)
    }

    /// Convenience: logits of the last position as a vector.
    pub fn last_logits_vec(logits: &Tensor) -> Result<Vec<f32>> {
        let v = logits.dim(D::Minus1)?;
        Ok(logits
            .reshape(((), v))?
            .narrow(0, logits.elem_count() / v - 1, 1)?
            .flatten_all()?
            .to_vec1()?)
    }
}
