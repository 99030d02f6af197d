//! Runs the behaviour tools of a frame with at most `max_concurrent_tools` at once, each under
//! `timeout_seconds`.
//!
//! Tools run on a small persistent pool of worker threads that share an `Arc<Scene>`
//! snapshot. The runner waits for results with a deadline per tool; a tool that errors or
//! panics (caught on its worker) is recorded and its worker keeps serving. A tool still
//! running at its deadline is recorded as late, and its worker is abandoned: Rust threads
//! cannot be stopped, so it finishes in the background and rejoins the pool when it does,
//! while a fresh worker takes its place. Replacements start only while at most
//! `max_concurrent_tools` workers are late; beyond that the pool shrinks rather than leak
//! threads, and tools that find no worker are recorded as such until late workers return.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use surveil_config::SystemConfig;

use super::{tools_for_config, BehaviourTool, Observation};
use crate::scene::Scene;

/// Why a tool produced nothing for a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ToolFailureReason {
    /// The tool returned an error.
    Error(String),
    /// The tool panicked; the panic message.
    Panicked(String),
    /// The tool was still running at its deadline.
    TimedOut,
    /// No worker was free: too many earlier tools are still running past their deadlines.
    NoWorker,
}

impl std::fmt::Display for ToolFailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolFailureReason::Error(m) => write!(f, "error: {m}"),
            ToolFailureReason::Panicked(m) => write!(f, "panicked: {m}"),
            ToolFailureReason::TimedOut => f.write_str("timed out"),
            ToolFailureReason::NoWorker => {
                f.write_str("not run: every worker is busy with a late tool")
            }
        }
    }
}

/// A tool that failed on a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolFailure {
    /// Tool name.
    pub tool: String,
    /// What went wrong.
    pub reason: ToolFailureReason,
    /// Time from hand-off to the failure (the timeout for late tools), milliseconds.
    pub elapsed_ms: f64,
}

/// How long one tool took on a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolTiming {
    /// Tool name.
    pub tool: String,
    /// Milliseconds: the tool's own run time, or the time waited for a late one.
    pub elapsed_ms: f64,
}

/// The outcome of running the tools on one frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolReport {
    /// Observations of the tools that succeeded, in tool order.
    pub observations: Vec<Observation>,
    /// Tools that failed, were late, or found no worker.
    pub failures: Vec<ToolFailure>,
    /// Per tool that was handed to a worker, in tool order.
    pub timings: Vec<ToolTiming>,
}

struct Job {
    id: u64,
    tool: Arc<dyn BehaviourTool>,
    scene: Arc<Scene>,
}

enum Outcome {
    Done(crate::Result<Vec<Observation>>),
    Panicked(String),
}

struct JobResult {
    id: u64,
    outcome: Outcome,
    elapsed: Duration,
}

struct Worker {
    jobs: Sender<Job>,
    handle: JoinHandle<()>,
}

struct Running {
    index: usize,
    worker: Worker,
    started: Instant,
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a fixed set of behaviour tools on scenes; see the module documentation.
pub struct ToolRunner {
    tools: Vec<Arc<dyn BehaviourTool>>,
    max_concurrent: usize,
    timeout: Duration,
    idle: Vec<Worker>,
    abandoned: HashMap<u64, Worker>,
    results_tx: Sender<JobResult>,
    results_rx: Receiver<JobResult>,
    next_job: u64,
    spawned: usize,
}

impl std::fmt::Debug for ToolRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRunner")
            .field(
                "tools",
                &self.tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .field("max_concurrent", &self.max_concurrent)
            .field("timeout", &self.timeout)
            .field("idle_workers", &self.idle.len())
            .field("abandoned_workers", &self.abandoned.len())
            .finish()
    }
}

impl ToolRunner {
    /// A runner of `tools` (reported in this order), at most `max_concurrent` (≥ 1; 0 is
    /// taken as 1) at once, each allowed `timeout`. Workers start on first use.
    pub fn new(
        tools: Vec<Arc<dyn BehaviourTool>>,
        max_concurrent: usize,
        timeout: Duration,
    ) -> Self {
        let (results_tx, results_rx) = mpsc::channel();
        Self {
            tools,
            max_concurrent: max_concurrent.max(1),
            timeout,
            idle: Vec::new(),
            abandoned: HashMap::new(),
            results_tx,
            results_rx,
            next_job: 0,
            spawned: 0,
        }
    }

    /// The tools of `config.orchestration.mode` under `max_concurrent_tools` and
    /// `timeout_seconds`.
    pub fn from_config(config: &SystemConfig) -> Self {
        let o = &config.orchestration;
        let timeout =
            Duration::try_from_secs_f64(o.timeout_seconds).unwrap_or(Duration::from_secs(30));
        Self::new(tools_for_config(config), o.max_concurrent_tools, timeout)
    }

    /// Names of the tools, in order.
    pub fn tool_names(&self) -> Vec<&'static str> {
        self.tools.iter().map(|t| t.name()).collect()
    }

    /// Workers still running a tool past its deadline.
    pub fn late_workers(&self) -> usize {
        self.abandoned.len()
    }

    fn spawn_worker(&mut self) -> Option<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let results = self.results_tx.clone();
        let name = format!("surveil-tool-{}", self.spawned);
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            while let Ok(job) = rx.recv() {
                let start = Instant::now();
                let outcome = match catch_unwind(AssertUnwindSafe(|| job.tool.observe(&job.scene)))
                {
                    Ok(r) => Outcome::Done(r),
                    Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
                };
                let sent = results.send(JobResult {
                    id: job.id,
                    outcome,
                    elapsed: start.elapsed(),
                });
                if sent.is_err() {
                    break;
                }
            }
        });
        match handle {
            Ok(handle) => {
                self.spawned += 1;
                Some(Worker { jobs, handle })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a tool worker thread");
                None
            }
        }
    }

    /// A late worker finished: reuse it when the pool has room, else let it exit.
    fn late_worker_done(&mut self, id: u64, live: usize) {
        if let Some(w) = self.abandoned.remove(&id) {
            if live + self.idle.len() < self.max_concurrent {
                self.idle.push(w);
            } else {
                drop(w.jobs);
                // Its job is done, so the thread exits at once.
                if w.handle.join().is_err() {
                    tracing::warn!("a tool worker ended with a panic");
                }
            }
        }
    }

    /// Run every tool on `scene`; returns when all have finished, failed, or passed their
    /// deadlines.
    pub fn run(&mut self, scene: Arc<Scene>) -> ToolReport {
        let _span = tracing::debug_span!("tools", frame = scene.frame_index()).entered();
        // Late workers of earlier frames that have finished since.
        while let Ok(r) = self.results_rx.try_recv() {
            self.late_worker_done(r.id, 0);
        }

        let n = self.tools.len();
        let mut pending: VecDeque<usize> = (0..n).collect();
        let mut running: HashMap<u64, Running> = HashMap::new();
        let mut outputs: Vec<Option<Vec<Observation>>> = vec![None; n];
        let mut failures: Vec<(usize, ToolFailure)> = Vec::new();
        let mut timings: Vec<Option<ToolTiming>> = vec![None; n];
        let names: Vec<&'static str> = self.tools.iter().map(|t| t.name()).collect();
        let name = |i: usize| names[i].to_string();

        loop {
            while running.len() < self.max_concurrent {
                let Some(&index) = pending.front() else {
                    break;
                };
                let worker = match self.idle.pop() {
                    Some(w) => w,
                    None if running.len() + self.idle.len() < self.max_concurrent
                        && self.abandoned.len() <= self.max_concurrent =>
                    {
                        match self.spawn_worker() {
                            Some(w) => w,
                            None => break,
                        }
                    }
                    None => break,
                };
                let id = self.next_job;
                self.next_job += 1;
                let job = Job {
                    id,
                    tool: Arc::clone(&self.tools[index]),
                    scene: Arc::clone(&scene),
                };
                if worker.jobs.send(job).is_err() {
                    tracing::warn!("a tool worker stopped; replacing it");
                    continue;
                }
                pending.pop_front();
                running.insert(
                    id,
                    Running {
                        index,
                        worker,
                        started: Instant::now(),
                    },
                );
            }
            if running.is_empty() {
                for index in pending.drain(..) {
                    tracing::warn!(tool = %name(index), "no free tool worker");
                    failures.push((
                        index,
                        ToolFailure {
                            tool: name(index),
                            reason: ToolFailureReason::NoWorker,
                            elapsed_ms: 0.0,
                        },
                    ));
                }
                break;
            }
            let Some(deadline) = running.values().map(|r| r.started + self.timeout).min() else {
                break;
            };
            match self
                .results_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => {
                    let Some(done) = running.remove(&r.id) else {
                        self.late_worker_done(r.id, running.len());
                        continue;
                    };
                    let i = done.index;
                    self.idle.push(done.worker);
                    let elapsed_ms = millis(r.elapsed);
                    timings[i] = Some(ToolTiming {
                        tool: name(i),
                        elapsed_ms,
                    });
                    let reason = match r.outcome {
                        Outcome::Done(Ok(obs)) => {
                            outputs[i] = Some(obs);
                            continue;
                        }
                        Outcome::Done(Err(e)) => ToolFailureReason::Error(e.to_string()),
                        Outcome::Panicked(m) => ToolFailureReason::Panicked(m),
                    };
                    tracing::warn!(tool = %name(i), %reason, "behaviour tool failed");
                    failures.push((
                        i,
                        ToolFailure {
                            tool: name(i),
                            reason,
                            elapsed_ms,
                        },
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let late: Vec<u64> = running
                        .iter()
                        .filter(|(_, r)| r.started + self.timeout <= now)
                        .map(|(&id, _)| id)
                        .collect();
                    for id in late {
                        let Some(r) = running.remove(&id) else {
                            continue;
                        };
                        let elapsed_ms = millis(now.duration_since(r.started));
                        tracing::warn!(
                            tool = %name(r.index),
                            timeout_ms = millis(self.timeout),
                            "behaviour tool timed out; continuing without it"
                        );
                        timings[r.index] = Some(ToolTiming {
                            tool: name(r.index),
                            elapsed_ms,
                        });
                        failures.push((
                            r.index,
                            ToolFailure {
                                tool: name(r.index),
                                reason: ToolFailureReason::TimedOut,
                                elapsed_ms,
                            },
                        ));
                        self.abandoned.insert(id, r.worker);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }

        failures.sort_by_key(|(i, _)| *i);
        ToolReport {
            observations: outputs.into_iter().flatten().flatten().collect(),
            failures: failures.into_iter().map(|(_, f)| f).collect(),
            timings: timings.into_iter().flatten().collect(),
        }
    }
}

impl Drop for ToolRunner {
    fn drop(&mut self) {
        for w in self.idle.drain(..) {
            drop(w.jobs);
            if w.handle.join().is_err() {
                tracing::warn!("a tool worker ended with a panic");
            }
        }
        // Late workers are left to finish on their own; their result has no reader.
        self.abandoned.clear();
    }
}
