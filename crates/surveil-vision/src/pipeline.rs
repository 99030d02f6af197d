//! The detect + track run the CLI does: a [`DetectTrackStream`] drained into sinks
//! ([`TrackSink`]), the JSONL track writer ([`JsonlTrackWriter`]) first among them, with run
//! statistics ([`RunSummary`]).
//!
//! The stream yields tracked frames; sinks decide what to write (as ripgrep's searcher hands
//! matches to a `Sink` and the printer owns the formats).
//!
//! Files are never left half-written where a good one was: every output file of a run is an
//! [`AtomicOutputFile`], written under a temporary name beside its target and renamed over it
//! when the run succeeds (a stop on request, such as Ctrl-C or `max_frames`, is a success); a
//! failed run leaves the targets as they were and keeps the partial files. [`PngSnapshotSink`]
//! draws requested frames into PNG files the same way.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use crate::detect::Detector;
use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource};
use crate::source::QueuePolicy;
use crate::stream::{DetectTrackStream, TrackedFrame};
use crate::track::{TrackedObject, TrackerParams};

/// Options of a detect + track stream or run (checked by [`crate::stream::validate_options`]).
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
    /// The sinks: writing JSONL and the per-frame hook.
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

/// One line of the JSONL output: one track on one frame.
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

impl TrackLine {
    /// The line of `track` on `frame`: the box clipped to the frame, the class named from
    /// `class_names` (the class index as text when the list has no such entry).
    pub fn new(frame: &Frame, track: &TrackedObject, class_names: &[String]) -> Self {
        let b = track.bbox.clipped(frame.width as f32, frame.height as f32);
        Self {
            frame: frame.index,
            timestamp: frame.timestamp.as_secs_f64(),
            track_id: track.track_id,
            class: class_names
                .get(track.class_id)
                .cloned()
                .unwrap_or_else(|| track.class_id.to_string()),
            x1: b.x1,
            y1: b.y1,
            x2: b.x2,
            y2: b.y2,
            score: track.score,
        }
    }
}

/// A consumer of tracked frames: a file format, an event recorder, a preview.
pub trait TrackSink {
    /// One analysed frame, in stream order.
    fn write_frame(&mut self, frame: &TrackedFrame) -> Result<()>;

    /// Called when the stream has no detected frame waiting (the end of each detector batch)
    /// and at the end of a run: push buffered output out.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Any `FnMut(&TrackedFrame) -> Result<()>` is a sink without buffered output.
impl<F> TrackSink for F
where
    F: FnMut(&TrackedFrame) -> Result<()>,
{
    fn write_frame(&mut self, frame: &TrackedFrame) -> Result<()> {
        self(frame)
    }
}

/// Writes one JSON line ([`TrackLine`]) per track per frame.
#[derive(Debug)]
pub struct JsonlTrackWriter<W: Write> {
    out: W,
    class_names: Vec<String>,
    lines: u64,
}

impl<W: Write> JsonlTrackWriter<W> {
    /// A writer to `out`; `class_names` (the detector's) name the classes.
    pub fn new(out: W, class_names: &[String]) -> Self {
        Self {
            out,
            class_names: class_names.to_vec(),
            lines: 0,
        }
    }

    /// Lines written so far.
    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// The underlying writer (not flushed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> TrackSink for JsonlTrackWriter<W> {
    /// Errors: [`VisionError::Output`] when writing fails.
    fn write_frame(&mut self, frame: &TrackedFrame) -> Result<()> {
        for t in &frame.tracks {
            let line = TrackLine::new(&frame.frame, t, &self.class_names);
            serde_json::to_writer(&mut self.out, &line)
                .map_err(|e| VisionError::Output(std::io::Error::other(e)))?;
            self.out.write_all(b"\n").map_err(VisionError::Output)?;
            self.lines += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(VisionError::Output)
    }
}

/// Runs `source` through `detector` and ByteTrack, writing one JSON line per track per frame to
/// `out` (flushed after every batch). Returns the run's statistics; a source error after some
/// frames is returned as the error, with everything before it already written.
///
/// A [`DetectTrackStream`] drained by [`run_stream`] into a [`JsonlTrackWriter`] and the
/// `on_frame` hook.
pub fn run_detect_track(
    source: Box<dyn FrameSource>,
    detector: &dyn Detector,
    options: &PipelineOptions,
    out: &mut dyn Write,
    hooks: RunHooks<'_>,
) -> Result<RunSummary> {
    let mut stream = DetectTrackStream::from_source(source, detector, options.clone())?;
    let mut writer = JsonlTrackWriter::new(out, detector.class_names());
    let RunHooks { cancel, on_frame } = hooks;
    let mut hook = on_frame.map(|mut f| {
        move |tf: &TrackedFrame| -> Result<()> {
            f(&tf.frame, &tf.tracks);
            Ok(())
        }
    });
    let mut sinks: Vec<&mut dyn TrackSink> = vec![&mut writer];
    if let Some(h) = hook.as_mut() {
        sinks.push(h);
    }
    run_stream(&mut stream, &mut sinks, cancel.as_deref())
}

/// Drains `stream` into `sinks` (each frame to each sink, in order; sinks flushed at the end of
/// every detector batch and at the end) and returns the run's statistics. `lines_written`,
/// `tracks` and the track lengths count one line per track per frame, as
/// [`JsonlTrackWriter`] writes them.
///
/// `cancel` is checked before each detector batch: once set, the run stops and the summary
/// says `cancelled`; a source error that arrives after it is set (ffmpeg killed by the same
/// Ctrl-C) ends the run as cancelled, not as an error. Stopping the stream through its
/// interrupt handle also counts as cancelled.
///
/// Errors: the first source, detector or sink error; everything before it has been written
/// and flushed.
pub fn run_stream<D>(
    stream: &mut DetectTrackStream<D>,
    sinks: &mut [&mut dyn TrackSink],
    cancel: Option<&AtomicBool>,
) -> Result<RunSummary>
where
    D: std::ops::Deref,
    D::Target: Detector,
{
    let started = Instant::now();
    let cancel_set = || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    let mut output = Duration::ZERO;
    let mut analysed = 0u64;
    let mut detections = 0u64;
    let mut lines = 0u64;
    let mut lengths: HashMap<u64, u64> = HashMap::new();
    let mut cancelled = false;
    let mut error = None;
    loop {
        if stream.buffered() == 0 && cancel_set() {
            cancelled = true;
            break;
        }
        let tf = match stream.next() {
            None => break,
            Some(Ok(tf)) => tf,
            Some(Err(e)) => {
                if cancel_set() {
                    tracing::debug!(error = %e, "source error after cancel; run ends as cancelled");
                    cancelled = true;
                } else {
                    error = Some(e);
                }
                break;
            }
        };
        let t = Instant::now();
        for sink in sinks.iter_mut() {
            sink.write_frame(&tf)?;
        }
        if stream.buffered() == 0 {
            for sink in sinks.iter_mut() {
                sink.flush()?;
            }
        }
        output += t.elapsed();
        analysed += 1;
        detections += tf.detections.len() as u64;
        for t in &tf.tracks {
            *lengths.entry(t.track_id).or_default() += 1;
            lines += 1;
        }
    }
    let t = Instant::now();
    for sink in sinks.iter_mut() {
        sink.flush()?;
    }
    output += t.elapsed();
    cancelled |= stream.is_interrupted();

    let stats = stream.stats();
    let wall = started.elapsed();
    let tracks = lengths.len() as u64;
    let summary = RunSummary {
        source: stream.source_description().to_string(),
        detector: stream.detector_name().to_string(),
        frames_decoded: stats.frames_decoded,
        frames_analysed: analysed,
        frames_dropped: stats.frames_dropped,
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
        timings: StageTimings {
            decode: stats.decode_time,
            queue_wait: stats.timings.queue_wait,
            preprocess: stats.timings.preprocess,
            forward: stats.timings.forward,
            postprocess: stats.timings.postprocess,
            track: stats.timings.track,
            output,
        },
        cancelled,
    };
    let _span = tracing::info_span!("detect_track", source = %summary.source).entered();
    if let Some(e) = error {
        tracing::error!(error = %e, frames = analysed, "run ended by an error");
        return Err(e);
    }
    tracing::info!(
        frames = summary.frames_analysed,
        dropped = summary.frames_dropped,
        tracks = summary.tracks,
        mean_track_length = summary.mean_track_length,
        fps = summary.analysed_fps,
        cancelled,
        "run finished"
    );
    Ok(summary)
}

/// A file that replaces its target only when complete: written (buffered) under a temporary
/// name beside the target, `TARGET.XXXXXX.partial` (created exclusively, so never through an
/// existing link), and renamed over the target by [`commit`](Self::commit) after an `fsync`.
/// Until then the target, if any, is left exactly as it was.
///
/// A run that fails [`abandon`](Self::abandon)s its outputs: the partial file is kept under its
/// temporary name (so nothing written is lost) when it holds any bytes, and removed when empty.
/// Dropping an uncommitted file abandons it the same way. A symbolic link at the target is
/// replaced by the new file; the file it pointed to is not touched.
///
/// The same idea as `tempfile::NamedTempFile::persist`, on which it is built; new files get the
/// permissions `File::create` would give (0o666 less the umask).
#[derive(Debug)]
pub struct AtomicOutputFile {
    target: PathBuf,
    partial: PathBuf,
    file: Option<BufWriter<NamedTempFile>>,
}

impl AtomicOutputFile {
    /// Creates the temporary file in the target's directory.
    ///
    /// Errors: [`VisionError::InvalidOption`] when `target` names no file (`/`, `..`);
    /// [`VisionError::Io`] when the directory does not exist or is not writable.
    pub fn create(target: &Path) -> Result<Self> {
        let Some(name) = target.file_name() else {
            return Err(VisionError::InvalidOption {
                name: "output",
                value: target.display().to_string(),
                message: "must name a file".to_string(),
            });
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".partial");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let file = builder
            .tempfile_in(dir)
            .map_err(VisionError::io("cannot create a file in", dir))?;
        Ok(Self {
            target: target.to_path_buf(),
            partial: file.path().to_path_buf(),
            file: Some(BufWriter::new(file)),
        })
    }

    /// The file this one replaces on [`commit`](Self::commit).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the output is written until it is committed, and kept when it is abandoned.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Flushes, syncs and renames the file over the target.
    ///
    /// Errors: [`VisionError::Io`] when a write, the sync or the rename fails; the target is
    /// then left as it was and what was written stays in [`partial_path`](Self::partial_path).
    pub fn commit(mut self) -> Result<()> {
        let Some(writer) = self.file.take() else {
            return Ok(());
        };
        let file = match writer.into_inner() {
            Ok(file) => file,
            Err(e) => {
                let (error, writer) = e.into_parts();
                keep_partial(writer.into_parts().0);
                return Err(VisionError::Io {
                    action: "cannot write",
                    path: self.partial.clone(),
                    source: error,
                });
            }
        };
        if let Err(error) = file.as_file().sync_all() {
            keep_partial(file);
            return Err(VisionError::Io {
                action: "cannot write",
                path: self.partial.clone(),
                source: error,
            });
        }
        file.persist(&self.target).map_err(|e| {
            keep_partial(e.file);
            VisionError::Io {
                action: "cannot replace",
                path: self.target.clone(),
                source: e.error,
            }
        })?;
        Ok(())
    }

    /// Gives up on the file, leaving the target as it was: what was written is flushed and
    /// kept at [`partial_path`](Self::partial_path), which is returned, or the empty temporary
    /// file is removed and `None` returned.
    pub fn abandon(mut self) -> Option<PathBuf> {
        self.abandon_in_place()
    }

    fn abandon_in_place(&mut self) -> Option<PathBuf> {
        let writer = self.file.take()?;
        let file = match writer.into_inner() {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %self.partial.display(), error = %e.error(), "cannot flush the partial output");
                e.into_parts().1.into_parts().0
            }
        };
        let empty = file
            .as_file()
            .metadata()
            .map(|m| m.len() == 0)
            .unwrap_or(false);
        if empty {
            // Dropping the temporary file removes it.
            return None;
        }
        keep_partial(file);
        Some(self.partial.clone())
    }
}

/// Keeps a temporary file on disk under its temporary name (it is not removed on drop).
fn keep_partial(file: NamedTempFile) {
    if let Err(e) = file.keep() {
        tracing::warn!(error = %e, "cannot keep the partial output");
    }
}

impl Write for AtomicOutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("output file already closed"))?
            .write(buf)
    }

    /// Pushes buffered bytes to the temporary file (no `fsync`; [`commit`](Self::commit) does
    /// that).
    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicOutputFile {
    fn drop(&mut self) {
        if let Some(kept) = self.abandon_in_place() {
            tracing::warn!(
                target = %self.target.display(),
                partial = %kept.display(),
                "output not completed; the target was left as it was and the partial output kept"
            );
        }
    }
}

/// A frame whose tracks are drawn into a PNG file (`surveil detect --snapshot N:PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Frame index in the source.
    pub frame: u64,
    /// The PNG file to write.
    pub path: PathBuf,
}

/// Draws the tracks of requested frames ([`crate::render::draw_tracks`]) into PNG files, each
/// written as an [`AtomicOutputFile`] and held until the run ends: the caller commits them with
/// the run's other outputs, or abandons them. A snapshot that cannot be drawn or written is
/// logged as a warning and does not stop the run.
#[derive(Debug)]
pub struct PngSnapshotSink {
    requests: Vec<(SnapshotRequest, bool)>,
    files: Vec<AtomicOutputFile>,
}

impl PngSnapshotSink {
    /// A sink for `requests` (none written yet).
    pub fn new(requests: Vec<SnapshotRequest>) -> Self {
        Self {
            requests: requests.into_iter().map(|r| (r, false)).collect(),
            files: Vec::new(),
        }
    }

    /// The requests whose frame has not been seen (the run ended before it, or the frame was
    /// dropped or skipped).
    pub fn pending(&self) -> Vec<&SnapshotRequest> {
        self.requests
            .iter()
            .filter(|(_, seen)| !seen)
            .map(|(r, _)| r)
            .collect()
    }

    /// The snapshots written so far, not yet committed.
    pub fn into_files(self) -> Vec<AtomicOutputFile> {
        self.files
    }
}

fn write_png(tf: &TrackedFrame, path: &Path) -> Result<AtomicOutputFile> {
    use image::ImageEncoder;
    let img = crate::render::draw_tracks(&tf.frame, &tf.tracks)?;
    let mut file = AtomicOutputFile::create(path)?;
    image::codecs::png::PngEncoder::new(&mut file)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| VisionError::Image {
            path: path.to_path_buf(),
            message: format!("cannot write PNG: {e}"),
        })?;
    file.flush()
        .map_err(VisionError::io("cannot write", file.partial_path()))?;
    Ok(file)
}

impl TrackSink for PngSnapshotSink {
    fn write_frame(&mut self, tf: &TrackedFrame) -> Result<()> {
        for (request, seen) in &mut self.requests {
            if request.frame != tf.frame.index || *seen {
                continue;
            }
            *seen = true;
            match write_png(tf, &request.path) {
                Ok(file) => {
                    tracing::info!(frame = request.frame, path = %request.path.display(), "snapshot drawn");
                    self.files.push(file);
                }
                Err(e) => tracing::warn!(frame = request.frame, error = %e, "snapshot failed"),
            }
        }
        Ok(())
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_replaces_the_target_only_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        let mut f = AtomicOutputFile::create(&target).unwrap();
        f.write_all(b"new\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        let partial = f.partial_path().to_path_buf();
        assert!(partial
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("t.jsonl."));
        assert_eq!(std::fs::read_to_string(&partial).unwrap(), "new\n");
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        assert_eq!(names(dir.path()), ["t.jsonl"]);
    }

    #[cfg(unix)]
    #[test]
    fn commit_replaces_a_link_and_leaves_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.jsonl");
        std::fs::write(&real, "precious\n").unwrap();
        let link = dir.path().join("t.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut f = AtomicOutputFile::create(&link).unwrap();
        f.write_all(b"new\n").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "precious\n");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new\n");
    }

    #[test]
    fn abandon_keeps_written_bytes_and_removes_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        // Buffered bytes are flushed into the kept partial file.
        let mut f = AtomicOutputFile::create(&target).unwrap();
        f.write_all(b"partial line\n").unwrap();
        let kept = f.abandon().unwrap();
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "partial line\n");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        std::fs::remove_file(&kept).unwrap();
        // Nothing written: nothing left behind.
        let f = AtomicOutputFile::create(&target).unwrap();
        assert_eq!(f.abandon(), None);
        // Dropped without a commit: abandoned the same way.
        let mut f = AtomicOutputFile::create(&target).unwrap();
        f.write_all(b"x").unwrap();
        let partial = f.partial_path().to_path_buf();
        drop(f);
        assert_eq!(std::fs::read_to_string(&partial).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
    }

    #[test]
    fn a_target_without_a_file_name_is_refused() {
        assert!(matches!(
            AtomicOutputFile::create(Path::new("..")),
            Err(VisionError::InvalidOption { .. })
        ));
    }
}
