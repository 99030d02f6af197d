//! The CLI as a user runs it: exit codes, JSON shapes, messages.

use std::process::{Command, Output};

mod common;
use common::{in_ci, json, shown, surveil};

#[test]
fn config_show_profile_json() {
    let v = json(&surveil(
        &["config", "show", "--profile", "testing_kimi", "--json"],
        &[],
    ));
    assert_eq!(v["vlm"]["primary_model"], "kimi-vl-a3b-thinking");
    assert_eq!(v["vlm"]["load_in_4bit"], true);
    assert_eq!(v["orchestration"]["max_concurrent_tools"], 1);
    assert_eq!(v["profile"], "testing_kimi");
}

#[test]
fn config_show_env_overrides() {
    let v = json(&surveil(
        &["config", "show", "--json"],
        &[("VLM_MODEL", "qwen2-vl-2b-instruct")],
    ));
    assert_eq!(v["vlm"]["primary_model"], "qwen2-vl-2b-instruct");
    assert_eq!(v["_origins"]["vlm.primary_model"], "env VLM_MODEL");
    let v = json(&surveil(
        &["config", "show", "--json"],
        &[("ENV", "testing")],
    ));
    assert_eq!(v["vlm"]["primary_model"], "git-base-coco");
}

#[test]
fn set_flag_beats_environment() {
    let v = json(&surveil(
        &["config", "show", "--json", "--set", "vlm.device=cpu"],
        &[("VLM_DEVICE", "cuda")],
    ));
    assert_eq!(v["vlm"]["device"], "cpu");
    assert_eq!(v["_origins"]["vlm.device"], "flag --set vlm.device");
}

/// The path variables set to empty text (which counts as unset) and `HOME` set to `home`, so
/// the caller's shell cannot leak into a test of the paths.
fn path_env<'a>(home: &'a str, set: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("HOME", home),
        ("HF_HOME", ""),
        ("HF_HUB_CACHE", ""),
        ("SURVEIL_MODEL_DIR", ""),
        ("SURVEIL_ASSETS", ""),
    ];
    env.extend_from_slice(set);
    env
}

#[test]
fn config_show_lists_the_resolved_paths_with_their_origins() {
    // Nothing set: the defaults under HOME.
    let env = path_env("/home/ann", &[]);
    let v = json(&surveil(&["config", "show", "--json"], &env));
    assert_eq!(v["paths"]["hub_cache"], "/home/ann/.cache/huggingface/hub");
    assert_eq!(v["paths"]["model_dir"], serde_json::Value::Null);
    assert_eq!(v["paths"]["assets"], "/home/ann/.cache/surveil/assets");
    for key in ["paths.hub_cache", "paths.model_dir", "paths.assets"] {
        assert_eq!(v["_origins"][key], "default", "{key}");
    }

    // The variables the tools share.
    let env = path_env(
        "/home/ann",
        &[
            ("HF_HOME", "/data/hf"),
            ("SURVEIL_MODEL_DIR", "/data/models"),
            ("SURVEIL_ASSETS", "/data/assets"),
        ],
    );
    let out = surveil(&["config", "show"], &env);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        shown(&text, "paths.hub_cache"),
        ("/data/hf/hub".to_string(), "env HF_HOME".to_string())
    );
    assert_eq!(
        shown(&text, "paths.model_dir"),
        (
            "/data/models".to_string(),
            "env SURVEIL_MODEL_DIR".to_string()
        )
    );
    assert_eq!(
        shown(&text, "paths.assets"),
        ("/data/assets".to_string(), "env SURVEIL_ASSETS".to_string())
    );
    let v = json(&surveil(&["config", "show", "--json"], &env));
    assert_eq!(v["paths"]["hub_cache"], "/data/hf/hub");
    assert_eq!(v["_origins"]["paths.hub_cache"], "env HF_HOME");

    // HF_HUB_CACHE wins over HF_HOME, and --set over both.
    let env = path_env(
        "/home/ann",
        &[("HF_HOME", "/data/hf"), ("HF_HUB_CACHE", "/fast/hub")],
    );
    let v = json(&surveil(&["config", "show", "--json"], &env));
    assert_eq!(v["paths"]["hub_cache"], "/fast/hub");
    assert_eq!(v["_origins"]["paths.hub_cache"], "env HF_HUB_CACHE");
    let v = json(&surveil(
        &[
            "config",
            "show",
            "--json",
            "--set",
            "paths.hub_cache=/flag/hub",
        ],
        &env,
    ));
    assert_eq!(v["paths"]["hub_cache"], "/flag/hub");
    assert_eq!(
        v["_origins"]["paths.hub_cache"],
        "flag --set paths.hub_cache"
    );
}

#[test]
fn config_show_lists_the_storage_type_after_the_keys_it_comes_from() {
    let args = ["config", "show", "--profile", "production"];
    let out = surveil(&args, &[("LOAD_IN_4BIT", "true")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        shown(&text, "vlm.load_in_4bit"),
        ("true".to_string(), "env LOAD_IN_4BIT".to_string())
    );
    assert_eq!(
        shown(&text, "vlm.quant"),
        ("q8_0".to_string(), "profile builtin:production".to_string())
    );
    // 4-bit on overrides a wider quant.
    assert_eq!(
        shown(&text, "vlm.storage"),
        ("q4k".to_string(), "env LOAD_IN_4BIT".to_string())
    );
    let lines: Vec<&str> = text.lines().collect();
    let at = |key: &str| {
        lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(key))
            .unwrap()
    };
    assert_eq!(at("vlm.quant"), at("vlm.load_in_4bit") + 1, "{text}");
    assert_eq!(at("vlm.storage"), at("vlm.quant") + 1, "{text}");

    let v = json(&surveil(
        &["config", "show", "--json", "--profile", "production"],
        &[],
    ));
    assert_eq!(v["vlm"]["storage"], "q8_0");
    assert_eq!(v["_origins"]["vlm.storage"], "profile builtin:production");
    // Read only.
    let out = surveil(&["config", "show", "--set", "vlm.storage=f16"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn detection_model_is_checked_with_the_rest_of_the_config() {
    let out = surveil(
        &["config", "show"],
        &[("SURVEIL_DETECTION__MODEL", "yolov8n")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "detection.model = \"yolov8n\" (from env SURVEIL_DETECTION__MODEL): unknown \
             detector; allowed: yolov3-tiny"
        ),
        "{err}"
    );
    let v = json(&surveil(
        &[
            "config",
            "show",
            "--json",
            "--set",
            "detection.model=YOLOv3-Tiny",
        ],
        &[],
    ));
    assert_eq!(v["detection"]["model"], "yolov3-tiny");
}

#[test]
fn doctor_reports_the_configured_caches() {
    let env = path_env("/home/ann", &[("SURVEIL_ASSETS", "/data/assets")]);
    let v = json(&surveil(
        &["doctor", "--json", "--set", "paths.hub_cache=/flag/hub"],
        &env,
    ));
    assert_eq!(v["hf_cache"]["path"], "/flag/hub");
    assert_eq!(v["hf_cache"]["origin"], "flag --set paths.hub_cache");
    assert_eq!(v["assets"]["path"], "/data/assets");
    assert_eq!(v["assets"]["origin"], "env SURVEIL_ASSETS");
    assert_eq!(v["model_dir"], serde_json::Value::Null);
}

#[test]
fn test_model_loads_with_the_storage_type_load_in_4bit_resolves() {
    // Production stores q8_0; LOAD_IN_4BIT=true makes it q4k, and the loader follows: on the
    // CPU in the kernels' 4-bit tile layout.
    let v = json(&surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--profile",
            "production",
            "--json",
        ],
        &[("LOAD_IN_4BIT", "true")],
    ));
    let q = &v["quantization"];
    assert!(
        q["policy"].as_str().unwrap().starts_with("q4kx16 linear"),
        "{q}"
    );
    assert!(
        q["bytes_by_dtype"]["q4kx16"].as_u64().unwrap() > 50_000_000,
        "{q}"
    );
    assert!(q["bytes_by_dtype"].get("q8_0").is_none(), "{q}");
    assert!(q["bytes_by_dtype"].get("q8_0x16").is_none(), "{q}");
}

#[test]
fn unknown_profile_exits_2_listing_profiles() {
    let out = surveil(&["config", "show", "--profile", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("testing_qwen"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn bad_value_exits_2() {
    let out = surveil(&["config", "show"], &[("MAX_CONCURRENT_TOOLS", "0")]);
    assert_eq!(out.status.code(), Some(2));
    let out = surveil(&["config", "show", "--set", "novalue"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = surveil(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn doctor_json_reports_machine() {
    let v = json(&surveil(&["doctor", "--json"], &[]));
    assert!(v["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    assert!(v["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["cuda"]["compiled"], cfg!(feature = "cuda"));
    assert_eq!(v["hf_cache"]["models"].as_array().unwrap().len(), 6);
    assert!(v["assets"]["files"].as_array().unwrap().len() >= 5);
}

#[test]
fn help_has_examples() {
    for args in [
        &["--help"][..],
        &["config", "show", "--help"],
        &["doctor", "--help"],
    ] {
        let out = surveil(args, &[]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:"), "{args:?}: {text}");
    }
}

/// The asset files the CLI tests run on: the sample clip and the detector.
const CLI_ASSETS: [&str; 4] = [
    "video/vtest.avi",
    "yolov3-tiny/yolov3-tiny.weights",
    "yolov3-tiny/yolov3-tiny.cfg",
    "yolov3-tiny/coco.names",
];

/// The asset cache (`$SURVEIL_ASSETS`, else `~/.cache/surveil/assets`). Under CI every file of
/// [`CLI_ASSETS`] must be there (a failure otherwise); on a developer's machine the tests check
/// and skip.
fn assets() -> std::path::PathBuf {
    let dir = surveil_config::paths::assets_dir();
    if in_ci() {
        for rel in CLI_ASSETS {
            assert!(
                dir.join(rel).is_file(),
                "asset {} is missing under CI (scripts/setup.sh fetches it)",
                dir.join(rel).display()
            );
        }
    }
    dir
}

#[test]
fn detect_writes_jsonl_and_snapshot() {
    let video = assets().join("video/vtest.avi");
    if !video.is_file() {
        eprintln!(
            "skipping: {} is absent (run scripts/setup.sh)",
            video.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    let png = dir.path().join("f2.png");
    let v = json(&surveil(
        &[
            "detect",
            "--source",
            video.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--max-frames",
            "4",
            "--snapshot",
            &format!("2:{}", png.display()),
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["frames_analysed"], 4);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, v["lines_written"].as_u64().unwrap());
    assert!(
        lines.len() >= 4,
        "vtest has people from the first frame: {text}"
    );
    assert!(lines
        .iter()
        .all(|l| l["class"] == "person" && l["frame"].as_u64().unwrap() < 4));
    let img = std::fs::read(&png).unwrap();
    assert_eq!(&img[1..4], b"PNG");
}

#[test]
fn detect_missing_source_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = surveil(
        &[
            "detect",
            "--source",
            "/nonexistent/video.avi",
            "--output",
            dir.path().join("t.jsonl").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/video.avi"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn test_model_git_dummy_json_with_inference() {
    let v = json(&surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--infer",
            "--infer-tokens",
            "4",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["ok"], true);
    assert_eq!(v["model"], "git-base-coco");
    assert_eq!(v["profile"], "testing");
    assert_eq!(v["weights"], "dummy");
    assert_eq!(v["device"], "cpu");
    let q = &v["quantization"];
    assert!(q["bytes_by_dtype"]["q4kx16"].as_u64().unwrap() > 50_000_000);
    assert_eq!(q["total_bytes"], q["estimated_bytes"]);
    let m = &v["memory"];
    for k in ["before", "after_load", "after_inference", "after_unload"] {
        assert!(m[k]["rss_bytes"].as_u64().unwrap() > 0, "{k}");
        assert!(m[k]["vms_bytes"].as_u64().unwrap() > 0, "{k}");
    }
    let after_load = m["after_load"]["rss_bytes"].as_u64().unwrap();
    let before = m["before"]["rss_bytes"].as_u64().unwrap();
    let after_unload = m["after_unload"]["rss_bytes"].as_u64().unwrap();
    assert!(
        after_load > before + 100_000_000,
        "the 4-bit weights are resident"
    );
    assert!(
        after_unload < before + 64_000_000,
        "unload gives the memory back"
    );
    assert!(m["peak_rss_bytes"].as_u64().unwrap() >= after_load);
    assert_eq!(v["inference"]["new_tokens"], 4);
}

#[test]
fn test_model_missing_weights_fails_with_json() {
    let out = surveil(
        &[
            "test-model",
            "--qwen",
            "--weights",
            "/nonexistent/qwen",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("/nonexistent/qwen") && err.contains("Qwen/Qwen2-VL-2B-Instruct"),
        "{err}"
    );
}

/// A failed `test-model --json` run: exit 1 and one JSON object with `ok: false` on stdout.
fn test_model_failure_json(out: &Output) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["ok"], false, "{v}");
    v
}

#[test]
fn test_model_undecodable_image_fails_with_json_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image\n").unwrap();
    let mut png = Vec::new();
    image::RgbImage::from_pixel(64, 64, image::Rgb([90, 120, 200]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    for file in [&text, &truncated] {
        let out = surveil(
            &[
                "test-model",
                "--git-base",
                "--weights",
                "dummy",
                "--infer",
                "--infer-image",
                file.to_str().unwrap(),
                "--json",
            ],
            &[],
        );
        let v = test_model_failure_json(&out);
        assert_eq!(v["stage"], "input", "{v}");
        assert_eq!(v["model"], "git-base-coco", "{v}");
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains("cannot decode"),
            "{err}"
        );
    }
}

#[test]
fn test_model_image_over_the_qwen_aspect_limit_fails_before_the_load() {
    // 4000x10 is a ratio of 400, Qwen2-VL's processor takes at most 200. The weights do not
    // exist: an error about the image, not about them, shows that nothing was loaded first.
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.png");
    image::RgbImage::from_pixel(4000, 10, image::Rgb([90, 120, 200]))
        .save(&wide)
        .unwrap();
    let out = surveil(
        &[
            "test-model",
            "--qwen",
            "--weights",
            "/nonexistent/qwen",
            "--infer",
            "--infer-image",
            wide.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let v = test_model_failure_json(&out);
    assert_eq!(v["stage"], "input", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains(wide.to_str().unwrap())
            && err.contains("4000x10")
            && err.contains("limit 200"),
        "{err}"
    );
    assert!(!err.contains("/nonexistent/qwen"), "{err}");
}

#[test]
fn test_model_text_report_says_the_stop_reason_in_words_in_aligned_columns() {
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--infer",
            "--infer-tokens",
            "2",
            "--ignore-eos",
        ],
        &[],
    );
    let text = common::ok_stdout(&out);
    assert!(text.contains("stop: max new tokens)"), "{text}");
    assert!(!text.contains("MaxNewTokens"), "{text}");
    // One line per storage type (f32, f16 and the 4-bit q4kx16 here): names left-aligned,
    // sizes and counts right-aligned, so every column ends at the same place.
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" tensors") || l.ends_with(" tensor"))
        .collect();
    assert!(rows.len() >= 3, "{text}");
    assert!(
        rows.iter().any(|r| r.trim_start().starts_with("q4kx16 ")),
        "{text}"
    );
    let end_of = |row: &str, word: &str| row.find(word).map(|i| i + word.len());
    let mb_ends: Vec<_> = rows.iter().map(|r| end_of(r, " MB")).collect();
    assert!(
        mb_ends.iter().all(|e| e.is_some() && *e == mb_ends[0]),
        "{text}"
    );
    let count_ends: Vec<_> = rows.iter().map(|r| end_of(r, " tensor")).collect();
    assert!(count_ends.iter().all(|e| *e == count_ends[0]), "{text}");
    let name_starts: Vec<_> = rows
        .iter()
        .map(|r| r.len() - r.trim_start().len())
        .collect();
    assert!(name_starts.iter().all(|s| *s == name_starts[0]), "{text}");
}

#[test]
fn test_model_zero_infer_tokens_is_a_usage_error() {
    // No token would mean no prefill either: nothing to report.
    let out = surveil(
        &[
            "test-model",
            "--git-base",
            "--weights",
            "dummy",
            "--infer",
            "--infer-tokens",
            "0",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--infer-tokens") && err.contains("1..="),
        "{err}"
    );
}

/// `surveil verdict parse` with `reply` on stdin.
fn verdict_parse(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
        .args(["verdict", "parse"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run surveil");
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

#[test]
fn verdict_parse_repairs_a_messy_reply() {
    let out = verdict_parse(
        &[],
        "<think>the coat bulges</think>\n```json\n{suspicion_level: 'élevé', action_type: 'concealment', confidence: '85%',}\n```",
    );
    let v = json(&out);
    assert_eq!(v["status"], "repaired");
    assert_eq!(v["suspicion_level"], "high");
    assert_eq!(v["action_type"], "item_concealment");
    assert!((v["confidence"].as_f64().unwrap() - 0.85).abs() < 1e-6);
    assert!(v["repairs"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("removed a code fence")));
}

#[test]
fn verdict_parse_strict_reply_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reply.txt");
    std::fs::write(
        &path,
        r#"{"suspicion_level":"low","action_type":"normal_shopping","confidence":0.9,"description":"A woman reads a label.","reasoning":"Nothing is hidden.","recommendations":[]}"#,
    )
    .unwrap();
    let v = json(&surveil(
        &["verdict", "parse", "--file", path.to_str().unwrap()],
        &[],
    ));
    assert_eq!(v["status"], "parsed");
    assert_eq!(v["description"], "A woman reads a label.");
}

#[test]
fn verdict_parse_failure_exits_1_with_json() {
    let out = verdict_parse(&[], "<think>The customer walks toward the");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "parse_failed");
    assert_eq!(v["raw"], "<think>The customer walks toward the");
    assert!(v["reason"].as_str().unwrap().contains("never closed"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be parsed"), "{stderr}");
}

#[test]
fn verdict_parse_lines_one_json_per_line() {
    let input = "{\"suspicion_level\":\"HIGH\",\"action_type\":\"theft\"}\n\n\
                 nothing to see here\n\
                 {'suspicion_level': 'faible', 'action_type': 'normal', 'confidence': 90}\n";
    let out = verdict_parse(&["--lines"], input);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["suspicion_level"], "high");
    assert_eq!(rows[0]["action_type"], "potential_theft");
    assert_eq!(rows[1]["status"], "parse_failed");
    assert_eq!(rows[2]["suspicion_level"], "low");
    assert!((rows[2]["confidence"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 3 replies"), "{stderr}");
    // The unreadable reply is on line 3 of the input (line 2 is blank).
    assert!(stderr.contains("lines 3"), "{stderr}");
}

#[test]
fn verdict_parse_missing_file_exits_2_naming_it() {
    let out = surveil(
        &["verdict", "parse", "--file", "/nonexistent/reply.txt"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/reply.txt"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn verdict_parse_help_has_examples() {
    let out = surveil(&["verdict", "parse", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("surveil verdict parse --lines"), "{help}");
    assert!(help.contains("--file"), "{help}");
}

#[test]
fn verdict_parse_closed_stdout_does_not_panic() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let line = "{\"suspicion_level\":\"medium\",\"action_type\":\"suspicious_movement\",\"confidence\":0.7,\"description\":\"walks back and forth\"}\n";
    let input = line.repeat(5000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
        .args(["verdict", "parse", "--lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the rest of the output hits a closed pipe.
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["status"], "repaired");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// The sample clip, once every file of [`CLI_ASSETS`] is there; `None` (skipped with a
/// message) on a developer's machine without them; a failure under CI.
fn run_assets() -> Option<std::path::PathBuf> {
    let dir = assets();
    let missing: Vec<String> = CLI_ASSETS
        .iter()
        .map(|rel| dir.join(rel))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(dir.join(CLI_ASSETS[0]));
    }
    eprintln!(
        "skipped: missing {} (run scripts/setup.sh)",
        missing.join(", ")
    );
    None
}

#[test]
fn run_git_dummy_end_to_end_json() {
    let Some(clip) = run_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--source",
            clip.to_str().unwrap(),
            "--weights",
            "dummy",
            "--max-frames",
            "8",
            "--output",
            out_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let summary = json(&out);
    assert_eq!(summary["frames"], 8);
    assert_eq!(summary["end_reason"], "max_frames");
    assert_eq!(summary["model"]["model"], "git-base-coco");
    assert_eq!(summary["model"]["weights"], "dummy");
    let snaps = summary["memory"]["snapshots"]["snapshots"]
        .as_array()
        .unwrap();
    let labels: Vec<&str> = snaps.iter().map(|s| s["label"].as_str().unwrap()).collect();
    for l in [
        "before_load",
        "after_load",
        "after_first_inference",
        "after_unload",
    ] {
        assert!(
            labels.contains(&l),
            "memory snapshot {l} missing: {labels:?}"
        );
    }
    let events = std::fs::read_to_string(out_dir.join("events.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let analyses: Vec<_> = lines.iter().filter(|e| e["kind"] == "analysis").collect();
    assert!(
        !analyses.is_empty(),
        "the first frame with people is analysed"
    );
    for a in analyses {
        assert_eq!(a["vlm"]["outcome"], "ok");
        assert_eq!(a["vlm_analysis"]["status"], "parsed");
        assert!(!a["vlm_analysis"]["description"]
            .as_str()
            .unwrap()
            .is_empty());
    }
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["frames"], 8);
}

#[test]
fn run_ctrl_c_mid_run_exits_0_with_summary_and_whole_lines() {
    let Some(clip) = run_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
        .args([
            "run",
            "--profile",
            "testing",
            "--source",
            clip.to_str().unwrap(),
            "--weights",
            "dummy",
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .env_remove("ENV")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until frames are being written, then interrupt as Ctrl-C does.
    let events = out_dir.join("events.jsonl");
    let start = std::time::Instant::now();
    loop {
        // Count frame events only: the file also holds other kinds of event, and its last line
        // may be half written while we read.
        let frames = std::fs::read_to_string(&events)
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|e| e["kind"] == "frame")
                    .count()
            })
            .unwrap_or(0);
        if frames >= 5 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "no frames after 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C is a clean stop");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["end_reason"], "interrupted");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(text.ends_with('\n'), "no half-written last line");
    let frames = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line parses"))
        .filter(|e| e["kind"] == "frame")
        .count() as u64;
    assert_eq!(summary["frames"], frames);
    assert!((5..795).contains(&frames), "{frames}");
}

/// One HTTP/1.1 GET of `path` on `addr`: `(status, content type, body)`.
fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// A scrape of `/metrics` on `addr`, parsed as Prometheus text.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, content_type, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the text format parses");
    // Every sample line was read as a sample: nothing the parser skipped.
    let sample_lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.contains("_bucket{"))
        .count();
    let histogram_lines: usize = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, prometheus_parse::Value::Histogram(_)))
        .count();
    assert_eq!(
        scrape.samples.len() - histogram_lines,
        sample_lines,
        "lines the parser did not read:\n{body}"
    );
    scrape
}

/// The value of the series `name` whose labels include `labels`, summed over the other labels;
/// `None` when there is no such series.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Frame events written to `events` so far.
fn frames_written(events: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(events).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("\"kind\":\"frame\""))
        .count()
}

#[test]
fn run_serves_prometheus_metrics_while_it_runs() {
    let Some(clip) = run_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let mut child = common::surveil_command(&[
        "run",
        "--profile",
        "testing",
        "--source",
        clip.to_str().unwrap(),
        "--weights",
        "dummy",
        "--camera",
        "aisle-1",
        "--output",
        out_dir.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // stderr is read on a thread (a full pipe would stall the run); lines come back here.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = std::time::Instant::now();
    let deadline = std::time::Duration::from_secs(300);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_sub(start.elapsed()))
            .expect("`metrics at http://...` on stderr");
        if let Some(url) = line.strip_prefix("metrics at http://") {
            let addr = url
                .strip_suffix("/metrics")
                .expect("the URL ends in /metrics");
            break addr.to_string();
        }
    };
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");

    // The endpoint answers while the model loads and the frames run: scrape until an
    // analysis has finished.
    let cam = ("camera", "aisle-1");
    let first = loop {
        let s = scrape(&addr);
        let frames = metric(&s, "surveil_frames_total", &[cam]).unwrap_or(0.0);
        let calls = metric(&s, "surveil_vlm_calls_total", &[cam]).unwrap_or(0.0);
        if frames >= 3.0 && calls >= 1.0 {
            break s;
        }
        assert!(
            start.elapsed() < deadline,
            "no analysis after {deadline:?} ({frames} frames)"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // Every frame counted was written to events.jsonl first.
    let frames = metric(&first, "surveil_frames_total", &[cam]).unwrap();
    let written = frames_written(&out_dir.join("events.jsonl"));
    assert!(frames <= written as f64, "{frames} > {written}");
    assert!(metric(&first, "surveil_camera_fps", &[cam]).unwrap() > 0.0);
    assert_eq!(
        metric(&first, "surveil_build_info", &[("profile", "testing")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &first,
            "surveil_model_info",
            &[
                ("model", "git-base-coco"),
                ("architecture", "git"),
                ("device", "cpu"),
                ("weights", "dummy")
            ]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &first,
            "surveil_model_resident_bytes",
            &[("model", "git-base-coco")]
        )
        .unwrap()
            > 1e6
    );
    assert!(metric(&first, "surveil_process_resident_bytes", &[]).unwrap() > 1e6);
    assert!(metric(&first, "surveil_process_virtual_bytes", &[]).unwrap() > 1e6);
    // No GPU here: no GPU series rather than zeros.
    assert_eq!(metric(&first, "surveil_gpu_allocated_bytes", &[]), None);
    // Events by kind and level: every frame event has a level.
    let frame_events = metric(&first, "surveil_events_total", &[cam, ("kind", "frame")]).unwrap();
    assert!(
        (frame_events - frames).abs() <= 1.0,
        "{frame_events} vs {frames}"
    );
    for level in ["normal", "attention", "alert", "critical"] {
        assert!(
            metric(
                &first,
                "surveil_events_total",
                &[cam, ("kind", "analysis"), ("level", level)]
            )
            .is_some(),
            "events of level {level} have a series from the start"
        );
    }
    // Each frame asked for an analysis or skipped it (a scrape may fall between the counters
    // of the frame being counted); the analysis seen finished ok.
    let requests = metric(&first, "surveil_vlm_requests_total", &[cam]).unwrap_or(0.0);
    let skips = metric(&first, "surveil_analyses_skipped_total", &[cam]).unwrap_or(0.0);
    assert!(
        (frame_events - (requests + skips)).abs() <= 1.0,
        "{frame_events} frame events, {requests} requests, {skips} skips"
    );
    assert!(requests >= 1.0);
    assert!(metric(&first, "surveil_vlm_calls_total", &[cam, ("outcome", "ok")]).unwrap() >= 1.0);
    let vlm_count = metric(&first, "surveil_vlm_seconds_count", &[cam]).unwrap();
    assert!(vlm_count >= 1.0);
    // Histograms: buckets with `le`, ending at +Inf with the count.
    let stage = first
        .samples
        .iter()
        .find(|s| {
            s.metric == "surveil_stage_seconds"
                && s.labels.get("camera") == Some("aisle-1")
                && s.labels.get("stage") == Some("frame")
        })
        .expect("the frame stage histogram");
    let prometheus_parse::Value::Histogram(buckets) = &stage.value else {
        panic!("{stage:?}")
    };
    let inf = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .expect("an +Inf bucket");
    assert_eq!(
        Some(inf.count),
        metric(
            &first,
            "surveil_stage_seconds_count",
            &[cam, ("stage", "frame")]
        )
    );
    assert!(inf.count >= 1.0);
    for family in [
        "surveil_frames_total",
        "surveil_stage_seconds",
        "surveil_vlm_calls_total",
        "surveil_process_resident_bytes",
    ] {
        assert!(first.docs.contains_key(family), "no HELP for {family}");
    }
    let (status, _, _) = http_get(&addr, "/");
    assert_eq!(status, 404);

    // A later scrape sees the run go on: counters only grow.
    let seen = frames;
    loop {
        let now = metric(&scrape(&addr), "surveil_frames_total", &[cam]).unwrap();
        assert!(now >= seen, "a counter went down: {seen} -> {now}");
        if now > seen {
            break;
        }
        assert!(start.elapsed() < deadline, "no frame after {seen}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    // The endpoint ended with the run.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn run_metrics_addr_in_use_fails_before_anything_is_written() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--weights",
            "dummy",
            "--source",
            dir.path().join("clip.mp4").to_str().unwrap(),
            "--output",
            out_dir.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
    assert!(
        !out_dir.exists(),
        "nothing written for a run that never started"
    );
}

#[test]
fn run_metrics_addr_that_is_not_ip_port_exits_2_naming_it() {
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--metrics-addr",
            "localhost:9464",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(err.contains("monitoring.metrics_addr"), "{err}");
    assert!(err.contains("--metrics-addr"), "{err}");
    assert!(err.contains("IP:PORT"), "{err}");
}

#[test]
fn run_refuses_an_output_folder_with_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.jsonl"), "keep\n").unwrap();
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--weights",
            "dummy",
            "--output",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("events.jsonl"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap(),
        "keep\n"
    );
}

#[test]
fn run_auto_weights_missing_suggests_dummy() {
    let Some(clip) = run_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--source",
            clip.to_str().unwrap(),
            "--output",
            dir.path().join("run").to_str().unwrap(),
        ],
        &[
            ("HF_HOME", dir.path().join("hf").to_str().unwrap()),
            ("HF_HUB_CACHE", dir.path().join("hf/hub").to_str().unwrap()),
            (
                "SURVEIL_MODEL_DIR",
                dir.path().join("models").to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--weights dummy"), "{err}");
    assert!(err.contains("searched"), "{err}");
}

#[test]
fn run_ctrl_c_while_the_model_loads_exits_0_at_once() {
    let Some(clip) = run_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
        .args([
            "run",
            "--profile",
            "testing",
            "--source",
            clip.to_str().unwrap(),
            "--weights",
            "dummy",
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .env_remove("ENV")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The run folder exists once the configuration is read and the handlers are in place;
    // the model (git-base-coco, dummy weights) takes seconds more to load.
    let start = std::time::Instant::now();
    while !out_dir.join("events.jsonl").exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["end_reason"], "interrupted");
    if summary["frames"] == 0 {
        // Stopped during the load: nothing analysed, nothing written.
        assert_eq!(
            std::fs::read_to_string(out_dir.join("events.jsonl")).unwrap(),
            ""
        );
    }
}

#[test]
fn run_sigterm_while_a_dead_camera_connects_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    // A loopback port with nothing listening: the camera never answers.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
        .args([
            "run",
            "--profile",
            "testing",
            "--weights",
            "dummy",
            "--source",
            &format!("rtsp://127.0.0.1:{port}/stream"),
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .env_remove("ENV")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = std::time::Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(10),
        "SIGTERM took {:?}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["end_reason"], "interrupted");
    assert_eq!(summary["frames"], 0);
}

#[test]
fn run_missing_source_fails_fast_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let start = std::time::Instant::now();
    let out = surveil(
        &[
            "run",
            "--profile",
            "testing",
            "--weights",
            "dummy",
            "--source",
            dir.path().join("no-such-clip.mp4").to_str().unwrap(),
            "--output",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-clip.mp4"));
    // The source is checked before the model is loaded, and the empty run folder is removed.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(!out_dir.exists());
}

#[test]
fn reports_to_a_closed_stdout_end_quietly_with_exit_0() {
    use std::process::Stdio;
    for args in [&["config", "show"][..], &["doctor"], &["models", "list"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_surveil"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command has written anything, as `| head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// A profiles folder with `shop.toml`: the `testing` profile and two cameras, `entrance` and
/// `till`, both on `clip`.
fn shop_profiles(clip: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let testing = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles/testing.toml"),
    )
    .unwrap();
    let source = clip.to_str().unwrap();
    std::fs::write(
        dir.path().join("shop.toml"),
        format!(
            "{testing}\n[[cameras]]\nname = \"entrance\"\nsource = {source:?}\n\n\
             [[cameras]]\nname = \"till\"\nsource = {source:?}\n\
             opening_hours = {{ open = \"00:00\", close = \"23:59\" }}\n\n\
             [[cameras.zones]]\nname = \"counter\"\ncoordinates = \"normalized\"\n\
             polygon = [[0, 0], [1, 0], [1, 1], [0, 1]]\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn run_serves_every_configured_camera_with_one_model() {
    let Some(clip) = run_assets() else { return };
    let profiles = shop_profiles(&clip);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = surveil(
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "run",
            "--profile",
            "shop",
            "--weights",
            "dummy",
            "--max-frames",
            "4",
            "--output",
            out_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let summary = json(&out);
    assert_eq!(summary["frames"], 8, "4 frames per camera");
    assert_eq!(summary["end_reason"], "max_frames");
    assert_eq!(summary["camera"], "entrance, till");
    for name in ["entrance", "till"] {
        let camera = &summary["cameras"][name];
        assert_eq!(camera["frames"], 4, "{name}: {camera}");
        assert_eq!(camera["end_reason"], "max_frames", "{name}");
        assert!(camera["source"].as_str().unwrap().ends_with("vtest.avi"));
        for key in [
            "fps",
            "frames_decoded",
            "frames_dropped",
            "analyses",
            "analyses_skipped",
        ] {
            assert!(camera[key].is_number(), "{name}: no {key} in {camera}");
        }
        assert!(camera["alerts_by_level"].is_object(), "{name}");
    }
    // One model for both cameras: one load cycle.
    assert_eq!(summary["model"]["model"], "git-base-coco");
    let labels: Vec<&str> = summary["memory"]["snapshots"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels.iter().filter(|l| **l == "after_load").count(),
        1,
        "{labels:?}"
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(out_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    for name in ["entrance", "till"] {
        let frames: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["kind"] == "frame" && e["camera"] == name)
            .collect();
        assert_eq!(frames.len(), 4, "{name}");
        // The inline zone of `till` covers its whole view; `entrance` has none.
        let in_zone = frames
            .iter()
            .flat_map(|e| e["tool_observations"].as_array().unwrap().iter())
            .any(|o| o["tool"] == "zones");
        assert_eq!(in_zone, name == "till", "{name}");
    }
    assert!(events
        .iter()
        .filter(|e| e["kind"] == "analysis")
        .all(|e| e["camera"] == "entrance" || e["camera"] == "till"));
}

#[test]
fn run_camera_picks_configured_cameras_and_names_the_unknown() {
    let Some(clip) = run_assets() else { return };
    let profiles = shop_profiles(&clip);
    let dir = tempfile::tempdir().unwrap();
    let run = |camera: &str, out_dir: &std::path::Path| {
        surveil(
            &[
                "--profiles-dir",
                profiles.path().to_str().unwrap(),
                "run",
                "--profile",
                "shop",
                "--weights",
                "dummy",
                "--max-frames",
                "2",
                "--camera",
                camera,
                "--output",
                out_dir.to_str().unwrap(),
                "--json",
            ],
            &[],
        )
    };
    let summary = json(&run("till", &dir.path().join("till")));
    assert_eq!(summary["camera"], "till");
    assert_eq!(summary["frames"], 2);
    let cameras: Vec<&String> = summary["cameras"].as_object().unwrap().keys().collect();
    assert_eq!(cameras, ["till"]);

    let out = run("back-door", &dir.path().join("none"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("back-door"), "{err}");
    assert!(err.contains("configured cameras: entrance, till"), "{err}");
    assert!(!dir.path().join("none").exists());
}

#[test]
fn run_without_a_model_detects_and_decides_by_the_rules_alone() {
    let Some(clip) = run_assets() else { return };
    let profiles = shop_profiles(&clip);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = surveil(
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "run",
            "--profile",
            "shop",
            "--no-vlm",
            "--max-frames",
            "30",
            "--output",
            out_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let summary = json(&out);
    assert_eq!(summary["frames"], 60, "30 frames per camera");
    assert!(summary["model"].is_null(), "{}", summary["model"]);
    assert!(summary["detections"].as_u64().unwrap() > 0);
    let vlm = &summary["vlm"];
    assert_eq!(vlm["calls_by_trigger"], serde_json::json!({}), "{vlm}");
    // The people on the clip make the trigger choose scenes; with no model they are skipped.
    assert!(
        vlm["skipped_by_reason"]["no_model"].as_u64().unwrap() >= 1,
        "{vlm}"
    );
    let events: Vec<serde_json::Value> = std::fs::read_to_string(out_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(events.len(), 60, "one event per frame, none from a model");
    assert!(events.iter().all(|e| e["vlm"].is_null()));
    assert!(events
        .iter()
        .any(|e| e["trigger"].as_str() == Some("skip:no_model")));
    // No load cycle to report.
    assert_eq!(
        summary["memory"]["snapshots"]["snapshots"],
        serde_json::json!([])
    );

    // --no-vlm and --weights contradict each other.
    let out = surveil(&["run", "--no-vlm", "--weights", "dummy"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_show_hides_camera_passwords() {
    let profiles = shop_profiles(std::path::Path::new(
        "rtsp://admin:hunter2@10.0.0.5:554/live",
    ));
    let dir = profiles.path().to_str().unwrap();
    let args = ["--profiles-dir", dir, "config", "show", "--profile", "shop"];
    let text = surveil(&args, &[]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert_eq!(
        shown(&text, "cameras[0].source").0,
        "rtsp://admin:***@10.0.0.5:554/live"
    );
    let shown_json = json(&surveil(&[&args[..], &["--json"]].concat(), &[]));
    assert_eq!(
        shown_json["cameras"][1]["source"],
        "rtsp://admin:***@10.0.0.5:554/live"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!shown_json.to_string().contains("hunter2"));
}

#[test]
fn config_show_lists_the_cameras() {
    let profiles = shop_profiles(std::path::Path::new("/srv/clips/shop.mp4"));
    let out = surveil(
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "config",
            "show",
            "--profile",
            "shop",
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\n[[cameras]]\n"), "{text}");
    let (name, origin) = shown(&text, "cameras[1].name");
    assert_eq!(name, "till");
    assert!(origin.contains("shop.toml"), "{origin}");
    assert_eq!(shown(&text, "cameras[0].source").0, "/srv/clips/shop.mp4");
    assert_eq!(shown(&text, "cameras[1].zones").0, "[counter]");
    let shown_json = json(&surveil(
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "config",
            "show",
            "--profile",
            "shop",
            "--json",
        ],
        &[],
    ));
    // The zone of a camera is that camera's once validated.
    assert_eq!(shown_json["cameras"][1]["zones"][0]["camera"], "till");
}
