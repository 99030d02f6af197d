//! Qwen2-VL: vision transformer with 2-D rotary positions, patch merger, Qwen2 decoder with
//! M-RoPE.
//!
//! A self-contained implementation a library user can call without the rest of surveil:
//! - [`Qwen2VlConfig`]: both `config.json` layouts (flat Hub, nested transformers v5), the
//!   full-size [`qwen2_vl_2b_config`] / [`qwen2_vl_7b_config`], and [`tensor_layout`];
//! - [`Qwen2VlModel`]: load through [`crate::load::weights::Weights`] (f32, f16 or quantized),
//!   [`Qwen2VlModel::prefill`], [`Qwen2VlModel::decode_step`], [`Qwen2VlModel::generate`] (the shared loop over a
//!   [`Qwen2VlSession`]);
//! - [`rope_index`]: the reference's multimodal position ids;
//! - [`Qwen2VlImageProcessor`]: `smart_resize`, bicubic resize, normalisation, patch order;
//! - [`Qwen2VlTokenizer`] and [`render_chat`]: the Qwen BPE tokenizer and the chat template;
//! - [`VisionTower`] and [`TextModel`] on their own;
//! - [`Qwen2VlVlm`]: all of it behind the model-agnostic [`crate::vlm::Vlm`] interface;
//! - [`Qwen2VlRoles`]: the role each tensor is kept in (what the memory estimate sizes and the
//!   loader checks).
//!
//! ```no_run
//! # fn main() -> surveil_models::Result<()> {
//! use candle_core::Device;
//! use surveil_memory::{QuantPolicy, StorageDtype};
//! use surveil_models::arch::qwen2_vl::*;
//! use surveil_models::load::weights::{SafetensorsSource, Weights};
//!
//! let dir = std::path::Path::new("Qwen2-VL-2B-Instruct");
//! let cfg = Qwen2VlConfig::from_file(&dir.join("config.json"))?;
//! let source = SafetensorsSource::open_index(&dir.join("model.safetensors.index.json"))?;
//! let w = Weights::new(Box::new(source), Device::Cpu, QuantPolicy::four_bit(StorageDtype::F16));
//! let model = Qwen2VlModel::load(&cfg, &w)?;
//! let tokenizer = Qwen2VlTokenizer::from_file(&dir.join("tokenizer.json"))?;
//!
//! let frame = image::open("frame.png").map_err(|e| surveil_models::ModelError::InvalidInput(e.to_string()))?;
//! let images = Qwen2VlImageProcessor::default().preprocess_images(&[frame.to_rgb8()], &Device::Cpu)?;
//! let prompt = tokenizer.encode_chat(
//!     &[ChatMessage::user_with_images(1, "What are the people doing?")],
//!     &images.grids,
//!     &[],
//!     cfg.vision.spatial_merge_size,
//! )?;
//! let input = MultimodalInput {
//!     input_ids: prompt.input_ids,
//!     pixel_values: Some(images.pixel_values),
//!     image_grids: images.grids,
//!     ..Default::default()
//! };
//! let stop = tokenizer.stop_token_ids();
//! let mut hooks = surveil_models::vlm::NoHooks;
//! let out = model.generate(&input, &GenerationParams::greedy(64), &stop, Some(&tokenizer), &mut hooks)?;
//! println!("{}", out.text);
//! # Ok(())
//! # }
//! ```
//!
//! Not here: weight download, memory budgets, choosing a device.

mod chat;
mod config;
mod model;
mod processor;
mod roles;
mod rope_index;
mod text;
mod vision;
mod vlm;

pub use crate::generation::{GenerationOutput, GenerationParams, GenerationStats, StopReason};
pub use crate::layers::{KvCache, Logits};
pub use chat::{
    render_chat, ChatMessage, ChatPrompt, ContentPart, Qwen2VlTokenizer, DEFAULT_SYSTEM_PROMPT,
    ENDOFTEXT, IMAGE_PAD, IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START,
};
pub use config::{
    full_size_config, qwen2_vl_2b_config, qwen2_vl_7b_config, tensor_layout, Qwen2VlConfig,
    TextConfig, VisionConfig,
};
pub use model::{MultimodalInput, PrefillState, Qwen2VlModel, Qwen2VlSession};
pub use processor::{
    check_image_size, smart_resize, PackedImages, ProcessedVision, Qwen2VlImageProcessor,
    MAX_ASPECT_RATIO,
};
pub use roles::Qwen2VlRoles;
pub use rope_index::{rope_index, RopeIndex, VisionTokens};
pub use text::{shares_tied_embedding, TextModel};
pub use vision::{GridThw, VisionOutput, VisionTower};
pub use vlm::Qwen2VlVlm;
