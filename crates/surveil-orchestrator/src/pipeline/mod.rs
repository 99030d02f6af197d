//! The surveillance pipeline of `surveil run`: the only module that knows every stage.
//!
//! decode → detect/track ([`DetectTrackStream`]) → [`Scene`] → behaviour tools
//! ([`ToolRunner`]) → [`Trigger`] → [`Analyst`] (the VLM, on its own thread) → [`decide`] →
//! sinks (`events.jsonl`, annotated alert frames, `summary.json`).
//!
//! A run serves one camera ([`RunOptions`]) or several ([`MultiCameraOptions`]). Each camera
//! has its own thread running its decode + detect/track stream with its own detector, and its
//! own scene history, behaviour tools, trigger, decision policy and counters in the loop; every
//! camera shares the one resident model, the one `events.jsonl` and the caller's sinks. Events
//! and per-camera summaries carry the camera's name.
//!
//! The per-frame loop never waits for the VLM: scenes go to the analyst through its hand-off
//! (one slot per camera, latest scene wins, cameras served round robin) and verdicts come back
//! as separate analysis events. A stop request (Ctrl-C, SIGTERM) ends the loop after the
//! current frame; the analysis in flight is abandoned at its next checkpoint, the model is
//! unloaded, and the summary is written.

mod cameras;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;
use surveil_config::{CameraConfig, OpeningHours, SystemConfig, ZoneConfig, ZoneCoordinates};
use surveil_memory::{MemoryReport, MemorySampler, SamplerConfig};
use surveil_models::generation::{GenerationParams, Sampling};
use surveil_models::load::manager::{LoadOptions, LoadSummary, ProgressFn};
use surveil_models::vlm::Vlm;
use surveil_vision::{
    DarknetYolo, FfmpegOptions, Frame, PipelineOptions, StreamStats, TrackedFrame, TrackedObject,
    TrackerParams, YoloOptions,
};

use self::cameras::{
    CameraExit, CameraMessage, CameraSpec, CameraThreads, NotOpened, OpenedCamera, Opening,
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

#[cfg(doc)]
use surveil_vision::DetectTrackStream;

/// What to run on, and where to write: one camera. [`MultiCameraOptions`] describes several;
/// [`run`] and [`run_with_sinks`] take either ([`RunTarget`]; `RunOptions` is a one-camera
/// [`MultiCameraOptions`]).
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

/// One camera of a run: its name, what it reads and how, and what applies to it alone.
#[derive(Debug, Clone)]
pub struct CameraOptions {
    /// Camera name, recorded in events and summaries and used to pick zones; unique in a run.
    /// With several cameras it also prefixes the camera's alert frame files, so it should be
    /// fit for a file name (configured cameras are: `[A-Za-z0-9_-]`, 1 to 64 characters).
    pub name: String,
    /// Video file, rtsp:// or http(s):// URL, image folder, or image.
    pub source: String,
    /// Decoding options of ffmpeg sources (frame rate, size, ...).
    pub ffmpeg: FfmpegOptions,
    /// Zones of this camera alone, besides the configuration's zones that apply to it (those
    /// of this camera and those of every camera); their `camera` is taken to be this one.
    pub zones: Vec<ZoneConfig>,
    /// Opening hours of this camera, overriding `decision.opening_hours`; `None`: the
    /// configuration's.
    pub opening_hours: Option<OpeningHours>,
}

impl CameraOptions {
    /// Camera `name` reading `source` with default decoding, no zones of its own and the
    /// configuration's opening hours.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            ffmpeg: FfmpegOptions::default(),
            zones: Vec::new(),
            opening_hours: None,
        }
    }

    /// A configured camera (`[[cameras]]`): its name and source, its frame rate and size as
    /// ffmpeg options, its inline zones and opening hours.
    pub fn from_config(camera: &CameraConfig) -> Self {
        Self {
            name: camera.name.clone(),
            source: camera.source.clone(),
            ffmpeg: FfmpegOptions {
                fps: camera.fps,
                width: camera.width,
                height: camera.height,
                ..FfmpegOptions::default()
            },
            zones: camera.zones.clone(),
            opening_hours: camera.opening_hours,
        }
    }
}

/// What to run on, and where to write: several cameras (or one), served by one model.
///
/// ```
/// use surveil_orchestrator::{CameraOptions, MultiCameraOptions};
///
/// let mut options = MultiCameraOptions::new(
///     vec![
///         CameraOptions::new("entrance", "rtsp://10.0.0.5/stream"),
///         CameraOptions::new("till", "recordings/till.mp4"),
///     ],
///     "/tmp/surveil-run",
///     "/opt/surveil/yolov3-tiny",
/// );
/// options.max_frames = Some(100); // per camera
/// assert_eq!(options.cameras.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct MultiCameraOptions {
    /// The cameras, in the order their events are numbered in the summary; names unique, at
    /// least one.
    pub cameras: Vec<CameraOptions>,
    /// Stop each camera after this many frames.
    pub max_frames: Option<u64>,
    /// The run folder (created; must not hold a previous run's `events.jsonl`).
    pub output_dir: PathBuf,
    /// Directory with the detector's `.cfg`, `.weights` and class names (each camera loads its
    /// own detector from it).
    pub detector_dir: PathBuf,
    /// As [`RunOptions::analyst_grace`].
    pub analyst_grace: Duration,
    /// How long the run waits for every camera to open before it starts with those that did
    /// (at least one); a camera still connecting joins when it opens, and one that never
    /// does ends the run with `end_reason` `not_opened` in its summary. Default 30 s.
    pub late_camera_wait: Duration,
}

/// Default of [`MultiCameraOptions::late_camera_wait`].
pub const LATE_CAMERA_WAIT: Duration = Duration::from_secs(30);

impl MultiCameraOptions {
    /// Options for `cameras` written into `output_dir`, with the detector files in
    /// `detector_dir`; no frame limit, 10 s of grace for the analyst.
    pub fn new(
        cameras: Vec<CameraOptions>,
        output_dir: impl Into<PathBuf>,
        detector_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cameras,
            max_frames: None,
            output_dir: output_dir.into(),
            detector_dir: detector_dir.into(),
            analyst_grace: Duration::from_secs(10),
            late_camera_wait: LATE_CAMERA_WAIT,
        }
    }

    /// Several cameras in this run.
    fn several(&self) -> bool {
        self.cameras.len() > 1
    }

    /// At least one camera; names not empty and unique.
    fn check(&self) -> Result<()> {
        if self.cameras.is_empty() {
            return Err(OrchestratorError::Config(
                "a run needs at least one camera".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for c in &self.cameras {
            if c.name.trim().is_empty() {
                return Err(OrchestratorError::Config(
                    "a camera name must not be empty".into(),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(OrchestratorError::Config(format!(
                    "camera `{}` is given twice; camera names must be unique",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

impl From<RunOptions> for MultiCameraOptions {
    /// The one camera of `options`, named `options.camera`.
    fn from(options: RunOptions) -> Self {
        Self {
            cameras: vec![CameraOptions {
                name: options.camera,
                source: options.source,
                ffmpeg: options.ffmpeg,
                zones: Vec::new(),
                opening_hours: None,
            }],
            max_frames: options.max_frames,
            output_dir: options.output_dir,
            detector_dir: options.detector_dir,
            analyst_grace: options.analyst_grace,
            late_camera_wait: LATE_CAMERA_WAIT,
        }
    }
}

impl From<&RunOptions> for MultiCameraOptions {
    fn from(options: &RunOptions) -> Self {
        options.clone().into()
    }
}

/// What a run can start from: [`RunOptions`] (one camera) or [`MultiCameraOptions`].
pub trait RunTarget {
    /// The run's cameras and settings as [`MultiCameraOptions`].
    fn to_multi_camera(&self) -> MultiCameraOptions;
}

impl RunTarget for RunOptions {
    fn to_multi_camera(&self) -> MultiCameraOptions {
        self.into()
    }
}

impl RunTarget for MultiCameraOptions {
    fn to_multi_camera(&self) -> MultiCameraOptions {
        self.clone()
    }
}

/// Progress of a run, given to the observer after every frame: totals over the cameras.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunProgress {
    /// Frames analysed.
    pub frames: u64,
    /// Frames the sources hold, when every camera's count is known.
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

/// Progress of one camera, given to the observer after every frame of that camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraProgress {
    /// Camera name.
    pub camera: String,
    /// Frames of this camera analysed.
    pub frames: u64,
    /// Frames its source holds, when known.
    pub total_frames: Option<u64>,
    /// Frames per second of this camera since the run's first frame.
    pub fps: f64,
    /// Frames its decode queue dropped (live sources under load).
    pub frames_dropped: u64,
    /// Frames waiting in its decode queue, when the source reports it.
    pub queue_depth: Option<usize>,
    /// VLM analyses of its scenes finished.
    pub analyses: u64,
    /// Its scenes handed to the model but never analysed (replaced by a newer scene of this
    /// camera while waiting, or left waiting at the end).
    pub analyses_skipped: u64,
    /// Its events at level alert or critical.
    pub alerts: u64,
    /// Seconds since the run's first frame.
    pub elapsed_s: f64,
}

/// Receives what a run does as it goes (progress bars, logs, exporters). Every method has a
/// no-op default. All are called on the thread that called [`run`].
pub trait RunObserver {
    /// The model is resident.
    fn model_loaded(&mut self, summary: &LoadSummary) {
        let _ = summary;
    }
    /// A source is open (once per camera, after the model is resident, through the default
    /// [`RunObserver::camera_opened`]).
    fn source_opened(&mut self, description: &str, total_frames: Option<u64>) {
        let _ = (description, total_frames);
    }
    /// The source of `camera` is open (once per camera, in camera order, after the model is
    /// resident and before any frame). The default calls [`RunObserver::source_opened`].
    fn camera_opened(&mut self, camera: &str, description: &str, total_frames: Option<u64>) {
        let _ = camera;
        self.source_opened(description, total_frames);
    }
    /// A frame was analysed: totals over the cameras.
    fn frame_done(&mut self, progress: &RunProgress) {
        let _ = progress;
    }
    /// A frame of `progress.camera` was analysed (right before [`RunObserver::frame_done`]).
    fn camera_progress(&mut self, progress: &CameraProgress) {
        let _ = progress;
    }
    /// A latency of `stage` for `camera` was recorded into the run's metrics (the summary's
    /// `metrics.latency`): the vision stages and the loop's stages per frame, the VLM stages
    /// per analysis (the camera of the analysed scene).
    fn stage_timed(&mut self, camera: &str, stage: Stage, duration: Duration) {
        let _ = (camera, stage, duration);
    }
    /// The number of scenes waiting for the model changed (at most one per camera; the
    /// analysis in flight is not counted). Seen by the loop between frames.
    fn analysis_queue(&mut self, pending: usize) {
        let _ = pending;
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
    /// Scenes handed over but never analysed (replaced by a newer one of the same camera, or
    /// the run ended).
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

/// One camera in `summary.json` (`cameras.<name>`).
#[derive(Debug, Clone, Serialize)]
pub struct CameraSummary {
    /// Source (credentials redacted).
    pub source: String,
    /// Frames analysed.
    pub frames: u64,
    /// Frames decoded by the source.
    pub frames_decoded: u64,
    /// Frames dropped by the decode queue (live sources under load).
    pub frames_dropped: u64,
    /// Inputs the source could not decode and skipped with a warning.
    pub frames_skipped: u64,
    /// Decode errors the source met without failing: ffmpeg's error lines on a damaged or
    /// truncated file (0 when none, and for live cameras and images).
    pub decode_errors: u64,
    /// Frames per second, from the run's first frame to this camera's end.
    pub fps: f64,
    /// Why this camera ended: `end_of_source`, `damaged_source` (its file ended with decode
    /// errors, see `decode_errors`: damaged or truncated, frames may be missing),
    /// `max_frames`, `interrupted`, `error` (its source failed, or the run ended on an
    /// error), `not_opened` ([`NOT_OPENED`]: a live camera still connecting when the run
    /// ended, for whatever reason).
    pub end_reason: String,
    /// The error that ended this camera's source, if one did (the other cameras went on); for
    /// a camera that never opened, the error of its last connection attempt.
    pub error: Option<String>,
    /// For a camera that never opened (`not_opened`): its connection attempts that failed
    /// (0 when the run ended during the first); `null` for the others.
    pub connection_attempts: Option<u32>,
    /// VLM analyses of its scenes finished.
    pub analyses: u64,
    /// Its scenes handed over but never analysed: replaced by a newer scene of this camera
    /// while waiting for the model, or still waiting when the run ended.
    pub analyses_skipped: u64,
    /// Its events by alert level.
    pub alerts_by_level: BTreeMap<String, u64>,
}

impl CameraSummary {
    /// A camera that gave no frame (a run that ended before its cameras streamed, or one that
    /// never opened): every count 0.
    fn without_frames(
        source: String,
        end_reason: &str,
        error: Option<String>,
        connection_attempts: Option<u32>,
    ) -> Self {
        Self {
            source,
            frames: 0,
            frames_decoded: 0,
            frames_dropped: 0,
            frames_skipped: 0,
            decode_errors: 0,
            fps: 0.0,
            end_reason: end_reason.to_string(),
            error,
            connection_attempts,
            analyses: 0,
            analyses_skipped: 0,
            alerts_by_level: BTreeMap::new(),
        }
    }
}

/// `summary.json`. Counts are totals over the cameras; `cameras` has each camera's.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Profile name.
    pub profile: String,
    /// Camera name; with several cameras, their names in run order joined by `, ` (each is a
    /// key of `cameras`).
    pub camera: String,
    /// Source (credentials redacted); with several cameras, their sources in run order joined
    /// by `, ` (`cameras.<name>.source` has each).
    pub source: String,
    /// The run folder.
    pub output_dir: PathBuf,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC.
    pub finished_at: String,
    /// Wall time of the frame loop, seconds.
    pub duration_s: f64,
    /// Why the run ended: `end_of_source` (every camera's source ended, at least one before
    /// `max_frames`), `damaged_source` (as `end_of_source`, and at least one camera's file
    /// ended with decode errors), `max_frames` (every camera that did not fail reached it),
    /// `interrupted`, `error` (an events file or sink failed, or every camera's source
    /// failed). Cameras that never opened (`not_opened`) take no part in it.
    pub end_reason: String,
    /// The error that ended the run, if one did; otherwise, when cameras never opened, one
    /// note per such camera, joined by `; `: `camera <name> never opened (<n> failed
    /// connection attempts): <last connection error>`.
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
    /// Decode errors the sources met without failing (damaged or truncated files).
    pub decode_errors: u64,
    /// Frames per second over the loop.
    pub fps: f64,
    /// Detections over all frames.
    pub detections: u64,
    /// Distinct track ids seen (per camera, summed: each camera has its own tracker).
    pub tracks: u64,
    /// Distinct person track ids seen (per camera, summed).
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
    /// Each camera by name: its frames, frame rate, end, analyses and alerts.
    pub cameras: BTreeMap<String, CameraSummary>,
}

/// The caller's context of an analysis job: what the analysis event needs.
struct JobContext {
    /// Index of the camera in the run.
    camera: usize,
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

/// Where results go: the events file, the caller's sinks and observer, the counters of the
/// summary, the metrics.
struct Sinks<'s, 'e> {
    events: JsonlSink,
    extra: &'s mut [&'e mut dyn EventSink],
    observer: &'s mut dyn RunObserver,
    counters: Counters,
    metrics: RunMetrics,
}

impl Sinks<'_, '_> {
    /// Record a latency of `stage` for `camera` into the metrics, and tell the observer.
    fn timed(&mut self, camera: &str, stage: Stage, d: Duration) {
        self.metrics.record(stage, d);
        self.observer.stage_timed(camera, stage, d);
    }
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

/// Totals of the run (the per-camera figures are in [`CameraState`]).
#[derive(Default)]
struct Counters {
    detections: u64,
    alerts_by_level: BTreeMap<String, u64>,
    alerts: u64,
    needs_review: u64,
    tool_failures: BTreeMap<String, u64>,
    analyses: u64,
    snapshots: u64,
    vlm: VlmCounts,
}

/// How a camera ended: its reason (as the summary writes it) and error.
struct CameraEnd {
    reason: &'static str,
    error: Option<String>,
    /// Time from the run's first frame to the end.
    at: Duration,
}

/// A camera in the loop: its own view of the configuration (its zones and opening hours), its
/// scene history, tools, trigger and counters.
struct CameraState {
    name: String,
    /// The configuration with this camera's zones added and its opening hours applied.
    config: SystemConfig,
    policy: DecisionPolicy,
    scene: Arc<Scene>,
    runner: ToolRunner,
    trigger: Trigger,
    class_names: Vec<String>,
    /// The source (credentials redacted).
    source: String,
    total_frames: Option<u64>,
    /// Prefix of its alert frame files (`<name>-` when the run has several cameras).
    file_prefix: String,
    frames: u64,
    analyses: u64,
    skipped: u64,
    alerts: u64,
    alerts_by_level: BTreeMap<String, u64>,
    track_ids: BTreeSet<u64>,
    person_ids: BTreeSet<u64>,
    stats: StreamStats,
    buffered: usize,
    end: Option<CameraEnd>,
    /// Loop time at which its source opened; `None` while it is still connecting.
    opened_at: Option<Duration>,
    /// What the source layer said of a source that never opened.
    not_opened: Option<NotOpened>,
}

impl CameraState {
    /// A camera whose source is not open yet ([`CameraState::open`] completes it).
    fn new(config: &SystemConfig, camera: &CameraOptions, several: bool) -> Self {
        let config = camera_config(config, camera);
        Self {
            name: camera.name.clone(),
            policy: decision_policy(&config),
            scene: Arc::new(Scene::new(
                camera.name.clone(),
                config.tools.history_seconds,
            )),
            runner: ToolRunner::from_config(&config),
            trigger: Trigger::new(TriggerSettings::from_config(&config.orchestration)),
            config,
            class_names: Vec::new(),
            source: surveil_vision::source::redact_url(&camera.source),
            total_frames: None,
            file_prefix: if several {
                format!("{}-", camera.name)
            } else {
                String::new()
            },
            frames: 0,
            analyses: 0,
            skipped: 0,
            alerts: 0,
            alerts_by_level: BTreeMap::new(),
            track_ids: BTreeSet::new(),
            person_ids: BTreeSet::new(),
            stats: StreamStats::default(),
            buffered: 0,
            end: None,
            opened_at: None,
            not_opened: None,
        }
    }

    /// Its source opened at loop time `at`.
    fn open(&mut self, opened: OpenedCamera, at: Duration) {
        self.class_names = opened.class_names;
        self.source = opened.description;
        self.total_frames = opened.total_frames;
        self.opened_at = Some(at);
    }

    /// Time it has been reading frames by loop time `now`.
    fn reading_time(&self, now: Duration) -> Duration {
        now.saturating_sub(self.opened_at.unwrap_or(now))
    }

    fn summary(&self, loop_time: Duration) -> CameraSummary {
        let until = self.reading_time(self.end.as_ref().map_or(loop_time, |e| e.at));
        CameraSummary {
            source: self.source.clone(),
            frames: self.frames,
            frames_decoded: self.stats.frames_decoded,
            frames_dropped: self.stats.frames_dropped,
            frames_skipped: self.stats.frames_skipped,
            decode_errors: self.stats.decode_errors,
            fps: self.frames as f64 / until.as_secs_f64().max(1e-9),
            end_reason: self
                .end
                .as_ref()
                .map_or("end_of_source", |e| e.reason)
                .to_string(),
            error: self.end.as_ref().and_then(|e| e.error.clone()),
            connection_attempts: self
                .end
                .as_ref()
                .filter(|e| e.reason == NOT_OPENED)
                .map(|_| self.not_opened.as_ref().map_or(0, |n| n.attempts)),
            analyses: self.analyses,
            analyses_skipped: self.skipped,
            alerts_by_level: self.alerts_by_level.clone(),
        }
    }
}

/// The configuration as `camera` sees it: its own zones added (as zones of this camera), its
/// opening hours instead of `decision.opening_hours` when it has some.
fn camera_config(config: &SystemConfig, camera: &CameraOptions) -> SystemConfig {
    let mut c = config.clone();
    c.zones.extend(camera.zones.iter().map(|z| ZoneConfig {
        camera: Some(camera.name.clone()),
        ..z.clone()
    }));
    if let Some(hours) = camera.opening_hours {
        c.decision.opening_hours = Some(hours);
    }
    c
}

/// A camera's `end_reason` when its source never opened during the run (a live camera that
/// did not answer, whatever ended the run: a stop, the other cameras' end, an error; see
/// [`MultiCameraOptions::late_camera_wait`]).
pub const NOT_OPENED: &str = "not_opened";

/// A camera's `end_reason` when its file ended with decode errors (damaged or truncated:
/// ffmpeg stopped early or skipped what it could not decode); its `decode_errors` counts them.
/// The run's too, when it would otherwise be `end_of_source`.
pub const DAMAGED_SOURCE: &str = "damaged_source";

/// The run's `end_reason` from its cameras' (`not_opened` ones take no part; see
/// [`RunSummary::end_reason`]), for a run that did not fail itself; `stopped`: a stop request
/// ended the loop.
fn run_end_reason(cameras: &[&str], stopped: bool) -> &'static str {
    let took_part = || cameras.iter().filter(|r| **r != NOT_OPENED);
    if stopped || cameras.contains(&"interrupted") {
        "interrupted"
    } else if took_part().all(|r| *r == "error") {
        "error"
    } else if took_part()
        .filter(|r| **r != "error")
        .all(|r| *r == "max_frames")
    {
        "max_frames"
    } else if cameras.contains(&DAMAGED_SOURCE) {
        DAMAGED_SOURCE
    } else {
        "end_of_source"
    }
}

/// The run's note on its cameras that never opened (`None` when every camera opened): one
/// `camera <name> never opened (<n> failed connection attempts): <last error>` each.
fn not_opened_note<'a>(
    cameras: impl IntoIterator<Item = (&'a str, &'a CameraSummary)>,
) -> Option<String> {
    let notes: Vec<String> = cameras
        .into_iter()
        .filter(|(_, c)| c.end_reason == NOT_OPENED)
        .map(|(name, c)| {
            let attempts = c.connection_attempts.unwrap_or(0);
            match &c.error {
                Some(e) => format!(
                    "camera {name} never opened ({attempts} failed connection attempts): {e}"
                ),
                None => {
                    format!("camera {name} never opened ({attempts} failed connection attempts)")
                }
            }
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The end of a camera that never opened, with what its thread said of it.
fn not_opened_end(cam: &mut CameraState, at: Duration) {
    let (attempts, last) = cam
        .not_opened
        .as_ref()
        .map_or((0, None), |n| (n.attempts, n.last_error.clone()));
    tracing::warn!(
        camera = %cam.name,
        attempts,
        last_error = last.as_deref().unwrap_or(""),
        "never opened during the run"
    );
    cam.end = Some(CameraEnd {
        reason: NOT_OPENED,
        error: last,
        at,
    });
}

/// Skip reason of a scene the trigger chose in a run without a model ([`ModelChoice::None`]).
pub const NO_MODEL: &str = "no_model";

/// Which model the analyst serves.
pub enum ModelChoice {
    /// Load `vlm.primary_model` (and fallbacks) as the configuration says, reporting load
    /// progress to the function.
    FromConfig(Option<ProgressFn>),
    /// A model the caller built (any [`Vlm`] implementation).
    Given(Box<dyn Vlm>),
    /// No model: detection, tracking, the behaviour tools and the rule-based decisions only
    /// (an NVR's detector-only mode; sizing a host's cameras without a VLM). Every scene the
    /// trigger would have sent (paced by its cooldowns) is counted as skipped with the reason
    /// `no_model`.
    None,
}

/// Run the pipeline until every camera's source ended (or reached `max_frames`), or `stop` is
/// set. Writes `events.jsonl`, alert frames and `summary.json` into the run folder and returns
/// the summary. A run stopped by `stop` is a success.
///
/// `options` is a [`RunOptions`] (one camera) or a [`MultiCameraOptions`] (several). Every
/// camera has its own decode + detect/track stream on its own thread and
/// its own detector; the one model serves them all, its scenes taken round robin from one
/// waiting slot per camera (a camera's newer scene replaces its older waiting one). Events and
/// the summary's `cameras` carry each camera's name.
///
/// Errors: the options name no camera or a camera twice, the run folder cannot be created or
/// already holds events, the detector or the model cannot be loaded, a source cannot be opened
/// (with several cameras the error names the camera: [`OrchestratorError::Camera`]). Errors
/// after the first frame end the loop, are recorded in the summary (`end_reason = error`), and
/// are returned after the summary is written. A camera whose source fails after the start ends
/// alone (its `cameras` entry records the error) while the others go on; the run fails when
/// every camera's source failed.
///
/// [`run_with_sinks`] also hands every event to sinks of the caller.
pub fn run(
    config: &SystemConfig,
    options: &impl RunTarget,
    model: ModelChoice,
    stop: Arc<AtomicBool>,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary> {
    run_with_sinks(config, options, model, stop, observer, &mut [])
}

/// [`run`], handing every event to `sinks` as well, in order, right after it is written to
/// `events.jsonl`: one [`EventKind::Frame`] event per analysed frame and one
/// [`EventKind::Analysis`] event per finished VLM analysis, of every camera (`event.camera`
/// says which). Any `FnMut(&Event) -> Result<()> + Send` closure is a sink.
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
///
/// Several cameras, every configured one (`[[cameras]]`), run the same way:
///
/// ```no_run
/// # use std::sync::atomic::AtomicBool;
/// # use std::sync::Arc;
/// use surveil_orchestrator::pipeline::NoObserver;
/// use surveil_orchestrator::{run_with_sinks, CameraOptions, ModelChoice, MultiCameraOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = surveil_config::ConfigLoader::new().profile(Some("testing")).load()?.config;
/// let cameras = config.cameras.iter().map(CameraOptions::from_config).collect();
/// let options = MultiCameraOptions::new(
///     cameras,
///     "/tmp/surveil-run",
///     surveil_config::paths::asset("yolov3-tiny"),
/// );
/// let summary = run_with_sinks(
///     &config,
///     &options,
///     ModelChoice::FromConfig(None),
///     Arc::new(AtomicBool::new(false)),
///     &mut NoObserver,
///     &mut [],
/// )?;
/// for (name, camera) in &summary.cameras {
///     println!("{name}: {} frames, {} analyses", camera.frames, camera.analyses);
/// }
/// # Ok(())
/// # }
/// ```
pub fn run_with_sinks(
    config: &SystemConfig,
    options: &impl RunTarget,
    model: ModelChoice,
    stop: Arc<AtomicBool>,
    observer: &mut dyn RunObserver,
    sinks: &mut [&mut dyn EventSink],
) -> Result<RunSummary> {
    run_cameras(
        config,
        &options.to_multi_camera(),
        model,
        stop,
        observer,
        sinks,
    )
}

/// How long a run that does not start waits for its camera threads to give up their sources
/// (ffmpeg children killed and reaped).
const CAMERA_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// `error` of camera `index`, naming the camera when the run has several.
fn camera_error(
    options: &MultiCameraOptions,
    index: usize,
    error: OrchestratorError,
) -> OrchestratorError {
    match options.cameras.get(index) {
        Some(camera) if options.several() => OrchestratorError::Camera {
            camera: camera.name.clone(),
            source: Box::new(error),
        },
        _ => error,
    }
}

fn run_cameras(
    config: &SystemConfig,
    options: &MultiCameraOptions,
    model: ModelChoice,
    stop: Arc<AtomicBool>,
    observer: &mut dyn RunObserver,
    sinks: &mut [&mut dyn EventSink],
) -> Result<RunSummary> {
    options.check()?;
    let several = options.several();
    let started_at = now_rfc3339();
    let created_dir = !options.output_dir.exists();
    std::fs::create_dir_all(&options.output_dir).map_err(|e| OrchestratorError::Io {
        path: options.output_dir.clone(),
        source: e,
    })?;
    let events_path = options.output_dir.join("events.jsonl");
    let events = JsonlSink::create(&events_path)?;

    // Each camera gets its own detector: detection runs on the cameras' threads.
    let mut specs = Vec::with_capacity(options.cameras.len());
    for camera in &options.cameras {
        match vision_setup(config, &options.detector_dir, options.max_frames) {
            Ok((detector, mut stream)) => {
                stream.max_frames = options.max_frames;
                specs.push(CameraSpec {
                    source: camera.source.clone(),
                    ffmpeg: camera.ffmpeg.clone(),
                    detector,
                    stream,
                });
            }
            Err(e) => {
                discard_empty_run(options, events, created_dir);
                return Err(e);
            }
        }
    }

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

    // The sources first: a missing file or a dead camera fails in seconds, before a model load
    // that can take minutes. Ctrl-C reaches sources that are still connecting.
    let mut threads = match CameraThreads::spawn(specs) {
        Ok(t) => t,
        Err(e) => {
            discard_empty_run(options, events, created_dir);
            return Err(e);
        }
    };
    let opened = match threads.wait_open(&stop, options.late_camera_wait) {
        Ok(Opening::Opened(opened)) => opened,
        Ok(Opening::Interrupted) => {
            let exits = threads.abort(CAMERA_RELEASE_WAIT);
            return finish_before_start(
                config,
                options,
                started_at,
                events,
                sinks,
                &exits,
                "interrupted",
                None,
            );
        }
        Ok(Opening::Failed(index, e)) => {
            threads.abort(CAMERA_RELEASE_WAIT);
            discard_empty_run(options, events, created_dir);
            return Err(camera_error(options, index, e));
        }
        Err(e) => {
            threads.abort(CAMERA_RELEASE_WAIT);
            discard_empty_run(options, events, created_dir);
            return Err(e);
        }
    };
    let started = match model {
        ModelChoice::FromConfig(progress) => {
            Analyst::start(analyst_config(config, progress), Some(stop.clone()))
        }
        ModelChoice::Given(vlm) => Analyst::start_with_vlm(analyst_config(config, None), vlm),
        ModelChoice::None => Ok(Analyst::without_model()),
    };
    let mut analyst: Analyst<JobContext> = match started {
        Ok(a) => a,
        Err(OrchestratorError::Interrupted) => {
            // Ctrl-C while the model was loading: nothing was analysed; say so and stop.
            let exits = threads.abort(CAMERA_RELEASE_WAIT);
            return finish_before_start(
                config,
                options,
                started_at,
                events,
                sinks,
                &exits,
                "interrupted",
                Some(OrchestratorError::Interrupted.to_string()),
            );
        }
        Err(e) => {
            threads.abort(CAMERA_RELEASE_WAIT);
            discard_empty_run(options, events, created_dir);
            return Err(e);
        }
    };
    if let Some(load) = analyst.load_summary() {
        observer.model_loaded(load);
    }
    match analyst.kind() {
        Some(kind) => tracing::info!(
            model = analyst.model_id(),
            ?kind,
            cameras = options.cameras.len(),
            "model resident"
        ),
        None => tracing::info!(
            cameras = options.cameras.len(),
            "no model: detection, tracking, tools and rules only"
        ),
    }

    let mut cams: Vec<CameraState> = options
        .cameras
        .iter()
        .map(|camera| CameraState::new(config, camera, several))
        .collect();
    let mut live = 0;
    for (index, (cam, opened)) in cams.iter_mut().zip(opened).enumerate() {
        if let Some(opened) = opened {
            cam.open(opened, Duration::ZERO);
            observer.camera_opened(&cam.name, &cam.source, cam.total_frames);
            live += 1;
        } else {
            tracing::warn!(camera = %cam.name, index, "not open yet; it joins when it opens");
        }
    }
    // Ctrl-C must reach streams blocked waiting for a frame.
    let interrupts = threads.interrupts();
    let watcher_stop = stop.clone();
    let loop_done = Arc::new(AtomicBool::new(false));
    let watcher_done = loop_done.clone();
    let watcher = std::thread::Builder::new()
        .name("surveil-stop-watch".into())
        .spawn(move || {
            while !watcher_done.load(Ordering::SeqCst) {
                if watcher_stop.load(Ordering::SeqCst) {
                    if let Ok(list) = interrupts.lock() {
                        for i in list.iter() {
                            i.interrupt();
                        }
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .ok();

    let alerts_dir = options.output_dir.join("alerts");
    let mut sinks = Sinks {
        events,
        extra: sinks,
        observer,
        metrics: RunMetrics::default(),
        counters: Counters::default(),
    };
    let mut camera_errors: Vec<Option<OrchestratorError>> =
        options.cameras.iter().map(|_| None).collect();
    let loop_start = Instant::now();
    let mut frames = 0u64;
    let mut next_sample = Duration::ZERO;
    let mut stopped = false;
    let mut run_error: Option<OrchestratorError> = None;
    let mut last_pending = 0usize;
    for (index, cam) in cams.iter().enumerate() {
        if cam.opened_at.is_some() {
            threads.start_camera(index, None);
        }
    }

    while live > 0 {
        if stop.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        let (i, message) = match threads.recv(Duration::from_millis(50)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                // No frame for a while: results of analyses still become events.
                if let Err(e) = handle_results(&analyst, &mut cams, &alerts_dir, &mut sinks) {
                    run_error = Some(e);
                    break;
                }
                report_queue(&analyst, &mut last_pending, &mut sinks);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let (tf, buffered, stats) = match message {
            CameraMessage::Frame {
                frame,
                buffered,
                stats,
            } => (frame, buffered, stats),
            CameraMessage::Ended {
                error,
                interrupted,
                stats,
            } => {
                let Some(cam) = cams.get_mut(i) else {
                    continue;
                };
                live -= 1;
                cam.stats = stats;
                let reason = if error.is_some() {
                    "error"
                } else if interrupted || stop.load(Ordering::SeqCst) {
                    "interrupted"
                } else if options.max_frames.is_some_and(|m| cam.frames >= m) {
                    "max_frames"
                } else if stats.decode_errors > 0 {
                    DAMAGED_SOURCE
                } else {
                    "end_of_source"
                };
                if let Some(e) = &error {
                    tracing::error!(camera = %cam.name, error = %e, "frame source failed");
                }
                cam.end = Some(CameraEnd {
                    reason,
                    error: error.as_ref().map(ToString::to_string),
                    at: loop_start.elapsed(),
                });
                if let Some(slot) = camera_errors.get_mut(i) {
                    *slot = error;
                }
                continue;
            }
            // A camera that was still connecting when the run started.
            CameraMessage::Opened(opened) => {
                let Some(cam) = cams.get_mut(i) else {
                    continue;
                };
                tracing::info!(camera = %cam.name, "opened late; joining the run");
                threads.start_camera(i, Some(&opened));
                cam.open(*opened, loop_start.elapsed());
                sinks
                    .observer
                    .camera_opened(&cam.name, &cam.source, cam.total_frames);
                live += 1;
                continue;
            }
            CameraMessage::OpenFailed(error) => {
                let Some(cam) = cams.get_mut(i) else {
                    continue;
                };
                tracing::error!(camera = %cam.name, error = %error, "frame source failed to open");
                cam.end = Some(CameraEnd {
                    reason: "error",
                    error: Some(error.to_string()),
                    at: loop_start.elapsed(),
                });
                if let Some(slot) = camera_errors.get_mut(i) {
                    *slot = Some(error);
                }
                continue;
            }
            CameraMessage::OpenInterrupted => continue,
        };
        let frame_start = Instant::now();
        frames += 1;
        if let Some(cam) = cams.get_mut(i) {
            cam.frames += 1;
            cam.stats = stats;
            cam.buffered = buffered;
            record_vision_timings(&mut sinks, &cam.name, &tf);
        }
        sinks.metrics.record_queue_depth(buffered as u32);
        let done = process_frame(
            i,
            &tf,
            frame_start,
            loop_start,
            &mut cams,
            &mut analyst,
            &alerts_dir,
            &mut sinks,
        );
        if let Err(e) = done {
            run_error = Some(e);
            break;
        }

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
                    queue = cams.iter().map(|c| c.buffered).sum::<usize>(),
                    "monitor"
                );
                next_sample = elapsed + Duration::from_secs_f64(config.monitoring.interval_seconds);
            }
        }
        // The camera's figures first, so that a printer of the totals has them current.
        if let Some(cam) = cams.get(i) {
            sinks.observer.camera_progress(&CameraProgress {
                camera: cam.name.clone(),
                frames: cam.frames,
                total_frames: cam.total_frames,
                fps: cam.frames as f64 / cam.reading_time(elapsed).as_secs_f64().max(1e-9),
                frames_dropped: cam.stats.frames_dropped,
                queue_depth: Some(cam.buffered),
                analyses: cam.analyses,
                analyses_skipped: cam.skipped,
                alerts: cam.alerts,
                elapsed_s: elapsed.as_secs_f64(),
            });
        }
        let total_frames = cams.iter().map(|c| c.total_frames).sum::<Option<u64>>();
        sinks.observer.frame_done(&RunProgress {
            frames,
            total_frames,
            fps: frames as f64 / elapsed.as_secs_f64().max(1e-9),
            alerts: sinks.counters.alerts,
            analyses: sinks.counters.analyses,
            elapsed_s: elapsed.as_secs_f64(),
            queue_depth: u32::try_from(cams.iter().map(|c| c.buffered).sum::<usize>())
                .unwrap_or(u32::MAX),
        });
        report_queue(&analyst, &mut last_pending, &mut sinks);
    }
    let loop_time = loop_start.elapsed();
    loop_done.store(true, Ordering::SeqCst);
    // Cameras still running end with the loop; every thread hands back its counters, or
    // what is known of a source that never opened.
    let exits = threads.finish();
    for (cam, exit) in cams.iter_mut().zip(&exits) {
        match exit {
            Some(CameraExit::Streamed(stats)) => cam.stats = *stats,
            Some(CameraExit::NotOpened(n)) => cam.not_opened = Some(n.clone()),
            Some(CameraExit::OpenFailed) | None => {}
        }
    }
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let cut = if run_error.is_some() {
        "error"
    } else {
        "interrupted"
    };
    for cam in cams.iter_mut().filter(|c| c.end.is_none()) {
        if cam.opened_at.is_none() {
            // Not "interrupted": a camera that never answered is no normal end.
            not_opened_end(cam, loop_time);
        } else {
            cam.end = Some(CameraEnd {
                reason: cut,
                error: None,
                at: loop_time,
            });
        }
    }
    // The run's end is that of the cameras that took part.
    let reasons: Vec<&str> = cams
        .iter()
        .map(|c| c.end.as_ref().map_or(cut, |e| e.reason))
        .collect();
    let mut end_reason = if run_error.is_some() {
        "error"
    } else {
        run_end_reason(&reasons, stopped)
    };
    if end_reason == "error" && run_error.is_none() {
        // Every source failed: the run failed, with the first camera's error.
        run_error = camera_errors
            .into_iter()
            .enumerate()
            .find_map(|(i, e)| e.map(|e| camera_error(options, i, e)));
    }

    // The analysis in flight: abandoned after a stop request or an error; at the end of the
    // sources it may finish within the grace time.
    let abandon = !matches!(end_reason, "end_of_source" | "max_frames" | DAMAGED_SOURCE);
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
    for result in results {
        if let Err(e) = handle_analysis(result, &mut cams, &alerts_dir, &mut sinks) {
            run_error.get_or_insert(e);
        }
    }
    for lane in dropped {
        sinks.counters.vlm.dropped += 1;
        if let Some(cam) = cams.get_mut(lane) {
            cam.skipped += 1;
        }
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
    let joined =
        |part: fn(&CameraState) -> &str| cams.iter().map(part).collect::<Vec<_>>().join(", ");
    let cameras: BTreeMap<String, CameraSummary> = cams
        .iter()
        .map(|c| (c.name.clone(), c.summary(loop_time)))
        .collect();
    let error = match &run_error {
        Some(e) => Some(e.to_string()),
        None => not_opened_note(options.cameras.iter().filter_map(|c| {
            let summary = cameras.get(&c.name)?;
            Some((c.name.as_str(), summary))
        })),
    };
    let summary = RunSummary {
        profile: config.profile.clone(),
        camera: joined(|c| c.name.as_str()),
        source: joined(|c| c.source.as_str()),
        output_dir: options.output_dir.clone(),
        started_at,
        finished_at: now_rfc3339(),
        duration_s: loop_time.as_secs_f64(),
        end_reason: end_reason.to_string(),
        error,
        frames,
        frames_decoded: cams.iter().map(|c| c.stats.frames_decoded).sum(),
        frames_dropped: cams.iter().map(|c| c.stats.frames_dropped).sum(),
        frames_skipped: cams.iter().map(|c| c.stats.frames_skipped).sum(),
        decode_errors: cams.iter().map(|c| c.stats.decode_errors).sum(),
        fps: frames as f64 / loop_time.as_secs_f64().max(1e-9),
        detections: sinks.counters.detections,
        tracks: cams.iter().map(|c| c.track_ids.len() as u64).sum(),
        person_tracks: cams.iter().map(|c| c.person_ids.len() as u64).sum(),
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
        cameras,
    };
    let summary = with_sink_sections(summary, sinks.extra);
    write_json_atomic(&options.output_dir.join("summary.json"), &summary)?;
    match run_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Tell the observer the number of scenes waiting for the model, when it changed.
fn report_queue(analyst: &Analyst<JobContext>, last: &mut usize, sinks: &mut Sinks<'_, '_>) {
    let pending = analyst.pending();
    if pending != *last {
        *last = pending;
        sinks.observer.analysis_queue(pending);
    }
}

/// The analyses that came back since the last call, as events; every result is handled, the
/// first error is returned.
fn handle_results(
    analyst: &Analyst<JobContext>,
    cams: &mut [CameraState],
    alerts_dir: &Path,
    sinks: &mut Sinks<'_, '_>,
) -> Result<()> {
    let mut failed = None;
    for result in analyst.poll() {
        if let Err(e) = handle_analysis(result, cams, alerts_dir, sinks) {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// One frame of camera `i`: the analyses that came back, scene and tools, trigger and
/// hand-off to the analyst, decision, and the frame's event.
#[allow(clippy::too_many_arguments)]
fn process_frame(
    i: usize,
    tf: &TrackedFrame,
    frame_start: Instant,
    loop_start: Instant,
    cams: &mut [CameraState],
    analyst: &mut Analyst<JobContext>,
    alerts_dir: &Path,
    sinks: &mut Sinks<'_, '_>,
) -> Result<()> {
    // Results that came back since the last frame.
    handle_results(analyst, cams, alerts_dir, sinks)?;
    let Some(cam) = cams.get_mut(i) else {
        return Ok(());
    };

    // Scene and tools.
    let objects = scene_objects(&tf.tracks, &cam.class_names);
    sinks.counters.detections += tf.detections.len() as u64;
    for o in &objects {
        cam.track_ids.insert(o.track_id);
        if o.kind == ObjectKind::Person {
            cam.person_ids.insert(o.track_id);
        }
    }
    let event_tracks = event_tracks(&objects);
    Arc::make_mut(&mut cam.scene).update(
        tf.frame.index,
        tf.frame.timestamp,
        (tf.frame.width, tf.frame.height),
        objects,
    );
    let t = Instant::now();
    let report = cam.runner.run(cam.scene.clone());
    sinks.timed(&cam.name, Stage::Tools, t.elapsed());
    for f in &report.failures {
        *sinks
            .counters
            .tool_failures
            .entry(f.tool.clone())
            .or_default() += 1;
    }

    // Trigger → analyst.
    let t = Instant::now();
    let persons = cam.scene.persons().count();
    let (time, local) = local_time();
    // The trigger runs on the run's monotonic clock, the clock analysis durations are measured
    // in: cooldown and pacing are about what the model can serve, whatever the source's pace.
    let decision_now =
        cam.trigger
            .evaluate_scene(loop_start.elapsed(), &cam.scene, &report.observations);
    let trigger_note = match decision_now {
        TriggerDecision::Fire(_) if !analyst.has_model() => {
            // The trigger keeps its own pacing as though the scene had been analysed at once.
            cam.trigger.analysis_finished(Duration::ZERO);
            *sinks
                .counters
                .vlm
                .skipped_by_reason
                .entry(NO_MODEL.to_string())
                .or_default() += 1;
            format!("skip:{NO_MODEL}")
        }
        TriggerDecision::Fire(reason) => {
            let reason = reason.as_str().to_string();
            *sinks
                .counters
                .vlm
                .calls_by_trigger
                .entry(reason.clone())
                .or_default() += 1;
            let job = build_job(
                tf,
                &cam.scene,
                &report,
                &reason,
                time,
                &local,
                &cam.policy,
                &event_tracks,
                persons,
                i,
            );
            match job {
                Some(job) => {
                    if analyst.submit_to(i, job).is_some() {
                        sinks.counters.vlm.dropped += 1;
                        cam.skipped += 1;
                    }
                }
                None => {
                    cam.trigger.analysis_finished(Duration::ZERO);
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
    sinks.timed(&cam.name, Stage::Trigger, t.elapsed());

    // Decide on the frame (tool cues; verdicts arrive as analysis events).
    let t = Instant::now();
    let decision = decide(
        &cam.policy,
        &DecisionInput {
            verdict: None,
            observations: &report.observations,
            time,
            persons_present: persons,
        },
    );
    sinks.timed(&cam.name, Stage::Decide, t.elapsed());

    let t = Instant::now();
    let mut event = Event {
        kind: EventKind::Frame,
        frame_id: tf.frame.index,
        source_time_s: tf.frame.timestamp.as_secs_f64(),
        timestamp: now_rfc3339(),
        camera: cam.name.clone(),
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
    count_decision(&mut sinks.counters, cam, &decision);
    if decision.alert_level >= AlertLevel::Alert {
        event.snapshot = save_alert_frame(
            alerts_dir,
            &tf.frame,
            &tf.tracks,
            decision.alert_level,
            cam,
            "frame",
        );
        sinks.counters.snapshots += u64::from(event.snapshot.is_some());
    }
    event.processing_ms = (frame_start.elapsed() + tf.timings.total()).as_secs_f64() * 1e3;
    write_event(&mut sinks.events, sinks.extra, &event)?;
    sinks.timed(&cam.name, Stage::Sinks, t.elapsed());
    sinks.timed(
        &cam.name,
        Stage::Frame,
        frame_start.elapsed() + tf.timings.total(),
    );
    Ok(())
}

/// A run that failed before its first frame leaves nothing behind: the empty events file goes,
/// and the run folder too when this run created it and it is empty.
fn discard_empty_run(options: &MultiCameraOptions, events: JsonlSink, created_dir: bool) {
    let path = options.output_dir.join("events.jsonl");
    drop(events);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&path);
        if created_dir {
            let _ = std::fs::remove_dir(&options.output_dir);
        }
    }
}

/// The summary of a run stopped before its first frame (Ctrl-C while a source connected or
/// the model loaded): nothing analysed, written like any other. `exits` says how each camera
/// thread ended ([`CameraThreads::abort`]): a camera still connecting ends `not_opened`, the
/// others with `end_reason`.
#[allow(clippy::too_many_arguments)]
fn finish_before_start(
    config: &SystemConfig,
    options: &MultiCameraOptions,
    started_at: String,
    events: JsonlSink,
    sinks: &mut [&mut dyn EventSink],
    exits: &[Option<CameraExit>],
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
    // The sources never opened (or were given up): their addresses as given, credentials
    // redacted.
    let sources: Vec<String> = options
        .cameras
        .iter()
        .map(|c| surveil_vision::source::redact_url(&c.source))
        .collect();
    let cameras: BTreeMap<String, CameraSummary> = options
        .cameras
        .iter()
        .zip(&sources)
        .enumerate()
        .map(|(i, (c, source))| {
            let not_opened = match exits.get(i) {
                Some(Some(CameraExit::NotOpened(n))) => Some(n),
                _ => None,
            };
            if let Some(n) = not_opened {
                tracing::warn!(
                    camera = %c.name,
                    attempts = n.attempts,
                    last_error = n.last_error.as_deref().unwrap_or(""),
                    "never opened during the run"
                );
            }
            let summary = CameraSummary::without_frames(
                source.clone(),
                not_opened.map_or(end_reason, |_| NOT_OPENED),
                not_opened.and_then(|n| n.last_error.clone()),
                not_opened.map(|n| n.attempts),
            );
            (c.name.clone(), summary)
        })
        .collect();
    let error = error.or_else(|| {
        not_opened_note(options.cameras.iter().filter_map(|c| {
            let summary = cameras.get(&c.name)?;
            Some((c.name.as_str(), summary))
        }))
    });
    let summary = RunSummary {
        profile: config.profile.clone(),
        camera: options
            .cameras
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        source: sources.join(", "),
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
        decode_errors: 0,
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
        cameras,
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
    Vec<usize>,
);

/// End the analyst: its exit report, load summary and failures, the last results, and the
/// lanes (cameras) of the scenes still waiting, which are dropped.
fn analyst_finish(analyst: Analyst<JobContext>, abandon: bool, grace: Duration) -> AnalystEnd {
    let load = analyst.load_summary().cloned();
    let failures = analyst.load_failures().to_vec();
    let (exit, results, dropped) = analyst.finish_lanes(abandon, grace);
    (
        (exit, load, failures),
        results,
        dropped.into_iter().map(|(lane, _)| lane).collect(),
    )
}

fn record_vision_timings(sinks: &mut Sinks<'_, '_>, camera: &str, tf: &TrackedFrame) {
    let t = &tf.timings;
    sinks.timed(camera, Stage::Decode, t.queue_wait);
    sinks.timed(
        camera,
        Stage::Detect,
        t.preprocess + t.forward + t.postprocess,
    );
    sinks.timed(camera, Stage::Track, t.track);
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

/// Count a decision into the run's totals and its camera's figures.
fn count_decision(counters: &mut Counters, cam: &mut CameraState, decision: &Decision) {
    let level = decision.alert_level.as_str();
    *counters
        .alerts_by_level
        .entry(level.to_string())
        .or_default() += 1;
    *cam.alerts_by_level.entry(level.to_string()).or_default() += 1;
    if decision.alert_level >= AlertLevel::Alert {
        counters.alerts += 1;
        cam.alerts += 1;
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
    camera: usize,
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
            camera,
            frame: tf.frame.clone(),
            tracks: tf.tracks.clone(),
            event_tracks: event_tracks.to_vec(),
            persons,
            observations: report.observations.clone(),
            time,
        },
    })
}

/// A finished analysis: the decision on its verdict, counted for the run and its camera, and
/// its event.
fn handle_analysis(
    result: AnalysisResult<JobContext>,
    cams: &mut [CameraState],
    alerts_dir: &Path,
    sinks: &mut Sinks<'_, '_>,
) -> Result<()> {
    let Some(cam) = cams.get_mut(result.context.camera) else {
        return Ok(());
    };
    let took = Duration::from_secs_f64(result.record.total_s.max(0.0));
    cam.trigger.analysis_finished(took);
    cam.analyses += 1;
    sinks.counters.analyses += 1;
    sinks.timed(&cam.name, Stage::Vlm, took);
    if result.record.outcome == VlmOutcome::Ok || result.record.outcome == VlmOutcome::ParseFailed {
        sinks.timed(
            &cam.name,
            Stage::VlmVision,
            Duration::from_secs_f64(result.record.vision_s.max(0.0)),
        );
        sinks.timed(
            &cam.name,
            Stage::VlmTtft,
            Duration::from_secs_f64(result.record.ttft_s.max(0.0)),
        );
    }
    let outcome = serde_json::to_value(result.record.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    *sinks.counters.vlm.outcomes.entry(outcome).or_default() += 1;
    let ctx = result.context;
    let verdict: Option<&ParsedVerdict> = result.verdict.as_ref();
    let decision = decide(
        &cam.policy,
        &DecisionInput {
            verdict,
            observations: &ctx.observations,
            time: ctx.time,
            persons_present: ctx.persons,
        },
    );
    count_decision(&mut sinks.counters, cam, &decision);
    let mut event = Event {
        kind: EventKind::Analysis,
        frame_id: ctx.frame.index,
        source_time_s: ctx.frame.timestamp.as_secs_f64(),
        timestamp: now_rfc3339(),
        camera: cam.name.clone(),
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
            cam,
            "analysis",
        );
        sinks.counters.snapshots += u64::from(event.snapshot.is_some());
    }
    write_event(&mut sinks.events, sinks.extra, &event)
}

/// Draw boxes, track ids, the camera's zones and the level, and save
/// `alerts/<kind>-<frame>.png` (`alerts/<camera>-<kind>-<frame>.png` when the run has several
/// cameras); returns the path relative to the run folder. A failure is logged, never fatal.
fn save_alert_frame(
    alerts_dir: &Path,
    frame: &Frame,
    tracks: &[TrackedObject],
    level: AlertLevel,
    cam: &CameraState,
    kind: &str,
) -> Option<String> {
    let mut img = match surveil_vision::draw_tracks(frame, tracks) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot render the alert frame");
            return None;
        }
    };
    for polygon in zone_polygons(&cam.config.zones, &cam.name, (frame.width, frame.height)) {
        draw_polygon(&mut img, &polygon, image::Rgb([0, 200, 255]));
    }
    draw_level(&mut img, level);
    if let Err(e) = std::fs::create_dir_all(alerts_dir) {
        tracing::warn!(error = %e, dir = %alerts_dir.display(), "cannot create the alerts folder");
        return None;
    }
    let name = format!("{}{kind}-{:06}.png", cam.file_prefix, frame.index);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(end_reason: &str, attempts: Option<u32>, error: Option<&str>) -> CameraSummary {
        CameraSummary::without_frames(
            "rtsp://127.0.0.1:1/x".into(),
            end_reason,
            error.map(Into::into),
            attempts,
        )
    }

    #[test]
    fn the_runs_end_is_that_of_the_cameras_that_took_part() {
        let cases: &[(&[&str], bool, &str)] = &[
            (&["end_of_source"], false, "end_of_source"),
            (&["max_frames", "max_frames"], false, "max_frames"),
            (&["max_frames", "end_of_source"], false, "end_of_source"),
            // A damaged file is no clean end, unless the others all reached max_frames.
            (&[DAMAGED_SOURCE], false, DAMAGED_SOURCE),
            (&["end_of_source", DAMAGED_SOURCE], false, DAMAGED_SOURCE),
            (&["max_frames", DAMAGED_SOURCE], false, DAMAGED_SOURCE),
            (&["error", DAMAGED_SOURCE], false, DAMAGED_SOURCE),
            (&["error", "max_frames"], false, "max_frames"),
            (&["error", "error"], false, "error"),
            // A stop wins; a camera that never opened takes no part.
            (&[DAMAGED_SOURCE], true, "interrupted"),
            (&["max_frames", "interrupted"], false, "interrupted"),
            (&["max_frames", NOT_OPENED], false, "max_frames"),
            (&[DAMAGED_SOURCE, NOT_OPENED], false, DAMAGED_SOURCE),
            (&["error", NOT_OPENED], false, "error"),
            (&["max_frames", NOT_OPENED], true, "interrupted"),
        ];
        for (cameras, stopped, want) in cases {
            assert_eq!(
                run_end_reason(cameras, *stopped),
                *want,
                "{cameras:?} stopped={stopped}"
            );
        }
    }

    #[test]
    fn the_run_names_each_camera_that_never_opened_and_why() {
        let cameras = [
            ("entrance", camera("max_frames", None, None)),
            (
                "door",
                camera(NOT_OPENED, Some(4), Some("Connection refused")),
            ),
            ("yard", camera(NOT_OPENED, Some(0), None)),
        ];
        let note = not_opened_note(cameras.iter().map(|(n, c)| (*n, c))).unwrap();
        assert_eq!(
            note,
            "camera door never opened (4 failed connection attempts): Connection refused; \
             camera yard never opened (0 failed connection attempts)"
        );
        assert_eq!(
            not_opened_note(cameras[..1].iter().map(|(n, c)| (*n, c))),
            None
        );
    }

    #[test]
    fn a_camera_summary_has_its_decode_errors_and_connection_attempts() {
        let s = serde_json::to_value(camera(NOT_OPENED, Some(3), Some("refused"))).unwrap();
        assert_eq!(s["end_reason"], "not_opened");
        assert_eq!(s["connection_attempts"], 3);
        assert_eq!(s["error"], "refused");
        assert_eq!(s["decode_errors"], 0);
        let s = serde_json::to_value(camera("end_of_source", None, None)).unwrap();
        assert!(s["connection_attempts"].is_null(), "{s}");
    }
}
