//! `surveil detect`: the detect-and-track stream (frames → YOLO person detection → ByteTrack)
//! drained into two sinks: the JSONL track writer and the `--snapshot` renderer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use surveil_config::paths::asset;
use surveil_vision::stream::validate_options;
use surveil_vision::{
    run_stream, save_tracks_png, DarknetYolo, DetectTrackStream, FfmpegOptions, JsonlTrackWriter,
    PipelineOptions, TrackSink, TrackedFrame, TrackerParams, YoloOptions,
};

use crate::cli::{Cli, DetectArgs};
use crate::Failure;

/// Set by SIGINT/SIGTERM; the stream is interrupted at once (also while it waits for frames)
/// and everything written so far is flushed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often the signal flag is checked while a run waits.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// `surveil detect`
pub fn run(cli: &Cli, args: &DetectArgs) -> Result<(), Failure> {
    let loaded = crate::cmd::config::load(cli, &args.config, &[])?;
    let config = &loaded.config;
    let model_dir = args
        .detector_dir
        .clone()
        .unwrap_or_else(|| asset("yolov3-tiny"));
    let mut yolo = YoloOptions::from_config(&config.detection, &model_dir)
        .map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    // ByteTrack's second round needs the low-score boxes: the detector keeps everything down to
    // the tracker's low threshold and `detection.confidence` is the tracker's high threshold.
    let mut tracker = TrackerParams::from_config(&config.tracker);
    tracker.track_high_thresh = config.detection.confidence as f32;
    tracker.new_track_thresh = tracker.new_track_thresh.max(tracker.track_high_thresh);
    yolo.conf_threshold = yolo.conf_threshold.min(tracker.track_low_thresh);
    let options = PipelineOptions {
        batch_size: args.batch,
        max_frames: args.max_frames,
        tracker,
        ..PipelineOptions::default()
    };
    validate_options(&options).map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    let snapshots: Vec<(u64, PathBuf)> = args
        .snapshot
        .iter()
        .map(|s| parse_snapshot(s))
        .collect::<Result<_, _>>()
        .map_err(Failure::Usage)?;

    let detector = DarknetYolo::new(&yolo, &candle_core::Device::Cpu).with_context(|| {
        format!(
            "loading the detector from {} (run scripts/setup.sh to fetch it)",
            model_dir.display()
        )
    })?;
    let ff = FfmpegOptions {
        width: args.width,
        height: args.height,
        fps: args.fps,
        ..FfmpegOptions::default()
    };
    let mut stream = DetectTrackStream::open(&args.source, &ff, &detector, options)
        .context("opening the source")?;
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut jsonl = JsonlTrackWriter::new(BufWriter::new(file), stream.class_names());
    let mut snapshot = |tf: &TrackedFrame| -> surveil_vision::Result<()> {
        for (frame, path) in &snapshots {
            if tf.frame.index == *frame {
                match save_tracks_png(&tf.frame, &tf.tracks, path) {
                    Ok(()) => tracing::info!(frame, path = %path.display(), "snapshot written"),
                    Err(e) => tracing::warn!(frame, error = %e, "snapshot failed"),
                }
            }
        }
        Ok(())
    };

    install_signal_handlers();
    // The signal handler can only set a flag; this thread turns it into a stream interrupt, so
    // a run waiting on a stalled live source stops too.
    let interrupt = stream.interrupt_handle();
    let finished = AtomicBool::new(false);
    let summary = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::SeqCst) {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    tracing::info!("interrupted; stopping");
                    interrupt.interrupt();
                    break;
                }
                std::thread::sleep(SIGNAL_POLL);
            }
        });
        let sinks: &mut [&mut dyn TrackSink] = &mut [&mut jsonl, &mut snapshot];
        let result = run_stream(&mut stream, sinks, Some(&INTERRUPTED));
        finished.store(true, Ordering::SeqCst);
        result
    })
    .context("running detection and tracking")?;
    drop(stream);
    jsonl
        .into_inner()
        .flush()
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("formatting JSON")?
        );
    } else {
        println!(
            "{}: {} frames analysed ({} dropped) in {:.1} s, {:.1} frames/s",
            summary.source,
            summary.frames_analysed,
            summary.frames_dropped,
            summary.wall_time.as_secs_f64(),
            summary.analysed_fps
        );
        println!(
            "{} tracks, mean length {:.1} frames (longest {}); {} lines written to {}{}",
            summary.tracks,
            summary.mean_track_length,
            summary.max_track_length,
            summary.lines_written,
            args.output.display(),
            if summary.cancelled {
                " (stopped early)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn parse_snapshot(s: &str) -> anyhow::Result<(u64, PathBuf)> {
    let (frame, path) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--snapshot {s}: expected FRAME:PATH.png"))?;
    let frame = frame
        .parse()
        .map_err(|_| anyhow::anyhow!("--snapshot {s}: `{frame}` is not a frame number"))?;
    Ok((frame, PathBuf::from(path)))
}
