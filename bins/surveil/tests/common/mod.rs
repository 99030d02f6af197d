//! Helpers shared by the CLI test files: running the binary in a clean configuration
//! environment, reading its output, and the CI policy for missing assets.
// Each test file uses a different subset.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Variables that change the configuration or the model search; removed from every run so the
/// caller's shell cannot leak into a test.
const CONFIG_VARS: &[&str] = &[
    "ENV",
    "VLM_MODEL",
    "VLM_DEVICE",
    "LOAD_IN_4BIT",
    "VLM_4BIT",
    "ENABLE_FALLBACK",
    "DISABLE_MONITORING",
    "MAX_CONCURRENT_TOOLS",
    "ORCHESTRATION_MODE",
    "LOG_LEVEL",
    "DEBUG",
    "SURVEIL_PROFILES_DIR",
];

/// The binary with `args`, the configuration variables of the caller's shell removed, to be
/// spawned by the caller.
pub fn surveil_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surveil"));
    cmd.args(args);
    for var in CONFIG_VARS {
        cmd.env_remove(var);
    }
    // A log filter of the caller's shell would override the level a test expects.
    cmd.env_remove("SURVEIL_LOG");
    // Generic `SURVEIL_<SECTION>__<FIELD>` variables of the caller's shell too.
    for (var, _) in std::env::vars() {
        if var.starts_with("SURVEIL_") && var.contains("__") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Run the binary with `args`, the configuration variables of the caller's shell removed and
/// `env` set.
pub fn surveil(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = surveil_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run surveil")
}

/// The process's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stdout of a successful run (a failure otherwise, with stderr).
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stdout of a successful run, parsed as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(out)).expect("stdout is JSON")
}

/// `(value, origin)` of `key` in the text of `surveil config show`, whose lines read
/// `  vlm.primary_model   git-base-coco   # env VLM_MODEL`.
pub fn shown(text: &str, key: &str) -> (String, String) {
    for line in text.lines() {
        let Some((left, origin)) = line.split_once('#') else {
            continue;
        };
        let mut words = left.split_whitespace();
        if words.next() == Some(key) {
            let value: Vec<&str> = words.collect();
            return (value.join(" "), origin.trim().to_string());
        }
    }
    panic!("no line for {key} in:\n{text}");
}

/// Whether this is a CI run: `CI` set to a non-empty value other than `false` or `0`. Under CI
/// a missing asset or fixture fails the test that needs it instead of skipping it.
pub fn in_ci() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = ci.trim();
    !(ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false"))
}
