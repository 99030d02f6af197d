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

mod env;
mod error;
mod loader;
pub mod paths;
mod profiles;
mod schema;

pub use error::ConfigError;
pub use loader::{ConfigLoader, LoadedConfig, Origin, Override};
pub use profiles::{ProfileSet, BUILTIN_PROFILES, DEFAULT_PROFILE};
pub use schema::{
    ClockTime, DecisionConfig, DetectionConfig, Device, LogLevel, MonitoringConfig, OpeningHours,
    OrchestrationConfig, OrchestrationMode, OutputConfig, Quant, RawConfig, SystemConfig,
    ToolsConfig, TrackerConfig, VlmConfig, WeightsSpec, ZoneConfig, ZoneCoordinates,
    KNOWN_MODEL_IDS,
};
