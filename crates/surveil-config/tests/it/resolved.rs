//! Values validation resolves once: the storage type from `load_in_4bit` and `quant`, the
//! detector, and the paths (profile, environment, flag or the default under `HOME`), each with
//! the origin `surveil config show` prints.

use std::path::{Path, PathBuf};

use surveil_config::{ConfigError, Detector, Origin, StorageDtype};

use crate::{load, load_err, loader};

fn env(var: &str) -> Origin {
    Origin::Env(var.into())
}

#[test]
fn storage_is_resolved_from_load_in_4bit_and_quant_with_the_deciding_origin() {
    // The development profile writes load_in_4bit = true; quant is q4k by default. Both agree
    // on q4k: the later layer, the profile, is named.
    let c = load(loader(&[]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Q4K);
    assert_eq!(
        c.origin("vlm.storage"),
        Origin::Profile("builtin:development".into())
    );

    // Production writes load_in_4bit = false, quant = "q8_0": the quant decides.
    let c = load(loader(&[]).profile(Some("production")));
    assert_eq!(c.config.vlm.storage, StorageDtype::Q8_0);
    assert_eq!(
        c.origin("vlm.storage"),
        Origin::Profile("builtin:production".into())
    );

    // LOAD_IN_4BIT=true over it: q8_0 is not 4-bit, so 4-bit on means q4k, from the variable.
    for var in ["LOAD_IN_4BIT", "VLM_4BIT", "SURVEIL_VLM__LOAD_IN_4BIT"] {
        let c = load(loader(&[(var, "TRUE")]).profile(Some("production")));
        assert_eq!(c.config.vlm.storage, StorageDtype::Q4K, "{var}");
        assert_eq!(c.origin("vlm.storage"), env(var), "{var}");
        // The keys as written are kept for display.
        assert!(c.raw.vlm.load_in_4bit);
        assert_eq!(c.raw.vlm.quant, StorageDtype::Q8_0);
    }

    // A 4-bit quant with 4-bit on: both agree, the later layer is named.
    let c = load(loader(&[("SURVEIL_VLM__QUANT", "Q4_0")]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Q4_0);
    assert_eq!(c.origin("vlm.storage"), env("SURVEIL_VLM__QUANT"));
    let c = load(
        loader(&[("SURVEIL_VLM__QUANT", "q4_0"), ("LOAD_IN_4BIT", "1")]).flag(
            "vlm.quant",
            "q4k",
            "--set vlm.quant",
        ),
    );
    assert_eq!(c.config.vlm.storage, StorageDtype::Q4K);
    assert_eq!(
        c.origin("vlm.storage"),
        Origin::Flag("--set vlm.quant".into())
    );

    // 4-bit off: the quant as written, even the default q4k.
    let c = load(loader(&[
        ("LOAD_IN_4BIT", "false"),
        ("SURVEIL_VLM__QUANT", "bf16"),
    ]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Bf16);
    assert_eq!(c.origin("vlm.storage"), env("SURVEIL_VLM__QUANT"));
}

#[test]
fn storage_is_read_only_and_listed_after_the_keys_it_comes_from() {
    let (e, msg) = load_err(loader(&[]).flag("vlm.storage", "f16", "--set vlm.storage"));
    assert!(matches!(e, ConfigError::BadOverride { .. }), "{msg}");
    assert!(msg.contains("unknown key `vlm.storage`"), "{msg}");

    let c = load(loader(&[("LOAD_IN_4BIT", "yes")]));
    let keys: Vec<String> = c.entries().into_iter().map(|(k, _, _)| k).collect();
    let at = |key: &str| keys.iter().position(|k| k == key).unwrap();
    assert_eq!(at("vlm.quant"), at("vlm.load_in_4bit") + 1, "{keys:?}");
    assert_eq!(at("vlm.storage"), at("vlm.quant") + 1, "{keys:?}");
    let shown = c.shown();
    assert_eq!(shown["vlm"]["load_in_4bit"], true);
    assert_eq!(shown["vlm"]["quant"], "q4k");
    assert_eq!(shown["vlm"]["storage"], "q4k");
}

#[test]
fn detection_model_is_a_detector_named_in_any_case() {
    let c = load(loader(&[("SURVEIL_DETECTION__MODEL", " YOLOV3-tiny ")]));
    assert_eq!(c.config.detection.model, Detector::Yolov3Tiny);
    assert_eq!(c.shown()["detection"]["model"], "yolov3-tiny");

    let (e, msg) = load_err(loader(&[("SURVEIL_DETECTION__MODEL", "yolov8n")]));
    assert!(matches!(e, ConfigError::Rule { .. }), "{msg}");
    assert_eq!(
        msg,
        "detection.model = \"yolov8n\" (from env SURVEIL_DETECTION__MODEL): unknown detector; \
         allowed: yolov3-tiny"
    );
}

/// The three paths and their origins.
fn paths(l: surveil_config::ConfigLoader) -> Vec<(PathBuf, Origin)> {
    let c = load(l);
    let p = &c.config.paths;
    vec![
        (p.hub_cache.clone(), c.origin("paths.hub_cache")),
        (
            p.model_dir.clone().unwrap_or_default(),
            c.origin("paths.model_dir"),
        ),
        (p.assets.clone(), c.origin("paths.assets")),
    ]
}

#[test]
fn paths_default_under_home() {
    let home = [("HOME", "/home/ann")];
    assert_eq!(
        paths(loader(&home)),
        [
            ("/home/ann/.cache/huggingface/hub".into(), Origin::Default),
            (PathBuf::new(), Origin::Default),
            ("/home/ann/.cache/surveil/assets".into(), Origin::Default),
        ]
    );
    let c = load(loader(&home));
    assert_eq!(c.config.paths.model_dir, None);
    assert_eq!(
        c.config.paths.asset("yolov3-tiny"),
        Path::new("/home/ann/.cache/surveil/assets/yolov3-tiny")
    );
    // What the environment alone gives agrees.
    assert_eq!(loader(&home).environment_paths(), c.config.paths);
}

#[test]
fn paths_from_the_variables_the_tools_share() {
    let vars = [
        ("HOME", "/home/ann"),
        ("HF_HOME", "/data/hf"),
        ("SURVEIL_MODEL_DIR", "/data/models"),
        ("SURVEIL_ASSETS", "/data/assets"),
    ];
    assert_eq!(
        paths(loader(&vars)),
        [
            ("/data/hf/hub".into(), env("HF_HOME")),
            ("/data/models".into(), env("SURVEIL_MODEL_DIR")),
            ("/data/assets".into(), env("SURVEIL_ASSETS")),
        ]
    );
    // HF_HUB_CACHE wins over HF_HOME; empty variables count as unset.
    let c = load(loader(&[
        ("HF_HOME", "/data/hf"),
        ("HF_HUB_CACHE", "/fast/hub"),
    ]));
    assert_eq!(c.config.paths.hub_cache, Path::new("/fast/hub"));
    assert_eq!(c.origin("paths.hub_cache"), env("HF_HUB_CACHE"));
    let c = load(loader(&[
        ("HOME", "/home/ann"),
        ("HF_HOME", "/data/hf"),
        ("HF_HUB_CACHE", ""),
        ("SURVEIL_MODEL_DIR", ""),
        ("SURVEIL_ASSETS", ""),
        ("SURVEIL_PATHS__ASSETS", ""),
    ]));
    assert_eq!(c.config.paths.hub_cache, Path::new("/data/hf/hub"));
    assert_eq!(c.config.paths.model_dir, None);
    assert_eq!(
        c.config.paths.assets,
        Path::new("/home/ann/.cache/surveil/assets")
    );
    assert_eq!(c.origin("paths.assets"), Origin::Default);
    assert_eq!(
        loader(&vars).environment_paths(),
        load(loader(&vars)).config.paths
    );
}

#[test]
fn paths_from_a_profile_are_overridden_by_variables_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("site.toml"),
        "[paths]\nhub_cache = \"/site/hub\"\nassets = \"/site/assets\"\n",
    )
    .unwrap();
    let site = |vars: &[(&str, &str)]| {
        loader(vars)
            .profiles_dir(Some(dir.path()))
            .profile(Some("site"))
    };
    let c = load(site(&[]));
    assert_eq!(c.config.paths.hub_cache, Path::new("/site/hub"));
    assert!(
        matches!(c.origin("paths.assets"), Origin::Profile(p) if p.ends_with("site.toml")),
        "{:?}",
        c.origin("paths.assets")
    );
    let c = load(site(&[("SURVEIL_ASSETS", "/env/assets")]));
    assert_eq!(c.config.paths.assets, Path::new("/env/assets"));
    assert_eq!(c.origin("paths.assets"), env("SURVEIL_ASSETS"));
    let c = load(site(&[("SURVEIL_ASSETS", "/env/assets")]).flag(
        "paths.assets",
        "/flag/assets",
        "--set paths.assets",
    ));
    assert_eq!(c.config.paths.assets, Path::new("/flag/assets"));
    assert_eq!(
        c.origin("paths.assets"),
        Origin::Flag("--set paths.assets".into())
    );
}

#[test]
fn an_empty_path_written_in_a_profile_or_flag_is_refused() {
    let (e, msg) = load_err(loader(&[]).flag("paths.model_dir", "", "--set paths.model_dir"));
    assert!(matches!(e, ConfigError::Rule { .. }), "{msg}");
    assert_eq!(
        msg,
        "paths.model_dir = \"\" (from flag --set paths.model_dir): must be a path; leave the key \
         out for its default"
    );
}

#[test]
fn load_in_4bit_false_never_loads_four_bit_weights() {
    // The default quant is q4k: turning 4-bit off must not keep it.
    let c = load(loader(&[("LOAD_IN_4BIT", "false")]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Bf16);
    assert_eq!(c.origin("vlm.storage"), env("LOAD_IN_4BIT"));
    let c = load(loader(&[
        ("LOAD_IN_4BIT", "false"),
        ("SURVEIL_VLM__QUANT", "q4_0"),
    ]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Bf16);
    // A wider type as written is kept.
    let c = load(loader(&[
        ("LOAD_IN_4BIT", "false"),
        ("SURVEIL_VLM__QUANT", "q8_0"),
    ]));
    assert_eq!(c.config.vlm.storage, StorageDtype::Q8_0);
}
