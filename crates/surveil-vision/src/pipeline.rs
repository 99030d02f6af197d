//! The detect + track loop the CLI runs: frames from a source (through the bounded queue),
//! batched detection, ByteTrack, one JSONL line per track per frame, and run statistics.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::detect::{DetectTimings, Detector};
use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource};
use crate::source::{FrameQueue, QueuePolicy};
use crate::track::{ByteTracker, TrackedObject, TrackerParams};

/// Options of a detect + track run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineOptions {
    /// Frames per detector forward pass (1..=64).
    pub batch_size: usize,
    /// Frames buffered between decoding and analysis (>= 1).
    pub queue_capacity: usize,
    /// Queue policy; `None`: `drop_oldest` for live sources, `block` for files.
    pub queue_policy: Option<QueuePolicy>,
    /// Stop after this many analysed frames.
    pub max_frames: Option<u64>,
    /// ByteTrack parameters.
    pub tracker: TrackerParams,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            batch_size: 1,
            queue_capacity: 8,
            queue_policy: None,
            max_frames: None,
            tracker: TrackerParams::default(),
        }
    }
}

/// Total time per stage of a run.
/// Durations serialize as seconds (f64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimings {
    /// Decoding thread inside the source (runs in parallel with analysis).
    #[serde(serialize_with = "secs")]
    pub decode: Duration,
    /// Analysis loop waiting for frames (decoding was the bottleneck for this long).
    #[serde(serialize_with = "secs")]
    pub queue_wait: Duration,
    /// Detector pre-processing (letterbox, input tensor).
    #[serde(serialize_with = "secs")]
    pub preprocess: Duration,
    /// Detector forward pass.
    #[serde(serialize_with = "secs")]
    pub forward: Duration,
    /// Detector post-processing (decode, NMS).
    #[serde(serialize_with = "secs")]
    pub postprocess: Duration,
    /// Tracker updates.
    #[serde(serialize_with = "secs")]
    pub track: Duration,
    /// Writing JSONL and the per-frame hook.
    #[serde(serialize_with = "secs")]
    pub output: Duration,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The source (credentials redacted).
    pub source: String,
    /// The detector's name.
    pub detector: String,
    /// Frames the source produced.
    pub frames_decoded: u64,
    /// Frames detected and tracked.
    pub frames_analysed: u64,
    /// Frames the queue dropped (`drop_oldest`).
    pub frames_dropped: u64,
    /// Detections (after class filter and NMS) on analysed frames.
    pub detections: u64,
    /// Distinct confirmed tracks that appear in the output.
    pub tracks: u64,
    /// Output lines per track, averaged over tracks (0 without tracks).
    pub mean_track_length: f64,
    /// Longest track, in output lines.
    pub max_track_length: u64,
    /// JSONL lines written.
    pub lines_written: u64,
    /// Wall-clock time of the run.
    #[serde(serialize_with = "secs")]
    pub wall_time: Duration,
    /// Analysed frames per wall-clock second.
    pub analysed_fps: f64,
    /// Time per stage.
    pub timings: StageTimings,
    /// Whether the run was cancelled before the source ended.
    pub cancelled: bool,
}

/// One line of the JSONL output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackLine {
    /// Frame index in the source.
    pub frame: u64,
    /// Frame timestamp, seconds.
    pub timestamp: f64,
    /// Track id.
    pub track_id: u64,
    /// Class name.
    pub class: String,
    /// Box left, frame pixels (clipped to the frame).
    pub x1: f32,
    /// Box top.
    pub y1: f32,
    /// Box right.
    pub x2: f32,
    /// Box bottom.
    pub y2: f32,
    /// Score of the matched detection.
    pub score: f32,
}

/// Called after every analysed frame with its confirmed, matched tracks.
pub type FrameHook<'a> = Box<dyn FnMut(&Frame, &[TrackedObject]) + 'a>;

/// Optional controls of a run.
#[derive(Default)]
pub struct RunHooks<'a> {
    /// Set to true (e.g. from a Ctrl-C handler) to stop after the current batch.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called after every analysed frame with its confirmed, matched tracks.
    pub on_frame: Option<FrameHook<'a>>,
}

/// Runs `source` through `detector` and ByteTrack, writing one JSON line per track per frame to
/// `out` (flushed after every batch). Returns the run's statistics; a source error after some
/// frames is returned as the error, with everything before it already written.
pub fn run_detect_track(
    source: Box<dyn FrameSource>,
    detector: &dyn Detector,
    options: &PipelineOptions,
    out: &mut dyn Write,
    mut hooks: RunHooks<'_>,
) -> Result<RunSummary> {
    if !(1..=64).contains(&options.batch_size) {
        return Err(VisionError::InvalidOption {
            name: "batch_size",
            value: options.batch_size.to_string(),
            message: "must be in 1..=64".to_string(),
        });
    }
    let mut tracker = ByteTracker::new(options.tracker.clone())?;
    let policy = options
        .queue_policy
        .unwrap_or_else(|| QueuePolicy::default_for(source.is_live()));
    let queue = FrameQueue::spawn(source, options.queue_capacity, policy)?;
    let description = queue.describe().to_string();
    let span = tracing::info_span!("detect_track", source = %description);
    let _guard = span.enter();
    tracing::info!(
        detector = detector.name(),
        batch = options.batch_size,
        policy = ?policy,
        capacity = options.queue_capacity,
        "run started"
    );

    let started = Instant::now();
    let names = detector.class_names();
    let mut timings = StageTimings::default();
    let mut det_t = DetectTimings::default();
    let mut analysed = 0u64;
    let mut detections = 0u64;
    let mut lines = 0u64;
    let mut lengths: HashMap<u64, u64> = HashMap::new();
    let mut cancelled = false;
    let mut pending_error = None;
    let mut ended = false;

    while !ended {
        if hooks
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            cancelled = true;
            break;
        }
        let mut want = options.batch_size;
        if let Some(max) = options.max_frames {
            if analysed >= max {
                break;
            }
            want = want.min((max - analysed) as usize);
        }
        // Gather a batch: files wait for a full batch; live sources take what is queued.
        let wait_start = Instant::now();
        let mut batch: Vec<Frame> = Vec::with_capacity(want);
        match policy {
            QueuePolicy::Block => {
                while batch.len() < want {
                    match queue.recv() {
                        Some(Ok(f)) => batch.push(f),
                        Some(Err(e)) => {
                            pending_error = Some(e);
                            ended = true;
                            break;
                        }
                        None => {
                            ended = true;
                            break;
                        }
                    }
                }
            }
            QueuePolicy::DropOldest => match queue.recv_batch(want) {
                Some(Ok(fs)) => batch = fs,
                Some(Err(e)) => {
                    pending_error = Some(e);
                    ended = true;
                }
                None => ended = true,
            },
        }
        timings.queue_wait += wait_start.elapsed();
        if batch.is_empty() {
            break;
        }

        let refs: Vec<&Frame> = batch.iter().collect();
        let frame_span = tracing::debug_span!("batch", first = batch[0].index, n = batch.len());
        let _fg = frame_span.enter();
        let result = detector.detect(&refs)?;
        det_t += result.timings;

        for (frame, dets) in batch.iter().zip(&result.detections) {
            detections += dets.len() as u64;
            let t0 = Instant::now();
            let tracked = tracker.update(frame.index, frame.timestamp, dets);
            let t1 = Instant::now();
            timings.track += t1 - t0;
            for t in &tracked {
                let b = t.bbox.clipped(frame.width as f32, frame.height as f32);
                let line = TrackLine {
                    frame: frame.index,
                    timestamp: frame.timestamp.as_secs_f64(),
                    track_id: t.track_id,
                    class: names
                        .get(t.class_id)
                        .cloned()
                        .unwrap_or_else(|| t.class_id.to_string()),
                    x1: b.x1,
                    y1: b.y1,
                    x2: b.x2,
                    y2: b.y2,
                    score: t.score,
                };
                serde_json::to_writer(&mut *out, &line)
                    .map_err(|e| VisionError::Output(std::io::Error::other(e)))?;
                out.write_all(b"\n").map_err(VisionError::Output)?;
                *lengths.entry(t.track_id).or_default() += 1;
                lines += 1;
            }
            if let Some(hook) = hooks.on_frame.as_mut() {
                hook(frame, &tracked);
            }
            analysed += 1;
            timings.output += t1.elapsed();
        }
        let t = Instant::now();
        out.flush().map_err(VisionError::Output)?;
        timings.output += t.elapsed();
    }

    let qstats = queue.stats();
    drop(queue);
    let wall = started.elapsed();
    timings.decode = qstats.decode_time;
    timings.preprocess = det_t.preprocess;
    timings.forward = det_t.forward;
    timings.postprocess = det_t.postprocess;
    let tracks = lengths.len() as u64;
    let summary = RunSummary {
        source: description,
        detector: detector.name().to_string(),
        frames_decoded: qstats.decoded,
        frames_analysed: analysed,
        frames_dropped: qstats.dropped,
        detections,
        tracks,
        mean_track_length: if tracks == 0 {
            0.0
        } else {
            lines as f64 / tracks as f64
        },
        max_track_length: lengths.values().copied().max().unwrap_or(0),
        lines_written: lines,
        wall_time: wall,
        analysed_fps: if wall.as_secs_f64() > 0.0 {
            analysed as f64 / wall.as_secs_f64()
        } else {
            0.0
        },
        timings,
        cancelled,
    };
    if let Some(e) = pending_error {
        tracing::error!(error = %e, frames = analysed, "run ended by a source error");
        return Err(e);
    }
    tracing::info!(
        frames = summary.frames_analysed,
        dropped = summary.frames_dropped,
        tracks = summary.tracks,
        mean_track_length = summary.mean_track_length,
        fps = summary.analysed_fps,
        "run finished"
    );
    Ok(summary)
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
