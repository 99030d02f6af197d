//! The surveillance pipeline of `surveil run`: the only module that knows every stage.
//!
//! decode → detect/track ([`DetectTrackStream`]) → [`Scene`] → behaviour tools
//! ([`ToolRunner`]) → [`Trigger`] → [`Analyst`] (the VLM, on its own thread) → [`decide`] →
//! sinks (`events.jsonl`, annotated alert frames, `summary.json`).
//!
//! The per-frame loop never waits for the VLM: scenes go to the analyst through its one-slot
//! hand-off and verdicts come back as separate analysis events. A stop request (Ctrl-C,
//! SIGTERM) ends the loop after the current frame; the analysis in flight is abandoned at its
//! next checkpoint, the model is unloaded, and the summary is written.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;
use surveil_config::{SystemConfig, ZoneConfig, ZoneCoordinates};
use surveil_memory::{MemoryReport, MemorySampler, SamplerConfig};
use surveil_models::generation::{GenerationParams, Sampling};
use surveil_models::load::manager::{LoadOptions, LoadSummary, ProgressFn};
use surveil_models::vlm::Vlm;
use surveil_vision::{
    DarknetYolo, DetectTrackStream, FfmpegOptions, Frame, PipelineOptions, TrackedFrame,
    TrackedObject, TrackerParams, YoloOptions,
};

use crate::analyst::{AnalysisJob, AnalysisResult, Analyst, AnalystConfig};
use crate::decision::{decide, AlertLevel, ClockTime, Decision, DecisionInput, DecisionPolicy};
use crate::event::{Event, EventKind, EventTrack, ToolFailureRecord, VlmOutcome};
use crate::metrics::{MemoryPoint, MetricsSummary, RunMetrics, Stage};
use crate::prompt::{user_prompt, PromptContext, TrackNote, SYSTEM_PROMPT};
use crate::scene::{ObjectKind, Scene, SceneObject};
use crate::sink::{
    draw_level, draw_polygon, write_atomic, write_json_atomic, EventSink, JsonlSink,
};
use crate::tools::{Cue, Observation, ToolReport, ToolRunner};
use crate::trigger::{Trigger, TriggerDecision, TriggerSettings};
use crate::verdict::ParsedVerdict;
use crate::{OrchestratorError, Result};

/// What to run on, and where to write.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Video file, rtsp:// or http(s):// URL, image folder, or image.
    pub source: String,
    /// Camera name recorded in events and used to pick zones.
    pub camera: String,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// The run folder (created; must not hold a previous run's `events.jsonl`).
    pub output_dir: PathBuf,
    /// Directory with the detector's `.cfg`, `.weights` and class names.
    pub detector_dir: PathBuf,
    /// Decoding options of ffmpeg sources.
    pub ffmpeg: FfmpegOptions,
    /// How long the end of the run waits for the analyst, at most, after a stop request (the
    /// analysis in flight is abandoned at its next checkpoint). At the end of the source the
    /// analysis in flight may finish: the wait is this plus `orchestration.vlm_timeout_seconds`.
    pub analyst_grace: Duration,
}

impl RunOptions {
    /// Options for `source` written into `output_dir`, with the detector files in
    /// `detector_dir` (`surveil_config::paths::asset("yolov3-tiny")` after `scripts/setup.sh`),
    /// and what `surveil run` uses for the rest: camera `camera-1`, no frame limit, default
    /// ffmpeg decoding, 10 s of grace for the analyst.
    pub fn new(
        source: impl Into<String>,
        output_dir: impl Into<PathBuf>,
        detector_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            source: source.into(),
            camera: "camera-1".to_string(),
            max_frames: None,
            output_dir: output_dir.into(),
            detector_dir: detector_dir.into(),
            ffmpeg: FfmpegOptions::default(),
            analyst_grace: Duration::from_secs(10),
        }
    }
}

/// Progress of a run, given to the observer after every frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunProgress {
    /// Frames analysed.
    pub frames: u64,
    /// Frames the source holds, when known.
    pub total_frames: Option<u64>,
    /// Frames per second since the first frame.
    pub fps: f64,
    /// Events at level alert or critical so far.
    pub alerts: u64,
    /// VLM analyses finished so far.
    pub analyses: u64,
    /// Seconds since the first frame.
    pub elapsed_s: f64,
    /// Frames waiting in the decode queue after this frame was taken.
    pub queue_depth: u32,
}

/// Receives what a run does as it goes (progress bars, logs). Every method has a no-op default.
pub trait RunObserver {
    /// The model is resident.
    fn model_loaded(&mut self, summary: &LoadSummary) {
        let _ = summary;
    }
    /// The source is open.
    fn source_opened(&mut self, description: &str, total_frames: Option<u64>) {
        let _ = (description, total_frames);
    }
    /// A frame was analysed.
    fn frame_done(&mut self, progress: &RunProgress) {
        let _ = progress;
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl RunObserver for NoObserver {}

/// VLM calls by how they ended, and skipped analyses by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VlmCounts {
    /// Calls made, by trigger reason.
    pub calls_by_trigger: BTreeMap<String, u64>,
    /// Calls finished, by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Frames on which no analysis was asked, by the trigger's reason.
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Scenes handed over but never analysed (replaced by a newer one, or the run ended).
    pub dropped: u64,
}

/// Memory of the run: the model's load cycle and the monitor.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySummary {
    /// Snapshots before load, after load, after the first inference, after unload, with the
    /// deltas between them (JSON: `{"snapshots": [...], "deltas": [...]}`); `None` (`null`)
    /// when the run stopped before a model was loaded.
    pub snapshots: Option<MemoryReport>,
    /// Highest RSS the kernel saw for the process (`VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Profile name.
    pub profile: String,
    /// Camera name.
    pub camera: String,
    /// Source (credentials redacted).
    pub source: String,
    /// The run folder.
    pub output_dir: PathBuf,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub finished_at: String,
    /// Wall time of the frame loop, seconds.
    pub duration_s: f64,
    /// Why the run ended: `end_of_source`, `max_frames`, `interrupted`, `error`.
    pub end_reason: String,
    /// The error that ended the run, if one did.
    pub error: Option<String>,
    /// Frames analysed.
    pub frames: u64,
    /// Frames decoded by the source.
    pub frames_decoded: u64,
    /// Frames dropped by the decode queue (live sources under load).
    pub frames_dropped: u64,
    /// Inputs the source could not decode and skipped with a warning (an image folder's
    /// unreadable images).
    pub frames_skipped: u64,
    /// Frames per second over the loop.
    pub fps: f64,
    /// Detections over all frames.
    pub detections: u64,
    /// Distinct track ids seen.
    pub tracks: u64,
    /// Distinct person track ids seen.
    pub person_tracks: u64,
    /// The model: id, device, load time, bytes resident.
    pub model: Option<LoadSummary>,
    /// Models that failed to load before it (id, error).
    pub model_load_failures: Vec<(String, String)>,
    /// VLM calls and skips.
    pub vlm: VlmCounts,
    /// Events by alert level.
    pub alerts_by_level: BTreeMap<String, u64>,
    /// Events flagged for human review.
    pub needs_review: u64,
    /// Tool failures by tool.
    pub tool_failures: BTreeMap<String, u64>,
    /// Lines written to `events.jsonl`.
    pub events: u64,
    /// Annotated frames written.
    pub snapshots: u64,
    /// Latency per stage, queue depths, memory samples.
    pub metrics: MetricsSummary,
    /// Memory of the model's load cycle.
    pub memory: MemorySummary,
    /// Sections added by the caller's sinks ([`EventSink::summary_section`]), at the top level
    /// of `summary.json` (`mqtt` for the MQTT sink); absent when none adds one.
    #[serde(flatten)]
    pub sinks: BTreeMap<String, serde_json::Value>,
}

/// The caller's context of an analysis job: what the analysis event needs.
struct JobContext {
    frame: Frame,
    tracks: Vec<TrackedObject>,
    event_tracks: Vec<EventTrack>,
    persons: usize,
    observations: Vec<Observation>,
    time: ClockTime,
}

/// Zones of this camera in pixel coordinates of a frame of `size`.
fn zone_polygons(zones: &[ZoneConfig], camera: &str, size: (u32, u32)) -> Vec<Vec<(f32, f32)>> {
    zones
        .iter()
        .filter(|z| z.camera.as_deref().is_none_or(|c| c == camera))
        .map(|z| {
            z.polygon
                .iter()
                .map(|[x, y]| match z.coordinates {
                    ZoneCoordinates::Pixel => (*x as f32, *y as f32),
                    ZoneCoordinates::Normalized => (
                        (x * f64::from(size.0)) as f32,
                        (y * f64::from(size.1)) as f32,
                    ),
                })
                .collect()
        })
        .collect()
}

/// The detector and the stream options for a configuration: `detection.confidence` is
/// ByteTrack's high threshold and the detector keeps boxes down to the tracker's low threshold
/// (ByteTrack's second association round needs them).
pub fn vision_setup(
    config: &SystemConfig,
    detector_dir: &Path,
    max_frames: Option<u64>,
) -> Result<(DarknetYolo, PipelineOptions)> {
    let mut yolo = YoloOptions::from_config(&config.detection, detector_dir);
    let mut tracker = TrackerParams::from_config(&config.tracker);
    tracker.track_high_thresh = config.detection.confidence as f32;
    yolo.conf_threshold = yolo.conf_threshold.min(tracker.track_low_thresh);
    let detector = DarknetYolo::on_cpu(&yolo)?;
    let options = PipelineOptions {
        max_frames,
        tracker,
        ..PipelineOptions::default()
    };
    Ok((detector, options))
}

/// The decision policy of a configuration.
pub fn decision_policy(config: &SystemConfig) -> DecisionPolicy {
    DecisionPolicy {
        confidence_threshold: config.orchestration.confidence_threshold as f32,
        opening_hours: config.decision.opening_hours,
        after_hours_escalation: config.decision.after_hours_escalation,
    }
}

/// The analyst's settings from a configuration.
pub fn analyst_config(config: &SystemConfig, progress: Option<ProgressFn>) -> AnalystConfig {
    let mut load = LoadOptions::from_config(config);
    load.progress = progress;
    AnalystConfig {
        model: config.vlm.primary_model.clone(),
        fallback_models: config.vlm.fallback_models.clone(),
        enable_fallback: config.vlm.enable_fallback,
        load,
        generation: GenerationParams {
            max_new_tokens: config.vlm.max_new_tokens,
            sampling: Sampling::from_params(config.vlm.temperature, config.vlm.top_p),
            seed: config.vlm.seed.unwrap_or(0),
            ignore_stop_tokens: false,
        },
        timeout: Duration::from_secs_f64(config.orchestration.vlm_timeout_seconds),
        constrained: true,
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

fn local_time() -> (ClockTime, String) {
    let now = jiff::Zoned::now();
    // jiff keeps hours in 0..=23 and minutes in 0..=59.
    let time = ClockTime::new(
        now.hour().clamp(0, 23) as u8,
        now.minute().clamp(0, 59) as u8,
    )
    .unwrap_or(ClockTime::MIDNIGHT);
    (time, now.strftime("%Y-%m-%d %H:%M").to_string())
}

fn frame_image(frame: &Frame) -> Option<RgbImage> {
    RgbImage::from_raw(frame.width, frame.height, frame.data.clone())
}

/// A crop around `bbox` with 15 % margin, at least 32 pixels a side, inside the frame.
fn crop(image: &RgbImage, bbox: &surveil_vision::BBox) -> Option<RgbImage> {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let mx = (bbox.x2 - bbox.x1).abs() * 0.15;
    let my = (bbox.y2 - bbox.y1).abs() * 0.15;
    let x1 = (bbox.x1 - mx).clamp(0.0, w);
    let y1 = (bbox.y1 - my).clamp(0.0, h);
    let x2 = (bbox.x2 + mx).clamp(0.0, w);
    let y2 = (bbox.y2 + my).clamp(0.0, h);
    if !(x2 - x1 >= 32.0 && y2 - y1 >= 32.0) {
        return None;
    }
    Some(
        image::imageops::crop_imm(
            image,
            x1 as u32,
            y1 as u32,
            (x2 - x1) as u32,
            (y2 - y1) as u32,
        )
        .to_image(),
    )
}

/// What every stage reads: the configuration, the run's options, the decision policy.
struct RunContext<'a> {
    config: &'a SystemConfig,
    options: &'a RunOptions,
    policy: DecisionPolicy,
    alerts_dir: PathBuf,
}

/// Where results go: the events file, the caller's sinks, the counters of the summary, the
/// metrics.
struct Sinks<'s, 'e> {
    events: JsonlSink,
    extra: &'s mut [&'e mut dyn EventSink],
    counters: Counters,
    metrics: RunMetrics,
}

/// Writes `event` to `events.jsonl`, then to each of the caller's sinks in order; the first
/// error stops there.
fn write_event(
    events: &mut JsonlSink,
    extra: &mut [&mut dyn EventSink],
    event: &Event,
) -> Result<()> {
    events.write(event)?;
    for sink in extra.iter_mut() {
        sink.write(event)?;
    }
    Ok(())
}

/// Ends the caller's sinks ([`EventSink::finish`], once each); the first error is returned,
/// after every sink was given its call.
fn finish_extra(extra: &mut [&mut dyn EventSink]) -> Result<()> {
    let mut first = Ok(());
    for sink in extra.iter_mut() {
        if let Err(e) = sink.finish() {
            tracing::warn!(error = %e, "an event sink failed to finish");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// `summary` with the sections of the caller's sinks ([`EventSink::summary_section`]); a name
/// the summary already has is skipped with a warning.
fn with_sink_sections(mut summary: RunSummary, extra: &[&mut dyn EventSink]) -> RunSummary {
    let own = serde_json::to_value(&summary).unwrap_or_default();
    for (name, value) in extra.iter().filter_map(|s| s.summary_section()) {
        if own.get(&name).is_some() || summary.sinks.contains_key(&name) {
            tracing::warn!(section = %name, "a sink's summary section clashes with another; skipped");
            continue;
        }
        summary.sinks.insert(name, value);
    }
    summary
}

#[derive(Default)]
struct Counters {
    detections: u64,
    track_ids: BTreeSet<u64>,
    person_ids: BTreeSet<u64>,
    alerts_by_level: BTreeMap<String, u64>,
    alerts: u64,
    needs_review: u64,
    tool_failures: BTreeMap<String, u64>,
    analyses: u64,
    snapshots: u64,
    vlm: VlmCounts,
}

/// Which model the analyst serves.
pub enum ModelChoice {
    /// Load `vlm.primary_model` (and fallbacks) as the configuration says, reporting load
    /// progress to the function.
    FromConfig(Option<ProgressFn>),
    /// A model the caller built (any [`Vlm`] implementation).
    Given(Box<dyn Vlm>),
}

/// Run the pipeline until the source ends, `max_frames`, or `stop` is set. Writes
/// `events.jsonl`, alert frames and `summary.json` into `options.output_dir` and returns the
/// summary. A run stopped by `stop` is a success.
///
/// Errors: the run folder cannot be created or already holds events, the detector or the model
/// cannot be loaded, the source cannot be opened. Errors after the first frame end the loop,
/// are recorded in the summary (`end_reason = error`), and are returned after the summary is
/// written.
///
/// [`run_with_sinks`] also hands every event to sinks of the caller.
pub fn run(
    config: &SystemConfig,
    options: &RunOptions,
    model: ModelChoice,
    stop: Arc<AtomicBool>,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary> {
    run_with_sinks(config, options, model, stop, observer, &mut [])
}

/// [`run`], handing every event to `sinks` as well, in order, right after it is written to
/// `events.jsonl`: one [`EventKind::Frame`] event per analysed frame and one
/// [`EventKind::Analysis`] event per finished VLM analysis. Any
/// `FnMut(&Event) -> Result<()> + Send` closure is a sink.
///
/// A sink's error ends the run like a failed `events.jsonl` write: the loop stops, the summary
/// says `end_reason = error` and the error is returned after the summary is written. Each
/// sink's [`EventSink::finish`] is called once when a run ends with a summary (also a run
/// stopped before its first frame), never when it fails to start; a `finish` error is
/// returned the same way.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use std::sync::Arc;
/// use surveil_orchestrator::decision::AlertLevel;
/// use surveil_orchestrator::pipeline::NoObserver;
/// use surveil_orchestrator::{run_with_sinks, Event, ModelChoice, RunOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = surveil_config::ConfigLoader::new().profile(Some("testing")).load()?.config;
/// let detector = surveil_config::paths::asset("yolov3-tiny");
/// let options = RunOptions::new("camera.mp4", "/tmp/surveil-run", detector);
/// let mut alerts = Vec::new();
/// let mut keep_alerts = |e: &Event| {
///     if e.alert_level >= AlertLevel::Alert {
///         alerts.push(e.clone());
///     }
///     Ok(())
/// };
/// let summary = run_with_sinks(
///     &config,
///     &options,
///     ModelChoice::FromConfig(None),
///     Arc::new(AtomicBool::new(false)),
///     &mut NoObserver,
///     &mut [&mut keep_alerts],
/// )?;
/// println!("{} frames, {} alerts", summary.frames, alerts.len());
/// # Ok(())
/// # }
/// ```
pub fn run_with_sinks(
    config: &SystemConfig,
    options: &RunOptions,
    model: ModelChoice,
    stop: Arc<AtomicBool>,
    observer: &mut dyn RunObserver,
    sinks: &mut [&mut dyn EventSink],
) -> Result<RunSummary> {
    let started_at = now_rfc3339();
    let created_dir = !options.output_dir.exists();
    std::fs::create_dir_all(&options.output_dir).map_err(|e| OrchestratorError::Io {
        path: options.output_dir.clone(),
        source: e,
    })?;
    let events_path = options.output_dir.join("events.jsonl");
    let events = JsonlSink::create(&events_path)?;

    let (detector, mut stream_options) =
        match vision_setup(config, &options.detector_dir, options.max_frames) {
            Ok(x) => x,
            Err(e) => {
                discard_empty_run(options, events, created_dir);
                return Err(e);
            }
        };
    stream_options.max_frames = options.max_frames;

    let sampler = if config.monitoring.enabled {
        MemorySampler::start(SamplerConfig {
            enabled: true,
            interval: Duration::from_secs_f64(config.monitoring.interval_seconds.max(0.05)),
            history_len: 100_000,
            include_gpu: true,
        })
        .ok()
    } else {
        None
    };

    // The source first: a missing file or a dead camera fails in seconds, before a model load
    // that can take minutes. Ctrl-C reaches a source that is still connecting.
    let opened = open_stream(options, detector, stream_options, &stop);
    let mut stream = match opened {
        Ok(Some(stream)) => stream,
        Ok(None) => {
            return finish_before_start(
                config,
                options,
                started_at,
                events,
                sinks,
                "interrupted",
                None,
            )
        }
        Err(e) => {
            discard_empty_run(options, events, created_dir);
            return Err(e);
        }
    };
    let started = match model {
        ModelChoice::FromConfig(progress) => {
            Analyst::start(analyst_config(config, progress), Some(stop.clone()))
        }
        ModelChoice::Given(vlm) => Analyst::start_with_vlm(analyst_config(config, None), vlm),
    };
    let mut analyst: Analyst<JobContext> = match started {
        Ok(a) => a,
        Err(OrchestratorError::Interrupted) => {
            // Ctrl-C while the model was loading: nothing was analysed; say so and stop.
            return finish_before_start(
                config,
                options,
                started_at,
                events,
                sinks,
                "interrupted",
                Some(OrchestratorError::Interrupted.to_string()),
            );
        }
        Err(e) => {
            drop(stream);
            discard_empty_run(options, events, created_dir);
            return Err(e);
        }
    };
    if let Some(load) = analyst.load_summary() {
        observer.model_loaded(load);
    }
    tracing::info!(model = analyst.model_id(), kind = ?analyst.kind(), "model resident");

    observer.source_opened(stream.source_description(), stream.total_frames_hint());
    // Ctrl-C must reach a stream blocked waiting for a frame.
    let interrupt = stream.interrupt_handle();
    let watcher_stop = stop.clone();
    let loop_done = Arc::new(AtomicBool::new(false));
    let watcher_done = loop_done.clone();
    let watcher = std::thread::Builder::new()
        .name("surveil-stop-watch".into())
        .spawn(move || {
            while !watcher_done.load(Ordering::SeqCst) {
                if watcher_stop.load(Ordering::SeqCst) {
                    interrupt.interrupt();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .ok();

    let class_names: Vec<String> = stream.class_names().to_vec();
    let mut scene = Arc::new(Scene::new(
        options.camera.clone(),
        config.tools.history_seconds,
    ));
    let mut runner = ToolRunner::from_config(config);
    let mut trigger = Trigger::new(TriggerSettings::from_config(&config.orchestration));
    let ctx = RunContext {
        config,
        options,
        policy: decision_policy(config),
        alerts_dir: options.output_dir.join("alerts"),
    };
    let mut sinks = Sinks {
        events,
        extra: sinks,
        metrics: RunMetrics::default(),
        counters: Counters::default(),
    };
    let loop_start = Instant::now();
    let mut frames = 0u64;
    let mut next_sample = Duration::ZERO;
    let mut end_reason = "end_of_source";
    let mut run_error: Option<OrchestratorError> = None;

    loop {
        if stop.load(Ordering::SeqCst) {
            end_reason = "interrupted";
            break;
        }
        let Some(item) = stream.next() else {
            if stop.load(Ordering::SeqCst) {
                end_reason = "interrupted";
            } else if options.max_frames.is_some_and(|m| frames >= m) {
                end_reason = "max_frames";
            }
            break;
        };
        let tf = match item {
            Ok(tf) => tf,
            Err(e) => {
                tracing::error!(error = %e, "frame source failed");
                end_reason = "error";
                run_error = Some(e.into());
                break;
            }
        };
        let frame_start = Instant::now();
        record_vision_timings(&mut sinks.metrics, &tf);
        sinks.metrics.record_queue_depth(stream.buffered() as u32);
        frames += 1;

        // Results that came back since the last frame.
        for result in analyst.poll() {
            if let Err(e) = handle_analysis(result, &mut trigger, &ctx, &mut sinks) {
                run_error = Some(e);
            }
        }
        if run_error.is_some() {
            end_reason = "error";
            break;
        }

        // Scene and tools.
        let objects = scene_objects(&tf.tracks, &class_names);
        sinks.counters.detections += tf.detections.len() as u64;
        for o in &objects {
            sinks.counters.track_ids.insert(o.track_id);
            if o.kind == ObjectKind::Person {
                sinks.counters.person_ids.insert(o.track_id);
            }
        }
        let event_tracks = event_tracks(&objects);
        Arc::make_mut(&mut scene).update(
            tf.frame.index,
            tf.frame.timestamp,
            (tf.frame.width, tf.frame.height),
            objects,
        );
        let t = Instant::now();
        let report = runner.run(scene.clone());
        sinks.metrics.record(Stage::Tools, t.elapsed());
        for f in &report.failures {
            *sinks
                .counters
                .tool_failures
                .entry(f.tool.clone())
                .or_default() += 1;
        }

        // Trigger → analyst.
        let t = Instant::now();
        let persons = scene.persons().count();
        let (time, local) = local_time();
        // The trigger runs on the run's monotonic clock, the clock analysis durations are measured
        // in: cooldown and pacing are about what the model can serve, whatever the source's pace.
        let decision_now =
            trigger.evaluate_scene(loop_start.elapsed(), &scene, &report.observations);
        let trigger_note = match decision_now {
            TriggerDecision::Fire(reason) => {
                let reason = reason.as_str().to_string();
                *sinks
                    .counters
                    .vlm
                    .calls_by_trigger
                    .entry(reason.clone())
                    .or_default() += 1;
                let job = build_job(
                    &tf,
                    &scene,
                    &report,
                    &reason,
                    time,
                    &local,
                    &ctx.policy,
                    &event_tracks,
                    persons,
                );
                match job {
                    Some(job) => {
                        if analyst.submit(job).is_some() {
                            sinks.counters.vlm.dropped += 1;
                        }
                    }
                    None => {
                        trigger.analysis_finished(Duration::ZERO);
                    }
                }
                reason
            }
            TriggerDecision::Skip(reason) => {
                *sinks
                    .counters
                    .vlm
                    .skipped_by_reason
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
                format!("skip:{}", reason.as_str())
            }
        };
        sinks.metrics.record(Stage::Trigger, t.elapsed());

        // Decide on the frame (tool cues; verdicts arrive as analysis events).
        let t = Instant::now();
        let decision = decide(
            &ctx.policy,
            &DecisionInput {
                verdict: None,
                observations: &report.observations,
                time,
                persons_present: persons,
            },
        );
        sinks.metrics.record(Stage::Decide, t.elapsed());

        let t = Instant::now();
        let mut event = Event {
            kind: EventKind::Frame,
            frame_id: tf.frame.index,
            source_time_s: tf.frame.timestamp.as_secs_f64(),
            timestamp: now_rfc3339(),
            camera: options.camera.clone(),
            persons,
            tracks: event_tracks,
            tool_observations: report.observations.clone(),
            tool_failures: report
                .failures
                .iter()
                .map(|f| ToolFailureRecord {
                    tool: f.tool.clone(),
                    reason: f.reason.to_string(),
                })
                .collect(),
            alert_level: decision.alert_level,
            needs_review: decision.needs_review,
            rules: decision.rules_fired.iter().map(|r| r.to_string()).collect(),
            vlm_analysis: None,
            vlm: None,
            trigger: Some(trigger_note),
            actions: action_names(&decision),
            processing_ms: 0.0,
            snapshot: None,
        };
        count_decision(&mut sinks.counters, &decision);
        if decision.alert_level >= AlertLevel::Alert {
            event.snapshot = save_alert_frame(
                &ctx.alerts_dir,
                &tf.frame,
                &tf.tracks,
                decision.alert_level,
                config,
                &options.camera,
                "frame",
            );
            sinks.counters.snapshots += u64::from(event.snapshot.is_some());
        }
        event.processing_ms = (frame_start.elapsed() + tf.timings.total()).as_secs_f64() * 1e3;
        if let Err(e) = write_event(&mut sinks.events, sinks.extra, &event) {
            end_reason = "error";
            run_error = Some(e);
            break;
        }
        sinks.metrics.record(Stage::Sinks, t.elapsed());
        sinks
            .metrics
            .record(Stage::Frame, frame_start.elapsed() + tf.timings.total());

        // Monitoring.
        let elapsed = loop_start.elapsed();
        if let Some(s) = sampler.as_ref() {
            if elapsed >= next_sample {
                let latest = s.stats().latest;
                sinks.metrics.record_memory(MemoryPoint {
                    t_s: elapsed.as_secs_f64(),
                    rss_bytes: latest.as_ref().and_then(|l| l.process.rss_bytes),
                    gpu_allocated_bytes: latest.as_ref().and_then(|l| l.gpu_allocated_bytes),
                });
                tracing::info!(
                    frames,
                    fps = frames as f64 / elapsed.as_secs_f64().max(1e-9),
                    rss_mb = latest
                        .as_ref()
                        .and_then(|l| l.process.rss_bytes)
                        .map(|b| b / 1_000_000),
                    queue = stream.buffered(),
                    "monitor"
                );
                next_sample = elapsed + Duration::from_secs_f64(config.monitoring.interval_seconds);
            }
        }
        observer.frame_done(&RunProgress {
            frames,
            total_frames: stream.total_frames_hint(),
            fps: frames as f64 / elapsed.as_secs_f64().max(1e-9),
            alerts: sinks.counters.alerts,
            analyses: sinks.counters.analyses,
            elapsed_s: elapsed.as_secs_f64(),
            queue_depth: stream.buffered() as u32,
        });
    }
    let loop_time = loop_start.elapsed();
    loop_done.store(true, Ordering::SeqCst);
    let stream_stats = stream.stats();
    let source = stream.source_description().to_string();
    drop(stream);
    if let Some(w) = watcher {
        let _ = w.join();
    }

    // The analysis in flight: abandoned after a stop request or an error; at the end of the
    // source it may finish within the grace time.
    let abandon = end_reason != "end_of_source" && end_reason != "max_frames";
    let grace = if abandon {
        options.analyst_grace
    } else {
        // Let the last analysis finish: it ends by itself within its own time limit.
        options.analyst_grace + Duration::from_secs_f64(config.orchestration.vlm_timeout_seconds)
    };
    let (exit, results, dropped) = analyst_finish(analyst, abandon, grace);
    let model = exit.1;
    let failures = exit.2;
    let exit = exit.0;
    let mut trigger_for_results = trigger;
    for result in results {
        if let Err(e) = handle_analysis(result, &mut trigger_for_results, &ctx, &mut sinks) {
            run_error.get_or_insert(e);
        }
    }
    if dropped {
        sinks.counters.vlm.dropped += 1;
    }
    let _ = sinks.events.finish();
    if let Err(e) = finish_extra(sinks.extra) {
        end_reason = "error";
        run_error.get_or_insert(e);
    }

    let memory_report: MemoryReport = exit.as_ref().map(|e| e.memory.clone()).unwrap_or_default();
    let peak = sampler
        .as_ref()
        .and_then(|s| s.stats().process_peak_rss_bytes)
        .or_else(|| surveil_memory::ProcessMemory::current().peak_rss_bytes);
    let summary = RunSummary {
        profile: config.profile.clone(),
        camera: options.camera.clone(),
        source,
        output_dir: options.output_dir.clone(),
        started_at,
        finished_at: now_rfc3339(),
        duration_s: loop_time.as_secs_f64(),
        end_reason: end_reason.to_string(),
        error: run_error.as_ref().map(ToString::to_string),
        frames,
        frames_decoded: stream_stats.frames_decoded,
        frames_dropped: stream_stats.frames_dropped,
        frames_skipped: stream_stats.frames_skipped,
        fps: frames as f64 / loop_time.as_secs_f64().max(1e-9),
        detections: sinks.counters.detections,
        tracks: sinks.counters.track_ids.len() as u64,
        person_tracks: sinks.counters.person_ids.len() as u64,
        model,
        model_load_failures: failures,
        vlm: sinks.counters.vlm.clone(),
        alerts_by_level: sinks.counters.alerts_by_level.clone(),
        needs_review: sinks.counters.needs_review,
        tool_failures: sinks.counters.tool_failures.clone(),
        events: sinks.events.lines(),
        snapshots: sinks.counters.snapshots,
        metrics: sinks.metrics.summary(),
        memory: MemorySummary {
            snapshots: Some(memory_report),
            peak_rss_bytes: peak,
        },
        sinks: BTreeMap::new(),
    };
    let summary = with_sink_sections(summary, sinks.extra);
    write_json_atomic(&options.output_dir.join("summary.json"), &summary)?;
    match run_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Open the source and the detect-and-track stream on a helper thread, so that `stop` is
/// seen while a live source is still connecting (`Ok(None)` then; the opening thread is left to
/// give up on its own).
fn open_stream(
    options: &RunOptions,
    detector: DarknetYolo,
    stream_options: PipelineOptions,
    stop: &AtomicBool,
) -> Result<Option<DetectTrackStream>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let source = options.source.clone();
    let ffmpeg = options.ffmpeg.clone();
    // A stop ends the connection attempt itself (its ffmpeg child killed and reaped), not only
    // the wait for it.
    let open_stop = surveil_vision::StopSignal::new();
    let thread_stop = open_stop.clone();
    std::thread::Builder::new()
        .name("surveil-open-source".into())
        .spawn(move || {
            let detector: Box<dyn surveil_vision::Detector> = Box::new(detector);
            let _ = tx.send(DetectTrackStream::open_with_stop(
                &source,
                &ffmpeg,
                detector,
                stream_options,
                &thread_stop,
            ));
        })
        .map_err(|e| OrchestratorError::Config(format!("cannot start the source thread: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Err(surveil_vision::VisionError::Interrupted { .. })) => return Ok(None),
            Ok(opened) => return Ok(Some(opened?)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) {
                    open_stop.stop();
                    // Give the attempt a moment to kill and reap its child before the run ends.
                    let _ = rx.recv_timeout(Duration::from_secs(2));
                    return Ok(None);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(OrchestratorError::ThreadLost("source".into()))
            }
        }
    }
}

/// A run that failed before its first frame leaves nothing behind: the empty events file goes,
/// and the run folder too when this run created it and it is empty.
fn discard_empty_run(options: &RunOptions, events: JsonlSink, created_dir: bool) {
    let path = options.output_dir.join("events.jsonl");
    drop(events);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&path);
        if created_dir {
            let _ = std::fs::remove_dir(&options.output_dir);
        }
    }
}

/// The summary of a run stopped before its first frame (Ctrl-C while the source connected or
/// the model loaded): nothing analysed, written like any other.
fn finish_before_start(
    config: &SystemConfig,
    options: &RunOptions,
    started_at: String,
    events: JsonlSink,
    sinks: &mut [&mut dyn EventSink],
    end_reason: &str,
    error: Option<String>,
) -> Result<RunSummary> {
    let mut events = events;
    let _ = events.finish();
    let finished = finish_extra(sinks);
    let (end_reason, error) = match &finished {
        Err(e) => ("error", Some(e.to_string())),
        Ok(()) => (end_reason, error),
    };
    let summary = RunSummary {
        profile: config.profile.clone(),
        camera: options.camera.clone(),
        source: options.source.clone(),
        output_dir: options.output_dir.clone(),
        started_at,
        finished_at: now_rfc3339(),
        duration_s: 0.0,
        end_reason: end_reason.into(),
        error,
        frames: 0,
        frames_decoded: 0,
        frames_dropped: 0,
        frames_skipped: 0,
        fps: 0.0,
        detections: 0,
        tracks: 0,
        person_tracks: 0,
        model: None,
        model_load_failures: Vec::new(),
        vlm: VlmCounts::default(),
        alerts_by_level: BTreeMap::new(),
        needs_review: 0,
        tool_failures: BTreeMap::new(),
        events: 0,
        snapshots: 0,
        metrics: RunMetrics::default().summary(),
        memory: MemorySummary {
            snapshots: None,
            peak_rss_bytes: surveil_memory::ProcessMemory::current().peak_rss_bytes,
        },
        sinks: BTreeMap::new(),
    };
    let summary = with_sink_sections(summary, sinks);
    write_json_atomic(&options.output_dir.join("summary.json"), &summary)?;
    finished.map(|()| summary)
}

type AnalystEnd = (
    (
        Option<crate::analyst::AnalystExit>,
        Option<LoadSummary>,
        Vec<(String, String)>,
    ),
    Vec<AnalysisResult<JobContext>>,
    bool,
);

fn analyst_finish(analyst: Analyst<JobContext>, abandon: bool, grace: Duration) -> AnalystEnd {
    let load = analyst.load_summary().cloned();
    let failures = analyst.load_failures().to_vec();
    let (exit, results, dropped) = analyst.finish(abandon, grace);
    ((exit, load, failures), results, dropped.is_some())
}

fn record_vision_timings(metrics: &mut RunMetrics, tf: &TrackedFrame) {
    let t = &tf.timings;
    metrics.record(Stage::Decode, t.queue_wait);
    metrics.record(Stage::Detect, t.preprocess + t.forward + t.postprocess);
    metrics.record(Stage::Track, t.track);
}

fn scene_objects(tracks: &[TrackedObject], class_names: &[String]) -> Vec<SceneObject> {
    tracks
        .iter()
        .map(|t| {
            let class_name = class_names
                .get(t.class_id)
                .cloned()
                .unwrap_or_else(|| format!("class_{}", t.class_id));
            SceneObject {
                track_id: t.track_id,
                kind: ObjectKind::from_class_name(&class_name),
                class_name,
                bbox: t.bbox,
                score: t.score,
            }
        })
        .collect()
}

fn event_tracks(objects: &[SceneObject]) -> Vec<EventTrack> {
    objects
        .iter()
        .map(|o| EventTrack {
            track_id: o.track_id,
            class: o.class_name.clone(),
            bbox: [o.bbox.x1, o.bbox.y1, o.bbox.x2, o.bbox.y2],
            score: o.score,
        })
        .collect()
}

fn action_names(decision: &Decision) -> Vec<String> {
    decision
        .actions
        .iter()
        .filter_map(|a| {
            serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
        })
        .collect()
}

fn count_decision(counters: &mut Counters, decision: &Decision) {
    *counters
        .alerts_by_level
        .entry(decision.alert_level.as_str().to_string())
        .or_default() += 1;
    if decision.alert_level >= AlertLevel::Alert {
        counters.alerts += 1;
    }
    counters.needs_review += u64::from(decision.needs_review);
}

#[allow(clippy::too_many_arguments)]
fn build_job(
    tf: &TrackedFrame,
    scene: &Scene,
    report: &ToolReport,
    reason: &str,
    time: ClockTime,
    local: &str,
    policy: &DecisionPolicy,
    event_tracks: &[EventTrack],
    persons: usize,
) -> Option<AnalysisJob<JobContext>> {
    let image = frame_image(&tf.frame)?;
    // The person of interest: the track of the strongest cue, when it is in view.
    let interest = report
        .observations
        .iter()
        .filter(|o| o.cue >= Cue::Notable)
        .max_by(|a, b| a.cue.cmp(&b.cue).then(a.score.total_cmp(&b.score)))
        .and_then(|o| o.track_id)
        .and_then(|id| scene.persons().find(|p| p.track_id == id));
    let crop_image = interest.and_then(|p| crop(&image, &p.bbox));
    let after_hours = policy
        .opening_hours
        .as_ref()
        .is_some_and(|h| !h.is_open(time));
    let notes: Vec<TrackNote> = scene
        .persons()
        .map(|p| TrackNote {
            track_id: p.track_id,
            seconds_tracked: scene.history(p.track_id).map_or(0.0, |h| h.age_seconds()),
            zones: report
                .observations
                .iter()
                .filter(|o| o.tool == "zones" && o.track_id == Some(p.track_id))
                .map(|o| o.kind.clone())
                .collect(),
            of_interest: interest.is_some_and(|i| i.track_id == p.track_id),
        })
        .collect();
    let prompt = user_prompt(&PromptContext {
        camera: scene.camera(),
        local_time: local,
        after_hours,
        persons,
        bags: scene.bags().count(),
        tracks: &notes,
        observations: &report.observations,
        has_crop: crop_image.is_some(),
    });
    let mut images = vec![image];
    images.extend(crop_image);
    Some(AnalysisJob {
        images,
        system: SYSTEM_PROMPT.to_string(),
        prompt,
        observations: report.observations.clone(),
        trigger: reason.to_string(),
        context: JobContext {
            frame: tf.frame.clone(),
            tracks: tf.tracks.clone(),
            event_tracks: event_tracks.to_vec(),
            persons,
            observations: report.observations.clone(),
            time,
        },
    })
}

fn handle_analysis(
    result: AnalysisResult<JobContext>,
    trigger: &mut Trigger,
    ctx: &RunContext<'_>,
    sinks: &mut Sinks<'_, '_>,
) -> Result<()> {
    let (options, config, policy, alerts_dir) = (
        ctx.options,
        ctx.config,
        &ctx.policy,
        ctx.alerts_dir.as_path(),
    );
    let Sinks {
        events,
        extra,
        counters,
        metrics,
    } = sinks;
    let took = Duration::from_secs_f64(result.record.total_s.max(0.0));
    trigger.analysis_finished(took);
    counters.analyses += 1;
    metrics.record(Stage::Vlm, took);
    if result.record.outcome == VlmOutcome::Ok || result.record.outcome == VlmOutcome::ParseFailed {
        metrics.record(
            Stage::VlmVision,
            Duration::from_secs_f64(result.record.vision_s.max(0.0)),
        );
        metrics.record(
            Stage::VlmTtft,
            Duration::from_secs_f64(result.record.ttft_s.max(0.0)),
        );
    }
    let outcome = serde_json::to_value(result.record.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    *counters.vlm.outcomes.entry(outcome).or_default() += 1;
    let ctx = result.context;
    let verdict: Option<&ParsedVerdict> = result.verdict.as_ref();
    let decision = decide(
        policy,
        &DecisionInput {
            verdict,
            observations: &ctx.observations,
            time: ctx.time,
            persons_present: ctx.persons,
        },
    );
    count_decision(counters, &decision);
    let mut event = Event {
        kind: EventKind::Analysis,
        frame_id: ctx.frame.index,
        source_time_s: ctx.frame.timestamp.as_secs_f64(),
        timestamp: now_rfc3339(),
        camera: options.camera.clone(),
        persons: ctx.persons,
        tracks: ctx.event_tracks,
        tool_observations: ctx.observations,
        tool_failures: Vec::new(),
        alert_level: decision.alert_level,
        needs_review: decision.needs_review,
        rules: decision.rules_fired.iter().map(|r| r.to_string()).collect(),
        vlm_analysis: result.verdict.clone(),
        vlm: Some(result.record),
        trigger: None,
        actions: action_names(&decision),
        processing_ms: took.as_secs_f64() * 1e3,
        snapshot: None,
    };
    if decision.alert_level >= AlertLevel::Alert {
        event.snapshot = save_alert_frame(
            alerts_dir,
            &ctx.frame,
            &ctx.tracks,
            decision.alert_level,
            config,
            &options.camera,
            "analysis",
        );
        counters.snapshots += u64::from(event.snapshot.is_some());
    }
    write_event(events, extra, &event)
}

/// Draw boxes, track ids, the camera's zones and the level, and save
/// `alerts/<kind>-<frame>.png`; returns the path relative to the run folder. A failure is
/// logged, never fatal.
fn save_alert_frame(
    alerts_dir: &Path,
    frame: &Frame,
    tracks: &[TrackedObject],
    level: AlertLevel,
    config: &SystemConfig,
    camera: &str,
    kind: &str,
) -> Option<String> {
    let mut img = match surveil_vision::draw_tracks(frame, tracks) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot render the alert frame");
            return None;
        }
    };
    for polygon in zone_polygons(&config.zones, camera, (frame.width, frame.height)) {
        draw_polygon(&mut img, &polygon, image::Rgb([0, 200, 255]));
    }
    draw_level(&mut img, level);
    if let Err(e) = std::fs::create_dir_all(alerts_dir) {
        tracing::warn!(error = %e, dir = %alerts_dir.display(), "cannot create the alerts folder");
        return None;
    }
    let name = format!("{kind}-{:06}.png", frame.index);
    let path = alerts_dir.join(&name);
    // Encoded in memory, then written atomically: a failed write never leaves a cut PNG.
    let mut png = std::io::Cursor::new(Vec::new());
    let written = img
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| OrchestratorError::Config(format!("encoding the alert frame: {e}")))
        .and_then(|()| write_atomic(&path, |out| out.write_all(png.get_ref())));
    match written {
        Ok(()) => Some(format!("alerts/{name}")),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the alert frame");
            None
        }
    }
}
