//! Every validation rule, fed a bad value, with the message checked.

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
fn max_concurrent_tools_at_least_one() {
    let (_, msg) = load_err(loader(&[("MAX_CONCURRENT_TOOLS", "0")]));
    assert!(msg.contains("orchestration.max_concurrent_tools"), "{msg}");
    assert!(
        msg.contains("at least 1") && msg.contains("MAX_CONCURRENT_TOOLS"),
        "{msg}"
    );
    let (_, msg) = load_err(loader(&[("MAX_CONCURRENT_TOOLS", "two")]));
    assert!(msg.contains("integer"), "{msg}");
}

#[test]
fn thresholds_within_unit_interval() {
    for (var, key) in [
        ("SURVEIL_DETECTION__CONFIDENCE", "detection.confidence"),
        ("SURVEIL_DETECTION__IOU", "detection.iou"),
        (
            "SURVEIL_TRACKER__MATCH_THRESHOLD",
            "tracker.match_threshold",
        ),
        (
            "SURVEIL_ORCHESTRATION__CONFIDENCE_THRESHOLD",
            "orchestration.confidence_threshold",
        ),
        ("SURVEIL_VLM__TOP_P", "vlm.top_p"),
    ] {
        for bad in ["1.5", "-0.1"] {
            let (e, msg) = load_err(loader(&[(var, bad)]));
            assert!(matches!(e, ConfigError::Rule { .. }), "{msg}");
            assert!(
                msg.contains(key) && msg.contains("[0, 1]") && msg.contains(var),
                "{msg}"
            );
        }
    }
}

#[test]
fn fallback_must_not_contain_primary() {
    let (_, msg) = load_err(loader(&[(
        "SURVEIL_VLM__FALLBACK_MODELS",
        "qwen2-vl-2b-instruct,kimi-vl-a3b-thinking",
    )]));
    assert!(msg.contains("vlm.fallback_models"), "{msg}");
    assert!(
        msg.contains("primary model `kimi-vl-a3b-thinking`"),
        "{msg}"
    );
}

#[test]
fn unknown_model_lists_known_ids() {
    let (_, msg) = load_err(loader(&[("VLM_MODEL", "llava-13b")]));
    assert!(
        msg.contains("llava-13b") && msg.contains("VLM_MODEL"),
        "{msg}"
    );
    for id in surveil_config::KNOWN_MODEL_IDS {
        assert!(msg.contains(id), "{msg}");
    }
    let (_, msg) = load_err(loader(&[("SURVEIL_VLM__FALLBACK_MODELS", "gpt-5")]));
    assert!(
        msg.contains("gpt-5") && msg.contains("qwen2-vl-7b-instruct"),
        "{msg}"
    );
}

#[test]
fn other_rules() {
    let (_, msg) = load_err(loader(&[("SURVEIL_DETECTION__CLASSES", "person,dragon")]));
    assert!(msg.contains("dragon") && msg.contains("handbag"), "{msg}");
    let (_, msg) = load_err(loader(&[("SURVEIL_MONITORING__INTERVAL_SECONDS", "0")]));
    assert!(msg.contains("monitoring.interval_seconds"), "{msg}");
    let (_, msg) = load_err(loader(&[("SURVEIL_VLM__TEMPERATURE", "-1")]));
    assert!(msg.contains("vlm.temperature"), "{msg}");
    let (_, msg) = load_err(loader(&[("SURVEIL_VLM__MAX_NEW_TOKENS", "0")]));
    assert!(msg.contains("vlm.max_new_tokens"), "{msg}");
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
fn zone_polygon_needs_three_points() {
    let msg = profile_err(&zone("polygon = [[0, 0], [10, 0]]"));
    assert!(msg.contains("zones[0].polygon"), "{msg}");
    assert!(
        msg.contains("at least 3 points") && msg.contains("bad.toml"),
        "{msg}"
    );
}

#[test]
fn zone_polygon_must_be_finite() {
    let msg = profile_err(&zone("polygon = [[0, 0], [10, 0], [nan, 5]]"));
    assert!(
        msg.contains("zones[0].polygon") && msg.contains("finite"),
        "{msg}"
    );
}

#[test]
fn zone_polygon_needs_area() {
    let msg = profile_err(&zone("polygon = [[0, 0], [5, 5], [10, 10]]"));
    assert!(
        msg.contains("zones[0].polygon") && msg.contains("no area"),
        "{msg}"
    );
}

#[test]
fn normalized_zone_within_unit_square() {
    let msg = profile_err(&zone(
        "polygon = [[0, 0], [1.5, 0], [1, 1]]\ncoordinates = \"normalized\"",
    ));
    assert!(
        msg.contains("zones[0].polygon") && msg.contains("[0, 1]"),
        "{msg}"
    );
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
fn zone_dwell_limit_positive_and_within_history() {
    for bad in ["0", "-3", "61"] {
        let msg = profile_err(&zone(&format!(
            "polygon = [[0, 0], [10, 0], [10, 10]]\nmax_dwell_seconds = {bad}"
        )));
        assert!(msg.contains("zones[0].max_dwell_seconds"), "{msg}");
        assert!(msg.contains("history_seconds"), "{msg}");
    }
}

#[test]
fn zone_names_unique_and_not_empty() {
    let twice = format!(
        "{}{}",
        zone("polygon = [[0, 0], [10, 0], [10, 10]]"),
        zone("polygon = [[0, 0], [10, 0], [0, 10]]")
    );
    let msg = profile_err(&twice);
    assert!(
        msg.contains("zones[1].name") && msg.contains("unique"),
        "{msg}"
    );
    let msg = profile_err("[[zones]]\nname = \" \"\npolygon = [[0, 0], [10, 0], [10, 10]]\n");
    assert!(
        msg.contains("zones[0].name") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn zone_camera_not_empty() {
    let msg = profile_err(&zone(
        "camera = \"\"\npolygon = [[0, 0], [10, 0], [10, 10]]",
    ));
    assert!(msg.contains("zones[0].camera"), "{msg}");
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
fn tools_ranges() {
    // (variable, bad value, key, words the rule must contain)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "SURVEIL_TOOLS__HISTORY_SECONDS",
            "0",
            "tools.history_seconds",
            "(0, 3600]",
        ),
        (
            "SURVEIL_TOOLS__HISTORY_SECONDS",
            "7200",
            "tools.history_seconds",
            "(0, 3600]",
        ),
        (
            "SURVEIL_TOOLS__LOITER_SECONDS",
            "0",
            "tools.loiter_seconds",
            "(0, 60]",
        ),
        (
            "SURVEIL_TOOLS__LOITER_SECONDS",
            "90",
            "tools.loiter_seconds",
            "history_seconds",
        ),
        (
            "SURVEIL_TOOLS__CROWD_THRESHOLD",
            "0",
            "tools.crowd_threshold",
            "at least 1",
        ),
        (
            "SURVEIL_TOOLS__PROXIMITY_MARGIN",
            "-0.1",
            "tools.proximity_margin",
            "[0, 5]",
        ),
        (
            "SURVEIL_TOOLS__SPEED_WINDOW_SECONDS",
            "0",
            "tools.speed_window_seconds",
            "(0, 60]",
        ),
        (
            "SURVEIL_TOOLS__TURN_ANGLE_DEGREES",
            "190",
            "tools.turn_angle_degrees",
            "(0, 180]",
        ),
        (
            "SURVEIL_TOOLS__TURN_ANGLE_DEGREES",
            "0",
            "tools.turn_angle_degrees",
            "(0, 180]",
        ),
        (
            "SURVEIL_TOOLS__HEADING_STEP_BODY_LENGTHS",
            "0",
            "tools.heading_step_body_lengths",
            "(0, 10]",
        ),
        (
            "SURVEIL_TOOLS__ERRATIC_TURNS",
            "0",
            "tools.erratic_turns",
            "at least 1",
        ),
        (
            "SURVEIL_TOOLS__STOP_RADIUS_BODY_LENGTHS",
            "0",
            "tools.stop_radius_body_lengths",
            "(0, 10]",
        ),
        (
            "SURVEIL_TOOLS__STOP_SECONDS",
            "0",
            "tools.stop_seconds",
            "(0, 60]",
        ),
        (
            "SURVEIL_TOOLS__RETURN_RADIUS_BODY_LENGTHS",
            "0",
            "tools.return_radius_body_lengths",
            "(0, 100]",
        ),
        (
            "SURVEIL_TOOLS__RETURN_EXCURSION_BODY_LENGTHS",
            "0.5",
            "tools.return_excursion_body_lengths",
            "return_radius_body_lengths",
        ),
        (
            "SURVEIL_TOOLS__BAG_ASSOCIATION_SECONDS",
            "-1",
            "tools.bag_association_seconds",
            "[0, 60]",
        ),
        (
            "SURVEIL_TOOLS__BAG_GONE_SECONDS",
            "61",
            "tools.bag_gone_seconds",
            "[0, 60]",
        ),
    ];
    for (var, bad, key, words) in cases {
        let (e, msg) = load_err(loader(&[(var, bad)]));
        assert!(matches!(e, ConfigError::Rule { .. }), "{msg}");
        assert!(msg.contains(key) && msg.contains(var), "{msg}");
        assert!(msg.contains(words), "{words}: {msg}");
    }
}

#[test]
fn vlm_timeout_positive() {
    let (_, msg) = load_err(loader(&[(
        "SURVEIL_ORCHESTRATION__VLM_TIMEOUT_SECONDS",
        "0",
    )]));
    assert!(
        msg.contains("orchestration.vlm_timeout_seconds") && msg.contains("> 0"),
        "{msg}"
    );
}

#[test]
fn vlm_cue_cooldown_not_negative() {
    let (_, msg) = load_err(loader(&[(
        "SURVEIL_ORCHESTRATION__VLM_CUE_COOLDOWN_SECONDS",
        "-5",
    )]));
    assert!(
        msg.contains("orchestration.vlm_cue_cooldown_seconds") && msg.contains("≥ 0"),
        "{msg}"
    );
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
fn opening_hours_open_differs_from_close() {
    let msg = profile_err("[decision]\nopening_hours = { open = \"09:00\", close = \"09:00\" }\n");
    assert!(
        msg.contains("decision.opening_hours") && msg.contains("must differ"),
        "{msg}"
    );
}

#[test]
fn opening_hours_unknown_key() {
    let msg = profile_err(
        "[decision]\nopening_hours = { open = \"09:00\", close = \"17:00\", lunch = \"12:00\" }\n",
    );
    assert!(msg.contains("lunch") && msg.contains("close"), "{msg}");
}
