//! Environment variables and flags → typed overrides of single keys.

use figment::value::{Dict, Num, Value};

use crate::ConfigError;

/// Short variables of the original system and the key each sets. `DISABLE_MONITORING` is
/// handled separately (it sets `monitoring.enabled` to the negation).
pub(crate) const ENV_ALIASES: &[(&str, &str)] = &[
    ("VLM_MODEL", "vlm.primary_model"),
    ("VLM_DEVICE", "vlm.device"),
    ("LOAD_IN_4BIT", "vlm.load_in_4bit"),
    ("VLM_4BIT", "vlm.load_in_4bit"),
    ("ENABLE_FALLBACK", "vlm.enable_fallback"),
    ("MAX_CONCURRENT_TOOLS", "orchestration.max_concurrent_tools"),
    ("ORCHESTRATION_MODE", "orchestration.mode"),
    ("LOG_LEVEL", "output.log_level"),
    ("DEBUG", "output.debug"),
    ("HF_HUB_CACHE", "paths.hub_cache"),
    ("SURVEIL_MODEL_DIR", "paths.model_dir"),
    ("SURVEIL_ASSETS", "paths.assets"),
];

/// The Hugging Face home: sets `paths.hub_cache` to its `hub` folder, below `HF_HUB_CACHE`
/// (as the Hugging Face tools read them). Not in [`variables_for`], which lists variables
/// whose text is the value; the reference names it in the key's allowed values.
pub(crate) const HF_HOME: &str = "HF_HOME";

/// Prefix of the generic form `SURVEIL_<SECTION>__<FIELD>`.
pub(crate) const GENERIC_PREFIX: &str = "SURVEIL_";

/// The variable that sets `monitoring.enabled` to the negation of its value.
pub(crate) const DISABLE_MONITORING: &str = "DISABLE_MONITORING";

/// The environment variables that set dotted `key`, for documentation: the short variables of
/// the original system first (`DISABLE_MONITORING` written as `DISABLE_MONITORING (negated)`),
/// then the generic `SURVEIL_<SECTION>__<FIELD>`. Empty when the key can only be set in a
/// profile file (tables such as `decision.opening_hours`, and `zones`).
pub(crate) fn variables_for(defaults: &Dict, key: &str) -> Vec<String> {
    if !settable(defaults, key) {
        return Vec::new();
    }
    let mut out: Vec<String> = ENV_ALIASES
        .iter()
        .filter(|(_, k)| *k == key)
        .map(|(var, _)| var.to_string())
        .collect();
    if key == "monitoring.enabled" {
        out.push(format!("{DISABLE_MONITORING} (negated)"));
    }
    if let Some((section, field)) = key.split_once('.') {
        out.push(format!(
            "{GENERIC_PREFIX}{}__{}",
            section.to_ascii_uppercase(),
            field.to_ascii_uppercase()
        ));
    }
    out
}

/// Whether `key` can be given as text (a variable or a `--set` flag): a boolean, a number, a
/// string or a list of strings. Tables and lists of tables are written in profile files only.
pub(crate) fn settable(defaults: &Dict, key: &str) -> bool {
    OPTIONAL_NUMBERS.contains(&key)
        || OPTIONAL_REALS.contains(&key)
        || OPTIONAL_PATHS.contains(&key)
        || OPTIONAL_STRINGS.contains(&key)
        || OPTIONAL_TEXTS.contains(&key)
        || matches!(
            lookup(defaults, key),
            Some(Value::Bool(..) | Value::Num(..) | Value::String(..) | Value::Array(..))
        )
}

/// Parse a boolean the way users write them: true/false, 1/0, yes/no (any case).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Look a dotted key up in the defaults tree.
pub(crate) fn lookup<'a>(defaults: &'a Dict, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut cur = defaults.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_dict()?.get(p)?;
    }
    Some(cur)
}

/// Keys that exist, for "unknown key" messages.
pub(crate) fn all_keys(defaults: &Dict) -> Vec<String> {
    let mut keys = Vec::new();
    for (section, v) in defaults {
        if let Some(d) = v.as_dict() {
            keys.extend(d.keys().map(|k| format!("{section}.{k}")));
        }
    }
    keys
}

/// Fields that may hold a number or nothing (their default is absent/null).
const OPTIONAL_NUMBERS: &[&str] = &["vlm.seed", "vlm.threads"];

/// Fields that may hold a real number or nothing (their default is absent/null).
const OPTIONAL_REALS: &[&str] = &["tracker.frame_rate"];

/// Fields that may hold a path or nothing (absent: the default validation resolves, or none).
pub(crate) const OPTIONAL_PATHS: &[&str] = &[
    "paths.hub_cache",
    "paths.model_dir",
    "paths.assets",
    "mqtt.password_file",
    "mqtt.ca_file",
];

/// Fields that may hold text or nothing (their default is absent/null).
const OPTIONAL_STRINGS: &[&str] = &[
    "mqtt.client_id",
    "mqtt.node_id",
    "mqtt.username",
    "mqtt.password_env",
];

/// Fields that may hold a text or nothing (their default is absent/null); the schema reads
/// the text.
const OPTIONAL_TEXTS: &[&str] = &["monitoring.metrics_addr"];

/// Keys whose default is absent, so the serialized defaults do not list them.
pub(crate) fn optional_keys() -> impl Iterator<Item = &'static str> {
    OPTIONAL_NUMBERS
        .iter()
        .chain(OPTIONAL_REALS)
        .chain(OPTIONAL_PATHS)
        .chain(OPTIONAL_STRINGS)
        .chain(OPTIONAL_TEXTS)
        .copied()
}

/// Turn the text of a variable or flag into a value of the type `key` has.
pub(crate) fn typed_value(
    defaults: &Dict,
    key: &str,
    text: &str,
    origin: &str,
) -> Result<Value, ConfigError> {
    let bad = |reason: String| ConfigError::BadOverride {
        origin: origin.to_string(),
        reason,
    };
    if OPTIONAL_REALS.contains(&key) {
        return text
            .trim()
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| bad(format!("{key} must be a number, got `{text}`")));
    }
    if OPTIONAL_PATHS.contains(&key) || OPTIONAL_STRINGS.contains(&key) {
        // As given: a path may start or end with spaces; names are checked by validation.
        return Ok(Value::from(text.to_string()));
    }
    if OPTIONAL_TEXTS.contains(&key) {
        return Ok(Value::from(text.trim().to_string()));
    }
    if OPTIONAL_NUMBERS.contains(&key) {
        return text.trim().parse::<u64>().map(Value::from).map_err(|_| {
            bad(format!(
                "{key} must be a non-negative integer, got `{text}`"
            ))
        });
    }
    let Some(default) = lookup(defaults, key) else {
        let keys = all_keys(defaults);
        return Err(bad(format!(
            "unknown key `{key}`; keys are: {}",
            keys.join(", ")
        )));
    };
    if !settable(defaults, key) {
        return Err(bad(format!(
            "{key} is a table; set it in a profile file (see docs/configuration.md)"
        )));
    }
    Ok(match default {
        Value::Bool(..) => Value::from(parse_bool(text).ok_or_else(|| {
            bad(format!(
                "{key} must be a boolean (true/false, 1/0, yes/no), got `{text}`"
            ))
        })?),
        Value::Num(_, Num::F32(_) | Num::F64(_)) => {
            let parsed: f64 = text
                .trim()
                .parse()
                .map_err(|_| bad(format!("{key} must be a number, got `{text}`")))?;
            Value::from(parsed)
        }
        Value::Num(..) => {
            let parsed: i64 = text
                .trim()
                .parse()
                .map_err(|_| bad(format!("{key} must be an integer, got `{text}`")))?;
            Value::from(parsed)
        }
        Value::Array(..) => {
            let t = text.trim();
            let items: Vec<Value> = if t.starts_with('[') {
                serde_json::from_str::<Vec<String>>(t)
                    .map_err(|e| bad(format!("{key} must be a list of strings: {e}")))?
                    .into_iter()
                    .map(Value::from)
                    .collect()
            } else {
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::from(s.to_string()))
                    .collect()
            };
            Value::from(items)
        }
        _ => Value::from(text.to_string()),
    })
}

/// `a.b` = value as a nested dictionary.
pub(crate) fn nested(key: &str, value: Value) -> Dict {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut dict = Dict::new();
    dict.insert(last.to_string(), value);
    for p in parts.into_iter().rev() {
        let mut outer = Dict::new();
        outer.insert(p.to_string(), Value::from(dict));
        dict = outer;
    }
    dict
}

/// The config key named by a `SURVEIL_<SECTION>__<FIELD>` variable, if it is one.
pub(crate) fn generic_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(GENERIC_PREFIX)?;
    let (section, field) = rest.split_once("__")?;
    Some(format!(
        "{}.{}",
        section.to_ascii_lowercase(),
        field.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "1", "yes", "Yes"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "False", "0", "no", "NO"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn generic_keys() {
        assert_eq!(
            generic_key("SURVEIL_TRACKER__TRACK_BUFFER").as_deref(),
            Some("tracker.track_buffer")
        );
        assert_eq!(generic_key("SURVEIL_ASSETS"), None);
        assert_eq!(generic_key("VLM_MODEL"), None);
    }

    fn defaults() -> Dict {
        match Value::serialize(crate::RawConfig::default()) {
            Ok(Value::Dict(_, d)) => d,
            other => panic!("defaults serialize to a dictionary, got {other:?}"),
        }
    }

    #[test]
    fn variables_that_set_each_key() {
        let d = defaults();
        assert_eq!(
            variables_for(&d, "vlm.load_in_4bit"),
            ["LOAD_IN_4BIT", "VLM_4BIT", "SURVEIL_VLM__LOAD_IN_4BIT"]
        );
        assert_eq!(
            variables_for(&d, "monitoring.enabled"),
            [
                "DISABLE_MONITORING (negated)",
                "SURVEIL_MONITORING__ENABLED"
            ]
        );
        assert_eq!(
            variables_for(&d, "tools.stop_seconds"),
            ["SURVEIL_TOOLS__STOP_SECONDS"]
        );
        assert_eq!(variables_for(&d, "vlm.seed"), ["SURVEIL_VLM__SEED"]);
        assert_eq!(
            variables_for(&d, "tracker.frame_rate"),
            ["SURVEIL_TRACKER__FRAME_RATE"]
        );
        // Lists of strings are written `a,b`; tables only in profile files.
        assert!(settable(&d, "detection.classes"));
        assert!(!settable(&d, "decision.opening_hours"));
        assert!(variables_for(&d, "decision.opening_hours").is_empty());
        assert!(variables_for(&d, "zones").is_empty());
        // Every variable named for a key is read back as that key.
        for key in all_keys(&d) {
            for var in variables_for(&d, &key) {
                let var = var.split(' ').next().unwrap_or_default();
                let read = generic_key(var).or_else(|| {
                    ENV_ALIASES
                        .iter()
                        .find(|(v, _)| *v == var)
                        .map(|(_, k)| k.to_string())
                        .or_else(|| {
                            (var == DISABLE_MONITORING).then(|| "monitoring.enabled".into())
                        })
                });
                assert_eq!(read.as_deref(), Some(key.as_str()), "{var}");
            }
        }
    }

    #[test]
    fn a_table_given_as_text_says_where_to_set_it() {
        let d = defaults();
        let err = typed_value(
            &d,
            "decision.opening_hours",
            "08:00-18:00",
            "flag --set decision.opening_hours",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "flag --set decision.opening_hours: decision.opening_hours is a table; set it in a \
             profile file (see docs/configuration.md)"
        );
        // Choice values reach deserialization as written; case is handled there.
        assert_eq!(
            typed_value(&d, "vlm.device", "DeviceType.CPU", "env VLM_DEVICE").unwrap(),
            Value::from("DeviceType.CPU".to_string())
        );
        assert_eq!(
            typed_value(&d, "tracker.frame_rate", "12.5", "env").unwrap(),
            Value::from(12.5)
        );
    }
}
