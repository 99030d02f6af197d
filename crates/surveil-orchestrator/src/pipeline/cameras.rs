//! The cameras of a run: one thread per camera opens its source and runs its decode +
//! detect/track stream (with its own detector), handing [`TrackedFrame`]s to the pipeline loop
//! over one small bounded channel shared by the cameras.
//!
//! The life of a camera thread: open the source (a [`StopSignal`] ends a connection attempt),
//! report it open, wait for the run to start (the model loads in between), then send frames
//! until the source ends, fails or is interrupted, and report the end. The thread returns how
//! it ended ([`CameraExit`]): the stream's counters, or, for a source that never opened, its
//! failed connection attempts and the last one's error.
//!
//! A live camera that does not answer is retried without end; it does not hold up the others:
//! once one camera is open and the others had their time ([`CameraThreads::wait_open`]'s
//! `late_after`), the run starts with the open ones and a late camera joins when it opens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use surveil_vision::{
    DarknetYolo, DetectTrackStream, Detector, FfmpegOptions, InterruptHandle, PipelineOptions,
    StopSignal, StreamStats, TrackedFrame, VisionError,
};

use crate::{OrchestratorError, Result};

/// Frames each camera may have on their way to the loop: the channel holds this many per
/// camera. A camera whose frames wait blocks; a live source's decode queue drops its oldest
/// frames meanwhile, as it does when detection is slower than the camera.
const FRAMES_IN_FLIGHT: usize = 2;

/// A camera's stream once its source is open.
pub(super) struct OpenedCamera {
    /// The source (credentials redacted).
    pub description: String,
    /// Frames the source holds, when known.
    pub total_frames: Option<u64>,
    /// The detector's class names.
    pub class_names: Vec<String>,
    /// Ends the stream from another thread.
    pub interrupt: InterruptHandle,
}

/// What a camera thread tells the loop.
pub(super) enum CameraMessage {
    /// The source is open; the thread waits for the run to start.
    Opened(Box<OpenedCamera>),
    /// The source could not be opened.
    OpenFailed(OrchestratorError),
    /// The connection attempt was stopped.
    OpenInterrupted,
    /// A frame went through detection and tracking.
    Frame {
        /// The frame.
        frame: Box<TrackedFrame>,
        /// Frames waiting in the decode queue after it.
        buffered: usize,
        /// The stream's counters so far.
        stats: StreamStats,
    },
    /// The stream ended: end of source, `max_frames`, an error, or an interrupt.
    Ended {
        /// The source or detector error that ended it.
        error: Option<OrchestratorError>,
        /// Whether it was interrupted (a stop request).
        interrupted: bool,
        /// The stream's counters at its end (decode errors are counted at the end of a file).
        stats: StreamStats,
    },
}

/// A source that never opened: why, as far as the source layer knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct NotOpened {
    /// Connection attempts of a live source that failed before the run gave up on it.
    pub attempts: u32,
    /// The error of the last of them.
    pub last_error: Option<String>,
}

/// How a camera thread ended.
#[derive(Debug, Clone)]
pub(super) enum CameraExit {
    /// Its source opened; the stream's counters when it ended.
    Streamed(StreamStats),
    /// Its source was still connecting when the run gave up on it.
    NotOpened(NotOpened),
    /// Its source could not be opened ([`CameraMessage::OpenFailed`] said why).
    OpenFailed,
}

/// What a camera thread runs.
pub(super) struct CameraSpec {
    /// Video file, URL, image folder or image.
    pub source: String,
    /// Decoding options of ffmpeg sources.
    pub ffmpeg: FfmpegOptions,
    /// The camera's own detector.
    pub detector: DarknetYolo,
    /// Stream options (tracker, `max_frames`).
    pub stream: PipelineOptions,
}

/// How the opening of the cameras ended.
pub(super) enum Opening {
    /// At least one camera is open: every camera in camera order, `None` for one still
    /// connecting (it may join later with a [`CameraMessage::Opened`]).
    Opened(Vec<Option<OpenedCamera>>),
    /// This camera's source could not be opened.
    Failed(usize, OrchestratorError),
    /// A stop was requested while sources were connecting.
    Interrupted,
}

/// The camera threads of a run and the loop's ends of their channels.
pub(super) struct CameraThreads {
    handles: Vec<JoinHandle<CameraExit>>,
    open_stops: Vec<StopSignal>,
    /// The run-start signal of each camera, taken when sent (or when the run gives up).
    go: Vec<Option<mpsc::Sender<()>>>,
    /// The interrupt handles of the streams opened so far, shared with the stop watcher.
    interrupts: Arc<Mutex<Vec<InterruptHandle>>>,
    rx: Option<Receiver<(usize, CameraMessage)>>,
}

impl CameraThreads {
    /// Start one thread per camera; each opens its source at once.
    pub fn spawn(specs: Vec<CameraSpec>) -> Result<Self> {
        let n = specs.len();
        let (tx, rx) = mpsc::sync_channel(FRAMES_IN_FLIGHT * n.max(1));
        let mut threads = Self {
            handles: Vec::with_capacity(n),
            open_stops: Vec::with_capacity(n),
            go: Vec::with_capacity(n),
            interrupts: Arc::new(Mutex::new(Vec::with_capacity(n))),
            rx: Some(rx),
        };
        for (index, spec) in specs.into_iter().enumerate() {
            let stop = StopSignal::new();
            let (go_tx, go_rx) = mpsc::channel();
            let thread_stop = stop.clone();
            let thread_tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("surveil-camera-{index}"))
                .spawn(move || camera_thread(index, spec, &thread_stop, &go_rx, &thread_tx));
            match spawned {
                Ok(handle) => {
                    threads.handles.push(handle);
                    threads.open_stops.push(stop);
                    threads.go.push(Some(go_tx));
                }
                Err(e) => {
                    threads.abort(Duration::from_secs(2));
                    return Err(OrchestratorError::Config(format!(
                        "cannot start the thread of camera {index}: {e}"
                    )));
                }
            }
        }
        Ok(threads)
    }

    /// Wait until every camera's source is open, or at least one is and `late_after` has
    /// passed (the others join when they open), or one fails, or `stop` is set.
    ///
    /// Errors: [`OrchestratorError::ThreadLost`] when the camera threads went away without a
    /// word.
    pub fn wait_open(&mut self, stop: &AtomicBool, late_after: Duration) -> Result<Opening> {
        let n = self.handles.len();
        let mut opened: Vec<Option<OpenedCamera>> = (0..n).map(|_| None).collect();
        let mut left = n;
        let since = Instant::now();
        let Some(rx) = self.rx.as_ref() else {
            return Err(OrchestratorError::ThreadLost("source".into()));
        };
        while left > 0 && (left == n || since.elapsed() < late_after) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, CameraMessage::Opened(camera))) => {
                    if let Some(slot) = opened.get_mut(i) {
                        self.add_interrupt(camera.interrupt.clone());
                        if slot.replace(*camera).is_none() {
                            left -= 1;
                        }
                    }
                }
                Ok((i, CameraMessage::OpenFailed(e))) => return Ok(Opening::Failed(i, e)),
                Ok((_, CameraMessage::OpenInterrupted)) => return Ok(Opening::Interrupted),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(Opening::Interrupted);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(OrchestratorError::ThreadLost("source".into()))
                }
            }
        }
        if left > 0 {
            tracing::warn!(
                waiting = left,
                waited_s = late_after.as_secs_f64(),
                "starting without the cameras still connecting; they join when they open"
            );
        }
        Ok(Opening::Opened(opened))
    }

    fn add_interrupt(&self, handle: InterruptHandle) {
        if let Ok(mut list) = self.interrupts.lock() {
            list.push(handle);
        }
    }

    /// Let camera `index` send its frames (once it is open); a camera that opened after
    /// [`CameraThreads::wait_open`] is registered for stop requests here.
    pub fn start_camera(&mut self, index: usize, late: Option<&OpenedCamera>) {
        if let Some(camera) = late {
            self.add_interrupt(camera.interrupt.clone());
        }
        if let Some(go) = self.go.get_mut(index).and_then(Option::take) {
            let _ = go.send(());
        }
    }

    /// The interrupt handles of the opened streams, now and as late cameras open (a stop
    /// request must reach a stream blocked waiting for a frame).
    pub fn interrupts(&self) -> Arc<Mutex<Vec<InterruptHandle>>> {
        self.interrupts.clone()
    }

    /// The next message of any camera, waiting at most `timeout`.
    pub fn recv(
        &self,
        timeout: Duration,
    ) -> std::result::Result<(usize, CameraMessage), RecvTimeoutError> {
        match self.rx.as_ref() {
            Some(rx) => rx.recv_timeout(timeout),
            None => Err(RecvTimeoutError::Disconnected),
        }
    }

    /// Give up on the cameras before the run started: stop the connections still trying,
    /// release the opened streams, and wait up to `wait` for the threads (so that ffmpeg
    /// children are killed and reaped before the run returns); threads still busy after it are
    /// left to end on their own. Returns how each thread ended, in camera order (`None` for
    /// one still busy or that ended abnormally).
    pub fn abort(mut self, wait: Duration) -> Vec<Option<CameraExit>> {
        for s in &self.open_stops {
            s.stop();
        }
        self.go.clear();
        drop(self.rx.take());
        let deadline = Instant::now() + wait;
        self.handles
            .into_iter()
            .map(|h| {
                while !h.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if h.is_finished() {
                    h.join().ok()
                } else {
                    None
                }
            })
            .collect()
    }

    /// End every camera (streams still running are interrupted, connections still trying are
    /// stopped, frames still on their way are discarded) and return how each thread ended, in
    /// camera order (`None` for a thread that ended abnormally).
    pub fn finish(mut self) -> Vec<Option<CameraExit>> {
        if let Ok(list) = self.interrupts.lock() {
            for h in list.iter() {
                h.interrupt();
            }
        }
        for s in &self.open_stops {
            s.stop();
        }
        self.go.clear();
        drop(self.rx.take());
        self.handles.into_iter().map(|h| h.join().ok()).collect()
    }
}

/// The body of a camera thread; returns how it ended: the stream's counters once the stream
/// ended, or what is known of a source that never opened.
fn camera_thread(
    index: usize,
    spec: CameraSpec,
    stop: &StopSignal,
    go: &Receiver<()>,
    tx: &SyncSender<(usize, CameraMessage)>,
) -> CameraExit {
    let detector: Box<dyn Detector> = Box::new(spec.detector);
    let opened =
        DetectTrackStream::open_with_stop(&spec.source, &spec.ffmpeg, detector, spec.stream, stop);
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(VisionError::Interrupted {
            attempts,
            last_error,
            ..
        }) => {
            let _ = tx.send((index, CameraMessage::OpenInterrupted));
            return CameraExit::NotOpened(NotOpened {
                attempts,
                last_error: last_error.map(|e| e.to_string()),
            });
        }
        Err(e) => {
            let _ = tx.send((index, CameraMessage::OpenFailed(e.into())));
            return CameraExit::OpenFailed;
        }
    };
    let camera = OpenedCamera {
        description: stream.source_description().to_string(),
        total_frames: stream.total_frames_hint(),
        class_names: stream.class_names().to_vec(),
        interrupt: stream.interrupt_handle(),
    };
    // Nothing is sent before the run starts (the model loads meanwhile); a run that does not
    // start drops its ends of the channels.
    if tx
        .send((index, CameraMessage::Opened(Box::new(camera))))
        .is_err()
        || go.recv().is_err()
    {
        return CameraExit::Streamed(stream.stats());
    }
    let mut error = None;
    while let Some(item) = stream.next() {
        match item {
            Ok(frame) => {
                let message = CameraMessage::Frame {
                    frame: Box::new(frame),
                    buffered: stream.buffered(),
                    stats: stream.stats(),
                };
                if tx.send((index, message)).is_err() {
                    // The loop ended: nothing more is wanted.
                    return CameraExit::Streamed(stream.stats());
                }
            }
            Err(e) => {
                error = Some(e.into());
                break;
            }
        }
    }
    let interrupted = stream.is_interrupted();
    let stats = stream.stats();
    let _ = tx.send((
        index,
        CameraMessage::Ended {
            error,
            interrupted,
            stats,
        },
    ));
    CameraExit::Streamed(stats)
}
