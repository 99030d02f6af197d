//! `surveil memory`: RAM (cgroup-aware), swap, the memory of every running `surveil` process
//! and GPU memory, once or every `--watch` seconds — surveil's answer to
//! `watch -n 1 'nvidia-smi && free -h'`.
//!
//! The figures come from `surveil_memory`: [`HostMemory`] (`MemTotal`, `MemAvailable` lowered
//! by the tightest cgroup limit), [`SwapMemory`], [`processes_named`] and [`GpuMemory::query`]
//! (which never creates a CUDA context, so it never takes device memory itself).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use surveil_memory::gpu::{GpuDeviceMemory, GpuMemory};
use surveil_memory::host::{processes_named, NamedProcess, SwapMemory};
use surveil_memory::system::HostMemory;
use surveil_memory::units::{format_size, GIB};

use crate::cli::MemoryArgs;
use crate::Failure;

/// The executable name whose processes are counted as surveil's.
const SURVEIL_EXECUTABLE: &str = "surveil";

/// Set by SIGINT/SIGTERM; the watch loop stops at the next check.
static STOP: AtomicBool = AtomicBool::new(false);

/// How often the signal flag is checked while the watch loop waits.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Parses `--watch SECONDS`: a finite number of seconds above 0 (fractions allowed).
pub fn parse_watch_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!(
            "the interval must be a number of seconds above 0, not `{text}`"
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` seconds is too long"))
}

/// One reading of every figure; one JSON object (one JSONL line with `--watch --json`).
#[derive(Debug, Serialize)]
struct Sample {
    /// When the figures were read, RFC 3339 UTC with milliseconds.
    time: String,
    ram: Ram,
    swap: SwapMemory,
    surveil: Surveil,
    gpus: Vec<Gpu>,
    /// Why there are no GPU figures; `null` when the driver answered.
    gpu_unavailable: Option<String>,
}

#[derive(Debug, Serialize)]
struct Ram {
    /// `MemTotal`.
    total_bytes: u64,
    /// What a new allocation can use: `MemAvailable`, or what the tightest cgroup limit leaves
    /// when that is lower.
    available_bytes: u64,
    /// `MemTotal − MemAvailable`, as `free` counts it.
    used_bytes: u64,
    /// The tightest cgroup memory limit, when the process is under one.
    cgroup_limit_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Surveil {
    /// Sum of the RSS of the processes below.
    rss_bytes: u64,
    /// Every running `surveil` process, this one included, with its program and subcommand.
    processes: Vec<NamedProcess>,
}

#[derive(Debug, Serialize)]
struct Gpu {
    /// CUDA ordinal (`cuda:N`).
    ordinal: usize,
    name: String,
    total_bytes: u64,
    /// In use by any process (`total − free`); `null` when the driver gave no free figure.
    used_bytes: Option<u64>,
    /// Free on the device; `null` when unknown (this process holds no CUDA context there).
    free_bytes: Option<u64>,
}

impl From<&GpuDeviceMemory> for Gpu {
    fn from(d: &GpuDeviceMemory) -> Gpu {
        Gpu {
            ordinal: d.ordinal,
            name: d.name.clone(),
            total_bytes: d.total_bytes,
            used_bytes: d.reserved_bytes,
            free_bytes: d.free_bytes,
        }
    }
}

/// Reads every figure once.
fn sample() -> anyhow::Result<Sample> {
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let host = HostMemory::read().context("reading system memory")?;
    let swap = SwapMemory::read().context("reading swap")?;
    let processes = processes_named(SURVEIL_EXECUTABLE).context("listing the surveil processes")?;
    let gpu = GpuMemory::query();
    Ok(Sample {
        time,
        ram: Ram {
            total_bytes: host.total_bytes,
            available_bytes: host.effective_available_bytes(),
            used_bytes: host.total_bytes.saturating_sub(host.available_bytes),
            cgroup_limit_bytes: host.cgroup.as_ref().map(|c| c.limit_bytes),
        },
        swap,
        surveil: Surveil {
            rss_bytes: processes.iter().map(|p| p.rss_bytes).sum(),
            processes,
        },
        gpus: gpu.devices().iter().map(Gpu::from).collect(),
        gpu_unavailable: gpu.unavailable_reason().map(str::to_string),
    })
}

/// `surveil memory`
pub fn run(args: &MemoryArgs) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    let Some(interval) = args.watch else {
        let s = sample()?;
        let text = if args.json {
            serde_json::to_string_pretty(&s).context("formatting JSON")?
        } else {
            report(&s)
        };
        write_out(&mut out, &text)?;
        return Ok(());
    };

    install_signal_handlers();
    let mut next = Instant::now();
    let mut first = true;
    while !STOP.load(Ordering::SeqCst) {
        let s = sample()?;
        let mut text = String::new();
        if args.json {
            text.push_str(&serde_json::to_string(&s).context("formatting JSON")?);
        } else {
            if first {
                if let Some(reason) = &s.gpu_unavailable {
                    text.push_str(&format!("GPU: unavailable: {reason}\n"));
                }
                text.push_str(&watch_header(&s));
                text.push('\n');
            }
            text.push_str(&watch_line(&s));
        }
        first = false;
        if !write_out(&mut out, &text)? {
            // The reader went away (`| head -3`): stop quietly.
            return Ok(());
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            // Sampling took longer than the interval: start the next one now, don't catch up.
            next = now;
        }
        while !STOP.load(Ordering::SeqCst) {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(SIGNAL_POLL));
        }
    }
    tracing::info!("interrupted; stopping");
    Ok(())
}

/// Writes `text` and a newline and flushes; `false` when stdout was closed by the reader.
fn write_out(out: &mut impl Write, text: &str) -> Result<bool, Failure> {
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}

/// `12.3 GiB`: GiB with one decimal, as `free -h` prints.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// The one-shot human report: an aligned RAM/swap block like `free -h`, the surveil processes,
/// then one line per GPU (or why there is none).
fn report(s: &Sample) -> String {
    let mut lines = vec![
        format!("{:<9}{:>11}{:>11}{:>11}", "", "total", "used", "available"),
        format!(
            "{:<9}{:>11}{:>11}{:>11}",
            "Mem:",
            gib(s.ram.total_bytes),
            gib(s.ram.used_bytes),
            gib(s.ram.available_bytes)
        ),
        format!(
            "{:<9}{:>11}{:>11}{:>11}",
            "Swap:",
            gib(s.swap.total_bytes),
            gib(s.swap.used_bytes),
            gib(s.swap.free_bytes())
        ),
        format!(
            "{:<9}{:>11} in {} process{}",
            "surveil:",
            gib(s.surveil.rss_bytes),
            s.surveil.processes.len(),
            if s.surveil.processes.len() == 1 {
                ""
            } else {
                "es"
            }
        ),
    ];
    for p in &s.surveil.processes {
        lines.push(format!(
            "  pid {:<8}{:>10}  {}",
            p.pid,
            format_size(p.rss_bytes),
            p.argv.join(" ")
        ));
    }
    if let Some(limit) = s.ram.cgroup_limit_bytes {
        lines.push(format!(
            "cgroup limit {}: available is what the limit leaves",
            gib(limit)
        ));
    }
    match &s.gpu_unavailable {
        Some(reason) => lines.push(format!("GPU: unavailable: {reason}")),
        None => lines.extend(s.gpus.iter().map(gpu_line)),
    }
    lines.join("\n")
}

fn gpu_line(g: &Gpu) -> String {
    match (g.used_bytes, g.free_bytes) {
        (Some(used), Some(free)) => format!(
            "cuda:{} {}: used {}, free {}, total {}",
            g.ordinal,
            g.name,
            gib(used),
            gib(free),
            gib(g.total_bytes)
        ),
        _ => format!(
            "cuda:{} {}: total {}; used and free unknown (no CUDA context in this process)",
            g.ordinal,
            g.name,
            gib(g.total_bytes)
        ),
    }
}

/// Column titles of `--watch` lines; one GPU column per device of the first sample.
fn watch_header(s: &Sample) -> String {
    let mut line = format!(
        "{:<10}{:>11}{:>11}{:>11}{:>11}",
        "time", "mem used", "available", "swap used", "surveil"
    );
    for g in &s.gpus {
        line.push_str(&format!(
            "  {:>22}",
            format!("cuda:{} used/total", g.ordinal)
        ));
    }
    line
}

/// One `--watch` line, local time first.
fn watch_line(s: &Sample) -> String {
    let mut line = format!(
        "{:<10}{:>11}{:>11}{:>11}{:>11}",
        jiff::Zoned::now().strftime("%H:%M:%S").to_string(),
        gib(s.ram.used_bytes),
        gib(s.ram.available_bytes),
        gib(s.swap.used_bytes),
        gib(s.surveil.rss_bytes)
    );
    for g in &s.gpus {
        let used = g.used_bytes.map_or_else(
            || "?".to_string(),
            |u| format!("{:.1}", u as f64 / GIB as f64),
        );
        let pair = format!("{used}/{:.1} GiB", g.total_bytes as f64 / GIB as f64);
        line.push_str(&format!("  {pair:>22}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_interval_accepts_positive_seconds_only() {
        assert_eq!(parse_watch_interval("0.3"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_watch_interval("2"), Ok(Duration::from_secs(2)));
        for bad in ["0", "-1", "-0.5", "NaN", "inf", "1e300", "abc", ""] {
            assert!(parse_watch_interval(bad).is_err(), "{bad} accepted");
        }
        let message = parse_watch_interval("0").unwrap_err();
        assert!(message.contains("above 0"), "{message}");
    }

    fn sample_with(gpus: Vec<Gpu>, reason: Option<&str>) -> Sample {
        Sample {
            time: "2025-01-02T03:04:05.678Z".to_string(),
            ram: Ram {
                total_bytes: 16 * GIB,
                available_bytes: 6 * GIB + GIB / 2,
                used_bytes: 9 * GIB + GIB / 2,
                cgroup_limit_bytes: None,
            },
            swap: SwapMemory {
                total_bytes: 2 * GIB,
                used_bytes: GIB / 4,
            },
            surveil: Surveil {
                rss_bytes: 3 * GIB,
                processes: vec![NamedProcess {
                    pid: 42,
                    rss_bytes: 3 * GIB,
                    argv: vec!["surveil".into(), "run".into()],
                }],
            },
            gpus,
            gpu_unavailable: reason.map(str::to_string),
        }
    }

    #[test]
    fn report_is_an_aligned_gib_block() {
        let text = report(&sample_with(Vec::new(), Some("no driver")));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "               total       used  available");
        assert_eq!(lines[1], "Mem:        16.0 GiB    9.5 GiB    6.5 GiB");
        assert_eq!(lines[2], "Swap:        2.0 GiB    0.2 GiB    1.8 GiB");
        assert_eq!(lines[3], "surveil:     3.0 GiB in 1 process");
        assert_eq!(lines[4], "  pid 42         3.0 GiB  surveil run");
        assert_eq!(lines[5], "GPU: unavailable: no driver");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn gpu_lines_say_what_is_known() {
        let known = Gpu {
            ordinal: 0,
            name: "H200".into(),
            total_bytes: 140 * GIB,
            used_bytes: Some(20 * GIB),
            free_bytes: Some(120 * GIB),
        };
        let unknown = Gpu {
            ordinal: 1,
            name: "H200".into(),
            total_bytes: 140 * GIB,
            used_bytes: None,
            free_bytes: None,
        };
        let s = sample_with(vec![known, unknown], None);
        let text = report(&s);
        assert!(text.ends_with(
            "cuda:0 H200: used 20.0 GiB, free 120.0 GiB, total 140.0 GiB\n\
             cuda:1 H200: total 140.0 GiB; used and free unknown (no CUDA context in this process)"
        ));
        let header = watch_header(&s);
        let line = watch_line(&s);
        assert!(
            header.ends_with("cuda:0 used/total       cuda:1 used/total"),
            "{header}"
        );
        assert!(
            line.ends_with("20.0/140.0 GiB             ?/140.0 GiB"),
            "{line}"
        );
        assert_eq!(header.len(), line.len(), "\n{header}\n{line}");
    }

    #[test]
    fn sample_json_shape() {
        let v = serde_json::to_value(sample_with(Vec::new(), Some("no driver"))).unwrap();
        assert_eq!(v["gpus"], serde_json::json!([]));
        assert_eq!(v["gpu_unavailable"], "no driver");
        assert_eq!(v["ram"]["total_bytes"], 16 * GIB);
        assert_eq!(v["swap"]["used_bytes"], GIB / 4);
        assert_eq!(
            v["surveil"]["processes"][0],
            serde_json::json!({"pid": 42, "rss_bytes": 3 * GIB, "argv": ["surveil", "run"]})
        );
    }
}
