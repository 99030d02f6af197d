//! The scene: current objects, rolling per-track history, pruning. Also the builders the
//! tool and trigger tests share.

use std::time::Duration;

use surveil_orchestrator::scene::{ObjectKind, Scene, SceneObject};
use surveil_vision::BBox;

/// Frames per second of the synthetic sequences.
pub const FPS: f64 = 10.0;

/// A frame size used by the synthetic sequences.
pub const FRAME: (u32, u32) = (1280, 720);

/// A person whose box has its bottom centre (feet) at `(x, y)`, `h` pixels tall, `h / 2`
/// wide.
pub fn person(id: u64, x: f64, y: f64, h: f64) -> SceneObject {
    let (x, y, h) = (x as f32, y as f32, h as f32);
    SceneObject {
        track_id: id,
        kind: ObjectKind::Person,
        class_name: "person".into(),
        bbox: BBox::new(x - h / 4.0, y - h, x + h / 4.0, y),
        score: 0.9,
    }
}

/// A bag box with corners `(x1, y1)`, `(x2, y2)`.
pub fn bag(id: u64, x1: f32, y1: f32, x2: f32, y2: f32) -> SceneObject {
    SceneObject {
        track_id: id,
        kind: ObjectKind::Bag,
        class_name: "handbag".into(),
        bbox: BBox::new(x1, y1, x2, y2),
        score: 0.8,
    }
}

/// Source time of frame `i` at [`FPS`].
pub fn at(i: u64) -> Duration {
    Duration::from_secs_f64(i as f64 / FPS)
}

/// Feed frames `0..n` to a fresh scene of camera `cam1` (60 s history); `objects(i, t)`
/// gives frame `i`'s objects at `t` seconds.
pub fn play(n: u64, objects: impl Fn(u64, f64) -> Vec<SceneObject>) -> Scene {
    let mut scene = Scene::new("cam1".into(), 60.0);
    for i in 0..n {
        scene.update(i, at(i), FRAME, objects(i, i as f64 / FPS));
    }
    scene
}

#[test]
fn kinds_from_class_names() {
    assert_eq!(ObjectKind::from_class_name("person"), ObjectKind::Person);
    for b in ["handbag", "backpack", "suitcase"] {
        assert_eq!(ObjectKind::from_class_name(b), ObjectKind::Bag);
    }
    assert_eq!(ObjectKind::from_class_name("bicycle"), ObjectKind::Other);
}

#[test]
fn current_frame_accessors() {
    let scene = play(3, |_, _| {
        vec![
            person(1, 100.0, 400.0, 200.0),
            bag(2, 10.0, 10.0, 30.0, 30.0),
            person(3, 500.0, 400.0, 200.0),
        ]
    });
    assert_eq!(scene.camera(), "cam1");
    assert_eq!(scene.frame_index(), 2);
    assert_eq!(scene.timestamp(), at(2));
    assert!((scene.seconds() - 0.2).abs() < 1e-9);
    assert_eq!(scene.frame_size(), FRAME);
    assert_eq!(
        scene.persons().map(|p| p.track_id).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(scene.bags().map(|b| b.track_id).collect::<Vec<_>>(), [2]);
    let h = scene.history(1).unwrap();
    assert_eq!(h.points.len(), 3);
    assert_eq!(h.first_seen, at(0));
    assert_eq!(h.last_seen, at(2));
    assert_eq!(h.at_frame(1).unwrap().timestamp, at(1));
    assert_eq!(h.latest().unwrap().feet(), (100.0, 400.0));
    assert_eq!(h.median_height(), 200.0);
}

#[test]
fn history_is_bounded_by_the_window() {
    // 10.05 s window; a person present for 30 s at 10 fps.
    let mut scene = Scene::new("cam1".into(), 10.05);
    for i in 0..300 {
        scene.update(i, at(i), FRAME, vec![person(7, i as f64, 400.0, 100.0)]);
    }
    let h = scene.history(7).unwrap();
    // Points from 29.9 s - 10.05 s = 19.85 s on: frames 199..=299.
    assert_eq!(h.points.len(), 101);
    assert_eq!(h.earliest().unwrap().frame_index, 199);
    // First sighting survives pruning.
    assert_eq!(h.first_seen, Duration::ZERO);
    assert!((h.age_seconds() - 29.9).abs() < 1e-9);
}

#[test]
fn vanished_tracks_stay_queryable_within_the_window() {
    let mut scene = Scene::new("cam1".into(), 10.0);
    for i in 0..50 {
        let mut objs = vec![person(1, 100.0, 400.0, 100.0)];
        if i < 20 {
            objs.push(bag(2, 110.0, 350.0, 130.0, 380.0));
        }
        scene.update(i, at(i), FRAME, objs);
    }
    // The bag vanished at 1.9 s; at 4.9 s it is gone from the frame but not from memory.
    assert!(scene.bags().next().is_none());
    assert!(!scene.is_visible(2));
    assert!(scene.is_visible(1));
    let vanished: Vec<u64> = scene.vanished().map(|h| h.track_id).collect();
    assert_eq!(vanished, [2]);
    assert_eq!(scene.history(2).unwrap().last_seen, at(19));
    // 10 s after its last sighting it is forgotten.
    for i in 50..=115 {
        scene.update(i, at(i), FRAME, vec![person(1, 100.0, 400.0, 100.0)]);
    }
    assert!(
        scene.history(2).is_some(),
        "11.5 s - 10 s = 1.5 s: still inside"
    );
    for i in 116..=121 {
        scene.update(i, at(i), FRAME, vec![person(1, 100.0, 400.0, 100.0)]);
    }
    assert!(scene.history(2).is_none(), "12.1 s - 10 s = 2.1 s > 1.9 s");
    assert_eq!(scene.tracks().count(), 1);
}

#[test]
fn source_time_going_back_clears_history() {
    let mut scene = play(20, |_, _| vec![person(1, 100.0, 400.0, 100.0)]);
    scene.update(20, at(5), FRAME, vec![person(4, 10.0, 400.0, 100.0)]);
    assert!(scene.history(1).is_none());
    assert_eq!(scene.history(4).unwrap().points.len(), 1);
}

#[test]
fn repeated_timestamp_keeps_the_newer_sighting() {
    let mut scene = Scene::new("cam1".into(), 10.0);
    scene.update(0, at(0), FRAME, vec![person(1, 100.0, 400.0, 100.0)]);
    scene.update(1, at(0), FRAME, vec![person(1, 140.0, 400.0, 100.0)]);
    let h = scene.history(1).unwrap();
    assert_eq!(h.points.len(), 1);
    assert_eq!(h.latest().unwrap().feet(), (140.0, 400.0));
}
