//! Runs of several cameras: two streams on the sample clip, one model shared by both (the
//! `testing` profile's git-base-coco with dummy weights, or a test double), one events file,
//! a summary per camera.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surveil_config::{ConfigLoader, SystemConfig, ZoneConfig, ZoneCoordinates};
use surveil_models::generation::{GenerationParams, GenerationStats, StopReason};
use surveil_models::tokenizer::TextTokenizer;
use surveil_models::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};
use surveil_models::{LoadSummary, Result as ModelResult};
use surveil_orchestrator::metrics::Stage;
use surveil_orchestrator::pipeline::NoObserver;
use surveil_orchestrator::{
    run_with_sinks, CameraOptions, CameraProgress, ModelChoice, MultiCameraOptions,
    OrchestratorError, RunObserver, RunProgress,
};

use crate::pipeline::NoVocab;

/// The sample clip and the detector, or `None` (skipped with a message) when the asset cache
/// lacks them on a developer's machine; a failure under CI.
fn clip_and_detector() -> Option<(PathBuf, PathBuf)> {
    let clip = surveil_config::paths::asset("video/vtest.avi");
    let detector = surveil_config::paths::asset("yolov3-tiny");
    let present = clip.is_file() && detector.join("yolov3-tiny.weights").is_file();
    if present {
        return Some((clip, detector));
    }
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = ci.trim();
    if !(ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false")) {
        panic!("the sample clip or the detector is missing under CI={ci} (scripts/setup.sh)");
    }
    eprintln!("skipped: the sample clip or the detector is missing (run scripts/setup.sh)");
    None
}

/// The `testing` profile with dummy weights and a quick trigger; of the environment, only
/// where the asset cache is (git-base-coco's tokenizer is there).
fn config() -> SystemConfig {
    let env = std::env::vars().filter(|(k, _)| k == "HOME" || k == "SURVEIL_ASSETS");
    ConfigLoader::with_env(env)
        .profile(Some("testing"))
        .flag("vlm.weights", "dummy", "test")
        .flag("orchestration.vlm_cooldown_seconds", "0.1", "test")
        .flag("orchestration.vlm_periodic_seconds", "0.2", "test")
        .load()
        .expect("test config")
        .config
}

fn two_cameras(clip: &Path, out: &Path, detector: &Path, max_frames: u64) -> MultiCameraOptions {
    let clip = clip.display().to_string();
    let mut options = MultiCameraOptions::new(
        vec![
            CameraOptions::new("entrance", clip.clone()),
            CameraOptions::new("till", clip),
        ],
        out,
        detector,
    );
    options.max_frames = Some(max_frames);
    options.analyst_grace = Duration::from_secs(5);
    options
}

fn read_events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every events line is JSON"))
        .collect()
}

/// Everything the observer is told, by camera.
#[derive(Default)]
struct Watch {
    models_loaded: usize,
    opened: Vec<String>,
    frames_done: u64,
    progress: BTreeMap<String, Vec<CameraProgress>>,
    stages: BTreeMap<String, BTreeMap<String, usize>>,
    queue_reports: usize,
}

impl RunObserver for Watch {
    fn model_loaded(&mut self, _: &LoadSummary) {
        self.models_loaded += 1;
    }
    fn camera_opened(&mut self, camera: &str, description: &str, total: Option<u64>) {
        assert!(description.ends_with("vtest.avi"), "{description}");
        // The clip's 795 frames, capped by max_frames.
        assert_eq!(total, Some(6));
        self.opened.push(camera.to_string());
    }
    fn frame_done(&mut self, p: &RunProgress) {
        self.frames_done = p.frames;
        assert_eq!(p.total_frames, Some(2 * 6), "totals over the cameras");
    }
    fn camera_progress(&mut self, p: &CameraProgress) {
        self.progress
            .entry(p.camera.clone())
            .or_default()
            .push(p.clone());
    }
    fn stage_timed(&mut self, camera: &str, stage: Stage, _: Duration) {
        let stage = serde_json::to_value(stage)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        *self
            .stages
            .entry(camera.to_string())
            .or_default()
            .entry(stage)
            .or_default() += 1;
    }
    fn analysis_queue(&mut self, pending: usize) {
        assert!(
            pending <= 2,
            "one waiting scene per camera at most: {pending}"
        );
        self.queue_reports += 1;
    }
}

#[test]
fn two_cameras_share_one_loaded_model_and_one_events_file() {
    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut watch = Watch::default();
    let summary = run_with_sinks(
        &config(),
        &two_cameras(&clip, &out, &detector, 6),
        ModelChoice::FromConfig(None),
        Arc::new(AtomicBool::new(false)),
        &mut watch,
        &mut [],
    )
    .unwrap();

    // One model for both cameras: loaded once, one load cycle measured.
    assert_eq!(watch.models_loaded, 1);
    let model = summary.model.as_ref().expect("the model's load summary");
    assert_eq!(model.model, "git-base-coco");
    let labels: Vec<&str> = summary
        .memory
        .snapshots
        .as_ref()
        .unwrap()
        .snapshots()
        .iter()
        .map(|s| s.label())
        .collect();
    assert_eq!(
        labels.iter().filter(|l| **l == "after_load").count(),
        1,
        "{labels:?}"
    );

    // Totals over the cameras, and each camera on its own.
    assert_eq!(watch.opened, ["entrance", "till"]);
    assert_eq!(summary.frames, 12);
    assert_eq!(watch.frames_done, 12);
    assert_eq!(summary.end_reason, "max_frames");
    assert_eq!(summary.camera, "entrance, till");
    assert_eq!(summary.cameras.len(), 2);
    let mut analyses = 0;
    let mut skipped = 0;
    for (name, cam) in &summary.cameras {
        assert_eq!(cam.frames, 6, "{name}");
        assert_eq!(cam.end_reason, "max_frames", "{name}");
        assert!(cam.error.is_none(), "{name}");
        assert!(cam.source.ends_with("vtest.avi"), "{name}: {}", cam.source);
        assert!(cam.frames_decoded >= 6, "{name}");
        assert!(cam.fps > 0.0, "{name}");
        // The sample clip has people from its first frame: each camera handed a scene over.
        assert!(cam.analyses + cam.analyses_skipped >= 1, "{name}: {cam:?}");
        assert_eq!(
            cam.alerts_by_level.values().sum::<u64>(),
            6 + cam.analyses,
            "{name}: one level per frame and per analysis"
        );
        analyses += cam.analyses;
        skipped += cam.analyses_skipped;
        let progress = &watch.progress[name];
        assert_eq!(progress.len(), 6, "{name}");
        assert_eq!(progress.last().unwrap().frames, 6, "{name}");
        assert!(progress.iter().all(|p| p.queue_depth.is_some()), "{name}");
        let stages = &watch.stages[name];
        for stage in [
            "decode", "detect", "track", "tools", "trigger", "decide", "sinks", "frame",
        ] {
            assert_eq!(stages.get(stage), Some(&6), "{name}: {stage} per frame");
        }
    }
    assert!(analyses >= 1, "the analysis in flight at the end finishes");
    assert_eq!(summary.vlm.outcomes.values().sum::<u64>(), analyses);
    assert_eq!(summary.vlm.dropped, skipped);

    // One events file: every frame of each camera, and analyses naming their camera.
    let events = read_events(&out);
    for name in ["entrance", "till"] {
        let frame_ids: Vec<u64> = events
            .iter()
            .filter(|e| e["kind"] == "frame" && e["camera"] == name)
            .map(|e| e["frame_id"].as_u64().unwrap())
            .collect();
        assert_eq!(frame_ids, [0, 1, 2, 3, 4, 5], "{name}");
    }
    let done: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "analysis").collect();
    assert_eq!(done.len() as u64, analyses);
    for a in &done {
        let camera = a["camera"].as_str().unwrap();
        assert!(summary.cameras.contains_key(camera), "{a}");
        assert_eq!(a["vlm"]["model"], "git-base-coco");
    }
    assert_eq!(summary.events, events.len() as u64);
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["cameras"]["till"]["frames"], 6);
    assert_eq!(on_disk["cameras"]["entrance"]["end_reason"], "max_frames");
}

/// An instruction model that answers at once and notes the camera of each prompt.
struct NotingModel {
    cameras: Arc<Mutex<Vec<String>>>,
    tokenizer: NoVocab,
}

impl Vlm for NotingModel {
    fn model_id(&self) -> &str {
        "noting-model"
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
        let camera = request
            .prompt
            .split("Camera \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        self.cameras.lock().unwrap().push(camera.to_string());
        let text = "{\"suspicion_level\": \"low\", \"action_type\": \"normal\", \
                    \"confidence\": 0.9, \"description\": \"shoppers\", \
                    \"reasoning\": \"walking\", \"recommendations\": []}"
            .to_string();
        let stop_reason = match hooks.on_token(1, &text) {
            ControlFlow::Break(()) => StopReason::Cancelled,
            ControlFlow::Continue(()) => StopReason::StopToken(0),
        };
        Ok(Generation {
            text,
            reasoning: None,
            reasoning_unfinished: false,
            tokens: vec![1],
            stop_reason,
            timings: GenerationStats::default(),
        })
    }
}

#[test]
fn each_camera_has_its_own_zones_and_both_are_analysed() {
    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut options = two_cameras(&clip, &out, &detector, 10);
    // The whole view of `till` is a staff-only zone; `entrance` has no zone.
    options.cameras[1].zones.push(ZoneConfig {
        name: "behind-the-counter".into(),
        camera: None,
        polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
        coordinates: ZoneCoordinates::Normalized,
        restricted: true,
        max_dwell_seconds: None,
    });
    let cameras = Arc::new(Mutex::new(Vec::new()));
    let model = NotingModel {
        cameras: cameras.clone(),
        tokenizer: NoVocab,
    };
    let summary = run_with_sinks(
        &config(),
        &options,
        ModelChoice::Given(Box::new(model)),
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [],
    )
    .unwrap();
    assert_eq!(summary.frames, 20);
    let events = read_events(&out);
    let zone_cues = |camera: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "frame" && e["camera"] == camera)
            .flat_map(|e| e["tool_observations"].as_array().unwrap().iter())
            .filter(|o| o["tool"] == "zones")
            .count()
    };
    assert_eq!(zone_cues("entrance"), 0);
    assert!(zone_cues("till") > 0, "the zone of `till` applies to it");
    // The one model was asked about both cameras, each time with the camera's own prompt.
    let asked = cameras.lock().unwrap().clone();
    for name in ["entrance", "till"] {
        assert!(
            asked.iter().any(|c| c == name),
            "{name} never analysed: {asked:?}"
        );
        let analysed = events
            .iter()
            .filter(|e| e["kind"] == "analysis" && e["camera"] == name)
            .count() as u64;
        assert_eq!(analysed, summary.cameras[name].analyses, "{name}");
    }
    assert_eq!(
        asked.len() as u64,
        summary.cameras.values().map(|c| c.analyses).sum::<u64>()
    );
}

#[test]
fn a_camera_whose_source_cannot_be_opened_fails_the_run_naming_it() {
    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut options = two_cameras(&clip, &out, &detector, 3);
    let missing = dir.path().join("no-such-clip.mp4");
    options.cameras[1].source = missing.display().to_string();
    let cameras = Arc::new(Mutex::new(Vec::new()));
    let model = NotingModel {
        cameras: cameras.clone(),
        tokenizer: NoVocab,
    };
    let err = run_with_sinks(
        &config(),
        &options,
        ModelChoice::Given(Box::new(model)),
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("camera `till`: "), "{msg}");
    assert!(msg.contains("no-such-clip.mp4"), "{msg}");
    assert!(matches!(err, OrchestratorError::Camera { ref camera, .. } if camera == "till"));
    // Nothing ran, nothing is left.
    assert!(cameras.lock().unwrap().is_empty());
    assert!(!out.exists());
}

#[test]
fn camera_names_must_be_unique() {
    let dir = tempfile::tempdir().unwrap();
    let options = MultiCameraOptions::new(
        vec![
            CameraOptions::new("a", "x.mp4"),
            CameraOptions::new("a", "y.mp4"),
        ],
        dir.path().join("run"),
        dir.path(),
    );
    let err = run_with_sinks(
        &config(),
        &options,
        ModelChoice::FromConfig(None),
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("camera `a` is given twice"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_camera_whose_source_fails_mid_run_ends_alone() {
    use std::os::unix::fs::PermissionsExt as _;

    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // An ffmpeg that delivers three frames of the clip (768 x 576 RGB, 1 327 104 bytes each)
    // and a part of the fourth, then fails.
    let broken = dir.path().join("ffmpeg-breaks");
    std::fs::write(
        &broken,
        "#!/bin/sh\nffmpeg \"$@\" | head -c 4000000\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut options = two_cameras(&clip, &out, &detector, 6);
    options.cameras[1].ffmpeg.ffmpeg_path = broken;
    let model = NotingModel {
        cameras: Arc::new(Mutex::new(Vec::new())),
        tokenizer: NoVocab,
    };
    let summary = run_with_sinks(
        &config(),
        &options,
        ModelChoice::Given(Box::new(model)),
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [],
    )
    .expect("one camera's failure does not fail the run");
    let till = &summary.cameras["till"];
    assert_eq!(till.end_reason, "error", "{till:?}");
    assert_eq!(till.frames, 3);
    let error = till.error.as_deref().unwrap();
    assert!(error.contains("ffmpeg exited"), "{error}");
    let entrance = &summary.cameras["entrance"];
    assert_eq!(entrance.frames, 6, "the other camera went on");
    assert_eq!(entrance.end_reason, "max_frames");
    assert_eq!(summary.end_reason, "max_frames");
    assert!(summary.error.is_none());
    assert_eq!(summary.frames, 9);
    let events = read_events(&out);
    let frames_of = |camera: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "frame" && e["camera"] == camera)
            .count()
    };
    assert_eq!((frames_of("entrance"), frames_of("till")), (6, 3));

    // When every camera's source fails, the run fails, with the first camera's error.
    let out = dir.path().join("run-2");
    let mut options = two_cameras(&clip, &out, &detector, 6);
    for camera in &mut options.cameras {
        camera.ffmpeg.ffmpeg_path = dir.path().join("ffmpeg-breaks");
    }
    let model = NotingModel {
        cameras: Arc::new(Mutex::new(Vec::new())),
        tokenizer: NoVocab,
    };
    let err = run_with_sinks(
        &config(),
        &options,
        ModelChoice::Given(Box::new(model)),
        Arc::new(AtomicBool::new(false)),
        &mut NoObserver,
        &mut [],
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("camera `entrance`: "), "{err}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["end_reason"], "error");
    assert_eq!(s["cameras"]["till"]["end_reason"], "error");
    assert_eq!(s["frames"], 6);
}

/// A loopback port nothing listens on now.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Run `options` without a model on a thread; panic if it has not returned within `limit`
/// (a camera holding up the run would otherwise hang the test).
fn run_within(options: MultiCameraOptions, limit: Duration) -> surveil_orchestrator::RunSummary {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let summary = run_with_sinks(
            &config(),
            &options,
            ModelChoice::None,
            Arc::new(AtomicBool::new(false)),
            &mut NoObserver,
            &mut [],
        );
        let _ = tx.send(summary);
    });
    rx.recv_timeout(limit)
        .expect("the run returned in time")
        .unwrap()
}

#[test]
fn a_camera_that_never_answers_does_not_hold_up_the_others() {
    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut options = MultiCameraOptions::new(
        vec![
            CameraOptions::new("entrance", clip.display().to_string()),
            // A live camera that refuses every connection: retried until the run ends.
            CameraOptions::new(
                "door",
                format!("rtsp://user:secret@127.0.0.1:{}/stream", closed_port()),
            ),
        ],
        &out,
        &detector,
    );
    options.max_frames = Some(4);
    options.late_camera_wait = Duration::from_secs(1);
    let summary = run_within(options, Duration::from_secs(120));
    assert_eq!(summary.frames, 4, "the open camera ran");
    assert_eq!(summary.end_reason, "max_frames");
    let door = &summary.cameras["door"];
    assert_eq!(door.end_reason, surveil_orchestrator::pipeline::NOT_OPENED);
    assert_eq!(door.frames, 0);
    assert!(!door.source.contains("secret"), "{}", door.source);
    // Why: its failed connection attempts and the last one's error, also in the run's note.
    let attempts = door
        .connection_attempts
        .expect("attempts of a camera never opened");
    assert!(attempts >= 1, "{door:?}");
    let last = door.error.as_deref().expect("the last connection error");
    assert!(last.contains("Connection refused"), "{last}");
    assert!(!last.contains("secret"), "{last}");
    let note = summary.error.as_deref().expect("the run names the camera");
    assert!(note.starts_with("camera door never opened ("), "{note}");
    assert!(
        note.contains("Connection refused") && !note.contains("secret"),
        "{note}"
    );
    let entrance = &summary.cameras["entrance"];
    assert_eq!(entrance.frames, 4);
    assert_eq!(entrance.connection_attempts, None);
    assert_eq!(entrance.error, None);
    let events = read_events(&out);
    assert!(events.iter().all(|e| e["camera"] == "entrance"));
}

#[test]
fn a_camera_still_connecting_when_the_run_is_stopped_is_not_opened() {
    let Some((_, detector)) = clip_and_detector() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // One live camera that refuses every connection: the run waits for it until the stop.
    let mut options = MultiCameraOptions::new(
        vec![CameraOptions::new(
            "door",
            format!("rtsp://user:secret@127.0.0.1:{}/stream", closed_port()),
        )],
        &out,
        &detector,
    );
    options.late_camera_wait = Duration::from_secs(60);
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Long enough for a failed attempt or two (0.5 s, then 1 s of backoff).
            std::thread::sleep(Duration::from_millis(2500));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let summary = run_with_sinks(
        &config(),
        &options,
        ModelChoice::None,
        stop,
        &mut NoObserver,
        &mut [],
    )
    .expect("a stop is a success");
    stopper.join().unwrap();
    // The run was stopped: that stays its end (and its exit status 0 in the CLI) ...
    assert_eq!(summary.end_reason, "interrupted");
    assert_eq!(summary.frames, 0);
    // ... but the camera did not take part, and the summary says why.
    let door = &summary.cameras["door"];
    assert_eq!(door.end_reason, surveil_orchestrator::pipeline::NOT_OPENED);
    assert!(door.connection_attempts.unwrap() >= 1, "{door:?}");
    let last = door.error.as_deref().expect("the last connection error");
    assert!(last.contains("Connection refused"), "{last}");
    assert!(!last.contains("secret"), "{last}");
    let note = summary.error.as_deref().expect("the run names the camera");
    assert!(note.starts_with("camera door never opened ("), "{note}");
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["end_reason"], "interrupted");
    assert_eq!(on_disk["cameras"]["door"]["end_reason"], "not_opened");
    assert_eq!(
        on_disk["cameras"]["door"]["connection_attempts"],
        door.connection_attempts.unwrap()
    );
    assert_eq!(on_disk["error"], note);
}

#[test]
fn a_camera_that_answers_late_joins_the_run() {
    let Some((clip, detector)) = clip_and_detector() else {
        return;
    };
    // The clip over HTTP from a server that starts 2 s after the run.
    let port = closed_port();
    let served = clip.parent().unwrap().to_path_buf();
    let name = clip.file_name().unwrap().to_str().unwrap().to_string();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(served)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 serves the clip")
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut options = MultiCameraOptions::new(
        vec![
            CameraOptions::new("entrance", clip.display().to_string()),
            CameraOptions::new("yard", format!("http://127.0.0.1:{port}/{name}")),
        ],
        &out,
        &detector,
    );
    // The file camera alone would be done long before the other answers: make it last.
    options.max_frames = Some(100);
    options.late_camera_wait = Duration::from_millis(200);
    let summary = run_within(options, Duration::from_secs(300));
    server.join().unwrap().kill().ok();
    let yard = &summary.cameras["yard"];
    assert!(yard.frames > 0, "the late camera joined: {yard:?}");
    assert_eq!(summary.cameras["entrance"].frames, 100);
    let events = read_events(&out);
    let first_yard = events.iter().position(|e| e["camera"] == "yard").unwrap();
    assert!(first_yard > 0, "the run started without it");
    assert!(yard.fps > 0.0 && yard.fps.is_finite());
}
