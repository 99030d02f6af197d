//! Trajectory analysis of person tracks: speed, direction changes, stops, return to start.
//!
//! Positions are box centres in pixels; lengths are normalised by the track's median box
//! height ("body lengths"), so thresholds mean the same near and far from the camera.
//! Headings are taken between path points at least `heading_step_body_lengths` apart, which
//! filters the jitter of detector boxes (the same idea as the distance-threshold resampling
//! used before turn detection in GPS trajectory segmentation).

use surveil_config::ToolsConfig;

use super::{distance, BehaviourTool, Cue, Observation};
use crate::scene::{Scene, TrackHistory, TrackPoint};

/// The tool's name.
pub const NAME: &str = "trajectory";

/// Thresholds of the trajectory tool (see [`ToolsConfig`] for their meaning and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectorySettings {
    /// Speed is measured over the last this many seconds.
    pub speed_window_seconds: f64,
    /// Heading change counted as a direction change, degrees.
    pub turn_angle_degrees: f64,
    /// Minimum distance between the points a heading is taken from, body lengths.
    pub heading_step_body_lengths: f64,
    /// Direction changes that make a path erratic.
    pub erratic_turns: usize,
    /// Radius of a stationary spell, body lengths.
    pub stop_radius_body_lengths: f64,
    /// Shortest stationary spell, seconds.
    pub stop_seconds: f64,
    /// "Back at the start" radius, body lengths.
    pub return_radius_body_lengths: f64,
    /// Minimum distance gone away from the start before a return counts, body lengths.
    pub return_excursion_body_lengths: f64,
}

impl TrajectorySettings {
    /// The trajectory thresholds of the `tools` section.
    pub fn from_config(c: &ToolsConfig) -> Self {
        Self {
            speed_window_seconds: c.speed_window_seconds,
            turn_angle_degrees: c.turn_angle_degrees,
            heading_step_body_lengths: c.heading_step_body_lengths,
            erratic_turns: c.erratic_turns,
            stop_radius_body_lengths: c.stop_radius_body_lengths,
            stop_seconds: c.stop_seconds,
            return_radius_body_lengths: c.return_radius_body_lengths,
            return_excursion_body_lengths: c.return_excursion_body_lengths,
        }
    }
}

impl Default for TrajectorySettings {
    fn default() -> Self {
        Self::from_config(&ToolsConfig::default())
    }
}

/// What the trajectory tool measures of one track over the history window.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryMetrics {
    /// The track.
    pub track_id: u64,
    /// Seconds covered by the sightings in the window.
    pub duration_seconds: f64,
    /// Median box height, pixels.
    pub body_length_px: f64,
    /// Speed of the box centre over the speed window, pixels per second.
    pub speed_px_per_s: f64,
    /// The same in body lengths per second.
    pub speed_body_lengths_per_s: f64,
    /// Heading changes of at least the turn angle.
    pub direction_changes: usize,
    /// Stationary spells of at least the stop duration.
    pub stops: usize,
    /// Seconds spent in those spells.
    pub stopped_seconds: f64,
    /// Seconds of the spell still going on at the last sighting, if the track is stopped now.
    pub stationary_now_seconds: Option<f64>,
    /// Farthest distance from the first point of the window, body lengths.
    pub max_excursion_body_lengths: f64,
    /// Distance between the last and the first point of the window, body lengths.
    pub end_to_start_body_lengths: f64,
    /// Went at least the return excursion away and ended within the return radius.
    pub returned_to_start: bool,
}

/// Smallest angle between two headings, degrees in [0, 180].
fn heading_difference_degrees(a: f64, b: f64) -> f64 {
    let d = (a - b).to_degrees().rem_euclid(360.0);
    if d > 180.0 {
        360.0 - d
    } else {
        d
    }
}

/// Headings (radians) between successive resampled points at least `step` pixels apart.
fn headings(points: &[(f64, f64)], step: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let Some(&first) = points.first() else {
        return out;
    };
    let mut anchor = first;
    for &p in points.iter().skip(1) {
        if distance(p, anchor) >= step {
            out.push((p.1 - anchor.1).atan2(p.0 - anchor.0));
            anchor = p;
        }
    }
    out
}

/// Direction changes in a heading sequence: a heading that differs by at least `threshold`
/// degrees from the previous one, or from the one before it (a turn split over two steps),
/// without comparing across an already counted turn.
fn count_direction_changes(headings: &[f64], threshold: f64) -> usize {
    let mut count = 0;
    let mut leg_start = 0;
    for i in 1..headings.len() {
        for back in 1..=2 {
            if i < back || i - back < leg_start {
                continue;
            }
            if heading_difference_degrees(headings[i], headings[i - back]) >= threshold {
                count += 1;
                leg_start = i;
                break;
            }
        }
    }
    count
}

/// Stationary spells: maximal runs of points within `radius` pixels of the run's first point
/// lasting at least `min_seconds`. Returns `(first, last)` index pairs.
fn stationary_spells(points: &[TrackPoint], radius: f64, min_seconds: f64) -> Vec<(usize, usize)> {
    let mut spells = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let origin = points[i].center();
        let mut j = i;
        while j + 1 < points.len() && distance(points[j + 1].center(), origin) <= radius {
            j += 1;
        }
        if points[j].seconds() - points[i].seconds() >= min_seconds {
            spells.push((i, j));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    spells
}

/// Measure one track's history; `None` with fewer than two sightings or a zero box height.
pub fn measure(history: &TrackHistory, s: &TrajectorySettings) -> Option<TrajectoryMetrics> {
    let points: Vec<TrackPoint> = history.points.iter().copied().collect();
    let (first, last) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let body = history.median_height();
    if !(body > 0.0 && body.is_finite()) {
        return None;
    }
    let centers: Vec<(f64, f64)> = points.iter().map(TrackPoint::center).collect();

    // Speed over the trailing window (at least the last two sightings).
    let window_start = last.seconds() - s.speed_window_seconds;
    let from = points
        .iter()
        .position(|p| p.seconds() >= window_start)
        .unwrap_or(0)
        .min(points.len() - 2);
    let dt = last.seconds() - points[from].seconds();
    let speed_px_per_s = if dt > 0.0 {
        distance(last.center(), points[from].center()) / dt
    } else {
        0.0
    };

    let direction_changes = count_direction_changes(
        &headings(&centers, s.heading_step_body_lengths * body),
        s.turn_angle_degrees,
    );

    let spells = stationary_spells(&points, s.stop_radius_body_lengths * body, s.stop_seconds);
    let stopped_seconds = spells
        .iter()
        .map(|&(a, b)| points[b].seconds() - points[a].seconds())
        .sum();
    let stationary_now_seconds = spells
        .last()
        .filter(|&&(_, b)| b == points.len() - 1)
        .map(|&(a, b)| points[b].seconds() - points[a].seconds());

    let start = first.center();
    let max_excursion = centers
        .iter()
        .map(|&c| distance(c, start))
        .fold(0.0, f64::max)
        / body;
    let end_to_start = distance(last.center(), start) / body;
    let returned_to_start = max_excursion >= s.return_excursion_body_lengths
        && end_to_start <= s.return_radius_body_lengths;

    Some(TrajectoryMetrics {
        track_id: history.track_id,
        duration_seconds: last.seconds() - first.seconds(),
        body_length_px: body,
        speed_px_per_s,
        speed_body_lengths_per_s: speed_px_per_s / body,
        direction_changes,
        stops: spells.len(),
        stopped_seconds,
        stationary_now_seconds,
        max_excursion_body_lengths: max_excursion,
        end_to_start_body_lengths: end_to_start,
        returned_to_start,
    })
}

/// Per person in the current frame: `movement` (Info: speed, turns, stops), `stationary`
/// (Info: stopped now), `erratic_path` (Notable: at least `erratic_turns` direction changes)
/// and `return_to_start` (Notable).
#[derive(Debug, Clone, Default)]
pub struct TrajectoryTool {
    settings: TrajectorySettings,
}

impl TrajectoryTool {
    /// A tool with these thresholds.
    pub fn new(settings: TrajectorySettings) -> Self {
        Self { settings }
    }

    /// The thresholds.
    pub fn settings(&self) -> &TrajectorySettings {
        &self.settings
    }
}

impl BehaviourTool for TrajectoryTool {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&self, scene: &Scene) -> crate::Result<Vec<Observation>> {
        let s = &self.settings;
        let mut out = Vec::new();
        for person in scene.persons() {
            let Some(m) = scene.history(person.track_id).and_then(|h| measure(h, s)) else {
                continue;
            };
            let id = m.track_id;
            let obs = |kind: &str, cue: Cue, score: f64, detail: String| Observation {
                tool: NAME.into(),
                kind: kind.into(),
                track_id: Some(id),
                cue,
                score: score.clamp(0.0, 1.0) as f32,
                detail,
            };
            out.push(obs(
                "movement",
                Cue::Info,
                // 2 body lengths per second is a run.
                m.speed_body_lengths_per_s / 2.0,
                format!(
                    "person {id} moves at {:.2} body lengths/s ({:.0} px/s); {} direction \
                     change(s) and {} stop(s) in the last {:.0} s",
                    m.speed_body_lengths_per_s,
                    m.speed_px_per_s,
                    m.direction_changes,
                    m.stops,
                    m.duration_seconds
                ),
            ));
            if let Some(still) = m.stationary_now_seconds {
                out.push(obs(
                    "stationary",
                    Cue::Info,
                    still / scene.history_seconds().max(f64::EPSILON),
                    format!("person {id} has stood still for {still:.0} s"),
                ));
            }
            if m.direction_changes >= s.erratic_turns {
                out.push(obs(
                    "erratic_path",
                    Cue::Notable,
                    m.direction_changes as f64 / (2 * s.erratic_turns) as f64,
                    format!(
                        "person {id} changed direction {} times in {:.0} s",
                        m.direction_changes, m.duration_seconds
                    ),
                ));
            }
            if m.returned_to_start {
                out.push(obs(
                    "return_to_start",
                    Cue::Notable,
                    m.max_excursion_body_lengths / (2.0 * s.return_excursion_body_lengths),
                    format!(
                        "person {id} went {:.1} body lengths away and came back to where they \
                         were {:.0} s ago",
                        m.max_excursion_body_lengths, m.duration_seconds
                    ),
                ));
            }
        }
        Ok(out)
    }
}
