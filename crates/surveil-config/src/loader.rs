//! Merging the layers (defaults → profile → environment → flags) and remembering where each
//! value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Serialize;

use crate::env::{
    generic_key, nested, optional_keys, parse_bool, typed_value, ENV_ALIASES, HF_HOME,
    OPTIONAL_PATHS,
};
use crate::paths::{home_dir, PathsConfig, RawPathsConfig};
use crate::profiles::{ProfileOrigin, ProfileSet, DEFAULT_PROFILE};
use crate::{ConfigError, LogLevel, RawConfig, SystemConfig};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A profile (file path, or `builtin:<name>`).
    Profile(String),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl Origin {
    /// The layer's rank in the merge: default < profile < environment < flag.
    fn precedence(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::Profile(_) => 1,
            Origin::Env(_) => 2,
            Origin::Flag(_) => 3,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Profile(p) => write!(f, "profile {p}"),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One key set from outside the files: an environment variable or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key.
    pub key: String,
    /// Text as given.
    pub text: String,
    /// Where it came from.
    pub origin: Origin,
}

/// One layer of the merge, with its own origin (figment metadata carries it to every value).
struct Layer {
    origin: Origin,
    path: Option<PathBuf>,
    data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let mut m = Metadata::named(self.origin.to_string());
        if let Some(p) = &self.path {
            m = m.source(Source::File(p.clone()));
        }
        m
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// Builds a [`SystemConfig`] from the layers, lowest first: built-in defaults, the profile,
/// the environment, command-line flags.
///
/// ```
/// use surveil_config::{ConfigLoader, Device, Origin};
///
/// // VLM_DEVICE is one of the short aliases; SURVEIL_<SECTION>__<KEY> reaches every key.
/// let env = [
///     ("VLM_DEVICE".to_string(), "cpu".to_string()),
///     ("SURVEIL_TOOLS__LOITER_SECONDS".to_string(), "45".to_string()),
/// ];
/// let loaded = ConfigLoader::with_env(env).profile(Some("testing")).load()?;
/// assert_eq!(loaded.config.vlm.device, Device::Cpu);
/// assert_eq!(loaded.config.tools.loiter_seconds, 45.0);
/// assert_eq!(loaded.origin("vlm.device"), Origin::Env("VLM_DEVICE".into()));
/// # Ok::<(), surveil_config::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    profile: Option<String>,
    profiles_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    flags: Vec<Override>,
}

/// A validated configuration, the values as written, and the origin of each value.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: SystemConfig,
    /// The merged values as written, before validation: what `surveil config show` lists
    /// beside the resolved ones. Code uses [`LoadedConfig::config`].
    pub raw: RawConfig,
    /// Where the profile came from.
    pub profile_origin: String,
    origins: BTreeMap<String, Origin>,
}

impl LoadedConfig {
    /// Where the value of dotted `key` came from. A resolved key that two keys decide
    /// (`vlm.storage`: `vlm.load_in_4bit` and `vlm.quant`) has the origin of the one that
    /// decided it, the later layer when both did.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The configuration as `surveil config show --json` prints it (without origins): the
    /// validated values, and before a resolved key the keys as written that validation folded
    /// into it (`vlm.load_in_4bit` and `vlm.quant` before `vlm.storage`).
    pub fn shown(&self) -> serde_json::Value {
        shown_json(&self.raw, &self.config)
    }

    /// The level surveil's own crates log at under this configuration: `output.log_level`,
    /// raised to [`LogLevel::Debug`] by `output.debug`
    /// ([`OutputConfig::effective_log_level`](crate::OutputConfig::effective_log_level)) unless
    /// `log_level` was set by a later layer than `debug` (`LOG_LEVEL=error` over a profile with
    /// `debug = true`): as for any key, the later layer wins. Command-line `-q`/`-v` and
    /// `SURVEIL_LOG` override it in the program.
    ///
    /// ```
    /// use surveil_config::{ConfigLoader, LogLevel};
    ///
    /// // `testing` sets log_level = "debug" and debug = true.
    /// let env = |vars: &[(&str, &str)]| {
    ///     vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
    /// };
    /// let quiet = ConfigLoader::with_env(env(&[("LOG_LEVEL", "error")]))
    ///     .profile(Some("testing"))
    ///     .load()?;
    /// assert_eq!(quiet.log_level(), LogLevel::Error);
    /// let raised = ConfigLoader::with_env(env(&[("DEBUG", "1")]))
    ///     .profile(Some("production"))
    ///     .load()?;
    /// assert_eq!(raised.log_level(), LogLevel::Debug);
    /// # Ok::<(), surveil_config::ConfigError>(())
    /// ```
    pub fn log_level(&self) -> LogLevel {
        let output = &self.config.output;
        if output.debug
            && self.origin("output.log_level").precedence()
                > self.origin("output.debug").precedence()
        {
            output.log_level
        } else {
            output.effective_log_level()
        }
    }

    /// Every leaf key of [`LoadedConfig::shown`] with its value (as JSON) and origin, in
    /// section order; each configured camera's fields as `cameras[i].<field>` (origin: that of
    /// `cameras`).
    pub fn entries(&self) -> Vec<(String, serde_json::Value, Origin)> {
        let json = self.shown();
        let mut out = Vec::new();
        if let serde_json::Value::Object(sections) = json {
            for (section, v) in sections {
                match v {
                    serde_json::Value::Object(fields) => {
                        for (field, value) in fields {
                            let key = format!("{section}.{field}");
                            let origin = self.origin(&key);
                            out.push((key, value, origin));
                        }
                    }
                    serde_json::Value::Array(items) if section == "cameras" => {
                        let origin = self.origin("cameras");
                        for (i, item) in items.into_iter().enumerate() {
                            if let serde_json::Value::Object(fields) = item {
                                for (field, value) in fields {
                                    out.push((
                                        format!("cameras[{i}].{field}"),
                                        value,
                                        origin.clone(),
                                    ));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// A loader reading this process's environment.
    pub fn new() -> Self {
        Self::with_env(std::env::vars())
    }

    /// A loader reading the given variables instead of the process environment (for tests and
    /// embedding).
    pub fn with_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            profile: None,
            profiles_dir: None,
            env: vars.into_iter().collect(),
            flags: Vec::new(),
        }
    }

    /// Use this profile (a `--profile` flag); otherwise `ENV`, otherwise `development`.
    pub fn profile(mut self, name: Option<&str>) -> Self {
        self.profile = name.map(str::to_string);
        self
    }

    /// Read profiles from this directory (in addition to the built-in ones). Without it,
    /// `SURVEIL_PROFILES_DIR`, then `./profiles` when it exists.
    pub fn profiles_dir(mut self, dir: Option<&Path>) -> Self {
        self.profiles_dir = dir.map(Path::to_path_buf);
        self
    }

    /// Set `key` from a command-line flag (highest precedence). `flag` names it in messages.
    pub fn flag(mut self, key: &str, text: impl Into<String>, flag: &str) -> Self {
        self.flags.push(Override {
            key: key.to_string(),
            text: text.into(),
            origin: Origin::Flag(flag.to_string()),
        });
        self
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The profile name that will be used and why.
    pub fn profile_name(&self) -> String {
        self.profile
            .clone()
            .or_else(|| {
                self.var("ENV")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string())
    }

    /// The available profiles.
    pub fn profile_set(&self) -> Result<ProfileSet, ConfigError> {
        let dir = self
            .profiles_dir
            .clone()
            .or_else(|| self.var("SURVEIL_PROFILES_DIR").map(PathBuf::from))
            .or_else(|| {
                let local = PathBuf::from("profiles");
                local.is_dir().then_some(local)
            });
        match dir {
            Some(d) => ProfileSet::with_dir(&d),
            None => Ok(ProfileSet::builtin()),
        }
    }

    /// Environment overrides, in a stable order: `HF_HOME`, the aliases (`HF_HUB_CACHE` among
    /// them wins over `HF_HOME`), then generic variables. A path variable set to empty text is
    /// unset, as for the other tools that read these variables.
    fn env_overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        if let Some(home) = self.var(HF_HOME).filter(|v| !v.is_empty()) {
            out.push(Override {
                key: "paths.hub_cache".into(),
                text: Path::new(home).join("hub").to_string_lossy().into_owned(),
                origin: Origin::Env(HF_HOME.into()),
            });
        }
        for (var, key) in ENV_ALIASES {
            if let Some(v) = self.var(var) {
                if v.is_empty() && OPTIONAL_PATHS.contains(key) {
                    continue;
                }
                out.push(Override {
                    key: key.to_string(),
                    text: v.to_string(),
                    origin: Origin::Env(var.to_string()),
                });
            }
        }
        if let Some(v) = self.var("DISABLE_MONITORING") {
            // Negated below, once the value is known to be a boolean.
            out.push(Override {
                key: "monitoring.enabled".into(),
                text: v.to_string(),
                origin: Origin::Env("DISABLE_MONITORING".into()),
            });
        }
        let mut generic: Vec<_> = self
            .env
            .iter()
            .filter_map(|(var, v)| {
                generic_key(var)
                    .filter(|key| !(v.is_empty() && OPTIONAL_PATHS.contains(&key.as_str())))
                    .map(|key| Override {
                        key,
                        text: v.clone(),
                        origin: Origin::Env(var.clone()),
                    })
            })
            .collect();
        generic.sort_by(|a, b| a.key.cmp(&b.key));
        out.extend(generic);
        out
    }

    /// The home directory of this loader's variables (`HOME`, else `/`).
    fn home(&self) -> PathBuf {
        home_dir(|name| self.var(name).map(str::to_string))
    }

    /// The paths the environment alone gives (the path variables over the defaults under
    /// `HOME`), without a profile or flags: the same overrides, in the same order, as
    /// [`ConfigLoader::load`] merges.
    pub fn environment_paths(&self) -> PathsConfig {
        let mut raw = RawPathsConfig::default();
        for o in self.env_overrides() {
            let slot = match o.key.as_str() {
                "paths.hub_cache" => &mut raw.hub_cache,
                "paths.model_dir" => &mut raw.model_dir,
                "paths.assets" => &mut raw.assets,
                _ => continue,
            };
            *slot = Some(PathBuf::from(o.text));
        }
        raw.with_defaults(&self.home())
    }

    /// Merge and validate.
    ///
    /// Errors: [`ConfigError::UnknownProfile`] (the message lists the profiles that exist),
    /// [`ConfigError::Io`] (an unreadable profiles directory or file), [`ConfigError::Invalid`]
    /// (a profile that is not TOML, an unknown key, a wrong type or enum value),
    /// [`ConfigError::BadOverride`] (an environment variable or flag that names no key or
    /// does not parse), [`ConfigError::Rule`] (a value out of range or inconsistent).
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        let profile = self.profile_name();
        let set = self.profile_set()?;
        let (porigin, text) = set.get(&profile)?;
        let (profile_label, profile_path) = match porigin {
            ProfileOrigin::Builtin => (format!("builtin:{profile}"), None),
            ProfileOrigin::File(p) => (p.display().to_string(), Some(p.clone())),
        };
        let profile_data: Dict = toml::from_str(text).map_err(|e| {
            ConfigError::Invalid(format!(
                "profile {profile_label} is not valid TOML: {}",
                e.to_string().trim()
            ))
        })?;

        let defaults = match Value::serialize(RawConfig::default()) {
            Ok(Value::Dict(_, d)) => d,
            _ => Dict::new(),
        };
        let mut figment = Figment::new()
            .merge(Layer {
                origin: Origin::Default,
                path: None,
                data: defaults.clone(),
            })
            .merge(Layer {
                origin: Origin::Profile(profile_label.clone()),
                path: profile_path,
                data: profile_data,
            });
        for o in self
            .env_overrides()
            .into_iter()
            .chain(self.flags.iter().cloned())
        {
            let origin_text = o.origin.to_string();
            let mut value = typed_value(&defaults, &o.key, &o.text, &origin_text)?;
            if o.origin == Origin::Env("DISABLE_MONITORING".into()) {
                let disabled = parse_bool(&o.text).unwrap_or(false);
                value = Value::from(!disabled);
            }
            figment = figment.merge(Layer {
                origin: o.origin.clone(),
                path: None,
                data: nested(&o.key, value),
            });
        }

        let raw: RawConfig = figment.extract().map_err(|e| describe(&e))?;

        let mut origins = BTreeMap::new();
        for key in crate::env::all_keys(&defaults)
            .into_iter()
            .chain(optional_keys().map(String::from))
            .chain(["zones".to_string(), "cameras".to_string()])
        {
            if let Some(meta) = figment.find_metadata(&key) {
                origins.insert(key, origin_from_name(&meta.name));
            }
        }
        let config = raw
            .clone()
            .validate_with_home(&profile, &self.home(), |key| {
                origins
                    .get(key)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "default".into())
            })?;
        // The resolved storage type comes from the key that decided it.
        let storage_origin = raw
            .vlm
            .storage_keys()
            .iter()
            .map(|key| origins.get(*key).cloned().unwrap_or(Origin::Default))
            .max_by_key(Origin::precedence)
            .unwrap_or(Origin::Default);
        origins.insert("vlm.storage".into(), storage_origin);
        Ok(LoadedConfig {
            config,
            raw,
            profile_origin: profile_label,
            origins,
        })
    }
}

/// The configuration as JSON, with the keys as written that validation folded into a resolved
/// key placed before that key: the validated sections, each extended by the fields of its raw
/// section that the validated one lacks (`vlm.load_in_4bit`, `vlm.quant`), inserted before the
/// first field the raw section lacks (`vlm.storage`).
pub(crate) fn shown_json(raw: &RawConfig, config: &SystemConfig) -> serde_json::Value {
    use serde_json::{Map, Value as Json};
    let mut shown = serde_json::to_value(config).unwrap_or_default();
    let raw = serde_json::to_value(raw).unwrap_or_default();
    let (Some(sections), Some(raw_sections)) = (shown.as_object_mut(), raw.as_object()) else {
        return shown;
    };
    for (name, section) in sections.iter_mut() {
        let (Some(fields), Some(raw_fields)) = (
            section.as_object_mut(),
            raw_sections.get(name).and_then(Json::as_object),
        ) else {
            continue;
        };
        let mut folded: Vec<(String, Json)> = raw_fields
            .iter()
            .filter(|(field, _)| !fields.contains_key(*field))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect();
        if folded.is_empty() {
            continue;
        }
        let mut merged = Map::new();
        for (field, value) in fields.iter() {
            if !raw_fields.contains_key(field) {
                merged.extend(folded.drain(..));
            }
            merged.insert(field.clone(), value.clone());
        }
        merged.extend(folded);
        *fields = merged;
    }
    shown
}

fn origin_from_name(name: &str) -> Origin {
    if let Some(p) = name.strip_prefix("profile ") {
        Origin::Profile(p.to_string())
    } else if let Some(v) = name.strip_prefix("env ") {
        Origin::Env(v.to_string())
    } else if let Some(f) = name.strip_prefix("flag ") {
        Origin::Flag(f.to_string())
    } else {
        Origin::Default
    }
}

/// What serde's name of a numeric type means to a user: `usize` → "a whole number from 0 to
/// 18446744073709551615". `None` for other expectations (their wording is kept).
fn plain_expected(expected: &str) -> Option<String> {
    let range = |min: i128, max: i128| format!("a whole number from {min} to {max}");
    Some(match expected {
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => range(i64::MIN.into(), i64::MAX.into()),
        "f32" | "f64" => "a number".to_string(),
        _ => return None,
    })
}

/// A figment error as one line per problem: key, what is wrong, where it came from.
fn describe(e: &figment::Error) -> ConfigError {
    let lines: Vec<String> = e
        .clone()
        .into_iter()
        .map(|err| {
            use figment::error::Kind;
            // Keys as written in messages elsewhere: `cameras[1].name`, not `cameras.1.name`.
            let mut key = String::new();
            for part in &err.path {
                if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                    key.push_str(&format!("[{part}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(part);
                }
            }
            let what = match &err.kind {
                Kind::UnknownField(field, expected) => {
                    // Inside a list of tables the path already ends with the field.
                    if err.path.last() != Some(field) {
                        key = if key.is_empty() {
                            field.clone()
                        } else {
                            format!("{key}.{field}")
                        };
                    }
                    format!("unknown key; allowed here: {}", expected.join(", "))
                }
                Kind::UnknownVariant(v, allowed) => {
                    format!(
                        "`{v}` is not allowed; allowed values: {}",
                        allowed.join(", ")
                    )
                }
                Kind::InvalidValue(actual, expected) | Kind::InvalidType(actual, expected) => {
                    match plain_expected(expected) {
                        Some(wanted) => {
                            // The value alone (figment writes "signed int `-1`").
                            let actual = actual.to_string();
                            let value = actual.find('`').map_or(&actual[..], |i| &actual[i..]);
                            format!("{value} is not allowed; expected {wanted}")
                        }
                        None => err.kind.to_string(),
                    }
                }
                other => other.to_string(),
            };
            let from = err
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_else(|| "unknown source".into());
            format!("{key}: {what} (from {from})")
        })
        .collect();
    ConfigError::Invalid(lines.join("; "))
}
