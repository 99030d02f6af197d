//! surveil-models: vision-language models for surveil, from a model id to an answer about
//! images. Where weights come from, how they become resident with the least memory (4-bit
//! quantization tensor by tensor), the architectures themselves, and one interface to call any
//! of them.
//!
//! - [`vlm`]: the model interface every architecture implements ([`Vlm`]: images + prompt +
//!   [`GenerationParams`] in, a [`Generation`] out) with its per-step [`GenerationHooks`].
//! - [`generation`]: the one decoding loop, token sampling, JSON-schema-constrained decoding
//!   ([`generation::constrained`]) and the reasoning span of thinking models
//!   ([`generation::thinking`]).
//! - [`load`]: the model lifecycle ([`ModelManager`], [`LoadOptions`]): the registry of known
//!   models ([`ModelSpec`], [`Architecture`]), resolving where weights come from, the weight
//!   store ([`Weights`] over a [`TensorSource`]: safetensors or dummy weights) that quantizes
//!   while it loads, dummy checkpoints on disk and the first-inference smoke test.
//! - [`arch`]: one folder per architecture ([`arch::git`], [`arch::qwen2_vl`],
//!   [`arch::kimi_vl`], [`arch::deepseek_v3`]) and the dispatch over them ([`ArchConfig`],
//!   [`LoadedModel`]).
//! - [`tokenizer`]: the tokenizer interface ([`TextTokenizer`]) and UTF-8-safe streaming;
//!   [`image_ops`]: the resize, crop and normalisation the image processors share.
//!
//! The layers the architectures are built from (one `Linear`, one [`KvCache`], norms, fused
//! CPU kernels) are internal; the cache and [`Logits`] appear in the decoders' signatures and
//! are re-exported here.
//!
//! # Example
//!
//! Load a model, ask it about an image, unload it and read the memory snapshots of the cycle
//! (`examples/describe.rs` is the same as a program with options). Dummy weights are
//! deterministic random tensors with the real shapes: nothing is downloaded and the answer is
//! meaningless, but the memory and timings are those of the real model. The GIT tokenizer comes
//! from the asset cache that `scripts/setup.sh` fills.
//!
//! ```no_run
//! use surveil_config::{Device, StorageDtype, WeightsSpec};
//! use surveil_models::{GenerationParams, LoadOptions, ModelManager, NoHooks, VlmRequest};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = LoadOptions {
//!     weights: WeightsSpec::Dummy, // or WeightsSpec::Auto: the Hugging Face cache
//!     device: Device::Auto,        // CUDA device 0 when built with `cuda` and it fits
//!     storage: StorageDtype::Q4K,  // linear weights in 4 bits
//!     threads: None,
//!     hub_cache: surveil_config::paths::from_environment().hub_cache,
//!     model_dir: None,
//!     assets: surveil_config::paths::assets_dir(),
//!     progress: None,
//!     dummy_seed: 0,
//! };
//! let mut manager = ModelManager::new();
//! let summary = manager.load("git-base-coco", &opts)?;
//! println!(
//!     "{} on {}: {} bytes resident",
//!     summary.model,
//!     summary.device,
//!     summary.report.total_bytes()
//! );
//!
//! let vlm = manager.vlm().ok_or("no model resident")?;
//! let frame = image::open("frame.png")?.to_rgb8();
//! let request = VlmRequest {
//!     images: std::slice::from_ref(&frame),
//!     system: None,
//!     prompt: "What are the people doing?",
//! };
//! let answer = vlm.analyse(&request, &GenerationParams::greedy(32), &mut NoHooks)?;
//! println!("{} ({} tokens, {:?})", answer.text, answer.tokens.len(), answer.stop_reason);
//!
//! manager.unload();
//! // RSS, VMS, peak RSS and GPU memory at before_load, after_load, after_unload.
//! print!("{}", manager.memory());
//! # Ok(())
//! # }
//! ```
//!
//! Not here: memory measurement (`surveil-memory`), frames and detection (`surveil-vision`),
//! the analysis pipeline, prompts and verdicts (`surveil-orchestrator`).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod arch;
/// The fused CPU attention kernel ([`attention::flash_attention`]) and the unfused composition
/// it replaces ([`attention::full_attention_composed`]), public for benchmarks
/// (`benches/attention.rs`) and tools.
pub mod attention {
    pub use crate::layers::kernels::{
        decode_attention, flash_attention, flash_attention_with, full_attention_composed,
        mla_decode_attention, AttentionPrecision, FlashPath, KeyMask,
    };
}
pub mod error;
pub mod generation;
pub mod image_ops;
pub(crate) mod layers;
pub mod load;
pub mod quant;
pub mod tokenizer;
pub mod vlm;

pub use arch::deepseek_v3::DeepseekV3Model;
pub use arch::git::{GitModel, GitVlm};
pub use arch::kimi_vl::{KimiVlModel, KimiVlm};
pub use arch::qwen2_vl::{Qwen2VlModel, Qwen2VlVlm};
pub use arch::{ArchConfig, LoadedModel};
pub use error::{ModelError, Result};
pub use generation::{GenerationOutput, GenerationParams, GenerationStats, Sampling, StopReason};
pub use layers::{KvCache, Logits};
pub use load::manager::{LoadOptions, LoadSummary, ModelManager, ModelState};
pub use load::registry::{Architecture, ModelSpec, REGISTRY};
pub use load::weights::{DummySource, LoadReport, SafetensorsSource, TensorSource, Weights};
pub use tokenizer::TextTokenizer;
pub use vlm::{build_vlm, Generation, GenerationHooks, NoHooks, Vlm, VlmKind, VlmRequest};
