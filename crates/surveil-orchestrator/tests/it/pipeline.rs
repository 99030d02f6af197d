//! The whole pipeline on the sample clip with the real detector and tracker, and test-double
//! models that answer, fail, or never finish.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use surveil_config::{ConfigLoader, SystemConfig};
use surveil_models::generation::{GenerationParams, GenerationStats, StopReason};
use surveil_models::tokenizer::{TextTokenizer, Vocabulary};
use surveil_models::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};
use surveil_models::{ModelError, Result as ModelResult};
use surveil_orchestrator::pipeline::NoObserver;
use surveil_orchestrator::{
    run_with_sinks, AlertLevel, Event, EventKind, EventSink, ModelChoice, OrchestratorError,
    RunObserver, RunOptions, RunProgress,
};
use surveil_vision::FfmpegOptions;

/// An asset of the cache (a file, or a folder of files such as `yolov3-tiny`): `None`
/// (skipped, with a message) when missing on a developer's machine; a failure under CI (`CI`
/// set to a non-empty value other than `false` or `0`).
pub(crate) fn asset(rel: &str) -> Option<PathBuf> {
    let p = surveil_config::paths::asset(rel);
    let present =
        p.is_file() || std::fs::read_dir(&p).is_ok_and(|mut entries| entries.next().is_some());
    if present {
        return Some(p);
    }
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = ci.trim();
    if !(ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false")) {
        panic!(
            "asset {} is missing under CI={ci} (scripts/setup.sh fetches it)",
            p.display()
        );
    }
    eprintln!(
        "skipped: asset {} is missing (run scripts/setup.sh)",
        p.display()
    );
    None
}

/// A byte tokenizer without a vocabulary, for fake models.
pub(crate) struct NoVocab;

impl TextTokenizer for NoVocab {
    fn encode(&self, text: &str) -> ModelResult<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> ModelResult<String> {
        Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
    }
    fn vocabulary(&self) -> Option<&Vocabulary> {
        None
    }
    fn stop_token_ids(&self) -> Vec<u32> {
        vec![]
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Behaviour {
    /// Answers with a verdict of this level after checking the request.
    Answer(&'static str),
    /// Fails every call.
    Fail,
    /// Works until the hooks cancel it.
    Hang,
}

struct FakeVlm {
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
    tokenizer: NoVocab,
}

impl Vlm for FakeVlm {
    fn model_id(&self) -> &str {
        "fake-vlm"
    }
    fn kind(&self) -> VlmKind {
        VlmKind::Instruction
    }
    fn tokenizer(&self) -> &dyn TextTokenizer {
        &self.tokenizer
    }
    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        _params: &GenerationParams,
        hooks: &mut dyn GenerationHooks,
    ) -> ModelResult<Generation> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert!(!request.images.is_empty(), "the frame is always given");
        assert!(
            request.prompt.contains("Camera \"aisle-1\""),
            "{}",
            request.prompt
        );
        let text = match self.behaviour {
            Behaviour::Fail => return Err(ModelError::InvalidInput("the model broke".into())),
            Behaviour::Hang => {
                while !hooks.cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Ok(generation(String::new(), StopReason::Cancelled));
            }
            Behaviour::Answer(level) => format!(
                "{{\"suspicion_level\": \"{level}\", \"action_type\": \"potential_theft\", \
                 \"confidence\": 0.9, \"description\": \"a person pockets an item\", \
                 \"reasoning\": \"hand to pocket\", \"recommendations\": [\"check\"]}}"
            ),
        };
        if hooks.on_token(1, &text) == ControlFlow::Break(()) {
            return Ok(generation(text, StopReason::Cancelled));
        }
        Ok(generation(text, StopReason::StopToken(0)))
    }
}

fn generation(text: String, stop_reason: StopReason) -> Generation {
    Generation {
        text,
        reasoning: None,
        reasoning_unfinished: false,
        tokens: vec![1],
        stop_reason,
        timings: GenerationStats::default(),
    }
}

pub(crate) fn config(extra: &[(&str, &str)]) -> SystemConfig {
    let mut loader = ConfigLoader::with_env(std::iter::empty::<(String, String)>())
        .profile(Some("testing"))
        .flag("orchestration.vlm_cooldown_seconds", "0.1", "test")
        .flag("orchestration.vlm_periodic_seconds", "0.2", "test")
        .flag("orchestration.vlm_timeout_seconds", "0.3", "test");
    for (k, v) in extra {
        loader = loader.flag(k, *v, "test");
    }
    loader.load().expect("test config").config
}

pub(crate) fn options(source: &Path, out: &Path, max_frames: u64) -> RunOptions {
    RunOptions {
        source: source.display().to_string(),
        camera: "aisle-1".into(),
        max_frames: Some(max_frames),
        output_dir: out.to_path_buf(),
        detector_dir: surveil_config::paths::asset("yolov3-tiny"),
        ffmpeg: FfmpegOptions::default(),
        analyst_grace: Duration::from_secs(5),
    }
}

pub(crate) fn fake(behaviour: Behaviour) -> (ModelChoice, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let vlm = FakeVlm {
        behaviour,
        calls: calls.clone(),
        tokenizer: NoVocab,
    };
    (ModelChoice::Given(Box::new(vlm)), calls)
}

fn read_events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every events line is JSON"))
        .collect()
}

fn analyses(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events.iter().filter(|e| e["kind"] == "analysis").collect()
}

#[test]
fn pipeline_turns_verdicts_into_alerts_with_frames() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, calls) = fake(Behaviour::Answer("high"));
    let summary = surveil_orchestrator::run(
        &config(&[]),
        &options(&clip, &out, 12),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(summary.frames, 12);
    assert_eq!(summary.end_reason, "max_frames");
    assert!(summary.person_tracks >= 2, "{summary:?}");
    let events = read_events(&out);
    let frames: Vec<_> = events.iter().filter(|e| e["kind"] == "frame").collect();
    assert_eq!(frames.len(), 12);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["frame_id"], i as u64);
        assert_eq!(f["camera"], "aisle-1");
        for key in [
            "persons",
            "tracks",
            "tool_observations",
            "alert_level",
            "actions",
        ] {
            assert!(!f[key].is_null(), "frame event without {key}: {f}");
        }
    }
    let done = analyses(&events);
    assert!(!done.is_empty() && done.len() == calls.load(Ordering::SeqCst));
    for a in &done {
        assert_eq!(a["vlm"]["outcome"], "ok");
        assert_eq!(a["vlm_analysis"]["suspicion_level"], "high");
        // High suspicion with confidence 0.9 over the default threshold, potential theft: alert.
        assert_eq!(a["alert_level"], "alert", "{a}");
        let png = a["snapshot"].as_str().expect("an alert frame is saved");
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() > 0);
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["frames"], 12);
    assert_eq!(s["alerts_by_level"]["alert"], done.len() as u64);
    assert!(
        s["metrics"]["latency"]["detect"]["p50_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn pipeline_records_a_failing_model_and_goes_on() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, calls) = fake(Behaviour::Fail);
    let summary = surveil_orchestrator::run(
        &config(&[]),
        &options(&clip, &out, 10),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(summary.frames, 10, "the frames go on while the model fails");
    let events = read_events(&out);
    let failed = analyses(&events);
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "more than one call was made"
    );
    assert_eq!(failed.len(), calls.load(Ordering::SeqCst));
    for a in failed {
        assert_eq!(a["vlm"]["outcome"], "error");
        assert!(a["vlm"]["error"]
            .as_str()
            .unwrap()
            .contains("the model broke"));
        assert!(a["vlm_analysis"].is_null());
    }
    assert_eq!(
        summary.vlm.outcomes.get("error").copied(),
        Some(calls.load(Ordering::SeqCst) as u64)
    );
}

#[test]
fn pipeline_abandons_an_analysis_past_its_timeout() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, calls) = fake(Behaviour::Hang);
    let summary = surveil_orchestrator::run(
        &config(&[]),
        &options(&clip, &out, 10),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(summary.frames, 10);
    let events = read_events(&out);
    let late = analyses(&events);
    assert!(!late.is_empty());
    assert!(calls.load(Ordering::SeqCst) >= late.len());
    for a in late {
        assert_eq!(a["vlm"]["outcome"], "timeout", "{a}");
        assert!(a["vlm"]["total_s"].as_f64().unwrap() >= 0.3);
    }
}

/// Sets the stop flag after a number of frames, as the signal handler does.
struct StopAfter {
    frames: u64,
    stop: Arc<AtomicBool>,
}

impl RunObserver for StopAfter {
    fn frame_done(&mut self, p: &RunProgress) {
        if p.frames >= self.frames {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn pipeline_stops_on_request_and_writes_the_summary() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let stop = Arc::new(AtomicBool::new(false));
    let (model, _) = fake(Behaviour::Hang);
    let summary = surveil_orchestrator::run(
        &config(&[("orchestration.vlm_timeout_seconds", "600")]),
        &options(&clip, &out, 500),
        model,
        stop.clone(),
        &mut StopAfter {
            frames: 5,
            stop: stop.clone(),
        },
    )
    .unwrap();
    assert_eq!(summary.end_reason, "interrupted");
    assert_eq!(summary.frames, 5);
    let events = read_events(&out);
    assert_eq!(events.iter().filter(|e| e["kind"] == "frame").count(), 5);
    // The hanging analysis was abandoned, not waited for (600 s).
    for a in analyses(&events) {
        assert_eq!(a["vlm"]["outcome"], "cancelled");
    }
    assert!(out.join("summary.json").is_file());
}

#[test]
fn a_damaged_file_ends_as_damaged_source_with_its_decode_errors() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The first 100 kB of the clip: a few frames, then ffmpeg's decode errors.
    let cut = dir.path().join("cut.avi");
    let bytes = std::fs::read(&clip).unwrap();
    std::fs::write(&cut, &bytes[..100_000]).unwrap();
    let out = dir.path().join("run");
    let summary = surveil_orchestrator::run(
        &config(&[]),
        &options(&cut, &out, 500),
        ModelChoice::None,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .expect("a damaged file is no failure of the run");
    let cam = &summary.cameras["aisle-1"];
    assert!(cam.frames > 0 && cam.frames < 500, "{cam:?}");
    assert!(cam.decode_errors > 0, "{cam:?}");
    assert_eq!(
        cam.end_reason,
        surveil_orchestrator::pipeline::DAMAGED_SOURCE
    );
    assert_eq!(cam.error, None);
    assert_eq!(summary.end_reason, "damaged_source");
    assert_eq!(summary.decode_errors, cam.decode_errors);
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["end_reason"], "damaged_source");
    assert_eq!(on_disk["decode_errors"], cam.decode_errors);
    assert_eq!(
        on_disk["cameras"]["aisle-1"]["decode_errors"],
        cam.decode_errors
    );

    // The intact clip to its end... of max_frames: no decode errors, a clean end.
    let out = dir.path().join("intact");
    let summary = surveil_orchestrator::run(
        &config(&[]),
        &options(&clip, &out, 3),
        ModelChoice::None,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(summary.end_reason, "max_frames");
    assert_eq!(summary.decode_errors, 0);
    assert_eq!(summary.cameras["aisle-1"].decode_errors, 0);
}

#[test]
fn a_previous_runs_events_are_never_overwritten() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.jsonl"), "{\"kept\":true}\n").unwrap();
    let (model, _) = fake(Behaviour::Fail);
    let err = surveil_orchestrator::run(
        &config(&[]),
        &options(&clip, dir.path(), 3),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
    )
    .unwrap_err();
    assert!(err.to_string().contains("events.jsonl"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap(),
        "{\"kept\":true}\n"
    );
}

/// A caller's sink: every event it is given as a JSON line, and how often `finish` was called.
#[derive(Default)]
struct Collect {
    lines: Vec<String>,
    finished: usize,
}

impl EventSink for Collect {
    fn write(&mut self, event: &Event) -> surveil_orchestrator::Result<()> {
        self.lines.push(serde_json::to_string(event).unwrap());
        Ok(())
    }
    fn finish(&mut self) -> surveil_orchestrator::Result<()> {
        self.finished += 1;
        Ok(())
    }
}

#[test]
// The sinks are closures returning the crate's `Result`, whose error is large.
#[allow(clippy::result_large_err)]
fn sinks_of_the_caller_get_every_event_in_order() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, calls) = fake(Behaviour::Answer("high"));
    let mut collect = Collect::default();
    let mut alert_frames = Vec::new();
    let mut alerts = |e: &Event| {
        if e.kind == EventKind::Analysis && e.alert_level >= AlertLevel::Alert {
            alert_frames.push(e.frame_id);
        }
        Ok(())
    };
    let summary = run_with_sinks(
        &config(&[]),
        &options(&clip, &out, 8),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [&mut collect, &mut alerts],
    )
    .unwrap();
    assert_eq!(summary.frames, 8);
    // The same events as events.jsonl, in the same order, and `finish` once.
    let file = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    let file_lines: Vec<&str> = file.lines().collect();
    assert!(
        collect.lines == file_lines,
        "the sink's events differ from events.jsonl"
    );
    assert_eq!(collect.lines.len() as u64, summary.events);
    assert_eq!(collect.finished, 1);
    let written = read_events(&out);
    // The closure saw each analysis: the fake model's high suspicion is an alert.
    let analysed = calls.load(Ordering::SeqCst);
    assert!(analysed >= 1);
    assert_eq!(alert_frames.len(), analysed);
    assert_eq!(alert_frames.len(), analyses(&written).len());
}

#[test]
// The sinks are closures returning the crate's `Result`, whose error is large.
#[allow(clippy::result_large_err)]
fn a_failing_sink_of_the_caller_ends_the_run_with_its_error() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, _) = fake(Behaviour::Answer("low"));
    let mut seen = 0u64;
    let mut fail_on_third = |_: &Event| {
        seen += 1;
        if seen == 3 {
            return Err(OrchestratorError::Config("the sink is full".into()));
        }
        Ok(())
    };
    let err = run_with_sinks(
        &config(&[]),
        &options(&clip, &out, 50),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [&mut fail_on_third],
    )
    .unwrap_err();
    assert!(err.to_string().contains("the sink is full"), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["end_reason"], "error");
    assert!(s["error"].as_str().unwrap().contains("the sink is full"));
    // The loop stopped at the refused event (events.jsonl is written first, so it holds it);
    // only the results of analyses already handed to the model may follow.
    let events = read_events(&out);
    assert!(events.len() >= 3, "{}", events.len());
    assert!(events[3..].iter().all(|e| e["kind"] == "analysis"));
    assert_eq!(s["events"], events.len() as u64);
}

/// A sink that reports on itself in the summary, under `name`.
struct Reporting {
    name: &'static str,
    events: u64,
}

impl EventSink for Reporting {
    fn write(&mut self, _: &Event) -> surveil_orchestrator::Result<()> {
        self.events += 1;
        Ok(())
    }
    fn summary_section(&self) -> Option<(String, serde_json::Value)> {
        Some((
            self.name.into(),
            serde_json::json!({ "events": self.events }),
        ))
    }
}

#[test]
fn sinks_add_their_sections_to_the_summary_never_over_its_own_keys() {
    let (Some(clip), Some(_)) = (asset("video/vtest.avi"), asset("yolov3-tiny")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, _) = fake(Behaviour::Answer("low"));
    let mut reporting = Reporting {
        name: "reporting",
        events: 0,
    };
    let mut clashing = Reporting {
        name: "frames",
        events: 0,
    };
    let summary = run_with_sinks(
        &config(&[]),
        &options(&clip, &out, 4),
        model,
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [&mut reporting, &mut clashing],
    )
    .unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["reporting"]["events"], summary.events);
    assert_eq!(summary.sinks["reporting"]["events"], summary.events);
    // `frames` is the summary's own: the sink's section is left out.
    assert_eq!(on_disk["frames"], 4);
    assert!(!summary.sinks.contains_key("frames"));
}
