//! The Prometheus exporter: events, progress and timings in, series out (read back through
//! the registry and through the text format); the HTTP endpoint; and a whole pipeline run
//! whose metrics agree with its summary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surveil_orchestrator::event::{VlmCallRecord, VlmOutcome};
use surveil_orchestrator::exporter::{CameraReading, ModelFacts, CONTENT_TYPE};
use surveil_orchestrator::metrics::Stage;
use surveil_orchestrator::{
    run_with_sinks, AlertLevel, Event, EventKind, EventSink, MetricsExporter, OrchestratorError,
    RunObserver, RunProgress,
};

fn event(kind: EventKind, camera: &str, level: AlertLevel) -> Event {
    Event {
        kind,
        frame_id: 0,
        source_time_s: 0.0,
        timestamp: "2025-01-01T00:00:00Z".into(),
        camera: camera.into(),
        persons: 1,
        tracks: Vec::new(),
        tool_observations: Vec::new(),
        tool_failures: Vec::new(),
        alert_level: level,
        needs_review: false,
        rules: Vec::new(),
        vlm_analysis: None,
        vlm: None,
        trigger: None,
        actions: Vec::new(),
        processing_ms: 0.0,
        snapshot: None,
    }
}

/// A frame event whose trigger decision is `trigger` (`persons_present`, `skip:cooldown`).
fn frame(camera: &str, level: AlertLevel, trigger: &str, processing_ms: f64) -> Event {
    Event {
        trigger: Some(trigger.into()),
        processing_ms,
        ..event(EventKind::Frame, camera, level)
    }
}

/// An analysis event of a call asked for by `trigger` that ended with `outcome` after
/// `total_s` (vision 0.5 s, first token at 1.5 s).
fn analysis(
    camera: &str,
    level: AlertLevel,
    trigger: &str,
    outcome: VlmOutcome,
    total_s: f64,
) -> Event {
    Event {
        vlm: Some(VlmCallRecord {
            model: "fake-vlm".into(),
            trigger: trigger.into(),
            outcome,
            error: None,
            raw_text: String::new(),
            reasoning: None,
            tokens: 4,
            images: 1,
            prompt_tokens: 100,
            vision_s: 0.5,
            ttft_s: 1.5,
            decode_tokens_per_s: 10.0,
            total_s,
            constrained: true,
        }),
        processing_ms: total_s * 1e3,
        ..event(EventKind::Analysis, camera, level)
    }
}

/// What one series of the registry holds: a counter's or gauge's value, a histogram's sample
/// count and sum.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sample {
    Value(f64),
    Histogram { count: u64, sum: f64 },
}

/// The series of `name` whose labels are exactly `labels`; `None` when there is none.
fn series(exporter: &MetricsExporter, name: &str, labels: &[(&str, &str)]) -> Option<Sample> {
    let families = exporter.gather();
    let family = families.iter().find(|f| f.name() == name)?;
    let metric = family.get_metric().iter().find(|m| {
        let have: Vec<(&str, &str)> = m
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        let mut want = labels.to_vec();
        want.sort();
        let mut have = have;
        have.sort();
        have == want
    })?;
    use prometheus::proto::MetricType;
    Some(match family.get_field_type() {
        MetricType::COUNTER => Sample::Value(metric.get_counter().get_value()),
        MetricType::GAUGE => Sample::Value(metric.get_gauge().get_value()),
        MetricType::HISTOGRAM => Sample::Histogram {
            count: metric.get_histogram().get_sample_count(),
            sum: metric.get_histogram().get_sample_sum(),
        },
        other => panic!("{name}: unexpected type {other:?}"),
    })
}

/// The value of a counter or gauge series, `None` when absent.
fn value(exporter: &MetricsExporter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match series(exporter, name, labels)? {
        Sample::Value(v) => Some(v),
        Sample::Histogram { .. } => panic!("{name} is a histogram"),
    }
}

/// The sample count of a histogram series (0 when absent).
fn observations(exporter: &MetricsExporter, name: &str, labels: &[(&str, &str)]) -> u64 {
    match series(exporter, name, labels) {
        Some(Sample::Histogram { count, .. }) => count,
        None => 0,
        Some(other) => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// Asserts that a histogram series holds `count` samples summing to `sum` (within 1e-9).
fn assert_histogram(sample: Option<Sample>, count: u64, sum: f64) {
    match sample {
        Some(Sample::Histogram { count: c, sum: s }) => {
            assert_eq!(c, count, "sample count");
            assert!((s - sum).abs() < 1e-9, "sum {s}, expected {sum}");
        }
        other => panic!("expected a histogram of {count} samples, got {other:?}"),
    }
}

fn progress(frames: u64, fps: f64) -> RunProgress {
    RunProgress {
        frames,
        total_frames: None,
        fps,
        alerts: 0,
        analyses: 0,
        elapsed_s: 1.0,
        queue_depth: 0,
    }
}

#[test]
fn events_count_frames_levels_triggers_and_calls_by_camera() {
    let mut m = MetricsExporter::new("testing").unwrap();
    let feed = [
        frame("aisle-1", AlertLevel::Normal, "persons_present", 40.0),
        frame("aisle-1", AlertLevel::Attention, "skip:cooldown", 30.0),
        frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 20.0),
        frame("door", AlertLevel::Normal, "skip:no_persons", 10.0),
        analysis(
            "aisle-1",
            AlertLevel::Alert,
            "persons_present",
            VlmOutcome::Ok,
            3.0,
        ),
        analysis(
            "aisle-1",
            AlertLevel::Normal,
            "tool_cue",
            VlmOutcome::Timeout,
            7.0,
        ),
    ];
    for e in &feed {
        m.write(e).unwrap();
    }
    m.finish().unwrap();
    let a = ("camera", "aisle-1");
    assert_eq!(value(&m, "surveil_frames_total", &[a]), Some(3.0));
    assert_eq!(
        value(&m, "surveil_frames_total", &[("camera", "door")]),
        Some(1.0)
    );
    let events = |kind, level| {
        value(
            &m,
            "surveil_events_total",
            &[a, ("kind", kind), ("level", level)],
        )
    };
    assert_eq!(events("frame", "normal"), Some(2.0));
    assert_eq!(events("frame", "attention"), Some(1.0));
    assert_eq!(events("analysis", "alert"), Some(1.0));
    assert_eq!(events("analysis", "normal"), Some(1.0));
    // Every kind and level of a camera is there from its first event, at zero.
    assert_eq!(events("analysis", "critical"), Some(0.0));
    assert_eq!(
        value(
            &m,
            "surveil_events_total",
            &[("camera", "door"), ("kind", "analysis"), ("level", "alert")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "surveil_analyses_skipped_total",
            &[a, ("reason", "cooldown")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "surveil_analyses_skipped_total",
            &[("camera", "door"), ("reason", "no_persons")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "surveil_vlm_requests_total",
            &[a, ("trigger", "persons_present")]
        ),
        Some(1.0)
    );
    let calls = |trigger, outcome| {
        value(
            &m,
            "surveil_vlm_calls_total",
            &[a, ("trigger", trigger), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("persons_present", "ok"), Some(1.0));
    assert_eq!(calls("tool_cue", "timeout"), Some(1.0));
    assert_eq!(calls("persons_present", "error"), None);
    assert_histogram(series(&m, "surveil_vlm_seconds", &[a]), 2, 10.0);
    // Stage timings the events carry: every frame and call; vision and first token only of
    // calls that generated.
    let stage = |camera, s: Stage| {
        series(
            &m,
            "surveil_stage_seconds",
            &[("camera", camera), ("stage", s.as_str())],
        )
    };
    assert_histogram(stage("aisle-1", Stage::Frame), 3, 0.09);
    assert_eq!(
        observations(&m, "surveil_stage_seconds", &[a, ("stage", "vlm")]),
        2
    );
    assert_histogram(stage("aisle-1", Stage::VlmTtft), 1, 1.5);
    assert_eq!(stage("aisle-1", Stage::Detect), None, "not in events");
}

#[test]
fn progress_and_events_count_each_frame_once() {
    let m = MetricsExporter::new("testing").unwrap();
    let cam = ("camera", "aisle-1");
    let frames = || value(&m, "surveil_frames_total", &[cam]);
    for _ in 0..2 {
        m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 1.0));
    }
    // The progress after the second frame event: no frame counted twice.
    m.record_progress("aisle-1", &progress(2, 12.5));
    assert_eq!(frames(), Some(2.0));
    assert_eq!(value(&m, "surveil_camera_fps", &[cam]), Some(12.5));
    // Progress ahead of the events (no event sink) counts the difference.
    m.record_progress("aisle-1", &progress(5, 11.0));
    assert_eq!(frames(), Some(5.0));
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 1.0));
    assert_eq!(frames(), Some(6.0));
    // A camera's reader reports totals: a total behind the counter changes nothing, the
    // dropped frames and the queue follow the reader.
    m.record_camera_progress(
        "aisle-1",
        &CameraReading {
            frames: 4,
            fps: 9.5,
            frames_dropped: 3,
            queue_depth: 2,
        },
    );
    assert_eq!(frames(), Some(6.0));
    assert_eq!(value(&m, "surveil_camera_fps", &[cam]), Some(9.5));
    assert_eq!(value(&m, "surveil_frames_dropped_total", &[cam]), Some(3.0));
    assert_eq!(value(&m, "surveil_frame_queue_depth", &[cam]), Some(2.0));
    m.record_camera_progress(
        "aisle-1",
        &CameraReading {
            frames: 10,
            fps: 10.0,
            frames_dropped: 1,
            queue_depth: 0,
        },
    );
    assert_eq!(frames(), Some(10.0));
    assert_eq!(value(&m, "surveil_frames_dropped_total", &[cam]), Some(3.0));
    assert_eq!(value(&m, "surveil_frame_queue_depth", &[cam]), Some(0.0));
}

#[test]
fn direct_stage_timings_replace_the_ones_from_events() {
    let m = MetricsExporter::new("testing").unwrap();
    let cam = ("camera", "aisle-1");
    let frame_stage = || observations(&m, "surveil_stage_seconds", &[cam, ("stage", "frame")]);
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 25.0));
    assert_eq!(frame_stage(), 1);
    m.record_stage("aisle-1", Stage::Decode, Duration::from_millis(4));
    m.record_stage("aisle-1", Stage::Frame, Duration::from_millis(30));
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 25.0));
    m.record_event(&analysis(
        "aisle-1",
        AlertLevel::Normal,
        "periodic",
        VlmOutcome::Ok,
        2.0,
    ));
    assert_eq!(frame_stage(), 2, "the second frame event adds no sample");
    assert_histogram(
        series(&m, "surveil_stage_seconds", &[cam, ("stage", "decode")]),
        1,
        0.004,
    );
    assert_eq!(
        observations(&m, "surveil_stage_seconds", &[cam, ("stage", "vlm")]),
        0
    );
    // The call still counts, and its wall time is in surveil_vlm_seconds.
    assert_eq!(observations(&m, "surveil_vlm_seconds", &[cam]), 1);
    assert_eq!(value(&m, "surveil_frames_total", &[cam]), Some(2.0));
}

#[test]
fn model_build_queue_and_memory_series() {
    let m = MetricsExporter::new("testing").unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &m,
            "surveil_build_info",
            &[("version", version), ("profile", "testing")]
        ),
        Some(1.0)
    );
    let start = value(&m, "surveil_start_time_seconds", &[]).unwrap();
    assert!(start > 1.7e9, "{start}");
    assert_eq!(value(&m, "surveil_analysis_queue_depth", &[]), Some(0.0));
    m.record_queue(1);
    assert_eq!(value(&m, "surveil_analysis_queue_depth", &[]), Some(1.0));
    assert!(series(&m, "surveil_model_info", &[]).is_none());
    let facts = |model, bytes| ModelFacts {
        model,
        architecture: "git",
        device: "cpu",
        weights: "dummy",
        resident_bytes: bytes,
    };
    m.record_model(&facts("primary", 1 << 30));
    m.record_model(&facts("git-base-coco", 350 << 20));
    assert_eq!(
        value(
            &m,
            "surveil_model_info",
            &[
                ("model", "git-base-coco"),
                ("architecture", "git"),
                ("device", "cpu"),
                ("weights", "dummy")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "surveil_model_resident_bytes",
            &[("model", "git-base-coco")]
        ),
        Some((350u64 << 20) as f64)
    );
    assert_eq!(
        value(&m, "surveil_model_resident_bytes", &[("model", "primary")]),
        None,
        "a later model replaces the earlier one's series"
    );
    if cfg!(target_os = "linux") {
        for name in [
            "surveil_process_resident_bytes",
            "surveil_process_virtual_bytes",
            "surveil_process_peak_resident_bytes",
        ] {
            let v = value(&m, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
            assert!(v > 1e6, "{name} = {v}");
        }
        // Read at each gather: the exported RSS is the process's RSS at that moment, before and
        // after a large allocation. (Compared with a reading taken around the gather, since the
        // other tests of this binary allocate and free at the same time.)
        let rss_now = || surveil_memory::ProcessMemory::current().rss_bytes.unwrap() as f64;
        let slack = 16.0 * 1048576.0;
        let check = |when: &str| {
            let lo = rss_now();
            let v = value(&m, "surveil_process_resident_bytes", &[]).unwrap();
            let hi = rss_now();
            assert!(
                v >= lo.min(hi) - slack && v <= lo.max(hi) + slack,
                "{when}: exported {v}, the process had {lo} and {hi}"
            );
        };
        check("before");
        let block = vec![1u8; 64 << 20];
        check("with 64 MiB more");
        drop(block);
    }
}

#[test]
fn the_text_format_has_types_help_and_base_units() {
    let m = MetricsExporter::new("testing").unwrap();
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 12.0));
    let text = m.render().unwrap();
    for line in [
        "# TYPE surveil_frames_total counter",
        "# TYPE surveil_stage_seconds histogram",
        "# TYPE surveil_analysis_queue_depth gauge",
        "surveil_frames_total{camera=\"aisle-1\"} 1",
        "surveil_stage_seconds_bucket{camera=\"aisle-1\",stage=\"frame\",le=\"0.025\"} 1",
        "surveil_stage_seconds_bucket{camera=\"aisle-1\",stage=\"frame\",le=\"0.01\"} 0",
        "surveil_stage_seconds_count{camera=\"aisle-1\",stage=\"frame\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("# HELP surveil_frames_total "), "{text}");
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

/// One HTTP/1.1 exchange: `(status, headers in lower case, body)`.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_endpoint_serves_metrics_answers_404_elsewhere_and_stops() {
    let m = MetricsExporter::new("testing").unwrap();
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 12.0));
    let server = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "the real port is reported");
    assert_eq!(server.url(), format!("http://{addr}/metrics"));

    let (status, headers, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
    assert_eq!(
        header(&headers, "content-length").map(|l| l.parse::<usize>().unwrap()),
        Some(body.len())
    );
    assert!(
        body.contains("surveil_frames_total{camera=\"aisle-1\"} 1"),
        "{body}"
    );
    // Fed after the first scrape: the next one sees it.
    m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 12.0));
    let (_, _, body) = http(addr, "GET", "/metrics?debug=1");
    assert!(
        body.contains("surveil_frames_total{camera=\"aisle-1\"} 2"),
        "{body}"
    );

    let (status, _, body) = http(addr, "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, _, _) = http(addr, "GET", "/");
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "GET", "/metrics/extra");
    assert_eq!(status, 404);
    let (status, headers, _) = http(addr, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));

    // The address is taken while it runs: a second endpoint names it in its error.
    let err = m.serve(addr).unwrap_err();
    assert!(
        matches!(err, OrchestratorError::MetricsEndpoint { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    server.stop();
    let start = Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{addr} still accepts connections after stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_never_reads_does_not_hold_up_feeding_or_other_scrapes() {
    let m = MetricsExporter::new("testing").unwrap();
    let server = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    // Half a request, then silence.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /metr").unwrap();
    let start = Instant::now();
    for _ in 0..1000 {
        m.record_event(&frame("aisle-1", AlertLevel::Normal, "skip:cooldown", 1.0));
    }
    let (status, _, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("surveil_frames_total{camera=\"aisle-1\"} 1000"));
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(idle);
    drop(server);
}

/// Forwards the run's progress and model to the exporter, as `surveil run` does.
struct Forward<'a> {
    exporter: &'a MetricsExporter,
    camera: &'a str,
}

impl RunObserver for Forward<'_> {
    fn model_loaded(&mut self, summary: &surveil_models::LoadSummary) {
        self.exporter.record_load(summary);
    }
    fn frame_done(&mut self, progress: &RunProgress) {
        self.exporter.record_progress(self.camera, progress);
    }
}

#[test]
fn a_run_s_metrics_agree_with_its_summary() {
    let (Some(clip), Some(_)) = (
        crate::pipeline::asset("video/vtest.avi"),
        crate::pipeline::asset("yolov3-tiny"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (model, _) = crate::pipeline::fake(crate::pipeline::Behaviour::Answer("high"));
    let exporter = MetricsExporter::new("testing").unwrap();
    let mut sink = exporter.clone();
    let options = crate::pipeline::options(&clip, &out, 10);
    let summary = run_with_sinks(
        &crate::pipeline::config(&[]),
        &options,
        model,
        Arc::new(AtomicBool::new(false)),
        &mut Forward {
            exporter: &exporter,
            camera: &options.camera,
        },
        &mut [&mut sink],
    )
    .unwrap();
    let cam = ("camera", "aisle-1");
    assert_eq!(
        value(&exporter, "surveil_frames_total", &[cam]),
        Some(summary.frames as f64)
    );
    assert!(value(&exporter, "surveil_camera_fps", &[cam]).unwrap() > 0.0);
    for (level, n) in &summary.alerts_by_level {
        let total: f64 = ["frame", "analysis"]
            .iter()
            .map(|kind| {
                value(
                    &exporter,
                    "surveil_events_total",
                    &[cam, ("kind", kind), ("level", level)],
                )
                .unwrap_or(0.0)
            })
            .sum();
        assert_eq!(total, *n as f64, "level {level}");
    }
    for (reason, n) in &summary.vlm.skipped_by_reason {
        assert_eq!(
            value(
                &exporter,
                "surveil_analyses_skipped_total",
                &[cam, ("reason", reason)]
            ),
            Some(*n as f64),
            "skip {reason}"
        );
    }
    for (trigger, n) in &summary.vlm.calls_by_trigger {
        assert_eq!(
            value(
                &exporter,
                "surveil_vlm_requests_total",
                &[cam, ("trigger", trigger)]
            ),
            Some(*n as f64),
            "trigger {trigger}"
        );
    }
    let ok = summary.vlm.outcomes.get("ok").copied().unwrap_or(0);
    assert!(ok >= 1, "{:?}", summary.vlm);
    assert_eq!(observations(&exporter, "surveil_vlm_seconds", &[cam]), ok);
    assert_eq!(
        observations(
            &exporter,
            "surveil_stage_seconds",
            &[cam, ("stage", "frame")]
        ),
        summary.frames
    );
    // A model given by the caller has no load summary, hence no model series.
    assert!(series(&exporter, "surveil_model_info", &[]).is_none());
}

#[test]
fn docs_metrics_md_lists_every_metric() {
    let m = MetricsExporter::new("testing").unwrap();
    // Feed every kind of input, so that every family has a series.
    m.record_event(&frame("c", AlertLevel::Normal, "persons_present", 1.0));
    m.record_event(&frame("c", AlertLevel::Normal, "skip:cooldown", 1.0));
    m.record_event(&analysis(
        "c",
        AlertLevel::Alert,
        "periodic",
        VlmOutcome::Ok,
        1.0,
    ));
    m.record_camera_progress("c", &CameraReading::default());
    m.record_stage("c", Stage::Detect, Duration::from_millis(3));
    m.record_queue(0);
    m.record_model(&ModelFacts {
        model: "m",
        architecture: "git",
        device: "cpu",
        weights: "dummy",
        resident_bytes: 1,
    });
    let mut served: Vec<String> = m.gather().iter().map(|f| f.name().to_string()).collect();
    // Present only where the driver answers.
    served.extend([
        "surveil_gpu_allocated_bytes".into(),
        "surveil_gpu_reserved_bytes".into(),
    ]);
    served.sort();
    served.dedup();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `surveil_"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| format!("surveil_{name}"))
        .collect();
    documented.sort();
    assert_eq!(
        documented,
        served,
        "the metrics table of {}",
        path.display()
    );
}
