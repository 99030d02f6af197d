//! The feed-forward side of the DeepSeek-V3 decoder: the SwiGLU MLP (dense layers, routed and
//! shared experts) and the sigmoid-routed mixture of experts.

use candle_core::{DType, Device, Tensor};

use super::config::DeepseekV3Config;
use crate::layers::Linear;
use crate::load::weights::Weights;
use crate::load::weights::{tiled_experts_forward, RoutedPair, TiledWeight};
use crate::Result;

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

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
pub(super) struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub(super) fn load(w: &Weights, hidden: usize, inner: usize) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(w, hidden, inner, false, "gate_proj")?,
            up: Linear::load(w, hidden, inner, false, "up_proj")?,
            down: Linear::load(w, inner, hidden, false, "down_proj")?,
        })
    }

    /// Bytes of the three projection weights.
    pub(super) fn weight_bytes(&self) -> u64 {
        (self.gate.weight_bytes() + self.up.weight_bytes() + self.down.weight_bytes()) as u64
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&Linear::swiglu(&self.gate, &self.up, x)?)
    }

    /// `residual + forward(x)` (the residual added by `down_proj`'s matmul).
    pub(super) fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.down
            .forward_add(&Linear::swiglu(&self.gate, &self.up, x)?, residual)
    }

    /// Gate, up and down in CPU tile layouts (no bias), when they are.
    fn tiled(&self) -> Option<[&TiledWeight; 3]> {
        Some([
            self.gate.plain_tiled()?,
            self.up.plain_tiled()?,
            self.down.plain_tiled()?,
        ])
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

    /// Route `x` (`(n, hidden)`), in f32 whatever the activation dtype (as the reference's
    /// router does).
    fn route(&self, x: &Tensor) -> Result<Routing> {
        let x = x.to_dtype(DType::F32)?;
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
pub(super) struct Moe {
    /// Bytes of routed-expert weights read by forward passes so far (each chosen expert's
    /// three projections, once per pass): the traffic that top-k routing saves.
    routed_bytes_read: std::sync::atomic::AtomicU64,
    router: Router,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

impl Moe {
    pub(super) fn load(cfg: &DeepseekV3Config, w: &Weights) -> Result<Self> {
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

    /// Bytes of routed-expert weights read by forward passes so far.
    pub(super) fn routed_bytes_read(&self) -> u64 {
        self.routed_bytes_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes read by every token whatever the routing: the router and the shared experts.
    pub(super) fn always_read_bytes(&self) -> u64 {
        let router = self.router.weight.elem_count() * self.router.weight.dtype().size_in_bytes();
        router as u64 + self.shared.as_ref().map_or(0, Mlp::weight_bytes)
    }

    /// Bytes of all routed-expert weights of this layer.
    pub(super) fn routed_expert_bytes(&self) -> u64 {
        self.experts.iter().map(Mlp::weight_bytes).sum()
    }

    /// `x` is `(1, s, hidden)`. Tokens are grouped per expert: each chosen expert runs once
    /// over the rows routed to it, and its weighted output is scattered back with `index_add`.
    pub(super) fn forward(
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
        if let Some(routed) = self.tiled_routed(&flat, &routing)? {
            for (expert, idx) in self.experts.iter().zip(&rows) {
                if !idx.is_empty() {
                    self.routed_bytes_read
                        .fetch_add(expert.weight_bytes(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            out = (out + routed)?;
            if let Some((layer, trace)) = trace {
                trace.push(RouterChoice {
                    layer,
                    experts: routing.experts,
                    weights: routing.weights,
                });
            }
            return Ok(out.reshape((b, s, h))?);
        }
        for ((expert, idx), ws) in self.experts.iter().zip(&rows).zip(&row_weights) {
            if idx.is_empty() {
                continue;
            }
            self.routed_bytes_read
                .fetch_add(expert.weight_bytes(), std::sync::atomic::Ordering::Relaxed);
            let n = idx.len();
            let idx = Tensor::from_slice(idx, n, device)?;
            let ws = Tensor::from_slice(ws, (n, 1), device)?.to_dtype(flat.dtype())?;
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

impl Moe {
    /// The routed experts' weighted sum `(n, hidden)` through the grouped expert kernels, when
    /// every expert is in one CPU tile format: three pool jobs per layer, each reading only
    /// the chosen experts. `None` otherwise (candle's storage: one matmul per expert).
    fn tiled_routed(&self, flat: &Tensor, routing: &Routing) -> Result<Option<Tensor>> {
        let Some(experts) = self
            .experts
            .iter()
            .map(Mlp::tiled)
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        if !flat.device().is_cpu() {
            return Ok(None);
        }
        let (n, h) = flat.dims2()?;
        let pairs: Vec<RoutedPair> = routing
            .experts
            .iter()
            .zip(&routing.weights)
            .enumerate()
            .flat_map(|(token, (ex, ws))| {
                ex.iter().zip(ws).map(move |(&e, &weight)| RoutedPair {
                    token,
                    expert: e as usize,
                    weight,
                })
            })
            .collect();
        let x: Vec<f32> = flat.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(match tiled_experts_forward(&experts, &x, n, &pairs)? {
            Some(y) => Some(Tensor::from_vec(y, (n, h), flat.device())?.to_dtype(flat.dtype())?),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::deepseek_v3::config::{kimi_vl_a3b_text_config, tensor_layout};
    use crate::load::weights::{DummySource, Weights};
    use surveil_memory::{QuantPolicy, StorageDtype};

    /// The grouped expert kernels (three pool jobs per layer) give, for every token, the
    /// weighted sum of what each chosen expert's own `Mlp::forward` gives, in both tile
    /// formats; experts of an odd inner width (40: neither 16 nor 32 divides it) included.
    #[test]
    fn tiled_experts_give_what_each_expert_gives_alone() {
        let mut cfg = kimi_vl_a3b_text_config();
        cfg.vocab_size = 32;
        cfg.hidden_size = 64;
        cfg.intermediate_size = 96;
        cfg.moe_intermediate_size = 40;
        cfg.num_hidden_layers = 2;
        cfg.num_attention_heads = 2;
        cfg.kv_lora_rank = 32;
        cfg.qk_nope_head_dim = 16;
        cfg.qk_rope_head_dim = 16;
        cfg.v_head_dim = 16;
        cfg.n_routed_experts = 8;
        cfg.num_experts_per_tok = 3;
        cfg.n_shared_experts = 1;
        for storage in [StorageDtype::Q4Kx16, StorageDtype::Q8_0x16] {
            let src = DummySource::new("moe", tensor_layout(&cfg), candle_core::DType::F32, 5);
            let w = Weights::new(
                Box::new(src),
                Device::Cpu,
                QuantPolicy::for_storage(storage),
            );
            let moe = Moe::load(&cfg, &w.pp("model.layers.1.mlp")).unwrap();
            assert!(moe.experts.iter().all(|e| e.tiled().is_some()), "{storage}");
            let (tokens, h) = (5, cfg.hidden_size);
            let x = Tensor::randn(0f32, 1.0, (1, tokens, h), &Device::Cpu).unwrap();
            let mut trace = Vec::new();
            let got: Vec<f32> = moe
                .forward(&x, Some((1, &mut trace)))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(trace.len(), 1);
            let flat = x.reshape((tokens, h)).unwrap();
            let routing = moe.router.route(&flat).unwrap();
            let shared = moe.shared.as_ref().unwrap().forward(&flat).unwrap();
            let mut want: Vec<f32> = shared.flatten_all().unwrap().to_vec1().unwrap();
            for (t, (ex, ws)) in routing.experts.iter().zip(&routing.weights).enumerate() {
                assert_eq!(ex.len(), cfg.num_experts_per_tok);
                let row = flat.narrow(0, t, 1).unwrap();
                for (&e, &wt) in ex.iter().zip(ws) {
                    let y: Vec<f32> = moe.experts[e as usize]
                        .forward(&row)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    for (o, v) in want[t * h..(t + 1) * h].iter_mut().zip(&y) {
                        *o += wt * v;
                    }
                }
            }
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-5 * scale.max(1e-6),
                "{storage}: max |grouped − per expert| = {diff}, max |y| = {scale}"
            );
        }
    }

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
