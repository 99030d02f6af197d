//! Prometheus metrics of a run: a [`MetricsExporter`] that owns a registry, is fed by the run
//! (events, frame progress, stage timings) and renders the text exposition format; and
//! [`MetricsExporter::serve`], which answers `GET /metrics` on its own thread
//! ([`MetricsServer`]) until the run ends.
//!
//! Units are the field's base units: seconds, bytes; counters end in `_total`. Every series of
//! a camera carries its `camera` label (the name in events).
//!
//! | metric | type | labels | fed by |
//! |---|---|---|---|
//! | `surveil_build_info` | gauge (1) | `version`, `profile` | [`MetricsExporter::new`] |
//! | `surveil_start_time_seconds` | gauge | | [`MetricsExporter::new`] (Unix time) |
//! | `surveil_model_info` | gauge (1) | `model`, `architecture`, `device`, `weights` | [`MetricsExporter::record_load`] |
//! | `surveil_model_resident_bytes` | gauge | `model` | [`MetricsExporter::record_load`] |
//! | `surveil_frames_total` | counter | `camera` | frame events, [`MetricsExporter::record_progress`], [`MetricsExporter::record_camera_progress`] |
//! | `surveil_camera_fps` | gauge | `camera` | [`MetricsExporter::record_progress`], [`MetricsExporter::record_camera_progress`] |
//! | `surveil_frames_dropped_total` | counter | `camera` | [`MetricsExporter::record_camera_progress`] |
//! | `surveil_frame_queue_depth` | gauge | `camera` | [`MetricsExporter::record_camera_progress`] |
//! | `surveil_stage_seconds` | histogram | `camera`, `stage` | [`MetricsExporter::record_stage`]; until it is first called, events (`frame`, `vlm`, `vlm_vision`, `vlm_ttft`) |
//! | `surveil_vlm_requests_total` | counter | `camera`, `trigger` | frame events whose trigger fired |
//! | `surveil_vlm_calls_total` | counter | `camera`, `trigger`, `outcome` | analysis events |
//! | `surveil_vlm_seconds` | histogram | `camera` | analysis events (hand-off to result) |
//! | `surveil_analyses_skipped_total` | counter | `camera`, `reason` | frame events whose trigger skipped |
//! | `surveil_events_total` | counter | `camera`, `kind`, `level` | every event (alerts: `level` `alert` or `critical`) |
//! | `surveil_analysis_queue_depth` | gauge | | [`MetricsExporter::record_queue`] |
//! | `surveil_process_resident_bytes`, `surveil_process_virtual_bytes`, `surveil_process_peak_resident_bytes` | gauge | | read at each scrape (`/proc/self/status`) |
//! | `surveil_gpu_allocated_bytes`, `surveil_gpu_reserved_bytes` | gauge | `device` | read at each scrape, present only when the driver answers |
//!
//! Stage names are those of [`Stage`]; trigger and skip reasons those of the trigger
//! (`persons_present`, `cooldown`, ...); outcomes those of [`VlmOutcome`]; levels those of
//! [`AlertLevel`]. Frame rate over a window is `rate(surveil_frames_total[1m])`;
//! `surveil_camera_fps` is the rate since the camera's first frame.
//!
//! Feeding never fails and never blocks on a scrape: metrics are atomics, and a scrape renders
//! into a buffer before it writes to the socket. The exporter is an [`EventSink`] whose
//! `write` always succeeds, so a broken scraper cannot end a run.
//!
//! Not here: pushing metrics anywhere, TLS or authentication (bind to a loopback or private
//! address, or put a proxy in front), metrics of other processes.

mod http;
mod memory;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use surveil_models::LoadSummary;

pub use http::MetricsServer;

use crate::decision::AlertLevel;
use crate::event::{Event, EventKind, VlmOutcome};
use crate::metrics::Stage;
use crate::pipeline::RunProgress;
use crate::sink::EventSink;
use crate::{OrchestratorError, Result};

/// The content type of the text exposition format the endpoint answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of `surveil_stage_seconds`, seconds: per-frame stages take milliseconds, VLM
/// stages up to minutes on a CPU.
const STAGE_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Buckets of `surveil_vlm_seconds`, seconds.
const VLM_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

const LEVELS: [AlertLevel; 4] = [
    AlertLevel::Normal,
    AlertLevel::Attention,
    AlertLevel::Alert,
    AlertLevel::Critical,
];

/// What a camera's reader reports, as totals since the camera started: the input of
/// [`MetricsExporter::record_camera_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CameraReading {
    /// Frames analysed.
    pub frames: u64,
    /// Frames per second since the camera's first frame.
    pub fps: f64,
    /// Frames the decode queue dropped (the analysis was slower than the camera).
    pub frames_dropped: u64,
    /// Frames decoded and waiting in the decode queue now.
    pub queue_depth: usize,
}

/// The model a run serves: the input of [`MetricsExporter::record_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts<'a> {
    /// Model id (`git-base-coco`).
    pub model: &'a str,
    /// Architecture name (`git`, `qwen2_vl`, `kimi_vl`).
    pub architecture: &'a str,
    /// Device it is on (`cpu`, `cuda:0`).
    pub device: &'a str,
    /// `dummy` or the checkpoint directory.
    pub weights: &'a str,
    /// Bytes of its weights, as loaded.
    pub resident_bytes: u64,
}

/// The metrics of a run and the registry that renders them. Cheap to clone: clones share the
/// registry, so one clone can be a sink of the run, another an observer's, another the
/// server's.
#[derive(Clone)]
pub struct MetricsExporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    model_info: IntGaugeVec,
    model_resident_bytes: IntGaugeVec,
    frames: IntCounterVec,
    camera_fps: GaugeVec,
    frames_dropped: IntCounterVec,
    frame_queue_depth: IntGaugeVec,
    stage_seconds: HistogramVec,
    vlm_requests: IntCounterVec,
    vlm_calls: IntCounterVec,
    vlm_seconds: HistogramVec,
    analyses_skipped: IntCounterVec,
    events: IntCounterVec,
    analysis_queue_depth: IntGauge,
    /// Serialises the "advance a counter to a total" updates, which read then add.
    totals: Mutex<()>,
    /// Cameras whose series were created at zero.
    cameras: Mutex<HashSet<String>>,
    /// Whether events still feed `surveil_stage_seconds` (until `record_stage` is called).
    stages_from_events: AtomicBool,
}

fn registry_error(e: prometheus::Error) -> OrchestratorError {
    OrchestratorError::MetricsRegistry(e.to_string())
}

/// Registers `metric` and returns it.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> Result<C> {
    registry
        .register(Box::new(metric.clone()))
        .map_err(registry_error)?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).map_err(registry_error)?;
    register(registry, vec)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).map_err(registry_error)?;
    register(registry, vec)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).map_err(registry_error)?;
    register(registry, vec)
}

/// Adds to `counter` what `total` has beyond it (a counter never goes down; a smaller total
/// is ignored).
fn advance(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl MetricsExporter {
    /// A registry with every metric of the module docs, `surveil_build_info` for this build and
    /// `profile`, and the start time set to now.
    ///
    /// Errors: [`OrchestratorError::MetricsRegistry`] when the registry refuses a metric (a
    /// broken invariant of this module: names are constants).
    pub fn new(profile: &str) -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let build_info = gauge_vec(
            r,
            "surveil_build_info",
            "Always 1; the labels give the surveil version and the configuration profile.",
            &["version", "profile"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), profile])
            .set(1);
        let start = register(
            r,
            Gauge::with_opts(Opts::new(
                "surveil_start_time_seconds",
                "Time the run started, seconds since the Unix epoch.",
            ))
            .map_err(registry_error)?,
        )?;
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let camera_fps = register(
            r,
            GaugeVec::new(
                Opts::new(
                    "surveil_camera_fps",
                    "Frames analysed per second since the camera's first frame.",
                ),
                &["camera"],
            )
            .map_err(registry_error)?,
        )?;
        let analysis_queue_depth = register(
            r,
            IntGauge::with_opts(Opts::new(
                "surveil_analysis_queue_depth",
                "Scenes handed to the VLM analyst and not yet taken up.",
            ))
            .map_err(registry_error)?,
        )?;
        let inner = Inner {
            model_info: gauge_vec(
                r,
                "surveil_model_info",
                "Always 1; the labels describe the resident VLM.",
                &["model", "architecture", "device", "weights"],
            )?,
            model_resident_bytes: gauge_vec(
                r,
                "surveil_model_resident_bytes",
                "Bytes of the resident VLM's weights, as loaded.",
                &["model"],
            )?,
            frames: counter_vec(
                r,
                "surveil_frames_total",
                "Frames analysed (detection, tracking, tools, decision).",
                &["camera"],
            )?,
            camera_fps,
            frames_dropped: counter_vec(
                r,
                "surveil_frames_dropped_total",
                "Frames the decode queue dropped because the analysis was slower than the camera.",
                &["camera"],
            )?,
            frame_queue_depth: gauge_vec(
                r,
                "surveil_frame_queue_depth",
                "Frames decoded and waiting for detection.",
                &["camera"],
            )?,
            stage_seconds: histogram_vec(
                r,
                "surveil_stage_seconds",
                "Latency of each stage of the pipeline, seconds.",
                &STAGE_BUCKETS,
                &["camera", "stage"],
            )?,
            vlm_requests: counter_vec(
                r,
                "surveil_vlm_requests_total",
                "Frames on which the trigger asked for a VLM analysis, by trigger reason.",
                &["camera", "trigger"],
            )?,
            vlm_calls: counter_vec(
                r,
                "surveil_vlm_calls_total",
                "VLM analyses finished, by trigger reason and outcome.",
                &["camera", "trigger", "outcome"],
            )?,
            vlm_seconds: histogram_vec(
                r,
                "surveil_vlm_seconds",
                "Wall time of one VLM analysis from hand-off to result, seconds.",
                &VLM_BUCKETS,
                &["camera"],
            )?,
            analyses_skipped: counter_vec(
                r,
                "surveil_analyses_skipped_total",
                "Frames on which the trigger did not ask for a VLM analysis, by reason.",
                &["camera", "reason"],
            )?,
            events: counter_vec(
                r,
                "surveil_events_total",
                "Events recorded, by kind (frame, analysis) and alert level.",
                &["camera", "kind", "level"],
            )?,
            analysis_queue_depth,
            totals: Mutex::new(()),
            cameras: Mutex::new(HashSet::new()),
            stages_from_events: AtomicBool::new(true),
            registry,
        };
        inner
            .registry
            .register(Box::new(
                memory::MemoryCollector::new().map_err(registry_error)?,
            ))
            .map_err(registry_error)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Creates the counters of `camera` at zero the first time it is seen, so that rates and
    /// alert queries have a series from the start.
    fn see_camera(&self, camera: &str) {
        let mut seen = self.inner.cameras.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(camera) {
            return;
        }
        seen.insert(camera.to_string());
        let i = &self.inner;
        i.frames.with_label_values(&[camera]);
        for kind in [EventKind::Frame, EventKind::Analysis] {
            for level in LEVELS {
                i.events
                    .with_label_values(&[camera, kind.as_str(), level.as_str()]);
            }
        }
    }

    /// Advances `counter` to `total` under the lock that keeps two feeders from adding the
    /// same difference twice.
    fn advance_to(&self, counter: &IntCounter, total: u64) {
        let _guard = self.inner.totals.lock().unwrap_or_else(|p| p.into_inner());
        advance(counter, total);
    }

    /// `surveil_model_info` and `surveil_model_resident_bytes` from a load summary.
    pub fn record_load(&self, summary: &LoadSummary) {
        let device = summary.device.to_string();
        self.record_model(&ModelFacts {
            model: &summary.model,
            architecture: summary.architecture,
            device: &device,
            weights: &summary.weights,
            resident_bytes: summary.report.total_bytes(),
        });
    }

    /// `surveil_model_info` (1) and `surveil_model_resident_bytes` of a resident model. A
    /// model loaded later (a fallback) replaces the earlier one's series.
    pub fn record_model(&self, model: &ModelFacts<'_>) {
        let i = &self.inner;
        i.model_info.reset();
        i.model_resident_bytes.reset();
        i.model_info
            .with_label_values(&[model.model, model.architecture, model.device, model.weights])
            .set(1);
        i.model_resident_bytes
            .with_label_values(&[model.model])
            .set(i64::try_from(model.resident_bytes).unwrap_or(i64::MAX));
    }

    /// Counts one event: `surveil_events_total`; frame events also count a frame and the
    /// trigger's decision (`surveil_vlm_requests_total` or `surveil_analyses_skipped_total`);
    /// analysis events count the call (`surveil_vlm_calls_total`, `surveil_vlm_seconds`).
    /// Until [`record_stage`](Self::record_stage) is first called, events also give the stage
    /// timings they carry: `frame` (the event's `processing_ms`), `vlm`, and `vlm_vision` and
    /// `vlm_ttft` of calls that generated (`ok`, `parse_failed`).
    pub fn record_event(&self, event: &Event) {
        let i = &self.inner;
        let camera = event.camera.as_str();
        self.see_camera(camera);
        i.events
            .with_label_values(&[camera, event.kind.as_str(), event.alert_level.as_str()])
            .inc();
        let stages = i.stages_from_events.load(Ordering::Relaxed);
        match event.kind {
            EventKind::Frame => {
                {
                    let _guard = i.totals.lock().unwrap_or_else(|p| p.into_inner());
                    i.frames.with_label_values(&[camera]).inc();
                }
                if let Some(t) = event.trigger.as_deref() {
                    match t.strip_prefix("skip:") {
                        Some(reason) => i
                            .analyses_skipped
                            .with_label_values(&[camera, reason])
                            .inc(),
                        None => i.vlm_requests.with_label_values(&[camera, t]).inc(),
                    }
                }
                if stages {
                    self.observe_stage(camera, Stage::Frame, event.processing_ms.max(0.0) / 1e3);
                }
            }
            EventKind::Analysis => {
                let Some(call) = &event.vlm else { return };
                i.vlm_calls
                    .with_label_values(&[camera, &call.trigger, call.outcome.as_str()])
                    .inc();
                let total = call.total_s.max(0.0);
                i.vlm_seconds.with_label_values(&[camera]).observe(total);
                if stages {
                    self.observe_stage(camera, Stage::Vlm, total);
                    if matches!(call.outcome, VlmOutcome::Ok | VlmOutcome::ParseFailed) {
                        self.observe_stage(camera, Stage::VlmVision, call.vision_s.max(0.0));
                        self.observe_stage(camera, Stage::VlmTtft, call.ttft_s.max(0.0));
                    }
                }
            }
        }
    }

    fn observe_stage(&self, camera: &str, stage: Stage, seconds: f64) {
        self.inner
            .stage_seconds
            .with_label_values(&[camera, stage.as_str()])
            .observe(seconds);
    }

    /// Frame progress of `camera` (the run's [`RunProgress`]): `surveil_frames_total` advances
    /// to `frames` (frames already counted from events are not counted again) and
    /// `surveil_camera_fps` is set.
    pub fn record_progress(&self, camera: &str, progress: &RunProgress) {
        self.see_camera(camera);
        let i = &self.inner;
        self.advance_to(&i.frames.with_label_values(&[camera]), progress.frames);
        i.camera_fps.with_label_values(&[camera]).set(progress.fps);
    }

    /// What a camera's reader reports, as totals since it started: `surveil_frames_total` and
    /// `surveil_frames_dropped_total` advance to the totals (never counting a frame twice,
    /// whichever feeder saw it first), `surveil_camera_fps` and `surveil_frame_queue_depth`
    /// are set.
    pub fn record_camera_progress(&self, camera: &str, reading: &CameraReading) {
        self.see_camera(camera);
        let i = &self.inner;
        self.advance_to(&i.frames.with_label_values(&[camera]), reading.frames);
        self.advance_to(
            &i.frames_dropped.with_label_values(&[camera]),
            reading.frames_dropped,
        );
        i.camera_fps.with_label_values(&[camera]).set(reading.fps);
        i.frame_queue_depth
            .with_label_values(&[camera])
            .set(i64::try_from(reading.queue_depth).unwrap_or(i64::MAX));
    }

    /// One latency sample of `stage` on `camera` into `surveil_stage_seconds`. The first call
    /// makes this the only source of stage timings: events stop feeding them, so that a
    /// pipeline which reports every stage here is never counted twice.
    pub fn record_stage(&self, camera: &str, stage: Stage, took: Duration) {
        self.inner
            .stages_from_events
            .store(false, Ordering::Relaxed);
        self.observe_stage(camera, stage, took.as_secs_f64());
    }

    /// `surveil_analysis_queue_depth`: scenes handed to the analyst and not yet taken up.
    pub fn record_queue(&self, pending: usize) {
        self.inner
            .analysis_queue_depth
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Every metric family now (memory read at this call), sorted by name.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.inner.registry.gather()
    }

    /// The text exposition format (version 0.0.4) of [`gather`](Self::gather), as `GET
    /// /metrics` answers it.
    ///
    /// Errors: [`OrchestratorError::MetricsRegistry`] when a family cannot be encoded (a
    /// broken invariant: the registry only holds valid families).
    pub fn render(&self) -> Result<String> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.gather(), &mut out)
            .map_err(registry_error)?;
        String::from_utf8(out).map_err(|e| OrchestratorError::MetricsRegistry(e.to_string()))
    }

    /// Serves `GET /metrics` on `addr` (port 0: a free port, see
    /// [`MetricsServer::local_addr`]) on a thread of its own until the server is stopped or
    /// dropped. Other paths answer 404, other methods on `/metrics` 405.
    ///
    /// Errors: [`OrchestratorError::MetricsEndpoint`] naming `addr` when it cannot be bound
    /// (in use, not an address of this machine, a privileged port).
    pub fn serve(&self, addr: SocketAddr) -> Result<MetricsServer> {
        http::MetricsServer::start(self.clone(), addr)
    }
}

/// Counts every event ([`MetricsExporter::record_event`]); never fails, so the metrics can
/// never end a run.
impl EventSink for MetricsExporter {
    fn write(&mut self, event: &Event) -> Result<()> {
        self.record_event(event);
        Ok(())
    }
}
