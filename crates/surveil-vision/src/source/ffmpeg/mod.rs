//! Video files and network streams decoded by an `ffmpeg` child process.
//!
//! ffmpeg writes raw RGB24 frames to a pipe; scaling and frame-rate conversion are ffmpeg
//! filters (`-vf fps=..,scale=..`), never done in Rust. Without a fixed `fps`, every decoded
//! frame is passed through once, at its own time (a variable-frame-rate file is not expanded
//! to a constant rate), so a frame's index is its position in the source. The frame size is
//! read from ffmpeg's own stream report on stderr and each frame's presentation time from the
//! `showinfo` filter's line ([`stderr`]), so no second process or connection is needed. The
//! rest of stderr is kept (warnings and errors only, credentials redacted) for error messages.
//! How the command line is built, and how a URL's credentials stay out of it, is in [`args`].
//!
//! Files end at EOF. Live sources (RTSP, HTTP, ...) reconnect with exponential backoff when the
//! stream drops or cannot be opened, and log each attempt. A [`StopSignal`] (or the source's
//! interrupt handle) ends a pending connection, the backoff and a blocked read at once. The
//! child is killed and reaped on every way out: end of stream, error, stop, and drop.

pub mod args;
pub mod stderr;
pub mod stop;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use args::url_scheme;
pub use stderr::{parse_showinfo_line, parse_stream_line, ShowinfoLine, StreamInfo};
pub use stop::StopSignal;

use self::args::{invocation, scheme_is_live, FrameSync, FPS_MODE_UNKNOWN};
use self::stderr::{read_stderr, StderrEvent, StderrLog};
use self::stop::StopHook;
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
    /// Output frame rate (ffmpeg `fps` filter: a constant rate, frames dropped or repeated to
    /// fit); `None` passes every decoded frame through once, at its own time.
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

/// How long to wait for a frame's `showinfo` line once the frame itself has been read. ffmpeg
/// prints the line before it writes the frame, so it is normally there already.
const FRAME_TIME_WAIT: Duration = Duration::from_secs(2);

/// After a kill, how long a stop waits to reap the child itself (the reading thread or drop
/// reaps it otherwise).
const REAP_WAIT: Duration = Duration::from_millis(500);

/// The running child, shared with the stop hook.
type ChildSlot = Arc<Mutex<Option<Child>>>;

/// Kills the child in `slot` (if any) and reaps it when it exits within [`REAP_WAIT`]. The
/// `Child` stays in the slot: a later `wait` returns the status it recorded.
fn kill_child(slot: &Mutex<Option<Child>>) {
    let Ok(mut guard) = slot.lock() else {
        return;
    };
    let Some(child) = guard.as_mut() else {
        return;
    };
    // Fails only when the child was already reaped.
    let _ = child.kill();
    let until = Instant::now() + REAP_WAIT;
    while Instant::now() < until {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Ok(Some(_)) | Err(_) => break,
        }
    }
}

/// One running ffmpeg process.
struct Session {
    stdout: ChildStdout,
    stderr_thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<StderrLog>>,
    events: mpsc::Receiver<StderrEvent>,
    /// Frame times received before they were asked for.
    times: VecDeque<(u64, Option<Duration>)>,
    /// Set once a frame had no `showinfo` line: later frames do not wait for one.
    times_lost: bool,
    /// The frame of this run at which ffmpeg's current filter graph started.
    graph_start: u64,
    info: StreamInfo,
    pid: u32,
    frames: u64,
}

impl Session {
    /// The time of frame `n` (from 0) of this run, from its `showinfo` line; `None` when the
    /// line is missing or carries no usable time.
    fn frame_time(&mut self, n: u64) -> Option<Duration> {
        loop {
            let (k, time) = match self.times.pop_front() {
                Some(t) => t,
                None => {
                    let wait = if self.times_lost {
                        Duration::ZERO
                    } else {
                        FRAME_TIME_WAIT
                    };
                    match self.events.recv_timeout(wait) {
                        Ok(StderrEvent::Frame { n, time }) => (n, time),
                        Ok(StderrEvent::Stream(_)) => continue,
                        Err(_) => {
                            self.times_lost = true;
                            return None;
                        }
                    }
                }
            };
            let want = n.saturating_sub(self.graph_start);
            if k == want {
                return time;
            }
            if k == 0 {
                // ffmpeg rebuilt its filters (the stream changed size or format): showinfo
                // counts from 0 again.
                self.graph_start = n;
                return time;
            }
            if k < want {
                // The line of a frame that already went without it.
                continue;
            }
            // The line of frame n never came; keep this one for its own frame.
            self.times.push_front((k, time));
            return None;
        }
    }
}

/// A video file or stream decoded by ffmpeg. See the module docs.
pub struct FfmpegSource {
    input: String,
    display: String,
    secrets: Vec<String>,
    options: FfmpegOptions,
    live: bool,
    stop: StopSignal,
    child: ChildSlot,
    /// Kills `child` on a stop; registered (weakly) with `stop`, so it lives as long as the
    /// source.
    _stop_hook: Arc<StopHook>,
    /// `-vsync` instead of `-fps_mode` (an ffmpeg older than 5.1).
    use_vsync: AtomicBool,
    session: Option<Session>,
    finished: bool,
    next_index: u64,
    opened_at: Instant,
    fps: Option<f64>,
    reconnects: u64,
    /// Connection attempts that failed since the last connection (or the start).
    connect_failures: u32,
    /// The error of the last of them.
    last_connect_error: Option<VisionError>,
    /// Error lines ffmpeg printed while decoding a file, over its finished runs.
    decode_errors: u64,
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
    /// Live sources retry per `options.reconnect`; files fail at once. Same as
    /// [`open_with_stop`](Self::open_with_stop) with a signal of its own.
    pub fn open(input: &str, options: &FfmpegOptions) -> Result<Self> {
        Self::open_with_stop(input, options, &StopSignal::new())
    }

    /// Like [`open`](Self::open), and `stop` ends it: a stop while a live source is still
    /// connecting (or waiting to retry) returns [`VisionError::Interrupted`] at once, with the
    /// ffmpeg child killed and reaped. The source keeps `stop` as its interrupt: a later stop
    /// ends `next_frame` (`Ok(None)`) like [`FrameSource::interrupt_handle`].
    ///
    /// Errors: missing file, invalid options ([`VisionError::InvalidOption`]), ffmpeg missing
    /// ([`VisionError::FfmpegSpawn`]), ffmpeg failing on a file ([`VisionError::Ffmpeg`]), a
    /// live source failing `max_attempts` times ([`VisionError::SourceUnavailable`]), a stop
    /// ([`VisionError::Interrupted`], with the connection attempts of a live source that had
    /// failed by then and the last one's error).
    pub fn open_with_stop(input: &str, options: &FfmpegOptions, stop: &StopSignal) -> Result<Self> {
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
        // The arguments are checked once here (a URL with a line break is refused).
        invocation(input, options, FrameSync::FpsMode)?;
        let child: ChildSlot = Arc::new(Mutex::new(None));
        let stop_hook: Arc<StopHook> = {
            let child = Arc::clone(&child);
            Arc::new(move || kill_child(&child))
        };
        if !stop.add_hook(&stop_hook) {
            return Err(VisionError::Interrupted {
                input: display,
                attempts: 0,
                last_error: None,
            });
        }
        let mut source = Self {
            input: input.to_string(),
            display: display.clone(),
            secrets,
            options: options.clone(),
            live,
            stop: stop.clone(),
            child,
            _stop_hook: stop_hook,
            use_vsync: AtomicBool::new(false),
            session: None,
            finished: false,
            next_index: 0,
            opened_at: Instant::now(),
            fps: options.fps,
            reconnects: 0,
            connect_failures: 0,
            last_connect_error: None,
            decode_errors: 0,
        };
        // On every early return below, dropping `source` kills and reaps its child.
        let opened = if live {
            source.connect_with_backoff()?
        } else {
            match source.spawn_session() {
                Ok(s) => source.session = Some(s),
                Err(_) if source.stop.is_stopped() => return Err(source.interrupted()),
                Err(e) => return Err(e),
            }
            true
        };
        if !opened || source.stop.is_stopped() {
            return Err(source.interrupted());
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

    /// Error lines ffmpeg printed while decoding a file (damaged or truncated input), counted
    /// once ffmpeg reached the end of the file; 0 for live sources. Same as
    /// [`FrameSource::decode_errors`].
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// The error of a stop before the stream opened: with the failed connection attempts so
    /// far and the last one's error.
    fn interrupted(&mut self) -> VisionError {
        VisionError::Interrupted {
            input: self.display.clone(),
            attempts: self.connect_failures,
            last_error: self.last_connect_error.take().map(Box::new),
        }
    }

    /// The signal that stops this source (the one given to
    /// [`open_with_stop`](Self::open_with_stop), or its own).
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    fn frame_sync(&self) -> FrameSync {
        if self.use_vsync.load(Ordering::SeqCst) {
            FrameSync::Vsync
        } else {
            FrameSync::FpsMode
        }
    }

    /// One ffmpeg run up to its stream report; on an ffmpeg older than 5.1 (no `-fps_mode`)
    /// the run is repeated once with `-vsync`.
    fn spawn_session(&self) -> Result<Session> {
        match self.spawn_session_with(self.frame_sync()) {
            Err(VisionError::Ffmpeg { stderr, .. })
                if stderr.contains(FPS_MODE_UNKNOWN) && !self.stop.is_stopped() =>
            {
                tracing::debug!(source = %self.display, "ffmpeg has no -fps_mode; using -vsync");
                self.use_vsync.store(true, Ordering::SeqCst);
                self.spawn_session_with(FrameSync::Vsync)
            }
            other => other,
        }
    }

    fn spawn_session_with(&self, sync: FrameSync) -> Result<Session> {
        let inv = invocation(&self.input, &self.options, sync)?;
        tracing::debug!(
            ffmpeg = %self.options.ffmpeg_path.display(),
            args = %redact_text(&inv.args.join(" "), &self.secrets),
            input_on_stdin = inv.stdin.is_some(),
            "starting ffmpeg"
        );
        let mut child = Command::new(&self.options.ffmpeg_path)
            .args(&inv.args)
            .stdin(if inv.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
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
        if let (Some(script), Some(mut pipe)) = (&inv.stdin, child.stdin.take()) {
            // A few hundred bytes into an empty pipe: does not block. A failed write means
            // ffmpeg already exited, which its stderr explains.
            if let Err(e) = pipe.write_all(script.as_bytes()) {
                tracing::debug!(source = %self.display, error = %e, "writing ffmpeg's input script failed");
            }
            drop(pipe);
        }
        let log = Arc::new(Mutex::new(StderrLog::default()));
        let (events_tx, events) = mpsc::channel();
        let stderr_thread = {
            let log = Arc::clone(&log);
            let secrets = self.secrets.clone();
            let label = self.display.clone();
            std::thread::Builder::new()
                .name("ffmpeg-stderr".to_string())
                .spawn(move || read_stderr(stderr, log, secrets, label, events_tx))
        };
        let stderr_thread = match stderr_thread {
            Ok(t) => t,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VisionError::io("cannot start thread for", "ffmpeg stderr")(
                    e,
                ));
            }
        };
        if let Ok(mut guard) = self.child.lock() {
            *guard = Some(child);
        }
        // A stop between spawning and storing the child found nothing to kill.
        if self.stop.is_stopped() {
            kill_child(&self.child);
        }
        let mut session = Session {
            stdout,
            stderr_thread: Some(stderr_thread),
            log,
            events,
            times: VecDeque::new(),
            times_lost: false,
            graph_start: 0,
            info: StreamInfo {
                width: 0,
                height: 0,
                fps: None,
            },
            pid,
            frames: 0,
        };
        let timeout = Duration::from_millis(self.options.startup_timeout_ms);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match session.events.recv_timeout(left) {
                Ok(StderrEvent::Stream(info)) => {
                    session.info = info;
                    return Ok(session);
                }
                // showinfo reports the first frame before ffmpeg reports its output stream.
                Ok(StderrEvent::Frame { n, time }) => session.times.push_back((n, time)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let (_, tail) = self.end_session(session, true);
                    return Err(self.ffmpeg_error(
                        &format!("no video stream reported within {} ms", timeout.as_millis()),
                        tail,
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let (status, tail) = self.end_session(session, false);
                    let what = match status {
                        Some(s) => format!("ffmpeg exited ({s}) before producing a video stream"),
                        None => "ffmpeg ended before producing a video stream".to_string(),
                    };
                    return Err(self.ffmpeg_error(&what, tail));
                }
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
        let child = self.child.lock().ok().and_then(|mut g| g.take());
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

    /// Connects a live source, retrying with backoff. `Ok(false)` when stopped.
    fn connect_with_backoff(&mut self) -> Result<bool> {
        let policy = self.options.reconnect.clone();
        let mut attempt = 0u32;
        loop {
            if self.stop.is_stopped() {
                return Ok(false);
            }
            attempt += 1;
            match self.spawn_session() {
                Ok(s) => {
                    if attempt > 1 || self.reconnects > 0 {
                        tracing::info!(source = %self.display, attempt, "live source connected");
                    }
                    self.connect_failures = 0;
                    self.last_connect_error = None;
                    self.session = Some(s);
                    return Ok(true);
                }
                // A missing binary will not appear by waiting.
                Err(e @ VisionError::FfmpegSpawn { .. }) => return Err(e),
                Err(e) => {
                    if self.stop.is_stopped() {
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
                    self.connect_failures = attempt;
                    self.last_connect_error = Some(e);
                    if self.stop.wait_timeout(delay) {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// The time of a frame: a file's frame keeps its presentation time (from `showinfo`,
    /// relative to the start of the file); without one, `index / fps`. A live frame gets the
    /// wall-clock time since the source was opened (stream times restart at a reconnect).
    fn timestamp(&self, index: u64, source_time: Option<Duration>) -> Duration {
        match (self.live, source_time, self.fps) {
            (false, Some(t), _) => t,
            (false, None, Some(fps)) => Duration::from_secs_f64(index as f64 / fps),
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

    fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.stop.is_stopped() {
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
                    let n = session.frames;
                    session.frames += 1;
                    let source_time = session.frame_time(n);
                    let index = self.next_index;
                    self.next_index += 1;
                    let ts = self.timestamp(index, source_time);
                    return Frame::new(index, ts, w, h, buf).map(Some);
                }
                Ok(Read1::Eof(partial)) => {
                    let Some(session) = self.session.take() else {
                        continue;
                    };
                    let frames = session.frames;
                    let errors = session.log.lock().map(|l| l.errors).unwrap_or(0);
                    let (status, tail) = self.end_session(session, false);
                    if self.stop.is_stopped() {
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
                    self.decode_errors += errors;
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
                    if self.stop.is_stopped() {
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
        Some(self.stop.interrupt_handle())
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let pid = s.pid;
            let (status, _) = self.end_session(s, true);
            tracing::debug!(source = %self.display, pid, status = ?status, "ffmpeg child reaped");
        }
        // A child without a session (none today; kept as a guarantee) is reaped too.
        if let Some(mut child) = self.child.lock().ok().and_then(|mut g| g.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
