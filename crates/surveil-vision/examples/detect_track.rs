//! Runs a video, URL, image or image folder through YOLOv3-tiny + ByteTrack into two sinks: the
//! JSONL track writer, and a closure of this example that counts people per frame (and draws
//! one frame's tracks into a PNG when asked).
//!
//! ```text
//! cargo run --release -p surveil-vision --example detect_track -- INPUT OUT.jsonl \
//!     [--batch N] [--max-frames N] [--width W --height H] [--fps F] [--track-frame-rate F] \
//!     [--snapshot FRAME PNG]
//! ```
//! Model files come from the asset cache: `$SURVEIL_ASSETS/yolov3-tiny` (default
//! `~/.cache/surveil/assets`, filled by `scripts/setup.sh`). Prints the run summary as JSON on
//! stdout. Wrong arguments: usage on stderr, exit status 2.

use std::io::{BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use surveil_vision::{
    run_stream, save_tracks_png, DarknetYolo, DetectTrackStream, FfmpegOptions, JsonlTrackWriter,
    PipelineOptions, TrackSink, TrackedFrame, YoloOptions,
};

const USAGE: &str = "usage: detect_track INPUT OUT.jsonl [--batch N] [--max-frames N] \
[--width W --height H] [--fps F] [--track-frame-rate F] [--snapshot FRAME PNG]";

type BoxError = Box<dyn std::error::Error>;

struct Args {
    input: String,
    output: PathBuf,
    ffmpeg: FfmpegOptions,
    options: PipelineOptions,
    snapshot: Option<(u64, PathBuf)>,
}

fn parse_args(args: &[String]) -> Result<Args, BoxError> {
    let [input, output, rest @ ..] = args else {
        return Err("INPUT and OUT.jsonl are required".into());
    };
    let mut parsed = Args {
        input: input.clone(),
        output: PathBuf::from(output),
        ffmpeg: FfmpegOptions::default(),
        options: PipelineOptions::default(),
        snapshot: None,
    };
    let mut it = rest.iter();
    while let Some(option) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{option} needs a value"));
        match option.as_str() {
            "--batch" => parsed.options.batch_size = value()?.parse()?,
            "--max-frames" => parsed.options.max_frames = Some(value()?.parse()?),
            "--width" => parsed.ffmpeg.width = Some(value()?.parse()?),
            "--height" => parsed.ffmpeg.height = Some(value()?.parse()?),
            "--fps" => parsed.ffmpeg.fps = Some(value()?.parse()?),
            "--track-frame-rate" => parsed.options.tracker.frame_rate = Some(value()?.parse()?),
            "--snapshot" => {
                let frame = value()?.parse()?;
                parsed.snapshot = Some((frame, PathBuf::from(value()?)));
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("detect_track: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detect_track: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), BoxError> {
    let model_dir = surveil_config::paths::asset("yolov3-tiny");
    let detector = DarknetYolo::on_cpu(&YoloOptions::yolov3_tiny(&model_dir))?;
    let mut stream =
        DetectTrackStream::open(&args.input, &args.ffmpeg, Box::new(detector), args.options)?;
    let class_names = stream.class_names().to_vec();

    // Sink 1: one JSON line per track per frame.
    let file = std::fs::File::create(&args.output)?;
    let mut jsonl = JsonlTrackWriter::new(BufWriter::new(file), &class_names);

    // Sink 2: any `FnMut(&TrackedFrame) -> surveil_vision::Result<()>`.
    let mut most_people = (0usize, 0u64);
    let snapshot = args.snapshot;
    let mut people = |tf: &TrackedFrame| -> surveil_vision::Result<()> {
        let n = tf
            .tracks
            .iter()
            .filter(|t| class_names.get(t.class_id).is_some_and(|c| c == "person"))
            .count();
        if n > most_people.0 {
            most_people = (n, tf.frame.index);
        }
        if let Some((frame, path)) = &snapshot {
            if tf.frame.index == *frame {
                save_tracks_png(&tf.frame, &tf.tracks, path)?;
            }
        }
        Ok(())
    };

    let sinks: &mut [&mut dyn TrackSink] = &mut [&mut jsonl, &mut people];
    let summary = run_stream(&mut stream, sinks, None)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!(
        "most people in one frame: {} (frame {})",
        most_people.0, most_people.1
    );
    Ok(())
}
