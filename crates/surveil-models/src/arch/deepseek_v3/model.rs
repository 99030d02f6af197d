//! The DeepSeek-V3 decoder: multi-head latent attention ([`super::mla`]), a dense SwiGLU MLP
//! in the first layers, then sigmoid-routed mixture-of-experts with shared experts
//! ([`super::moe`]).

use candle_core::{DType, Device, Tensor};

use super::config::DeepseekV3Config;
use super::mla::{Attention, DeepseekV3Cache, Rotary};
use super::moe::{Mlp, Moe, RouterChoice};
use crate::generation::TokenSampler;
use crate::layers::{Embedding, Logits, RmsNorm};
use crate::load::weights::Weights;
use crate::{ModelError, Result};

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
    lm_head: crate::layers::MatWeight,
    inv_freq: Vec<f32>,
    device: Device,
    /// The dtype of hidden states, latent cache and attention scores
    /// ([`Weights::activation_dtype`]).
    dtype: DType,
}

impl DeepseekV3Model {
    /// Bytes of routed-expert weights read by every forward pass of this model so far (each
    /// chosen expert's gate, up and down projections once per pass; shared experts and dense
    /// layers not counted). The difference over a decode step is what that token read.
    pub fn routed_expert_bytes_read(&self) -> u64 {
        self.moe_layers().map(Moe::routed_bytes_read).sum()
    }

    /// Weight bytes every decoded token reads whatever the routing: attention, dense layers,
    /// routers, shared experts and the output head (the token table lookup and the norms are
    /// not counted). Add the routed experts a token chose
    /// ([`Self::routed_expert_bytes_read`] over a step) for what one token reads.
    pub fn dense_weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                l.attn.weight_bytes()
                    + match &l.ff {
                        FeedForward::Dense(m) => m.weight_bytes(),
                        FeedForward::Moe(m) => m.always_read_bytes(),
                    }
            })
            .sum();
        layers + self.lm_head.bytes() as u64
    }

    /// Bytes of all routed-expert weights resident (every expert of every MoE layer).
    pub fn routed_expert_bytes(&self) -> u64 {
        self.moe_layers().map(Moe::routed_expert_bytes).sum()
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
        // Rounded once to the activation dtype on the host.
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

    /// Run the decoder on input embeddings `(1, s, hidden)` placed after what `cache` holds
    /// (prefill: an empty cache; decode: one embedding), appending to `cache`. Logits in f32.
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
        if cache.num_layers() != self.layers.len() {
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
            Some(
                Tensor::from_vec(data, (s, total), &Device::Cpu)?
                    .to_dtype(self.dtype)?
                    .to_device(&self.device)?,
            )
        } else {
            None
        };
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, (layer, lc)) in self.layers.iter().zip(cache.layers_mut()).enumerate() {
            x = layer
                .attn
                .forward(&layer.input_norm.forward(&x)?, &rot, mask.as_ref(), lc, &x)?;
            let hn = layer.post_norm.forward(&x)?;
            x = match &layer.ff {
                FeedForward::Dense(mlp) => mlp.forward_add(&hn, &x)?,
                FeedForward::Moe(moe) => {
                    (&x + moe.forward(&hn, trace.as_deref_mut().map(|t| (i, t)))?)?
                }
            };
        }
        let x = logits.select(&x)?;
        let x = self.norm.forward(&x)?;
        // Logits in f32 whatever the activations.
        Ok(self
            .lm_head
            .forward(&x.contiguous()?)?
            .to_dtype(DType::F32)?)
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
