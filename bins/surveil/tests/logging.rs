//! Which log lines reach stderr: `SURVEIL_LOG` > `-q`/`-v` > the configuration's
//! `output.log_level` (with `LOG_LEVEL` and the profile; raised by `output.debug`) > `warn`
//! (docs/configuration.md, "Logging").

use std::path::Path;
use std::process::Output;

mod common;
use common::{in_ci, stderr, surveil};

/// A quick command that loads the configuration and logs at every level from surveil's crates:
/// a dummy git-base checkpoint loaded and unloaded (under a second, no files needed). DEBUG lines
/// come from `surveil_memory` (snapshots), INFO lines from `surveil_models` (loading).
const LOAD: &[&str] = &["test-model", "--git-base", "--weights", "dummy"];

/// `LOAD` after the `global` flags, with `--profile profile` and `env`; it must succeed.
fn load_model(global: &[&str], profile: &str, env: &[(&str, &str)]) -> Output {
    let mut args: Vec<&str> = global.to_vec();
    args.extend_from_slice(LOAD);
    args.extend_from_slice(&["--profile", profile]);
    let out = surveil(&args, env);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// How many stderr lines are log lines of `level` (`DEBUG`, `INFO`, `WARN`, `ERROR`).
fn lines_at(out: &Output, level: &str) -> usize {
    let tag = format!(" {level} ");
    stderr(out).lines().filter(|l| l.contains(&tag)).count()
}

#[test]
fn log_level_from_the_environment_shows_debug_lines() {
    // `production` logs at warn: nothing from a clean load.
    let quiet = load_model(&[], "production", &[]);
    assert_eq!(lines_at(&quiet, "DEBUG"), 0, "{}", stderr(&quiet));
    assert_eq!(lines_at(&quiet, "INFO"), 0, "{}", stderr(&quiet));

    let out = load_model(&[], "production", &[("LOG_LEVEL", "debug")]);
    assert!(lines_at(&out, "DEBUG") > 0, "{}", stderr(&out));
    assert!(lines_at(&out, "INFO") > 0, "{}", stderr(&out));

    // DEBUG=1 means at least debug; the profile's own debug level applies with no variable.
    let out = load_model(&[], "production", &[("DEBUG", "1")]);
    assert!(lines_at(&out, "DEBUG") > 0, "{}", stderr(&out));
    let out = load_model(&[], "testing", &[]);
    assert!(lines_at(&out, "DEBUG") > 0, "{}", stderr(&out));
}

#[test]
fn surveil_log_wins_over_flags_and_the_configuration() {
    let out = load_model(
        &[],
        "testing",
        &[("SURVEIL_LOG", "error"), ("LOG_LEVEL", "debug")],
    );
    assert_eq!(stderr(&out), "", "SURVEIL_LOG=error hides everything else");

    let out = load_model(&["-q"], "production", &[("SURVEIL_LOG", "debug")]);
    assert!(lines_at(&out, "DEBUG") > 0, "{}", stderr(&out));

    // Blank is unset; an invalid filter is named and ignored, and the configuration decides.
    let out = load_model(&[], "production", &[("SURVEIL_LOG", " ")]);
    assert_eq!(stderr(&out), "");
    let out = load_model(
        &[],
        "production",
        &[("SURVEIL_LOG", "surveil=loud"), ("LOG_LEVEL", "debug")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("WARN") && err.contains("SURVEIL_LOG=\"surveil=loud\""),
        "{err}"
    );
    assert!(lines_at(&out, "DEBUG") > 0, "{err}");
}

#[test]
fn flags_win_over_a_profile_debug_level() {
    // `testing` sets log_level = "debug" and debug = true.
    let out = load_model(&["-q"], "testing", &[]);
    assert_eq!(stderr(&out), "", "-q: errors only");
    let out = load_model(
        &["-q"],
        "testing",
        &[("LOG_LEVEL", "trace"), ("DEBUG", "1")],
    );
    assert_eq!(stderr(&out), "", "-q over the environment too");

    let out = load_model(&["-v"], "testing", &[]);
    assert!(lines_at(&out, "INFO") > 0, "{}", stderr(&out));
    assert_eq!(lines_at(&out, "DEBUG"), 0, "-v is info: {}", stderr(&out));
}

#[test]
fn commands_without_a_configuration_keep_the_flag_and_env_level() {
    // `memory` reads no configuration: LOG_LEVEL does not apply, SURVEIL_LOG does.
    let out = surveil(&["memory"], &[("LOG_LEVEL", "debug"), ("DEBUG", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let out = surveil(&["memory"], &[("SURVEIL_LOG", "debug")]);
    assert!(lines_at(&out, "DEBUG") > 0, "{}", stderr(&out));
}

#[test]
fn an_invalid_log_level_is_a_configuration_error() {
    for (env, set, origin) in [
        (vec![("LOG_LEVEL", "loud")], None, "env LOG_LEVEL"),
        (
            vec![],
            Some("output.log_level=loud"),
            "flag --set output.log_level",
        ),
    ] {
        let mut args = vec!["config", "show"];
        if let Some(s) = set {
            args.extend(["--set", s]);
        }
        let out = surveil(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("output.log_level"), "{err}");
        assert!(err.contains("`loud`"), "{err}");
        assert!(err.contains(origin), "{err}");
        assert!(
            err.contains("error, warn, info, debug, trace"),
            "allowed values: {err}"
        );
    }
}

/// A detect run on one image that logs a warning (a snapshot of a frame the run never reaches),
/// or `None` (skipped) without the detector and the image.
fn warning_run(dir: &Path, env: &[(&str, &str)]) -> Option<Output> {
    let image = surveil_config::paths::asset("images/basketball1.png");
    let detector = surveil_config::paths::asset("yolov3-tiny/yolov3-tiny.weights");
    if !(image.is_file() && detector.is_file()) {
        assert!(
            !in_ci(),
            "{} or {} missing under CI (scripts/setup.sh fetches them)",
            image.display(),
            detector.display()
        );
        eprintln!("skipped: detector or sample image missing (run scripts/setup.sh)");
        return None;
    }
    let output = dir.join("t.jsonl");
    let snapshot = format!("5:{}", dir.join("never.png").display());
    let out = surveil(
        &[
            "detect",
            "--source",
            &image.display().to_string(),
            "--output",
            &output.display().to_string(),
            "--snapshot",
            &snapshot,
        ],
        env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(output.is_file());
    Some(out)
}

#[test]
fn log_level_error_hides_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // The default profile (`development`) logs at debug: the warning shows.
    let Some(out) = warning_run(dir.path(), &[]) else {
        return;
    };
    assert!(lines_at(&out, "WARN") > 0, "{}", stderr(&out));
    let out = warning_run(dir.path(), &[("LOG_LEVEL", "error")]).unwrap();
    assert_eq!(
        stderr(&out),
        "",
        "LOG_LEVEL=error wins over the profile's debug = true"
    );
    let out = warning_run(dir.path(), &[("LOG_LEVEL", "warn"), ("DEBUG", "0")]).unwrap();
    assert!(lines_at(&out, "WARN") > 0, "{}", stderr(&out));
    assert_eq!(lines_at(&out, "DEBUG"), 0, "{}", stderr(&out));
}
