//! A user's files are never lost: `models synth` does not overwrite a checkpoint (nor write
//! through the links of a Hugging Face cache snapshot), `detect` never truncates a previous
//! output on a bad option or a failed run, and logs stay plain text off a terminal.

use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn surveil_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surveil"));
    cmd.args(args);
    for var in ["ENV", "SURVEIL_LOG", "NO_COLOR", "VLM_MODEL", "VLM_DEVICE"] {
        cmd.env_remove(var);
    }
    cmd
}

fn surveil(args: &[&str]) -> Output {
    surveil_cmd(args).output().expect("run surveil")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn asset(rel: &str) -> PathBuf {
    surveil_config::paths::asset(rel)
}

/// The sample clip and the detector, or `None` (skipped with a message) on a developer's machine
/// without them; a failure under `CI=true`.
fn detect_assets() -> Option<PathBuf> {
    let clip = asset("video/vtest.avi");
    if clip.is_file() && asset("yolov3-tiny").is_dir() && asset("images").is_dir() {
        return Some(clip);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("sample clip or detector missing under CI=true (scripts/setup.sh fetches them)");
    }
    eprintln!("skipped: sample clip or detector missing (run scripts/setup.sh)");
    None
}

// ---------------------------------------------------------------------------------------------
// models synth

#[test]
fn synth_refuses_a_directory_holding_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    let files = [
        ("config.json", b"{\"real\": true}\n".to_vec()),
        ("model.safetensors", vec![7u8; 4096]),
        ("tokenizer.json", b"{\"model\": {}}".to_vec()),
        ("notes.txt", b"mine".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(ckpt.join(name), bytes).unwrap();
    }
    let out = surveil(&[
        "models",
        "synth",
        "git-base-coco",
        "--out",
        ckpt.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(ckpt.to_str().unwrap()),
        "names the directory: {err}"
    );
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(err.contains(name), "names {name}: {err}");
    }
    assert!(err.contains("--force"), "says how to override: {err}");
    for (name, bytes) in &files {
        assert_eq!(
            &std::fs::read(ckpt.join(name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }
    assert_eq!(
        names(&ckpt),
        [
            "config.json",
            "model.safetensors",
            "notes.txt",
            "tokenizer.json"
        ],
        "nothing added"
    );
}

/// A Hugging Face cache entry as `huggingface_hub` lays it out: snapshot files are relative
/// links into `../../blobs/`.
struct HfSnapshot {
    blobs: Vec<(PathBuf, Vec<u8>)>,
    snapshot: PathBuf,
}

fn hf_snapshot(hub: &Path) -> HfSnapshot {
    let repo = hub.join("models--microsoft--git-base-coco");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let snapshot = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    let mut blobs = Vec::new();
    for (name, blob, bytes) in [
        (
            "config.json",
            "aa11",
            b"{\"model_type\": \"git\"}\n".to_vec(),
        ),
        ("model.safetensors", "bb22", vec![42u8; 8192]),
        ("tokenizer.json", "cc33", b"{\"model\": {}}".to_vec()),
    ] {
        let path = repo.join("blobs").join(blob);
        std::fs::write(&path, &bytes).unwrap();
        symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
        blobs.push((path, bytes));
    }
    HfSnapshot { blobs, snapshot }
}

#[test]
fn synth_force_in_a_cache_snapshot_replaces_links_and_never_touches_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let hf = hf_snapshot(&dir.path().join("hub"));
    let snap = hf.snapshot.to_str().unwrap();

    // Without --force: refused, nothing changes.
    let out = surveil(&["models", "synth", "git-base-coco", "--out", snap]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = surveil(&[
        "models",
        "synth",
        "git-base-coco",
        "--out",
        snap,
        "--force",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (blob, bytes) in &hf.blobs {
        assert_eq!(
            &std::fs::read(blob).unwrap(),
            bytes,
            "{} was written through its link",
            blob.display()
        );
    }
    for name in ["config.json", "model.safetensors"] {
        let meta = std::fs::symlink_metadata(hf.snapshot.join(name)).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{name} is now a regular file, not a link"
        );
    }
    assert!(
        std::fs::symlink_metadata(hf.snapshot.join("tokenizer.json"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "files synth does not write are left as they were"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let written = std::fs::read(hf.snapshot.join("model.safetensors")).unwrap();
    assert_eq!(report["file_bytes"].as_u64().unwrap(), written.len() as u64);
    assert_eq!(
        report["replaced"],
        serde_json::json!(["config.json", "model.safetensors", "tokenizer.json"])
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.snapshot.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "git");
    assert_eq!(
        names(&hf.snapshot),
        ["config.json", "model.safetensors", "tokenizer.json"],
        "no temporary file left"
    );
}

#[test]
fn synth_into_a_fresh_directory_writes_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("new/dummy");
    let out = surveil(&[
        "models",
        "synth",
        "git-base-coco",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(names(&out_dir), ["config.json", "model.safetensors"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(out_dir.join("model.safetensors")).unwrap();
    assert_eq!(report["file_bytes"].as_u64().unwrap(), bytes.len() as u64);
    // A safetensors header: little-endian length, then JSON naming every tensor.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(
        header.as_object().unwrap().len() as u64,
        report["tensors"].as_u64().unwrap()
    );
    // Same permissions as any file the user creates there (not the 0600 of temporary files).
    use std::os::unix::fs::PermissionsExt;
    let probe = out_dir.join("probe");
    std::fs::File::create(&probe).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out_dir.join("model.safetensors")), mode(&probe));
    assert_eq!(mode(&out_dir.join("config.json")), mode(&probe));
}

// ---------------------------------------------------------------------------------------------
// detect

const PREVIOUS: &str = "{\"frame\":0,\"track_id\":1,\"note\":\"a previous good run\"}\n";

#[test]
fn detect_bad_options_exit_2_and_leave_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    std::fs::write(&tracks, PREVIOUS).unwrap();
    // The clip need not exist: options are checked before the source is opened.
    let clip = asset("video/vtest.avi");
    let missing_dir_png = format!("1:{}", dir.path().join("no/such/dir/f.png").display());
    let bad: [&[&str]; 14] = [
        &["--snapshot", "bad"],
        &["--snapshot", "x:f.png"],
        &["--snapshot", "3:"],
        &["--snapshot", &missing_dir_png],
        &["--batch", "0"],
        &["--batch", "65"],
        &["--fps", "0"],
        &["--fps", "-5"],
        &["--fps", "nan"],
        &["--width", "0"],
        &["--height", "0"],
        &["--max-frames", "0"],
        &["--set", "detection.confidence=7"],
        &["--set", "tracker.track_buffer=-1"],
    ];
    for extra in bad {
        let mut args = vec![
            "detect",
            "--source",
            clip.to_str().unwrap(),
            "--output",
            tracks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = surveil(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(&tracks).unwrap(),
            PREVIOUS,
            "{extra:?} touched the previous output"
        );
        assert_eq!(names(dir.path()), ["tracks.jsonl"], "{extra:?}");
    }
    // An output that is a directory is refused before the run, not after it.
    let out = surveil(&[
        "detect",
        "--source",
        clip.to_str().unwrap(),
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn detect_missing_source_leaves_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    std::fs::write(&tracks, PREVIOUS).unwrap();
    let out = surveil(&[
        "detect",
        "--source",
        dir.path().join("no-such-clip.avi").to_str().unwrap(),
        "--output",
        tracks.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&tracks).unwrap(), PREVIOUS);
    assert_eq!(names(dir.path()), ["tracks.jsonl"]);
}

/// Files in `dir` named `PREFIX*.partial`.
fn partials(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with(".partial"))
        .map(|n| dir.join(n))
        .collect()
}

#[test]
fn detect_failing_midway_keeps_the_previous_output_and_the_partial_one() {
    let Some(clip) = detect_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    std::fs::write(&tracks, PREVIOUS).unwrap();
    // The run fails while writing: files of this process may not grow past 3000 bytes (the
    // sample clip gives ~600 bytes of tracks per frame), so a write fails with EFBIG after a
    // few frames, as on a full disk.
    let mut cmd = surveil_cmd(&[
        "detect",
        "--source",
        clip.to_str().unwrap(),
        "--output",
        tracks.to_str().unwrap(),
        "--max-frames",
        "60",
    ]);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 3000,
                rlim_max: 3000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // EFBIG as an error instead of the default SIGXFSZ kill.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        std::fs::read_to_string(&tracks).unwrap(),
        PREVIOUS,
        "the previous output was replaced by a failed run: {err}"
    );
    let kept = partials(dir.path(), "tracks.jsonl.");
    assert_eq!(kept.len(), 1, "{:?}", names(dir.path()));
    assert!(
        err.contains(kept[0].to_str().unwrap()),
        "the error names the partial output: {err}"
    );
    let text = std::fs::read_to_string(&kept[0]).unwrap();
    assert!(text.len() >= 1000, "the frames analysed are kept: {text}");
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["frame"].as_u64().unwrap() < 10, "{first}");
    assert_eq!(first["class"], "person");
}

#[test]
fn detect_success_replaces_outputs_never_writing_through_links() {
    let Some(clip) = detect_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    // tracks.jsonl and the snapshot are links to files that must stay as they are.
    let precious = dir.path().join("precious.jsonl");
    std::fs::write(&precious, PREVIOUS).unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    symlink(&precious, &tracks).unwrap();
    let precious_png = dir.path().join("precious.png");
    std::fs::write(&precious_png, b"not a png").unwrap();
    let png = dir.path().join("f1.png");
    symlink(&precious_png, &png).unwrap();
    let out = surveil(&[
        "detect",
        "--source",
        clip.to_str().unwrap(),
        "--output",
        tracks.to_str().unwrap(),
        "--max-frames",
        "3",
        "--snapshot",
        &format!("1:{}", png.display()),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), PREVIOUS);
    assert_eq!(std::fs::read(&precious_png).unwrap(), b"not a png");
    assert!(std::fs::symlink_metadata(&tracks)
        .unwrap()
        .file_type()
        .is_file());
    let text = std::fs::read_to_string(&tracks).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        summary["lines_written"].as_u64().unwrap()
    );
    assert!(text.lines().count() >= 3, "{text}");
    let img = std::fs::read(&png).unwrap();
    assert_eq!(&img[1..4], b"PNG");
    assert_eq!(
        names(dir.path()),
        ["f1.png", "precious.jsonl", "precious.png", "tracks.jsonl"],
        "no temporary file left"
    );
}

/// Kills the child when a failed assertion unwinds past it (no run left behind).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn detect_ctrl_c_is_a_success_that_replaces_the_output() {
    let Some(clip) = detect_assets() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    std::fs::write(&tracks, PREVIOUS).unwrap();
    let mut guard = KillOnDrop(Some(
        surveil_cmd(&[
            "detect",
            "--source",
            clip.to_str().unwrap(),
            "--output",
            tracks.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    ));
    let pid = guard.0.as_ref().unwrap().id();
    // Wait until tracks reach the partial file, then interrupt as Ctrl-C does.
    let start = Instant::now();
    loop {
        let written: u64 = partials(dir.path(), "tracks.jsonl.")
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        if written > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no tracks written after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The previous output is untouched while the run goes on.
    assert_eq!(std::fs::read_to_string(&tracks).unwrap(), PREVIOUS);
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&tracks).unwrap();
    assert_ne!(text, PREVIOUS);
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["class"], "person");
    }
    assert_eq!(names(dir.path()), ["tracks.jsonl"]);
}

#[test]
fn detect_ctrl_c_while_a_camera_does_not_answer_ends_with_a_message_and_no_child() {
    // The detector must load before the source is opened.
    if detect_assets().is_none() {
        return;
    }
    // A port nobody listens on: the live source retries with backoff and never connects.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/stream");
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks.jsonl");
    std::fs::write(&tracks, PREVIOUS).unwrap();
    let mut guard = KillOnDrop(Some(
        surveil_cmd(&[
            "detect",
            "--source",
            &url,
            "--output",
            tracks.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    ));
    let pid = guard.0.as_ref().unwrap().id();
    // Let it fail to connect at least once and enter the backoff.
    std::thread::sleep(Duration::from_secs(3));
    let interrupted = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        interrupted.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        interrupted.elapsed()
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("interrupted while opening"), "{err}");
    assert_eq!(std::fs::read_to_string(&tracks).unwrap(), PREVIOUS);
    assert_eq!(names(dir.path()), ["tracks.jsonl"]);
    // No ffmpeg child of that run is left behind.
    let needle = format!("127.0.0.1:{port}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("ffmpeg") && c.contains(&needle))
        .collect();
    assert!(left.is_empty(), "ffmpeg left running: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// logs

/// A detect run on one image that logs a warning (a snapshot of a frame the run never reaches).
fn warning_run_args(dir: &Path) -> Option<Vec<String>> {
    detect_assets()?;
    Some(vec![
        "detect".into(),
        "--source".into(),
        asset("images/basketball1.png").display().to_string(),
        "--output".into(),
        dir.join("t.jsonl").display().to_string(),
        "--snapshot".into(),
        format!("5:{}", dir.join("never.png").display()),
    ])
}

#[test]
fn logs_are_plain_text_when_stderr_is_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let Some(args) = warning_run_args(dir.path()) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = surveil(&args);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("WARN"), "a warning is logged: {err}");
    assert!(
        !err.contains("\x1b["),
        "colour codes in piped logs: {err:?}"
    );
}

/// Runs `args` with stderr on a pseudo-terminal (util-linux `script`) and returns what the
/// terminal showed, or `None` when `script` is not installed.
fn on_a_terminal(args: &[String], no_color: Option<&str>) -> Option<String> {
    let line = std::iter::once(env!("CARGO_BIN_EXE_surveil").to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("SURVEIL_LOG")
        .env_remove("NO_COLOR")
        .env_remove("ENV")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().ok()?;
    assert!(out.status.success(), "{}", stderr(&out));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let Some(args) = warning_run_args(dir.path()) else {
        return;
    };
    let Some(coloured) = on_a_terminal(&args, None) else {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    };
    assert!(coloured.contains("WARN"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "colour on a terminal: {coloured:?}"
    );
    let plain = on_a_terminal(&args, Some("1")).unwrap();
    assert!(plain.contains("WARN"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR=1 ignored: {plain:?}");
}
