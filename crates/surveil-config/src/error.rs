//! Configuration errors.

use std::path::PathBuf;

/// Everything that makes a configuration unusable. Messages name the key, the value, its
/// origin, and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The requested profile does not exist.
    #[error("unknown profile `{name}`; profiles found: {}", available.join(", "))]
    UnknownProfile {
        /// The profile asked for.
        name: String,
        /// Profiles that exist.
        available: Vec<String>,
    },
    /// A profile file could not be read.
    #[error("cannot read profile file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Deserialization failed: unknown key, wrong type, bad enum value.
    #[error("{0}")]
    Invalid(String),
    /// A value has the right type but breaks a rule (range, consistency).
    #[error("{key} = {value} (from {origin}): {rule}")]
    Rule {
        /// Dotted key, e.g. `orchestration.max_concurrent_tools`.
        key: String,
        /// The offending value as written.
        value: String,
        /// Where it came from.
        origin: String,
        /// The rule it breaks.
        rule: String,
    },
    /// An override given on the command line or environment is malformed.
    #[error("{origin}: {reason}")]
    BadOverride {
        /// The variable or flag.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}
