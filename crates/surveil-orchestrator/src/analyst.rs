//! The analyst: the one resident vision-language model, on its own thread, behind a
//! "latest scene wins" hand-off with one slot per camera.
//!
//! The pipeline never waits for the model. [`Analyst::submit`] puts a job in the slot (a job
//! still waiting there is replaced and counted as superseded); with several cameras,
//! [`Analyst::submit_to`] puts it in its camera's slot, and the thread serves the cameras'
//! slots round robin ([`FairQueue`]). The thread takes a job, asks
//! the model, turns the answer into a verdict and sends the result back, which the pipeline
//! collects with [`Analyst::poll`]. The model is loaded on the thread before the first frame
//! ([`Analyst::start`] returns once it is resident, or with the load error) and unloaded when
//! the thread ends, with the memory report of the whole cycle.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;
use surveil_memory::MemoryReport;
use surveil_models::generation::constrained::{
    ConstraintStart, ConstraintVocabulary, JsonSchemaConstraint,
};
use surveil_models::generation::{GenerationParams, StopReason};
use surveil_models::load::manager::{LoadOptions, LoadSummary, ModelManager};
use surveil_models::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};

use crate::caption::caption_verdict;
use crate::event::{VlmCallRecord, VlmOutcome};
use crate::queue::FairQueue;
use crate::tools::Observation;
use crate::verdict::{parse_verdict, verdict_json_schema, ParsedVerdict, VerdictSource};
use crate::{OrchestratorError, Result};

/// The text that closes a thinking model's reasoning span; the JSON constraint starts after it.
pub(crate) const THINK_END: &str = "◁/think▷";

/// How the analyst loads and asks its model.
#[derive(Clone)]
pub struct AnalystConfig {
    /// Primary model id.
    pub model: String,
    /// Tried in order when the primary fails to load and `enable_fallback` is on.
    pub fallback_models: Vec<String>,
    /// Whether fallbacks are tried.
    pub enable_fallback: bool,
    /// How to load.
    pub load: LoadOptions,
    /// Generation limits and sampling.
    pub generation: GenerationParams,
    /// Time limit of one analysis, from the moment the thread takes the job.
    pub timeout: Duration,
    /// Constrain instruction models' answers to the verdict schema.
    pub constrained: bool,
}

/// One request for an analysis. `C` is the caller's context, handed back with the result.
pub struct AnalysisJob<C> {
    /// Images: the frame, then optionally a crop of the person of interest.
    pub images: Vec<RgbImage>,
    /// System turn.
    pub system: String,
    /// User turn.
    pub prompt: String,
    /// Tool observations of the frame (captioner verdicts are built from them).
    pub observations: Vec<Observation>,
    /// Why the VLM was asked (`persons_present`, `tool_cue`, `periodic`).
    pub trigger: String,
    /// The caller's context (the frame, its tracks, ...).
    pub context: C,
}

/// What came back.
pub struct AnalysisResult<C> {
    /// The verdict as read from the answer (`parse_failed` ones included, with the raw text);
    /// `None` when generation failed, timed out or was cancelled.
    pub verdict: Option<ParsedVerdict>,
    /// The call's record for the event.
    pub record: VlmCallRecord,
    /// The caller's context of the job.
    pub context: C,
}

/// What the thread reports when it ends.
#[derive(Debug, Clone)]
pub struct AnalystExit {
    /// Memory snapshots of the load cycle: before and after load, after the first
    /// inference, after unload.
    pub memory: MemoryReport,
    /// Analyses run.
    pub analyses: u64,
}

/// The jobs waiting for the model, one per lane, with the time each was handed over.
struct Slot<C> {
    pending: FairQueue<(AnalysisJob<C>, Instant)>,
    stop: bool,
}

struct Shared<C> {
    slot: Mutex<Slot<C>>,
    wake: Condvar,
    busy: AtomicBool,
    /// Abandon the analysis in flight (Ctrl-C).
    cancel: AtomicBool,
}

/// Handle of the analyst thread.
pub struct Analyst<C: Send + 'static> {
    shared: Arc<Shared<C>>,
    results: Receiver<AnalysisResult<C>>,
    handle: Option<JoinHandle<AnalystExit>>,
    model_id: String,
    /// `None` without a model.
    kind: Option<VlmKind>,
    load: Option<LoadSummary>,
    failures: Vec<(String, String)>,
}

impl<C: Send + 'static> Analyst<C> {
    /// Start the thread, load the model on it and wait until it is resident. Returns the load
    /// error (after the failed attempts were released) when no model could be loaded.
    ///
    /// `stop` (Ctrl-C) is watched while loading: when it is set, this returns
    /// [`OrchestratorError::Interrupted`] at once and the thread ends after the load.
    pub fn start(config: AnalystConfig, stop: Option<Arc<AtomicBool>>) -> Result<Self> {
        Self::spawn(config, None, stop)
    }

    /// An analyst without a model and without a thread, for runs that detect, track and
    /// apply the behaviour tools and rules only: it holds no job ([`Analyst::has_model`] is
    /// false; the pipeline does not submit), returns no result, and reports no load.
    pub fn without_model() -> Self {
        let (_, results) = mpsc::channel();
        Self {
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot {
                    pending: FairQueue::new(),
                    stop: true,
                }),
                wake: Condvar::new(),
                busy: AtomicBool::new(false),
                cancel: AtomicBool::new(false),
            }),
            results,
            handle: None,
            model_id: String::new(),
            kind: None,
            load: None,
            failures: Vec::new(),
        }
    }

    /// Whether a model serves the analyses (false for [`Analyst::without_model`]).
    pub fn has_model(&self) -> bool {
        self.kind.is_some()
    }

    /// Start the thread with a model the caller built (a library user's own [`Vlm`], or a
    /// test double); nothing is loaded or unloaded and the memory report stays empty.
    pub fn start_with_vlm(config: AnalystConfig, vlm: Box<dyn Vlm>) -> Result<Self> {
        Self::spawn(config, Some(vlm), None)
    }

    fn spawn(
        config: AnalystConfig,
        given: Option<Box<dyn Vlm>>,
        config_stop: Option<Arc<AtomicBool>>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                pending: FairQueue::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
        });
        let (result_tx, results) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("surveil-analyst".into())
            .spawn(move || analyst_thread(config, given, thread_shared, ready_tx, result_tx))
            .map_err(|e| OrchestratorError::Config(format!("cannot start the analyst: {e}")))?;
        let ready = loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => break Ok(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if config_stop
                        .as_ref()
                        .is_some_and(|s| s.load(Ordering::SeqCst))
                    {
                        // A load cannot be cut short: leave the thread to finish it (it
                        // unloads and ends on its own once it sees the stop below).
                        shared.cancel.store(true, Ordering::SeqCst);
                        if let Ok(mut slot) = shared.slot.lock() {
                            slot.stop = true;
                        }
                        break Err(OrchestratorError::Interrupted);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(OrchestratorError::ThreadLost("analyst".into()))
                }
            }
        };
        match ready {
            Ok(Ok(ready)) => Ok(Self {
                shared,
                results,
                handle: Some(handle),
                model_id: ready.model_id,
                kind: Some(ready.kind),
                load: ready.load,
                failures: ready.failures,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(OrchestratorError::Interrupted) => Err(OrchestratorError::Interrupted),
            Err(e) => {
                let _ = handle.join();
                Err(e)
            }
        }
    }

    /// Id of the resident model (empty without a model).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Captioner, instruction or thinking model; `None` without a model.
    pub fn kind(&self) -> Option<VlmKind> {
        self.kind
    }

    /// What the load did (`None` for a model given with [`Analyst::start_with_vlm`]).
    pub fn load_summary(&self) -> Option<&LoadSummary> {
        self.load.as_ref()
    }

    /// Models that failed to load before the resident one (id, error).
    pub fn load_failures(&self) -> &[(String, String)] {
        &self.failures
    }

    /// True while an analysis runs or waits in a slot.
    pub fn is_busy(&self) -> bool {
        self.shared.busy.load(Ordering::SeqCst) || self.pending() > 0
    }

    /// Jobs waiting for the model (at most one per lane).
    pub fn pending(&self) -> usize {
        self.shared
            .slot
            .lock()
            .map(|s| s.pending.len())
            .unwrap_or(0)
    }

    /// Jobs replaced in a slot by a newer one before the model took them, over all lanes.
    pub fn superseded(&self) -> u64 {
        self.shared
            .slot
            .lock()
            .map(|s| s.pending.superseded_total())
            .unwrap_or(0)
    }

    /// Jobs of `lane` replaced by a newer one of the same lane before the model took them.
    pub fn superseded_of(&self, lane: usize) -> u64 {
        self.shared
            .slot
            .lock()
            .map(|s| s.pending.superseded(lane))
            .unwrap_or(0)
    }

    /// Hand a job over; a job still waiting in the slot is replaced (latest scene wins) and
    /// returned so the caller can count it. The same as [`Analyst::submit_to`] lane 0.
    pub fn submit(&mut self, job: AnalysisJob<C>) -> Option<AnalysisJob<C>> {
        self.submit_to(0, job)
    }

    /// Hand a job over in `lane` (a camera's index): a job of that lane still waiting is
    /// replaced (latest scene wins per camera) and returned so the caller can count it; jobs
    /// of other lanes stay. The model takes the waiting jobs round robin over lanes.
    pub fn submit_to(&mut self, lane: usize, job: AnalysisJob<C>) -> Option<AnalysisJob<C>> {
        let old = match self.shared.slot.lock() {
            Ok(mut slot) => slot
                .pending
                .push(lane, (job, Instant::now()))
                .map(|(j, _)| j),
            Err(_) => None,
        };
        self.shared.wake.notify_all();
        old
    }

    /// Results that arrived since the last call, without waiting.
    pub fn poll(&self) -> Vec<AnalysisResult<C>> {
        self.results.try_iter().collect()
    }

    /// Wait up to `timeout` for one result.
    pub fn wait_result(&self, timeout: Duration) -> Option<AnalysisResult<C>> {
        self.results.recv_timeout(timeout).ok()
    }

    /// End the thread. With `abandon`, the analysis in flight is cancelled at its next
    /// checkpoint; otherwise it may finish (within its own timeout). A job still waiting in
    /// the slot is dropped and returned. Waits at most `grace` for the thread (which unloads
    /// the model); returns its exit report, the last results, and the dropped job, or `None`
    /// for the report when the thread did not end in time (it is left to finish on its own).
    ///
    /// With several lanes, [`Analyst::finish_lanes`] returns every dropped job; this returns
    /// the one of the lowest lane.
    pub fn finish(
        self,
        abandon: bool,
        grace: Duration,
    ) -> (
        Option<AnalystExit>,
        Vec<AnalysisResult<C>>,
        Option<AnalysisJob<C>>,
    ) {
        let (exit, results, dropped) = self.finish_lanes(abandon, grace);
        (exit, results, dropped.into_iter().next().map(|(_, j)| j))
    }

    /// [`Analyst::finish`], returning every job still waiting with its lane, in lane order.
    #[allow(clippy::type_complexity)]
    pub fn finish_lanes(
        mut self,
        abandon: bool,
        grace: Duration,
    ) -> (
        Option<AnalystExit>,
        Vec<AnalysisResult<C>>,
        Vec<(usize, AnalysisJob<C>)>,
    ) {
        if abandon {
            self.shared.cancel.store(true, Ordering::SeqCst);
        }
        let dropped = match self.shared.slot.lock() {
            Ok(mut slot) => {
                slot.stop = true;
                slot.pending
                    .drain()
                    .into_iter()
                    .map(|(lane, (j, _))| (lane, j))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        self.shared.wake.notify_all();
        let deadline = Instant::now() + grace;
        let mut results = Vec::new();
        let handle = self.handle.take();
        let exit = match handle {
            Some(h) => {
                while !h.is_finished() && Instant::now() < deadline {
                    if let Some(r) = self.wait_result(Duration::from_millis(50)) {
                        results.push(r);
                    }
                }
                if h.is_finished() {
                    h.join().ok()
                } else {
                    tracing::warn!(
                        grace_s = grace.as_secs_f64(),
                        "the analyst did not stop in time; leaving it"
                    );
                    None
                }
            }
            None => None,
        };
        results.extend(self.results.try_iter());
        (exit, results, dropped)
    }
}

struct Ready {
    model_id: String,
    kind: VlmKind,
    load: Option<LoadSummary>,
    failures: Vec<(String, String)>,
}

/// Hooks of one analysis: the schema constraint, the deadline, and cancellation.
struct AnalysisHooks<'a> {
    constraint: Option<JsonSchemaConstraint>,
    constrained: bool,
    constraint_error: Option<String>,
    deadline: Instant,
    cancel: &'a AtomicBool,
    timed_out: bool,
}

impl GenerationHooks for AnalysisHooks<'_> {
    fn mask_logits(&mut self, logits: &mut [f32]) -> surveil_models::Result<()> {
        match self.constraint.as_mut() {
            Some(c) => c.mask(logits),
            None => Ok(()),
        }
    }

    fn on_token(&mut self, token: u32, text: &str) -> ControlFlow<()> {
        if let Some(c) = self.constraint.as_mut() {
            if let Err(e) = c.commit(token, text) {
                self.constraint_error = Some(e.to_string());
                return ControlFlow::Break(());
            }
        }
        if self.cancelled() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }
}

/// The model the thread serves: loaded and owned through the manager, or given.
enum Resident {
    Managed(Box<ModelManager>),
    Given(Box<dyn Vlm>),
}

impl Resident {
    fn vlm(&self) -> Option<&dyn Vlm> {
        match self {
            Resident::Managed(m) => m.vlm(),
            Resident::Given(v) => Some(v.as_ref()),
        }
    }

    fn memory(&self) -> MemoryReport {
        match self {
            Resident::Managed(m) => m.memory().clone(),
            Resident::Given(_) => MemoryReport::new(),
        }
    }

    fn record_memory(&mut self, label: &str) {
        if let Resident::Managed(m) = self {
            m.record_memory(label);
        }
    }

    fn unload(&mut self) {
        if let Resident::Managed(m) = self {
            m.unload();
        }
    }
}

fn analyst_thread<C: Send>(
    config: AnalystConfig,
    given: Option<Box<dyn Vlm>>,
    shared: Arc<Shared<C>>,
    ready: Sender<Result<Ready>>,
    results: Sender<AnalysisResult<C>>,
) -> AnalystExit {
    let (mut manager, load, failures) = match given {
        Some(vlm) => (Resident::Given(vlm), None, Vec::new()),
        None => {
            let mut m = ModelManager::new();
            let loaded = m
                .load_with_fallback(
                    &config.model,
                    &config.fallback_models,
                    config.enable_fallback,
                    &config.load,
                )
                .map(|(summary, failures)| (summary.clone(), failures));
            match loaded {
                Ok((load, failures)) => (Resident::Managed(Box::new(m)), Some(load), failures),
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                    return AnalystExit {
                        memory: m.memory().clone(),
                        analyses: 0,
                    };
                }
            }
        }
    };
    let Some(vlm) = manager.vlm() else {
        let _ = ready.send(Err(OrchestratorError::Config(
            "the model loaded but has no text side".into(),
        )));
        manager.unload();
        return AnalystExit {
            memory: manager.memory(),
            analyses: 0,
        };
    };
    let model_id = vlm.model_id().to_string();
    let kind = vlm.kind();
    let _ = ready.send(Ok(Ready {
        model_id: model_id.clone(),
        kind,
        load,
        failures,
    }));
    let mut analyses = 0u64;
    let mut first_inference_recorded = false;
    // The token trie of the constraint: built at the first analysis, kept while the model is
    // resident, dropped before it is unloaded.
    let mut trie: Option<Arc<ConstraintVocabulary>> = None;
    loop {
        let job = {
            let Ok(mut slot) = shared.slot.lock() else {
                break;
            };
            loop {
                if slot.stop {
                    break None;
                }
                if let Some((_, job)) = slot.pending.pop() {
                    shared.busy.store(true, Ordering::SeqCst);
                    break Some(job);
                }
                slot = match shared.wake.wait(slot) {
                    Ok(s) => s,
                    Err(_) => break None,
                };
            }
        };
        let Some((job, submitted)) = job else {
            break;
        };
        let Some(vlm) = manager.vlm() else {
            break;
        };
        let result = analyse(
            vlm,
            &config,
            job,
            submitted,
            &shared.cancel,
            &model_id,
            &mut trie,
        );
        analyses += 1;
        if !first_inference_recorded {
            manager.record_memory("after_first_inference");
            first_inference_recorded = true;
        }
        shared.busy.store(false, Ordering::SeqCst);
        if results.send(result).is_err() {
            break;
        }
    }
    shared.busy.store(false, Ordering::SeqCst);
    drop(trie);
    manager.unload();
    AnalystExit {
        memory: manager.memory(),
        analyses,
    }
}

fn analyse<C>(
    vlm: &dyn Vlm,
    config: &AnalystConfig,
    job: AnalysisJob<C>,
    submitted: Instant,
    cancel: &AtomicBool,
    model_id: &str,
    trie: &mut Option<Arc<ConstraintVocabulary>>,
) -> AnalysisResult<C> {
    let _span =
        tracing::info_span!("vlm_analysis", model = model_id, trigger = %job.trigger).entered();
    let kind = vlm.kind();
    let constrained = config.constrained && kind != VlmKind::Captioner;
    let mut constraint_error = None;
    let constraint = if constrained {
        let start = if kind == VlmKind::Thinking {
            // Half of the token budget for the reasoning, the rest for the JSON answer.
            ConstraintStart::after_text(THINK_END, config.generation.max_new_tokens / 2)
        } else {
            ConstraintStart::Immediately
        };
        let stops = vlm.tokenizer().stop_token_ids();
        let built = match (trie.as_ref(), vlm.tokenizer().vocabulary()) {
            (Some(t), _) => Some(Ok(t.clone())),
            (None, Some(vocab)) => Some(ConstraintVocabulary::shared(vocab)),
            (None, None) => {
                tracing::debug!(
                    "the tokenizer exposes no byte vocabulary: answers are not constrained"
                );
                None
            }
        };
        match built.map(|t| {
            t.and_then(|t| {
                *trie = Some(t.clone());
                JsonSchemaConstraint::with_vocabulary(&verdict_json_schema(), t, &stops, start)
            })
        }) {
            // The document must end within the token budget, not be cut off by it.
            Some(Ok(c)) => Some(c.with_token_budget(config.generation.max_new_tokens)),
            Some(Err(e)) => {
                constraint_error = Some(format!("cannot build the JSON constraint: {e}"));
                None
            }
            None => None,
        }
    } else {
        None
    };
    let mut hooks = AnalysisHooks {
        constrained: constraint.is_some(),
        constraint,
        constraint_error: None,
        deadline: Instant::now() + config.timeout,
        cancel,
        timed_out: false,
    };
    // The frame comes first; a model that takes fewer images (a captioner) gets the first ones.
    let images = &job.images[..job.images.len().min(vlm.max_images())];
    let request = VlmRequest {
        images,
        system: Some(job.system.as_str()),
        prompt: &job.prompt,
    };
    // A model that panics is one failed analysis, not a lost analyst thread.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vlm.analyse(&request, &config.generation, &mut hooks)
    }))
    .unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(surveil_models::ModelError::InvalidInput(format!(
            "the model panicked: {what}"
        )))
    });
    hooks.timed_out = Instant::now() >= hooks.deadline && !cancel.load(Ordering::SeqCst);
    let mut record = VlmCallRecord {
        model: model_id.to_string(),
        trigger: job.trigger.clone(),
        outcome: VlmOutcome::Ok,
        error: constraint_error.or(hooks.constraint_error.take()),
        raw_text: String::new(),
        reasoning: None,
        tokens: 0,
        images: images.len(),
        prompt_tokens: 0,
        vision_s: 0.0,
        ttft_s: 0.0,
        decode_tokens_per_s: 0.0,
        total_s: 0.0,
        constrained: hooks.constrained,
    };
    let verdict = match outcome {
        Err(e) => {
            record.outcome = VlmOutcome::Error;
            record.error = Some(e.to_string());
            None
        }
        Ok(generation) => {
            fill_record(&mut record, &generation);
            if generation.stop_reason == StopReason::Cancelled {
                record.outcome = if hooks.timed_out {
                    VlmOutcome::Timeout
                } else {
                    VlmOutcome::Cancelled
                };
                record.error = Some(match record.outcome {
                    VlmOutcome::Timeout => format!(
                        "no verdict within {:.0} s (orchestration.vlm_timeout_seconds)",
                        config.timeout.as_secs_f64()
                    ),
                    _ => "abandoned: the run is stopping".to_string(),
                });
                None
            } else if kind == VlmKind::Captioner {
                Some(ParsedVerdict::parsed(caption_verdict(
                    &generation.text,
                    &job.observations,
                )))
            } else {
                let parsed = parse_verdict(&generation.text);
                if let VerdictSource::ParseFailed { reason, .. } = &parsed.source {
                    record.outcome = VlmOutcome::ParseFailed;
                    record.error = Some(if generation.reasoning_unfinished {
                        "generation stopped inside the reasoning span: no answer".into()
                    } else {
                        reason.clone()
                    });
                }
                Some(parsed)
            }
        }
    };
    record.total_s = submitted.elapsed().as_secs_f64();
    tracing::info!(
        outcome = ?record.outcome,
        tokens = record.tokens,
        total_s = record.total_s,
        "analysis done"
    );
    AnalysisResult {
        verdict,
        record,
        context: job.context,
    }
}

fn fill_record(record: &mut VlmCallRecord, g: &Generation) {
    record.raw_text = g.text.clone();
    record.reasoning = g.reasoning.clone();
    record.tokens = g.tokens.len();
    record.prompt_tokens = g.timings.prompt_tokens;
    record.vision_s = g.timings.vision_s;
    record.ttft_s = g.timings.time_to_first_token_s;
    record.decode_tokens_per_s = g.timings.decode_tokens_per_s;
}
