//! Frame sources on real files, bad inputs, reconnection, and process hygiene.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surveil_vision::source::{
    open_source, open_source_with_stop, FfmpegOptions, FfmpegSource, FrameQueue, ImageFolderSource,
    QueuePolicy, ReconnectPolicy, SingleImageSource, StopSignal,
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
    // The damage is counted, for the run's summary.
    let errors = FrameSource::decode_errors(&src);
    assert!(errors > 0, "ffmpeg's decode errors are counted");
    assert_eq!(src.decode_errors(), errors);

    // Through a queue, as a stream reads it; an intact file counts none.
    for (path, damaged) in [(p.clone(), true), (video.clone(), false)] {
        let src = FfmpegSource::open(path.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
        let queue = FrameQueue::spawn(Box::new(src), 4, QueuePolicy::Block).unwrap();
        let mut n = 0;
        while let Some(f) = queue.recv() {
            f.unwrap();
            n += 1;
            if !damaged && n == 3 {
                break;
            }
        }
        let stats = queue.stats();
        if damaged {
            assert!(stats.decode_errors > 0, "{stats:?}");
        } else {
            assert_eq!(stats.decode_errors, 0, "{stats:?}");
        }
    }
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

    // A zero-byte image: skipped and counted in a folder of good images (tests/it/images.rs
    // has the folder where none decodes); a clear error from the single-image source.
    std::fs::write(dir.path().join("d.png"), b"").unwrap();
    let mut src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    let frames: Vec<_> = src.frames().map(|f| f.unwrap()).collect();
    assert_eq!((frames.len(), src.skipped_frames()), (3, 1));
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

// ---------------------------------------------------------------------------------------------
// Local servers, ffmpeg wrappers and process checks for the live-source tests below.

/// What a test server does with one request.
enum Reply {
    /// Send these bytes and read the next request on the same connection (RTSP).
    Send(Vec<u8>),
    /// Send these bytes, then close the connection (HTTP).
    SendAndClose(Vec<u8>),
    /// Close the connection without a reply.
    Close,
    /// Keep the connection open and never answer (a camera that hangs).
    Hold,
}

/// A TCP server on 127.0.0.1 that records each request (headers only) and answers it with
/// `handler(connection number from 1, request text)`. Stops when dropped.
struct TestServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(handler: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, connections, done) =
                (requests.clone(), connections.clone(), done.clone());
            std::thread::spawn(move || {
                let handler = Arc::new(handler);
                let mut held = Vec::new();
                let mut workers = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let (mut conn, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let (handler, requests, done) =
                        (handler.clone(), requests.clone(), done.clone());
                    let keep = conn.try_clone().unwrap();
                    workers.push(std::thread::spawn(move || {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !done.load(Ordering::SeqCst) {
                            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                                match conn.read(&mut chunk) {
                                    Ok(0) | Err(_) => return,
                                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                                }
                                continue;
                            };
                            let req = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            requests.lock().unwrap().push(req.clone());
                            match handler(n, &req) {
                                Reply::Send(b) => {
                                    if conn.write_all(&b).is_err() {
                                        return;
                                    }
                                }
                                Reply::SendAndClose(b) => {
                                    let _ = conn.write_all(&b);
                                    return;
                                }
                                Reply::Close => return,
                                Reply::Hold => {
                                    while !done.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(5));
                                    }
                                    return;
                                }
                            }
                        }
                    }));
                    held.push(keep);
                }
                drop(held);
                for w in workers {
                    let _ = w.join();
                }
            })
        };
        Self {
            port,
            requests,
            connections,
            done,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits up to 20 s until at least `n` connections were accepted.
    fn wait_connections(&self, n: usize) {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while self.connections() < n {
            assert!(
                std::time::Instant::now() < until,
                "server saw {} connections, waited for {n}",
                self.connections()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn http_ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Runs ffmpeg (test helper) and panics with its stderr on failure.
fn run_ffmpeg(args: &[&str]) {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An MPEG-TS clip of `frames` 64x48 test-pattern frames at 10 fps.
fn tiny_ts(dir: &Path, frames: u32) -> Vec<u8> {
    let p = dir.join("tiny.ts");
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=10",
        "-frames:v",
        &frames.to_string(),
        "-c:v",
        "mpeg2video",
        "-f",
        "mpegts",
        p.to_str().unwrap(),
    ]);
    std::fs::read(p).unwrap()
}

/// A script that records its pid in `pids.txt` and `exec`s ffmpeg (same pid), so a test knows
/// every ffmpeg process its source started.
fn recording_ffmpeg(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let pids = dir.join("pids.txt");
    let script = dir.join("ffmpeg-recording.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ >> '{}'\nexec ffmpeg \"$@\"\n",
            pids.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, pids)
}

fn recorded_pids(pids: &Path) -> Vec<u32> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Pids of the processes whose command line contains `needle` (what `ps` shows every user).
fn processes_whose_cmdline_contains(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Base64 (RFC 4648, with padding) for expected `Authorization: Basic` values.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_known_vectors() {
    assert_eq!(base64(b"admin:s3cr3t"), "YWRtaW46czNjcjN0");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"a"), "YQ==");
}

// ---------------------------------------------------------------------------------------------
// Variable frame rate: frames pass through at their source timestamps.

/// ffprobe's presentation times (seconds) of the first video stream's frames.
fn ffprobe_pts_times(p: &Path) -> Vec<f64> {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_end_matches(',').parse::<f64>().unwrap())
        .collect()
}

#[test]
fn variable_frame_rate_file_keeps_its_frames_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vfr.mkv");
    // 11 frames at irregular times: pts(N) = 97 N^2 + 3 N milliseconds (0, 100, 394, ... 9730).
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=10",
        "-frames:v",
        "11",
        "-vf",
        "settb=1/1000,setpts='(N*N*97+N*3)/1000/TB'",
        "-fps_mode",
        "passthrough",
        "-enc_time_base",
        "1/1000",
        "-c:v",
        "ffv1",
        p.to_str().unwrap(),
    ]);
    let pts = ffprobe_pts_times(&p);
    assert_eq!(pts.len(), 11, "{pts:?}");
    let gaps: Vec<i64> = pts
        .windows(2)
        .map(|w| ((w[1] - w[0]) * 1000.0).round() as i64)
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[0] != g[1]),
        "the clip must really have a variable frame rate: {gaps:?}"
    );

    let mut src = FfmpegSource::open(p.to_str().unwrap(), &FfmpegOptions::default()).unwrap();
    let frames: Vec<_> = src.frames().map(|f| f.unwrap()).collect();
    assert_eq!(frames.len(), pts.len(), "one frame per source frame");
    for (i, (f, want)) in frames.iter().zip(&pts).enumerate() {
        assert_eq!(f.index, i as u64, "index = position in the source");
        let got = f.timestamp.as_secs_f64();
        assert!(
            (got - want).abs() <= 0.001,
            "frame {i}: timestamp {got} s, ffprobe says {want} s"
        );
    }

    // A fixed output rate is still a fixed rate: fps=5 over 9.73 s -> frames every 200 ms.
    let opts = FfmpegOptions {
        fps: Some(5.0),
        ..FfmpegOptions::default()
    };
    let mut src = FfmpegSource::open(p.to_str().unwrap(), &opts).unwrap();
    let frames: Vec<_> = src.frames().map(|f| f.unwrap()).collect();
    assert!(
        (48..=50).contains(&frames.len()),
        "{} frames at 5 fps",
        frames.len()
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.index, i as u64);
        assert_eq!(f.timestamp, Duration::from_millis(200 * i as u64));
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials never appear in a process's command line.

#[test]
fn http_password_stays_out_of_the_process_list_and_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let clip = tiny_ts(dir.path(), 5);
    let password = "pw-Zq81-cmdline";
    let want_auth = format!(
        "Authorization: Basic {}",
        base64(format!("admin:{password}").as_bytes())
    );
    let seen_in_ps = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let (want_auth, seen_in_ps) = (want_auth.clone(), seen_in_ps.clone());
        TestServer::start(move |_, req| {
            // While ffmpeg waits for this answer, look at every process's command line.
            seen_in_ps
                .lock()
                .unwrap()
                .extend(processes_whose_cmdline_contains(password));
            if req.lines().any(|l| l.trim() == want_auth) {
                Reply::SendAndClose(http_ok(&clip))
            } else {
                Reply::SendAndClose(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"cam\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                )
            }
        })
    };
    let url = format!("http://admin:{password}@127.0.0.1:{}/cam.ts", server.port);
    let opts = FfmpegOptions {
        reconnect: ReconnectPolicy {
            initial_ms: 10,
            max_ms: 10,
            max_attempts: Some(1),
        },
        ..FfmpegOptions::default()
    };
    let mut src = FfmpegSource::open(&url, &opts).unwrap();
    let pid = src.pid().unwrap();
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(
        !cmdline.contains(password),
        "ffmpeg's command line shows the password: {cmdline}"
    );
    let f = src.next_frame().unwrap().unwrap();
    assert_eq!((f.width, f.height), (64, 48));
    assert_eq!(
        *seen_in_ps.lock().unwrap(),
        Vec::<u32>::new(),
        "processes showing the password"
    );
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.lines().any(|l| l.trim() == want_auth)),
        "the credentials never reached the server: {requests:?}"
    );
}

#[test]
fn rtsp_password_stays_out_of_the_process_list_and_reaches_the_server() {
    let password = "pw-Rt55-cmdline";
    let want_auth = format!(
        "Authorization: Basic {}",
        base64(format!("cam:{password}").as_bytes())
    );
    let seen_in_ps = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let seen_in_ps = seen_in_ps.clone();
        TestServer::start(move |_, req| {
            seen_in_ps
                .lock()
                .unwrap()
                .extend(processes_whose_cmdline_contains(password));
            let cseq = req
                .lines()
                .find_map(|l| l.strip_prefix("CSeq:"))
                .unwrap_or("0")
                .trim()
                .to_string();
            let reply = if req.starts_with("OPTIONS") {
                format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n")
            } else if !req.contains("Authorization:") {
                format!("RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm=\"cam\"\r\n\r\n")
            } else {
                format!("RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\n\r\n")
            };
            Reply::Send(reply.into_bytes())
        })
    };
    let url = format!("rtsp://cam:{password}@127.0.0.1:{}/live", server.port);
    let opts = FfmpegOptions {
        reconnect: ReconnectPolicy {
            initial_ms: 10,
            max_ms: 10,
            max_attempts: Some(1),
        },
        io_timeout_ms: 3000,
        ..FfmpegOptions::default()
    };
    let err = FfmpegSource::open(&url, &opts).unwrap_err().to_string();
    assert!(err.contains("404 Not Found"), "{err}");
    assert!(!err.contains(password), "{err}");
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("DESCRIBE") && r.lines().any(|l| l.trim() == want_auth)),
        "the credentials never reached the server: {requests:?}"
    );
    assert_eq!(
        *seen_in_ps.lock().unwrap(),
        Vec::<u32>::new(),
        "processes showing the password"
    );
}

// ---------------------------------------------------------------------------------------------
// Stopping live sources: in the reconnect backoff, while connecting, and the child is reaped.

/// Asserts that none of `pids` exists any more (not even as a zombie).
fn assert_all_reaped(pids: &[u32]) {
    for &pid in pids {
        assert_reaped(pid);
    }
}

/// A camera that sends a clip of `frames` frames to its first connection and closes every later
/// one at once (the stream "drops"), and ffmpeg options (recording the children's pids) whose
/// reconnect backoff is a minute, so a source sits in it.
fn dropping_camera(dir: &Path, frames: u32) -> (TestServer, FfmpegOptions, PathBuf) {
    let clip = tiny_ts(dir, frames);
    let server = TestServer::start(move |n, _| {
        if n == 1 {
            Reply::SendAndClose(http_ok(&clip))
        } else {
            Reply::Close
        }
    });
    let (ffmpeg, pids) = recording_ffmpeg(dir);
    let opts = FfmpegOptions {
        ffmpeg_path: ffmpeg,
        reconnect: ReconnectPolicy {
            initial_ms: 60_000,
            max_ms: 60_000,
            max_attempts: None,
        },
        ..FfmpegOptions::default()
    };
    (server, opts, pids)
}

#[test]
fn stop_reaches_a_live_source_in_its_reconnect_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (server, opts, pids) = dropping_camera(dir.path(), 5);
    let url = format!("http://127.0.0.1:{}/cam.ts", server.port);
    let src = FfmpegSource::open(&url, &opts).unwrap();
    let q = FrameQueue::spawn(Box::new(src), 2, QueuePolicy::Block).unwrap();
    for i in 0..5 {
        assert_eq!(q.recv().unwrap().unwrap().index, i);
    }
    server.wait_connections(2);
    std::thread::sleep(Duration::from_millis(300)); // the failed reconnect ends, backoff starts
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            q.stop();
        });
        assert!(q.recv().is_none(), "no frame after the stream dropped");
    });
    drop(q);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
    let pids = recorded_pids(&pids);
    assert!(pids.len() >= 2, "{pids:?}");
    assert_all_reaped(&pids);
}

// ---------------------------------------------------------------------------------------------
// ffmpeg's stderr lines are outside input: the parsers never panic and never report nonsense.

mod stderr_lines {
    use proptest::prelude::*;
    use surveil_vision::source::ffmpeg::{parse_showinfo_line, parse_stream_line, ShowinfoLine};

    /// Pieces of real stream lines, glued in any order, so the parser meets near-misses.
    fn fragments() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("Stream #0:0: ".to_string()),
            Just("Video: ".to_string()),
            Just("[Parsed_showinfo_0 @ 0x55ae] [info] ".to_string()),
            Just("config in time_base: ".to_string()),
            Just(" n: ".to_string()),
            Just(" pts: ".to_string()),
            Just(" pts_time:".to_string()),
            Just("NOPTS".to_string()),
            Just("/".to_string()),
            Just("0".to_string()),
            Just(" ".to_string()),
            Just("rawvideo (RGB[24] / 0x18424752)".to_string()),
            Just(", ".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(" fps".to_string()),
            Just("x".to_string()),
            Just("inf".to_string()),
            Just("NaN".to_string()),
            Just("-".to_string()),
            Just("1e309".to_string()),
            Just("é".to_string()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            "[0-9.]{1,12}",
            "\\PC{0,8}",
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn stream_line_parser_is_total_and_sane(line in prop_oneof![fragments(), "\\PC{0,200}"]) {
            if let Some(info) = parse_stream_line(&line) {
                prop_assert!(info.width > 0 && info.height > 0, "{line:?} -> {info:?}");
                if let Some(fps) = info.fps {
                    prop_assert!(fps.is_finite() && fps > 0.0, "{line:?} -> {info:?}");
                }
            }
        }

        #[test]
        fn showinfo_parser_is_total_and_sane(line in prop_oneof![fragments(), "\\PC{0,200}"]) {
            match parse_showinfo_line(&line) {
                Some(ShowinfoLine::TimeBase { num, den }) => {
                    prop_assert!(num > 0 && den > 0, "{line:?}");
                }
                Some(ShowinfoLine::Frame { pts_time, .. }) => {
                    prop_assert!(pts_time.is_none_or(f64::is_finite), "{line:?}");
                }
                None => {}
            }
        }

        #[test]
        fn stream_line_parser_takes_raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let line = String::from_utf8_lossy(&bytes);
            let _ = parse_showinfo_line(&line);
            if let Some(info) = parse_stream_line(&line) {
                prop_assert!(info.width > 0 && info.height > 0);
                prop_assert!(info.fps.is_none_or(|f| f.is_finite() && f > 0.0));
            }
        }
    }

    #[test]
    fn degenerate_stream_lines() {
        // Zero sizes and infinite rates are not a stream.
        assert_eq!(
            parse_stream_line("Stream #0:0: Video: rawvideo, 0x576, 10 fps"),
            None
        );
        let l = "Stream #0:0: Video: rawvideo, 64x48, inf fps";
        assert_eq!(parse_stream_line(l).unwrap().fps, None);
        let l = "Stream #0:0: Video: rawvideo, 64x48, 1e309 fps";
        assert_eq!(parse_stream_line(l).unwrap().fps, None);
    }
}

#[test]
fn stop_ends_a_live_source_that_is_still_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let (ffmpeg, pids) = recording_ffmpeg(dir.path());
    let opts = FfmpegOptions {
        ffmpeg_path: ffmpeg,
        reconnect: ReconnectPolicy {
            initial_ms: 60_000,
            max_ms: 60_000,
            max_attempts: None,
        },
        io_timeout_ms: 60_000,
        startup_timeout_ms: 60_000,
        ..FfmpegOptions::default()
    };
    // A camera that accepts and never answers (ffmpeg is connecting), then one that closes at
    // once (the first attempt fails and the source waits a minute before the next).
    for (what, settle) in [("connecting", 100u64), ("in backoff", 300)] {
        let server = TestServer::start(move |_, _| {
            if what == "connecting" {
                Reply::Hold
            } else {
                Reply::Close
            }
        });
        let url = format!("http://127.0.0.1:{}/cam.ts", server.port);
        let stop = StopSignal::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = {
            let (url, opts, stop) = (url.clone(), opts.clone(), stop.clone());
            std::thread::spawn(move || {
                let r = open_source_with_stop(&url, &opts, &stop).map(|_| ());
                tx.send(std::time::Instant::now()).unwrap();
                r
            })
        };
        server.wait_connections(1);
        std::thread::sleep(Duration::from_millis(settle));
        let stopped_at = std::time::Instant::now();
        stop.stop();
        let returned_at = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{what}: open did not return within 5 s of the stop"));
        let took = returned_at - stopped_at;
        assert!(
            took < Duration::from_secs(1),
            "{what}: open returned {took:?} after the stop"
        );
        let err = opener.join().unwrap().unwrap_err();
        assert!(
            matches!(err, VisionError::Interrupted { .. }),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        // What the stop cut short: no attempt had failed while the first was connecting; an
        // attempt that failed says why.
        let VisionError::Interrupted {
            attempts,
            last_error,
            ..
        } = &err
        else {
            unreachable!()
        };
        assert_eq!(last_error.is_some(), *attempts > 0, "{what}: {err}");
        if what == "connecting" {
            assert_eq!(*attempts, 0, "{err}");
        }
        let started = recorded_pids(&pids);
        assert!(!started.is_empty(), "{what}: ffmpeg never started");
        assert_all_reaped(&started);
    }
    // A signal stopped before the open: nothing starts.
    std::fs::remove_file(&pids).unwrap();
    let stop = StopSignal::new();
    stop.stop();
    let err = FfmpegSource::open_with_stop("http://127.0.0.1:9/x", &opts, &stop).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::Interrupted {
                attempts: 0,
                last_error: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(recorded_pids(&pids).is_empty());
}

#[test]
fn a_stop_while_connecting_says_how_many_attempts_failed_and_why() {
    // A camera that refuses every connection, stopped in its backoff after the first attempt.
    let url = format!(
        "rtsp://admin:hunter2secret@127.0.0.1:{}/stream",
        closed_port()
    );
    let opts = FfmpegOptions {
        reconnect: ReconnectPolicy {
            initial_ms: 60_000,
            max_ms: 60_000,
            max_attempts: None,
        },
        io_timeout_ms: 2000,
        ..FfmpegOptions::default()
    };
    let stop = StopSignal::new();
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            stop.stop();
        })
    };
    let err = FfmpegSource::open_with_stop(&url, &opts, &stop).unwrap_err();
    stopper.join().unwrap();
    let VisionError::Interrupted {
        attempts,
        last_error,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*attempts, 1, "{err}");
    let last = last_error.as_ref().expect("the failed attempt's error");
    assert!(last.to_string().contains("Connection refused"), "{last}");
    let text = err.to_string();
    assert!(
        text.contains("after 1 failed connection attempt(s); the last: "),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "{text}");
}

#[test]
fn a_stop_signal_ends_a_source_behind_a_queue() {
    // The way a signal handler stops a run: one StopSignal, stopped from another thread,
    // while the consumer waits in `recv` and the source waits to reconnect.
    let dir = tempfile::tempdir().unwrap();
    let (server, opts, pids) = dropping_camera(dir.path(), 3);
    let stop = StopSignal::new();
    let url = format!("http://127.0.0.1:{}/cam.ts", server.port);
    let src = open_source_with_stop(&url, &opts, &stop).unwrap();
    let q = FrameQueue::spawn(src, 4, QueuePolicy::DropOldest).unwrap();
    let mut got = 0;
    let (stopped_at, ended_at) = std::thread::scope(|s| {
        let stopper = s.spawn(|| {
            server.wait_connections(2);
            std::thread::sleep(Duration::from_millis(300));
            let at = std::time::Instant::now();
            stop.stop();
            at
        });
        while let Some(f) = q.recv() {
            f.unwrap();
            got += 1;
        }
        let ended_at = std::time::Instant::now();
        (stopper.join().unwrap(), ended_at)
    });
    assert_eq!(got, 3);
    drop(q);
    let took = ended_at - stopped_at;
    assert!(
        took < Duration::from_secs(1),
        "recv ended {took:?} after the stop"
    );
    assert_all_reaped(&recorded_pids(&pids));
}
