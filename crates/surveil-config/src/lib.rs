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
//! # Entry points
//!
//! - [`ConfigLoader`]: the merge. [`ConfigLoader::new`] reads the process environment,
//!   [`ConfigLoader::with_env`] a list of variables you give it (embedding, tests);
//!   [`ConfigLoader::profile`], [`ConfigLoader::profiles_dir`] and [`ConfigLoader::flag`] set the
//!   other layers, and [`ConfigLoader::load`] returns a [`LoadedConfig`]: the [`SystemConfig`]
//!   and the [`Origin`] of each of its values (what `surveil config show` prints).
//! - [`RawConfig`]: the same sections as plain data with defaults ([`RawConfig::default`]), to
//!   build a configuration in code and turn it into a [`SystemConfig`] with
//!   [`RawConfig::validate`].
//! - [`ProfileSet`]: the profiles that exist ([`BUILTIN_PROFILES`] compiled in, plus the
//!   `*.toml` files of a profiles directory).
//! - [`paths`]: the asset cache (`$SURVEIL_ASSETS`, default `~/.cache/surveil/assets`) and
//!   the Hugging Face cache.
//! - [`reference_markdown`]: every key with its type, default, environment variable and rule,
//!   as Markdown (`docs/configuration.md`).
//!
//! # Example
//!
//! The `testing` profile with one key overridden as a command-line flag would, and no
//! environment:
//!
//! ```
//! use surveil_config::{ConfigLoader, Origin, WeightsSpec};
//!
//! let loaded = ConfigLoader::with_env(Vec::new())
//!     .profile(Some("testing"))
//!     .flag("vlm.weights", "dummy", "--weights")
//!     .load()?;
//! let config = &loaded.config;
//! assert_eq!(config.profile, "testing");
//! assert_eq!(config.vlm.primary_model, "git-base-coco");
//! assert_eq!(config.vlm.weights, WeightsSpec::Dummy);
//! assert_eq!(loaded.origin("vlm.weights"), Origin::Flag("--weights".into()));
//! # Ok::<(), surveil_config::ConfigError>(())
//! ```
//!
//! The same rules apply to a configuration built in code:
//!
//! ```
//! use surveil_config::RawConfig;
//!
//! let mut raw = RawConfig::default();
//! raw.vlm.primary_model = "Qwen/Qwen2-VL-2B-Instruct".into(); // a Hugging Face repo id works too
//! raw.orchestration.max_concurrent_tools = 0; // breaks a rule
//! let err = raw.clone().validate("custom", |_key| "code".to_string()).unwrap_err();
//! assert!(err.to_string().starts_with("orchestration.max_concurrent_tools = 0 (from code)"));
//!
//! raw.orchestration.max_concurrent_tools = 2;
//! let config = raw.validate("custom", |_key| "code".to_string())?;
//! assert_eq!(config.vlm.primary_model, "qwen2-vl-2b-instruct"); // stored canonical
//! # Ok::<(), surveil_config::ConfigError>(())
//! ```
//!
//! `examples/system_config.rs` does both and prints the result:
//! `cargo run -p surveil-config --example system_config`.
//!
//! Not here: what the values mean at run time (models, memory, the pipeline live in the other
//! crates, which take a [`SystemConfig`]), and reading any file other than profiles.
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

mod env;
mod error;
mod loader;
pub mod paths;
mod profiles;
mod reference;
mod schema;
mod storage;

pub use error::ConfigError;
pub use loader::{ConfigLoader, LoadedConfig, Origin};
pub use paths::{PathsConfig, RawPathsConfig};
pub use profiles::{ProfileOrigin, ProfileSet, BUILTIN_PROFILES, DEFAULT_PROFILE};
pub use reference::reference_markdown;
pub use schema::{
    canonical_model_id, is_valid_camera_name, within_unit_interval, CameraConfig, Choice,
    ClockTime, DecisionConfig, DetectionConfig, Detector, Device, KnownModel, LogLevel,
    MonitoringConfig, MqttConfig, OpeningHours, OrchestrationConfig, OrchestrationMode,
    OutputConfig, RawConfig, RawDetectionConfig, RawVlmConfig, RuleBreach, SystemConfig,
    ToolsConfig, TrackerConfig, VlmConfig, WeightsSpec, ZoneConfig, ZoneCoordinates,
    CAMERA_NAME_MAX_LEN, DETECTION_CLASSES, KNOWN_MODELS, KNOWN_MODEL_IDS,
};
pub use storage::StorageDtype;
