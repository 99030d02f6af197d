//! The analysis pipeline of surveil: frames from `surveil-vision` become scenes, behaviour tools
//! turn scenes into observations, a trigger decides when the vision-language model is due, the
//! analyst asks it for a verdict, the decision engine raises alerts, and sinks record it all.
//!
//! # Entry points
//!
//! - [`run`] / [`run_with_sinks`]: the whole pipeline from a validated
//!   [`SystemConfig`](surveil_config::SystemConfig) and [`RunOptions`] (source, run folder,
//!   detector files) or [`MultiCameraOptions`] (several [`CameraOptions`], one model for all)
//!   until the sources end, `max_frames`, or a stop flag is set. It writes `events.jsonl`,
//!   alert frames and `summary.json` into the run folder and returns the [`RunSummary`] (with a
//!   [`CameraSummary`] per camera); [`run_with_sinks`] also hands every [`Event`] to your
//!   [`EventSink`]s (any `FnMut(&Event) -> Result<()> + Send` closure is one). A
//!   [`RunObserver`] sees the model load, each source open, every frame's [`RunProgress`] and
//!   [`CameraProgress`], stage latencies and the analysis queue.
//! - [`MetricsExporter`]: Prometheus metrics of a run, fed as an [`EventSink`] and from the
//!   observer's progress, served at `GET /metrics` by [`MetricsExporter::serve`] (the
//!   [`exporter`] module lists every metric).
//! - [`MqttPublisher`] ([`mqtt`]): an [`EventSink`] that publishes events, retained alerts,
//!   node health and availability to an MQTT broker from `mqtt` configuration, never blocking
//!   the run; [`MqttStatsObserver`] sends the health messages.
//! - [`ModelChoice`]: the model the configuration names (loaded and unloaded by the run, with
//!   fallbacks when enabled), or any [`Vlm`](surveil_models::vlm::Vlm) of yours.
//! - The stages on their own, for a loop of your own: [`scene`], [`tools`] (behaviour tools and
//!   their runner), [`trigger`], [`prompt`], [`verdict`] (the verdict, its JSON schema and the
//!   lenient parser), [`analyst`] (the model on its own thread) and its fair [`queue`] across
//!   cameras, [`decision`], [`metrics`].
//!
//! Times in events and summaries are seconds (`f64`) unless a field says otherwise;
//! timestamps are RFC 3339 in UTC; boxes are `[x1, y1, x2, y2]` in pixels of the source frame.
//!
//! # Example
//!
//! The `testing` profile (git-base-coco) with dummy weights over the sample clip, alerts
//! collected by a sink of the caller. `examples/run_pipeline.rs` is the runnable version.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//!
//! use surveil_config::{paths, ConfigLoader};
//! use surveil_orchestrator::{
//!     run_with_sinks, AlertLevel, Event, EventKind, EventSink, ModelChoice, NoObserver,
//!     RunOptions,
//! };
//!
//! /// Keeps the analysis events at level alert or above.
//! #[derive(Default)]
//! struct Alerts(Vec<Event>);
//!
//! impl EventSink for Alerts {
//!     fn write(&mut self, event: &Event) -> surveil_orchestrator::Result<()> {
//!         if event.kind == EventKind::Analysis && event.alert_level >= AlertLevel::Alert {
//!             self.0.push(event.clone());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConfigLoader::new()
//!     .profile(Some("testing"))
//!     .flag("vlm.weights", "dummy", "--weights")
//!     .load()?
//!     .config;
//! let mut options = RunOptions::new(
//!     paths::asset("video/vtest.avi").to_string_lossy(),
//!     "/tmp/surveil-example-run",
//!     paths::asset("yolov3-tiny"),
//! );
//! options.max_frames = Some(10);
//! let stop = Arc::new(AtomicBool::new(false)); // set it from a signal handler to stop early
//! let mut alerts = Alerts::default();
//! let summary = run_with_sinks(
//!     &config,
//!     &options,
//!     ModelChoice::FromConfig(None),
//!     stop,
//!     &mut NoObserver,
//!     &mut [&mut alerts],
//! )?;
//! println!("{} frames, {} events, {} alerts", summary.frames, summary.events, alerts.0.len());
//! # Ok(())
//! # }
//! ```
//!
//! Not here: frame decoding, detection and tracking (`surveil-vision`), model loading and
//! generation (`surveil-models`), configuration merging (`surveil-config`), signal handling and
//! progress display (the `surveil` CLI).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod analyst;
pub(crate) mod caption;
pub mod decision;
pub mod error;
pub mod event;
pub mod exporter;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;
pub mod prompt;
pub mod queue;
pub mod scene;
pub mod sink;
pub mod tools;
pub mod trigger;
pub mod verdict;

pub use decision::AlertLevel;
pub use error::{OrchestratorError, Result};
pub use event::{Event, EventKind};
pub use exporter::{CameraReading, MetricsExporter, MetricsServer};
pub use metrics::Stage;
pub use mqtt::{MqttHandle, MqttPublisher, MqttStatsObserver};
pub use pipeline::{
    run, run_with_sinks, CameraOptions, CameraProgress, CameraSummary, ModelChoice,
    MultiCameraOptions, NoObserver, RunObserver, RunOptions, RunProgress, RunSummary, RunTarget,
};
pub use sink::{EventSink, JsonlSink};
