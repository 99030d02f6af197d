//! What the loader refuses before the rules run (unknown keys and profiles, bad TOML, wrong
//! types, enum values, booleans, times of day), and what loads; the range and consistency
//! rules of `validate` have one test each in `rules.rs`.

use surveil_config::ConfigError;

use crate::{load_err, loader};

fn profile_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    dir
}

#[test]
fn unknown_key_in_profile_names_key_and_file() {
    let dir = profile_dir("[vlm]\nprimary_modle = \"git-base-coco\"\n");
    let (_, msg) = load_err(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert!(msg.contains("vlm.primary_modle"), "{msg}");
    assert!(msg.contains("bad.toml"), "{msg}");
    assert!(msg.contains("primary_model"), "lists allowed keys: {msg}");
}

#[test]
fn unknown_section_in_profile() {
    let dir = profile_dir("[vlmm]\nx = 1\n");
    let (_, msg) = load_err(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert!(msg.contains("vlmm") && msg.contains("bad.toml"), "{msg}");
}

#[test]
fn unknown_key_in_env_names_variable() {
    let (_, msg) = load_err(loader(&[("SURVEIL_VLM__COLOUR", "red")]));
    assert!(msg.contains("SURVEIL_VLM__COLOUR"), "{msg}");
    assert!(msg.contains("vlm.colour"), "{msg}");
}

#[test]
fn bad_enum_lists_allowed_values() {
    let (_, msg) = load_err(loader(&[("VLM_DEVICE", "gpu")]));
    assert!(msg.contains("gpu"), "{msg}");
    assert!(
        msg.contains("auto") && msg.contains("cpu") && msg.contains("cuda"),
        "{msg}"
    );
    assert!(msg.contains("VLM_DEVICE"), "{msg}");
    let (_, msg) = load_err(loader(&[("SURVEIL_VLM__QUANT", "q3")]));
    assert!(
        msg.contains("q4k") && msg.contains("q8_0") && msg.contains("bf16"),
        "{msg}"
    );
    let (_, msg) = load_err(loader(&[("ORCHESTRATION_MODE", "slow")]));
    assert!(
        msg.contains("balanced") && msg.contains("thorough"),
        "{msg}"
    );
}

/// `output.log_level` decides what the binary logs: a value it cannot use is an error naming
/// the key, the value, where it came from and the levels allowed, from every layer.
#[test]
fn bad_log_level_names_key_value_origin_and_levels() {
    let levels = ["error", "warn", "info", "debug", "trace"];
    let dir = profile_dir("[output]\nlog_level = \"loud\"\n");
    let cases = [
        (loader(&[("LOG_LEVEL", "verbose")]), "verbose", "LOG_LEVEL"),
        (
            loader(&[("SURVEIL_OUTPUT__LOG_LEVEL", "verbose")]),
            "verbose",
            "SURVEIL_OUTPUT__LOG_LEVEL",
        ),
        (
            loader(&[]).flag("output.log_level", "warnings", "--set output.log_level"),
            "warnings",
            "--set output.log_level",
        ),
        (
            loader(&[])
                .profiles_dir(Some(dir.path()))
                .profile(Some("bad")),
            "loud",
            "bad.toml",
        ),
    ];
    for (l, value, origin) in cases {
        let (_, msg) = load_err(l);
        assert!(msg.contains("output.log_level"), "{msg}");
        assert!(msg.contains(&format!("`{value}`")), "{msg}");
        assert!(msg.contains(origin), "{msg}");
        for level in levels {
            assert!(msg.contains(level), "{level} missing: {msg}");
        }
    }
    // Any case, and Python's `WARNING`, are fine.
    let loaded = crate::load(loader(&[("LOG_LEVEL", "WARNING")]));
    assert_eq!(
        loaded.config.output.log_level,
        surveil_config::LogLevel::Warn
    );
    let loaded = crate::load(loader(&[("LOG_LEVEL", "Trace")]));
    assert_eq!(
        loaded.config.output.log_level,
        surveil_config::LogLevel::Trace
    );
}

#[test]
fn bad_boolean() {
    let (_, msg) = load_err(loader(&[("LOAD_IN_4BIT", "maybe")]));
    assert!(
        msg.contains("LOAD_IN_4BIT") && msg.contains("maybe"),
        "{msg}"
    );
    assert!(msg.contains("yes/no"), "{msg}");
}

#[test]
fn unknown_profile_lists_profiles() {
    let (e, msg) = load_err(loader(&[]).profile(Some("nope")));
    assert!(matches!(e, ConfigError::UnknownProfile { .. }));
    for p in [
        "testing",
        "testing_kimi",
        "testing_qwen",
        "development",
        "production",
    ] {
        assert!(msg.contains(p), "{msg}");
    }
}

#[test]
fn integer_key_rejects_text() {
    let (e, msg) = load_err(loader(&[("MAX_CONCURRENT_TOOLS", "two")]));
    assert!(matches!(e, ConfigError::BadOverride { .. }), "{msg}");
    assert!(
        msg.contains("MAX_CONCURRENT_TOOLS") && msg.contains("integer") && msg.contains("two"),
        "{msg}"
    );
}

/// A number out of a key's range says the range in words, not the Rust type.
#[test]
fn integer_key_out_of_range_says_the_range() {
    let (_, msg) = load_err(loader(&[("MAX_CONCURRENT_TOOLS", "-1")]));
    assert!(
        msg.contains("orchestration.max_concurrent_tools")
            && msg.contains("expected a whole number from 0 to")
            && msg.contains("MAX_CONCURRENT_TOOLS")
            && !msg.contains("usize"),
        "{msg}"
    );
}

#[test]
fn invalid_toml_names_file() {
    let dir = profile_dir("[vlm\nprimary_model = 1\n");
    let (_, msg) = load_err(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert!(
        msg.contains("bad.toml") && msg.contains("not valid TOML"),
        "{msg}"
    );
}

#[test]
fn wrong_type_in_profile() {
    let dir = profile_dir("[orchestration]\nmax_concurrent_tools = \"many\"\n");
    let (_, msg) = load_err(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert!(
        msg.contains("orchestration.max_concurrent_tools") && msg.contains("bad.toml"),
        "{msg}"
    );
}

/// A profile holding only `text`, loaded; the error message.
fn profile_err(text: &str) -> String {
    let dir = profile_dir(text);
    let (e, msg) = load_err(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert!(
        matches!(e, ConfigError::Rule { .. } | ConfigError::Invalid(_)),
        "{msg}"
    );
    msg
}

fn zone(fields: &str) -> String {
    format!("[[zones]]\nname = \"door\"\n{fields}\n")
}

#[test]
fn zones_load_with_defaults() {
    let dir = profile_dir(
        "[[zones]]\nname = \"till\"\ncamera = \"cam1\"\npolygon = [[0, 0], [100, 0], [100, 50]]\n\
         restricted = true\nmax_dwell_seconds = 10\n\
         [[zones]]\nname = \"aisle\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]\n\
         coordinates = \"normalized\"\n",
    );
    let c = crate::load(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    let z = &c.config.zones;
    assert_eq!(z.len(), 2);
    assert_eq!(z[0].name, "till");
    assert_eq!(z[0].camera.as_deref(), Some("cam1"));
    assert_eq!(z[0].polygon, vec![[0.0, 0.0], [100.0, 0.0], [100.0, 50.0]]);
    assert!(z[0].restricted);
    assert_eq!(z[0].max_dwell_seconds, Some(10.0));
    assert_eq!(
        z[1].coordinates,
        surveil_config::ZoneCoordinates::Normalized
    );
    assert!(!z[1].restricted && z[1].camera.is_none() && z[1].max_dwell_seconds.is_none());
    assert!(c.origin("zones").to_string().contains("bad.toml"));
}

#[test]
fn zone_unknown_key() {
    let msg = profile_err(&zone(
        "polygon = [[0, 0], [1, 0], [1, 1]]\ncolour = \"red\"",
    ));
    assert!(msg.contains("colour") && msg.contains("polygon"), "{msg}");
}

#[test]
fn zone_coordinates_enum() {
    let msg = profile_err(&zone(
        "polygon = [[0, 0], [1, 0], [1, 1]]\ncoordinates = \"metres\"",
    ));
    assert!(
        msg.contains("zones") && msg.contains("pixel") && msg.contains("normalized"),
        "{msg}"
    );
}

#[test]
fn tools_defaults() {
    let c = crate::load(loader(&[])).config;
    assert_eq!(c.tools.loiter_seconds, 30.0);
    assert_eq!(c.tools.crowd_threshold, 5);
    assert_eq!(c.tools.proximity_margin, 0.25);
    assert_eq!(c.tools.history_seconds, 60.0);
    assert_eq!(c.orchestration.vlm_timeout_seconds, 120.0);
    assert!(c.decision.after_hours_escalation);
    assert!(c.decision.opening_hours.is_none());
    assert!(c.zones.is_empty());
}

#[test]
fn opening_hours_parse_and_wrap_midnight() {
    let dir = profile_dir(
        "[decision]\nopening_hours = { open = \"18:00\", close = \"2:30\" }\n\
         after_hours_escalation = false\n",
    );
    let c = crate::load(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    )
    .config;
    let h = c.decision.opening_hours.unwrap();
    use surveil_config::ClockTime;
    let t = |h, m| ClockTime::new(h, m).unwrap();
    assert_eq!((h.open, h.close), (t(18, 0), t(2, 30)));
    assert!(h.is_open(t(23, 0)) && h.is_open(t(0, 0)) && h.is_open(t(18, 0)));
    assert!(!h.is_open(t(2, 30)) && !h.is_open(t(12, 0)));
    assert!(!c.decision.after_hours_escalation);
}

#[test]
fn opening_hours_time_format() {
    for bad in ["25:00", "8h", "08:60", "08:5"] {
        let msg = profile_err(&format!(
            "[decision]\nopening_hours = {{ open = \"{bad}\", close = \"21:00\" }}\n"
        ));
        assert!(msg.contains("decision.opening_hours.open"), "{msg}");
        assert!(msg.contains(bad) && msg.contains("HH:MM"), "{msg}");
    }
}

#[test]
fn opening_hours_unknown_key() {
    let msg = profile_err(
        "[decision]\nopening_hours = { open = \"09:00\", close = \"17:00\", lunch = \"12:00\" }\n",
    );
    assert!(msg.contains("lunch") && msg.contains("close"), "{msg}");
}

#[test]
fn metrics_addr_is_absent_by_default_and_read_from_every_layer() {
    let c = crate::load(loader(&[])).config;
    assert_eq!(c.monitoring.metrics_addr, None);
    let env = crate::load(loader(&[(
        "SURVEIL_MONITORING__METRICS_ADDR",
        " 127.0.0.1:9464 ",
    )]));
    assert_eq!(
        env.config.monitoring.metrics_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    // A flag beats the environment; IPv6 and port 0 are addresses too.
    let flag = crate::load(
        loader(&[("SURVEIL_MONITORING__METRICS_ADDR", "127.0.0.1:9464")]).flag(
            "monitoring.metrics_addr",
            "[::1]:0",
            "--metrics-addr",
        ),
    );
    assert_eq!(
        flag.config.monitoring.metrics_addr,
        Some("[::1]:0".parse().unwrap())
    );
    let dir = profile_dir("[monitoring]\nmetrics_addr = \"0.0.0.0:9464\"\n");
    let profile = crate::load(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("bad")),
    );
    assert_eq!(
        profile.config.monitoring.metrics_addr,
        Some("0.0.0.0:9464".parse().unwrap())
    );
}

#[test]
fn metrics_addr_that_is_not_ip_port_names_key_value_and_origin() {
    for text in ["localhost:9464", "127.0.0.1", "9464", "127.0.0.1:99999"] {
        let (e, msg) =
            load_err(loader(&[]).flag("monitoring.metrics_addr", text, "--metrics-addr"));
        assert!(matches!(e, ConfigError::Invalid(_)), "{msg}");
        assert!(msg.contains("monitoring.metrics_addr"), "{msg}");
        assert!(msg.contains(&format!("`{text}`")), "{msg}");
        assert!(msg.contains("IP:PORT"), "{msg}");
        assert!(msg.contains("--metrics-addr"), "{msg}");
    }
}
