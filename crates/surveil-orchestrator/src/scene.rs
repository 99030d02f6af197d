//! The scene: the current frame's tracked objects and a rolling per-track history. Behaviour
//! tools, the trigger and the prompt read it; nothing here decides anything.
//!
//! Units: box coordinates are pixels of the source frame; times are source time (the
//! timestamp of the frame in the video or stream), as [`Duration`] since the start of the
//! source, and derived quantities are in seconds.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use surveil_vision::BBox;

/// What a tracked object is, as far as the behaviour tools care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A person.
    Person,
    /// A bag: handbag, backpack or suitcase.
    Bag,
    /// Anything else the detector keeps.
    Other,
}

impl ObjectKind {
    /// The kind of a COCO class name: `person` → [`ObjectKind::Person`]; `handbag`,
    /// `backpack`, `suitcase` → [`ObjectKind::Bag`]; anything else → [`ObjectKind::Other`].
    pub fn from_class_name(class_name: &str) -> Self {
        match class_name {
            "person" => ObjectKind::Person,
            "handbag" | "backpack" | "suitcase" => ObjectKind::Bag,
            _ => ObjectKind::Other,
        }
    }
}

/// One tracked object in the current frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// Tracker id, unique across classes for the whole run.
    pub track_id: u64,
    /// Person, bag or other.
    pub kind: ObjectKind,
    /// Detector class name (`person`, `handbag`, ...).
    pub class_name: String,
    /// Box in frame pixels.
    pub bbox: BBox,
    /// Detection score in [0, 1].
    pub score: f32,
}

/// One sighting of a track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackPoint {
    /// Frame index of the sighting (the pipeline's frame counter).
    pub frame_index: u64,
    /// Source time of the sighting.
    pub timestamp: Duration,
    /// Box in frame pixels.
    pub bbox: BBox,
}

impl TrackPoint {
    /// Source time in seconds.
    pub fn seconds(&self) -> f64 {
        self.timestamp.as_secs_f64()
    }

    /// Box centre `(x, y)` in pixels.
    pub fn center(&self) -> (f64, f64) {
        let (x, y) = self.bbox.center();
        (f64::from(x), f64::from(y))
    }

    /// Bottom centre of the box `(x, y)` in pixels: where the person stands.
    pub fn feet(&self) -> (f64, f64) {
        (
            f64::from((self.bbox.x1 + self.bbox.x2) / 2.0),
            f64::from(self.bbox.y2),
        )
    }

    /// Box height in pixels (the "body length" of a person).
    pub fn height(&self) -> f64 {
        f64::from(self.bbox.height())
    }
}

/// The recent history of one track: its sightings within the history window, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackHistory {
    /// Tracker id.
    pub track_id: u64,
    /// Kind at the last sighting.
    pub kind: ObjectKind,
    /// Class name at the last sighting.
    pub class_name: String,
    /// Source time of the first sighting (kept when older points are pruned).
    pub first_seen: Duration,
    /// Source time of the last sighting.
    pub last_seen: Duration,
    /// Sightings within the window, oldest first, strictly increasing in time.
    pub points: VecDeque<TrackPoint>,
}

impl TrackHistory {
    /// The last sighting.
    pub fn latest(&self) -> Option<&TrackPoint> {
        self.points.back()
    }

    /// The oldest sighting still in the window.
    pub fn earliest(&self) -> Option<&TrackPoint> {
        self.points.front()
    }

    /// Seconds between the first and the last sighting (not limited to the window).
    pub fn age_seconds(&self) -> f64 {
        self.last_seen.saturating_sub(self.first_seen).as_secs_f64()
    }

    /// The sighting made on frame `frame_index`, if any.
    pub fn at_frame(&self, frame_index: u64) -> Option<&TrackPoint> {
        let i = self
            .points
            .binary_search_by_key(&frame_index, |p| p.frame_index)
            .ok()?;
        self.points.get(i)
    }

    /// Median box height of the sightings in the window, pixels (0 when there are none).
    pub fn median_height(&self) -> f64 {
        let mut h: Vec<f64> = self.points.iter().map(TrackPoint::height).collect();
        if h.is_empty() {
            return 0.0;
        }
        h.sort_by(f64::total_cmp);
        h[h.len() / 2]
    }
}

/// The current frame, its objects, and the rolling history of every track seen within the
/// last `history_seconds` of source time (including tracks that have vanished since).
///
/// Memory is bounded by the window: points older than `history_seconds` before the current
/// frame are dropped, and so are tracks not seen for longer than that.
#[derive(Debug, Clone)]
pub struct Scene {
    camera: String,
    history_seconds: f64,
    frame_index: u64,
    timestamp: Duration,
    frame_size: (u32, u32),
    objects: Vec<SceneObject>,
    tracks: BTreeMap<u64, TrackHistory>,
}

impl Scene {
    /// An empty scene of `camera` keeping `history_seconds` (> 0) of per-track history; a
    /// non-finite or negative window keeps only the current frame.
    pub fn new(camera: String, history_seconds: f64) -> Self {
        let history_seconds = if history_seconds.is_finite() {
            history_seconds.max(0.0)
        } else {
            0.0
        };
        Self {
            camera,
            history_seconds,
            frame_index: 0,
            timestamp: Duration::ZERO,
            frame_size: (0, 0),
            objects: Vec::new(),
            tracks: BTreeMap::new(),
        }
    }

    /// Advance to a new frame: `timestamp` is its source time, `frame_size` its `(width,
    /// height)` in pixels, `objects` its tracked objects. A timestamp earlier than the
    /// previous frame's (a restarted or looped source) clears the history.
    pub fn update(
        &mut self,
        frame_index: u64,
        timestamp: Duration,
        frame_size: (u32, u32),
        objects: Vec<SceneObject>,
    ) {
        if timestamp < self.timestamp {
            tracing::warn!(
                camera = %self.camera,
                previous_s = self.timestamp.as_secs_f64(),
                now_s = timestamp.as_secs_f64(),
                "source time went backwards; clearing the track history"
            );
            self.tracks.clear();
        }
        self.frame_index = frame_index;
        self.timestamp = timestamp;
        self.frame_size = frame_size;
        for o in &objects {
            let point = TrackPoint {
                frame_index,
                timestamp,
                bbox: o.bbox,
            };
            let h = self
                .tracks
                .entry(o.track_id)
                .or_insert_with(|| TrackHistory {
                    track_id: o.track_id,
                    kind: o.kind,
                    class_name: o.class_name.clone(),
                    first_seen: timestamp,
                    last_seen: timestamp,
                    points: VecDeque::new(),
                });
            h.kind = o.kind;
            if h.class_name != o.class_name {
                h.class_name.clone_from(&o.class_name);
            }
            h.last_seen = timestamp;
            // Two sightings at one source time (a duplicated frame or object): keep the newer.
            if h.points.back().is_some_and(|p| p.timestamp >= timestamp) {
                h.points.pop_back();
            }
            h.points.push_back(point);
        }
        self.objects = objects;
        self.prune();
    }

    /// Drop points and tracks older than the window.
    fn prune(&mut self) {
        let window = Duration::try_from_secs_f64(self.history_seconds).unwrap_or(Duration::ZERO);
        let oldest = self.timestamp.saturating_sub(window);
        self.tracks.retain(|_, h| h.last_seen >= oldest);
        for h in self.tracks.values_mut() {
            while h.points.front().is_some_and(|p| p.timestamp < oldest) {
                h.points.pop_front();
            }
        }
    }

    /// The camera this scene shows.
    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// The history window, seconds.
    pub fn history_seconds(&self) -> f64 {
        self.history_seconds
    }

    /// Index of the current frame.
    pub fn frame_index(&self) -> u64 {
        self.frame_index
    }

    /// Source time of the current frame.
    pub fn timestamp(&self) -> Duration {
        self.timestamp
    }

    /// Source time of the current frame, seconds.
    pub fn seconds(&self) -> f64 {
        self.timestamp.as_secs_f64()
    }

    /// `(width, height)` of the current frame in pixels.
    pub fn frame_size(&self) -> (u32, u32) {
        self.frame_size
    }

    /// Every object of the current frame.
    pub fn objects(&self) -> &[SceneObject] {
        &self.objects
    }

    /// The persons of the current frame.
    pub fn persons(&self) -> impl Iterator<Item = &SceneObject> {
        self.objects.iter().filter(|o| o.kind == ObjectKind::Person)
    }

    /// The bags of the current frame.
    pub fn bags(&self) -> impl Iterator<Item = &SceneObject> {
        self.objects.iter().filter(|o| o.kind == ObjectKind::Bag)
    }

    /// Whether `track_id` is in the current frame.
    pub fn is_visible(&self, track_id: u64) -> bool {
        self.tracks
            .get(&track_id)
            .is_some_and(|h| h.last_seen == self.timestamp)
            && self.objects.iter().any(|o| o.track_id == track_id)
    }

    /// The history of `track_id`, visible now or vanished within the window.
    pub fn history(&self, track_id: u64) -> Option<&TrackHistory> {
        self.tracks.get(&track_id)
    }

    /// Every track with a history, by id: visible ones and those vanished within the window.
    pub fn tracks(&self) -> impl Iterator<Item = &TrackHistory> {
        self.tracks.values()
    }

    /// Tracks seen within the window but not in the current frame.
    pub fn vanished(&self) -> impl Iterator<Item = &TrackHistory> {
        self.tracks
            .values()
            .filter(move |h| !self.is_visible(h.track_id))
    }
}
