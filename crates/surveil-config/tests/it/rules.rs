//! One test per rule of `RawConfig::validate` (and the tools and zones checks it calls): each
//! feeds a value that breaks exactly that rule, including NaN and ±inf for real-valued keys,
//! and checks that the error is that rule's: its key, the value as written, the rule's words,
//! and where the value came from. Values just inside a range load.

use surveil_config::{Choice, ConfigError, SystemConfig};

use crate::{load, loader};

/// Checks that `e` is the rule error of `key` with `value`, whose rule text contains `words`.
fn assert_rule(e: ConfigError, key: &str, value: &str, words: &str) {
    let msg = e.to_string();
    match e {
        ConfigError::Rule {
            key: k,
            value: v,
            rule,
            ..
        } => {
            assert_eq!(k, key, "{msg}");
            assert_eq!(v, value, "{msg}");
            assert!(rule.contains(words), "rule text lacks `{words}`: {msg}");
            assert!(msg.contains(&format!("{key} = {value}")), "{msg}");
        }
        other => panic!("expected the rule of {key}, got: {other}"),
    }
}

/// With the variable `var` = `text`, loading fails by the rule of `key`, showing `value`
/// (the value as the rule read it) and naming the variable.
fn breaks(var: &str, text: &str, key: &str, value: &str, words: &str) {
    let e = match loader(&[(var, text)]).load() {
        Ok(c) => panic!("{var}={text} loaded: {:?}", c.config),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains(var), "{msg}");
    assert_rule(e, key, value, words);
}

/// Every spelling of a non-finite real, with the value as a rule shows it.
const NON_FINITE: [(&str, &str); 3] = [("nan", "NaN"), ("inf", "inf"), ("-inf", "-inf")];

/// With these variables, loading succeeds.
fn loads(vars: &[(&str, &str)]) -> SystemConfig {
    load(loader(vars)).config
}

/// A profile file `bad.toml` holding `text`, loaded: the rule error of `key` with `value`,
/// naming the file.
fn profile_breaks(text: &str, key: &str, value: &str, words: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), text).unwrap();
    let e = match loader(&[])
        .profiles_dir(Some(dir.path()))
        .profile(Some("bad"))
        .load()
    {
        Ok(c) => panic!("{text} loaded: {:?}", c.config),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains("bad.toml"), "{msg}");
    assert_rule(e, key, value, words);
}

fn profile_loads(text: &str) -> SystemConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.toml"), text).unwrap();
    load(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("ok")),
    )
    .config
}

// --- vlm -------------------------------------------------------------------------------------

#[test]
fn rule_vlm_primary_model_is_known() {
    let (e, msg) = crate::load_err(loader(&[("VLM_MODEL", "llava-13b")]));
    for id in surveil_config::KNOWN_MODEL_IDS {
        assert!(msg.contains(id), "lists the known ids: {msg}");
    }
    assert!(msg.contains("VLM_MODEL"), "{msg}");
    assert_rule(e, "vlm.primary_model", "\"llava-13b\"", "unknown model id");
}

#[test]
fn rule_vlm_fallback_models_are_known() {
    breaks(
        "SURVEIL_VLM__FALLBACK_MODELS",
        "qwen2-vl-2b-instruct,gpt-5",
        "vlm.fallback_models",
        "\"gpt-5\"",
        "unknown model id",
    );
}

#[test]
fn rule_vlm_fallback_models_exclude_the_primary() {
    breaks(
        "SURVEIL_VLM__FALLBACK_MODELS",
        "qwen2-vl-2b-instruct,kimi-vl-a3b-thinking",
        "vlm.fallback_models",
        "[\"qwen2-vl-2b-instruct\", \"kimi-vl-a3b-thinking\"]",
        "contains the primary model `kimi-vl-a3b-thinking`",
    );
}

#[test]
fn rule_vlm_max_new_tokens_at_least_one() {
    breaks(
        "SURVEIL_VLM__MAX_NEW_TOKENS",
        "0",
        "vlm.max_new_tokens",
        "0",
        "at least 1",
    );
    assert_eq!(
        loads(&[("SURVEIL_VLM__MAX_NEW_TOKENS", "1")])
            .vlm
            .max_new_tokens,
        1
    );
}

#[test]
fn rule_vlm_threads_at_least_one() {
    breaks(
        "SURVEIL_VLM__THREADS",
        "0",
        "vlm.threads",
        "0",
        "at least 1",
    );
    assert_eq!(loads(&[("SURVEIL_VLM__THREADS", "3")]).vlm.threads, Some(3));
    assert_eq!(loads(&[]).vlm.threads, None);
}

#[test]
fn rule_vlm_temperature_finite_not_negative() {
    let var = "SURVEIL_VLM__TEMPERATURE";
    for (text, value) in [("-1", "-1"), ("-0.001", "-0.001")] {
        breaks(var, text, "vlm.temperature", value, "finite number ≥ 0");
    }
    for (text, value) in NON_FINITE {
        breaks(var, text, "vlm.temperature", value, "finite number ≥ 0");
    }
    assert_eq!(loads(&[(var, "0")]).vlm.temperature, 0.0);
}

// --- keys within [0, 1] ----------------------------------------------------------------------

/// The keys checked against [0, 1], with their generic variables.
const UNIT_KEYS: [(&str, &str); 5] = [
    ("SURVEIL_VLM__TOP_P", "vlm.top_p"),
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
];

#[test]
fn rule_unit_interval_keys_out_of_range() {
    for (var, key) in UNIT_KEYS {
        for (text, value) in [("1.5", "1.5"), ("-0.1", "-0.1"), ("1.0001", "1.0001")] {
            breaks(var, text, key, value, "within [0, 1]");
        }
        for edge in ["0", "1"] {
            loads(&[(var, edge)]);
        }
    }
}

#[test]
fn rule_unit_interval_keys_not_finite() {
    for (var, key) in UNIT_KEYS {
        for (text, value) in NON_FINITE {
            breaks(var, text, key, value, "within [0, 1]");
        }
    }
}

// --- detection and tracker -------------------------------------------------------------------

#[test]
fn rule_detection_classes_are_known() {
    let (e, msg) = crate::load_err(loader(&[("SURVEIL_DETECTION__CLASSES", "person,dragon")]));
    assert!(msg.contains("handbag"), "lists the allowed classes: {msg}");
    assert_rule(e, "detection.classes", "\"dragon\"", "unknown class");
}

#[test]
fn rule_detection_model_is_known() {
    breaks(
        "SURVEIL_DETECTION__MODEL",
        "yolov9",
        "detection.model",
        "\"yolov9\"",
        "unknown detector",
    );
    assert_eq!(
        loads(&[("SURVEIL_DETECTION__MODEL", "YOLOv3-Tiny")])
            .detection
            .model
            .choice_name(),
        "yolov3-tiny"
    );
}

#[test]
fn rule_tracker_frame_rate_finite_positive_or_absent() {
    let var = "SURVEIL_TRACKER__FRAME_RATE";
    for (text, value) in [("0", "0"), ("-5", "-5")] {
        breaks(var, text, "tracker.frame_rate", value, "finite number > 0");
    }
    for (text, value) in NON_FINITE {
        breaks(var, text, "tracker.frame_rate", value, "finite number > 0");
    }
    profile_breaks(
        "[tracker]\nframe_rate = 0\n",
        "tracker.frame_rate",
        "0",
        "finite number > 0",
    );
    assert_eq!(loads(&[(var, "12.5")]).tracker.frame_rate, Some(12.5));
    assert_eq!(loads(&[]).tracker.frame_rate, None);
    assert_eq!(
        profile_loads("[tracker]\nframe_rate = 29.97\n")
            .tracker
            .frame_rate,
        Some(29.97)
    );
}

// --- orchestration and monitoring ------------------------------------------------------------

#[test]
fn rule_orchestration_max_concurrent_tools_at_least_one() {
    breaks(
        "MAX_CONCURRENT_TOOLS",
        "0",
        "orchestration.max_concurrent_tools",
        "0",
        "at least 1",
    );
    breaks(
        "SURVEIL_ORCHESTRATION__MAX_CONCURRENT_TOOLS",
        "0",
        "orchestration.max_concurrent_tools",
        "0",
        "at least 1",
    );
}

/// The keys that must be finite and > 0, with their generic variables.
const POSITIVE_KEYS: [(&str, &str); 4] = [
    (
        "SURVEIL_ORCHESTRATION__TIMEOUT_SECONDS",
        "orchestration.timeout_seconds",
    ),
    (
        "SURVEIL_MONITORING__INTERVAL_SECONDS",
        "monitoring.interval_seconds",
    ),
    (
        "SURVEIL_ORCHESTRATION__VLM_PERIODIC_SECONDS",
        "orchestration.vlm_periodic_seconds",
    ),
    (
        "SURVEIL_ORCHESTRATION__VLM_TIMEOUT_SECONDS",
        "orchestration.vlm_timeout_seconds",
    ),
];

#[test]
fn rule_positive_seconds_keys_above_zero() {
    for (var, key) in POSITIVE_KEYS {
        for (text, value) in [("0", "0"), ("-1", "-1")] {
            breaks(var, text, key, value, "finite number > 0");
        }
        loads(&[(var, "0.001")]);
    }
}

#[test]
fn rule_positive_seconds_keys_not_finite() {
    for (var, key) in POSITIVE_KEYS {
        for (text, value) in NON_FINITE {
            breaks(var, text, key, value, "finite number > 0");
        }
    }
}

#[test]
fn rule_orchestration_vlm_cooldown_seconds_finite_not_negative() {
    let (var, key) = (
        "SURVEIL_ORCHESTRATION__VLM_COOLDOWN_SECONDS",
        "orchestration.vlm_cooldown_seconds",
    );
    breaks(var, "-5", key, "-5", "finite number ≥ 0");
    for (text, value) in NON_FINITE {
        breaks(var, text, key, value, "finite number ≥ 0");
    }
    assert_eq!(loads(&[(var, "0")]).orchestration.vlm_cooldown_seconds, 0.0);
}

#[test]
fn rule_orchestration_vlm_cue_cooldown_seconds_finite_not_negative() {
    let (var, key) = (
        "SURVEIL_ORCHESTRATION__VLM_CUE_COOLDOWN_SECONDS",
        "orchestration.vlm_cue_cooldown_seconds",
    );
    breaks(var, "-5", key, "-5", "finite number ≥ 0");
    for (text, value) in NON_FINITE {
        breaks(var, text, key, value, "finite number ≥ 0");
    }
    assert_eq!(
        loads(&[(var, "0")]).orchestration.vlm_cue_cooldown_seconds,
        0.0
    );
}

// --- tools -----------------------------------------------------------------------------------

/// Every real-valued tools key: field, a value below its range, a value above it (with the
/// defaults: history_seconds 60, return_radius_body_lengths 1), the range as the rule writes it.
const TOOLS_RANGES: [(&str, &str, &str, &str); 12] = [
    ("history_seconds", "0", "3601", "(0, 3600]"),
    ("loiter_seconds", "0", "61", "(0, 60]"),
    ("proximity_margin", "-0.1", "5.5", "[0, 5]"),
    ("speed_window_seconds", "0", "61", "(0, 60]"),
    ("turn_angle_degrees", "0", "190", "(0, 180]"),
    ("heading_step_body_lengths", "0", "11", "(0, 10]"),
    ("stop_radius_body_lengths", "0", "11", "(0, 10]"),
    ("stop_seconds", "0", "61", "(0, 60]"),
    ("return_radius_body_lengths", "0", "101", "(0, 100]"),
    ("return_excursion_body_lengths", "1", "1001", "(1, 1000]"),
    ("bag_association_seconds", "-1", "61", "[0, 60]"),
    ("bag_gone_seconds", "-1", "61", "[0, 60]"),
];

fn tools_var(field: &str) -> String {
    format!("SURVEIL_TOOLS__{}", field.to_ascii_uppercase())
}

#[test]
fn rule_tools_ranges() {
    for (field, low, high, range) in TOOLS_RANGES {
        let (var, key) = (tools_var(field), format!("tools.{field}"));
        for bad in [low, high] {
            breaks(&var, bad, &key, bad, &format!("within {range}"));
        }
    }
}

#[test]
fn rule_tools_ranges_not_finite() {
    for (field, _, _, range) in TOOLS_RANGES {
        let (var, key) = (tools_var(field), format!("tools.{field}"));
        for (text, value) in NON_FINITE {
            breaks(&var, text, &key, value, &format!("within {range}"));
        }
    }
}

#[test]
fn rule_tools_dwell_limits_within_history() {
    // The upper bound of the dwell-type limits follows tools.history_seconds.
    for field in ["loiter_seconds", "speed_window_seconds", "stop_seconds"] {
        let (var, key) = (tools_var(field), format!("tools.{field}"));
        let e = loader(&[("SURVEIL_TOOLS__HISTORY_SECONDS", "40"), (&var, "45")])
            .load()
            .unwrap_err();
        assert_rule(
            e,
            &key,
            "45",
            "within (0, 40] (at most tools.history_seconds",
        );
    }
    // The excursion must exceed the return radius.
    let e = loader(&[
        ("SURVEIL_TOOLS__RETURN_RADIUS_BODY_LENGTHS", "4"),
        ("SURVEIL_TOOLS__RETURN_EXCURSION_BODY_LENGTHS", "4"),
    ])
    .load()
    .unwrap_err();
    assert_rule(
        e,
        "tools.return_excursion_body_lengths",
        "4",
        "more than tools.return_radius_body_lengths",
    );
}

#[test]
fn rule_tools_counts_at_least_one() {
    for field in ["crowd_threshold", "erratic_turns"] {
        let (var, key) = (tools_var(field), format!("tools.{field}"));
        breaks(&var, "0", &key, "0", "at least 1");
        loads(&[(&var, "1")]);
    }
}

// --- decision --------------------------------------------------------------------------------

#[test]
fn rule_decision_opening_hours_open_differs_from_close() {
    profile_breaks(
        "[decision]\nopening_hours = { open = \"09:00\", close = \"9:00\" }\n",
        "decision.opening_hours",
        "{ open = \"09:00\", close = \"09:00\" }",
        "must differ",
    );
}

// --- zones -----------------------------------------------------------------------------------

fn zone(fields: &str) -> String {
    format!("[[zones]]\nname = \"door\"\n{fields}\n")
}

const TRIANGLE: &str = "polygon = [[0, 0], [10, 0], [10, 10]]";

#[test]
fn rule_zone_name_not_empty() {
    profile_breaks(
        &format!("[[zones]]\nname = \" \"\n{TRIANGLE}\n"),
        "zones[0].name",
        "\" \"",
        "must not be empty",
    );
}

#[test]
fn rule_zone_names_unique() {
    profile_breaks(
        &format!(
            "{}{}",
            zone(TRIANGLE),
            zone("polygon = [[0, 0], [9, 0], [0, 9]]")
        ),
        "zones[1].name",
        "\"door\"",
        "unique",
    );
}

#[test]
fn rule_zone_camera_not_empty() {
    profile_breaks(
        &zone(&format!("camera = \"\"\n{TRIANGLE}")),
        "zones[0].camera",
        "\"\"",
        "leave camera out",
    );
}

#[test]
fn rule_zone_polygon_at_least_three_points() {
    profile_breaks(
        &zone("polygon = [[0, 0], [10, 0]]"),
        "zones[0].polygon",
        "[[0.0, 0.0], [10.0, 0.0]]",
        "at least 3 points",
    );
}

#[test]
fn rule_zone_polygon_finite() {
    for (written, shown) in [("nan", "NaN"), ("inf", "inf"), ("-inf", "-inf")] {
        profile_breaks(
            &zone(&format!("polygon = [[0, 0], [10, 0], [{written}, 5]]")),
            "zones[0].polygon",
            &format!("[[0.0, 0.0], [10.0, 0.0], [{shown}, 5.0]]"),
            "finite",
        );
    }
}

#[test]
fn rule_zone_normalized_polygon_within_unit_square() {
    profile_breaks(
        &zone("polygon = [[0, 0], [1.5, 0], [1, 1]]\ncoordinates = \"normalized\""),
        "zones[0].polygon",
        "[[0.0, 0.0], [1.5, 0.0], [1.0, 1.0]]",
        "within [0, 1]",
    );
    // The same corners in pixels are fine.
    profile_loads(&zone("polygon = [[0, 0], [1.5, 0], [1, 1]]"));
}

#[test]
fn rule_zone_polygon_has_area() {
    profile_breaks(
        &zone("polygon = [[0, 0], [5, 5], [10, 10]]"),
        "zones[0].polygon",
        "[[0.0, 0.0], [5.0, 5.0], [10.0, 10.0]]",
        "no area",
    );
}

#[test]
fn rule_zone_max_dwell_within_history() {
    for (written, shown) in [
        ("0", "0"),
        ("-3", "-3"),
        ("61", "61"),
        ("nan", "NaN"),
        ("inf", "inf"),
    ] {
        profile_breaks(
            &zone(&format!("{TRIANGLE}\nmax_dwell_seconds = {written}")),
            "zones[0].max_dwell_seconds",
            shown,
            "within (0, 60]",
        );
    }
    let c = profile_loads(&zone(&format!("{TRIANGLE}\nmax_dwell_seconds = 60")));
    assert_eq!(c.zones[0].max_dwell_seconds, Some(60.0));
}

// --- cameras ---------------------------------------------------------------------------------

fn camera(name: &str, fields: &str) -> String {
    format!("[[cameras]]\nname = \"{name}\"\nsource = \"clip.avi\"\n{fields}\n")
}

#[test]
fn cameras_load_with_their_zones_tagged() {
    let c = profile_loads(&format!(
        "{}{}[[cameras.zones]]\nname = \"till\"\n{TRIANGLE}\nrestricted = true\n\
         [[zones]]\nname = \"door\"\ncamera = \"entrance\"\n{TRIANGLE}\n",
        camera("entrance", "fps = 5\nwidth = 640"),
        camera(
            "back_office-2",
            "opening_hours = { open = \"08:00\", close = \"18:00\" }"
        ),
    ));
    assert_eq!(c.cameras.len(), 2);
    let entrance = c.camera("entrance").unwrap();
    assert_eq!(entrance.source, "clip.avi");
    assert_eq!(entrance.fps, Some(5.0));
    assert_eq!((entrance.width, entrance.height), (Some(640), None));
    assert!(entrance.zones.is_empty() && entrance.opening_hours.is_none());
    let office = &c.cameras[1];
    assert_eq!(office.name, "back_office-2");
    assert_eq!(office.zones.len(), 1);
    // An inline zone belongs to its camera once validated.
    assert_eq!(office.zones[0].camera.as_deref(), Some("back_office-2"));
    assert!(office.zones[0].restricted);
    assert_eq!(office.opening_hours.unwrap().open.to_string(), "08:00");
    assert_eq!(c.zones[0].camera.as_deref(), Some("entrance"));
    // None by default.
    assert!(profile_loads("").cameras.is_empty());
}

#[test]
fn rule_camera_name_characters_and_length() {
    for bad in [
        "",
        "front door",
        "cam/1",
        "cam+1",
        "caméra",
        &"c".repeat(65),
    ] {
        profile_breaks(
            &camera(bad, ""),
            "cameras[0].name",
            &format!("{bad:?}"),
            "1 to 64 characters of A-Z, a-z, 0-9, `_`, `-`",
        );
    }
    let c = profile_loads(&camera(&"c".repeat(64), ""));
    assert_eq!(c.cameras[0].name.len(), 64);
}

#[test]
fn rule_camera_names_unique() {
    profile_breaks(
        &format!("{}{}", camera("a", ""), camera("a", "")),
        "cameras[1].name",
        "\"a\"",
        "must be unique",
    );
}

#[test]
fn rule_camera_source_not_empty() {
    profile_breaks(
        "[[cameras]]\nname = \"a\"\nsource = \" \"\n",
        "cameras[0].source",
        "\" \"",
        "must not be empty",
    );
}

#[test]
fn rule_camera_fps_positive() {
    for (written, shown) in [("0", "0"), ("-5", "-5"), ("nan", "NaN"), ("inf", "inf")] {
        profile_breaks(
            &format!(
                "{}{}",
                camera("a", ""),
                camera("b", &format!("fps = {written}"))
            ),
            "cameras[1].fps",
            shown,
            "must be a finite number > 0",
        );
    }
    assert_eq!(
        profile_loads(&camera("a", "fps = 12.5")).cameras[0].fps,
        Some(12.5)
    );
}

#[test]
fn rule_camera_size_positive() {
    for field in ["width", "height"] {
        profile_breaks(
            &camera("a", &format!("{field} = 0")),
            &format!("cameras[0].{field}"),
            "0",
            "must be > 0",
        );
    }
}

#[test]
fn rule_camera_opening_hours_differ() {
    profile_breaks(
        &camera(
            "a",
            "opening_hours = { open = \"09:00\", close = \"09:00\" }",
        ),
        "cameras[0].opening_hours",
        "{ open = \"09:00\", close = \"09:00\" }",
        "must differ",
    );
}

#[test]
fn rule_camera_zones_follow_the_zone_rules() {
    profile_breaks(
        &format!(
            "{}[[cameras.zones]]\nname = \"till\"\npolygon = [[0, 0], [5, 5], [10, 10]]\n",
            camera("a", "")
        ),
        "cameras[0].zones[0].polygon",
        "[[0.0, 0.0], [5.0, 5.0], [10.0, 10.0]]",
        "no area",
    );
    // Names unique among the top-level zones and the camera's own.
    profile_breaks(
        &format!(
            "{}{}[[cameras.zones]]\nname = \"door\"\n{TRIANGLE}\n",
            zone(TRIANGLE),
            camera("a", "")
        ),
        "cameras[0].zones[0].name",
        "\"door\"",
        "unique",
    );
    // An inline zone names no camera of its own.
    profile_breaks(
        &format!(
            "{}{}[[cameras.zones]]\nname = \"till\"\ncamera = \"a\"\n{TRIANGLE}\n",
            camera("a", ""),
            camera("b", "")
        ),
        "cameras[1].zones[0].camera",
        "\"a\"",
        "leave camera out",
    );
}

#[test]
fn rule_zone_camera_names_a_configured_camera() {
    profile_breaks(
        &format!(
            "{}{}[[zones]]\nname = \"door\"\ncamera = \"side\"\n{TRIANGLE}\n",
            camera("front", ""),
            camera("back", "")
        ),
        "zones[0].camera",
        "\"side\"",
        "names no configured camera; cameras: front, back",
    );
    // Without cameras, a zone's camera is any name (the `--camera` of a run).
    profile_loads(&zone(&format!("camera = \"side\"\n{TRIANGLE}")));
}

#[test]
fn camera_unknown_key_and_missing_source() {
    let dir = tempfile::tempdir().unwrap();
    for (text, words) in [
        (
            camera("a", "colour = \"red\""),
            ["cameras[0].colour", "source"],
        ),
        (
            "[[cameras]]\nname = \"a\"\n".to_string(),
            ["cameras", "source"],
        ),
    ] {
        std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
        let (_, msg) = crate::load_err(
            loader(&[])
                .profiles_dir(Some(dir.path()))
                .profile(Some("bad")),
        );
        for w in words {
            assert!(msg.contains(w), "{text}: {msg}");
        }
    }
}
