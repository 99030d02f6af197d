//! The analysis pipeline of surveil: frames from `surveil-vision` become scenes, behaviour tools
//! turn scenes into observations, a trigger decides when the vision-language model is due, the
//! analyst asks it for a verdict, the decision engine raises alerts, and sinks record it all.
//!
//! Not here: frame decoding, detection and tracking (`surveil-vision`), model loading and
//! generation (`surveil-models`), configuration merging (`surveil-config`).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod analyst;
pub mod caption;
pub mod decision;
pub mod error;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod prompt;
pub mod scene;
pub mod sink;
pub mod tools;
pub mod trigger;
pub mod verdict;

pub use error::{OrchestratorError, Result};
pub use event::{Event, EventKind};
pub use pipeline::{run, ModelChoice, RunObserver, RunOptions, RunProgress, RunSummary};
