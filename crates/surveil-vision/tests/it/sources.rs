//! Frame sources on real files, bad inputs, reconnection, and process hygiene.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surveil_vision::source::{
    open_source, FfmpegOptions, FfmpegSource, FrameQueue, ImageFolderSource, QueuePolicy,
    ReconnectPolicy, SingleImageSource,
};
use surveil_vision::{FrameSource, FrameSourceExt, VisionError};

use crate::common::{asset, fixtures_root};

/// The state letter of a process (`R`, `S`, `Z`, ...) or None when it no longer exists.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.chars().next()
}

fn assert_reaped(pid: u32) {
    // kill + wait happen in drop, so the process is gone at once; allow a moment for /proc.
    for _ in 0..50 {
        match process_state(pid) {
            None => return,
            Some('Z') => {}
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "ffmpeg pid {pid} still exists in state {:?} after drop",
        process_state(pid)
    );
}

fn truncated_copy(src: &Path, bytes: usize, dir: &Path, name: &str) -> PathBuf {
    let data = std::fs::read(src).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, &data[..bytes.min(data.len())]).unwrap();
    p
}

#[test]
fn vtest_frames_match_the_fixture_decode() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let mut src = FfmpegSource::open(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    assert!(!src.is_live());
    assert_eq!(src.fps(), Some(10.0));
    let frames: Vec<_> = src.frames().take(3).map(|f| f.unwrap()).collect();
    assert_eq!(
        frames
            .iter()
            .map(|f| (f.index, f.width, f.height))
            .collect::<Vec<_>>(),
        vec![(0, 768, 576), (1, 768, 576), (2, 768, 576)]
    );
    assert_eq!(frames[2].timestamp, Duration::from_millis(200));
    // Frame 0 is byte-identical to the fixture PNG (decoded by the same ffmpeg command).
    if let Some(root) = fixtures_root() {
        let png = root.join("yolov3_tiny").join("vtest_f0000.png");
        if png.is_file() {
            let img = image::open(&png).unwrap().to_rgb8();
            assert!(
                img.as_raw() == &frames[0].data,
                "frame 0 differs from the fixture PNG"
            );
        }
    }
    let pid = src.pid().expect("running child");
    drop(src); // mid-stream: ffmpeg is blocked writing the next frame
    assert_reaped(pid);
}

#[test]
fn scale_and_fps_are_applied_by_ffmpeg() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let opts = FfmpegOptions {
        width: Some(416),
        height: Some(416),
        fps: Some(5.0),
        ..FfmpegOptions::default()
    };
    let mut src = FfmpegSource::open(video.to_str().unwrap(), &opts).unwrap();
    let frames: Vec<_> = src.frames().take(3).map(|f| f.unwrap()).collect();
    assert!(frames.iter().all(|f| f.width == 416 && f.height == 416));
    assert_eq!(frames[1].timestamp, Duration::from_millis(200));
    // Only width: height keeps the aspect (640x272 -> 320x136).
    let Some(bikes) = asset("video/bikes.mp4") else {
        return;
    };
    let opts = FfmpegOptions {
        width: Some(320),
        ..FfmpegOptions::default()
    };
    let mut src = FfmpegSource::open(bikes.to_str().unwrap(), &opts).unwrap();
    let f = src.next_frame().unwrap().unwrap();
    assert_eq!((f.width, f.height), (320, 136));
}

#[test]
fn truncated_avi_yields_its_frames_then_ends() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = truncated_copy(&video, 200_000, dir.path(), "cut.avi");
    let mut src = FfmpegSource::open(p.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let mut n = 0;
    for f in src.frames() {
        f.expect("a damaged tail is a warning, not an error");
        n += 1;
    }
    assert!(n > 0 && n < 795, "decoded {n} frames of a 200 kB prefix");
    assert!(src.next_frame().unwrap().is_none(), "stays at the end");
    assert_eq!(src.pid(), None, "child reaped at EOF");
}

#[test]
fn truncated_mp4_and_non_video_files_are_clear_errors() {
    let Some(bikes) = asset("video/bikes.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = truncated_copy(&bikes, 100_000, dir.path(), "cut.mp4");
    let err = FfmpegSource::open(p.to_str().unwrap(), &FfmpegOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VisionError::Ffmpeg { .. }), "{err:?}");
    assert!(
        msg.contains("cut.mp4") && msg.contains("moov atom not found"),
        "{msg}"
    );

    let text = dir.path().join("notes.avi");
    std::fs::write(&text, "this is not a video\n".repeat(100)).unwrap();
    let msg = FfmpegSource::open(text.to_str().unwrap(), &FfmpegOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("notes.avi") && msg.contains("before producing a video stream"),
        "{msg}"
    );

    let msg = FfmpegSource::open("/nonexistent/x.mp4", &FfmpegOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/nonexistent/x.mp4"), "{msg}");
}

#[test]
fn missing_ffmpeg_binary_is_a_clear_error() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let opts = FfmpegOptions {
        ffmpeg_path: PathBuf::from("/nonexistent/bin/ffmpeg"),
        ..FfmpegOptions::default()
    };
    let err = FfmpegSource::open(video.to_str().unwrap(), &opts).unwrap_err();
    assert!(matches!(err, VisionError::FfmpegSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/bin/ffmpeg"), "{err}");
    // Live sources do not retry a missing binary.
    let opts = FfmpegOptions {
        live: Some(true),
        ..opts
    };
    let err = FfmpegSource::open("rtsp://127.0.0.1:9/x", &opts).unwrap_err();
    assert!(matches!(err, VisionError::FfmpegSpawn { .. }), "{err:?}");
}

/// A shared buffer that collects log output.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

#[test]
fn unreachable_rtsp_retries_with_backoff_and_never_logs_the_password() {
    let port = closed_port();
    let url = format!("rtsp://admin:hunter2secret@127.0.0.1:{port}/stream");
    let opts = FfmpegOptions {
        reconnect: ReconnectPolicy {
            initial_ms: 10,
            max_ms: 40,
            max_attempts: Some(3),
        },
        io_timeout_ms: 2000,
        ..FfmpegOptions::default()
    };
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let err = tracing::subscriber::with_default(subscriber, || {
        FfmpegSource::open(&url, &opts).unwrap_err()
    });
    let msg = format!("{err} / {err:?}");
    assert!(
        matches!(err, VisionError::SourceUnavailable { attempts: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(
        msg.contains(&format!("rtsp://admin:***@127.0.0.1:{port}/stream")),
        "{msg}"
    );
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches("retrying").count(), 2, "{log}");
    assert!(log.contains("admin:***@"), "{log}");
    assert!(
        !msg.contains("hunter2secret") && !log.contains("hunter2secret"),
        "{msg}\n{log}"
    );
}

#[test]
fn live_source_reconnects_after_the_stream_ends() {
    // A short file read as a live source: at its end the "stream drops" and is reopened.
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = truncated_copy(&video, 150_000, dir.path(), "short.avi");
    let per_run = FfmpegSource::open(p.to_str().unwrap(), &FfmpegOptions::default())
        .unwrap()
        .frames()
        .count() as u64;
    assert!(per_run > 0);
    let opts = FfmpegOptions {
        live: Some(true),
        reconnect: ReconnectPolicy {
            initial_ms: 10,
            max_ms: 10,
            max_attempts: Some(2),
        },
        ..FfmpegOptions::default()
    };
    let mut src = FfmpegSource::open(p.to_str().unwrap(), &opts).unwrap();
    assert!(src.is_live());
    let want = per_run + 2;
    let frames: Vec<_> = src
        .frames()
        .take(want as usize)
        .map(|f| f.unwrap())
        .collect();
    assert_eq!(frames.len() as u64, want);
    assert_eq!(frames.last().unwrap().index, want - 1, "indices continue");
    assert!(frames.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    assert_eq!(src.reconnects(), 1);
}

#[test]
fn dropping_a_queue_stops_decoding_and_reaps_ffmpeg() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let src = FfmpegSource::open(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let pid = src.pid().unwrap();
    let q = FrameQueue::spawn(Box::new(src), 2, QueuePolicy::Block).unwrap();
    let f = q.recv().unwrap().unwrap();
    assert_eq!(f.index, 0);
    drop(q);
    assert_reaped(pid);
}

#[test]
fn drop_oldest_queue_on_a_fast_source_reports_drops() {
    let Some(video) = asset("video/vtest.avi") else {
        return;
    };
    let opts = FfmpegOptions {
        width: Some(64),
        height: Some(48),
        ..FfmpegOptions::default()
    };
    let src = FfmpegSource::open(video.to_str().unwrap(), &opts).unwrap();
    let q = FrameQueue::spawn(Box::new(src), 4, QueuePolicy::DropOldest).unwrap();
    let mut seen = Vec::new();
    while let Some(f) = q.recv() {
        seen.push(f.unwrap().index);
        std::thread::sleep(Duration::from_millis(5)); // slower than decoding 64x48
    }
    let s = q.stats();
    assert_eq!(s.decoded, 795);
    assert_eq!(s.dropped + seen.len() as u64, 795);
    assert!(s.dropped > 0, "a slow consumer must cause drops");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert_eq!(
        *seen.last().unwrap(),
        794,
        "the newest frame is never dropped"
    );
}

#[test]
fn image_folder_is_sorted_and_bad_images_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shade) in [("b.png", 20u8), ("a.png", 10), ("c.jpg", 30)] {
        let img = image::RgbImage::from_pixel(8, 6, image::Rgb([shade, shade, shade]));
        img.save(dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("readme.txt"), "not an image").unwrap();
    let mut src = ImageFolderSource::open(dir.path(), 2.0).unwrap();
    let frames: Vec<_> = src.frames().map(|f| f.unwrap()).collect();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].data[0], 10);
    assert_eq!(frames[1].data[0], 20);
    assert_eq!(frames[2].timestamp, Duration::from_millis(1000));
    assert_eq!((frames[2].width, frames[2].height), (8, 6));

    // A zero-byte image: clear error from the folder and from the single-image source.
    std::fs::write(dir.path().join("d.png"), b"").unwrap();
    let mut src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    let results: Vec<_> = src.frames().collect();
    let err = results.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(err.contains("d.png") && err.contains("empty file"), "{err}");
    let err = SingleImageSource::open(&dir.path().join("d.png")).unwrap_err();
    assert!(matches!(err, VisionError::Image { .. }), "{err:?}");

    let empty = tempfile::tempdir().unwrap();
    let err = ImageFolderSource::open(empty.path(), 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images"), "{err}");
}

#[test]
fn open_source_picks_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("one.png");
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .save(&p)
        .unwrap();
    let mut single = open_source(p.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    assert_eq!(single.next_frame().unwrap().unwrap().data[..3], [1, 2, 3]);
    assert!(single.next_frame().unwrap().is_none());
    let mut folder = open_source(dir.path().to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    assert_eq!(folder.frames().count(), 1);
    if let Some(video) = asset("video/bikes.mp4") {
        let mut v = open_source(video.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
        let f = v.next_frame().unwrap().unwrap();
        assert_eq!((f.width, f.height), (640, 272));
        assert_eq!(v.fps(), Some(25.0));
    }
}
