//! Named profiles: the TOML files in `profiles/`, built into the binary and overridable by a
//! profiles directory on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ConfigError;

/// The profile used when neither `--profile` nor `ENV` names one.
pub const DEFAULT_PROFILE: &str = "development";

/// The profiles shipped in `profiles/`, compiled in so the binary works from any directory.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("testing", include_str!("../../../profiles/testing.toml")),
    (
        "testing_kimi",
        include_str!("../../../profiles/testing_kimi.toml"),
    ),
    (
        "testing_qwen",
        include_str!("../../../profiles/testing_qwen.toml"),
    ),
    (
        "development",
        include_str!("../../../profiles/development.toml"),
    ),
    (
        "production",
        include_str!("../../../profiles/production.toml"),
    ),
];

/// Where a profile's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileOrigin {
    /// Compiled into the binary.
    Builtin,
    /// A file on disk.
    File(PathBuf),
}

/// The profiles available: built-in ones, replaced or extended by `*.toml` files of a
/// profiles directory.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: BTreeMap<String, (ProfileOrigin, String)>,
}

impl ProfileSet {
    /// Only the built-in profiles.
    pub fn builtin() -> Self {
        let profiles = BUILTIN_PROFILES
            .iter()
            .map(|(name, text)| (name.to_string(), (ProfileOrigin::Builtin, text.to_string())))
            .collect();
        Self { profiles }
    }

    /// Built-in profiles plus every `*.toml` in `dir` (a file wins over a built-in of the same
    /// name).
    pub fn with_dir(dir: &Path) -> Result<Self, ConfigError> {
        let mut set = Self::builtin();
        let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
                path: path.clone(),
                source,
            })?;
            set.profiles
                .insert(name.to_string(), (ProfileOrigin::File(path.clone()), text));
        }
        Ok(set)
    }

    /// Profile names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    /// The text and origin of `name`, or an error listing the profiles that exist.
    pub fn get(&self, name: &str) -> Result<(&ProfileOrigin, &str), ConfigError> {
        self.profiles
            .get(name)
            .map(|(o, t)| (o, t.as_str()))
            .ok_or_else(|| ConfigError::UnknownProfile {
                name: name.to_string(),
                available: self.names(),
            })
    }
}
