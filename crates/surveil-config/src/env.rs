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
];

/// Prefix of the generic form `SURVEIL_<SECTION>__<FIELD>`.
pub(crate) const GENERIC_PREFIX: &str = "SURVEIL_";

/// Parse a boolean the way users write them: true/false, 1/0, yes/no (any case).
pub fn parse_bool(s: &str) -> Option<bool> {
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
const OPTIONAL_NUMBERS: &[&str] = &["vlm.seed"];

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
}
