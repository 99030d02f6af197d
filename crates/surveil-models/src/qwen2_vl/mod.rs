//! Qwen2-VL: vision transformer with 2-D rotary positions, patch merger, Qwen2 decoder with
//! M-RoPE.
//!
//! A self-contained implementation a library user can call without the rest of surveil:
//! - [`Qwen2VlConfig`]: both `config.json` layouts (flat Hub, nested transformers v5), the
//!   full-size [`qwen2_vl_2b_config`] / [`qwen2_vl_7b_config`], and [`tensor_layout`];
//! - [`Qwen2VlModel`]: load through [`crate::weights::Weights`] (f32, f16 or quantized),
//!   [`Qwen2VlModel::prefill`], [`Qwen2VlModel::decode_step`], [`Qwen2VlModel::generate`];
//! - [`rope_index`]: the reference's multimodal position ids;
//! - [`Qwen2VlImageProcessor`]: `smart_resize`, bicubic resize, normalisation, patch order;
//! - [`Qwen2VlTokenizer`] and [`render_chat`]: the Qwen BPE tokenizer and the chat template;
//! - [`VisionTower`] and [`TextModel`] on their own.
//!
//! Not here: weight download, memory budgets, choosing a device.

mod attention;
mod chat;
mod config;
mod model;
mod processor;
mod rope_index;
mod text;
mod vision;

pub use config::{qwen2_vl_2b_config, qwen2_vl_7b_config, tensor_layout, Qwen2VlConfig, TextConfig, VisionConfig};
pub use model::{
    GenerationOutput, GenerationParams, GenerationStats, MultimodalInput, PrefillState, Qwen2VlModel, StopReason,
};
pub use rope_index::{rope_index, RopeIndex, VisionTokens};
pub use text::{KvCache, Logits, TextModel};
pub use vision::{GridThw, VisionOutput, VisionTower};
pub use chat::{
    render_chat, ChatMessage, ChatPrompt, ContentPart, Qwen2VlTokenizer, DEFAULT_SYSTEM_PROMPT, ENDOFTEXT, IMAGE_PAD,
    IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START,
};
pub use processor::{smart_resize, PackedImages, ProcessedVision, Qwen2VlImageProcessor, MAX_ASPECT_RATIO};
