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
//! # Entry points
//!
//! - [`DetectTrackStream::open`]: a video file, an `rtsp://`/`http(s)://` URL, an image folder
//!   or one image, a detector and [`PipelineOptions`] → an iterator of [`TrackedFrame`]s.
//!   Iterate it yourself, or drain it into sinks with [`run_stream`]: a [`TrackSink`] is any
//!   `FnMut(&TrackedFrame) -> Result<()>`, or a type of yours, or the [`JsonlTrackWriter`].
//! - [`DarknetYolo::on_cpu`] with [`YoloOptions::yolov3_tiny`]: the person detector; any
//!   [`Detector`] implementation can stand in for it.
//! - [`ByteTracker`] and [`open_source`] on their own, for callers that detect elsewhere or
//!   only decode.
//!
//! Boxes ([`BBox`]) are `x1, y1, x2, y2` in pixels of the source frame; frames ([`Frame`]) are
//! 8-bit RGB, row-major; timestamps are [`std::time::Duration`]s from the start of the source.
//! Decoding needs the `ffmpeg` binary on `PATH` (or [`FfmpegOptions::ffmpeg_path`]); image
//! folders and single images do not.
//!
//! # Example
//!
//! People tracked in the first 50 frames of the sample clip (the model files and the clip are
//! what `scripts/setup.sh` puts in the asset cache):
//!
//! ```no_run
//! use surveil_vision::{
//!     DarknetYolo, DetectTrackStream, FfmpegOptions, PipelineOptions, YoloOptions,
//! };
//!
//! let assets = surveil_config::paths::assets_dir();
//! let detector = DarknetYolo::on_cpu(&YoloOptions::yolov3_tiny(&assets.join("yolov3-tiny")))?;
//! let options = PipelineOptions { max_frames: Some(50), ..PipelineOptions::default() };
//! let clip = assets.join("video/vtest.avi");
//! let mut stream = DetectTrackStream::open(
//!     &clip.to_string_lossy(),
//!     &FfmpegOptions::default(),
//!     Box::new(detector),
//!     options,
//! )?;
//! let names = stream.class_names().to_vec();
//! while let Some(tracked) = stream.next() {
//!     let tracked = tracked?;
//!     let people = tracked.tracks.iter().filter(|t| names[t.class_id] == "person").count();
//!     println!(
//!         "frame {} at {:.2} s: {people} people",
//!         tracked.frame.index,
//!         tracked.frame.timestamp.as_secs_f64()
//!     );
//! }
//! println!("{:?}", stream.stats());
//! # Ok::<(), surveil_vision::VisionError>(())
//! ```
//!
//! `examples/detect_track.rs` runs any input into a JSONL file and a callback of its own.
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
