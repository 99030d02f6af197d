//! The detect + track entry point on real frames.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::Device;
use surveil_vision::detect::{DarknetYolo, Detector, YoloOptions};
use surveil_vision::source::{FfmpegOptions, FfmpegSource, SingleImageSource};
use surveil_vision::{
    run_detect_track, save_tracks_png, Frame, PipelineOptions, RunHooks, TrackLine, TrackedObject,
    VisionError,
};

use crate::common::{assets_root, fixtures_root};
use crate::stream::required_asset as asset;

/// The YOLOv3-tiny detector from the asset cache, loaded once per test binary.
pub fn detector() -> Option<Arc<DarknetYolo>> {
    static D: OnceLock<Option<Arc<DarknetYolo>>> = OnceLock::new();
    D.get_or_init(|| {
        asset("yolov3-tiny/yolov3-tiny.weights")?;
        asset("yolov3-tiny/yolov3-tiny.cfg")?;
        let opts = YoloOptions::yolov3_tiny(&assets_root().join("yolov3-tiny"));
        Some(Arc::new(
            DarknetYolo::new(&opts, &Device::Cpu).expect("detector"),
        ))
    })
    .clone()
}

fn run_vtest(batch: usize, frames: u64) -> Option<(Vec<TrackLine>, surveil_vision::RunSummary)> {
    let det = detector()?;
    let video = asset("video/vtest.avi")?;
    let src = FfmpegSource::open(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let options = PipelineOptions {
        batch_size: batch,
        max_frames: Some(frames),
        ..PipelineOptions::default()
    };
    let mut out = Vec::new();
    let summary = run_detect_track(
        Box::new(src),
        det.as_ref(),
        &options,
        &mut out,
        RunHooks::default(),
    )
    .unwrap();
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSONL line"))
        .collect();
    Some((lines, summary))
}

#[test]
fn vtest_run_writes_jsonl_and_batching_does_not_change_results() {
    let Some((single, s1)) = run_vtest(1, 10) else {
        return;
    };
    let Some((batched, s4)) = run_vtest(4, 10) else {
        return;
    };
    assert_eq!(s1.frames_analysed, 10);
    assert_eq!(s4.frames_analysed, 10);
    assert_eq!(s1.frames_dropped, 0, "files use the block policy");
    assert_eq!(s1.lines_written as usize, single.len());
    // Frame 0: the three persons of the fixture (tracks born on frame 0 are confirmed at once).
    let f0: Vec<&TrackLine> = single.iter().filter(|l| l.frame == 0).collect();
    assert_eq!(f0.len(), 3);
    assert!(f0.iter().all(|l| l.class == "person" && l.timestamp == 0.0));
    assert_eq!(
        f0.iter().map(|l| l.track_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // The three keep their ids: no other id appears, and each is on almost every frame (the
    // detector misses a person now and then, e.g. track 3 on frame 7; the id survives the gap).
    assert!(
        single.iter().all(|l| (1..=3).contains(&l.track_id)),
        "{single:?}"
    );
    for id in 1..=3 {
        let n = single.iter().filter(|l| l.track_id == id).count();
        assert!(n >= 8, "track {id} on only {n} of 10 frames");
    }
    assert!(single
        .iter()
        .any(|l| l.frame == 9 && (l.timestamp - 0.9).abs() < 1e-9));
    // Stats agree with the lines.
    let tracks: std::collections::BTreeSet<u64> = single.iter().map(|l| l.track_id).collect();
    assert_eq!(s1.tracks as usize, tracks.len());
    assert!((s1.mean_track_length - single.len() as f64 / tracks.len() as f64).abs() < 1e-9);
    assert!(s1.timings.forward > Duration::ZERO && s1.detections >= s1.lines_written);
    // Batch 4 gives the same tracks and (up to float noise) the same boxes.
    assert_eq!(single.len(), batched.len());
    for (a, b) in single.iter().zip(&batched) {
        assert_eq!(
            (a.frame, a.track_id, &a.class),
            (b.frame, b.track_id, &b.class)
        );
        for (x, y) in [
            (a.x1, b.x1),
            (a.y1, b.y1),
            (a.x2, b.x2),
            (a.y2, b.y2),
            (a.score, b.score),
        ] {
            assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
        }
    }
    let json = serde_json::to_value(&s4).unwrap();
    assert!(
        json["timings"]["forward"].as_f64().unwrap() > 0.0,
        "durations in seconds"
    );
}

#[test]
fn single_image_run_and_rendered_png() {
    let Some(det) = detector() else { return };
    let Some(root) = fixtures_root() else { return };
    let png = root.join("yolov3_tiny/vtest_f0600.png");
    if !png.is_file() {
        eprintln!("SKIP: {} missing", png.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("tracks.png");
    let mut seen: Vec<(Frame, Vec<TrackedObject>)> = Vec::new();
    let hooks = RunHooks {
        cancel: None,
        on_frame: Some(Box::new(|f: &Frame, t: &[TrackedObject]| {
            seen.push((f.clone(), t.to_vec()))
        })),
    };
    let mut out = Vec::new();
    let s = run_detect_track(
        Box::new(SingleImageSource::open(&png).unwrap()),
        det.as_ref(),
        &PipelineOptions::default(),
        &mut out,
        hooks,
    )
    .unwrap();
    assert_eq!(s.frames_analysed, 1);
    // The fixture has 6 persons on this frame; all score >= 0.6, so all start tracks.
    assert_eq!(s.tracks, 6);
    let (frame, tracks) = &seen[0];
    save_tracks_png(frame, tracks, &snap).unwrap();
    let img = image::open(&snap).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (768, 576));
    let t = &tracks[0];
    let edge = img.get_pixel(
        t.bbox.x1.round() as u32,
        ((t.bbox.y1 + t.bbox.y2) / 2.0) as u32,
    );
    assert_eq!(*edge, surveil_vision::render::track_color(t.track_id));
}

#[test]
fn cancel_and_bad_options_and_zero_size_frames() {
    let Some(det) = detector() else { return };
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let src = FfmpegSource::open(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let pid = src.pid().unwrap();
    let hooks = RunHooks {
        cancel: Some(Arc::new(AtomicBool::new(true))),
        on_frame: None,
    };
    let s = run_detect_track(
        Box::new(src),
        det.as_ref(),
        &PipelineOptions::default(),
        &mut Vec::new(),
        hooks,
    )
    .unwrap();
    assert!(s.cancelled);
    assert_eq!(s.frames_analysed, 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "ffmpeg reaped"
    );

    let src = FfmpegSource::open(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let bad = PipelineOptions {
        batch_size: 0,
        ..PipelineOptions::default()
    };
    let e = run_detect_track(
        Box::new(src),
        det.as_ref(),
        &bad,
        &mut Vec::new(),
        RunHooks::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");

    let empty = Frame {
        index: 5,
        timestamp: Duration::ZERO,
        width: 0,
        height: 0,
        data: Vec::new(),
    };
    let e = det.detect(&[&empty]).unwrap_err();
    assert!(
        matches!(e, VisionError::InvalidFrame { index: 5, .. }),
        "{e:?}"
    );
    let short = Frame {
        width: 4,
        height: 4,
        data: vec![0; 5],
        ..empty
    };
    let e = det.detect(&[&short]).unwrap_err().to_string();
    assert!(e.contains("5 bytes"), "{e}");
}
