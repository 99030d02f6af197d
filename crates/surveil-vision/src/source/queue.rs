//! A bounded frame queue between a decoding thread and the analysis loop.
//!
//! The decoding thread pulls frames from a [`FrameSource`] and pushes them into a queue of at
//! most `capacity` frames. When the queue is full the policy decides:
//! [`QueuePolicy::DropOldest`] discards the oldest queued frame (live cameras: analysis never
//! falls behind real time), [`QueuePolicy::Block`] waits (files: every frame is analysed).
//! Dropped frames are counted and reported.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VisionError};
use crate::frame::{Frame, FrameSource, InterruptHandle};

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuePolicy {
    /// Discard the oldest queued frame (default for live sources).
    DropOldest,
    /// Wait until the consumer takes a frame (default for files).
    Block,
}

impl QueuePolicy {
    /// The default policy for a source: `DropOldest` when live, else `Block`.
    pub fn default_for(live: bool) -> Self {
        if live {
            Self::DropOldest
        } else {
            Self::Block
        }
    }
}

/// Counters of a queue, readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Frames the source produced.
    pub decoded: u64,
    /// Frames discarded by `DropOldest`.
    pub dropped: u64,
    /// Frames the source could not decode and skipped ([`FrameSource::skipped_frames`]).
    pub skipped: u64,
    /// Decode errors the source met ([`FrameSource::decode_errors`]).
    pub decode_errors: u64,
    /// Time the decoding thread spent inside `next_frame`.
    pub decode_time: Duration,
}

#[derive(Default)]
struct State {
    items: VecDeque<Frame>,
    /// The source's final error, delivered after the queued frames.
    error: Option<VisionError>,
    finished: bool,
    closed: bool,
    /// Set by an abort handle: `recv` returns `None` at once, queued frames are discarded.
    aborted: bool,
    stats: QueueStats,
}

struct Inner {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
    policy: QueuePolicy,
}

/// The consuming end of a decoding thread. Dropping it stops the thread (and the source).
pub struct FrameQueue {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
    interrupt: Option<InterruptHandle>,
    description: String,
    live: bool,
    fps: Option<f64>,
}

impl std::fmt::Debug for FrameQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameQueue")
            .field("source", &self.description)
            .field("capacity", &self.inner.capacity)
            .field("policy", &self.inner.policy)
            .finish()
    }
}

impl FrameQueue {
    /// Starts a thread that decodes `source` into a queue of `capacity` (>= 1) frames.
    pub fn spawn(
        mut source: Box<dyn FrameSource>,
        capacity: usize,
        policy: QueuePolicy,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(VisionError::InvalidOption {
                name: "queue_capacity",
                value: "0".to_string(),
                message: "must be >= 1".to_string(),
            });
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
            policy,
        });
        let description = source.describe();
        let live = source.is_live();
        let fps = source.fps();
        let interrupt = source.interrupt_handle();
        let thread = {
            let inner = Arc::clone(&inner);
            let desc = description.clone();
            std::thread::Builder::new()
                .name("frame-decoder".to_string())
                .spawn(move || decode_loop(&mut *source, &inner, &desc))
                .map_err(VisionError::io(
                    "cannot start decoder thread for",
                    &description,
                ))?
        };
        Ok(Self {
            inner,
            thread: Some(thread),
            interrupt,
            description,
            live,
            fps,
        })
    }

    /// The next frame; `None` at the end of the source, or once the queue is stopped and the
    /// frames queued before the stop were taken (a waiting `recv` wakes at the stop, without
    /// waiting for the source to notice it). A source error is returned once, after the
    /// frames queued before it.
    pub fn recv(&self) -> Option<Result<Frame>> {
        let mut st = self.inner.state.lock().ok()?;
        loop {
            if st.aborted {
                return None;
            }
            if let Some(f) = st.items.pop_front() {
                self.inner.not_full.notify_one();
                return Some(Ok(f));
            }
            if let Some(e) = st.error.take() {
                return Some(Err(e));
            }
            if st.finished || st.closed {
                return None;
            }
            st = self.inner.not_empty.wait(st).ok()?;
        }
    }

    /// Up to `max` frames: waits for the first, then takes what is already queued.
    pub fn recv_batch(&self, max: usize) -> Option<Result<Vec<Frame>>> {
        let first = match self.recv()? {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        let mut batch = vec![first];
        if let Ok(mut st) = self.inner.state.lock() {
            while batch.len() < max {
                match st.items.pop_front() {
                    Some(f) => batch.push(f),
                    None => break,
                }
            }
            self.inner.not_full.notify_one();
        }
        Some(Ok(batch))
    }

    /// Counters so far.
    pub fn stats(&self) -> QueueStats {
        self.inner.state.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// The source's description (credentials redacted).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Whether the source is live.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The source's nominal frame rate.
    pub fn fps(&self) -> Option<f64> {
        self.fps
    }

    /// The queue's policy.
    pub fn policy(&self) -> QueuePolicy {
        self.inner.policy
    }

    /// A handle, usable from any thread, that stops decoding (interrupting the source), discards
    /// the queued frames and makes a waiting or later `recv` return `None` at once.
    pub fn abort_handle(&self) -> InterruptHandle {
        let inner = Arc::clone(&self.inner);
        let source = self.interrupt.clone();
        InterruptHandle::new(move || {
            if let Ok(mut st) = inner.state.lock() {
                st.closed = true;
                st.aborted = true;
                st.items.clear();
            }
            inner.not_full.notify_all();
            inner.not_empty.notify_all();
            if let Some(i) = &source {
                i.interrupt();
            }
        })
    }

    /// Stops decoding (interrupting the source: a live source's backoff or blocked read ends,
    /// its ffmpeg child is killed); queued frames can still be received, then `recv` returns
    /// `None`, also a `recv` that is already waiting.
    pub fn stop(&self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.closed = true;
        }
        self.inner.not_full.notify_all();
        self.inner.not_empty.notify_all();
        if let Some(i) = &self.interrupt {
            i.interrupt();
        }
    }
}

impl Drop for FrameQueue {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(source = %self.description, "decoder thread panicked");
            }
        }
        let s = self.stats();
        tracing::debug!(source = %self.description, decoded = s.decoded, dropped = s.dropped, "frame queue closed");
    }
}

fn decode_loop(source: &mut dyn FrameSource, inner: &Inner, desc: &str) {
    loop {
        if inner.state.lock().map(|s| s.closed).unwrap_or(true) {
            break;
        }
        let started = Instant::now();
        let next = source.next_frame();
        let spent = started.elapsed();
        let Ok(mut st) = inner.state.lock() else {
            break;
        };
        st.stats.decode_time += spent;
        st.stats.skipped = source.skipped_frames();
        st.stats.decode_errors = source.decode_errors();
        match next {
            Ok(Some(frame)) => {
                st.stats.decoded += 1;
                while st.items.len() >= inner.capacity && !st.closed {
                    match inner.policy {
                        QueuePolicy::DropOldest => {
                            if let Some(old) = st.items.pop_front() {
                                st.stats.dropped += 1;
                                tracing::debug!(source = %desc, frame = old.index, dropped = st.stats.dropped, "queue full: dropped oldest frame");
                            }
                        }
                        QueuePolicy::Block => match inner.not_full.wait(st) {
                            Ok(g) => st = g,
                            Err(_) => return,
                        },
                    }
                }
                if st.closed {
                    break;
                }
                st.items.push_back(frame);
                inner.not_empty.notify_one();
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(source = %desc, error = %e, "frame source failed");
                st.error = Some(e);
                break;
            }
        }
    }
    if let Ok(mut st) = inner.state.lock() {
        st.finished = true;
        if st.stats.dropped > 0 {
            tracing::warn!(source = %desc, decoded = st.stats.decoded, dropped = st.stats.dropped, "frames dropped because analysis was slower than the source");
        }
    }
    inner.not_empty.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source of `n` tiny frames that takes `delay` per frame.
    struct Counting {
        n: u64,
        next: u64,
        delay: Duration,
    }

    impl FrameSource for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn is_live(&self) -> bool {
            false
        }
        fn fps(&self) -> Option<f64> {
            None
        }
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            if self.next == self.n {
                return Ok(None);
            }
            std::thread::sleep(self.delay);
            let f = Frame::new(self.next, Duration::ZERO, 1, 1, vec![0, 0, 0])?;
            self.next += 1;
            Ok(Some(f))
        }
    }

    #[test]
    fn block_delivers_every_frame_in_order() {
        let src = Counting {
            n: 50,
            next: 0,
            delay: Duration::ZERO,
        };
        let q = FrameQueue::spawn(Box::new(src), 2, QueuePolicy::Block).unwrap();
        let mut got = Vec::new();
        while let Some(f) = q.recv() {
            got.push(f.unwrap().index);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert_eq!(q.stats().dropped, 0);
        assert_eq!(q.stats().decoded, 50);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let src = Counting {
            n: 40,
            next: 0,
            delay: Duration::ZERO,
        };
        let q = FrameQueue::spawn(Box::new(src), 3, QueuePolicy::DropOldest).unwrap();
        // A slow consumer: wait until the producer is done, then read.
        while q.stats().decoded < 40 {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20));
        let got: Vec<u64> = std::iter::from_fn(|| q.recv())
            .map(|f| f.unwrap().index)
            .collect();
        assert_eq!(got, vec![37, 38, 39]);
        assert_eq!(q.stats().dropped, 37);
    }

    #[test]
    fn abort_wakes_a_waiting_receiver() {
        // One frame, then a source that takes 50 ms per frame: the receiver waits on the queue.
        let src = Counting {
            n: 1000,
            next: 0,
            delay: Duration::from_millis(50),
        };
        let q = FrameQueue::spawn(Box::new(src), 4, QueuePolicy::Block).unwrap();
        assert_eq!(q.recv().unwrap().unwrap().index, 0);
        let abort = q.abort_handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            abort.interrupt();
        });
        let started = Instant::now();
        // Frame 1 may land before the abort; after it nothing more is delivered.
        let mut after = 0;
        while q.recv().is_some() {
            after += 1;
        }
        assert!(after <= 1, "{after} frames after the abort");
        assert!(started.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
    }

    /// One frame, then a `next_frame` that blocks until released: a source that does not
    /// answer interrupts (it has no interrupt handle).
    struct Stalled {
        sent: bool,
        release: std::sync::mpsc::Receiver<()>,
    }

    impl FrameSource for Stalled {
        fn describe(&self) -> String {
            "stalled".into()
        }
        fn is_live(&self) -> bool {
            true
        }
        fn fps(&self) -> Option<f64> {
            None
        }
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            if !self.sent {
                self.sent = true;
                return Frame::new(0, Duration::ZERO, 1, 1, vec![0, 0, 0]).map(Some);
            }
            let _ = self.release.recv();
            Ok(None)
        }
    }

    #[test]
    fn stop_wakes_a_receiver_waiting_on_a_stalled_source() {
        let (release, rx) = std::sync::mpsc::channel();
        let src = Stalled {
            sent: false,
            release: rx,
        };
        let q = FrameQueue::spawn(Box::new(src), 2, QueuePolicy::DropOldest).unwrap();
        assert_eq!(q.recv().unwrap().unwrap().index, 0);
        let started = Instant::now();
        let waited = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                q.stop();
            });
            // Releases the source after 3 s whatever happens, so a failure cannot hang.
            let release = release.clone();
            s.spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                let _ = release.send(());
            });
            let got = q.recv();
            assert!(got.is_none(), "a frame after stop");
            started.elapsed()
        });
        assert!(
            waited < Duration::from_secs(1),
            "recv returned {waited:?} after stop, not at once"
        );
        drop(q);
    }

    #[test]
    fn dropping_the_queue_stops_a_blocked_producer() {
        let src = Counting {
            n: u64::MAX,
            next: 0,
            delay: Duration::ZERO,
        };
        let q = FrameQueue::spawn(Box::new(src), 1, QueuePolicy::Block).unwrap();
        assert_eq!(q.recv().unwrap().unwrap().index, 0);
        drop(q); // joins the thread; hangs here if the producer does not see the close
    }
}
