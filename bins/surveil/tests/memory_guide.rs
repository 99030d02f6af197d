//! The commands of the memory guide, typed as its readers type them: Hugging Face repo ids for
//! models, upper-case choice values, `DeviceType.CPU`, the short environment variables. Each
//! test runs the real binary.

use std::path::{Path, PathBuf};

mod common;
use common::{in_ci, json, ok_stdout, shown, stderr, surveil};

/// The config shown for `env`, as text and as JSON.
fn config_show(env: &[(&str, &str)]) -> (String, serde_json::Value) {
    let text = ok_stdout(&surveil(&["config", "show"], env));
    let json = json(&surveil(&["config", "show", "--json"], env));
    (text, json)
}

#[test]
fn vlm_model_accepts_the_hugging_face_repo_id() {
    let (text, v) = config_show(&[("VLM_MODEL", "microsoft/git-base-coco")]);
    assert_eq!(
        shown(&text, "vlm.primary_model"),
        ("git-base-coco".to_string(), "env VLM_MODEL".to_string())
    );
    assert_eq!(v["vlm"]["primary_model"], "git-base-coco");
    assert_eq!(v["_origins"]["vlm.primary_model"], "env VLM_MODEL");
}

#[test]
fn model_ids_and_repo_ids_ignore_case() {
    for (typed, canonical) in [
        ("MICROSOFT/GIT-BASE-COCO", "git-base-coco"),
        ("Git-Base-Coco", "git-base-coco"),
        ("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b-instruct"),
        ("moonshotai/Kimi-VL-A3B-Thinking", "kimi-vl-a3b-thinking"),
        (
            "moonshotai/kimi-vl-a3b-thinking-2506",
            "kimi-vl-a3b-thinking-2506",
        ),
    ] {
        let v = json(&surveil(
            &["config", "show", "--json"],
            &[("VLM_MODEL", typed)],
        ));
        assert_eq!(v["vlm"]["primary_model"], canonical, "VLM_MODEL={typed}");
    }
}

#[test]
fn repo_ids_work_in_set_flags_fallbacks_and_profile_files() {
    let v = json(&surveil(
        &[
            "config",
            "show",
            "--json",
            "--set",
            "vlm.primary_model=Qwen/Qwen2-VL-7B-Instruct",
            "--set",
            "vlm.fallback_models=microsoft/git-base-coco,QWEN2-VL-2B-INSTRUCT",
        ],
        &[],
    ));
    assert_eq!(v["vlm"]["primary_model"], "qwen2-vl-7b-instruct");
    assert_eq!(
        v["vlm"]["fallback_models"],
        serde_json::json!(["git-base-coco", "qwen2-vl-2b-instruct"])
    );
    assert_eq!(
        v["_origins"]["vlm.primary_model"],
        "flag --set vlm.primary_model"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("guide.toml"),
        "[vlm]\nprimary_model = \"moonshotai/Kimi-VL-A3B-Instruct\"\n\
         fallback_models = [\"Qwen/Qwen2-VL-2B-Instruct\"]\nenable_fallback = true\n",
    )
    .unwrap();
    let v = json(&surveil(
        &[
            "config",
            "show",
            "--json",
            "--profile",
            "guide",
            "--profiles-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(v["vlm"]["primary_model"], "kimi-vl-a3b-instruct");
    assert_eq!(
        v["vlm"]["fallback_models"],
        serde_json::json!(["qwen2-vl-2b-instruct"])
    );
}

#[test]
fn a_fallback_equal_to_the_primary_under_another_name_is_refused() {
    let out = surveil(
        &[
            "config",
            "show",
            "--set",
            "vlm.fallback_models=microsoft/git-base-coco",
        ],
        &[("VLM_MODEL", "git-base-coco")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("primary model `git-base-coco`"), "{err}");
}

#[test]
fn an_unknown_model_still_exits_2_listing_ids_and_repo_ids() {
    let out = surveil(&["config", "show"], &[("VLM_MODEL", "microsoft/git-large")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("microsoft/git-large"), "{err}");
    assert!(err.contains("env VLM_MODEL"), "{err}");
    assert!(err.contains("git-base-coco"), "{err}");
    assert!(err.contains("microsoft/git-base-coco"), "{err}");
}

#[test]
fn vlm_device_as_the_guide_writes_it() {
    for typed in ["cpu", "CPU", "Cpu", "DeviceType.CPU", "devicetype.cpu"] {
        let (text, v) = config_show(&[("VLM_DEVICE", typed)]);
        assert_eq!(
            shown(&text, "vlm.device"),
            ("cpu".to_string(), "env VLM_DEVICE".to_string()),
            "VLM_DEVICE={typed}"
        );
        assert_eq!(v["vlm"]["device"], "cpu", "VLM_DEVICE={typed}");
    }
}

#[test]
fn cuda_devices_carry_their_ordinal() {
    for (typed, stored) in [
        ("cuda", "cuda:0"),
        ("CUDA", "cuda:0"),
        ("DeviceType.CUDA", "cuda:0"),
        ("cuda:1", "cuda:1"),
        ("CUDA:3", "cuda:3"),
        ("AUTO", "auto"),
    ] {
        let v = json(&surveil(
            &["config", "show", "--json"],
            &[("VLM_DEVICE", typed)],
        ));
        assert_eq!(v["vlm"]["device"], stored, "VLM_DEVICE={typed}");
    }
    for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "DeviceType.GPU"] {
        let out = surveil(&["config", "show"], &[("VLM_DEVICE", bad)]);
        assert_eq!(out.status.code(), Some(2), "VLM_DEVICE={bad}");
        let err = stderr(&out);
        assert!(
            err.contains("vlm.device") && err.contains("auto, cpu, cuda, cuda:N"),
            "VLM_DEVICE={bad}: {err}"
        );
        assert!(err.contains("env VLM_DEVICE"), "VLM_DEVICE={bad}: {err}");
    }
}

#[test]
fn the_guide_switches_apply_with_their_origins() {
    let env = [
        ("LOAD_IN_4BIT", "true"),
        ("ENABLE_FALLBACK", "false"),
        ("DISABLE_MONITORING", "true"),
    ];
    let (text, v) = config_show(&env);
    assert_eq!(
        shown(&text, "vlm.load_in_4bit"),
        ("true".to_string(), "env LOAD_IN_4BIT".to_string())
    );
    assert_eq!(
        shown(&text, "vlm.enable_fallback"),
        ("false".to_string(), "env ENABLE_FALLBACK".to_string())
    );
    assert_eq!(
        shown(&text, "monitoring.enabled"),
        ("false".to_string(), "env DISABLE_MONITORING".to_string())
    );
    assert_eq!(v["vlm"]["load_in_4bit"], true);
    assert_eq!(v["vlm"]["enable_fallback"], false);
    assert_eq!(v["monitoring"]["enabled"], false);
    assert_eq!(
        v["_origins"]["monitoring.enabled"],
        "env DISABLE_MONITORING"
    );

    // Against a profile that sets the opposite values, the variables still win.
    let production = ["config", "show", "--json", "--profile", "production"];
    let v = json(&surveil(&production, &env));
    assert_eq!(v["vlm"]["load_in_4bit"], true, "production says false");
    assert_eq!(v["monitoring"]["enabled"], false, "production says true");
    let v = json(&surveil(
        &production,
        &[("LOAD_IN_4BIT", "TRUE"), ("ENABLE_FALLBACK", "Yes")],
    ));
    assert_eq!(v["vlm"]["load_in_4bit"], true);
    assert_eq!(v["vlm"]["enable_fallback"], true);
}

#[test]
fn choice_values_ignore_case() {
    let v = json(&surveil(
        &[
            "config",
            "show",
            "--json",
            "--set",
            "vlm.quant=Q8_0",
            "--set",
            "detection.classes=Person,BACKPACK,Cell Phone",
        ],
        &[("ORCHESTRATION_MODE", "Thorough"), ("LOG_LEVEL", "DEBUG")],
    ));
    assert_eq!(v["vlm"]["quant"], "q8_0");
    assert_eq!(v["orchestration"]["mode"], "thorough");
    assert_eq!(v["output"]["log_level"], "debug");
    assert_eq!(
        v["detection"]["classes"],
        serde_json::json!(["person", "backpack", "cell phone"])
    );

    let out = surveil(&["config", "show"], &[("ORCHESTRATION_MODE", "Quick")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("orchestration.mode") && err.contains("fast, balanced, thorough"),
        "{err}"
    );
}

#[test]
fn test_model_takes_a_repo_id_and_reports_our_id() {
    let out = surveil(
        &[
            "test-model",
            "--model",
            "microsoft/git-base-coco",
            "--weights",
            "dummy",
            "--device",
            "CPU",
            "--json",
        ],
        &[],
    );
    let v = json(&out);
    assert_eq!(v["model"], "git-base-coco");
    assert_eq!(v["device"], "cpu");
    // The model's own testing profile, as for `--git-base`.
    assert_eq!(v["profile"], "testing");
}

#[test]
fn models_list_shows_id_and_repo_id() {
    let text = ok_stdout(&surveil(&["models", "list"], &[]));
    for (id, repo) in [
        ("git-base-coco", "microsoft/git-base-coco"),
        ("qwen2-vl-2b-instruct", "Qwen/Qwen2-VL-2B-Instruct"),
        ("kimi-vl-a3b-thinking", "moonshotai/Kimi-VL-A3B-Thinking"),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"));
        assert!(
            line.split_whitespace().any(|w| w == repo),
            "row of {id} lacks {repo}: {line}"
        );
    }
}

/// The sample clip, if it and the detector are installed; `None` after printing SKIP outside CI.
fn sample_clip() -> Option<PathBuf> {
    let clip = surveil_config::paths::asset("video/vtest.avi");
    let detector = surveil_config::paths::asset("yolov3-tiny");
    if clip.is_file() && detector.is_dir() {
        return Some(clip);
    }
    assert!(
        !in_ci(),
        "{} or {} missing under CI (scripts/setup.sh fetches them)",
        clip.display(),
        detector.display()
    );
    eprintln!(
        "SKIP: {} or {} missing (run scripts/setup.sh)",
        clip.display(),
        detector.display()
    );
    None
}

#[test]
fn env_testing_runs_with_git_base_coco() {
    let Some(clip) = sample_clip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let out = surveil(
        &[
            "run",
            "--source",
            clip.to_str().unwrap(),
            "--weights",
            "dummy",
            "--max-frames",
            "5",
            "--output",
            run_dir.to_str().unwrap(),
        ],
        &[("ENV", "testing")],
    );
    let text = ok_stdout(&out);
    assert!(text.contains("5 frames"), "{text}");
    let err = stderr(&out);
    assert!(
        err.contains("profile testing, model git-base-coco"),
        "{err}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["model"]["model"], "git-base-coco");
    assert_eq!(summary["model"]["weights"], "dummy");
    assert_eq!(summary["frames"], 5);
}

#[test]
fn kimi_memory_stats_with_an_empty_cache_names_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let hub = hf_home.join("hub");
    let models = dir.path().join("models");
    for d in [&hub, &models] {
        std::fs::create_dir_all(d).unwrap();
    }
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let out = surveil(
        &["test-single-model", "--kimi", "--memory-stats"],
        &[
            ("HF_HOME", &path(&hf_home)),
            ("HF_HUB_CACHE", &path(&hub)),
            ("SURVEIL_MODEL_DIR", &path(&models)),
        ],
    );
    assert!(!out.status.success(), "a load without weights succeeded");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("moonshotai/Kimi-VL-A3B-Thinking"), "{err}");
    // Both places searched, by their full paths.
    assert!(
        err.contains(&path(&hub.join("models--moonshotai--Kimi-VL-A3B-Thinking"))),
        "{err}"
    );
    assert!(
        err.contains(&path(&models.join("kimi-vl-a3b-thinking"))),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn load_in_4bit_false_loads_bf16_weights_that_answer() {
    // The default quant is q4k; `LOAD_IN_4BIT=false` must still load unquantized weights, and
    // a bf16 model must run its test inference on the CPU.
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--device",
            "cpu",
            "--infer",
            "--json",
        ],
        &[("LOAD_IN_4BIT", "false")],
    );
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    let by_dtype = v["quantization"]["bytes_by_dtype"]
        .as_object()
        .expect("bytes_by_dtype");
    assert!(by_dtype.contains_key("bf16"), "{by_dtype:?}");
    assert!(
        !by_dtype.keys().any(|k| k.starts_with('q')),
        "no quantized tensor expected: {by_dtype:?}"
    );
    assert!(
        v["inference"]["new_tokens"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );
}

/// The Kimi-VL fixture checkpoint (`$SURVEIL_FIXTURES/kimi_vl`, else `../shared/fixtures`), if
/// present; `None` after printing SKIP outside CI.
fn kimi_fixture() -> Option<PathBuf> {
    let root = std::env::var_os("SURVEIL_FIXTURES")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    let dir = root.join("kimi_vl");
    if dir.join("config.json").is_file() {
        return Some(dir);
    }
    assert!(!in_ci(), "{} missing under CI", dir.display());
    eprintln!("SKIP: {} missing", dir.display());
    None
}

#[test]
fn a_failed_test_inference_still_reports_json_and_releases_the_model() {
    // A tiny Kimi-VL checkpoint loads, but when its image placeholder id is not the real
    // tokenizer's `<|media_pad|>`, the test inference is refused: `--json` must still say so
    // on stdout, with the memory. The premise is read from the fixture's config.json.
    let Some(dir) = kimi_fixture() else { return };
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).expect("fixture config.json"),
    )
    .expect("fixture config.json is JSON");
    let placeholder = config["media_placeholder_token_id"].as_u64();
    if placeholder
        == Some(u64::from(
            surveil_models::arch::kimi_vl::KimiSpecialIds::MEDIA_PAD,
        ))
    {
        eprintln!(
            "SKIP: this fixture's placeholder id is the tokenizer's: its inference is not refused"
        );
        return;
    }
    let out = surveil(
        &[
            "test-model",
            "--kimi",
            "--weights",
            dir.to_str().expect("UTF-8 fixture path"),
            "--infer",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["stage"], "inference", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("test inference"),
        "{v}"
    );
    let after_load = v["memory"]["after_load"]["rss_bytes"]
        .as_u64()
        .expect("after_load");
    let after_unload = v["memory"]["after_unload"]["rss_bytes"]
        .as_u64()
        .expect("after_unload");
    assert!(after_unload < after_load, "{v}");
}

#[test]
fn test_model_repeats_the_inference_and_lists_every_run() {
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--device",
            "cpu",
            "--infer",
            "--infer-runs",
            "2",
            "--infer-tokens",
            "3",
            "--ignore-eos",
            "--json",
        ],
        &[],
    );
    let v = json(&out);
    let runs = v["inference_runs"].as_array().expect("inference_runs");
    assert_eq!(runs.len(), 2, "{v}");
    // `inference` stays the first (cold) run, as before the option existed.
    assert_eq!(v["inference"], runs[0]);
    for run in runs {
        assert_eq!(run["new_tokens"], 3, "{run}");
        assert_eq!(run["stop_reason"], "max_new_tokens", "{run}");
    }
    // Greedy decoding of the same image: the same answer both times.
    assert_eq!(runs[0]["text"], runs[1]["text"]);

    let out = surveil(&["test-model", "--git-base", "--infer-runs", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
}

#[test]
fn test_model_takes_an_image_and_a_prompt_and_reports_the_bytes_read_per_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = dir.path().join("frame.png");
    image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([x as u8, y as u8, 90]))
        .save(&frame)
        .expect("write frame.png");
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--device",
            "cpu",
            "--infer",
            "--infer-tokens",
            "2",
            "--infer-image",
            frame.to_str().expect("UTF-8 temp path"),
            "--infer-prompt",
            "Is anyone there?",
            "--prefill-tokens",
            "64",
            "--json",
        ],
        &[],
    );
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["inference"]["new_tokens"], 2, "{v}");
    // a captioner takes no prompt: no text-only prefill figure
    assert_eq!(v["text_prefill"], serde_json::Value::Null, "{v}");
    // the decoder reads its layers and output head per token, not the vision tower (about
    // half of git-base's weights)
    let per_token = v["inference"]["weight_bytes_per_token"]
        .as_f64()
        .expect("weight_bytes_per_token");
    let total = v["quantization"]["total_bytes"]
        .as_f64()
        .expect("total_bytes");
    assert!(
        per_token > 0.1 * total && per_token < 0.7 * total,
        "{per_token} of {total}"
    );

    // a missing image fails before the model is loaded, naming the file
    let missing = dir.path().join("missing.png");
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--infer",
            "--infer-image",
            missing.to_str().expect("UTF-8 temp path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("missing.png") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!err.contains("loaded"), "{err}");
}
