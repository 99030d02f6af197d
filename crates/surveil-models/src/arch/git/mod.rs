//! GIT (microsoft/git-base-coco): CLIP ViT image encoder + BERT-style causal decoder.
//!
//! The light captioning model of the `testing` profile: 177 M parameters, a CLIP ViT-B/16 image
//! encoder whose 197 tokens (class token + 14×14 patches) are projected and prepended to the
//! text of a 6-layer post-LN BERT decoder. Image tokens attend to each other only; text tokens
//! attend to every image token and causally to earlier text. Captions start at `[CLS]` and end
//! at `[SEP]`.
//!
//! - [`GitConfig`]: the Hub `config.json`; [`git_base_coco_config`] the full-size values.
//! - [`GitModel`]: `GitForCausalLM` with the Hub tensor names ([`GitModel::tensor_layout`]),
//!   logits, and generation with a key/value cache ([`GitCache`]).
//! - [`ClipProcessor`]: frames → `pixel_values` (Pillow-exact bicubic resize, crop, CLIP norm).
//! - [`GitTokenizer`] and [`GitCaptioner`]: frames → caption strings, batched.
//! - [`GitVlm`]: GIT behind the model-agnostic [`crate::vlm::Vlm`] interface (a captioner).
//! - [`GitRoles`]: the role each tensor is kept in (what the memory estimate sizes and the
//!   loader checks).
//!
//! Not here: where weights come from (`crate::load::weights`), model lifecycle and registry.

mod captioner;
mod config;
mod decoder;
mod model;
mod ops;
mod processor;
mod roles;
mod vision;
mod vlm;

pub use captioner::{CaptionSettings, GitCaptioner, GitTokenizer};
pub use config::{git_base_coco_config, Activation, GitConfig, GitVisionConfig};
pub use decoder::GitCache;
pub use model::{GitModel, GitSession};
pub use processor::{ClipProcessor, ClipProcessorConfig};
pub use roles::GitRoles;
pub use vision::VisionTransformer;
pub use vlm::GitVlm;
