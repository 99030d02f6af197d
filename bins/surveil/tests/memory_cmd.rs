//! `surveil memory` as a user runs it: the JSON report, `--watch` until a signal, a closed
//! stdout, usage errors.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

fn surveil() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surveil"));
    cmd.env_remove("SURVEIL_LOG");
    cmd
}

fn memory_json() -> serde_json::Value {
    let out = surveil().args(["memory", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Waits for the child to end, killing it (and failing) after `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surveil memory still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `surveil memory` with `args` for about `run_for`, then sends `sig`.
fn watch_until_signal(args: &[&str], run_for: Duration, sig: libc::c_int) -> Output {
    let mut child = surveil()
        .arg("memory")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(run_for);
    signal(&child, sig);
    let status = wait_within(&mut child, Duration::from_secs(10));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn json_reports_ram_swap_gpu_and_the_running_surveil_processes() {
    let mut watcher = surveil()
        .args(["memory", "--watch", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its first line is printed once it runs: by then it is in /proc under its own name.
    let mut first = String::new();
    BufReader::new(watcher.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "the watcher printed nothing");

    let v = memory_json();
    signal(&watcher, libc::SIGTERM);
    let status = wait_within(&mut watcher, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));

    let total = v["ram"]["total_bytes"].as_u64().unwrap();
    let available = v["ram"]["available_bytes"].as_u64().unwrap();
    let used = v["ram"]["used_bytes"].as_u64().unwrap();
    assert!(total >= available && available > 0, "{v}");
    assert!(used < total, "{v}");
    let swap_total = v["swap"]["total_bytes"].as_u64().unwrap();
    assert!(
        v["swap"]["used_bytes"].as_u64().unwrap() <= swap_total,
        "{v}"
    );

    let processes = v["surveil"]["processes"].as_array().unwrap();
    let watcher_entry = processes
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(watcher.id())))
        .unwrap_or_else(|| panic!("watcher {} not listed: {v}", watcher.id()));
    assert!(watcher_entry["rss_bytes"].as_u64().unwrap() > 0);
    // Program and subcommand only: `--watch 0.2` is not shown.
    let argv: Vec<&str> = watcher_entry["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(argv, [env!("CARGO_BIN_EXE_surveil"), "memory"]);
    // The reporting process lists itself too.
    assert!(processes.len() >= 2, "{v}");
    let sum: u64 = processes
        .iter()
        .map(|p| p["rss_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["surveil"]["rss_bytes"].as_u64(), Some(sum));

    // This test machine has no GPU figures; the report says why instead.
    let gpus = v["gpus"].as_array().unwrap();
    if gpus.is_empty() {
        let reason = v["gpu_unavailable"].as_str().unwrap();
        assert!(!reason.is_empty());
    } else {
        assert!(v["gpu_unavailable"].is_null());
        for g in gpus {
            assert!(g["total_bytes"].as_u64().unwrap() > 0);
        }
    }
    assert!(v["time"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .is_ok());
}

#[test]
fn human_report_is_an_aligned_block() {
    let out = surveil().arg("memory").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["total", "used", "available"]
    );
    assert!(lines[1].starts_with("Mem:"), "{text}");
    assert!(lines[2].starts_with("Swap:"), "{text}");
    // Columns end where the titles end.
    assert_eq!(lines[0].len(), lines[1].len(), "{text}");
    assert_eq!(lines[1].len(), lines[2].len(), "{text}");
    assert!(lines[1].ends_with(" GiB"), "{text}");
    assert!(lines[3].starts_with("surveil:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("GPU: unavailable: ") || l.starts_with("cuda:")),
        "{text}"
    );
}

#[test]
fn watch_stops_on_sigint_with_exit_0() {
    let out = watch_until_signal(&["--watch", "0.3"], Duration::from_secs(1), libc::SIGINT);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("GPU:")).collect();
    // Header, then a line at 0, 0.3, 0.6 and 0.9 s (give or take the start-up).
    assert!(lines.len() >= 3, "{stdout}");
    assert!(lines[0].starts_with("time"), "{stdout}");
    for line in &lines[1..] {
        assert_eq!(line.len(), lines[0].len(), "{stdout}");
        assert!(line.matches("GiB").count() >= 4, "{stdout}");
    }
}

#[test]
fn watch_json_is_jsonl_with_utc_time_and_stops_on_sigterm() {
    let out = watch_until_signal(
        &["--watch", "0.3", "--json"],
        Duration::from_secs(1),
        libc::SIGTERM,
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut times = Vec::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let time = v["time"].as_str().unwrap().to_string();
        assert!(time.ends_with('Z'), "{time}");
        times.push(time.parse::<jiff::Timestamp>().unwrap());
        assert!(v["ram"]["total_bytes"].as_u64().unwrap() > 0);
    }
    assert!(times.len() >= 2, "{stdout}");
    // Lines about 0.3 s apart.
    let gap = times[1].duration_since(times[0]);
    assert!(
        gap >= jiff::SignedDuration::from_millis(250) && gap < jiff::SignedDuration::from_secs(2),
        "{gap:?}"
    );
}

#[test]
fn zero_negative_or_nan_interval_is_a_usage_error() {
    for bad in [
        "--watch=0",
        "--watch=-1",
        "--watch=NaN",
        "--watch=inf",
        "--watch=soon",
    ] {
        let out = surveil().args(["memory", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--watch"), "{bad}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad}");
    }
}

#[test]
fn closed_stdout_ends_quietly_with_exit_0() {
    let mut child = surveil()
        .args(["memory", "--watch", "0.05", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -3`: read three lines, then close the pipe.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with('{'), "{line}");
    }
    drop(reader);
    let status = wait_within(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
}
