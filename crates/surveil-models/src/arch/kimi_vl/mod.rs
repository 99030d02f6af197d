//! Kimi-VL: MoonViT vision tower, 2x2 patch-merge projector, DeepSeek-V3 decoder.
//!
//! - [`KimiVlConfig`]: the Hub `KimiVLConfig` layout (`vision_config`, `text_config` kept as
//!   JSON for the decoder, `media_placeholder_token_id`); the full-size MoonViT in
//!   [`kimi_vl_a3b_vision_config`]; [`tensor_layout`] of the vision tower and projector,
//!   [`full_tensor_layout`] of the whole checkpoint;
//! - [`MoonVit`]: native-resolution ViT over packed images (bicubic-resized learned position
//!   grid, 2-D rotary positions, attention restricted to each image) and the 2×2 merge;
//! - [`KimiVlProjector`]: LayerNorm → Linear → GELU → Linear to the text width;
//! - [`KimiVlImageProcessor`]: token-limit resize, padding to 28-px multiples, patchify;
//! - [`KimiVlModel`]: the whole model — image features spliced into the placeholder
//!   positions, then the DeepSeek-V3 decoder of [`crate::arch::deepseek_v3`] with its KV cache;
//! - [`KimiTokenizer`]: Moonshot's tiktoken BPE (`tiktoken.model`) and the special slots;
//! - [`encode_chat`]: the chat template as token ids, one `<|media_pad|>` per merged image token;
//! - [`KimiVlm`]: all of it behind [`crate::vlm::Vlm`], with the reasoning split of the
//!   Thinking models;
//! - [`KimiVlRoles`]: the role each tensor is kept in, decoder included (what the memory
//!   estimate sizes and the loader checks).
//!
//! Not here: the decoder itself (`crate::arch::deepseek_v3`), the generation loop
//! (`crate::generation`).

mod chat;
mod config;
mod model;
mod processor;
mod roles;
mod tokenizer;
mod vision;
mod vlm;

pub use chat::{
    check_image_placeholders, encode_chat, merged_image_tokens, KimiContent, KimiMessage,
    KimiPrompt, KimiRole, KIMI_DEFAULT_SYSTEM_PROMPT,
};

pub use config::{
    full_tensor_layout, kimi_vl_a3b_config, kimi_vl_a3b_vision_config, tensor_layout, KimiVlConfig,
    MoonVitConfig,
};
pub use model::KimiVlModel;
pub use processor::{KimiVlImageProcessor, PackedImages, ProcessedImage};
pub use roles::KimiVlRoles;
pub use tokenizer::{
    kimi_special_token_name, KimiSpecialIds, KimiTokenizer, KIMI_NAMED_SPECIAL_TOKENS,
    KIMI_REGULAR_TOKENS, KIMI_SPLIT_PATTERN, KIMI_VOCAB_SIZE,
};
pub use vision::{GridHw, KimiVlProjector, MoonVit, MoonVitOutput};
pub use vlm::{kimi_vlm_kind, KimiVlm};
