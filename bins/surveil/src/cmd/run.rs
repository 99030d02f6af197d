//! `surveil run`: the surveillance pipeline (`surveil_orchestrator::run`) with a progress
//! display, signal handling and the summary on stdout.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use surveil_models::LoadSummary;
use surveil_orchestrator::{
    EventSink, MetricsExporter, MetricsServer, ModelChoice, RunObserver, RunOptions, RunProgress,
    RunSummary,
};
use surveil_vision::FfmpegOptions;

use crate::cli::{Cli, RunArgs};
use crate::Failure;

/// `eprintln!` that ignores a closed stderr instead of panicking: the run's progress is not
/// worth losing the run over.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Set by the signal handler; the pipeline polls it.
static STOP: AtomicBool = AtomicBool::new(false);

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

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain_every: Duration,
    last_plain: Instant,
    quiet: bool,
}

impl RunObserver for Progress {
    fn model_loaded(&mut self, s: &LoadSummary) {
        if self.quiet {
            return;
        }
        say!(
            "model {} on {} ({}), {:.1} s, {:.2} GB resident",
            s.model,
            s.device,
            s.weights,
            s.load_seconds,
            s.report.total_bytes() as f64 / 1e9
        );
    }

    fn source_opened(&mut self, description: &str, total: Option<u64>) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total.unwrap_or(0));
            bar.reset_elapsed();
        }
        say!(
            "source {description}{}",
            total.map_or(String::new(), |t| format!(" ({t} frames)"))
        );
    }

    fn frame_done(&mut self, p: &RunProgress) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => {
                if let Some(t) = p.total_frames {
                    bar.set_length(t);
                }
                bar.set_position(p.frames);
                bar.set_message(format!(
                    "{:.1} fps, {} analyses, {} alerts",
                    p.fps, p.analyses, p.alerts
                ));
            }
            None => {
                if self.last_plain.elapsed() >= self.plain_every {
                    self.last_plain = Instant::now();
                    let total = p.total_frames.map_or(String::new(), |t| format!("/{t}"));
                    say!(
                        "frames {}{total}, {:.1} fps, {} analyses, {} alerts, {:.0} s",
                        p.frames,
                        p.fps,
                        p.analyses,
                        p.alerts,
                        p.elapsed_s
                    );
                }
            }
        }
    }
}

fn default_output(base: &std::path::Path) -> PathBuf {
    let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
    let mut dir = base.join(format!("run-{stamp}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("run-{stamp}-{n}"));
    }
    dir
}

/// `surveil run`
pub fn run(cli: &Cli, args: &RunArgs) -> Result<(), Failure> {
    let mut flags = Vec::new();
    if let Some(w) = &args.weights {
        flags.push(("vlm.weights", w.clone(), "--weights"));
    }
    if let Some(a) = &args.metrics_addr {
        flags.push(("monitoring.metrics_addr", a.clone(), "--metrics-addr"));
    }
    let loaded = crate::cmd::config::load(cli, &args.config, &flags)?;
    let config = &loaded.config;
    if args.max_frames == Some(0) {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--max-frames 0: nothing to analyse (give at least 1)"
        )));
    }
    let source = match &args.source {
        Some(s) => s.clone(),
        None => {
            let sample = config.paths.asset("video/vtest.avi");
            if !sample.is_file() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "no --source given and the sample clip {} is missing (run scripts/setup.sh, or pass --source PATH|URL)",
                    sample.display()
                )));
            }
            sample.display().to_string()
        }
    };
    let output_dir = match &args.output {
        Some(d) => {
            if d.join("events.jsonl").exists() {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "{} already holds a run's events.jsonl; choose another --output",
                    d.display()
                )));
            }
            d.clone()
        }
        None => default_output(&config.output.directory),
    };
    let options = RunOptions {
        source,
        camera: args.camera.clone().unwrap_or_else(|| "camera-1".into()),
        max_frames: args.max_frames,
        output_dir,
        detector_dir: args
            .detector_dir
            .clone()
            .unwrap_or_else(|| config.paths.asset(config.detection.model.asset_folder())),
        ffmpeg: FfmpegOptions::default(),
        analyst_grace: Duration::from_secs(10),
    };

    // Up before the model loads, so a scraper sees the run from its start.
    let metrics = config
        .monitoring
        .metrics_addr
        .map(|addr| start_metrics(&config.profile, addr))
        .transpose()
        .map_err(Failure::Runtime)?;

    install_signal_handlers();
    let quiet = cli.quiet;
    let terminal = std::io::stderr().is_terminal() && !quiet;
    let load = crate::cmd::test_model::progress_bar(terminal);
    let mut progress = Progress {
        bar: None,
        plain_every: Duration::from_secs(5),
        last_plain: Instant::now(),
        quiet,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Forward the signal flag to the pipeline's stop flag.
    let forward = stop.clone();
    let forwarder_done = Arc::new(AtomicBool::new(false));
    let forwarder_done2 = forwarder_done.clone();
    let forwarder = std::thread::spawn(move || {
        while !forwarder_done2.load(Ordering::SeqCst) {
            if STOP.load(Ordering::SeqCst) {
                forward.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });

    struct WithBar<'a> {
        inner: &'a mut Progress,
        load_bar: Option<indicatif::ProgressBar>,
        terminal: bool,
        metrics: Option<(MetricsExporter, &'a str)>,
    }
    impl RunObserver for WithBar<'_> {
        fn model_loaded(&mut self, s: &LoadSummary) {
            if let Some(b) = self.load_bar.take() {
                b.finish_and_clear();
            }
            if let Some((m, _)) = &self.metrics {
                m.record_load(s);
            }
            self.inner.model_loaded(s);
        }
        fn source_opened(&mut self, d: &str, total: Option<u64>) {
            if self.terminal {
                let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} frames {msg} ({elapsed})",
                ) {
                    bar.set_style(style);
                }
                self.inner.bar = Some(bar);
            }
            self.inner.source_opened(d, total);
        }
        fn frame_done(&mut self, p: &RunProgress) {
            if let Some((m, camera)) = &self.metrics {
                m.record_progress(camera, p);
            }
            self.inner.frame_done(p);
        }
    }
    let (load_bar_handle, load_fn) = match load {
        Some((b, f)) => (Some(b), Some(f)),
        None => (None, None),
    };
    let mut observer = WithBar {
        inner: &mut progress,
        load_bar: load_bar_handle,
        terminal,
        metrics: metrics
            .as_ref()
            .map(|(m, _)| (m.clone(), options.camera.as_str())),
    };
    if !quiet {
        say!(
            "surveil run: profile {}, model {} ({}), output {}",
            config.profile,
            config.vlm.primary_model,
            config.vlm.weights,
            options.output_dir.display()
        );
    }
    if let (Some((_, server)), false) = (&metrics, quiet) {
        say!("metrics at {}", server.url());
    }
    let mut metrics_sink = metrics.as_ref().map(|(m, _)| m.clone());
    let mut sinks: Vec<&mut dyn EventSink> = Vec::new();
    if let Some(m) = metrics_sink.as_mut() {
        sinks.push(m);
    }
    let result = surveil_orchestrator::run_with_sinks(
        config,
        &options,
        ModelChoice::FromConfig(load_fn),
        stop.clone(),
        &mut observer,
        &mut sinks,
    );
    if let Some(b) = observer.load_bar.take() {
        b.finish_and_clear();
    }
    if let Some(bar) = progress.bar.take() {
        bar.finish_and_clear();
    }
    forwarder_done.store(true, Ordering::SeqCst);
    let _ = forwarder.join();
    if let Some((_, server)) = metrics {
        server.stop();
    }
    let summary = result.context("surveil run")?;
    print_summary(&summary, args.json, quiet)?;
    Ok(())
}

/// The exporter of the run and its endpoint on `addr`.
fn start_metrics(
    profile: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(MetricsExporter, MetricsServer)> {
    let exporter = MetricsExporter::new(profile)?;
    // The error names the address and the OS's reason.
    let server = exporter.serve(addr)?;
    Ok((exporter, server))
}

fn print_summary(s: &RunSummary, json: bool, quiet: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_string_pretty(s)
            .context("serializing the summary")
            .map(|t| writeln!(out, "{t}"))?
    } else {
        if quiet {
            return Ok(());
        }
        let levels: Vec<String> = s
            .alerts_by_level
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let calls: u64 = s.vlm.calls_by_trigger.values().sum();
        let mut losses = Vec::new();
        if s.frames_skipped > 0 {
            losses.push(format!(
                "{} unreadable input(s) skipped (see the warnings)",
                s.frames_skipped
            ));
        }
        if s.frames_dropped > 0 {
            losses.push(format!(
                "{} frame(s) dropped by the decode queue",
                s.frames_dropped
            ));
        }
        let losses = if losses.is_empty() {
            String::new()
        } else {
            format!("\nnot analysed: {}", losses.join("; "))
        };
        writeln!(
            out,
            "{} frames in {:.1} s ({:.2} fps), {} tracks ({} people), {} VLM calls, events: {}; ended: {}{losses}\nwritten: {}",
            s.frames,
            s.duration_s,
            s.fps,
            s.tracks,
            s.person_tracks,
            calls,
            levels.join(", "),
            s.end_reason,
            s.output_dir.display()
        )
    };
    match written {
        // A closed stdout (`| head`) is not a failure of the run.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout").map_err(Failure::Runtime),
    }
}
