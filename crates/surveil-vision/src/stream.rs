//! A pull-based detect-and-track stream: the caller asks for the next tracked frame.
//!
//! [`DetectTrackStream`] owns a frame source behind the bounded [`FrameQueue`] (decoding runs on
//! its own thread), a detector and a [`ByteTracker`]. Each call to [`Iterator::next`] returns
//! one [`TrackedFrame`]: the frame, the detector's detections for it, the confirmed tracks
//! matched on it and where the time went. Detection is batched: when no detected frame is
//! waiting, the stream reads up to `batch_size` frames (files wait for a full batch, live sources
//! take what is queued), runs one detector pass over them and hands them out one by one; the
//! tracker advances one frame per call, so tracks never run ahead of what the caller has seen.
//!
//! The stream writes nothing: JSONL, events, snapshots are sinks of its frames (see
//! [`crate::pipeline`]). An [`InterruptHandle`] from [`DetectTrackStream::interrupt_handle`]
//! stops it from any thread: `next` returns `None` promptly, also while it waits for a frame,
//! and the source is stopped (an ffmpeg child is killed and reaped). Dropping the stream stops
//! the source and joins its decoding thread, so no ffmpeg child outlives it.

use std::collections::VecDeque;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::detect::{Detection, Detector};
use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource, InterruptHandle};
use crate::pipeline::PipelineOptions;
use crate::source::ffmpeg::url_scheme;
use crate::source::images::is_image_path;
use crate::source::{
    open_source_with_stop, FfmpegOptions, FrameQueue, QueuePolicy, QueueStats, StopSignal,
};
use crate::track::{ByteTracker, Track, TrackedObject};

/// Where the time of one frame went.
///
/// Steps that run once per detector batch (waiting for the batch's frames, pre-processing, the
/// forward pass, post-processing) are split evenly over the frames of the batch, so summing the
/// timings of every frame gives the batch totals (up to a nanosecond per frame of rounding).
/// `track` is this frame's own tracker update. Durations serialize as seconds (f64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FrameTimings {
    /// Waiting for the source to deliver the batch's frames (decoding was the bottleneck).
    #[serde(serialize_with = "secs")]
    pub queue_wait: Duration,
    /// Detector pre-processing (letterbox, input tensor).
    #[serde(serialize_with = "secs")]
    pub preprocess: Duration,
    /// Detector forward pass.
    #[serde(serialize_with = "secs")]
    pub forward: Duration,
    /// Detector post-processing (head decoding, NMS).
    #[serde(serialize_with = "secs")]
    pub postprocess: Duration,
    /// The tracker update of this frame.
    #[serde(serialize_with = "secs")]
    pub track: Duration,
}

impl FrameTimings {
    /// The sum of every step.
    pub fn total(&self) -> Duration {
        self.queue_wait + self.preprocess + self.forward + self.postprocess + self.track
    }
}

impl std::ops::AddAssign for FrameTimings {
    fn add_assign(&mut self, rhs: Self) {
        self.queue_wait += rhs.queue_wait;
        self.preprocess += rhs.preprocess;
        self.forward += rhs.forward;
        self.postprocess += rhs.postprocess;
        self.track += rhs.track;
    }
}

/// One analysed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFrame {
    /// The decoded frame (RGB, its index in the source and its timestamp).
    pub frame: Frame,
    /// What the detector returned for this frame (after its class filter and NMS), sorted by
    /// score, descending; boxes in frame pixels. Includes the low-score boxes ByteTrack uses in
    /// its second association round.
    pub detections: Vec<Detection>,
    /// The confirmed tracks matched on this frame (ByteTrack output), boxes in frame pixels,
    /// not clipped.
    pub tracks: Vec<TrackedObject>,
    /// Where the time went (batch steps split evenly over the batch's frames).
    pub timings: FrameTimings,
}

/// Counters of a stream, readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StreamStats {
    /// Frames the source produced.
    pub frames_decoded: u64,
    /// Frames the queue discarded (`drop_oldest`).
    pub frames_dropped: u64,
    /// Frames the source could not decode and skipped (an image folder's unreadable images).
    pub frames_skipped: u64,
    /// Decode errors the source met without failing: ffmpeg's error lines on a damaged or
    /// truncated file, which then ends early ([`FrameSource::decode_errors`]); 0 otherwise.
    pub decode_errors: u64,
    /// Frames handed to the detector.
    pub frames_detected: u64,
    /// Frames returned by `next` (detected and tracked).
    pub frames_analysed: u64,
    /// Detector passes.
    pub batches: u64,
    /// Detections on the returned frames.
    pub detections: u64,
    /// Time the decoding thread spent inside the source (runs in parallel with analysis).
    #[serde(serialize_with = "secs")]
    pub decode_time: Duration,
    /// Total time per step: every wait for frames (also the last one, which found the end),
    /// every detector pass (also of frames read ahead and never returned), every tracker update.
    pub timings: FrameTimings,
}

/// A frame that went through the detector and waits to be tracked and returned.
struct Detected {
    frame: Frame,
    detections: Vec<Detection>,
    timings: FrameTimings,
}

/// Source → queue → batched detection → ByteTrack, one [`TrackedFrame`] per `next` call.
/// See the module docs.
///
/// `D` is how the stream holds its detector: `Box<dyn Detector>` (the default), `&dyn Detector`,
/// `Arc<DarknetYolo>`, or anything else that dereferences to a [`Detector`]. The stream is
/// `Send` when `D` is, so it can run on its own thread.
///
/// After the end of the source, `max_frames`, an error or an interrupt, `next` returns `None`
/// for good, and the source has been stopped and reaped.
pub struct DetectTrackStream<D = Box<dyn Detector>> {
    detector: D,
    class_names: Vec<String>,
    detector_name: String,
    tracker: ByteTracker,
    queue: Option<FrameQueue>,
    policy: QueuePolicy,
    batch_size: usize,
    max_frames: Option<u64>,
    description: String,
    live: bool,
    fps: Option<f64>,
    total_frames: Option<u64>,
    ahead: VecDeque<Detected>,
    pending_error: Option<VisionError>,
    source_ended: bool,
    done: bool,
    interrupted: Arc<AtomicBool>,
    interrupt: InterruptHandle,
    queue_stats: QueueStats,
    stats: StreamStats,
    span: tracing::Span,
}

impl<D> std::fmt::Debug for DetectTrackStream<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectTrackStream")
            .field("source", &self.description)
            .field("detector", &self.detector_name)
            .field("batch_size", &self.batch_size)
            .field("policy", &self.policy)
            .field("done", &self.done)
            .finish()
    }
}

/// Checks the options a stream relies on: `batch_size` in 1..=64, `queue_capacity` >= 1, the
/// tracker parameters ([`crate::TrackerParams::validate`]).
pub fn validate_options(options: &PipelineOptions) -> Result<()> {
    if !(1..=64).contains(&options.batch_size) {
        return Err(VisionError::InvalidOption {
            name: "batch_size",
            value: options.batch_size.to_string(),
            message: "must be in 1..=64".to_string(),
        });
    }
    if options.queue_capacity == 0 {
        return Err(VisionError::InvalidOption {
            name: "queue_capacity",
            value: "0".to_string(),
            message: "must be >= 1".to_string(),
        });
    }
    options.tracker.validate()
}

impl<D> DetectTrackStream<D>
where
    D: Deref,
    D::Target: Detector,
{
    /// Opens `input` as [`open_source`](crate::source::open_source) does (video file or URL through ffmpeg, image folder,
    /// single image) and starts decoding. The options are checked before anything is opened.
    /// For files the frame count is probed ([`probe_total_frames`]) for
    /// [`total_frames_hint`](Self::total_frames_hint).
    ///
    /// Errors: invalid options, and whatever opening the source returns (missing file, ffmpeg
    /// failure, live source unavailable).
    pub fn open(
        input: &str,
        ffmpeg: &FfmpegOptions,
        detector: D,
        options: PipelineOptions,
    ) -> Result<Self> {
        Self::open_with_stop(input, ffmpeg, detector, options, &StopSignal::new())
    }

    /// [`open`](Self::open) that a [`StopSignal`] can end while it connects: a live source
    /// still waiting for its first connection (or in its reconnect backoff) returns
    /// [`VisionError::Interrupted`] soon after `stop.stop()`, with its ffmpeg child killed and
    /// reaped.
    ///
    /// Errors: as [`open`](Self::open), plus [`VisionError::Interrupted`].
    pub fn open_with_stop(
        input: &str,
        ffmpeg: &FfmpegOptions,
        detector: D,
        options: PipelineOptions,
        stop: &StopSignal,
    ) -> Result<Self> {
        validate_options(&options)?;
        let source = open_source_with_stop(input, ffmpeg, stop)?;
        let count = if source.is_live() {
            None
        } else {
            probe_total_frames(input, ffmpeg)
        };
        let mut stream = Self::from_source(source, detector, options)?;
        stream.total_frames = count;
        Ok(stream)
    }

    /// A stream over an opened source; starts its decoding thread. The frame count is unknown
    /// (set it with [`with_total_frames`](Self::with_total_frames) when the caller knows it).
    ///
    /// Errors: invalid options ([`validate_options`]), or the decoding thread cannot start.
    pub fn from_source(
        source: Box<dyn FrameSource>,
        detector: D,
        options: PipelineOptions,
    ) -> Result<Self> {
        validate_options(&options)?;
        let policy = options
            .queue_policy
            .unwrap_or_else(|| QueuePolicy::default_for(source.is_live()));
        let live = source.is_live();
        let queue = FrameQueue::spawn(source, options.queue_capacity, policy)?;
        let description = queue.describe().to_string();
        let fps = queue.fps();
        // The lost-track buffer is in frames: scale it by the source's rate unless configured.
        let tracker = ByteTracker::for_source(options.tracker.clone(), fps)?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let interrupt = {
            let flag = Arc::clone(&interrupted);
            let abort = queue.abort_handle();
            InterruptHandle::new(move || {
                flag.store(true, Ordering::SeqCst);
                abort.interrupt();
            })
        };
        let detector_name = detector.name().to_string();
        let class_names = detector.class_names().to_vec();
        let span = tracing::info_span!("detect_track", source = %description);
        tracing::info!(
            parent: &span,
            detector = %detector_name,
            batch = options.batch_size,
            policy = ?policy,
            capacity = options.queue_capacity,
            max_frames = ?options.max_frames,
            tracker_fps = tracker.frame_rate(),
            max_time_lost = tracker.max_time_lost(),
            "detect-track stream opened"
        );
        Ok(Self {
            detector,
            class_names,
            detector_name,
            tracker,
            queue: Some(queue),
            policy,
            batch_size: options.batch_size,
            max_frames: options.max_frames,
            description,
            live,
            fps,
            total_frames: None,
            ahead: VecDeque::new(),
            pending_error: None,
            source_ended: false,
            done: false,
            interrupted,
            interrupt,
            queue_stats: QueueStats::default(),
            stats: StreamStats::default(),
            span,
        })
    }

    /// Sets the source's frame count (before `max_frames`), e.g. from [`probe_total_frames`].
    pub fn with_total_frames(mut self, frames: Option<u64>) -> Self {
        self.total_frames = frames;
        self
    }

    /// The detector.
    pub fn detector(&self) -> &D::Target {
        &self.detector
    }

    /// One detector pass over the next batch; the frames go to `self.ahead`.
    fn fill(&mut self) -> Result<()> {
        if self.source_ended || self.pending_error.is_some() {
            return Ok(());
        }
        let mut want = self.batch_size;
        if let Some(max) = self.max_frames {
            let left = max.saturating_sub(self.stats.frames_detected);
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        if want == 0 {
            self.source_ended = true;
            return Ok(());
        }
        let Some(queue) = self.queue.as_ref() else {
            self.source_ended = true;
            return Ok(());
        };
        // Gather a batch: files wait for a full batch; live sources take what is queued.
        let wait_start = Instant::now();
        let mut batch: Vec<Frame> = Vec::with_capacity(want);
        match self.policy {
            QueuePolicy::Block => {
                while batch.len() < want {
                    match queue.recv() {
                        Some(Ok(f)) => batch.push(f),
                        Some(Err(e)) => {
                            self.pending_error = Some(e);
                            self.source_ended = true;
                            break;
                        }
                        None => {
                            self.source_ended = true;
                            break;
                        }
                    }
                }
            }
            QueuePolicy::DropOldest => match queue.recv_batch(want) {
                Some(Ok(fs)) => batch = fs,
                Some(Err(e)) => {
                    self.pending_error = Some(e);
                    self.source_ended = true;
                }
                None => self.source_ended = true,
            },
        }
        let queue_wait = wait_start.elapsed();
        self.stats.timings.queue_wait += queue_wait;
        let Some(first) = batch.first().map(|f| f.index) else {
            return Ok(());
        };
        if self.interrupted.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = batch.len();
        let _batch_span = tracing::debug_span!("batch", first, n).entered();
        let refs: Vec<&Frame> = batch.iter().collect();
        let result = self.detector.detect(&refs)?;
        if result.detections.len() != n {
            return Err(VisionError::InvalidFrame {
                index: first,
                message: format!(
                    "detector {} returned results for {} of {n} frames",
                    self.detector_name,
                    result.detections.len()
                ),
            });
        }
        self.stats.batches += 1;
        self.stats.frames_detected += n as u64;
        self.stats.timings.preprocess += result.timings.preprocess;
        self.stats.timings.forward += result.timings.forward;
        self.stats.timings.postprocess += result.timings.postprocess;
        // n <= 64 (validated batch size).
        let share = |d: Duration| d / n as u32;
        let per_frame = FrameTimings {
            queue_wait: share(queue_wait),
            preprocess: share(result.timings.preprocess),
            forward: share(result.timings.forward),
            postprocess: share(result.timings.postprocess),
            track: Duration::ZERO,
        };
        for (frame, detections) in batch.into_iter().zip(result.detections) {
            self.ahead.push_back(Detected {
                frame,
                detections,
                timings: per_frame,
            });
        }
        Ok(())
    }

    /// Tracks one detected frame.
    fn track(&mut self, d: Detected) -> TrackedFrame {
        let started = Instant::now();
        let tracks = self
            .tracker
            .update(d.frame.index, d.frame.timestamp, &d.detections);
        let track = started.elapsed();
        self.stats.timings.track += track;
        self.stats.frames_analysed += 1;
        self.stats.detections += d.detections.len() as u64;
        TrackedFrame {
            frame: d.frame,
            detections: d.detections,
            tracks,
            timings: FrameTimings { track, ..d.timings },
        }
    }
}

impl<D> DetectTrackStream<D> {
    /// The source (credentials redacted).
    pub fn source_description(&self) -> &str {
        &self.description
    }

    /// Whether the source is live (a camera or stream, not replayed).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The source's nominal frame rate, when known (ffmpeg's report or the `fps` option;
    /// image folders: the configured rate).
    pub fn source_fps(&self) -> Option<f64> {
        self.fps
    }

    /// How many frames the stream yields if it runs to the end, for a progress bar: the
    /// source's frame count (files: probed; image folders: the number of images) capped by
    /// `max_frames`; `max_frames` alone when the count is unknown (live sources); `None` when
    /// neither is known. A hint: a damaged file can end earlier, and with an `fps` option the
    /// count is the duration times that rate.
    pub fn total_frames_hint(&self) -> Option<u64> {
        match (self.total_frames, self.max_frames) {
            (Some(n), Some(m)) => Some(n.min(m)),
            (n, m) => n.or(m),
        }
    }

    /// The detector's name.
    pub fn detector_name(&self) -> &str {
        &self.detector_name
    }

    /// The detector's class names, indexed by `class_id`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Frames per detector pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The queue policy in use.
    pub fn queue_policy(&self) -> QueuePolicy {
        self.policy
    }

    /// Frames already detected and waiting to be returned: 0 at the end of every detector
    /// batch (the next `next` call reads and detects a new batch).
    pub fn buffered(&self) -> usize {
        self.ahead.len()
    }

    /// The tracker (active tracks, parameters).
    pub fn tracker(&self) -> &ByteTracker {
        &self.tracker
    }

    /// The tracks that finished (removed by the tracker) since the last call.
    pub fn take_finished_tracks(&mut self) -> Vec<Track> {
        self.tracker.take_finished()
    }

    /// A handle that stops the stream from any thread: the next (or a waiting) `next` call
    /// returns `None` at once, frames read ahead are discarded, and the source is stopped (an
    /// ffmpeg child is killed at once and reaped by the decoding thread moments later, at the
    /// latest when the stream is dropped).
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupt.clone()
    }

    /// Whether the stream was stopped through its interrupt handle.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Whether `next` will return `None` from now on.
    pub fn is_finished(&self) -> bool {
        self.done
    }

    /// Counters so far.
    pub fn stats(&self) -> StreamStats {
        let q = self
            .queue
            .as_ref()
            .map_or(self.queue_stats, FrameQueue::stats);
        StreamStats {
            frames_decoded: q.decoded,
            frames_dropped: q.dropped,
            frames_skipped: q.skipped,
            decode_errors: q.decode_errors,
            decode_time: q.decode_time,
            ..self.stats
        }
    }

    /// Ends the stream: discards frames read ahead and, when `release`, stops the decoding
    /// thread and the source and joins the thread (an ffmpeg child is reaped by then). After an
    /// interrupt the queue is already aborted and the source stopped; it is kept until the
    /// stream is dropped, so `next` does not wait for a source that is slow to notice.
    fn finish(&mut self, why: &'static str, release: bool) {
        self.done = true;
        self.ahead.clear();
        if release {
            if let Some(queue) = self.queue.take() {
                self.queue_stats = queue.stats();
                drop(queue);
            }
        }
        tracing::debug!(
            parent: &self.span,
            why,
            frames = self.stats.frames_analysed,
            "detect-track stream ended"
        );
    }
}

impl<D> Iterator for DetectTrackStream<D>
where
    D: Deref,
    D::Target: Detector,
{
    type Item = Result<TrackedFrame>;

    /// The next tracked frame; `Some(Err(_))` once for a source or detector error (after the
    /// frames before a source error), then `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let span = self.span.clone();
        let _entered = span.enter();
        if self.is_interrupted() {
            self.finish("interrupted", false);
            return None;
        }
        if self.ahead.is_empty() {
            if let Err(e) = self.fill() {
                tracing::error!(error = %e, "detection failed");
                self.finish("detector error", true);
                return Some(Err(e));
            }
            if self.is_interrupted() {
                self.finish("interrupted", false);
                return None;
            }
        }
        match self.ahead.pop_front() {
            Some(d) => Some(Ok(self.track(d))),
            None => match self.pending_error.take() {
                Some(e) => {
                    self.finish("source error", true);
                    Some(Err(e))
                }
                None => {
                    self.finish("end of source", true);
                    None
                }
            },
        }
    }
}

impl<D> std::iter::FusedIterator for DetectTrackStream<D>
where
    D: Deref,
    D::Target: Detector,
{
}

/// How long `ffprobe` may take before the frame count is given up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The number of frames `input` will produce, when it can be known without decoding: an image
/// folder → its images (png/jpg/jpeg), an image → 1, a local video file → `ffprobe`'s frame
/// count of the first video stream (the container's `nb_frames`, else duration x average
/// frame rate; with `ffmpeg.fps` set, duration x that rate). `None` for URLs, when ffprobe is
/// missing or fails, or after 10 s. `ffprobe` is looked up next to `ffmpeg.ffmpeg_path`.
pub fn probe_total_frames(input: &str, ffmpeg: &FfmpegOptions) -> Option<u64> {
    if url_scheme(input).is_some() {
        return None;
    }
    let path = Path::new(input);
    if path.is_dir() {
        let entries = std::fs::read_dir(path).ok()?;
        let n = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_image_path(p))
            .count();
        return Some(n as u64);
    }
    if is_image_path(path) {
        return Some(1);
    }
    let report = run_ffprobe(&ffprobe_path(&ffmpeg.ffmpeg_path), input)?;
    let count = frame_count_from_probe(&report, ffmpeg.fps);
    tracing::debug!(input = %input, frames = ?count, "frame count probed");
    count
}

/// `ffprobe` next to an ffmpeg binary: `/opt/x/ffmpeg` → `/opt/x/ffprobe`, `ffmpeg` → `ffprobe`.
fn ffprobe_path(ffmpeg: &Path) -> PathBuf {
    let name = ffmpeg
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.contains("ffmpeg"))
        .map_or_else(|| "ffprobe".to_string(), |n| n.replace("ffmpeg", "ffprobe"));
    match ffmpeg.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// Runs ffprobe on the first video stream; its `key=value` report, or `None` on any failure.
fn run_ffprobe(ffprobe: &Path, input: &str) -> Option<String> {
    let mut child = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_frames,avg_frame_rate,duration:format=duration",
            "-of",
            "default=noprint_wrappers=1",
            "-i",
            input,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(
            |e| tracing::debug!(ffprobe = %ffprobe.display(), error = %e, "cannot run ffprobe"),
        )
        .ok()?;
    // The report is a few lines, far below a pipe's buffer: the child never blocks on it.
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::debug!(input = %input, "ffprobe timed out");
                return None;
            }
        }
    };
    let mut report = String::new();
    let mut stdout = child.stdout.take()?;
    std::io::Read::read_to_string(&mut stdout, &mut report).ok()?;
    status.success().then_some(report)
}

/// The frame count from an ffprobe `key=value` report (see [`probe_total_frames`]).
fn frame_count_from_probe(report: &str, fps: Option<f64>) -> Option<u64> {
    let mut nb_frames = None;
    let mut rate = None;
    let mut duration = None;
    for line in report.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        match key {
            "nb_frames" => nb_frames = value.parse::<u64>().ok().filter(|n| *n > 0),
            "avg_frame_rate" => rate = parse_rate(value),
            // The stream's duration comes first; the container's is the fallback.
            "duration" if duration.is_none() => {
                duration = value
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d > 0.0)
            }
            _ => {}
        }
    }
    let frames_at = |r: f64| duration.map(|d: f64| (d * r).round() as u64);
    match fps {
        Some(f) if f.is_finite() && f > 0.0 => frames_at(f),
        _ => nb_frames.or_else(|| rate.and_then(frames_at)),
    }
}

/// `"25/1"` → 25.0; `"0/0"` and junk → `None`.
fn parse_rate(value: &str) -> Option<f64> {
    let r = match value.split_once('/') {
        Some((n, d)) => n.parse::<f64>().ok()? / d.parse::<f64>().ok()?,
        None => value.parse::<f64>().ok()?,
    };
    (r.is_finite() && r > 0.0).then_some(r)
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_from_an_ffprobe_report() {
        let avi = "nb_frames=795\navg_frame_rate=10/1\nduration=79.500000\nduration=79.500000\n";
        assert_eq!(frame_count_from_probe(avi, None), Some(795));
        // Resampled by the fps filter: duration x rate.
        assert_eq!(frame_count_from_probe(avi, Some(2.0)), Some(159));
        // Matroska has no per-stream count: duration x average rate.
        let mkv = "avg_frame_rate=30000/1001\nduration=N/A\nnb_frames=N/A\nduration=10.010000\n";
        assert_eq!(frame_count_from_probe(mkv, None), Some(300));
        assert_eq!(frame_count_from_probe("avg_frame_rate=0/0\n", None), None);
        assert_eq!(frame_count_from_probe("", Some(5.0)), None);
    }

    #[test]
    fn rates_and_ffprobe_location() {
        assert_eq!(parse_rate("25/1"), Some(25.0));
        assert_eq!(parse_rate("0/0"), None);
        assert_eq!(parse_rate("x"), None);
        assert_eq!(ffprobe_path(Path::new("ffmpeg")), PathBuf::from("ffprobe"));
        assert_eq!(
            ffprobe_path(Path::new("/opt/ff/bin/ffmpeg")),
            PathBuf::from("/opt/ff/bin/ffprobe")
        );
        assert_eq!(
            ffprobe_path(Path::new("/x/my-decoder")),
            PathBuf::from("/x/ffprobe")
        );
    }

    #[test]
    fn options_are_checked() {
        let ok = PipelineOptions::default();
        assert!(validate_options(&ok).is_ok());
        let e = validate_options(&PipelineOptions {
            batch_size: 65,
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = validate_options(&PipelineOptions {
            queue_capacity: 0,
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("queue_capacity"), "{e}");
        let mut bad = ok;
        bad.tracker.track_low_thresh = 0.9;
        assert!(validate_options(&bad).is_err());
    }

    #[test]
    fn the_default_stream_is_send() {
        fn send<T: Send>() {}
        send::<DetectTrackStream>();
        send::<DetectTrackStream<Arc<dyn Detector + Sync>>>();
    }
}
