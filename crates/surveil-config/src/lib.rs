//! Configuration of surveil: built-in defaults, a named profile (`profiles/<name>.toml`), the
//! environment and command-line flags, merged in that order into one validated
//! [`SystemConfig`].
//!
//! Raw input is deserialized strictly (unknown keys are errors) into a [`RawConfig`], then
//! checked once by [`RawConfig::validate`]; code holding a [`SystemConfig`] never re-checks.
//! Every error names the key, the bad value, where it came from (file, environment variable or
//! flag) and what is allowed. [`ConfigLoader`] also remembers where each value came from, for
//! `surveil config show`.
//!
//! Not here: what the values mean at run time (models, memory, pipeline live in other crates).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod env;
mod error;
mod loader;
pub mod paths;
mod profiles;
mod reference;
mod schema;

pub use error::ConfigError;
pub use loader::{ConfigLoader, LoadedConfig, Origin, Override};
pub use profiles::{ProfileSet, BUILTIN_PROFILES, DEFAULT_PROFILE};
pub use reference::reference_markdown;
pub use schema::{
    canonical_model_id, Choice, ClockTime, DecisionConfig, DetectionConfig, Device, KnownModel,
    LogLevel, MonitoringConfig, OpeningHours, OrchestrationConfig, OrchestrationMode, OutputConfig,
    Quant, RawConfig, SystemConfig, ToolsConfig, TrackerConfig, VlmConfig, WeightsSpec, ZoneConfig,
    ZoneCoordinates, DETECTION_CLASSES, DETECTORS, KNOWN_MODELS, KNOWN_MODEL_IDS,
};
