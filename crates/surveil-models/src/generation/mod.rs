//! Autoregressive generation shared by every architecture: token selection (greedy, or
//! temperature + top-p sampling with a seeded generator so runs are reproducible) and the one
//! decoding loop ([`generate`]) that drives any model's [`DecodeSession`] with the same stop
//! rules, hooks and timings.
//!
//! The loop follows Hugging Face transformers' `GenerationMixin` greedy/sample loop (logits
//! processors, then the sampler, then stopping criteria), with the stop token left out of the
//! output as `TextStreamer` / `batch_decode(skip_special_tokens=True)` users see it.

pub mod constrained;
pub mod thinking;

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::tokenizer::{TextTokenizer, TokenStream};
use crate::vlm::GenerationHooks;
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
                    // Zero-probability entries (masked logits, or underflow at low
                    // temperature) can never be drawn: dropping them keeps the sort small.
                    .filter(|(_, p)| p.is_finite() && *p > 0.0)
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

/// Index of the largest value (the first one on ties; NaN never wins; 0 when every value is
/// NaN or `values` is empty).
///
/// Two passes, each free of loop-carried branches so that they vectorize: the maximum (lanes
/// of 16, `f32::max` skipping NaN), then the first index holding it. A decode step's logits
/// (152 K for Qwen2-VL) take tens of microseconds instead of the hundreds a compare-and-
/// remember loop takes.
pub fn argmax(values: &[f32]) -> u32 {
    const L: usize = 16;
    let chunks = values.chunks_exact(L);
    let tail = chunks.remainder();
    let mut lanes = [f32::NAN; L];
    for c in chunks {
        for i in 0..L {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let max = tail.iter().chain(&lanes).fold(f32::NAN, |m, &v| m.max(v));
    if max.is_nan() {
        return 0;
    }
    values.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// How to generate: how many tokens at most, how each is chosen.
///
/// ```
/// use surveil_models::{GenerationParams, Sampling};
///
/// // Reproducible answers: always the most likely token.
/// let greedy = GenerationParams::greedy(128);
/// assert_eq!(greedy.sampling, Sampling::Greedy);
///
/// // Temperature + top-p, as the `vlm.temperature` / `vlm.top_p` settings give them; the seed
/// // makes the draw repeatable. A temperature of 0 means greedy.
/// let sampled = GenerationParams {
///     max_new_tokens: 128,
///     sampling: Sampling::from_params(0.7, 0.9),
///     seed: 42,
///     ignore_stop_tokens: false,
/// };
/// assert_eq!(
///     sampled.sampling,
///     Sampling::TopP { temperature: 0.7, top_p: 0.9 }
/// );
/// assert_eq!(Sampling::from_params(0.0, 0.9), Sampling::Greedy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationParams {
    /// Upper bound on new tokens (the stop token not counted).
    pub max_new_tokens: usize,
    /// Greedy or temperature + top-p.
    pub sampling: Sampling,
    /// Seed of the sampler (ignored for greedy).
    pub seed: u64,
    /// Benchmarks only: the stop tokens are masked, so decoding runs to `max_new_tokens` (or a
    /// full context), as `llama-bench -n N` does. Off for answers.
    pub ignore_stop_tokens: bool,
}

impl GenerationParams {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            ignore_stop_tokens: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// This stop token was chosen; it is not part of the output.
    StopToken(u32),
    /// `max_new_tokens` were produced.
    MaxNewTokens,
    /// The model's context (its position limit) is full.
    ContextFull,
    /// A hook asked to stop: [`GenerationHooks::on_token`] returned `Break`, or
    /// [`GenerationHooks::cancelled`] returned true.
    Cancelled,
}

impl std::fmt::Display for StopReason {
    /// In words, for people: `stop token 151645`, `max new tokens`, `context full`,
    /// `cancelled` (the JSON form is snake_case: `{"stop_token":151645}`, `"max_new_tokens"`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::StopToken(token) => write!(f, "stop token {token}"),
            StopReason::MaxNewTokens => f.write_str("max new tokens"),
            StopReason::ContextFull => f.write_str("context full"),
            StopReason::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Timings of one generation, measured the same way for every model. All times in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Prompt length in tokens (image placeholder tokens included).
    pub prompt_tokens: usize,
    /// Tokens produced (the stop token not counted).
    pub generated_tokens: usize,
    /// From the start of the call to the start of the loop: image processing, chat template,
    /// tokenization.
    pub preprocess_s: f64,
    /// Vision tower (and projection into the text width).
    pub vision_s: f64,
    /// Decoder prefill of the prompt.
    pub prefill_s: f64,
    /// From the start of the call to the first chosen token (stop token included).
    pub time_to_first_token_s: f64,
    /// From the first chosen token to the end: the incremental decode steps.
    pub decode_s: f64,
    /// Decode speed: tokens chosen after the first (the stop token included, it cost a step)
    /// divided by `decode_s`; 0 when there was no decode step.
    pub decode_tokens_per_s: f64,
    /// Wall time of the whole call.
    pub total_s: f64,
    /// Mixture-of-experts models: bytes of routed-expert weights read per decoded token (mean
    /// over the decode steps); `None` for dense models.
    pub routed_expert_bytes_per_token: Option<f64>,
    /// Mixture-of-experts models: bytes of all routed-expert weights resident.
    pub routed_expert_bytes_total: Option<u64>,
    /// Weight bytes the decoder reads per decoded token: every decoder linear and the output
    /// head, plus for mixture-of-experts models the mean routed-expert bytes per step (the
    /// vision tower, token-table lookups and norms are not counted). The machine's read
    /// bandwidth divided by this is the decode speed limit. `None` when the model does not
    /// report it.
    pub weight_bytes_per_token: Option<f64>,
}

/// What [`generate`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationOutput {
    /// New token ids, the stop token excluded.
    pub tokens: Vec<u32>,
    /// Their text, [`TextTokenizer::decode`] of `tokens` (special tokens left out; empty
    /// without a tokenizer).
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timings.
    pub stats: GenerationStats,
}

/// One prompt of one model, made ready to decode: what [`generate`] drives. Each architecture
/// implements it over its own key/value cache.
///
/// Logits are one row of the model's vocabulary rows (`vocab_size`, which can exceed the
/// tokenizer's table), f32.
pub trait DecodeSession {
    /// Prompt length in tokens (image placeholder tokens included).
    fn prompt_tokens(&self) -> usize;
    /// Run the vision side (vision tower, projection into the text width). Text-only prompts
    /// do nothing here.
    fn encode_images(&mut self) -> Result<()> {
        Ok(())
    }
    /// Run the prompt through the decoder, filling the cache; returns the logits of the first
    /// new token.
    fn prefill(&mut self) -> Result<Vec<f32>>;
    /// Feed `token` after what the cache holds; returns the logits of the next token.
    fn step(&mut self, token: u32) -> Result<Vec<f32>>;
    /// How many more tokens [`Self::step`] can take before the position limit
    /// (`max_position_embeddings`) is reached.
    fn remaining_context(&self) -> usize;
}

/// The generation loop every model goes through.
///
/// Order, per new token: [`GenerationHooks::mask_logits`] → the sampler → a stop token ends
/// generation (not added to the output) → the token is added and its text streamed
/// ([`TokenStream`], then [`GenerationHooks::on_token`]; `Break` stops) → `max_new_tokens`
/// reached stops → no room left in the context stops → [`DecodeSession::step`].
/// [`GenerationHooks::cancelled`] is polled before the vision side, after it, after the
/// prefill, and before every step.
///
/// `started` is when the caller's work began (image processing and tokenization before this
/// call count as preprocessing and into the time to first token). Without a `tokenizer` the
/// hooks receive empty text.
///
/// Errors: whatever the session returns, and [`ModelError::InvalidInput`] when the hooks mask
/// every token.
pub fn generate(
    session: &mut dyn DecodeSession,
    tokenizer: Option<&dyn TextTokenizer>,
    params: &GenerationParams,
    stop_tokens: &[u32],
    hooks: &mut dyn GenerationHooks,
    started: Instant,
) -> Result<GenerationOutput> {
    let loop_start = Instant::now();
    let _span = tracing::debug_span!(
        "generate",
        prompt = session.prompt_tokens(),
        max_new_tokens = params.max_new_tokens
    )
    .entered();
    let mut stats = GenerationStats {
        prompt_tokens: session.prompt_tokens(),
        preprocess_s: loop_start.duration_since(started).as_secs_f64(),
        ..GenerationStats::default()
    };
    let mut stream = tokenizer.map(TokenStream::new);
    let mut tokens = Vec::new();
    let mut first_token: Option<Instant> = None;
    let mut chosen = 0usize;
    let stop_reason = 'run: {
        if params.max_new_tokens == 0 {
            break 'run StopReason::MaxNewTokens;
        }
        if hooks.cancelled() {
            break 'run StopReason::Cancelled;
        }
        let t = Instant::now();
        session.encode_images()?;
        stats.vision_s = t.elapsed().as_secs_f64();
        if hooks.cancelled() {
            break 'run StopReason::Cancelled;
        }
        let t = Instant::now();
        let mut logits = session.prefill()?;
        stats.prefill_s = t.elapsed().as_secs_f64();
        if hooks.cancelled() {
            break 'run StopReason::Cancelled;
        }
        let mut sampler = TokenSampler::new(params.sampling, params.seed);
        loop {
            hooks.mask_logits(&mut logits)?;
            if params.ignore_stop_tokens {
                for &t in stop_tokens {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            if !logits.iter().any(|l| l.is_finite()) {
                return Err(ModelError::InvalidInput(
                    "no token is allowed: every logit is masked or not finite".into(),
                ));
            }
            let token = sampler.sample_slice(&logits)?;
            chosen += 1;
            if first_token.is_none() {
                first_token = Some(Instant::now());
            }
            if stop_tokens.contains(&token) {
                break 'run StopReason::StopToken(token);
            }
            tokens.push(token);
            let piece = match stream.as_mut() {
                Some(s) => s.push(token)?,
                None => String::new(),
            };
            if hooks.on_token(token, &piece).is_break() {
                break 'run StopReason::Cancelled;
            }
            if tokens.len() >= params.max_new_tokens {
                break 'run StopReason::MaxNewTokens;
            }
            if session.remaining_context() == 0 {
                break 'run StopReason::ContextFull;
            }
            if hooks.cancelled() {
                break 'run StopReason::Cancelled;
            }
            logits = session.step(token)?;
        }
    };
    // The text of the whole output, as the reference decodes it (`skip_special_tokens`);
    // the streamed pieces the hooks saw add up to it except for a character cut off at the
    // end, which only appears here (as U+FFFD).
    let text = match tokenizer {
        Some(t) => t.decode(&tokens)?,
        None => String::new(),
    };
    let end = Instant::now();
    stats.generated_tokens = tokens.len();
    stats.time_to_first_token_s = first_token
        .map(|t| t.duration_since(started).as_secs_f64())
        .unwrap_or(0.0);
    let decode = first_token.map_or(Duration::ZERO, |t| end.duration_since(t));
    stats.decode_s = decode.as_secs_f64();
    stats.decode_tokens_per_s = if chosen > 1 && stats.decode_s > 0.0 {
        (chosen - 1) as f64 / stats.decode_s
    } else {
        0.0
    };
    stats.total_s = end.duration_since(started).as_secs_f64();
    tracing::debug!(
        generated = stats.generated_tokens,
        ?stop_reason,
        ttft_s = stats.time_to_first_token_s,
        tok_per_s = stats.decode_tokens_per_s,
        "generation done"
    );
    Ok(GenerationOutput {
        tokens,
        text,
        stop_reason,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_read_as_words() {
        let words = [
            (StopReason::StopToken(151_645), "stop token 151645"),
            (StopReason::MaxNewTokens, "max new tokens"),
            (StopReason::ContextFull, "context full"),
            (StopReason::Cancelled, "cancelled"),
        ];
        for (reason, text) in words {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn greedy_picks_max_first_on_ties() {
        let mut s = TokenSampler::new(Sampling::Greedy, 0);
        assert_eq!(s.sample_slice(&[0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn argmax_is_the_first_largest_on_long_rows_with_nan_and_ties() {
        // The reference: remember the first strictly larger value, skipping NaN.
        let reference = |v: &[f32]| -> u32 {
            let mut best: Option<usize> = None;
            for (i, &x) in v.iter().enumerate() {
                if !x.is_nan() && best.is_none_or(|b| x > v[b]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0) as u32
        };
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for len in [1usize, 15, 16, 17, 33, 1000, 151_936] {
            let mut v: Vec<f32> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Few distinct values, so the maximum repeats.
                    (state % 50) as f32 - 25.0
                })
                .collect();
            assert_eq!(argmax(&v), reference(&v), "len {len}");
            v[len / 2] = f32::NAN;
            v[len - 1] = f32::INFINITY;
            assert_eq!(argmax(&v), reference(&v), "len {len} with NaN and +inf");
        }
        assert_eq!(argmax(&[f32::NAN; 20]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
        assert_eq!(argmax(&[]), 0);
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

#[cfg(test)]
mod loop_tests {
    use std::collections::HashSet;
    use std::ops::ControlFlow;

    use super::*;
    use crate::tokenizer::Vocabulary;
    use crate::vlm::{NoHooks, OnToken};

    /// Scripted logits: `prefill` returns `script[0]`, the n-th `step` `script[n]`.
    struct Scripted {
        script: Vec<Vec<f32>>,
        fed: Vec<u32>,
        encoded: bool,
        prefilled: bool,
        prompt: usize,
        context: usize,
    }

    impl Scripted {
        /// One-hot-ish rows: each step's argmax is the next id of `argmaxes`, runner-up `4`.
        fn new(argmaxes: &[u32], context: usize) -> Self {
            let script = argmaxes
                .iter()
                .map(|&a| {
                    let mut row = vec![0.0f32; 6];
                    row[4] = 1.0;
                    row[a as usize] = 2.0;
                    row
                })
                .collect();
            Self {
                script,
                fed: Vec::new(),
                encoded: false,
                prefilled: false,
                prompt: 3,
                context,
            }
        }
    }

    impl DecodeSession for Scripted {
        fn prompt_tokens(&self) -> usize {
            self.prompt
        }
        fn encode_images(&mut self) -> Result<()> {
            self.encoded = true;
            Ok(())
        }
        fn prefill(&mut self) -> Result<Vec<f32>> {
            self.prefilled = true;
            Ok(self.script[0].clone())
        }
        fn step(&mut self, token: u32) -> Result<Vec<f32>> {
            self.fed.push(token);
            self.script
                .get(self.fed.len())
                .cloned()
                .ok_or_else(|| ModelError::InvalidInput("script exhausted".into()))
        }
        fn remaining_context(&self) -> usize {
            self.context - self.prompt - self.fed.len()
        }
    }

    /// Ids 0..=5: "a", "b", "c", `<end>` (special), "d", "e".
    struct Letters(Vocabulary);

    fn letters() -> Letters {
        let tokens = ["a", "b", "c", "<end>", "d", "e"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        Letters(Vocabulary::new(tokens, HashSet::from([3])))
    }

    impl TextTokenizer for Letters {
        fn encode(&self, _: &str) -> Result<Vec<u32>> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids
                .iter()
                .filter_map(|&i| self.0.bytes(i))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect())
        }
        fn vocabulary(&self) -> Option<&Vocabulary> {
            Some(&self.0)
        }
        fn stop_token_ids(&self) -> Vec<u32> {
            vec![3]
        }
    }

    fn run(
        session: &mut Scripted,
        max_new_tokens: usize,
        hooks: &mut dyn GenerationHooks,
    ) -> Result<GenerationOutput> {
        let tok = letters();
        generate(
            session,
            Some(&tok),
            &GenerationParams::greedy(max_new_tokens),
            &[3],
            hooks,
            Instant::now(),
        )
    }

    #[test]
    fn ignoring_stop_tokens_decodes_exactly_max_new_tokens() {
        // Token 3 is the stop token and the argmax of the third step: masked, the runner-up
        // (4) is chosen and decoding goes on to the limit.
        let mut s = Scripted::new(&[0, 1, 3, 2, 0], 100);
        let tok = letters();
        let params = GenerationParams {
            ignore_stop_tokens: true,
            ..GenerationParams::greedy(5)
        };
        let out = generate(
            &mut s,
            Some(&tok),
            &params,
            &[3],
            &mut NoHooks,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![0, 1, 4, 2, 0]);
        assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    }

    #[test]
    fn stop_token_ends_generation_and_is_left_out() {
        let mut s = Scripted::new(&[0, 1, 3, 2], 100);
        let mut seen = Vec::new();
        let out = run(
            &mut s,
            10,
            &mut OnToken(|t, text: &str| {
                seen.push((t, text.to_string()));
                ControlFlow::Continue(())
            }),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![0, 1]);
        assert_eq!(out.stop_reason, StopReason::StopToken(3));
        assert_eq!(out.text, "ab");
        assert_eq!(seen, vec![(0, "a".into()), (1, "b".into())]);
        assert_eq!(s.fed, vec![0, 1], "the stop token is never fed back");
        assert_eq!(out.stats.prompt_tokens, 3);
        assert_eq!(out.stats.generated_tokens, 2);
        let st = &out.stats;
        assert!(st.time_to_first_token_s <= st.total_s && st.decode_s <= st.total_s);
    }

    #[test]
    fn max_new_tokens_stops_without_an_extra_step() {
        let mut s = Scripted::new(&[0, 1, 2, 4], 100);
        let out = run(&mut s, 2, &mut NoHooks).unwrap();
        assert_eq!(out.tokens, vec![0, 1]);
        assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
        assert_eq!(s.fed, vec![0]);
        // Zero tokens: nothing runs.
        let mut s = Scripted::new(&[0], 100);
        let out = run(&mut s, 0, &mut NoHooks).unwrap();
        assert!(out.tokens.is_empty() && !s.encoded && !s.prefilled);
        assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    }

    struct Forbid(u32);
    impl GenerationHooks for Forbid {
        fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
            logits[self.0 as usize] = f32::NEG_INFINITY;
            Ok(())
        }
    }

    #[test]
    fn a_mask_that_forbids_the_argmax_changes_the_token() {
        let mut s = Scripted::new(&[0, 0, 3], 100);
        let out = run(&mut s, 3, &mut Forbid(0)).unwrap();
        // The runner-up of the first two rows is 4 ("d"); the third row still stops.
        assert_eq!(out.tokens, vec![4, 4]);
        assert_eq!(out.text, "dd");
        assert_eq!(out.stop_reason, StopReason::StopToken(3));
        assert_eq!(
            s.fed,
            vec![4, 4],
            "the chosen tokens are what the model is fed"
        );
        // Forbidding the stop token lets generation go on past it.
        let mut s = Scripted::new(&[0, 3, 1], 100);
        let out = run(&mut s, 3, &mut Forbid(3)).unwrap();
        assert_eq!(out.tokens, vec![0, 4, 1]);
    }

    struct MaskAll;
    impl GenerationHooks for MaskAll {
        fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
            logits.fill(f32::NEG_INFINITY);
            Ok(())
        }
    }

    #[test]
    fn masking_every_token_is_an_error() {
        let mut s = Scripted::new(&[0], 100);
        let err = run(&mut s, 3, &mut MaskAll).unwrap_err().to_string();
        assert!(err.contains("no token is allowed"), "{err}");
    }

    /// Cancels once `cancelled` has been polled `after` times.
    struct CancelAfter {
        after: usize,
        polls: std::cell::Cell<usize>,
    }
    impl GenerationHooks for CancelAfter {
        fn cancelled(&self) -> bool {
            self.polls.set(self.polls.get() + 1);
            self.polls.get() > self.after
        }
    }

    fn cancel_after(after: usize) -> CancelAfter {
        CancelAfter {
            after,
            polls: std::cell::Cell::new(0),
        }
    }

    #[test]
    fn cancellation_is_polled_between_stages_and_steps() {
        // Before the vision side: nothing runs.
        let mut s = Scripted::new(&[0, 1, 2], 100);
        let out = run(&mut s, 5, &mut cancel_after(0)).unwrap();
        assert_eq!(out.stop_reason, StopReason::Cancelled);
        assert!(out.tokens.is_empty() && !s.encoded && !s.prefilled);
        // After the vision side, before the prefill.
        let mut s = Scripted::new(&[0, 1, 2], 100);
        let out = run(&mut s, 5, &mut cancel_after(1)).unwrap();
        assert!(s.encoded && !s.prefilled && out.tokens.is_empty());
        // After the prefill, before the first token.
        let mut s = Scripted::new(&[0, 1, 2], 100);
        let out = run(&mut s, 5, &mut cancel_after(2)).unwrap();
        assert!(s.prefilled && out.tokens.is_empty());
        // Before the second step: two tokens, one step.
        let mut s = Scripted::new(&[0, 1, 2, 4], 100);
        let out = run(&mut s, 5, &mut cancel_after(4)).unwrap();
        assert_eq!(out.tokens, vec![0, 1]);
        assert_eq!(s.fed, vec![0]);
        assert_eq!(out.stop_reason, StopReason::Cancelled);
        // on_token returning Break keeps the token and stops.
        let mut s = Scripted::new(&[0, 1, 2], 100);
        let out = run(
            &mut s,
            5,
            &mut OnToken(|t, _: &str| {
                if t == 1 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![0, 1]);
        assert_eq!(out.stop_reason, StopReason::Cancelled);
    }

    #[test]
    fn context_full_stops_when_no_position_is_left() {
        // Prompt 3, context 5: two steps fit, so three tokens (the last is never fed).
        let mut s = Scripted::new(&[0, 1, 2, 4, 4], 5);
        let out = run(&mut s, 10, &mut NoHooks).unwrap();
        assert_eq!(out.tokens, vec![0, 1, 2]);
        assert_eq!(s.fed, vec![0, 1]);
        assert_eq!(out.stop_reason, StopReason::ContextFull);
    }

    #[test]
    fn without_a_tokenizer_there_is_no_text() {
        let mut s = Scripted::new(&[0, 1, 3], 100);
        let out = generate(
            &mut s,
            None,
            &GenerationParams::greedy(5),
            &[3],
            &mut NoHooks,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![0, 1]);
        assert_eq!(out.text, "");
    }
}
