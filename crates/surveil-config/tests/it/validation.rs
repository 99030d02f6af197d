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
