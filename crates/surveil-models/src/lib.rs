//! Vision-language models for surveil: where weights come from, how they become resident with
//! the least memory (4-bit quantization tensor by tensor), and the architectures themselves.
//!
//! Not here: memory measurement (`surveil-memory`), frames and detection (`surveil-vision`),
//! the analysis pipeline (`surveil-orchestrator`).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod arch;
pub mod error;
pub mod generation;
pub mod image_ops;
pub mod layers;
pub mod load;
pub mod tokenizer;
pub mod vlm;

pub use error::{ModelError, Result};
