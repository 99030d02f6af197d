//! Behaviour tools on synthetic trajectories with known answers, the mode → tools mapping,
//! and the runner's limits (timeout, errors, panics, concurrency).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surveil_config::{OrchestrationMode, ZoneConfig, ZoneCoordinates};
use surveil_orchestrator::scene::{Scene, SceneObject};
use surveil_orchestrator::tools::trajectory::{measure, TrajectoryMetrics};
use surveil_orchestrator::tools::{
    BehaviourTool, CrowdingTool, Cue, Observation, ProximityTool, ToolFailureReason, ToolKind,
    ToolRunner, TrajectorySettings, TrajectoryTool, Zone, ZonesTool,
};
use surveil_orchestrator::OrchestratorError;

use crate::scene::{bag, person, play, FPS};

fn kinds(obs: &[Observation]) -> Vec<(&str, Option<u64>, Cue)> {
    obs.iter()
        .map(|o| (o.kind.as_str(), o.track_id, o.cue))
        .collect()
}

fn find<'a>(obs: &'a [Observation], kind: &str) -> Option<&'a Observation> {
    obs.iter().find(|o| o.kind == kind)
}

fn metrics(scene: &Scene, id: u64) -> TrajectoryMetrics {
    measure(scene.history(id).unwrap(), &TrajectorySettings::default()).unwrap()
}

// ---------------------------------------------------------------- trajectory

#[test]
fn walking_at_a_known_speed() {
    // 50 px/s to the right, boxes 100 px tall: 0.5 body lengths per second, for 10 s.
    let scene = play(101, |_, t| vec![person(1, 100.0 + 50.0 * t, 400.0, 100.0)]);
    let m = metrics(&scene, 1);
    assert!((m.speed_px_per_s - 50.0).abs() < 0.5, "{m:?}");
    assert!((m.speed_body_lengths_per_s - 0.5).abs() < 0.005, "{m:?}");
    assert_eq!(m.body_length_px, 100.0);
    assert_eq!(m.direction_changes, 0);
    assert_eq!(m.stops, 0);
    assert!(!m.returned_to_start);
    assert!((m.duration_seconds - 10.0).abs() < 1e-6);
    let obs = TrajectoryTool::default().observe(&scene).unwrap();
    assert_eq!(kinds(&obs), [("movement", Some(1), Cue::Info)]);
    assert!(
        (obs[0].score - 0.25).abs() < 0.01,
        "0.5 of a 2 body-lengths/s run"
    );
    assert!(
        obs[0].detail.contains("0.50 body lengths/s"),
        "{}",
        obs[0].detail
    );
}

#[test]
fn u_turn_returns_to_start() {
    // Right for 5 s at 100 px/s (5 body lengths), then back to the start.
    let scene = play(101, |_, t| {
        let x = if t <= 5.0 {
            100.0 + 100.0 * t
        } else {
            600.0 - 100.0 * (t - 5.0)
        };
        vec![person(1, x, 400.0, 100.0)]
    });
    let m = metrics(&scene, 1);
    assert_eq!(m.direction_changes, 1, "{m:?}");
    assert!((m.max_excursion_body_lengths - 5.0).abs() < 1e-6);
    assert!(m.end_to_start_body_lengths < 1e-6);
    assert!(m.returned_to_start);
    let obs = TrajectoryTool::default().observe(&scene).unwrap();
    let r = find(&obs, "return_to_start").expect("return_to_start");
    assert_eq!((r.track_id, r.cue), (Some(1), Cue::Notable));
    assert!(
        find(&obs, "erratic_path").is_none(),
        "one turn is not erratic"
    );
}

#[test]
fn u_turn_with_a_side_step_counts_once() {
    // Right along y = 400, half a body length sideways, back along y = 450.
    let scene = play(111, |_, t| {
        let (x, y) = if t <= 5.0 {
            (100.0 + 100.0 * t, 400.0)
        } else if t <= 6.0 {
            (600.0, 400.0 + 50.0 * (t - 5.0))
        } else {
            (600.0 - 100.0 * (t - 6.0), 450.0)
        };
        vec![person(1, x, y, 100.0)]
    });
    assert_eq!(metrics(&scene, 1).direction_changes, 1);
}

#[test]
fn zigzag_is_erratic() {
    // Five 2-second legs between x = 100 and x = 300: four reversals.
    let scene = play(101, |_, t| {
        let leg = (t / 2.0).floor().min(4.0);
        let along = 100.0 * (t - 2.0 * leg);
        let x = if (leg as u64).is_multiple_of(2) {
            100.0 + along
        } else {
            300.0 - along
        };
        vec![person(1, x, 400.0, 100.0)]
    });
    let m = metrics(&scene, 1);
    assert_eq!(m.direction_changes, 4, "{m:?}");
    assert!(!m.returned_to_start, "ends 2 body lengths from the start");
    let obs = TrajectoryTool::default().observe(&scene).unwrap();
    let e = find(&obs, "erratic_path").expect("erratic_path");
    assert_eq!((e.track_id, e.cue), (Some(1), Cue::Notable));
    assert!((e.score - 4.0 / 6.0).abs() < 1e-6);
}

#[test]
fn stops_are_counted_and_the_current_one_reported() {
    // Walk 2 s, stand 5 s, walk 2 s, stand 4 s (still standing at the end).
    let scene = play(131, |_, t| {
        let x = if t <= 2.0 {
            100.0 + 100.0 * t
        } else if t <= 7.0 {
            300.0
        } else if t <= 9.0 {
            300.0 + 100.0 * (t - 7.0)
        } else {
            500.0
        };
        vec![person(1, x, 400.0, 100.0)]
    });
    let m = metrics(&scene, 1);
    assert_eq!(m.stops, 2, "{m:?}");
    // 5 s + 4 s, each spell starting up to 0.2 s early (the approach within the 20 px stop
    // radius).
    assert!((9.0..=9.45).contains(&m.stopped_seconds), "{m:?}");
    let now = m.stationary_now_seconds.unwrap();
    assert!((4.0..=4.25).contains(&now), "{now}");
    let obs = TrajectoryTool::default().observe(&scene).unwrap();
    let s = find(&obs, "stationary").expect("stationary");
    assert_eq!(s.cue, Cue::Info);
}

#[test]
fn box_jitter_is_not_movement() {
    let scene = play(201, |i, _| {
        let i = i as f64;
        vec![person(
            1,
            300.0 + 3.0 * (1.7 * i).sin(),
            400.0 + 3.0 * (2.3 * i).cos(),
            100.0,
        )]
    });
    let m = metrics(&scene, 1);
    assert_eq!(m.direction_changes, 0);
    assert!(m.speed_body_lengths_per_s < 0.1, "{m:?}");
    assert_eq!(m.stops, 1);
    assert!((m.stationary_now_seconds.unwrap() - 20.0).abs() < 1e-6);
}

#[test]
fn only_visible_persons_are_measured() {
    // Person 2 left at 1 s; bags are not persons.
    let scene = play(31, |i, t| {
        let mut v = vec![person(1, 100.0 + 50.0 * t, 400.0, 100.0)];
        v.push(bag(3, 10.0, 10.0, 30.0, 30.0));
        if i <= 10 {
            v.push(person(2, 600.0, 400.0, 100.0));
        }
        v
    });
    let obs = TrajectoryTool::default().observe(&scene).unwrap();
    assert!(obs.iter().all(|o| o.track_id == Some(1)), "{obs:?}");
}

// ---------------------------------------------------------------- zones

fn square_zone(restricted: bool, limit: f64) -> Zone {
    Zone {
        name: "till".into(),
        camera: None,
        polygon: vec![
            (200.0, 300.0),
            (600.0, 300.0),
            (600.0, 600.0),
            (200.0, 600.0),
        ],
        normalized: false,
        restricted,
        max_dwell_seconds: limit,
    }
}

/// A person standing with feet at (400, 500) for `seconds`.
fn standing(seconds: f64) -> Scene {
    play((seconds * FPS) as u64 + 1, |_, _| {
        vec![person(1, 400.0, 500.0, 150.0)]
    })
}

#[test]
fn standing_20_s_in_a_10_s_zone_is_loitering() {
    let scene = standing(20.0);
    let obs = ZonesTool::new(vec![square_zone(false, 10.0)])
        .observe(&scene)
        .unwrap();
    assert_eq!(kinds(&obs), [("loitering", Some(1), Cue::Notable)]);
    assert_eq!(obs[0].score, 1.0, "20 s is twice the limit");
    assert!(obs[0].detail.contains("20 s") && obs[0].detail.contains("`till`"));

    let obs = ZonesTool::new(vec![square_zone(true, 10.0)])
        .observe(&scene)
        .unwrap();
    assert_eq!(kinds(&obs), [("loitering", Some(1), Cue::Suspicious)]);
}

#[test]
fn under_the_limit_is_presence_only() {
    let scene = standing(5.0);
    let obs = ZonesTool::new(vec![square_zone(false, 10.0)])
        .observe(&scene)
        .unwrap();
    assert_eq!(kinds(&obs), [("in_zone", Some(1), Cue::Info)]);
    assert!((obs[0].score - 0.5).abs() < 1e-6);
    let obs = ZonesTool::new(vec![square_zone(true, 10.0)])
        .observe(&scene)
        .unwrap();
    assert_eq!(kinds(&obs), [("restricted_zone", Some(1), Cue::Notable)]);
}

#[test]
fn dwell_counts_from_entering_the_zone() {
    // Walk in from x = 0 at 100 px/s (zone starts at x = 200, reached at 2 s), stop at
    // x = 400 (4 s), stand until 16 s: 14 s inside.
    let scene = play(161, |_, t| {
        vec![person(1, (100.0 * t).min(400.0), 500.0, 150.0)]
    });
    let h = scene.history(1).unwrap();
    let dwell = surveil_orchestrator::tools::zones::dwell_seconds(
        h,
        &square_zone(false, 10.0).polygon_px((1280, 720)),
    )
    .unwrap();
    assert!((dwell - 14.0).abs() <= 0.1 + 1e-9, "{dwell}");
}

#[test]
fn the_feet_point_decides() {
    // Box centre inside a shallow zone, feet below it.
    let zone = Zone {
        polygon: vec![
            (200.0, 300.0),
            (600.0, 300.0),
            (600.0, 450.0),
            (200.0, 450.0),
        ],
        ..square_zone(false, 10.0)
    };
    let scene = play(50, |_, _| vec![person(1, 400.0, 500.0, 200.0)]);
    assert!(ZonesTool::new(vec![zone])
        .observe(&scene)
        .unwrap()
        .is_empty());
}

#[test]
fn normalized_zones_and_cameras() {
    let config = |camera: Option<&str>| ZoneConfig {
        name: "floor".into(),
        camera: camera.map(String::from),
        polygon: vec![[0.25, 0.5], [0.75, 0.5], [0.75, 1.0], [0.25, 1.0]],
        coordinates: ZoneCoordinates::Normalized,
        restricted: false,
        max_dwell_seconds: None,
    };
    let zone = Zone::from_config(&config(None), 30.0);
    assert_eq!(
        zone.max_dwell_seconds, 30.0,
        "defaults to tools.loiter_seconds"
    );
    assert_eq!(
        zone.polygon_px((1280, 720)),
        [
            (320.0, 360.0),
            (960.0, 360.0),
            (960.0, 720.0),
            (320.0, 720.0)
        ]
    );
    // Feet at (640, 600): inside on a 1280 x 720 frame.
    let scene = play(11, |_, _| vec![person(1, 640.0, 600.0, 150.0)]);
    for (camera, expected) in [(None, 1), (Some("cam1"), 1), (Some("cam2"), 0)] {
        let tool = ZonesTool::new(vec![Zone::from_config(&config(camera), 30.0)]);
        assert_eq!(tool.observe(&scene).unwrap().len(), expected, "{camera:?}");
    }
}

// ---------------------------------------------------------------- crowding

fn people(n: u64) -> Vec<SceneObject> {
    (0..n)
        .map(|i| person(i + 1, 100.0 + 150.0 * i as f64, 500.0, 150.0))
        .collect()
}

#[test]
fn six_people_over_a_threshold_of_five() {
    let tool = CrowdingTool::new(5);
    let scene = play(1, |_, _| people(6));
    let obs = tool.observe(&scene).unwrap();
    assert_eq!(kinds(&obs), [("crowding", None, Cue::Notable)]);
    assert!((obs[0].score - 0.6).abs() < 1e-6);
    assert!(obs[0].detail.starts_with("6 people"));
    let scene = play(1, |_, _| people(5));
    assert!(tool.observe(&scene).unwrap().is_empty());
}

// ---------------------------------------------------------------- proximity

/// Person 1 stands with feet at (400, 500), 200 px tall (box x 350..450, y 300..500); a
/// handbag 2 at x 430..470, y 420..470 overlaps half of it. The bag is seen on frames
/// `bag_frames`, the person on `person_frames`, for `n` frames.
fn bag_scene(
    n: u64,
    bag_frames: std::ops::Range<u64>,
    person_frames: std::ops::Range<u64>,
) -> Scene {
    play(n, |i, _| {
        let mut v = vec![person(5, 1000.0, 500.0, 200.0)];
        if person_frames.contains(&i) {
            v.push(person(1, 400.0, 500.0, 200.0));
        }
        if bag_frames.contains(&i) {
            v.push(bag(2, 430.0, 420.0, 470.0, 470.0));
        }
        v
    })
}

#[test]
fn bag_next_to_a_person_is_info() {
    let scene = bag_scene(11, 0..11, 0..11);
    let obs = ProximityTool::default().observe(&scene).unwrap();
    assert_eq!(kinds(&obs), [("bag_near_person", Some(1), Cue::Info)]);
    assert!(
        (obs[0].score - 0.5).abs() < 1e-6,
        "half the bag is over the person"
    );
}

#[test]
fn bag_vanishing_next_to_a_person_who_stays_is_suspicious() {
    // Bag seen 0..3 s, person stays until 6 s.
    let scene = bag_scene(61, 0..31, 0..61);
    let obs = ProximityTool::default().observe(&scene).unwrap();
    assert_eq!(kinds(&obs), [("bag_disappeared", Some(1), Cue::Suspicious)]);
    assert!((obs[0].score - 0.75).abs() < 1e-6);
    assert!(obs[0].detail.contains("person 1"), "{}", obs[0].detail);
}

#[test]
fn bag_vanishing_with_its_person_is_no_cue() {
    let scene = bag_scene(61, 0..31, 0..31);
    let obs = ProximityTool::default().observe(&scene).unwrap();
    assert!(obs.is_empty(), "{obs:?}");
}

#[test]
fn no_cue_before_the_bag_has_been_gone_long_enough() {
    // Gone 0.5 s (< bag_gone_seconds = 1 s).
    let scene = bag_scene(36, 0..31, 0..36);
    assert!(ProximityTool::default().observe(&scene).unwrap().is_empty());
}

#[test]
fn no_cue_for_a_bag_seen_only_briefly_beside_the_person() {
    // Together 0.4 s (< bag_association_seconds = 1 s).
    let scene = bag_scene(61, 26..31, 0..61);
    assert!(ProximityTool::default().observe(&scene).unwrap().is_empty());
}

#[test]
fn no_cue_when_the_bag_reappears_under_a_new_id() {
    let scene = play(61, |i, _| {
        let mut v = vec![person(1, 400.0, 500.0, 200.0)];
        let id = if i <= 30 { 2 } else { 9 };
        v.push(bag(id, 430.0, 420.0, 470.0, 470.0));
        v
    });
    let obs = ProximityTool::default().observe(&scene).unwrap();
    assert_eq!(kinds(&obs), [("bag_near_person", Some(1), Cue::Info)]);
}

#[test]
fn no_cue_when_the_bag_leaves_through_the_frame_edge() {
    let scene = play(61, |i, _| {
        let mut v = vec![person(1, 60.0, 500.0, 200.0)];
        if i <= 30 {
            v.push(bag(2, 0.0, 420.0, 40.0, 470.0));
        }
        v
    });
    assert!(ProximityTool::default().observe(&scene).unwrap().is_empty());
}

// ---------------------------------------------------------------- modes

#[test]
fn modes_pick_their_tools() {
    use ToolKind::*;
    assert_eq!(
        ToolKind::for_mode(OrchestrationMode::Fast),
        [Trajectory, Zones]
    );
    assert_eq!(
        ToolKind::for_mode(OrchestrationMode::Balanced),
        [Trajectory, Zones, Crowding, Proximity]
    );
    assert_eq!(
        ToolKind::for_mode(OrchestrationMode::Thorough),
        ToolKind::ALL
    );
    let names: Vec<&str> = ToolKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, ["trajectory", "zones", "crowding", "proximity"]);
}

#[test]
fn tools_for_a_loaded_config() {
    let config = surveil_config::ConfigLoader::with_env([(
        "ORCHESTRATION_MODE".to_string(),
        "fast".to_string(),
    )])
    .profiles_dir(None)
    .load()
    .unwrap()
    .config;
    let runner = ToolRunner::from_config(&config);
    assert_eq!(runner.tool_names(), ["trajectory", "zones"]);
    for k in ToolKind::ALL {
        assert_eq!(k.build(&config).name(), k.name());
    }
}

// ---------------------------------------------------------------- runner

/// A test tool's body; an `Err` becomes [`OrchestratorError::Tool`].
type ObserveFn = dyn Fn(&Scene) -> Result<Vec<Observation>, String> + Send + Sync;

struct TestTool {
    name: &'static str,
    f: Box<ObserveFn>,
}

impl BehaviourTool for TestTool {
    fn name(&self) -> &'static str {
        self.name
    }
    fn observe(&self, scene: &Scene) -> surveil_orchestrator::Result<Vec<Observation>> {
        (self.f)(scene).map_err(|reason| OrchestratorError::Tool {
            tool: self.name.into(),
            reason,
        })
    }
}

fn tool(
    name: &'static str,
    f: impl Fn(&Scene) -> Result<Vec<Observation>, String> + Send + Sync + 'static,
) -> Arc<dyn BehaviourTool> {
    Arc::new(TestTool {
        name,
        f: Box::new(f),
    })
}

fn fact(name: &str) -> Vec<Observation> {
    vec![Observation {
        tool: name.into(),
        kind: "fact".into(),
        track_id: None,
        cue: Cue::Info,
        score: 0.0,
        detail: name.into(),
    }]
}

fn sleeper(name: &'static str, ms: u64) -> Arc<dyn BehaviourTool> {
    tool(name, move |_| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(fact(name))
    })
}

fn empty_scene() -> Arc<Scene> {
    Arc::new(play(1, |_, _| Vec::new()))
}

fn details(obs: &[Observation]) -> Vec<&str> {
    obs.iter().map(|o| o.detail.as_str()).collect()
}

#[test]
fn late_tool_is_abandoned_and_the_frame_goes_on() {
    let mut runner = ToolRunner::new(
        vec![sleeper("slow", 3000), sleeper("quick", 0)],
        1,
        Duration::from_millis(200),
    );
    let start = Instant::now();
    let report = runner.run(empty_scene());
    let waited = start.elapsed();
    assert!(waited < Duration::from_millis(2000), "{waited:?}");
    assert_eq!(details(&report.observations), ["quick"]);
    assert_eq!(report.failures.len(), 1);
    let f = &report.failures[0];
    assert_eq!(
        (f.tool.as_str(), &f.reason),
        ("slow", &ToolFailureReason::TimedOut)
    );
    assert!(f.elapsed_ms >= 200.0);
    assert_eq!(runner.late_workers(), 1);
    let timed: Vec<&str> = report.timings.iter().map(|t| t.tool.as_str()).collect();
    assert_eq!(timed, ["slow", "quick"]);
}

#[test]
fn late_workers_are_bounded_then_reclaimed() {
    let mut runner = ToolRunner::new(
        vec![sleeper("hang", 600), sleeper("quick", 0)],
        1,
        Duration::from_millis(100),
    );
    // One late worker: replaced, `quick` runs.
    let r1 = runner.run(empty_scene());
    assert_eq!(details(&r1.observations), ["quick"]);
    // A second late worker: over the limit of one, so no replacement and `quick` has no
    // worker.
    let r2 = runner.run(empty_scene());
    assert!(r2.observations.is_empty());
    let reasons: Vec<_> = r2.failures.iter().map(|f| f.reason.clone()).collect();
    assert_eq!(
        reasons,
        [ToolFailureReason::TimedOut, ToolFailureReason::NoWorker]
    );
    assert_eq!(runner.late_workers(), 2);
    // Once they finish, the pool recovers.
    std::thread::sleep(Duration::from_millis(800));
    let r3 = runner.run(empty_scene());
    assert_eq!(details(&r3.observations), ["quick"]);
    assert_eq!(r3.failures.len(), 1);
}

#[test]
fn errors_and_panics_are_recorded_and_workers_survive() {
    let mut runner = ToolRunner::new(
        vec![
            sleeper("first", 0),
            tool("failing", |_| Err("no frame size".into())),
            tool("panicking", |_| {
                panic!("index out of bounds in a test tool")
            }),
            sleeper("last", 0),
        ],
        1,
        Duration::from_secs(5),
    );
    for _ in 0..2 {
        let report = runner.run(empty_scene());
        assert_eq!(details(&report.observations), ["first", "last"]);
        assert_eq!(report.failures.len(), 2);
        let f = &report.failures[0];
        assert_eq!(f.tool, "failing");
        assert!(
            matches!(&f.reason, ToolFailureReason::Error(m) if m.contains("no frame size")),
            "{f:?}"
        );
        let p = &report.failures[1];
        assert_eq!(p.tool, "panicking");
        assert_eq!(
            p.reason,
            ToolFailureReason::Panicked("index out of bounds in a test tool".into())
        );
        assert_eq!(report.timings.len(), 4);
        assert_eq!(runner.late_workers(), 0);
    }
}

/// Eight tools that count how many of them run at once.
fn counting_tools(
    current: &Arc<AtomicUsize>,
    peak: &Arc<AtomicUsize>,
) -> Vec<Arc<dyn BehaviourTool>> {
    const NAMES: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    NAMES
        .iter()
        .map(|&name| {
            let (current, peak) = (Arc::clone(current), Arc::clone(peak));
            tool(name, move |_| {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(40));
                current.fetch_sub(1, Ordering::SeqCst);
                Ok(fact(name))
            })
        })
        .collect()
}

#[test]
fn concurrency_never_exceeds_the_limit() {
    for limit in [1, 3] {
        let current = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut runner = ToolRunner::new(
            counting_tools(&current, &peak),
            limit,
            Duration::from_secs(10),
        );
        for _ in 0..2 {
            let report = runner.run(empty_scene());
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            // In tool order whatever the completion order.
            assert_eq!(
                details(&report.observations),
                ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]
            );
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= limit, "limit {limit}, peak {peak}");
        assert!(
            peak >= limit.min(2),
            "tools ran in parallel: limit {limit}, peak {peak}"
        );
    }
}
