//! Video files and network streams decoded by an `ffmpeg` child process.
//!
//! ffmpeg writes raw RGB24 frames to a pipe; scaling and frame-rate conversion are ffmpeg
//! filters (`-vf fps=..,scale=..`), never done in Rust. The frame size is read from ffmpeg's own
//! stream report on stderr (the `Output #0 ... Stream #0:0: Video: rawvideo ... WxH` line),
//! so no second process or second connection is needed. The rest of stderr is kept (warnings
//! and errors only, credentials redacted) for error messages.
//!
//! Files end at EOF. Live sources (RTSP, HTTP, ...) reconnect with exponential backoff when the
//! stream drops or cannot be opened, and log each attempt. The child is killed and reaped when
//! the source is dropped, so no zombie ffmpeg is left behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::redact::{redact_text, url_secrets};
use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource, InterruptHandle};

/// Reconnection of live sources: delays `initial_ms`, `2 * initial_ms`, ... capped at `max_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectPolicy {
    /// First delay, milliseconds.
    pub initial_ms: u64,
    /// Largest delay, milliseconds.
    pub max_ms: u64,
    /// Consecutive failed attempts before giving up; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        Duration::from_millis(self.initial_ms.saturating_mul(factor).min(self.max_ms))
    }
}

/// How to run ffmpeg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FfmpegOptions {
    /// The ffmpeg binary (a name looked up in `PATH`, or a path).
    pub ffmpeg_path: PathBuf,
    /// Output width (ffmpeg `scale`); with only one of width/height the other keeps the aspect.
    pub width: Option<u32>,
    /// Output height (ffmpeg `scale`).
    pub height: Option<u32>,
    /// Output frame rate (ffmpeg `fps` filter); `None` keeps every decoded frame.
    pub fps: Option<f64>,
    /// Whether the input is live; `None` decides by the URL scheme (rtsp, rtmp, http, udp, ...
    /// are live, plain paths are files).
    pub live: Option<bool>,
    /// Reconnection of live sources.
    pub reconnect: ReconnectPolicy,
    /// Network read/connect timeout, milliseconds (ffmpeg `-timeout` / `-rw_timeout`).
    pub io_timeout_ms: u64,
    /// How long to wait for ffmpeg to report the video stream, milliseconds.
    pub startup_timeout_ms: u64,
    /// RTSP transport (`tcp` or `udp`).
    pub rtsp_transport: String,
}

impl Default for FfmpegOptions {
    fn default() -> Self {
        Self {
            ffmpeg_path: PathBuf::from("ffmpeg"),
            width: None,
            height: None,
            fps: None,
            live: None,
            reconnect: ReconnectPolicy::default(),
            io_timeout_ms: 10_000,
            startup_timeout_ms: 30_000,
            rtsp_transport: "tcp".to_string(),
        }
    }
}

/// The URL scheme of an input (`rtsp`, `http`, ...), or `None` for a plain path.
pub fn url_scheme(input: &str) -> Option<&str> {
    let (scheme, _) = input.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
    .then_some(scheme)
}

/// Whether a scheme is a live stream by default.
fn scheme_is_live(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "rtsp" | "rtsps" | "rtmp" | "rtmps" | "http" | "https" | "udp" | "rtp" | "srt" | "tcp"
    )
}

/// What ffmpeg reported about its output stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamInfo {
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Output frame rate, when reported.
    pub fps: Option<f64>,
}

/// Parses the output stream line of ffmpeg's report, e.g.
/// `Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, ...), 416x416, q=2-31, ..., 5 fps, 5 tbn`.
pub fn parse_stream_line(line: &str) -> Option<StreamInfo> {
    let video = &line[line.find("Video:")? + 6..];
    // Split on commas outside parentheses.
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in video.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                fields.push(video[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(video[start..].trim());
    let mut size = None;
    let mut fps = None;
    for f in fields {
        let first = f.split_whitespace().next().unwrap_or("");
        if size.is_none() {
            if let Some((w, h)) = first.split_once('x') {
                if let (Ok(w), Ok(h)) = (w.parse::<u32>(), h.parse::<u32>()) {
                    size = Some((w, h));
                    continue;
                }
            }
        }
        if let Some(v) = f.strip_suffix(" fps") {
            fps = v.trim().parse::<f64>().ok().filter(|v| *v > 0.0);
        }
    }
    let (width, height) = size?;
    Some(StreamInfo { width, height, fps })
}

/// Warning and error lines of one ffmpeg run, redacted, the last few kept.
#[derive(Debug, Default)]
struct StderrLog {
    lines: VecDeque<String>,
    errors: u64,
}

const STDERR_KEEP: usize = 12;

impl StderrLog {
    fn tail(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// State shared with the interrupt handle.
#[derive(Debug, Default)]
struct Shared {
    stopped: AtomicBool,
    child: Mutex<Option<Child>>,
}

impl Shared {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut guard) = self.child.lock() {
            if let Some(child) = guard.as_mut() {
                // Already exited is fine.
                let _ = child.kill();
            }
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// One running ffmpeg process.
struct Session {
    stdout: ChildStdout,
    stderr_thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<StderrLog>>,
    info: StreamInfo,
    pid: u32,
    frames: u64,
}

/// A video file or stream decoded by ffmpeg. See the module docs.
pub struct FfmpegSource {
    input: String,
    display: String,
    secrets: Vec<String>,
    options: FfmpegOptions,
    live: bool,
    shared: Arc<Shared>,
    session: Option<Session>,
    finished: bool,
    next_index: u64,
    opened_at: Instant,
    fps: Option<f64>,
    reconnects: u64,
}

impl std::fmt::Debug for FfmpegSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfmpegSource")
            .field("input", &self.display)
            .field("live", &self.live)
            .field("pid", &self.pid())
            .finish()
    }
}

impl FfmpegSource {
    /// Starts ffmpeg on `input` (a path or URL) and waits until it reports the video stream.
    /// Live sources retry per `options.reconnect`; files fail at once.
    pub fn open(input: &str, options: &FfmpegOptions) -> Result<Self> {
        let secrets = url_secrets(input);
        let display = redact_text(input, &secrets);
        let scheme = url_scheme(input);
        let live = options
            .live
            .unwrap_or_else(|| scheme.is_some_and(scheme_is_live));
        if scheme.is_none() && !Path::new(input).exists() {
            return Err(VisionError::Io {
                action: "cannot open video",
                path: PathBuf::from(input),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        if let Some(fps) = options.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(VisionError::InvalidOption {
                    name: "fps",
                    value: fps.to_string(),
                    message: "must be > 0".to_string(),
                });
            }
        }
        if options.width == Some(0) || options.height == Some(0) {
            return Err(VisionError::InvalidOption {
                name: "width/height",
                value: format!("{:?}x{:?}", options.width, options.height),
                message: "must be > 0".to_string(),
            });
        }
        let mut source = Self {
            input: input.to_string(),
            display,
            secrets,
            options: options.clone(),
            live,
            shared: Arc::new(Shared::default()),
            session: None,
            finished: false,
            next_index: 0,
            opened_at: Instant::now(),
            fps: options.fps,
            reconnects: 0,
        };
        if live {
            source.connect_with_backoff()?;
        } else {
            source.session = Some(source.spawn_session()?);
        }
        if let Some(s) = &source.session {
            source.fps = options.fps.or(s.info.fps);
            tracing::info!(
                source = %source.display,
                live,
                width = s.info.width,
                height = s.info.height,
                fps = ?source.fps,
                pid = s.pid,
                "ffmpeg source opened"
            );
        }
        Ok(source)
    }

    /// Pid of the running ffmpeg child, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.session.as_ref().map(|s| s.pid)
    }

    /// Size and rate of the current stream.
    pub fn stream_info(&self) -> Option<StreamInfo> {
        self.session.as_ref().map(|s| s.info)
    }

    /// How many times a live source reconnected after its stream dropped.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "level+info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let timeout_us = (self.options.io_timeout_ms.saturating_mul(1000)).to_string();
        match url_scheme(&self.input).map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == "rtsp" || s == "rtsps" => {
                a.extend([
                    "-rtsp_transport".into(),
                    self.options.rtsp_transport.clone(),
                    "-timeout".into(),
                    timeout_us,
                ]);
            }
            Some(_) => a.extend(["-rw_timeout".into(), timeout_us]),
            None => {}
        }
        a.extend([
            "-i".into(),
            self.input.clone(),
            "-map".into(),
            "0:v:0".into(),
        ]);
        let mut filters = Vec::new();
        if let Some(fps) = self.options.fps {
            filters.push(format!("fps={fps}"));
        }
        match (self.options.width, self.options.height) {
            (None, None) => {}
            (w, h) => filters.push(format!(
                "scale={}:{}",
                w.map_or("-2".to_string(), |v| v.to_string()),
                h.map_or("-2".to_string(), |v| v.to_string())
            )),
        }
        if !filters.is_empty() {
            a.extend(["-vf".into(), filters.join(",")]);
        }
        a.extend(
            [
                "-an", "-sn", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a
    }

    fn spawn_session(&self) -> Result<Session> {
        let args = self.args();
        tracing::debug!(
            ffmpeg = %self.options.ffmpeg_path.display(),
            args = %redact_text(&args.join(" "), &self.secrets),
            "starting ffmpeg"
        );
        let mut child = Command::new(&self.options.ffmpeg_path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VisionError::FfmpegSpawn {
                path: self.options.ffmpeg_path.clone(),
                source,
            })?;
        let pid = child.id();
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.ffmpeg_error("ffmpeg started without pipes", String::new()));
            }
        };
        let log = Arc::new(Mutex::new(StderrLog::default()));
        let (info_tx, info_rx) = mpsc::channel();
        let stderr_thread = {
            let log = Arc::clone(&log);
            let secrets = self.secrets.clone();
            let label = self.display.clone();
            std::thread::Builder::new()
                .name("ffmpeg-stderr".to_string())
                .spawn(move || read_stderr(stderr, log, secrets, label, info_tx))
                .map_err(VisionError::io("cannot start thread for", "ffmpeg stderr"))?
        };
        if let Ok(mut guard) = self.shared.child.lock() {
            *guard = Some(child);
        }
        if self.shared.is_stopped() {
            self.shared.stop();
        }
        let mut session = Session {
            stdout,
            stderr_thread: Some(stderr_thread),
            log,
            info: StreamInfo {
                width: 0,
                height: 0,
                fps: None,
            },
            pid,
            frames: 0,
        };
        let timeout = Duration::from_millis(self.options.startup_timeout_ms);
        match info_rx.recv_timeout(timeout) {
            Ok(info) if info.width > 0 && info.height > 0 => {
                session.info = info;
                Ok(session)
            }
            Ok(info) => {
                let (_, tail) = self.end_session(session, true);
                Err(self.ffmpeg_error(
                    &format!("zero-size video stream {}x{}", info.width, info.height),
                    tail,
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let (_, tail) = self.end_session(session, true);
                Err(self.ffmpeg_error(
                    &format!("no video stream reported within {} ms", timeout.as_millis()),
                    tail,
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let (status, tail) = self.end_session(session, false);
                let what = match status {
                    Some(s) => format!("ffmpeg exited ({s}) before producing a video stream"),
                    None => "ffmpeg ended before producing a video stream".to_string(),
                };
                Err(self.ffmpeg_error(&what, tail))
            }
        }
    }

    fn ffmpeg_error(&self, message: &str, stderr: String) -> VisionError {
        VisionError::Ffmpeg {
            input: self.display.clone(),
            message: message.to_string(),
            stderr,
        }
    }

    /// Stops (if `kill`) and reaps the child of `session`, joins its stderr reader, and returns
    /// the exit status and the stderr tail.
    fn end_session(&self, session: Session, kill: bool) -> (Option<ExitStatus>, String) {
        let Session {
            stdout,
            mut stderr_thread,
            log,
            ..
        } = session;
        drop(stdout);
        let child = self.shared.child.lock().ok().and_then(|mut g| g.take());
        let status = child.and_then(|mut c| {
            if kill {
                let _ = c.kill();
            }
            c.wait().ok()
        });
        if let Some(t) = stderr_thread.take() {
            let _ = t.join();
        }
        let tail = log.lock().map(|l| l.tail()).unwrap_or_default();
        (status, tail)
    }

    /// Connects a live source, retrying with backoff. `Ok(false)` when interrupted.
    fn connect_with_backoff(&mut self) -> Result<bool> {
        let policy = self.options.reconnect.clone();
        let mut attempt = 0u32;
        loop {
            if self.shared.is_stopped() {
                return Ok(false);
            }
            attempt += 1;
            match self.spawn_session() {
                Ok(s) => {
                    if attempt > 1 || self.reconnects > 0 {
                        tracing::info!(source = %self.display, attempt, "live source connected");
                    }
                    self.session = Some(s);
                    return Ok(true);
                }
                // A missing binary will not appear by waiting.
                Err(e @ VisionError::FfmpegSpawn { .. }) => return Err(e),
                Err(e) => {
                    if self.shared.is_stopped() {
                        return Ok(false);
                    }
                    if policy.max_attempts.is_some_and(|m| attempt >= m) {
                        tracing::error!(source = %self.display, attempts = attempt, error = %e, "giving up on live source");
                        return Err(VisionError::SourceUnavailable {
                            input: self.display.clone(),
                            attempts: attempt,
                            last_error: Box::new(e),
                        });
                    }
                    let delay = policy.delay(attempt);
                    tracing::warn!(
                        source = %self.display,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %e,
                        "cannot open live source; retrying"
                    );
                    self.sleep_interruptible(delay);
                }
            }
        }
    }

    fn sleep_interruptible(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shared.is_stopped() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    fn timestamp(&self, index: u64) -> Duration {
        match (self.live, self.fps) {
            (false, Some(fps)) => Duration::from_secs_f64(index as f64 / fps),
            _ => self.opened_at.elapsed(),
        }
    }
}

/// Result of reading one frame from the pipe.
enum Read1 {
    Frame,
    /// End of stream after this many bytes of an incomplete frame.
    Eof(usize),
}

fn read_frame(stdout: &mut ChildStdout, buf: &mut [u8]) -> std::io::Result<Read1> {
    let mut filled = 0;
    while filled < buf.len() {
        match stdout.read(&mut buf[filled..]) {
            Ok(0) => return Ok(Read1::Eof(filled)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Read1::Frame)
}

impl FrameSource for FfmpegSource {
    fn describe(&self) -> String {
        self.display.clone()
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn fps(&self) -> Option<f64> {
        self.fps
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.shared.is_stopped() {
                if let Some(s) = self.session.take() {
                    self.end_session(s, true);
                }
                return Ok(None);
            }
            if self.session.is_none() {
                if self.finished || !self.live {
                    return Ok(None);
                }
                if !self.connect_with_backoff()? {
                    return Ok(None);
                }
                self.reconnects += 1;
            }
            let Some(session) = self.session.as_mut() else {
                continue;
            };
            let (w, h) = (session.info.width, session.info.height);
            let mut buf = vec![0u8; w as usize * h as usize * 3];
            let read = read_frame(&mut session.stdout, &mut buf);
            match read {
                Ok(Read1::Frame) => {
                    session.frames += 1;
                    let index = self.next_index;
                    self.next_index += 1;
                    let ts = self.timestamp(index);
                    return Frame::new(index, ts, w, h, buf).map(Some);
                }
                Ok(Read1::Eof(partial)) => {
                    let Some(session) = self.session.take() else {
                        continue;
                    };
                    let frames = session.frames;
                    let errors = session.log.lock().map(|l| l.errors).unwrap_or(0);
                    let (status, tail) = self.end_session(session, false);
                    if self.shared.is_stopped() {
                        return Ok(None);
                    }
                    if partial > 0 {
                        tracing::warn!(source = %self.display, bytes = partial, "incomplete last frame dropped");
                    }
                    let ok = status.is_some_and(|s| s.success());
                    if self.live {
                        tracing::warn!(
                            source = %self.display,
                            frames,
                            status = ?status,
                            last_error = %tail.lines().last().unwrap_or(""),
                            "live stream dropped; reconnecting"
                        );
                        continue;
                    }
                    self.finished = true;
                    if !ok {
                        let what = match status {
                            Some(s) => format!("ffmpeg exited ({s}) after {frames} frames"),
                            None => format!("ffmpeg ended abnormally after {frames} frames"),
                        };
                        return Err(self.ffmpeg_error(&what, tail));
                    }
                    if errors > 0 {
                        tracing::warn!(
                            source = %self.display,
                            frames,
                            errors,
                            last = %tail.lines().last().unwrap_or(""),
                            "ffmpeg reported decode errors (damaged or truncated input); ended early"
                        );
                    } else {
                        tracing::debug!(source = %self.display, frames, "end of file");
                    }
                    return Ok(None);
                }
                Err(e) => {
                    if let Some(s) = self.session.take() {
                        self.end_session(s, true);
                    }
                    if self.shared.is_stopped() {
                        return Ok(None);
                    }
                    self.finished = !self.live;
                    if self.live {
                        tracing::warn!(source = %self.display, error = %e, "pipe read failed; reconnecting");
                        continue;
                    }
                    return Err(
                        self.ffmpeg_error(&format!("reading frames failed: {e}"), String::new())
                    );
                }
            }
        }
    }

    fn interrupt_handle(&self) -> Option<InterruptHandle> {
        let shared = Arc::clone(&self.shared);
        Some(InterruptHandle::new(move || shared.stop()))
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let pid = s.pid;
            let (status, _) = self.end_session(s, true);
            tracing::debug!(source = %self.display, pid, status = ?status, "ffmpeg child reaped");
        }
    }
}

/// Reads ffmpeg's stderr line by line: reports the output stream, keeps warnings/errors.
fn read_stderr(
    stderr: std::process::ChildStderr,
    log: Arc<Mutex<StderrLog>>,
    secrets: Vec<String>,
    label: String,
    info_tx: mpsc::Sender<StreamInfo>,
) {
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    let mut in_output = false;
    let mut sent = false;
    let mut level = "info";
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&raw);
        for part in text.split('\r') {
            let line = part.trim_end();
            if line.is_empty() {
                continue;
            }
            let line = redact_text(line, &secrets);
            if let Some(l) = [
                "[fatal]",
                "[error]",
                "[warning]",
                "[info]",
                "[verbose]",
                "[debug]",
            ]
            .iter()
            .find(|t| line.contains(*t))
            {
                level = &l[1..l.len() - 1];
            }
            if level == "info" {
                if line.contains("Output #0") {
                    in_output = true;
                } else if in_output && !sent && line.contains("Stream #") {
                    if let Some(info) = parse_stream_line(&line) {
                        sent = info_tx.send(info).is_ok();
                    }
                }
                continue;
            }
            if level == "fatal" || level == "error" || level == "warning" {
                if level != "warning" {
                    tracing::debug!(source = %label, "ffmpeg: {line}");
                }
                if let Ok(mut l) = log.lock() {
                    if level != "warning" {
                        l.errors += 1;
                    }
                    if l.lines.len() == STDERR_KEEP {
                        l.lines.pop_front();
                    }
                    l.lines.push_back(line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_stream_line() {
        let l = "[info]   Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(pc, gbr/unknown/unknown, progressive), 416x416, q=2-31, 20766 kb/s, 5 fps, 5 tbn";
        assert_eq!(
            parse_stream_line(l),
            Some(StreamInfo {
                width: 416,
                height: 416,
                fps: Some(5.0)
            })
        );
        let l = "Stream #0:0: Video: rawvideo, rgb24, 768x576 [SAR 1:1 DAR 4:3], q=2-31, 29.97 fps";
        let i = parse_stream_line(l).unwrap();
        assert_eq!((i.width, i.height, i.fps), (768, 576, Some(29.97)));
        assert_eq!(parse_stream_line("Stream #0:1: Audio: aac, 44100 Hz"), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = ReconnectPolicy {
            initial_ms: 100,
            max_ms: 1000,
            max_attempts: None,
        };
        let d: Vec<u64> = (1..7).map(|a| p.delay(a).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(200).as_millis(), 1000);
    }

    #[test]
    fn live_by_scheme() {
        assert_eq!(url_scheme("rtsp://h/x"), Some("rtsp"));
        assert_eq!(url_scheme("/a/b.mp4"), None);
        assert_eq!(url_scheme("C:/x"), None);
        assert!(scheme_is_live("RTSP") && scheme_is_live("https") && !scheme_is_live("file"));
    }
}
