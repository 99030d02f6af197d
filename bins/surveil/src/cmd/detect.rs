//! `surveil detect`: frames → YOLO person detection → ByteTrack → JSONL of tracks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use surveil_config::paths::asset;
use surveil_vision::{
    open_source, run_detect_track, save_tracks_png, DarknetYolo, FfmpegOptions, Frame,
    PipelineOptions, RunHooks, TrackedObject, TrackerParams, YoloOptions,
};

use crate::cli::{Cli, DetectArgs};
use crate::Failure;

/// Set by SIGINT/SIGTERM; the pipeline stops at the next frame and everything written so far
/// is flushed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

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
    let source = open_source(&args.source, &ff).context("opening the source")?;
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::new(file);

    let cancel = Arc::new(AtomicBool::new(false));
    install_signal_handlers();
    let snapshots: Vec<(u64, PathBuf)> = args
        .snapshot
        .iter()
        .map(|s| parse_snapshot(s))
        .collect::<Result<_, _>>()
        .map_err(Failure::Usage)?;
    let cancel_hook = cancel.clone();
    let on_frame = Box::new(move |f: &Frame, tracks: &[TrackedObject]| {
        if INTERRUPTED.load(Ordering::SeqCst) {
            cancel_hook.store(true, Ordering::SeqCst);
        }
        for (frame, path) in &snapshots {
            if f.index == *frame {
                match save_tracks_png(f, tracks, path) {
                    Ok(()) => tracing::info!(frame, path = %path.display(), "snapshot written"),
                    Err(e) => tracing::warn!(frame, error = %e, "snapshot failed"),
                }
            }
        }
    }) as Box<dyn FnMut(&Frame, &[TrackedObject])>;
    let options = PipelineOptions {
        batch_size: args.batch,
        max_frames: args.max_frames,
        tracker,
        ..PipelineOptions::default()
    };
    let hooks = RunHooks {
        cancel: Some(cancel),
        on_frame: Some(on_frame),
    };
    let summary = run_detect_track(source, &detector, &options, &mut out, hooks)
        .context("running detection and tracking")?;
    out.flush()
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
