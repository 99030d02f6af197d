//! Vision-language models for surveil: where weights come from, how they become resident with
//! the least memory (4-bit quantization tensor by tensor), and the architectures themselves.
//!
//! Not here: memory measurement (`surveil-memory`), frames and detection (`surveil-vision`),
//! the analysis pipeline (`surveil-orchestrator`).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod arch;
pub mod constrained;
pub mod deepseek_v3;
pub mod error;
pub mod generation;
pub mod git;
pub mod image_ops;
mod kernels;
pub mod kimi_vl;
pub mod manager;
pub mod nn;
pub mod qwen2_vl;
pub mod registry;
pub mod smoke;
pub mod source;
pub mod synth;
pub mod thinking;
pub mod tokenizer;
pub mod vlm;
pub mod weights;

pub use error::{ModelError, Result};
