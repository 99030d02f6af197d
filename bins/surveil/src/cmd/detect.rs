//! `surveil detect`: the detect-and-track stream (frames → YOLO person detection → ByteTrack)
//! drained into two sinks: the JSONL track writer and the `--snapshot` renderer, both writing
//! [`AtomicOutputFile`]s that replace their targets only when the run succeeds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use surveil_vision::pipeline::{AtomicOutputFile, PngSnapshotSink, SnapshotRequest};
use surveil_vision::source::redact_url;
use surveil_vision::stream::validate_options;
use surveil_vision::{
    run_stream, DarknetYolo, DetectTrackStream, FfmpegOptions, JsonlTrackWriter, PipelineOptions,
    StopSignal, TrackSink, TrackerParams, VisionError, YoloOptions,
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

/// Runs `work` while a watcher thread turns a caught SIGINT/SIGTERM into `on_signal` (the
/// signal handler itself can only set a flag), at most once; the watcher ends with `work`.
fn relaying_signals<R>(on_signal: impl Fn() + Sync, work: impl FnOnce() -> R) -> R {
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::SeqCst) {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    on_signal();
                    break;
                }
                std::thread::sleep(SIGNAL_POLL);
            }
        });
        let result = work();
        finished.store(true, Ordering::SeqCst);
        result
    })
}

/// `surveil detect`
///
/// Every option is checked before anything is opened or written (bad values are usage errors,
/// exit 2). Outputs are [`AtomicOutputFile`]s: they replace their targets only when the run
/// succeeds (end of source, `--max-frames`, Ctrl-C); a failed run leaves the targets as they
/// were and its error names the partial files kept.
pub fn run(cli: &Cli, args: &DetectArgs) -> Result<(), Failure> {
    let loaded = crate::cmd::config::load(cli, &args.config, &[])?;
    let config = &loaded.config;
    let model_dir = args
        .detector_dir
        .clone()
        .unwrap_or_else(|| config.paths.asset(config.detection.model.asset_folder()));
    let mut yolo = YoloOptions::from_config(&config.detection, &model_dir);
    // ByteTrack's second round needs the low-score boxes: the detector keeps everything down to
    // the tracker's low threshold and `detection.confidence` is the tracker's high threshold.
    let mut tracker = TrackerParams::from_config(&config.tracker);
    tracker.track_high_thresh = config.detection.confidence as f32;
    yolo.conf_threshold = yolo.conf_threshold.min(tracker.track_low_thresh);
    let options = PipelineOptions {
        batch_size: args.batch,
        max_frames: args.max_frames,
        tracker,
        ..PipelineOptions::default()
    };
    validate_options(&options).map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    check_output_target("--output", &args.output)?;
    for s in &args.snapshot {
        check_output_target("--snapshot", &s.path)?;
    }

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
    // Signals are caught before the source is opened: a camera that does not answer (first
    // connection, reconnect backoff) is abandoned at Ctrl-C, its ffmpeg child killed and reaped.
    install_signal_handlers();
    let stop = StopSignal::new();
    let opened = relaying_signals(
        || stop.stop(),
        || DetectTrackStream::open_with_stop(&args.source, &ff, &detector, options, &stop),
    );
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(VisionError::Interrupted { .. }) => {
            eprintln!(
                "surveil detect: interrupted while opening {}; nothing analysed, {} left as it was",
                redact_url(&args.source),
                args.output.display()
            );
            return Ok(());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("opening the source").into()),
    };
    let output = AtomicOutputFile::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    tracing::info!(partial = %output.partial_path().display(), "writing tracks");
    let mut jsonl = JsonlTrackWriter::new(output, stream.class_names());
    let mut snapshots = PngSnapshotSink::new(args.snapshot.clone());

    // A run waiting on a stalled live source stops too.
    let interrupt = stream.interrupt_handle();
    let result = relaying_signals(
        || {
            tracing::info!("interrupted; stopping");
            interrupt.interrupt();
        },
        || {
            let sinks: &mut [&mut dyn TrackSink] = &mut [&mut jsonl, &mut snapshots];
            run_stream(&mut stream, sinks, Some(&INTERRUPTED))
        },
    );
    drop(stream);
    for s in snapshots.pending() {
        tracing::warn!(
            frame = s.frame,
            path = %s.path.display(),
            "no snapshot: the run did not analyse that frame"
        );
    }
    let mut files = vec![jsonl.into_inner()];
    files.extend(snapshots.into_files());
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let kept = abandon_all(files);
            return Err(Failure::Runtime(
                anyhow::Error::new(e).context(format!("running detection and tracking ({kept})")),
            ));
        }
    };
    commit_all(files)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&summary).context("formatting JSON")?
        );
    } else {
        outln!(
            "{}: {} frames analysed ({} dropped) in {:.1} s, {:.1} frames/s",
            summary.source,
            summary.frames_analysed,
            summary.frames_dropped,
            summary.wall_time.as_secs_f64(),
            summary.analysed_fps
        );
        outln!(
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

/// Replaces every target with its completed file, in order. When one fails, the files not yet
/// committed are abandoned and the error names the partial files kept.
fn commit_all(files: Vec<AtomicOutputFile>) -> Result<(), Failure> {
    let mut files = files.into_iter();
    while let Some(file) = files.next() {
        let partial = file.partial_path().to_path_buf();
        if let Err(e) = file.commit() {
            let mut kept = format!("the output is kept in {}", partial.display());
            let rest = abandon_all(files.collect());
            if !rest.is_empty() {
                kept = format!("{kept}; {rest}");
            }
            return Err(Failure::Runtime(
                anyhow::Error::new(e).context(format!("finishing the outputs ({kept})")),
            ));
        }
    }
    Ok(())
}

/// Abandons `files` (targets left as they were) and says, for each, where its partial output
/// is kept.
fn abandon_all(files: Vec<AtomicOutputFile>) -> String {
    files
        .into_iter()
        .map(|f| {
            let target = f.target().display().to_string();
            match f.abandon() {
                Some(kept) => format!(
                    "{target} left as it was; the output so far is kept in {}",
                    kept.display()
                ),
                None => format!("{target} left as it was; nothing had been written"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An output path must name a file in an existing directory (checked before the run, so a typo
/// fails at once with exit 2 and not after the analysis).
fn check_output_target(flag: &str, path: &Path) -> Result<(), Failure> {
    let usage = |why: String| Failure::Usage(anyhow::anyhow!("{flag} {}: {why}", path.display()));
    if path.file_name().is_none() || path.is_dir() {
        return Err(usage("is a directory, not a file".into()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!("directory {} does not exist", dir.display())));
    }
    Ok(())
}

/// `--batch`: frames per detector pass, in the range [`validate_options`] accepts.
pub fn parse_batch(s: &str) -> Result<usize, String> {
    let batch_size: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    let options = PipelineOptions {
        batch_size,
        ..PipelineOptions::default()
    };
    validate_options(&options).map_err(|e| e.to_string())?;
    Ok(batch_size)
}

/// `--fps`: a finite frame rate above 0.
pub fn parse_fps(s: &str) -> Result<f64, String> {
    let fps: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if fps.is_finite() && fps > 0.0 {
        Ok(fps)
    } else {
        Err(format!("{s}: must be a frame rate above 0"))
    }
}

/// `--snapshot N:PATH.png`.
pub fn parse_snapshot(s: &str) -> Result<SnapshotRequest, String> {
    let (frame, path) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected FRAME:PATH.png"))?;
    let frame = frame
        .parse()
        .map_err(|_| format!("`{s}`: `{frame}` is not a frame number"))?;
    if path.is_empty() {
        return Err(format!("`{s}`: no file after `:`"));
    }
    Ok(SnapshotRequest {
        frame,
        path: PathBuf::from(path),
    })
}
