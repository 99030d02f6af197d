//! Throughput of decode + detect + track at 416x416 (ffmpeg scales vtest.avi to the network
//! size), single-frame and batched, and where the time goes.
//!
//! ```text
//! cargo bench -p surveil-vision --bench throughput
//! BENCH_FRAMES=64 BENCH_REPEATS=5 BENCH_BATCHES=1,4,8 cargo bench -p surveil-vision --bench throughput
//! ```
//! Every number is the median of `BENCH_REPEATS` runs on the same frames in the same process,
//! so batch sizes are compared against each other under the same conditions. No assertions:
//! this prints, it does not judge.

use std::time::{Duration, Instant};

use candle_core::Device;
use surveil_vision::detect::{DarknetYolo, Detector, YoloOptions};
use surveil_vision::source::{FfmpegOptions, FfmpegSource};
use surveil_vision::{
    run_detect_track, ByteTracker, Frame, FrameSourceExt, PipelineOptions, RunHooks, TrackerParams,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let assets = surveil_config::paths::assets_dir();
    let video = assets.join("video/vtest.avi");
    let model_dir = assets.join("yolov3-tiny");
    if !video.is_file() || !model_dir.join("yolov3-tiny.weights").is_file() {
        eprintln!(
            "SKIP: assets missing under {} (run scripts/setup.sh)",
            assets.display()
        );
        return;
    }
    let n_frames = env_usize("BENCH_FRAMES", 48);
    let repeats = env_usize("BENCH_REPEATS", 3).max(1);
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1,4,8".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "surveil-vision throughput: vtest.avi scaled to 416x416 by ffmpeg, {n_frames} frames, \
         median of {repeats} runs, {threads} CPU threads, candle CPU f32"
    );

    let ff = FfmpegOptions {
        width: Some(416),
        height: Some(416),
        ..FfmpegOptions::default()
    };
    let mut opts = YoloOptions::yolov3_tiny(&model_dir);
    opts.classes = vec!["person".to_string()];
    let detector = DarknetYolo::new(&opts, &Device::Cpu).expect("detector loads");

    // 1. Decode alone.
    let mut frames: Vec<Frame> = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let mut src = FfmpegSource::open(video.to_str().unwrap_or_default(), &ff).expect("open");
        frames = src
            .frames()
            .take(n_frames)
            .collect::<Result<_, _>>()
            .expect("decode");
        decode.push(t.elapsed().as_secs_f64());
    }
    let decode_s = median(decode);
    println!("\n-- stages in isolation (ms per frame) --");
    println!(
        "decode (ffmpeg, incl. start)   {:8.2}   {:7.1} frames/s",
        decode_s * 1e3 / n_frames as f64,
        n_frames as f64 / decode_s
    );

    // 2. Detect alone, per batch size, split into its steps.
    let refs: Vec<&Frame> = frames.iter().collect();
    let mut detect_fps = Vec::new();
    for &b in &batches {
        let (mut pre, mut fwd, mut post, mut total) = (vec![], vec![], vec![], vec![]);
        for _ in 0..repeats {
            let (mut tp, mut tf, mut tq) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let t = Instant::now();
            for chunk in refs.chunks(b) {
                let out = detector.detect(chunk).expect("detect");
                tp += out.timings.preprocess;
                tf += out.timings.forward;
                tq += out.timings.postprocess;
            }
            total.push(t.elapsed().as_secs_f64());
            pre.push(ms(tp) / n_frames as f64);
            fwd.push(ms(tf) / n_frames as f64);
            post.push(ms(tq) / n_frames as f64);
        }
        let total = median(total);
        detect_fps.push((b, n_frames as f64 / total));
        println!(
            "detect batch {b:<2}  preprocess {:6.2}  forward {:7.2}  postprocess {:5.2}   {:6.2} frames/s",
            median(pre),
            median(fwd),
            median(post),
            n_frames as f64 / total
        );
    }

    // 3. Track alone on the detections of these frames.
    let dets: Vec<_> = refs
        .chunks(8)
        .flat_map(|c| detector.detect(c).expect("detect").detections)
        .collect();
    let mut track = Vec::new();
    for _ in 0..repeats {
        let mut tracker = ByteTracker::new(TrackerParams::default()).expect("params");
        let t = Instant::now();
        for (f, d) in frames.iter().zip(&dets) {
            tracker.update(f.index, f.timestamp, d);
        }
        track.push(t.elapsed().as_secs_f64());
    }
    println!(
        "track (ByteTrack)             {:8.4}",
        median(track) * 1e3 / n_frames as f64
    );

    // 4. End to end: decoder thread + queue + detect + track + JSONL to a sink.
    println!("\n-- end to end: decode + detect + track + JSONL (decoding overlaps analysis) --");
    let mut e2e = Vec::new();
    for &b in &batches {
        let mut fps = Vec::new();
        let mut last = None;
        for _ in 0..repeats {
            let src = FfmpegSource::open(video.to_str().unwrap_or_default(), &ff).expect("open");
            let options = PipelineOptions {
                batch_size: b,
                max_frames: Some(n_frames as u64),
                ..PipelineOptions::default()
            };
            let s = run_detect_track(
                Box::new(src),
                &detector,
                &options,
                &mut std::io::sink(),
                RunHooks::default(),
            )
            .expect("run");
            fps.push(s.analysed_fps);
            last = Some(s);
        }
        let fps = median(fps);
        e2e.push((b, fps));
        if let Some(s) = last {
            let n = s.frames_analysed.max(1) as f64;
            let t = s.timings;
            println!(
                "batch {b:<2} {fps:6.2} frames/s | per frame ms: forward {:.1}, preprocess {:.2}, postprocess {:.2}, track {:.3}, output {:.3}, waiting for decode {:.2} (decoder thread busy {:.2})",
                ms(t.forward) / n,
                ms(t.preprocess) / n,
                ms(t.postprocess) / n,
                ms(t.track) / n,
                ms(t.output) / n,
                ms(t.queue_wait) / n,
                ms(t.decode) / n
            );
        }
    }
    if let (Some(&(_, one)), true) = (e2e.first(), e2e.len() > 1) {
        for &(b, fps) in &e2e[1..] {
            println!("batch {b} vs batch 1: {:.2}x", fps / one);
        }
    }

    // 5. Where the forward pass goes, by layer (batch 1, median over frames x repeats).
    println!("\n-- forward by layer, batch 1 (ms, median) --");
    let net = detector.network();
    let (input, _) = detector.preprocess(&refs[..1]).expect("preprocess");
    let n_layers = net.config().layers.len();
    let mut per_layer: Vec<Vec<f64>> = vec![Vec::new(); n_layers];
    for _ in 0..repeats.max(3) {
        let mut times = Vec::new();
        net.forward_profiled(&input, Some(&mut times))
            .expect("forward");
        for (i, t) in times.iter().enumerate() {
            per_layer[i].push(ms(*t));
        }
    }
    let meds: Vec<f64> = per_layer.into_iter().map(median).collect();
    let total: f64 = meds.iter().sum();
    for (i, (m, shape)) in meds.iter().zip(&net.config().shapes).enumerate() {
        let kind = format!("{:?}", net.config().layers[i]);
        let kind = kind.split(['(', ' ', '{']).next().unwrap_or("").to_string();
        println!(
            "layer {i:>2} {kind:<14} -> {:>4}x{:>3}x{:>3}  {m:8.2}  {:5.1}%",
            shape.channels,
            shape.height,
            shape.width,
            100.0 * m / total
        );
    }
    println!("total {total:.1} ms");
}
