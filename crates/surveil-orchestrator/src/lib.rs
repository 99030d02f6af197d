//! The analysis pipeline of surveil: frames from `surveil-vision` become scenes, behaviour tools
//! turn scenes into observations, a trigger decides when the vision-language model is due, the
//! analyst asks it for a verdict, the decision engine raises alerts, and sinks record it all.
//!
//! Not here: frame decoding, detection and tracking (`surveil-vision`), model loading and
//! generation (`surveil-models`), configuration merging (`surveil-config`).

#![deny(missing_docs)]

pub mod error;
pub mod tools;

pub use error::{OrchestratorError, Result};
