//! One short generation on a built-in test image: exercises the whole inference path of a
//! loaded model (processor, vision tower, decoder, tokenizer) through the model-agnostic
//! [`Vlm`] interface, to measure memory after the first inference. With dummy weights the
//! text is meaningless; the memory and timings are real.

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::generation::{GenerationParams, StopReason};
use crate::vlm::{NoHooks, Vlm, VlmKind, VlmRequest};
use crate::Result;

/// The question asked about [`test_image`] (captioners ignore it): a surveillance question of
/// about 60 text tokens, the size the pipeline's prompts have.
pub const TEST_PROMPT: &str = "You are watching a shop's security camera. Two people stand in \
the aisle near the shelves. Describe what each person is doing, whether either of them picks up, \
hides or pockets an item, and whether anything looks suspicious. Answer in two or three short \
sentences, then give your overall judgement.";

/// What the test generation produced.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeOutcome {
    /// The model id.
    pub model: String,
    /// The answer text.
    pub text: String,
    /// A thinking model's reasoning span.
    pub reasoning: Option<String>,
    /// Tokens generated (the stop token not counted).
    pub new_tokens: usize,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Prompt length in tokens (template, image placeholders and text).
    pub prompt_tokens: usize,
    /// Vision tower time, seconds.
    pub vision_s: f64,
    /// Decoder prefill time, seconds.
    pub prefill_s: f64,
    /// From the start of the call to the first token, seconds.
    pub time_to_first_token_s: f64,
    /// Decode speed after the first token, tokens per second.
    pub decode_tokens_per_s: f64,
    /// Wall time of preprocessing + generation, seconds.
    pub seconds: f64,
    /// Mixture-of-experts models: routed-expert weight bytes read per decoded token.
    pub routed_expert_bytes_per_token: Option<f64>,
    /// Mixture-of-experts models: all routed-expert weight bytes resident.
    pub routed_expert_bytes_total: Option<u64>,
    /// Weight bytes the decoder read per decoded token (see
    /// [`crate::generation::GenerationStats::weight_bytes_per_token`]).
    pub weight_bytes_per_token: Option<f64>,
}

/// What a text-only prefill measured ([`text_prefill`]).
#[derive(Debug, Clone, Serialize)]
pub struct PrefillOutcome {
    /// Prompt length in tokens (chat template included).
    pub prompt_tokens: usize,
    /// Decoder prefill time, seconds.
    pub prefill_s: f64,
    /// `prompt_tokens / prefill_s`.
    pub tokens_per_s: f64,
}

/// A 768×576 scene (the size of the sample clip's frames): a light upper third, a floor, two
/// upright figures. Deterministic.
pub fn test_image() -> RgbImage {
    let (w, h) = (768u32, 576u32);
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        if y < h / 3 {
            Rgb([120, 160, (200 + x % 40) as u8])
        } else {
            let g = (90 + (x + y) % 30) as u8;
            Rgb([g, g, g])
        }
    });
    for (x0, color) in [(240u32, [30u8, 30, 120]), (504, [140, 20, 20])] {
        for y in 264..480 {
            for x in x0..x0 + 48 {
                img.put_pixel(x, y, Rgb(color));
            }
        }
    }
    img
}

/// Ask `vlm` about [`test_image`] ([`TEST_PROMPT`]) in at most `max_new_tokens` tokens,
/// greedily.
pub fn describe_test_image(vlm: &dyn Vlm, max_new_tokens: usize) -> Result<SmokeOutcome> {
    describe_test_image_with(vlm, &GenerationParams::greedy(max_new_tokens))
}

/// [`describe_test_image`] with any generation parameters (benchmarks set
/// [`GenerationParams::ignore_stop_tokens`] to decode a fixed number of tokens).
pub fn describe_test_image_with(vlm: &dyn Vlm, params: &GenerationParams) -> Result<SmokeOutcome> {
    describe(vlm, &test_image(), TEST_PROMPT, params)
}

/// Ask `vlm` about `image` with `prompt` (captioners ignore it): the test inference on the
/// caller's frame and question, e.g. to give every stack of a benchmark the same input.
pub fn describe(
    vlm: &dyn Vlm,
    image: &RgbImage,
    prompt: &str,
    params: &GenerationParams,
) -> Result<SmokeOutcome> {
    let request = VlmRequest {
        images: std::slice::from_ref(image),
        system: None,
        prompt,
    };
    let out = vlm.analyse(&request, params, &mut NoHooks)?;
    Ok(SmokeOutcome {
        model: vlm.model_id().to_string(),
        text: out.text,
        reasoning: out.reasoning,
        new_tokens: out.tokens.len(),
        stop_reason: out.stop_reason,
        prompt_tokens: out.timings.prompt_tokens,
        vision_s: out.timings.vision_s,
        prefill_s: out.timings.prefill_s,
        time_to_first_token_s: out.timings.time_to_first_token_s,
        decode_tokens_per_s: out.timings.decode_tokens_per_s,
        seconds: out.timings.total_s,
        routed_expert_bytes_per_token: out.timings.routed_expert_bytes_per_token,
        routed_expert_bytes_total: out.timings.routed_expert_bytes_total,
        weight_bytes_per_token: out.timings.weight_bytes_per_token,
    })
}

/// The word a text-only prefill prompt repeats (the prompt is sized by counting its tokens, so
/// how a vocabulary splits it only changes how many words it takes).
const FILLER: &str = "shelf";

/// Prefill speed of a text-only prompt of about `tokens` tokens (chat template included),
/// decoder only: what `llama-bench -p N` measures. The text is a repeated word, sized by
/// tokenizing it; one token is generated (the prefill's). `None` for captioners, which take
/// no prompt.
///
/// # Errors
/// Tokenizer and generation errors; [`ModelError::InvalidInput`](crate::ModelError) when
/// `tokens` is smaller than the chat template alone.
pub fn text_prefill(vlm: &dyn Vlm, tokens: usize) -> Result<Option<PrefillOutcome>> {
    if vlm.kind() == VlmKind::Captioner {
        return Ok(None);
    }
    let ask = |prompt: &str, max_new_tokens: usize| {
        let request = VlmRequest {
            images: &[],
            system: None,
            prompt,
        };
        vlm.analyse(
            &request,
            &GenerationParams::greedy(max_new_tokens),
            &mut NoHooks,
        )
    };
    // the template's own tokens: the prompt length of an empty question (nothing is run)
    let overhead = ask("", 0)?.timings.prompt_tokens;
    let want = tokens.checked_sub(overhead).ok_or_else(|| {
        crate::ModelError::InvalidInput(format!(
            "a prefill of {tokens} tokens is shorter than the chat template ({overhead} tokens)"
        ))
    })?;
    let filler = |words: usize| vec![FILLER; words].join(" ");
    let per_word = vlm.tokenizer().encode(&filler(64))?.len().max(1) as f64 / 64.0;
    // a BPE may merge across words: step by the token difference until the count is right,
    // keeping the closest count seen (within one word of `want`)
    let mut words = (want as f64 / per_word).round() as usize;
    let mut best = (usize::MAX, 0usize);
    for _ in 0..8 {
        let n = vlm.tokenizer().encode(&filler(words))?.len();
        if n.abs_diff(want) < best.0 {
            best = (n.abs_diff(want), words);
        }
        if n == want {
            break;
        }
        let step = ((n.abs_diff(want) as f64 / per_word).round() as usize).max(1);
        words = if n > want {
            words.saturating_sub(step)
        } else {
            words + step
        };
    }
    let text = filler(best.1);
    let out = ask(&text, 1)?;
    let t = &out.timings;
    Ok(Some(PrefillOutcome {
        prompt_tokens: t.prompt_tokens,
        prefill_s: t.prefill_s,
        tokens_per_s: if t.prefill_s > 0.0 {
            t.prompt_tokens as f64 / t.prefill_s
        } else {
            0.0
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::GenerationStats;
    use crate::tokenizer::{TextTokenizer, Vocabulary};
    use crate::vlm::{Generation, GenerationHooks};

    /// Splits text into whitespace-separated words of `per_word` tokens each; every
    /// `merge_every`-th pair of words becomes one token less (a BPE merging across words).
    struct Words {
        per_word: usize,
        merge_every: usize,
    }

    impl TextTokenizer for Words {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            let words = text.split_whitespace().count();
            let merged = words.checked_div(self.merge_every).unwrap_or(0);
            Ok(vec![7; words * self.per_word - merged])
        }
        fn decode(&self, _: &[u32]) -> Result<String> {
            Ok(String::new())
        }
        fn vocabulary(&self) -> Option<&Vocabulary> {
            None
        }
        fn stop_token_ids(&self) -> Vec<u32> {
            Vec::new()
        }
    }

    /// A model whose chat template adds `template` tokens and whose prefill takes 1 ms per
    /// prompt token.
    struct Fake {
        kind: VlmKind,
        template: usize,
        tokenizer: Words,
    }

    impl Vlm for Fake {
        fn model_id(&self) -> &str {
            "fake"
        }
        fn kind(&self) -> VlmKind {
            self.kind
        }
        fn tokenizer(&self) -> &dyn TextTokenizer {
            &self.tokenizer
        }
        fn analyse(
            &self,
            request: &VlmRequest<'_>,
            params: &GenerationParams,
            _: &mut dyn GenerationHooks,
        ) -> Result<Generation> {
            assert!(request.images.is_empty());
            let prompt_tokens = self.template + self.tokenizer.encode(request.prompt)?.len();
            Ok(Generation {
                text: String::new(),
                reasoning: None,
                reasoning_unfinished: false,
                tokens: vec![1; params.max_new_tokens],
                stop_reason: StopReason::MaxNewTokens,
                timings: GenerationStats {
                    prompt_tokens,
                    prefill_s: if params.max_new_tokens > 0 {
                        prompt_tokens as f64 * 1e-3
                    } else {
                        0.0
                    },
                    ..GenerationStats::default()
                },
            })
        }
    }

    fn fake(per_word: usize, merge_every: usize) -> Fake {
        Fake {
            kind: VlmKind::Instruction,
            template: 21,
            tokenizer: Words {
                per_word,
                merge_every,
            },
        }
    }

    #[test]
    fn the_text_prefill_prompt_has_the_asked_length_with_the_template() {
        for (per_word, merge_every) in [(1, 0), (2, 0), (2, 3), (3, 5)] {
            for tokens in [21, 22, 64, 512, 1000] {
                let p = text_prefill(&fake(per_word, merge_every), tokens)
                    .unwrap()
                    .expect("an instruction model is measured");
                let slack = per_word; // a word is the smallest step
                assert!(
                    p.prompt_tokens.abs_diff(tokens) < slack.max(1),
                    "{per_word}/{merge_every}: asked {tokens}, got {}",
                    p.prompt_tokens
                );
                assert!((p.prefill_s - p.prompt_tokens as f64 * 1e-3).abs() < 1e-12);
                assert!((p.tokens_per_s - 1e3).abs() < 1e-6, "{}", p.tokens_per_s);
            }
        }
    }

    #[test]
    fn a_prefill_shorter_than_the_template_is_refused_and_captioners_are_skipped() {
        let err = text_prefill(&fake(1, 0), 20).unwrap_err().to_string();
        assert!(
            err.contains("20 tokens") && err.contains("21 tokens"),
            "{err}"
        );
        let captioner = Fake {
            kind: VlmKind::Captioner,
            ..fake(1, 0)
        };
        assert!(text_prefill(&captioner, 512).unwrap().is_none());
    }
}
