//! Token selection for autoregressive generation: greedy, or temperature + top-p sampling with
//! a seeded generator so runs are reproducible.

use candle_core::{DType, Tensor};

use crate::{ModelError, Result};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the highest logit (ties: the lowest id).
    Greedy,
    /// Softmax at `temperature`, keep the smallest set of tokens whose probability reaches
    /// `top_p`, draw from it.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
    },
}

impl Sampling {
    /// Greedy when `temperature` is 0 (or below), nucleus sampling otherwise.
    pub fn from_params(temperature: f64, top_p: f64) -> Self {
        if temperature <= 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopP {
                temperature,
                top_p: top_p.clamp(f64::MIN_POSITIVE, 1.0),
            }
        }
    }
}

/// Picks tokens from logits; holds the random state.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    sampling: Sampling,
    state: u64,
}

impl TokenSampler {
    /// A sampler with a seed (ignored for greedy).
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self {
            sampling,
            state: seed ^ 0x5851_f42d_4c95_7f2d,
        }
    }

    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Choose the next token from a 1-D logits tensor.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        self.sample_slice(&logits)
    }

    /// Choose the next token from logits as a slice.
    pub fn sample_slice(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::InvalidInput("empty logits".into()));
        }
        match self.sampling {
            Sampling::Greedy => Ok(argmax(logits)),
            Sampling::TopP { temperature, top_p } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut probs: Vec<(u32, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, (((l - max) as f64) / temperature).exp()))
                    .filter(|(_, p)| p.is_finite())
                    .collect();
                let total: f64 = probs.iter().map(|(_, p)| p).sum();
                if total.is_nan() || total <= 0.0 {
                    return Ok(argmax(logits));
                }
                probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut kept = 0.0;
                let mut cut = probs.len();
                for (i, (_, p)) in probs.iter().enumerate() {
                    kept += p / total;
                    if kept >= top_p {
                        cut = i + 1;
                        break;
                    }
                }
                probs.truncate(cut);
                let mass: f64 = probs.iter().map(|(_, p)| p).sum();
                let mut r = self.next_unit() * mass;
                for (id, p) in &probs {
                    r -= p;
                    if r <= 0.0 {
                        return Ok(*id);
                    }
                }
                Ok(probs.last().map(|(id, _)| *id).unwrap_or(0))
            }
        }
    }
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max_first_on_ties() {
        let mut s = TokenSampler::new(Sampling::Greedy, 0);
        assert_eq!(s.sample_slice(&[0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_p_small_keeps_only_the_best() {
        let mut s = TokenSampler::new(Sampling::from_params(1.0, 0.01), 3);
        for _ in 0..20 {
            assert_eq!(s.sample_slice(&[0.0, 5.0, 1.0]).unwrap(), 1);
        }
    }

    #[test]
    fn sampling_is_seeded_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let draw = |seed| {
            let mut s = TokenSampler::new(Sampling::from_params(1.0, 1.0), seed);
            (0..4000)
                .map(|_| s.sample_slice(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        let ones = draw(9).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }
}
