//! surveil-vision: everything between a camera and a list of tracked people.
//!
//! - [`source`]: frame sources behind one trait ([`FrameSource`]): video files and RTSP/HTTP
//!   streams through an `ffmpeg` child process, image folders, single images; a bounded frame
//!   queue with a drop policy between decoding and analysis.
//! - [`detect`]: the [`Detector`] trait and YOLOv3-tiny loaded from Darknet `.cfg` + `.weights`,
//!   run in candle ([`DarknetYolo`]).
//! - [`track`]: ByteTrack multi-object tracking ([`ByteTracker`]).
//! - [`pipeline`]: source → detect → track → JSONL, with run statistics; [`render`] draws
//!   tracks onto frames.
//!
//! Not here: behaviour analysis, VLM calls, alerts (those live in `surveil-orchestrator`), and
//! configuration merging (`surveil-config`; this crate takes plain option structs, built from
//! the config with `YoloOptions::from_config` and `TrackerParams::from_config`).

#![deny(missing_docs)]

pub mod darknet;
pub mod detect;
pub mod error;
pub mod frame;
pub mod geometry;
pub mod pipeline;
pub mod render;
pub mod source;
pub mod track;

pub use detect::{DarknetYolo, Detection, Detector, YoloOptions};
pub use error::{Result, VisionError};
pub use frame::{Frame, FrameSource, FrameSourceExt, InterruptHandle};
pub use geometry::BBox;
pub use pipeline::{
    run_detect_track, PipelineOptions, RunHooks, RunSummary, StageTimings, TrackLine,
};
pub use render::{draw_tracks, save_tracks_png};
pub use source::{open_source, FfmpegOptions, FfmpegSource, FrameQueue, QueuePolicy};
pub use track::{ByteTracker, Track, TrackedObject, TrackerParams};
