//! The surveillance pipeline from a `SystemConfig`, with a sink and an observer of this example.
//!
//! ```text
//! cargo run -p surveil-orchestrator --example run_pipeline -- [SOURCE] [--max-frames N] [--output DIR]
//! ```
//!
//! The `testing` profile (git-base-coco, the lightest model) with `vlm.weights = "dummy"`:
//! deterministic random weights with the real shapes, so no checkpoint is needed and the
//! model's descriptions are meaningless. `SOURCE` defaults to the sample clip of the asset
//! cache (`video/vtest.avi`, see `scripts/setup.sh`), `--max-frames` to 8. The run folder
//! (`events.jsonl`, `summary.json`, alert frames) goes to a temporary directory removed at the
//! end, unless `--output DIR` names a new one.
//!
//! Prints one line per event on stdout, then the summary's main figures. Wrong arguments:
//! usage on stderr, exit status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use surveil_config::{paths, ConfigLoader};
use surveil_models::LoadSummary;
use surveil_orchestrator::{
    run_with_sinks, Event, EventKind, EventSink, ModelChoice, RunObserver, RunOptions, RunProgress,
};

const USAGE: &str = "usage: run_pipeline [SOURCE] [--max-frames N] [--output DIR]";

type BoxError = Box<dyn std::error::Error>;

struct Args {
    source: Option<String>,
    max_frames: u64,
    output: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args, BoxError> {
    let mut parsed = Args {
        source: None,
        max_frames: 8,
        output: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--max-frames" => parsed.max_frames = value()?.parse()?,
            "--output" => parsed.output = Some(PathBuf::from(value()?)),
            other if other.starts_with('-') => return Err(format!("unknown option {other}").into()),
            other if parsed.source.is_none() => parsed.source = Some(other.to_string()),
            other => return Err(format!("one source at a time (also got {other})").into()),
        }
    }
    if parsed.max_frames == 0 {
        return Err("--max-frames must be at least 1".into());
    }
    Ok(parsed)
}

/// One line per event: what the frame held, what was decided, and what the model said.
struct PrintEvents {
    frames: u64,
    analyses: u64,
}

impl EventSink for PrintEvents {
    fn write(&mut self, e: &Event) -> surveil_orchestrator::Result<()> {
        match e.kind {
            EventKind::Frame => {
                self.frames += 1;
                println!(
                    "frame {:>4} at {:>6.2} s: {} people, {} tracks, {}, trigger {}",
                    e.frame_id,
                    e.source_time_s,
                    e.persons,
                    e.tracks.len(),
                    e.alert_level.as_str(),
                    e.trigger.as_deref().unwrap_or("-"),
                );
            }
            EventKind::Analysis => {
                self.analyses += 1;
                let outcome = e
                    .vlm
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |v| format!("{:?}", v.outcome));
                let said = e
                    .vlm
                    .as_ref()
                    .map_or("", |v| v.raw_text.as_str())
                    .chars()
                    .take(60)
                    .collect::<String>();
                println!(
                    "analysis of frame {}: {}, {outcome}, {:.0} ms: {said:?}",
                    e.frame_id,
                    e.alert_level.as_str(),
                    e.processing_ms,
                );
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> surveil_orchestrator::Result<()> {
        println!("({} frame events, {} analyses)", self.frames, self.analyses);
        Ok(())
    }
}

/// Progress on stderr.
struct Progress;

impl RunObserver for Progress {
    fn model_loaded(&mut self, s: &LoadSummary) {
        eprintln!(
            "model {} on {} ({}), loaded in {:.1} s",
            s.model, s.device, s.weights, s.load_seconds
        );
    }
    fn source_opened(&mut self, description: &str, total_frames: Option<u64>) {
        let total =
            total_frames.map_or_else(|| "an unknown number of".to_string(), |t| t.to_string());
        eprintln!("source {description}: {total} frames to analyse");
    }
    fn frame_done(&mut self, p: &RunProgress) {
        if p.frames.is_multiple_of(4) {
            eprintln!("{} frames, {:.1} fps", p.frames, p.fps);
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("run_pipeline: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("run_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), BoxError> {
    // The configuration: a profile and one override, as `surveil run --profile testing
    // --weights dummy` would; the environment still applies (VLM_DEVICE, SURVEIL_*).
    let config = ConfigLoader::new()
        .profile(Some("testing"))
        .flag("vlm.weights", "dummy", "--weights")
        .load()?
        .config;

    let source = match args.source {
        Some(s) => s,
        None => {
            let clip = paths::asset("video/vtest.avi");
            if !clip.is_file() {
                return Err(format!(
                    "the sample clip {} is missing: run scripts/setup.sh or give a SOURCE",
                    clip.display()
                )
                .into());
            }
            clip.to_string_lossy().into_owned()
        }
    };
    // The run folder must be new (a previous run's events are never overwritten).
    let temporary = tempfile::tempdir()?;
    let keep = args.output.is_some();
    let output_dir = args.output.unwrap_or_else(|| temporary.path().join("run"));
    let mut options = RunOptions::new(source, &output_dir, paths::asset("yolov3-tiny"));
    options.max_frames = Some(args.max_frames);

    let stop = Arc::new(AtomicBool::new(false));
    let mut printer = PrintEvents {
        frames: 0,
        analyses: 0,
    };
    let summary = run_with_sinks(
        &config,
        &options,
        ModelChoice::FromConfig(None),
        stop,
        &mut Progress,
        &mut [&mut printer],
    )?;

    println!(
        "{} frames in {:.1} s ({:.2} fps), {} person tracks, {} VLM calls, ended: {}",
        summary.frames,
        summary.duration_s,
        summary.fps,
        summary.person_tracks,
        summary.vlm.calls_by_trigger.values().sum::<u64>(),
        summary.end_reason
    );
    println!("alerts by level: {:?}", summary.alerts_by_level);
    if let Some(report) = &summary.memory.snapshots {
        println!("memory of the model's load cycle:\n{report}");
    }
    if keep {
        println!("run folder: {}", summary.output_dir.display());
    }
    Ok(())
}
