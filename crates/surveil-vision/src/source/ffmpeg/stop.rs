//! A stop request that reaches every place a source can block: a condition variable wakes
//! the reconnect backoff at once, and stop hooks kill the running ffmpeg child so that a
//! blocked pipe read returns.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::frame::InterruptHandle;

/// Work to do when a stop is requested (kill a child process).
pub(crate) type StopHook = dyn Fn() + Send + Sync;

#[derive(Default)]
struct State {
    stopped: bool,
    /// Hooks of the sources that share this signal; a dropped source's hook is gone.
    hooks: Vec<Weak<StopHook>>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    wake: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave `State` inconsistent (one bool and a
        // list), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stop request shared between threads; cloning gives another handle to the same request.
///
/// Hand one to [`super::FfmpegSource::open_with_stop`] (or
/// [`crate::source::open_source_with_stop`]) before opening a live source: a stop then ends a
/// first connection that is still pending ([`crate::VisionError::Interrupted`]), wakes the
/// reconnect backoff at once, and kills and reaps the ffmpeg child. Once stopped, it stays
/// stopped. A signal handler cannot call [`stop`](Self::stop) itself (it locks a mutex); the
/// usual pattern is a thread that polls the handler's atomic flag and calls `stop`.
#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopSignal {
    /// A signal that is not stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the stop: wakes every waiter and runs the hooks of the sources sharing this
    /// signal (each kills its ffmpeg child). Calling it again does nothing more.
    pub fn stop(&self) {
        let hooks: Vec<Arc<StopHook>> = {
            let mut st = self.inner.lock();
            if st.stopped {
                return;
            }
            st.stopped = true;
            st.hooks.drain(..).filter_map(|h| h.upgrade()).collect()
        };
        self.inner.wake.notify_all();
        for hook in hooks {
            hook();
        }
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.inner.lock().stopped
    }

    /// Waits until a stop is requested or `timeout` has passed; `true` when stopped. Used for
    /// the reconnect backoff, so a stop ends the wait at once (no polling).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.inner.lock();
        while !st.stopped {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            st = match self.inner.wake.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        st.stopped
    }

    /// An [`InterruptHandle`] that stops this signal.
    pub fn interrupt_handle(&self) -> InterruptHandle {
        let signal = self.clone();
        InterruptHandle::new(move || signal.stop())
    }

    /// Registers `hook` to run on [`stop`](Self::stop) while the caller keeps it alive. Returns
    /// `false`, without registering, when the signal is already stopped.
    pub(crate) fn add_hook(&self, hook: &Arc<StopHook>) -> bool {
        let mut st = self.inner.lock();
        if st.stopped {
            return false;
        }
        st.hooks.retain(|h| h.strong_count() > 0);
        st.hooks.push(Arc::downgrade(hook));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn stop_wakes_a_waiter_at_once() {
        let s = StopSignal::new();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let stopped = s.wait_timeout(Duration::from_secs(60));
                (stopped, started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        s.stop();
        let (stopped, waited) = t.join().unwrap();
        assert!(stopped);
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        // A wait after the stop returns at once, a wait without one times out.
        assert!(s.wait_timeout(Duration::from_secs(60)));
        assert!(!StopSignal::new().wait_timeout(Duration::from_millis(5)));
    }

    #[test]
    fn hooks_run_once_and_only_while_alive() {
        let s = StopSignal::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let hook: Arc<StopHook> = {
            let runs = runs.clone();
            Arc::new(move || {
                runs.fetch_add(1, Ordering::SeqCst);
            })
        };
        let dropped: Arc<StopHook> = {
            let runs = runs.clone();
            Arc::new(move || {
                runs.fetch_add(100, Ordering::SeqCst);
            })
        };
        assert!(s.add_hook(&hook));
        assert!(s.add_hook(&dropped));
        drop(dropped);
        s.stop();
        s.stop();
        s.interrupt_handle().interrupt();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!s.add_hook(&hook), "a stopped signal takes no hooks");
    }
}
