//! Bounded property tests of configuration loading: arbitrary text as a profile file, arbitrary
//! TOML values for every known key (in a profile, an environment variable or a flag) and
//! arbitrary override keys never panic, every refusal names the key (or the variable or flag)
//! it is about, and what is accepted is usable as it is.

use std::time::Duration;

use proptest::prelude::*;
use surveil_config::{ConfigError, LoadedConfig, RawConfig};

use crate::loader;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every `section.field` of the schema, from the serialized defaults.
fn known_keys() -> Vec<(String, String)> {
    let json = serde_json::to_value(RawConfig::default()).unwrap();
    let mut keys = Vec::new();
    for (section, fields) in json.as_object().unwrap() {
        if let Some(fields) = fields.as_object() {
            for field in fields.keys() {
                keys.push((section.clone(), field.clone()));
            }
        }
    }
    // Optional fields serialized as absent or null are keys too.
    keys.push(("vlm".into(), "seed".into()));
    keys.push(("decision".into(), "opening_hours".into()));
    keys.sort();
    keys.dedup();
    keys
}

/// Fields of a `[[zones]]` entry.
const ZONE_FIELDS: &[&str] = &[
    "name",
    "camera",
    "polygon",
    "coordinates",
    "restricted",
    "max_dwell_seconds",
];

/// A TOML string literal for `s` (basic string with escapes).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Syntactically valid TOML values of every kind, odd ones included.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop::sample::select(
            &[
                "0",
                "-1",
                "1",
                "9223372036854775807",
                "-9223372036854775808",
                "4294967296",
                "nan",
                "+inf",
                "-inf",
                "-0.0",
                "1e308",
                "1e20",
                "18446744073709551616.0",
                "5e-324",
                "0.5",
                "true",
                "false",
                "1979-05-27T07:32:00Z",
                "07:32:00",
                "1979-05-27",
                "\"\"",
                "\"auto\"",
                "\"cpu\"",
                "\"q4k\"",
                "\"person\"",
                "\"12:00\"",
                "\"24:00\"",
                "\"git-base-coco\"",
                "\"normalized\"",
                "{}",
                "[]",
                "{ open = \"08:00\", close = \"08:00\" }",
                "{ open = \"08:00\" }",
                "[[0, 0], [1, 0], [0, 1]]",
                "[[0, 0], [1, 1], [2, 2]]",
                "[[0, 0], [nan, 0], [0, 1]]",
                "[0, 1]",
            ][..]
        )
        .prop_map(str::to_string),
        any::<f64>().prop_map(|v| {
            if v.is_nan() {
                "nan".to_string()
            } else if v.is_infinite() {
                if v > 0.0 { "inf" } else { "-inf" }.to_string()
            } else {
                format!("{v:?}")
            }
        }),
        ".{0,12}".prop_map(|s| toml_string(&s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3).prop_map(|kv| {
                // Distinct keys: a repeated key would make the whole text invalid TOML.
                let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", parts.join(", "))
            }),
        ]
    })
}

/// Writes `text` as profile `fuzz` and loads it.
fn load_profile(text: &str) -> (Result<LoadedConfig, ConfigError>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fuzz.toml"), text).unwrap();
    let result = loader(&[])
        .profiles_dir(Some(dir.path()))
        .profile(Some("fuzz"))
        .load();
    let msg = match &result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    (result, msg)
}

/// An accepted configuration's times are usable as they are: every `*_seconds` value is a
/// [`Duration`] (the pipeline converts them without re-checking).
fn check_accepted(loaded: &LoadedConfig) -> Result<(), TestCaseError> {
    for (key, value, _) in loaded.entries() {
        if let (true, Some(x)) = (key.ends_with("_seconds"), value.as_f64()) {
            prop_assert!(
                Duration::try_from_secs_f64(x).is_ok(),
                "{key} = {x} was accepted but is not a duration"
            );
        }
    }
    for zone in &loaded.config.zones {
        if let Some(x) = zone.max_dwell_seconds {
            prop_assert!(
                Duration::try_from_secs_f64(x).is_ok(),
                "max_dwell_seconds = {x}"
            );
        }
    }
    Ok(())
}

/// A valid zone to which one field is then set.
const ZONE: &str = "name = \"door\"\npolygon = [[0, 0], [10, 0], [0, 10]]\n";

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text as a profile.
    #[test]
    fn fuzz_profile_arbitrary_text(text in any::<String>()) {
        let (result, msg) = load_profile(&text);
        // Every refusal names the profile file, except a rule broken by a default value
        // (another key moved its bound), which names its key and says "default".
        if let Err(e) = result {
            let rule_on_default = matches!(&e, ConfigError::Rule { origin, .. } if origin == "default");
            prop_assert!(msg.contains("fuzz.toml") || rule_on_default, "{msg}");
        }
    }

    /// TOML-ish soup: section headers, known keys and odd values.
    #[test]
    fn fuzz_profile_toml_soup(
        lines in prop::collection::vec(
            prop_oneof![
                prop::sample::select(&[
                    "[vlm]", "[detection]", "[tracker]", "[orchestration]", "[tools]",
                    "[monitoring]", "[output]", "[decision]", "[[zones]]", "[zones]",
                    "[vlm.device]", "[[vlm]]", "[decision.opening_hours]", "",
                ][..]).prop_map(str::to_string),
                (prop::sample::select(known_keys()), toml_value())
                    .prop_map(|((_, field), v)| format!("{field} = {v}")),
                (prop::sample::select(ZONE_FIELDS), toml_value())
                    .prop_map(|(field, v)| format!("{field} = {v}")),
            ],
            0..12,
        ),
    ) {
        if let (Ok(loaded), _) = load_profile(&lines.join("\n")) {
            check_accepted(&loaded)?;
        }
    }

    /// One known key set to an arbitrary value in a profile: a refusal names that key, unless
    /// the value is allowed and breaks a rule tying it to another key, which is then named.
    #[test]
    fn fuzz_profile_known_key_value(
        key in prop::sample::select(known_keys()),
        value in toml_value(),
    ) {
        let (section, field) = &key;
        let (result, msg) = load_profile(&format!("[{section}]\n{field} = {value}\n"));
        if let Ok(loaded) = &result {
            check_accepted(loaded)?;
        }
        if let Err(e) = result {
            let dotted = format!("{section}.{field}");
            let names_key = msg.contains(&dotted);
            let names_related = matches!(
                &e,
                ConfigError::Rule { key, .. }
                    if known_keys().iter().any(|(s, f)| *key == format!("{s}.{f}"))
                        && msg.contains(key.as_str())
            );
            prop_assert!(names_key || names_related, "{dotted} = {value}: {msg}");
        }
    }

    /// One field of a zone set to an arbitrary value: a refusal names the zone field.
    #[test]
    fn fuzz_profile_zone_field_value(
        field in prop::sample::select(ZONE_FIELDS),
        value in toml_value(),
    ) {
        let zone: String = ZONE
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let (result, msg) = load_profile(&format!("[[zones]]\n{zone}{field} = {value}\n"));
        if let Ok(loaded) = &result {
            check_accepted(loaded)?;
        }
        if result.is_err() {
            prop_assert!(
                msg.contains("zones") && msg.contains(field),
                "zones.{field} = {value}: {msg}"
            );
        }
    }

    /// One known key set from the environment (`SURVEIL_<SECTION>__<FIELD>`) or a flag to
    /// arbitrary text: a refusal names the variable or the flag.
    #[test]
    fn fuzz_override_known_key_text(
        key in prop::sample::select(known_keys()),
        text in prop_oneof![".{0,16}", toml_value()],
        by_flag in any::<bool>(),
    ) {
        let (section, field) = &key;
        let dotted = format!("{section}.{field}");
        let (l, origin) = if by_flag {
            (
                loader(&[]).profile(Some("testing")).flag(&dotted, text.clone(), "--fuzz-flag"),
                "--fuzz-flag".to_string(),
            )
        } else {
            let var = format!("SURVEIL_{}__{}", section.to_uppercase(), field.to_uppercase());
            (loader(&[(var.as_str(), text.as_str())]).profile(Some("testing")), var)
        };
        let result = l.load();
        if let Ok(loaded) = &result {
            check_accepted(loaded)?;
        }
        if let Err(e) = result {
            let msg = e.to_string();
            let names_related =
                matches!(&e, ConfigError::Rule { key, .. } if msg.contains(key.as_str()));
            prop_assert!(
                msg.contains(&origin) || msg.contains(&dotted) || names_related,
                "{dotted} = {text:?} from {origin}: {msg}"
            );
        }
    }

    /// Arbitrary override keys: unknown ones are refused by name.
    #[test]
    fn fuzz_override_arbitrary_key(key in ".{0,24}", text in ".{0,8}") {
        let result = loader(&[]).profile(Some("testing")).flag(&key, text, "--fuzz-flag").load();
        if let Err(e) = result {
            let msg = e.to_string();
            prop_assert!(msg.contains("--fuzz-flag") || msg.contains(&key), "{msg}");
        }
    }
}

/// Deeply nested arrays, inline tables and dotted section names are refused without
/// exhausting the stack.
#[test]
fn fuzz_profile_deep_nesting_is_refused() {
    for text in [
        format!(
            "[vlm]\nfallback_models = {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        format!(
            "[vlm]\nfallback_models = {}1{}\n",
            "{a=".repeat(10_000),
            "}".repeat(10_000)
        ),
        format!("[{}]\n", vec!["a"; 10_000].join(".")),
    ] {
        let (result, msg) = load_profile(&text);
        assert!(result.is_err());
        assert!(msg.contains("fuzz.toml"), "{msg}");
    }
}

/// Found by `fuzz_profile_known_key_value` (`orchestration.timeout_seconds = 9.19e129`): a
/// finite but huge number of seconds was accepted, and the pipeline's
/// `Duration::from_secs_f64` panics on it; a huge cooldown silently became none.
#[test]
fn fuzz_regression_seconds_beyond_a_duration_are_refused() {
    for key in [
        "timeout_seconds",
        "vlm_timeout_seconds",
        "vlm_periodic_seconds",
        "vlm_cooldown_seconds",
        "vlm_cue_cooldown_seconds",
    ] {
        let (result, msg) = load_profile(&format!("[orchestration]\n{key} = 1e20\n"));
        let Err(ConfigError::Rule { key: named, .. }) = result else {
            panic!("{key} = 1e20: expected a rule error, got {msg:?}");
        };
        assert_eq!(named, format!("orchestration.{key}"));
        assert!(msg.contains("fuzz.toml") && msg.contains("1.8e19"), "{msg}");
    }
    let (result, msg) = load_profile("[monitoring]\ninterval_seconds = 1e20\n");
    assert!(msg.contains("monitoring.interval_seconds"), "{msg}");
    assert!(result.is_err());
    // A large number of seconds below the limit is still accepted.
    let (result, msg) = load_profile("[orchestration]\nvlm_timeout_seconds = 1.8e19\n");
    assert!(result.is_ok(), "{msg}");
}
