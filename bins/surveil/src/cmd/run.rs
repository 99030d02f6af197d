//! `surveil run`: the surveillance pipeline (`surveil_orchestrator::run`) with a progress
//! display, signal handling and the summary on stdout. One camera (`--source`, or the sample
//! clip) or the configured cameras (`[[cameras]]`, all or those `--camera` picks).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use surveil_config::SystemConfig;
use surveil_models::LoadSummary;
use surveil_orchestrator::{
    CameraOptions, CameraProgress, CameraReading, EventSink, MetricsExporter, MetricsServer,
    ModelChoice, MqttPublisher, MqttStatsObserver, MultiCameraOptions, OrchestratorError,
    RunObserver, RunProgress, RunSummary, Stage,
};

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

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise. With
/// several cameras, the bar's message has each camera's frame rate and the plain report one
/// line per camera after the totals.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain_every: Duration,
    last_plain: Instant,
    quiet: bool,
    /// The latest progress of each camera, in run order (several cameras only).
    cameras: Vec<CameraProgress>,
    several: bool,
}

impl Progress {
    /// `entrance 4.1, till 3.9` (frames per second).
    fn camera_rates(&self) -> String {
        self.cameras
            .iter()
            .map(|c| format!("{} {:.1}", c.camera, c.fps))
            .collect::<Vec<_>>()
            .join(", ")
    }
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

    fn camera_opened(&mut self, camera: &str, description: &str, total: Option<u64>) {
        if !self.several {
            self.source_opened(description, total);
            return;
        }
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.reset_elapsed();
        }
        say!(
            "camera {camera}: source {description}{}",
            total.map_or(String::new(), |t| format!(" ({t} frames)"))
        );
    }

    fn camera_progress(&mut self, p: &CameraProgress) {
        if !self.several {
            return;
        }
        match self.cameras.iter_mut().find(|c| c.camera == p.camera) {
            Some(c) => *c = p.clone(),
            None => self.cameras.push(p.clone()),
        }
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
                let rates = if self.several {
                    format!(" ({})", self.camera_rates())
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{:.1} fps{rates}, {} analyses, {} alerts",
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
                    for c in &self.cameras {
                        let total = c.total_frames.map_or(String::new(), |t| format!("/{t}"));
                        say!(
                            "  {}: frames {}{total}, {:.1} fps, {} analyses ({} skipped), {} alerts",
                            c.camera,
                            c.frames,
                            c.fps,
                            c.analyses,
                            c.analyses_skipped,
                            c.alerts
                        );
                    }
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
    let cameras = cameras(config, args)?;
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
    let mut options = MultiCameraOptions::new(
        cameras,
        output_dir,
        args.detector_dir
            .clone()
            .unwrap_or_else(|| config.paths.asset(config.detection.model.asset_folder())),
    );
    options.max_frames = args.max_frames;
    options.analyst_grace = Duration::from_secs(10);
    let several = options.cameras.len() > 1;

    // Up before the model loads, so a scraper sees the run from its start.
    let metrics = config
        .monitoring
        .metrics_addr
        .map(|addr| start_metrics(&config.profile, addr))
        .transpose()
        .map_err(Failure::Runtime)?;

    // The MQTT publisher first: a password or CA file that cannot be read fails before any work.
    let mut mqtt = if config.mqtt.enabled {
        match MqttPublisher::start(&config.mqtt, |name| std::env::var(name).ok()) {
            Ok(publisher) => Some(publisher),
            Err(e @ OrchestratorError::Config(_)) => return Err(Failure::Usage(e.into())),
            Err(e) => return Err(Failure::Runtime(anyhow::Error::new(e).context("mqtt"))),
        }
    } else {
        None
    };

    install_signal_handlers();
    let quiet = cli.quiet;
    let terminal = std::io::stderr().is_terminal() && !quiet;
    let load = if args.no_vlm {
        None
    } else {
        crate::cmd::test_model::progress_bar(terminal)
    };
    let mut progress = Progress {
        bar: None,
        plain_every: Duration::from_secs(5),
        last_plain: Instant::now(),
        quiet,
        cameras: Vec::new(),
        several,
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
        metrics: Option<MetricsExporter>,
    }
    impl RunObserver for WithBar<'_> {
        fn model_loaded(&mut self, s: &LoadSummary) {
            if let Some(b) = self.load_bar.take() {
                b.finish_and_clear();
            }
            if let Some(m) = &self.metrics {
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
        fn camera_opened(&mut self, camera: &str, d: &str, total: Option<u64>) {
            if !self.inner.several {
                self.source_opened(d, total);
                return;
            }
            // One bar for every camera: its length is the sum of their frames, set by the
            // first frame's totals.
            if self.terminal && self.inner.bar.is_none() {
                let bar = indicatif::ProgressBar::new(0);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} frames {msg} ({elapsed})",
                ) {
                    bar.set_style(style);
                }
                self.inner.bar = Some(bar);
            }
            self.inner.camera_opened(camera, d, total);
        }
        fn frame_done(&mut self, p: &RunProgress) {
            self.inner.frame_done(p);
        }
        fn camera_progress(&mut self, p: &CameraProgress) {
            if let Some(m) = &self.metrics {
                m.record_camera_progress(
                    &p.camera,
                    &CameraReading {
                        frames: p.frames,
                        fps: p.fps,
                        frames_dropped: p.frames_dropped,
                        queue_depth: p.queue_depth.unwrap_or(0),
                    },
                );
            }
            self.inner.camera_progress(p);
        }
        fn stage_timed(&mut self, camera: &str, stage: Stage, took: Duration) {
            if let Some(m) = &self.metrics {
                m.record_stage(camera, stage, took);
            }
        }
        fn analysis_queue(&mut self, pending: usize) {
            if let Some(m) = &self.metrics {
                m.record_queue(pending);
            }
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
        metrics: metrics.as_ref().map(|(m, _)| m.clone()),
    };
    if !quiet {
        let cameras = if several {
            let names: Vec<&str> = options.cameras.iter().map(|c| c.name.as_str()).collect();
            format!(", cameras {}", names.join(", "))
        } else {
            String::new()
        };
        let model = if args.no_vlm {
            "none (--no-vlm)".to_string()
        } else {
            format!("{} ({})", config.vlm.primary_model, config.vlm.weights)
        };
        say!(
            "surveil run: profile {}, model {model}{cameras}, output {}",
            config.profile,
            options.output_dir.display()
        );
    }
    if let (Some((_, server)), false) = (&metrics, quiet) {
        say!("metrics at {}", server.url());
    }
    let mut stats;
    let observer_for_run: &mut dyn RunObserver = match mqtt.as_ref().map(MqttPublisher::handle) {
        Some(handle) => {
            let every = Duration::from_secs_f64(config.mqtt.stats_interval_seconds);
            stats = MqttStatsObserver::new(&mut observer, handle, every);
            &mut stats
        }
        None => &mut observer,
    };
    let mut metrics_sink = metrics.as_ref().map(|(m, _)| m.clone());
    let mut sinks: Vec<&mut dyn EventSink> = Vec::new();
    if let Some(m) = mqtt.as_mut() {
        sinks.push(m);
    }
    if let Some(m) = metrics_sink.as_mut() {
        sinks.push(m);
    }
    let result = surveil_orchestrator::run_with_sinks(
        config,
        &options,
        if args.no_vlm {
            ModelChoice::None
        } else {
            ModelChoice::FromConfig(load_fn)
        },
        stop.clone(),
        observer_for_run,
        &mut sinks,
    );
    drop(sinks);
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

/// `attention 49, normal 31`, or `none`.
fn events_by_level(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
        let levels = events_by_level(&s.alerts_by_level);
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
        // With several cameras, one line each after the totals.
        let mut per_camera = String::new();
        if s.cameras.len() > 1 {
            for (name, c) in &s.cameras {
                let levels = events_by_level(&c.alerts_by_level);
                per_camera.push_str(&format!(
                    "\n  {name}: {} frames ({:.2} fps), {} VLM analyses ({} skipped), events: {}; ended: {}{}",
                    c.frames,
                    c.fps,
                    c.analyses,
                    c.analyses_skipped,
                    levels,
                    c.end_reason,
                    c.error.as_ref().map_or(String::new(), |e| format!(" ({e})"))
                ));
            }
        }
        let mqtt = s.sinks.get("mqtt").map_or(String::new(), |m| {
            format!(
                "\nmqtt {}: {} published, {} dropped, {} reconnect(s)",
                m["broker"].as_str().unwrap_or("?"),
                m["published"],
                m["dropped"],
                m["reconnects"]
            )
        });
        writeln!(
            out,
            "{} frames in {:.1} s ({:.2} fps), {} tracks ({} people), {} VLM calls, events: {}; ended: {}{per_camera}{losses}{mqtt}\nwritten: {}",
            s.frames,
            s.duration_s,
            s.fps,
            s.tracks,
            s.person_tracks,
            calls,
            levels,
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

/// The cameras of the run: the `--source` camera (named by `--camera`, default `camera-1`),
/// else the configured cameras (all, or those `--camera` picks), else the sample clip.
fn cameras(config: &SystemConfig, args: &RunArgs) -> Result<Vec<CameraOptions>, Failure> {
    let one_name = || match args.camera.as_slice() {
        [] => Ok("camera-1".to_string()),
        [name] => Ok(name.clone()),
        names => Err(Failure::Usage(anyhow::anyhow!(
            "--camera is given {} times, but {} is one camera; several cameras come from \
             [[cameras]] in a profile (then leave --source out)",
            names.len(),
            if args.source.is_some() {
                "--source"
            } else {
                "the sample clip"
            }
        ))),
    };
    if let Some(source) = &args.source {
        let name = one_name()?;
        // A configured camera of that name keeps its zones, hours, rate and size.
        let mut camera = match config.camera(&name) {
            Some(c) => CameraOptions::from_config(c),
            None => CameraOptions::new(name, source.clone()),
        };
        camera.source = source.clone();
        return Ok(vec![camera]);
    }
    if config.cameras.is_empty() {
        let sample = config.paths.asset("video/vtest.avi");
        if !sample.is_file() {
            return Err(Failure::Usage(anyhow::anyhow!(
                "no --source given, no [[cameras]] configured, and the sample clip {} is missing (run scripts/setup.sh, or pass --source PATH|URL)",
                sample.display()
            )));
        }
        return Ok(vec![CameraOptions::new(
            one_name()?,
            sample.display().to_string(),
        )]);
    }
    if args.camera.is_empty() {
        return Ok(config
            .cameras
            .iter()
            .map(CameraOptions::from_config)
            .collect());
    }
    let configured = || {
        config
            .cameras
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut picked: Vec<CameraOptions> = Vec::with_capacity(args.camera.len());
    for name in &args.camera {
        let Some(camera) = config.camera(name) else {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--camera {name}: no such camera in profile {}; configured cameras: {}",
                config.profile,
                configured()
            )));
        };
        if picked.iter().any(|c| c.name == *name) {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--camera {name} is given twice"
            )));
        }
        picked.push(CameraOptions::from_config(camera));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::events_by_level;

    #[test]
    fn events_by_level_says_none_rather_than_nothing() {
        let mut counts = std::collections::BTreeMap::new();
        assert_eq!(events_by_level(&counts), "none");
        counts.insert("normal".to_string(), 31);
        counts.insert("attention".to_string(), 49);
        assert_eq!(events_by_level(&counts), "attention 49, normal 31");
    }
}
