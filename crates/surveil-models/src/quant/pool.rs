//! [`ThreadPool`]: a small persistent pool for the kernels whose idle workers sleep on a
//! condition variable (after a bounded spin of [`SPIN`]), so it costs nothing between calls and
//! does not fight other processes for shared cores.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::QuantError;

/// How long an idle worker watches for the next job before it sleeps, and how long a caller
/// watches for the workers to leave its job before it sleeps: enough to catch the next matmul
/// of a decode step (tens of microseconds apart) and a worker finishing its last part without
/// a futex sleep and wake-up (which cost tens of microseconds each on a virtual machine), too
/// short to matter when the cores are shared.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Spin until `ready()` or [`SPIN`] has passed; whether `ready()` held.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        for _ in 0..16 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN {
            return ready();
        }
    }
}

/// A fixed set of threads that run the parts of one job at a time; the calling thread runs
/// parts too. `threads` is the total including the caller (the `vlm.threads` setting), so
/// `ThreadPool::new(1)` starts no thread and runs everything inline.
///
/// Each thread owns a contiguous run of the parts (thread `i` of `T`: parts `i·P/T ..
/// (i+1)·P/T`) and takes them in order from the front, so a GEMV split into many small parts
/// still streams each thread's share of the weight as one sequential read; a thread whose run
/// is done takes parts one at a time from the back of the run with the most left (work
/// stealing). A thread that is descheduled (cores shared with other work) therefore simply
/// runs fewer parts, and the threads finish within one part of each other. A worker that has
/// not woken up by the time every part is taken does not join the job, and the call does not
/// wait for it.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (calls from several threads queue here).
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Workers wait here for a new job.
    wake: Condvar,
    /// The caller waits here for the workers inside its job.
    done: Condvar,
    /// `State::epoch`, readable without the lock (the spin).
    epoch: AtomicU64,
    /// `State::active`, readable without the lock (the caller's spin).
    busy: AtomicUsize,
    /// Per thread (the caller is 0, worker `i` is `i`): the parts of the current job it has
    /// not taken yet (see [`Run`]).
    runs: Box<[Run]>,
    /// Set when a part panicked: the parts not yet started are skipped.
    failed: AtomicBool,
}

struct State {
    epoch: u64,
    /// The open job; `None` once the caller has finished its share (no worker joins then).
    job: Option<JobRef>,
    /// Workers inside the open job.
    active: usize,
    /// The first panic message of the job.
    panic: Option<String>,
    /// Workers asleep on `wake`: a new job notifies only when there are some (a notification
    /// is a futex system call even when nobody waits).
    sleeping: usize,
    /// Whether the caller sleeps on `done` (the last worker out notifies only then).
    caller_waiting: bool,
    shutdown: bool,
}

/// The job's closure with its lifetime erased, and its number of parts.
#[derive(Clone, Copy)]
struct JobRef {
    f: *const (dyn Fn(usize) + Sync + 'static),
    parts: usize,
}

// SAFETY: the closure behind `f` is `Sync`, so calling it from several threads is allowed; the
// pointer is only dereferenced while `ThreadPool::run` keeps the closure alive (see there).
unsafe impl Send for JobRef {}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller plus `threads − 1` workers, started now.
    ///
    /// Errors: `threads == 0` ([`QuantError::NoThreads`]); the OS refuses a thread
    /// ([`QuantError::Spawn`]).
    pub fn new(threads: usize) -> Result<Self, QuantError> {
        if threads == 0 {
            return Err(QuantError::NoThreads);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                epoch: 0,
                job: None,
                active: 0,
                panic: None,
                sleeping: 0,
                caller_waiting: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            epoch: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            runs: (0..threads).map(|_| Run::default()).collect(),
            failed: AtomicBool::new(false),
        });
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(threads - 1),
            run_lock: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("surveil-q4-{i}"))
                .spawn(move || worker(&shared, i))
                .map_err(QuantError::Spawn)?; // `pool` drops here and joins those started
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(part)` for every `part` in `0..parts`, spread over the pool's threads and the
    /// caller; returns when all have finished. Which thread runs which part is not fixed.
    ///
    /// Errors: a part panicked ([`QuantError::JobPanicked`] with its message); the parts not
    /// yet started are then skipped, the others finish, and the pool stays usable.
    pub fn run<F: Fn(usize) + Sync>(&self, parts: usize, f: F) -> Result<(), QuantError> {
        if parts <= MAX_PARTS {
            return self.run_job(parts, &f);
        }
        // More parts than a run can count: consecutive jobs of at most `MAX_PARTS`.
        let mut first = 0;
        while first < parts {
            let n = (parts - first).min(MAX_PARTS);
            self.run_job(n, &|p| f(first + p))?;
            first += n;
        }
        Ok(())
    }

    /// [`Self::run`] for at most [`MAX_PARTS`] parts.
    fn run_job(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) -> Result<(), QuantError> {
        if self.workers.is_empty() || parts <= 1 {
            let mut first_panic = None;
            for part in 0..parts {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(part))) {
                    first_panic = Some(panic_message(payload.as_ref()));
                    break;
                }
            }
            return first_panic.map_or(Ok(()), |m| Err(QuantError::JobPanicked(m)));
        }
        let _one_job = self.run_lock.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: only the lifetime changes (same fat-pointer layout). The pointer is
        // dereferenced by workers only between taking the job (under the state lock, while
        // `state.job` is `Some`) and decrementing `active`; below, this function clears
        // `state.job` and waits until `active == 0` before it returns, on every path (the
        // closure's panics are caught), so `f` outlives every use.
        let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f)
        };
        let job = JobRef { f: erased, parts };
        let sleeping = {
            let mut st = self.lock();
            let threads = self.shared.runs.len();
            for (i, run) in self.shared.runs.iter().enumerate() {
                run.set(parts * i / threads, parts * (i + 1) / threads);
            }
            self.shared.failed.store(false, Ordering::Relaxed);
            st.epoch += 1;
            st.job = Some(job);
            st.panic = None;
            self.shared.epoch.store(st.epoch, Ordering::Release);
            st.sleeping
        };
        if sleeping > 0 {
            self.shared.wake.notify_all();
        }
        let own_panic = work(&self.shared, job, 0);
        let mut st = self.lock();
        st.job = None;
        if st.active > 0 {
            // The workers are finishing their last parts: watch for it before sleeping.
            drop(st);
            spin_until(|| self.shared.busy.load(Ordering::Acquire) == 0);
            st = self.lock();
        }
        while st.active > 0 {
            st.caller_waiting = true;
            st = self
                .shared
                .done
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.caller_waiting = false;
        let panic = st.panic.take().or(own_panic);
        drop(st);
        panic.map_or(Ok(()), |m| Err(QuantError::JobPanicked(m)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

/// Physical cores this process may run on: the distinct `(package, core)` pairs of the CPUs
/// in its affinity mask (Linux sysfs `topology/`), capped by
/// [`std::thread::available_parallelism`] (which also honours a cgroup CPU quota). Where the
/// topology cannot be read, the available parallelism; at least 1. The default of
/// `vlm.threads`: a second hyper-thread on a core adds no memory bandwidth to a GEMV.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return logical;
    };
    let allowed = allowed_cpus();
    let mut cores = std::collections::BTreeSet::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(cpu) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if allowed.as_ref().is_some_and(|a| !a.contains(&cpu)) {
            continue;
        }
        let read = |f: &str| {
            std::fs::read_to_string(entry.path().join("topology").join(f))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((package, core));
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical).max(1)
    }
}

/// The CPUs of this process's affinity mask (`Cpus_allowed_list` of `/proc/self/status`, e.g.
/// `0-3,8`), or `None` when it cannot be read.
fn allowed_cpus() -> Option<std::collections::BTreeSet<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = std::collections::BTreeSet::new();
    for range in list.split(',').filter(|r| !r.is_empty()) {
        let (lo, hi): (usize, usize) = match range.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let c = range.parse().ok()?;
                (c, c)
            }
        };
        cpus.extend(lo..=hi);
    }
    Some(cpus)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.lock().shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            // A worker never panics (jobs' panics are caught); nothing to report if it did.
            let _ = w.join();
        }
    }
}

/// Worker `slot`: sleep until a new job is published, take parts until none is left, report.
fn worker(shared: &Shared, slot: usize) {
    let mut seen = 0u64;
    loop {
        spin_until(|| shared.epoch.load(Ordering::Acquire) != seen);
        let job = {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if st.epoch != seen {
                    seen = st.epoch;
                    if let Some(job) = st.job {
                        st.active += 1;
                        shared.busy.store(st.active, Ordering::Release);
                        break job;
                    }
                }
                st.sleeping += 1;
                st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.sleeping -= 1;
            }
        };
        let panic = work(shared, job, slot);
        let mut st = shared.lock();
        if let Some(m) = panic {
            st.panic.get_or_insert(m);
        }
        st.active -= 1;
        shared.busy.store(st.active, Ordering::Release);
        if st.active == 0 && st.caller_waiting {
            shared.done.notify_all();
        }
    }
}

/// Take and run parts of `job` until none is left (thread `slot`'s own run first, then the
/// back of the others'); the first panic's message.
fn work(shared: &Shared, job: JobRef, slot: usize) -> Option<String> {
    let mut panic = None;
    let own = &shared.runs[slot];
    loop {
        let Some(part) = own.take(false).or_else(|| steal(&shared.runs, slot)) else {
            return panic;
        };
        debug_assert!(part < job.parts);
        if shared.failed.load(Ordering::Relaxed) {
            continue;
        }
        // SAFETY: the job is open (see `ThreadPool::run`): the closure is alive until this
        // thread has left the job.
        let f = unsafe { &*job.f };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(part))) {
            shared.failed.store(true, Ordering::Relaxed);
            panic.get_or_insert_with(|| panic_message(payload.as_ref()));
        }
    }
}

/// Most parts one job can hold: a [`Run`] counts them in 32 bits.
const MAX_PARTS: usize = u32::MAX as usize;

/// The parts `start..end` of the current job that one thread has not taken yet, packed as
/// `start << 32 | end` in one atomic so that the owner (from the front) and thieves (from the
/// back) take parts with one compare-and-swap each; on its own cache line (128 bytes: the
/// adjacent-line prefetcher pairs lines) so that owners do not slow each other down.
#[derive(Default)]
#[repr(align(128))]
struct Run(AtomicU64);

impl Run {
    /// Open `start..end` (`end ≤ MAX_PARTS`) for a new job; published to the workers by the
    /// job's epoch (under the state lock).
    fn set(&self, start: usize, end: usize) {
        self.0
            .store(((start as u64) << 32) | end as u64, Ordering::Relaxed);
    }

    /// `(start, end)` of a packed value.
    fn unpack(v: u64) -> (u64, u64) {
        (v >> 32, v & u64::from(u32::MAX))
    }

    /// Parts not yet taken.
    fn left(&self) -> u64 {
        let (start, end) = Self::unpack(self.0.load(Ordering::Relaxed));
        end.saturating_sub(start)
    }

    /// Take the first part left (the owner's order) or, `from_back`, the last (a thief's).
    fn take(&self, from_back: bool) -> Option<usize> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let (start, end) = Self::unpack(v);
                (start < end).then(|| if from_back { v - 1 } else { v + (1 << 32) })
            })
            .ok()
            .map(|v| {
                let (start, end) = Self::unpack(v);
                (if from_back { end - 1 } else { start }) as usize
            })
    }
}

/// A part from the back of the run (other than `slot`'s) with the most parts left; `None`
/// when every run is empty.
fn steal(runs: &[Run], slot: usize) -> Option<usize> {
    loop {
        let victim = runs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != slot)
            .map(|(i, r)| (r.left(), i))
            .max()
            .filter(|&(left, _)| left > 0)?;
        if let Some(part) = runs[victim.1].take(true) {
            return Some(part);
        }
        // Emptied by its owner or another thief meanwhile: look again.
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_once() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for parts in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
                pool.run(parts, |p| {
                    hits[p].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
        assert!(matches!(ThreadPool::new(0), Err(QuantError::NoThreads)));
    }

    #[test]
    fn a_panicking_part_is_an_error_and_the_pool_survives() {
        let pool = ThreadPool::new(3).unwrap();
        for round in 0..20 {
            let err = pool
                .run(16, |p| {
                    if p == round % 16 {
                        panic!("part {p} failed");
                    }
                })
                .unwrap_err();
            assert!(
                matches!(&err, QuantError::JobPanicked(m) if m.contains("failed")),
                "{err}"
            );
            let count = AtomicU32::new(0);
            pool.run(16, |_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(count.load(Ordering::Relaxed), 16);
        }
        let inline = ThreadPool::new(1).unwrap();
        assert!(inline.run(3, |_| panic!("inline")).is_err());
    }

    /// A thread held up in its first part loses the back of its run to the other thread,
    /// which takes it once its own run is done; every part still runs once. (Should the
    /// caller be descheduled before it takes any part, the worker runs them all: the
    /// assertions hold then too.)
    #[test]
    fn idle_threads_take_the_back_of_a_busy_run() {
        let pool = ThreadPool::new(2).unwrap();
        let parts = 64;
        let half = parts / 2; // the caller's run is 0..32, the worker's 32..64
        let by: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
        let caller = std::thread::current().id();
        let held = AtomicBool::new(false);
        let stolen = AtomicU32::new(0);
        pool.run(parts, |p| {
            let mine = std::thread::current().id() == caller;
            by[p].fetch_add(if mine { 1 } else { 2 }, Ordering::Relaxed);
            if !mine && p < half {
                stolen.fetch_add(1, Ordering::Relaxed);
            }
            if mine && !held.swap(true, Ordering::Relaxed) {
                // Hold the caller's first part until the worker has taken one of its run.
                let t0 = std::time::Instant::now();
                while stolen.load(Ordering::Relaxed) == 0
                    && t0.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::thread::yield_now();
                }
            }
        })
        .unwrap();
        let runs: Vec<u32> = by.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert!(runs.iter().all(|&r| r == 1 || r == 2), "{runs:?}");
        assert!(
            runs[half..].iter().all(|&r| r == 2),
            "the worker's own run: {runs:?}"
        );
        assert!(
            stolen.load(Ordering::Relaxed) > 0,
            "nothing taken from the back: {runs:?}"
        );
        // What the worker took of the caller's run is its back: no caller part after it.
        if let Some(first_stolen) = runs[..half].iter().position(|&r| r == 2) {
            assert!(runs[first_stolen..half].iter().all(|&r| r == 2), "{runs:?}");
        }
    }

    #[test]
    fn several_callers_share_one_pool() {
        let pool = ThreadPool::new(2).unwrap();
        let total = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..50 {
                        pool.run(5, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 5);
    }
}
