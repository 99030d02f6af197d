//! surveil-vision: everything between a camera and a list of tracked people.
//!
//! - [`source`]: frame sources behind one trait ([`FrameSource`]): video files and RTSP/HTTP
//!   streams through an `ffmpeg` child process, image folders, single images; a bounded frame
//!   queue with a drop policy between decoding and analysis.
//! - [`detect`]: the [`Detector`] trait and YOLOv3-tiny loaded from Darknet `.cfg` + `.weights`,
//!   run in candle ([`DarknetYolo`]).
//! - [`track`]: ByteTrack multi-object tracking ([`ByteTracker`]).
//! - [`stream`]: the pull-based detect-and-track stream ([`DetectTrackStream`]): source →
//!   queue → batched detection → ByteTrack, one [`TrackedFrame`] per call.
//! - [`pipeline`]: the stream drained into sinks ([`TrackSink`]; the JSONL track writer), with
//!   run statistics; [`render`] draws tracks onto frames.
//!
//! Not here: behaviour analysis, VLM calls, alerts (those live in `surveil-orchestrator`), and
//! configuration merging (`surveil-config`; this crate takes plain option structs, built from
//! the config with `YoloOptions::from_config` and `TrackerParams::from_config`).
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod darknet;
pub mod detect;
pub mod error;
pub mod frame;
pub mod geometry;
pub mod pipeline;
pub mod render;
pub mod source;
pub mod stream;
pub mod track;

pub use detect::{DarknetYolo, Detection, Detector, YoloOptions};
pub use error::{Result, VisionError};
pub use frame::{Frame, FrameSource, FrameSourceExt, InterruptHandle};
pub use geometry::BBox;
pub use pipeline::{
    run_detect_track, run_stream, JsonlTrackWriter, PipelineOptions, RunHooks, RunSummary,
    StageTimings, TrackLine, TrackSink,
};
pub use render::{draw_tracks, save_tracks_png};
pub use source::{
    open_source, open_source_with_stop, FfmpegOptions, FfmpegSource, FrameQueue, QueuePolicy,
    StopSignal,
};
pub use stream::{probe_total_frames, DetectTrackStream, FrameTimings, StreamStats, TrackedFrame};
pub use track::{ByteTracker, Track, TrackedObject, TrackerParams};
