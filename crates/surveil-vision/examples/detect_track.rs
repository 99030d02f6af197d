//! Runs a video, URL, image or image folder through YOLOv3-tiny + ByteTrack.
//!
//! ```text
//! cargo run --release -p surveil-vision --example detect_track -- INPUT OUT.jsonl \
//!     [--batch N] [--max-frames N] [--width W --height H] [--fps F] [--snapshot FRAME PNG]
//! ```
//! Model files come from `$SURVEIL_ASSETS/yolov3-tiny` (default `~/.cache/surveil/assets`).
//! Prints the run summary as JSON.

use std::io::BufWriter;
use std::path::PathBuf;

use candle_core::Device;
use surveil_vision::{
    open_source, run_detect_track, save_tracks_png, DarknetYolo, FfmpegOptions, PipelineOptions,
    RunHooks, YoloOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: detect_track INPUT OUT.jsonl [options]".into());
    }
    let mut ff = FfmpegOptions::default();
    let mut opts = PipelineOptions::default();
    let mut snapshot: Option<(u64, PathBuf)> = None;
    let mut i = 2;
    while i < args.len() {
        let val = |k: usize| args.get(k).cloned().ok_or("missing value");
        match args[i].as_str() {
            "--batch" => opts.batch_size = val(i + 1)?.parse()?,
            "--max-frames" => opts.max_frames = Some(val(i + 1)?.parse()?),
            "--width" => ff.width = Some(val(i + 1)?.parse()?),
            "--height" => ff.height = Some(val(i + 1)?.parse()?),
            "--fps" => ff.fps = Some(val(i + 1)?.parse()?),
            "--track-frame-rate" => opts.tracker.frame_rate = Some(val(i + 1)?.parse()?),
            "--snapshot" => {
                snapshot = Some((val(i + 1)?.parse()?, PathBuf::from(val(i + 2)?)));
                i += 1;
            }
            other => return Err(format!("unknown option {other}").into()),
        }
        i += 2;
    }
    let assets = surveil_config::paths::assets_dir();
    let detector = DarknetYolo::new(
        &YoloOptions::yolov3_tiny(&assets.join("yolov3-tiny")),
        &Device::Cpu,
    )?;
    let source = open_source(&args[0], &ff)?;
    let mut out = BufWriter::new(std::fs::File::create(&args[1])?);
    let hooks = RunHooks {
        cancel: None,
        on_frame: snapshot.map(|(frame, path)| {
            Box::new(
                move |f: &surveil_vision::Frame, t: &[surveil_vision::TrackedObject]| {
                    if f.index == frame {
                        if let Err(e) = save_tracks_png(f, t, &path) {
                            eprintln!("snapshot: {e}");
                        }
                    }
                },
            )
                as Box<dyn FnMut(&surveil_vision::Frame, &[surveil_vision::TrackedObject])>
        }),
    };
    let summary = run_detect_track(source, &detector, &opts, &mut out, hooks)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
