//! One short generation on a built-in test image: exercises the whole inference path of a
//! loaded model (processor, vision tower, decoder, tokenizer) to measure memory after the
//! first inference. With dummy weights the text is meaningless; the memory and timings are
//! real.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::arch::LoadedModel;
use crate::generation::Sampling;
use crate::git::{CaptionSettings, ClipProcessor, ClipProcessorConfig, GitCaptioner, GitTokenizer};
use crate::qwen2_vl::{
    ChatMessage, GenerationParams, MultimodalInput, Qwen2VlImageProcessor, Qwen2VlTokenizer,
};
use crate::{ModelError, Result};

/// What the test generation produced.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeOutcome {
    /// Decoded text.
    pub text: String,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Wall time of preprocessing + generation.
    pub seconds: f64,
    /// The tokenizer file used.
    pub tokenizer: PathBuf,
}

/// A 640×480 street-like scene: sky, road, two upright figures. Deterministic.
pub fn test_image() -> RgbImage {
    let (w, h) = (640u32, 480u32);
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        if y < h / 3 {
            Rgb([120, 160, (200 + x % 40) as u8])
        } else {
            let g = (90 + (x + y) % 30) as u8;
            Rgb([g, g, g])
        }
    });
    for (x0, color) in [(200u32, [30u8, 30, 120]), (420, [140, 20, 20])] {
        for y in 220..400 {
            for x in x0..x0 + 40 {
                img.put_pixel(x, y, Rgb(color));
            }
        }
    }
    img
}

/// The tokenizer file of a model: `tokenizer.json` in its checkpoint directory when there is
/// one, else the asset cache's copy for the architecture.
fn tokenizer_file(checkpoint_dir: Option<&Path>, asset: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = checkpoint_dir
        .map(|d| d.join("tokenizer.json"))
        .into_iter()
        .chain(std::iter::once(surveil_config::paths::asset(asset)))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "no tokenizer found; looked at {} (run scripts/setup.sh)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Describe [`test_image`] with `model` in at most `max_new_tokens` tokens (greedy).
pub fn describe_test_image(
    model: &LoadedModel,
    device: &candle_core::Device,
    checkpoint_dir: Option<&Path>,
    max_new_tokens: usize,
) -> Result<SmokeOutcome> {
    let image = test_image();
    let start = Instant::now();
    match model {
        LoadedModel::Git(git) => {
            let path = tokenizer_file(
                checkpoint_dir,
                "tokenizers/bert-base-uncased/tokenizer.json",
            )?;
            let tokenizer = GitTokenizer::from_file(&path)?;
            let size = git.config().vision_config.image_size as u32;
            let processor = ClipProcessor::new(ClipProcessorConfig::square(size), device.clone());
            let settings = CaptionSettings {
                max_new_tokens,
                sampling: Sampling::Greedy,
                seed: 0,
            };
            // The captioner owns its model; GIT is small, so a clone of the handles is cheap
            // (tensors are reference-counted, not copied).
            let captioner = GitCaptioner::new(processor, tokenizer, (**git).clone(), settings)?;
            let ids = captioner.caption_ids(std::slice::from_ref(&image))?;
            let ids = ids.into_iter().next().unwrap_or_default();
            Ok(SmokeOutcome {
                text: captioner.tokenizer().decode(&ids)?,
                new_tokens: ids.len(),
                seconds: start.elapsed().as_secs_f64(),
                tokenizer: path,
            })
        }
        LoadedModel::Qwen2Vl(qwen) => {
            let path = tokenizer_file(checkpoint_dir, "tokenizers/qwen2-vl/tokenizer.json")?;
            let tokenizer = Qwen2VlTokenizer::from_file(&path)?;
            let processor = Qwen2VlImageProcessor::default();
            let vision = processor.preprocess_image(&image)?;
            let grid = vision.grid;
            let messages = [ChatMessage::user_with_images(
                1,
                "Describe what the people in this image are doing.",
            )];
            let prompt = tokenizer.encode_chat(&messages, &[grid], &[], processor.merge_size)?;
            let input = MultimodalInput {
                input_ids: prompt.input_ids,
                pixel_values: Some(vision.to_tensor(device)?),
                image_grids: vec![grid],
                ..MultimodalInput::default()
            };
            let params = GenerationParams::greedy(max_new_tokens, tokenizer.stop_token_ids());
            let out = qwen.generate(&input, &params, |_| std::ops::ControlFlow::Continue(()))?;
            Ok(SmokeOutcome {
                text: tokenizer.decode(&out.tokens, true)?,
                new_tokens: out.tokens.len(),
                seconds: start.elapsed().as_secs_f64(),
                tokenizer: path,
            })
        }
        LoadedModel::KimiVl(kimi) => {
            // No Kimi-VL tokenizer is available here: the prompt is built from token ids
            // (BOS, the image placeholders) and the answer is reported as ids.
            let processor = crate::kimi_vl::KimiVlImageProcessor::default();
            let packed = processor.preprocess_images(std::slice::from_ref(&image), device)?;
            let cfg = kimi.config();
            let slots: usize = packed
                .grids
                .iter()
                .map(|g| g.merged_tokens(cfg.vision.merge_kernel_size))
                .sum();
            let text = crate::deepseek_v3::DeepseekV3Config::from_value(&cfg.text_config)?;
            let mut ids: Vec<u32> = text.bos_token_id.into_iter().collect();
            ids.extend(std::iter::repeat_n(cfg.media_placeholder_token_id, slots));
            let mut cache = kimi.new_cache();
            let mut logits = kimi.prefill(
                &ids,
                Some((&packed.pixel_values, &packed.grids)),
                &mut cache,
                crate::deepseek_v3::Logits::Last,
            )?;
            let mut out = Vec::with_capacity(max_new_tokens);
            for _ in 0..max_new_tokens {
                let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                let token = crate::generation::argmax(&row);
                out.push(token);
                logits = kimi.decode_step(token, &mut cache)?;
            }
            Ok(SmokeOutcome {
                text: format!("token ids {out:?} (no Kimi-VL tokenizer available)"),
                new_tokens: out.len(),
                seconds: start.elapsed().as_secs_f64(),
                tokenizer: PathBuf::new(),
            })
        }
    }
}
