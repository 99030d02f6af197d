//! One short generation on a built-in test image: exercises the whole inference path of a
//! loaded model (processor, vision tower, decoder, tokenizer) through the model-agnostic
//! [`Vlm`] interface, to measure memory after the first inference. With dummy weights the
//! text is meaningless; the memory and timings are real.

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::generation::{GenerationParams, StopReason};
use crate::vlm::{NoHooks, Vlm, VlmRequest};
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
    let image = test_image();
    let request = VlmRequest {
        images: std::slice::from_ref(&image),
        system: None,
        prompt: TEST_PROMPT,
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
    })
}
