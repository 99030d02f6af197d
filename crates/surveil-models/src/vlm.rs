//! One interface for every vision-language model: images + a prompt + generation parameters in,
//! text (and a thinking model's reasoning), tokens and timings out. Each architecture
//! implements [`Vlm`] over the shared loop of [`crate::generation::generate`]; [`build_vlm`]
//! wraps any loaded model (the match on the architecture is in [`crate::arch`]).
//!
//! The shape follows mistral.rs (every multimodal model behind one pipeline trait) and Hugging
//! Face transformers' logits processors / streamers for the per-step hooks.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;

use crate::arch::LoadedModel;
use crate::generation::thinking::ThinkingSplit;
use crate::generation::{GenerationOutput, GenerationParams, GenerationStats, StopReason};
use crate::tokenizer::TextTokenizer;
use crate::{ModelError, Result};

/// What a model does with the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VlmKind {
    /// Describes the image and ignores the prompt and system text (GIT).
    Captioner,
    /// Follows an instruction about the images (Qwen2-VL-Instruct).
    Instruction,
    /// Follows an instruction after a reasoning span (Kimi-VL-Thinking).
    Thinking,
}

/// One question about one or more images.
///
/// ```
/// use image::{Rgb, RgbImage};
/// use surveil_models::VlmRequest;
///
/// let frame = RgbImage::from_pixel(768, 576, Rgb([90, 90, 90]));
/// let crop = RgbImage::from_pixel(128, 256, Rgb([30, 30, 120]));
/// let views = [frame, crop];
/// let request = VlmRequest {
///     images: &views,
///     system: Some("You watch a shop's security camera."),
///     prompt: "The second image is the person in the first. Is anything hidden?",
/// };
/// assert_eq!(request.images.len(), 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VlmRequest<'a> {
    /// The images, in the order the prompt refers to them (all placed before the prompt text).
    pub images: &'a [RgbImage],
    /// System text; `None` uses the model's default system prompt when it has one.
    pub system: Option<&'a str>,
    /// The user's text.
    pub prompt: &'a str,
}

/// Per-call hooks of the generation loop: constrain each step, watch tokens as they come,
/// cancel. Every method has a no-op default.
pub trait GenerationHooks {
    /// Before each sampling step: may set logits to `f32::NEG_INFINITY` to forbid tokens.
    /// `logits` has one entry per row of the model's vocabulary, which can exceed the
    /// tokenizer's table. An error ends the call with that error.
    fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        let _ = logits;
        Ok(())
    }

    /// After a token is chosen (never a stop token), with the text it completed (a
    /// [`crate::tokenizer::TokenStream`] piece: empty while a character is incomplete, and for
    /// special tokens). `Break` stops generation with [`StopReason::Cancelled`].
    fn on_token(&mut self, token: u32, text: &str) -> ControlFlow<()> {
        let _ = (token, text);
        ControlFlow::Continue(())
    }

    /// Polled between stages (before and after the vision tower, after the prefill, before
    /// every decode step): `true` abandons the call with [`StopReason::Cancelled`] and what was
    /// generated so far.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Hooks that do nothing: plain generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl GenerationHooks for NoHooks {}

/// Hooks that only stream: a closure called with each token and its text, as
/// [`GenerationHooks::on_token`].
pub struct OnToken<F>(pub F);

impl<F: FnMut(u32, &str) -> ControlFlow<()>> GenerationHooks for OnToken<F> {
    fn on_token(&mut self, token: u32, text: &str) -> ControlFlow<()> {
        (self.0)(token, text)
    }
}

/// The answer of one [`Vlm::analyse`] call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The answer: all generated text, or for a thinking model the text after its reasoning
    /// span (empty when it stopped inside the reasoning).
    pub text: String,
    /// A thinking model's reasoning span (markers removed); `None` for other models.
    pub reasoning: Option<String>,
    /// True when generation stopped inside the reasoning span (the answer is then empty).
    pub reasoning_unfinished: bool,
    /// Generated token ids, the stop token excluded.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Preprocessing, vision, prefill, time to first token, decode speed, prompt length.
    pub timings: GenerationStats,
}

impl Generation {
    /// The whole output of the loop as the answer: models without a reasoning span.
    pub fn answer(out: GenerationOutput) -> Self {
        Self {
            text: out.text,
            reasoning: None,
            reasoning_unfinished: false,
            tokens: out.tokens,
            stop_reason: out.stop_reason,
            timings: out.stats,
        }
    }

    /// The same answer without leading and trailing whitespace.
    pub fn trimmed(mut self) -> Self {
        let t = self.text.trim();
        if t.len() != self.text.len() {
            self.text = t.to_string();
        }
        self
    }

    /// The output of a thinking model, split into its reasoning and its answer.
    pub fn thinking(out: GenerationOutput, split: ThinkingSplit) -> Self {
        Self {
            text: split.answer,
            reasoning: Some(split.reasoning),
            reasoning_unfinished: split.reasoning_unfinished,
            tokens: out.tokens,
            stop_reason: out.stop_reason,
            timings: out.stats,
        }
    }
}

/// A resident vision-language model with its tokenizer and image processor: the one way the
/// pipeline and the CLI call any architecture.
///
/// A [`crate::ModelManager`] hands out the resident model as `&dyn Vlm`
/// ([`crate::ModelManager::vlm`]); [`build_vlm`] wraps a model loaded by other means. Here the
/// answer is streamed as it is generated ([`OnToken`]) and stopped at the first full stop:
///
/// ```no_run
/// use std::io::Write;
/// use std::ops::ControlFlow;
///
/// use surveil_models::vlm::OnToken;
/// use surveil_models::{GenerationParams, Vlm, VlmKind, VlmRequest};
///
/// fn first_sentence(vlm: &dyn Vlm, frame: &image::RgbImage) -> surveil_models::Result<String> {
///     // A captioner ignores the prompt and takes exactly one image.
///     let prompt = match vlm.kind() {
///         VlmKind::Captioner => "",
///         VlmKind::Instruction | VlmKind::Thinking => "Describe the scene in one sentence.",
///     };
///     let request = VlmRequest {
///         images: std::slice::from_ref(frame),
///         system: None,
///         prompt,
///     };
///     let mut hooks = OnToken(|_id: u32, text: &str| {
///         print!("{text}");
///         let _ = std::io::stdout().flush();
///         // `Break` ends the call with `StopReason::Cancelled`; the text so far, this
///         // token's included, is the answer.
///         if text.contains('.') {
///             ControlFlow::Break(())
///         } else {
///             ControlFlow::Continue(())
///         }
///     });
///     let answer = vlm.analyse(&request, &GenerationParams::greedy(64), &mut hooks)?;
///     println!();
///     Ok(answer.text)
/// }
/// ```
pub trait Vlm: Send {
    /// The registry id of the model (`qwen2-vl-2b-instruct`).
    fn model_id(&self) -> &str;

    /// What the model does with the prompt.
    fn kind(&self) -> VlmKind;

    /// The model's tokenizer (for stop ids, vocabulary and decoding in hooks).
    fn tokenizer(&self) -> &dyn TextTokenizer;

    /// The most images one [`Vlm::analyse`] call takes: a captioner (GIT) describes exactly
    /// one image, chat models take several. Callers that gather optional extra views (a crop
    /// of the person of interest after the frame) keep the first `max_images()` of them.
    fn max_images(&self) -> usize {
        usize::MAX
    }

    /// Answer `request`: image processing, chat template, vision tower, prefill and the shared
    /// generation loop with `hooks`, stopping at the tokenizer's stop ids.
    ///
    /// Errors: [`ModelError::InvalidInput`] for requests the model cannot take (no image for a
    /// captioner, a prompt past the context), tokenizer and candle errors.
    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        params: &GenerationParams,
        hooks: &mut dyn GenerationHooks,
    ) -> Result<Generation>;
}

/// A tokenizer file of a model: `file_name` in the checkpoint directory (where the resolved
/// `config.json` is) when it is there, else `asset` in the asset cache `assets`
/// (`SystemConfig::paths.assets`). The error names every place looked at.
pub fn find_tokenizer_file(
    checkpoint_dir: Option<&Path>,
    file_name: &str,
    assets: &Path,
    asset: &str,
) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = checkpoint_dir
        .map(|d| d.join(file_name))
        .into_iter()
        .chain(std::iter::once(assets.join(asset)))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(ModelError::Tokenizer {
        path: candidates.last().cloned().unwrap_or_default(),
        reason: format!(
            "no {file_name} found; looked at {looked} (run scripts/setup.sh to fill the asset cache)"
        ),
    })
}

/// `preprocessor_config.json` of the checkpoint, when there is one.
pub(crate) fn preprocessor_config(checkpoint_dir: Option<&Path>) -> Option<PathBuf> {
    checkpoint_dir
        .map(|d| d.join("preprocessor_config.json"))
        .filter(|p| p.is_file())
}

/// The text side of a loaded model: its tokenizer (found with [`find_tokenizer_file`] from
/// `checkpoint_dir`, the directory of the resolved `config.json`, `None` for dummy weights;
/// then the asset cache `assets`) and image processor (the checkpoint's `preprocessor_config.json`, else the published
/// defaults) around `model`, behind [`Vlm`]. `model` shares its weights with the caller's
/// handle; `device` is the model's.
///
/// Each architecture's [`Vlm`] finds its own files; [`LoadedModel::into_vlm`] is the dispatch.
/// Errors: a missing or unreadable tokenizer or preprocessor config.
pub fn build_vlm(
    model: LoadedModel,
    device: &candle_core::Device,
    model_id: &str,
    checkpoint_dir: Option<&Path>,
    assets: &Path,
) -> Result<Box<dyn Vlm>> {
    let _span = tracing::debug_span!("build_vlm", model = model_id).entered();
    model.into_vlm(device, model_id, checkpoint_dir, assets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_looked_for_beside_the_checkpoint_then_in_the_asset_cache() {
        let dir = tempfile::tempdir().unwrap();
        let asset = "tokenizers/not-a-model/tokenizer.json";
        let beside = dir.path().join("tokenizer.json");
        let assets = surveil_config::paths::assets_dir();
        let cached = surveil_config::paths::asset(asset);
        let err = find_tokenizer_file(Some(dir.path()), "tokenizer.json", &assets, asset)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&beside.display().to_string()), "{err}");
        assert!(err.contains(&cached.display().to_string()), "{err}");
        let err = find_tokenizer_file(None, "tokenizer.json", &assets, asset)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&cached.display().to_string()), "{err}");
        std::fs::write(&beside, "{}").unwrap();
        assert_eq!(
            find_tokenizer_file(Some(dir.path()), "tokenizer.json", &assets, asset).unwrap(),
            beside
        );
    }
}
