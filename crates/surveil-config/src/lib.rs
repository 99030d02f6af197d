//! Configuration of surveil: built-in defaults, a named profile (`profiles/<name>.toml`), the
//! environment and command-line flags, merged in that order into one validated
//! [`SystemConfig`].
//!
//! Raw input is deserialized strictly (unknown keys are errors) into a [`RawConfig`], then
//! checked and resolved once by [`RawConfig::validate`]: the [`SystemConfig`] it makes holds
//! the values consumers use (canonical model ids, one [`StorageDtype`] for `load_in_4bit` and
//! `quant`, the [`Device`], the [`Detector`], the [`PathsConfig`]), so code holding one never
//! re-checks, combines keys or reads the environment.
//!
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
mod storage;

pub use error::ConfigError;
pub use loader::{ConfigLoader, LoadedConfig, Origin, Override};
pub use paths::{PathsConfig, RawPathsConfig};
pub use profiles::{ProfileSet, BUILTIN_PROFILES, DEFAULT_PROFILE};
pub use reference::reference_markdown;
pub use schema::{
    canonical_model_id, within_unit_interval, Choice, ClockTime, DecisionConfig, DetectionConfig,
    Detector, Device, KnownModel, LogLevel, MonitoringConfig, OpeningHours, OrchestrationConfig,
    OrchestrationMode, OutputConfig, RawConfig, RawDetectionConfig, RawVlmConfig, RuleBreach,
    SystemConfig, ToolsConfig, TrackerConfig, VlmConfig, WeightsSpec, ZoneConfig, ZoneCoordinates,
    DETECTION_CLASSES, KNOWN_MODELS, KNOWN_MODEL_IDS,
};
pub use storage::StorageDtype;
