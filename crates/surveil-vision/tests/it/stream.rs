//! The pull-based detect-and-track stream: order, parity with the JSONL run, batching,
//! `max_frames`, errors, timings, interrupts and process hygiene.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use surveil_vision::detect::{DetectOutput, DetectTimings};
use surveil_vision::source::{FfmpegOptions, FfmpegSource};
use surveil_vision::{
    run_detect_track, run_stream, BBox, DetectTrackStream, Detection, Detector, Frame, FrameSource,
    InterruptHandle, JsonlTrackWriter, PipelineOptions, Result, RunHooks, TrackLine, TrackSink,
    TrackedFrame, VisionError,
};

use crate::common::asset;
use crate::pipeline::detector;

/// An asset the test needs: `None` (test skipped) when it is missing, unless `CI=true`, where
/// a missing asset fails the test.
pub fn required_asset(rel: &str) -> Option<PathBuf> {
    let found = asset(rel);
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("asset {rel} is missing under CI=true (scripts/setup.sh fetches it)");
    }
    found
}

/// A detector that finds one 20x40 box per frame, moving 2 px right per frame index, and
/// reports fixed step times per call.
struct MovingBox {
    names: Vec<String>,
    /// Results to return per call (`None`: one per frame).
    results_per_call: Option<usize>,
}

const PRE: Duration = Duration::from_millis(3);
const FWD: Duration = Duration::from_millis(30);
const POST: Duration = Duration::from_millis(6);

impl MovingBox {
    fn new() -> Self {
        Self {
            names: vec!["person".to_string()],
            results_per_call: None,
        }
    }
}

impl Detector for MovingBox {
    fn name(&self) -> &str {
        "moving-box"
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn detect(&self, frames: &[&Frame]) -> Result<DetectOutput> {
        let n = self.results_per_call.unwrap_or(frames.len());
        let detections = frames
            .iter()
            .take(n)
            .map(|f| {
                let x = 2.0 * f.index as f32;
                vec![Detection {
                    class_id: 0,
                    score: 0.9,
                    bbox: BBox::new(x, 10.0, x + 20.0, 50.0),
                }]
            })
            .collect();
        Ok(DetectOutput {
            detections,
            timings: DetectTimings {
                preprocess: PRE,
                forward: FWD,
                postprocess: POST,
            },
        })
    }
}

/// `n` small frames at 10 fps, then an error (when `fail`), then the end.
struct Synthetic {
    n: u64,
    next: u64,
    fail: bool,
}

impl FrameSource for Synthetic {
    fn describe(&self) -> String {
        "synthetic".to_string()
    }
    fn is_live(&self) -> bool {
        false
    }
    fn fps(&self) -> Option<f64> {
        Some(10.0)
    }
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.next == self.n {
            if self.fail {
                self.fail = false;
                return Err(VisionError::InvalidFrame {
                    index: self.n,
                    message: "synthetic failure".to_string(),
                });
            }
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        Frame::new(
            i,
            Duration::from_millis(100 * i),
            64,
            64,
            vec![0; 64 * 64 * 3],
        )
        .map(Some)
    }
}

/// A live source with no frames: `next_frame` blocks until its interrupt handle fires (or,
/// without a handle, sleeps `stall` and ends).
struct Stalled {
    woken: Arc<(Mutex<bool>, Condvar)>,
    honours_interrupt: bool,
    stall: Duration,
}

impl FrameSource for Stalled {
    fn describe(&self) -> String {
        "rtsp://camera/stalled".to_string()
    }
    fn is_live(&self) -> bool {
        true
    }
    fn fps(&self) -> Option<f64> {
        None
    }
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if !self.honours_interrupt {
            std::thread::sleep(self.stall);
            return Ok(None);
        }
        let (lock, cv) = &*self.woken;
        let mut woken = lock.lock().unwrap();
        while !*woken {
            woken = cv.wait(woken).unwrap();
        }
        Ok(None)
    }
    fn interrupt_handle(&self) -> Option<InterruptHandle> {
        if !self.honours_interrupt {
            return None;
        }
        let woken = Arc::clone(&self.woken);
        Some(InterruptHandle::new(move || {
            *woken.0.lock().unwrap() = true;
            woken.1.notify_all();
        }))
    }
}

fn synthetic(n: u64, fail: bool) -> Box<dyn FrameSource> {
    Box::new(Synthetic { n, next: 0, fail })
}

fn options(batch: usize, max: Option<u64>) -> PipelineOptions {
    PipelineOptions {
        batch_size: batch,
        max_frames: max,
        ..PipelineOptions::default()
    }
}

/// Whether a process still exists (a zombie counts as existing).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn assert_reaped(pid: u32) {
    for _ in 0..50 {
        if !process_exists(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("ffmpeg pid {pid} still exists");
}

fn lines_of(frames: &[TrackedFrame], names: &[String]) -> Vec<TrackLine> {
    frames
        .iter()
        .flat_map(|tf| {
            tf.tracks
                .iter()
                .map(|t| TrackLine::new(&tf.frame, t, names))
        })
        .collect()
}

#[test]
fn frames_come_in_order_with_even_timing_shares_and_max_frames() {
    let stream = DetectTrackStream::from_source(
        synthetic(100, false),
        Box::new(MovingBox::new()),
        options(3, Some(7)),
    )
    .unwrap();
    assert_eq!(stream.source_description(), "synthetic");
    assert_eq!(stream.source_fps(), Some(10.0));
    // No count known for an opened source; max_frames bounds it.
    assert_eq!(stream.total_frames_hint(), Some(7));
    assert_eq!(
        stream.with_total_frames(Some(5)).total_frames_hint(),
        Some(5)
    );
    let mut stream = DetectTrackStream::from_source(
        synthetic(100, false),
        Box::new(MovingBox::new()),
        options(3, Some(7)),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buffered = Vec::new();
    while let Some(tf) = stream.next() {
        let tf = tf.unwrap();
        buffered.push(stream.buffered());
        got.push(tf);
    }
    assert!(stream.next().is_none(), "fused after the end");
    assert!(stream.is_finished() && !stream.is_interrupted());
    // 7 frames in batches of 3, 3, 1; read-ahead empties at each batch end.
    assert_eq!(
        got.iter().map(|t| t.frame.index).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(buffered, vec![2, 1, 0, 2, 1, 0, 0]);
    // One detection per frame, tracked as one track (born on the first frame, so confirmed).
    for tf in &got {
        assert_eq!(
            tf.frame.timestamp,
            Duration::from_millis(100 * tf.frame.index)
        );
        assert_eq!(tf.detections.len(), 1);
        assert_eq!(tf.tracks.len(), 1, "frame {}", tf.frame.index);
        assert_eq!(tf.tracks[0].track_id, 1);
        assert_eq!(tf.tracks[0].score, 0.9);
    }
    // Batch steps are split evenly over the batch: 30 ms forward / 3 frames, then / 1.
    assert_eq!(got[0].timings.forward, Duration::from_millis(10));
    assert_eq!(got[2].timings.preprocess, Duration::from_millis(1));
    assert_eq!(got[5].timings.postprocess, Duration::from_millis(2));
    assert_eq!(got[6].timings.forward, FWD);
    let stats = stream.stats();
    assert_eq!(stats.frames_analysed, 7);
    assert_eq!(stats.frames_detected, 7);
    assert_eq!(stats.batches, 3);
    assert_eq!(stats.detections, 7);
    assert_eq!(stats.frames_dropped, 0);
    assert_eq!(stats.timings.forward, FWD * 3);
    let summed: Duration = got.iter().map(|t| t.timings.forward).sum();
    assert_eq!(summed, stats.timings.forward);
    let tracked: Duration = got.iter().map(|t| t.timings.track).sum();
    assert_eq!(tracked, stats.timings.track);
}

#[test]
fn a_source_error_follows_the_frames_before_it_and_ends_the_stream() {
    // 5 frames then an error, batches of 2: [0 1] [2 3] [4 + error].
    let mut stream = DetectTrackStream::from_source(
        synthetic(5, true),
        Box::new(MovingBox::new()),
        options(2, None),
    )
    .unwrap();
    let mut indices = Vec::new();
    let err = loop {
        match stream.next() {
            Some(Ok(tf)) => indices.push(tf.frame.index),
            Some(Err(e)) => break e,
            None => panic!("ended without the source error"),
        }
    };
    assert_eq!(indices, vec![0, 1, 2, 3, 4]);
    assert!(err.to_string().contains("synthetic failure"), "{err}");
    assert!(stream.next().is_none());

    // A detector that returns fewer results than frames is an error, not a silent zip.
    let bad = MovingBox {
        results_per_call: Some(1),
        ..MovingBox::new()
    };
    let mut stream =
        DetectTrackStream::from_source(synthetic(10, false), Box::new(bad), options(4, None))
            .unwrap();
    let e = stream.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("1 of 4 frames"), "{e}");
    assert!(stream.next().is_none());

    // Invalid options fail before anything starts.
    let e = DetectTrackStream::from_source(
        synthetic(1, false),
        Box::new(MovingBox::new()),
        options(0, None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}

#[test]
fn interrupt_wakes_a_stream_waiting_for_frames() {
    for honours_interrupt in [true, false] {
        let source = Stalled {
            woken: Arc::new((Mutex::new(false), Condvar::new())),
            honours_interrupt,
            // Without an interrupt of its own the source only returns after this long.
            stall: Duration::from_secs(3),
        };
        let mut stream = DetectTrackStream::from_source(
            Box::new(source),
            Box::new(MovingBox::new()),
            options(1, None),
        )
        .unwrap();
        assert!(stream.is_live());
        assert_eq!(stream.total_frames_hint(), None);
        let handle = stream.interrupt_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            handle.interrupt();
        });
        let started = Instant::now();
        assert!(stream.next().is_none());
        let waited = started.elapsed();
        t.join().unwrap();
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_secs(1),
            "next() returned after {waited:?} (source honours interrupts: {honours_interrupt})"
        );
        assert!(stream.is_interrupted());
        assert!(stream.next().is_none());
    }
}

#[test]
fn run_stream_feeds_every_sink_and_stops_on_cancel() {
    let mut stream = DetectTrackStream::from_source(
        synthetic(10, false),
        Box::new(MovingBox::new()),
        options(4, None),
    )
    .unwrap();
    let names = stream.class_names().to_vec();
    let mut jsonl = JsonlTrackWriter::new(Vec::new(), &names);
    let mut seen = Vec::new();
    let mut record = |tf: &TrackedFrame| -> Result<()> {
        seen.push(tf.frame.index);
        Ok(())
    };
    let summary = run_stream(&mut stream, &mut [&mut jsonl, &mut record], None).unwrap();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(summary.frames_analysed, 10);
    assert_eq!(summary.lines_written, 10);
    assert_eq!(jsonl.lines_written(), 10);
    assert_eq!((summary.tracks, summary.max_track_length), (1, 10));
    assert!(!summary.cancelled);
    assert_eq!(summary.timings.forward, FWD * 3);
    let text = String::from_utf8(jsonl.into_inner()).unwrap();
    let first: TrackLine = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first.frame, first.track_id, first.class.as_str()),
        (0, 1, "person")
    );

    // Cancel is honoured at batch boundaries: set during frame 5 (batch [4..8)), the run
    // finishes that batch and stops.
    let cancel = AtomicBool::new(false);
    let mut stream = DetectTrackStream::from_source(
        synthetic(100, false),
        Box::new(MovingBox::new()),
        options(4, None),
    )
    .unwrap();
    let mut last = 0;
    let mut stop_at_5 = |tf: &TrackedFrame| -> Result<()> {
        last = tf.frame.index;
        if tf.frame.index == 5 {
            cancel.store(true, Ordering::SeqCst);
        }
        Ok(())
    };
    let s = run_stream(&mut stream, &mut [&mut stop_at_5], Some(&cancel)).unwrap();
    assert!(s.cancelled);
    assert_eq!(s.frames_analysed, 8);
    assert_eq!(last, 7);
}

#[test]
fn image_folder_count_is_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        image::RgbImage::from_pixel(32, 24, image::Rgb([i * 40, 0, 0]))
            .save(dir.path().join(format!("f{i}.png")))
            .unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let mut stream = DetectTrackStream::open(
        dir.path().to_str().unwrap(),
        &FfmpegOptions::default(),
        Box::new(MovingBox::new()),
        PipelineOptions::default(),
    )
    .unwrap();
    assert_eq!(stream.total_frames_hint(), Some(3));
    let frames: Vec<TrackedFrame> = stream.by_ref().map(|f| f.unwrap()).collect();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[2].frame.timestamp, Duration::from_secs(2));
    assert_eq!(frames[1].frame.data[0], 40);
}

#[test]
fn vtest_stream_matches_the_jsonl_run_and_batching() {
    let Some(det) = detector() else { return };
    let Some(video) = required_asset("video/vtest.avi") else {
        return;
    };
    let input = video.to_str().unwrap();
    const N: u64 = 10;

    // The JSONL run over the same frames.
    let src = FfmpegSource::open(input, &FfmpegOptions::default()).unwrap();
    let mut out = Vec::new();
    let summary = run_detect_track(
        Box::new(src),
        det.as_ref(),
        &options(1, Some(N)),
        &mut out,
        RunHooks::default(),
    )
    .unwrap();
    let jsonl: Vec<TrackLine> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let pull = |batch: usize| {
        let mut stream = DetectTrackStream::open(
            input,
            &FfmpegOptions::default(),
            det.as_ref(),
            options(batch, Some(N)),
        )
        .unwrap();
        let frames: Vec<TrackedFrame> = stream.by_ref().map(|f| f.unwrap()).collect();
        (frames, stream)
    };
    let (single, stream) = pull(1);
    assert!(stream.source_description().ends_with("vtest.avi"));
    assert_eq!(stream.source_fps(), Some(10.0));
    // ffprobe: 795 frames, capped by max_frames.
    assert_eq!(stream.total_frames_hint(), Some(N));
    assert_eq!(
        stream.with_total_frames(Some(795)).total_frames_hint(),
        Some(N)
    );
    let probed = surveil_vision::probe_total_frames(input, &FfmpegOptions::default());
    assert_eq!(probed, Some(795));

    assert_eq!(
        single.iter().map(|t| t.frame.index).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    assert_eq!(single[9].frame.timestamp, Duration::from_millis(900));
    // Tracks are what the JSONL run wrote, line for line.
    let names = det.class_names();
    assert_eq!(lines_of(&single, names), jsonl);
    assert_eq!(summary.lines_written as usize, jsonl.len());
    assert_eq!(
        summary.detections,
        single
            .iter()
            .map(|t| t.detections.len() as u64)
            .sum::<u64>()
    );
    // The detections are the detector's own output for the frame.
    let direct = det.detect(&[&single[3].frame]).unwrap();
    assert_eq!(single[3].detections, direct.detections[0]);
    assert_eq!(single[0].tracks.len(), 3, "three persons on frame 0");
    assert!(single.iter().all(|t| t.timings.forward > Duration::ZERO));

    // Batch 4: the same frames and tracks (boxes up to float noise of the batched pass).
    let (batched, stream) = pull(4);
    assert_eq!(stream.stats().batches, 3);
    assert_eq!(batched.len(), N as usize);
    let (a, b) = (lines_of(&single, names), lines_of(&batched, names));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.frame, x.track_id, &x.class),
            (y.frame, y.track_id, &y.class)
        );
        for (p, q) in [(x.x1, y.x1), (x.y1, y.y1), (x.x2, y.x2), (x.y2, y.y2)] {
            assert!((p - q).abs() < 1e-3, "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn interrupt_and_drop_reap_ffmpeg() {
    let Some(video) = required_asset("video/vtest.avi") else {
        return;
    };
    let input = video.to_str().unwrap();

    // Interrupt mid-file: next() ends at once, the child is gone.
    let src = FfmpegSource::open(input, &FfmpegOptions::default()).unwrap();
    let pid = src.pid().unwrap();
    let mut stream =
        DetectTrackStream::from_source(Box::new(src), Box::new(MovingBox::new()), options(2, None))
            .unwrap();
    assert_eq!(stream.next().unwrap().unwrap().frame.index, 0);
    assert!(process_exists(pid));
    stream.interrupt_handle().interrupt();
    let started = Instant::now();
    assert!(stream.next().is_none(), "read-ahead frame 1 is discarded");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_reaped(pid);
    assert!(stream.stats().frames_decoded >= 2);

    // Dropping a stream mid-file reaps the child too.
    let src = FfmpegSource::open(input, &FfmpegOptions::default()).unwrap();
    let pid = src.pid().unwrap();
    let mut stream =
        DetectTrackStream::from_source(Box::new(src), Box::new(MovingBox::new()), options(1, None))
            .unwrap();
    stream.next().unwrap().unwrap();
    drop(stream);
    assert_reaped(pid);
}

/// Sinks also take plain closures, and a failing sink ends the run with its error.
#[test]
fn a_failing_sink_ends_the_run() {
    struct Full;
    impl TrackSink for Full {
        fn write_frame(&mut self, frame: &TrackedFrame) -> Result<()> {
            if frame.frame.index == 2 {
                return Err(VisionError::Output(std::io::Error::other("disk full")));
            }
            Ok(())
        }
    }
    let mut stream = DetectTrackStream::from_source(
        synthetic(10, false),
        Box::new(MovingBox::new()),
        options(1, None),
    )
    .unwrap();
    let e = run_stream(&mut stream, &mut [&mut Full], None).unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
}
