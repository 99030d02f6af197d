//! Defaults → profile → environment → flags, and provenance.

use surveil_config::{Device, LogLevel, OrchestrationMode, Origin, StorageDtype, WeightsSpec};

use crate::{load, loader};

#[test]
fn profiles_have_the_documented_values() {
    let t = load(loader(&[]).profile(Some("testing"))).config;
    assert_eq!(t.vlm.primary_model, "git-base-coco");
    assert!(t.vlm.storage.is_four_bit());
    assert_eq!(t.orchestration.mode, OrchestrationMode::Fast);
    assert_eq!(t.orchestration.max_concurrent_tools, 1);
    assert_eq!(t.orchestration.timeout_seconds, 10.0);
    assert!(!t.monitoring.enabled);
    assert!(t.output.debug);

    let k = load(loader(&[]).profile(Some("testing_kimi"))).config;
    assert_eq!(k.vlm.primary_model, "kimi-vl-a3b-thinking");
    assert_eq!(k.orchestration.max_concurrent_tools, 1);
    assert_eq!(k.orchestration.timeout_seconds, 15.0);

    let q = load(loader(&[]).profile(Some("testing_qwen"))).config;
    assert_eq!(q.vlm.primary_model, "qwen2-vl-2b-instruct");
    assert!(q.vlm.storage.is_four_bit());

    let d = load(loader(&[]).profile(Some("development"))).config;
    assert_eq!(d.orchestration.max_concurrent_tools, 2);
    assert!(d.monitoring.enabled);
    assert_eq!(d.monitoring.interval_seconds, 1.0);

    let p = load(loader(&[]).profile(Some("production"))).config;
    assert!(!p.vlm.storage.is_four_bit());
    assert_eq!(
        load(loader(&[]).profile(Some("production"))).raw.vlm.quant,
        StorageDtype::Q8_0
    );
    assert_eq!(p.vlm.storage, StorageDtype::Q8_0);
    assert_eq!(p.orchestration.mode, OrchestrationMode::Balanced);
    assert_eq!(p.orchestration.max_concurrent_tools, 6);
    assert_eq!(p.monitoring.interval_seconds, 0.5);
    assert!(!p.output.debug);

    for c in [t, k, q, d, p] {
        assert!(!c.vlm.enable_fallback, "{}", c.profile);
        assert!(c.vlm.fallback_models.is_empty(), "{}", c.profile);
    }
}

#[test]
fn env_selects_profile_and_flag_wins() {
    let c = load(loader(&[("ENV", "testing")]));
    assert_eq!(c.config.profile, "testing");
    assert_eq!(c.config.vlm.primary_model, "git-base-coco");
    let c = load(loader(&[("ENV", "testing")]).profile(Some("testing_qwen")));
    assert_eq!(c.config.profile, "testing_qwen");
    let c = load(loader(&[]));
    assert_eq!(c.config.profile, "development");
}

#[test]
fn short_env_overrides() {
    let c = load(loader(&[
        ("VLM_MODEL", "qwen2-vl-2b-instruct"),
        ("VLM_DEVICE", "cpu"),
        ("LOAD_IN_4BIT", "no"),
        ("ENABLE_FALLBACK", "YES"),
        ("DISABLE_MONITORING", "1"),
        ("MAX_CONCURRENT_TOOLS", "3"),
        ("ORCHESTRATION_MODE", "thorough"),
        ("LOG_LEVEL", "error"),
        ("DEBUG", "false"),
    ]));
    let v = &c.config;
    assert_eq!(v.vlm.primary_model, "qwen2-vl-2b-instruct");
    assert_eq!(v.vlm.device, Device::Cpu);
    assert!(!c.raw.vlm.load_in_4bit);
    assert!(v.vlm.enable_fallback);
    assert!(!v.monitoring.enabled);
    assert_eq!(v.orchestration.max_concurrent_tools, 3);
    assert_eq!(v.orchestration.mode, OrchestrationMode::Thorough);
    assert!(!v.output.debug);
    assert_eq!(v.output.log_level, LogLevel::Error);
    assert_eq!(
        c.origin("vlm.primary_model"),
        Origin::Env("VLM_MODEL".into())
    );
    assert_eq!(
        c.origin("monitoring.enabled"),
        Origin::Env("DISABLE_MONITORING".into())
    );
    // VLM_4BIT is accepted too.
    let c = load(loader(&[("VLM_4BIT", "0")]));
    assert!(!c.raw.vlm.load_in_4bit);
}

#[test]
fn generic_env_and_flags_with_provenance() {
    let c = load(
        loader(&[
            ("SURVEIL_TRACKER__TRACK_BUFFER", "45"),
            ("SURVEIL_VLM__WEIGHTS", "dummy"),
            ("SURVEIL_DETECTION__CLASSES", "person,backpack"),
            ("SURVEIL_VLM__SEED", "7"),
            ("SURVEIL_ASSETS", "/somewhere"), // not a config variable: ignored
            ("VLM_DEVICE", "cuda"),
        ])
        .profile(Some("testing"))
        .flag("vlm.device", "cpu", "--device"),
    );
    assert_eq!(c.config.tracker.track_buffer, 45);
    assert_eq!(c.config.vlm.weights, WeightsSpec::Dummy);
    assert_eq!(c.config.detection.classes, vec!["person", "backpack"]);
    assert_eq!(c.config.vlm.seed, Some(7));
    assert_eq!(c.config.vlm.device, Device::Cpu);
    assert_eq!(c.origin("vlm.device"), Origin::Flag("--device".into()));
    assert_eq!(
        c.origin("tracker.track_buffer"),
        Origin::Env("SURVEIL_TRACKER__TRACK_BUFFER".into())
    );
    assert_eq!(
        c.origin("orchestration.max_concurrent_tools"),
        Origin::Profile("builtin:testing".into())
    );
    assert_eq!(c.origin("detection.iou"), Origin::Default);
    let entries = c.entries();
    assert!(entries
        .iter()
        .any(|(k, v, _)| k == "vlm.primary_model" && v == "git-base-coco"));
}

#[test]
fn profiles_dir_on_disk_overrides_and_extends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("edge.toml"),
        "[vlm]\nprimary_model = \"qwen2-vl-2b-instruct\"\n[orchestration]\nmax_concurrent_tools = 3\n",
    )
    .unwrap();
    let c = load(
        loader(&[])
            .profiles_dir(Some(dir.path()))
            .profile(Some("edge")),
    );
    assert_eq!(c.config.orchestration.max_concurrent_tools, 3);
    let origin = c.origin("orchestration.max_concurrent_tools");
    assert!(
        matches!(&origin, Origin::Profile(p) if p.ends_with("edge.toml")),
        "{origin:?}"
    );
    // Built-in profiles remain available.
    let names = loader(&[])
        .profiles_dir(Some(dir.path()))
        .profile_set()
        .unwrap()
        .names();
    assert!(names.contains(&"testing".to_string()) && names.contains(&"edge".to_string()));
}

#[test]
fn effective_quant() {
    let c = load(loader(&[("SURVEIL_VLM__QUANT", "q4_0")]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Q4_0);
    let c = load(loader(&[("SURVEIL_VLM__QUANT", "f16")]));
    assert_eq!(
        c.config.vlm.storage,
        StorageDtype::Q4K,
        "4-bit on picks q4k"
    );
    let c = load(loader(&[
        ("SURVEIL_VLM__QUANT", "f16"),
        ("LOAD_IN_4BIT", "false"),
    ]));
    assert_eq!(c.config.vlm.storage, StorageDtype::F16);
}

/// The level surveil logs at: `output.log_level`, raised to `debug` by `output.debug` unless a
/// later layer set `log_level`.
#[test]
fn log_level_follows_the_layers() {
    let level = |env: &[(&str, &str)], profile: Option<&str>, set: Option<&str>| {
        let mut l = loader(env).profile(profile);
        if let Some(v) = set {
            l = l.flag("output.log_level", v, "--set output.log_level");
        }
        load(l).log_level()
    };
    // Built-in default, and each profile as written.
    assert_eq!(level(&[], Some("production"), None), LogLevel::Warn);
    assert_eq!(level(&[], Some("testing"), None), LogLevel::Debug);
    assert_eq!(level(&[], None, None), LogLevel::Debug, "development");
    // The environment over the profile: LOG_LEVEL quietens a profile with `debug = true`.
    assert_eq!(
        level(&[("LOG_LEVEL", "error")], Some("testing"), None),
        LogLevel::Error
    );
    assert_eq!(
        level(&[("LOG_LEVEL", "info")], Some("production"), None),
        LogLevel::Info
    );
    // DEBUG raises a quieter level from the same layer or an earlier one.
    assert_eq!(
        level(&[("DEBUG", "1")], Some("production"), None),
        LogLevel::Debug
    );
    assert_eq!(
        level(
            &[("DEBUG", "1"), ("LOG_LEVEL", "error")],
            Some("production"),
            None
        ),
        LogLevel::Debug
    );
    assert_eq!(
        level(
            &[("DEBUG", "1"), ("LOG_LEVEL", "trace")],
            Some("production"),
            None
        ),
        LogLevel::Trace,
        "debug never lowers a level"
    );
    // A flag over both.
    assert_eq!(
        level(&[("DEBUG", "1")], Some("production"), Some("warn")),
        LogLevel::Warn
    );
    assert_eq!(
        level(&[("DEBUG", "0")], Some("testing"), None),
        LogLevel::Debug,
        "log_level = \"debug\" of the profile stands"
    );
}
