//! ByteTrack (Zhang et al., 2022): tracking by associating every detection box, high and low
//! score, in two rounds. Reference: FoundationVision/ByteTrack, `yolox/tracker/byte_tracker.py`
//! (`BYTETracker.update`), which this follows step by step.
//!
//! Per frame: (1) predict every tracked and lost track with its Kalman filter; (2) match
//! high-score detections (`> track_high_thresh`, the reference's `scores > track_thresh`; a
//! score equal to the threshold is in neither round) to them by IoU fused with the detection
//! score, optimal assignment, cost limit `match_threshold`; (3) match the remaining tracked
//! tracks to low-score detections (`track_low_thresh < score < track_high_thresh`) by plain
//! IoU (cost limit 0.5); unmatched tracked tracks become lost; (4) unconfirmed tracks (born
//! last frame) take leftover high-score detections (cost limit 0.7) or are removed;
//! (5) leftover detections scoring `>= track_high_thresh + 0.1` (the reference's `det_thresh`)
//! start new tracks, confirmed when matched again on the next frame; (6) a lost track last
//! matched on frame `L` is removed on the first frame `f` it is still unmatched with
//! `f - L > max(max_time_lost, 1) + 1`, where `max_time_lost = track_buffer * frame_rate / 30`:
//! the reference marks it removed once `f - L > max_time_lost` (checking only tracks that were
//! already lost when the frame began) but keeps it in its lost list, still matchable, for one
//! more frame, because `sub_stracks(lost, removed)` runs before the removed list is extended;
//! (7) of a tracked and a lost track closer than IoU distance 0.15, the one tracked over more
//! frames (last match minus birth frame) stays; on a tie the lost one stays. Detections only
//! match tracks of their own class.
//!
//! The frame rate is the configured one, else the source's nominal rate, else 30
//! ([`TrackerParams::frame_rate_for`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::assignment::linear_assignment;
use super::kalman::{bbox_to_xyah, KalmanBox};
use crate::detect::Detection;
use crate::error::{Result, VisionError};
use crate::geometry::BBox;

/// The frame rate the lost-track buffer assumes when neither the config nor the source gives
/// one (ByteTrack's default, frames per second).
pub const FALLBACK_FRAME_RATE: f64 = 30.0;

/// What a new track's detection must score above the high threshold (ByteTrack's
/// `det_thresh = track_thresh + 0.1`).
pub const NEW_TRACK_MARGIN: f32 = 0.1;

/// Tracker parameters (config section `tracker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerParams {
    /// How long a lost track is kept, in frames at 30 fps (so `track_buffer / 30` seconds).
    pub track_buffer: u32,
    /// Cost limit of the first (high-score) association; cost = 1 - IoU x score.
    pub match_threshold: f32,
    /// Frames per second the buffer is scaled by (`max_time_lost = track_buffer * frame_rate /
    /// 30` frames). `None`: the source's nominal rate, [`FALLBACK_FRAME_RATE`] when the source
    /// does not know it. Fractional rates (12.5, 29.97) are fine.
    pub frame_rate: Option<f64>,
    /// Detections above this score are "high" (first round); new tracks need
    /// [`new_track_thresh`](Self::new_track_thresh) = this + 0.1.
    pub track_high_thresh: f32,
    /// Detections above this score and below `track_high_thresh` are "low" (second round).
    pub track_low_thresh: f32,
}

impl Default for TrackerParams {
    fn default() -> Self {
        Self {
            track_buffer: 30,
            match_threshold: 0.8,
            frame_rate: None,
            track_high_thresh: 0.5,
            track_low_thresh: 0.1,
        }
    }
}

impl TrackerParams {
    /// The `tracker` section of a validated system config (checked there, by
    /// [`surveil_config::TrackerConfig::check`]); the score thresholds it does not carry keep
    /// their ByteTrack defaults.
    pub fn from_config(c: &surveil_config::TrackerConfig) -> Self {
        Self {
            track_buffer: c.track_buffer,
            match_threshold: c.match_threshold as f32,
            frame_rate: c.frame_rate,
            ..Self::default()
        }
    }

    /// Checks ranges; every later step relies on them. The keys of the configuration's
    /// `tracker` section are checked by its own rule ([`surveil_config::TrackerConfig::check`]),
    /// so parameters built by hand are refused in the same words as a configuration; the score
    /// thresholds, which only this type carries, must be within [0, 1], low ≤ high.
    pub fn validate(&self) -> Result<()> {
        let invalid = |b: surveil_config::RuleBreach| VisionError::InvalidOption {
            name: b.key,
            value: b.value,
            message: b.rule,
        };
        surveil_config::TrackerConfig {
            track_buffer: self.track_buffer,
            match_threshold: f64::from(self.match_threshold),
            frame_rate: self.frame_rate,
        }
        .check()
        .map_err(invalid)?;
        let unit = |key: &'static str, v: f32| {
            surveil_config::within_unit_interval(key, f64::from(v)).map_err(invalid)
        };
        unit("tracker.track_high_thresh", self.track_high_thresh)?;
        unit("tracker.track_low_thresh", self.track_low_thresh)?;
        if self.track_low_thresh > self.track_high_thresh {
            return Err(VisionError::InvalidOption {
                name: "tracker.track_low_thresh",
                value: self.track_low_thresh.to_string(),
                message: format!("must be <= track_high_thresh ({})", self.track_high_thresh),
            });
        }
        Ok(())
    }

    /// The score an unmatched high detection needs to start a track: `track_high_thresh + 0.1`
    /// (ByteTrack's `det_thresh`; above 1 when the high threshold is above 0.9, and then no track
    /// starts, as in the reference).
    pub fn new_track_thresh(&self) -> f32 {
        self.track_high_thresh + NEW_TRACK_MARGIN
    }

    /// The frame rate the buffer is scaled by: `frame_rate` when set, else `source_fps` when it
    /// is a finite rate > 0, else [`FALLBACK_FRAME_RATE`].
    pub fn frame_rate_for(&self, source_fps: Option<f64>) -> f64 {
        self.frame_rate
            .or(source_fps.filter(|r| r.is_finite() && *r > 0.0))
            .unwrap_or(FALLBACK_FRAME_RATE)
    }

    /// ByteTrack's `max_time_lost` for a source of `source_fps` frames per second:
    /// `int(frame_rate / 30 * track_buffer)` with the rate of
    /// [`frame_rate_for`](Self::frame_rate_for); 10 for the default buffer at 10 fps, 30 at
    /// 30 fps. (A lost track stays matchable one frame longer; see the module docs.)
    pub fn max_time_lost(&self, source_fps: Option<f64>) -> u64 {
        (self.frame_rate_for(source_fps) / 30.0 * f64::from(self.track_buffer)) as u64
    }
}

/// Lifecycle of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackState {
    /// Matched on its last frame.
    Tracked,
    /// Not matched recently; predicted forward, can be re-found.
    Lost,
    /// Finished: lost for longer than the buffer, an unconfirmed track that was not matched, or
    /// the shorter-tracked of two duplicates.
    Removed,
}

/// One point of a trajectory: the track's box centre at a frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrajectoryPoint {
    /// Frame index.
    pub frame: u64,
    /// Frame timestamp.
    pub timestamp: Duration,
    /// Centre x, frame pixels.
    pub x: f32,
    /// Centre y, frame pixels.
    pub y: f32,
}

/// A tracked object.
#[derive(Debug, Clone)]
pub struct Track {
    /// Stable id, from 1.
    pub id: u64,
    /// Class of the detections it follows.
    pub class_id: usize,
    /// Lifecycle state.
    pub state: TrackState,
    /// Confirmed (matched on two consecutive frames, or born on the first frame).
    pub confirmed: bool,
    /// Score of the last matched detection.
    pub score: f32,
    /// Kalman filter state ([`bbox`](Self::bbox) reads its estimate).
    pub(crate) kalman: KalmanBox,
    /// Tracker frame number (1-based count of `update` calls) of its birth.
    pub start_frame: u64,
    /// Tracker frame number of its last match.
    pub last_frame: u64,
    /// Frames it was matched (detections it absorbed).
    pub hits: u32,
    /// Centre points of every matched frame.
    pub trajectory: Vec<TrajectoryPoint>,
}

impl Track {
    /// The current box estimate.
    pub fn bbox(&self) -> BBox {
        self.kalman.bbox()
    }

    /// Frames since birth, counting the birth frame.
    pub fn age(&self, current_frame: u64) -> u64 {
        current_frame.saturating_sub(self.start_frame) + 1
    }

    fn push_point(&mut self, frame: u64, timestamp: Duration) {
        let (x, y) = self.bbox().center();
        self.trajectory.push(TrajectoryPoint {
            frame,
            timestamp,
            x,
            y,
        });
    }
}

/// A track's output for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrackedObject {
    /// Track id.
    pub track_id: u64,
    /// Class id.
    pub class_id: usize,
    /// Box (Kalman estimate after this frame's update).
    pub bbox: BBox,
    /// Score of the detection matched this frame.
    pub score: f32,
}

/// The ByteTrack tracker. Feed it every analysed frame in order.
///
/// ```
/// use std::time::Duration;
/// use surveil_vision::{BBox, ByteTracker, Detection, TrackerParams};
///
/// let mut tracker = ByteTracker::new(TrackerParams::default())?;
/// for i in 0..5u64 {
///     // One person walking right, 5 pixels a frame, at 25 fps.
///     let x = 100.0 + 5.0 * i as f32;
///     let person = Detection { class_id: 0, score: 0.9, bbox: BBox::new(x, 50.0, x + 40.0, 150.0) };
///     let tracks = tracker.update(i, Duration::from_millis(40 * i), &[person]);
///     assert_eq!(tracks.len(), 1);
///     assert_eq!(tracks[0].track_id, 1); // the same person keeps its id
/// }
/// # Ok::<(), surveil_vision::VisionError>(())
/// ```
#[derive(Debug)]
pub struct ByteTracker {
    params: TrackerParams,
    frame_rate: f64,
    max_time_lost: u64,
    frame_id: u64,
    next_id: u64,
    tracked: Vec<Track>,
    lost: Vec<Track>,
    finished: Vec<Track>,
}

/// Cost of pairing a track and a detection of different classes: never matched.
const CLASS_MISMATCH: f64 = f64::INFINITY;
const SECOND_MATCH_THRESH: f64 = 0.5;
const UNCONFIRMED_MATCH_THRESH: f64 = 0.7;
const DUPLICATE_IOU_DIST: f64 = 0.15;

impl ByteTracker {
    /// A tracker with validated parameters, for a source whose frame rate is unknown: the
    /// configured `frame_rate`, else [`FALLBACK_FRAME_RATE`]. Use
    /// [`for_source`](Self::for_source) when the source's rate is known.
    ///
    /// Errors: [`VisionError::InvalidOption`] from [`TrackerParams::validate`].
    pub fn new(params: TrackerParams) -> Result<Self> {
        Self::for_source(params, None)
    }

    /// A tracker with validated parameters for a source of `source_fps` nominal frames per
    /// second (used unless `params.frame_rate` is set; ignored when not finite and > 0).
    ///
    /// Errors: [`VisionError::InvalidOption`] from [`TrackerParams::validate`].
    pub fn for_source(params: TrackerParams, source_fps: Option<f64>) -> Result<Self> {
        params.validate()?;
        let frame_rate = params.frame_rate_for(source_fps);
        let max_time_lost = params.max_time_lost(source_fps);
        tracing::debug!(
            frame_rate,
            configured = ?params.frame_rate,
            source_fps = ?source_fps,
            max_time_lost,
            "tracker frame rate"
        );
        Ok(Self {
            params,
            frame_rate,
            max_time_lost,
            frame_id: 0,
            next_id: 1,
            tracked: Vec::new(),
            lost: Vec::new(),
            finished: Vec::new(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &TrackerParams {
        &self.params
    }

    /// The frame rate the lost-track buffer is scaled by (frames per second).
    pub fn frame_rate(&self) -> f64 {
        self.frame_rate
    }

    /// ByteTrack's `max_time_lost` in frames ([`TrackerParams::max_time_lost`] at
    /// [`frame_rate`](Self::frame_rate)).
    pub fn max_time_lost(&self) -> u64 {
        self.max_time_lost
    }

    /// Tracks currently tracked (confirmed or not) and lost.
    pub fn active_tracks(&self) -> impl Iterator<Item = &Track> {
        self.tracked.iter().chain(self.lost.iter())
    }

    /// Removes and returns the tracks that finished since the last call.
    pub fn take_finished(&mut self) -> Vec<Track> {
        std::mem::take(&mut self.finished)
    }

    /// Number of `update` calls so far.
    pub fn frame_count(&self) -> u64 {
        self.frame_id
    }

    /// Processes the detections of one frame; returns the confirmed tracks matched on it.
    pub fn update(
        &mut self,
        frame_index: u64,
        timestamp: Duration,
        detections: &[Detection],
    ) -> Vec<TrackedObject> {
        self.frame_id += 1;
        let fid = self.frame_id;
        let p = &self.params;
        let high: Vec<&Detection> = detections
            .iter()
            .filter(|d| d.score > p.track_high_thresh)
            .collect();
        let low: Vec<&Detection> = detections
            .iter()
            .filter(|d| d.score > p.track_low_thresh && d.score < p.track_high_thresh)
            .collect();

        // Split tracked into confirmed and unconfirmed; the pool is confirmed + lost.
        let (mut pool, mut unconfirmed): (Vec<Track>, Vec<Track>) =
            std::mem::take(&mut self.tracked)
                .into_iter()
                .partition(|t| t.confirmed);
        pool.append(&mut self.lost);
        for t in pool.iter_mut() {
            if t.state != TrackState::Tracked {
                t.kalman.mean[7] = 0.0;
            }
            t.kalman.predict();
        }
        // Unconfirmed tracks are not predicted (as in ByteTrack): born on the previous frame
        // with zero velocity, they are compared at their birth box.

        let mut activated: Vec<Track> = Vec::new();
        let mut lost_now: Vec<Track> = Vec::new();
        let mut removed: Vec<Track> = Vec::new();

        // Round 1: high-score detections vs the pool, IoU fused with score.
        let cost = cost_matrix(&pool, &high, true);
        let a = linear_assignment(&cost, high.len(), p.match_threshold as f64);
        let mut pool_slots: Vec<Option<Track>> = pool.into_iter().map(Some).collect();
        for &(ti, di) in &a.matches {
            if let Some(mut t) = pool_slots[ti].take() {
                apply_match(&mut t, high[di], fid, frame_index, timestamp);
                activated.push(t);
            }
        }
        let remaining_high: Vec<&Detection> = a.unmatched_cols.iter().map(|&i| high[i]).collect();

        // Round 2: tracks still unmatched that were tracked last frame vs low-score detections.
        let mut r_tracked: Vec<Track> = Vec::new();
        for &ti in &a.unmatched_rows {
            if let Some(t) = pool_slots[ti].take() {
                if t.state == TrackState::Tracked {
                    r_tracked.push(t);
                } else {
                    // Already lost: stays lost.
                    lost_now.push(t);
                }
            }
        }
        let cost = cost_matrix(&r_tracked, &low, false);
        let b = linear_assignment(&cost, low.len(), SECOND_MATCH_THRESH);
        let mut r_slots: Vec<Option<Track>> = r_tracked.into_iter().map(Some).collect();
        for &(ti, di) in &b.matches {
            if let Some(mut t) = r_slots[ti].take() {
                apply_match(&mut t, low[di], fid, frame_index, timestamp);
                activated.push(t);
            }
        }
        for mut t in r_slots.into_iter().flatten() {
            t.state = TrackState::Lost;
            lost_now.push(t);
        }

        // Round 3: unconfirmed tracks vs leftover high detections.
        let cost = cost_matrix(&unconfirmed, &remaining_high, true);
        let c = linear_assignment(&cost, remaining_high.len(), UNCONFIRMED_MATCH_THRESH);
        let mut u_slots: Vec<Option<Track>> = unconfirmed.drain(..).map(Some).collect();
        for &(ti, di) in &c.matches {
            if let Some(mut t) = u_slots[ti].take() {
                apply_match(&mut t, remaining_high[di], fid, frame_index, timestamp);
                activated.push(t);
            }
        }
        for mut t in u_slots.into_iter().flatten() {
            t.state = TrackState::Removed;
            removed.push(t);
        }

        // New tracks.
        for &di in &c.unmatched_cols {
            let d = remaining_high[di];
            if d.score < p.new_track_thresh() {
                continue;
            }
            let mut t = Track {
                id: self.next_id,
                class_id: d.class_id,
                state: TrackState::Tracked,
                confirmed: fid == 1,
                score: d.score,
                kalman: KalmanBox::initiate(bbox_to_xyah(&d.bbox)),
                start_frame: fid,
                last_frame: fid,
                hits: 1,
                trajectory: Vec::new(),
            };
            self.next_id += 1;
            t.push_point(frame_index, timestamp);
            activated.push(t);
        }

        // Lost too long: removed. The reference marks a track once `fid - end_frame >
        // max_time_lost` (only tracks lost before this frame) and drops it from its lost list one
        // frame later; until then it can still be matched. See the module docs, step (6).
        let keep_until = self.max_time_lost.max(1) + 1;
        let mut still_lost = Vec::new();
        for mut t in lost_now {
            if fid - t.last_frame > keep_until {
                t.state = TrackState::Removed;
                removed.push(t);
            } else {
                still_lost.push(t);
            }
        }

        // Resolve near-duplicates between tracked and lost: keep the one tracked longer.
        let (tracked, lost) = remove_duplicates(activated, still_lost, &mut removed);
        self.tracked = tracked;
        self.lost = lost;
        for t in &removed {
            tracing::trace!(track = t.id, hits = t.hits, "track removed");
        }
        self.finished
            .extend(removed.into_iter().filter(|t| t.confirmed));

        self.tracked
            .iter()
            .filter(|t| t.confirmed && t.last_frame == fid)
            .map(|t| TrackedObject {
                track_id: t.id,
                class_id: t.class_id,
                bbox: t.bbox(),
                score: t.score,
            })
            .collect()
    }

    /// Ends the run: every remaining confirmed track is returned as finished.
    pub fn finish(&mut self) -> Vec<Track> {
        let mut all = self.take_finished();
        all.extend(
            self.tracked
                .drain(..)
                .chain(self.lost.drain(..))
                .filter(|t| t.confirmed),
        );
        all
    }
}

fn apply_match(t: &mut Track, d: &Detection, fid: u64, frame_index: u64, ts: Duration) {
    t.kalman.update(bbox_to_xyah(&d.bbox));
    if t.state != TrackState::Tracked {
        tracing::debug!(
            track = t.id,
            lost_frames = fid - t.last_frame - 1,
            "track re-found"
        );
    }
    t.state = TrackState::Tracked;
    t.confirmed = true;
    t.score = d.score;
    t.last_frame = fid;
    t.hits += 1;
    t.push_point(frame_index, ts);
}

/// `1 - IoU` (times the detection score when `fuse_score`), infinite across classes.
fn cost_matrix(tracks: &[Track], dets: &[&Detection], fuse_score: bool) -> Vec<Vec<f64>> {
    tracks
        .iter()
        .map(|t| {
            let tb = t.bbox();
            dets.iter()
                .map(|d| {
                    if d.class_id != t.class_id {
                        return CLASS_MISMATCH;
                    }
                    let mut sim = tb.iou(&d.bbox) as f64;
                    if fuse_score {
                        sim *= d.score as f64;
                    }
                    1.0 - sim
                })
                .collect()
        })
        .collect()
}

/// ByteTrack's `remove_duplicate_stracks`: for every tracked/lost pair of one class with IoU
/// distance < 0.15, the track matched over more frames (`last_frame - start_frame`, the
/// reference's `frame_id - start_frame`) stays and the other is removed; on a tie the tracked
/// one is removed.
fn remove_duplicates(
    tracked: Vec<Track>,
    lost: Vec<Track>,
    removed: &mut Vec<Track>,
) -> (Vec<Track>, Vec<Track>) {
    let mut drop_t = vec![false; tracked.len()];
    let mut drop_l = vec![false; lost.len()];
    for (i, t) in tracked.iter().enumerate() {
        for (j, l) in lost.iter().enumerate() {
            if t.class_id == l.class_id
                && 1.0 - (t.bbox().iou(&l.bbox()) as f64) < DUPLICATE_IOU_DIST
            {
                let t_span = t.last_frame - t.start_frame;
                let l_span = l.last_frame - l.start_frame;
                if t_span > l_span {
                    drop_l[j] = true;
                } else {
                    drop_t[i] = true;
                }
            }
        }
    }
    let mut keep_t = Vec::new();
    for (t, d) in tracked.into_iter().zip(drop_t) {
        if d {
            let mut t = t;
            t.state = TrackState::Removed;
            removed.push(t);
        } else {
            keep_t.push(t);
        }
    }
    let mut keep_l = Vec::new();
    for (l, d) in lost.into_iter().zip(drop_l) {
        if d {
            let mut l = l;
            l.state = TrackState::Removed;
            removed.push(l);
        } else {
            keep_l.push(l);
        }
    }
    (keep_t, keep_l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, score: f32) -> Detection {
        Detection {
            class_id: 0,
            score,
            bbox: BBox::new(x, y, x + 40.0, y + 100.0),
        }
    }

    fn run(tracker: &mut ByteTracker, frames: &[Vec<Detection>]) -> Vec<Vec<TrackedObject>> {
        frames
            .iter()
            .enumerate()
            .map(|(i, d)| tracker.update(i as u64, Duration::from_millis(100 * i as u64), d))
            .collect()
    }

    #[test]
    fn two_walkers_keep_their_ids() {
        let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
        let frames: Vec<Vec<Detection>> = (0..20)
            .map(|i| {
                let i = i as f32;
                vec![
                    det(100.0 + 3.0 * i, 50.0, 0.9),
                    det(400.0 - 3.0 * i, 60.0, 0.8),
                ]
            })
            .collect();
        let out = run(&mut t, &frames);
        assert_eq!(out[0].len(), 2, "first-frame tracks are confirmed at once");
        let ids0: Vec<u64> = out[0].iter().map(|o| o.track_id).collect();
        for o in &out {
            let ids: Vec<u64> = o.iter().map(|o| o.track_id).collect();
            assert_eq!(ids.len(), 2);
            assert!(ids.iter().all(|i| ids0.contains(i)));
        }
        // Track 1 follows the walker going right.
        let last = out[19].iter().find(|o| o.track_id == ids0[0]).unwrap();
        assert!((last.bbox.x1 - (100.0 + 57.0)).abs() < 3.0, "{last:?}");
        let tracks = t.finish();
        assert_eq!(tracks.len(), 2);
        assert!(tracks
            .iter()
            .all(|tr| tr.hits == 20 && tr.trajectory.len() == 20));
        assert_eq!(
            tracks[0].trajectory[19].timestamp,
            Duration::from_millis(1900)
        );
    }

    /// The reference splits with `scores > track_thresh` (first round) and
    /// `0.1 < scores < track_thresh` (second round), so a score equal to the high threshold is
    /// in neither: the track it sits on is not matched and goes lost (no output). A 0.51 box
    /// is high again and re-finds the lost track (cost 1 - 1 x 0.51 = 0.49 < 0.8), with its id.
    #[test]
    fn a_detection_at_exactly_the_high_threshold_is_in_neither_round() {
        let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
        let high = TrackerParams::default().track_high_thresh;
        assert_eq!(high, 0.5);
        let out = run(
            &mut t,
            &[
                vec![det(100.0, 50.0, 0.9)],
                vec![det(100.0, 50.0, 0.9)],
                vec![det(100.0, 50.0, high)],
                vec![det(100.0, 50.0, 0.51)],
            ],
        );
        let id = out[0][0].track_id;
        assert_eq!(out[1].len(), 1);
        assert!(
            out[2].is_empty(),
            "a score of exactly 0.5 matches nothing: {:?}",
            out[2]
        );
        assert_eq!(out[3].len(), 1, "0.51 re-finds the track");
        assert_eq!(out[3][0].track_id, id);
    }

    #[test]
    fn short_occlusion_keeps_the_id_and_long_one_ends_the_track() {
        let params = TrackerParams {
            track_buffer: 10,
            frame_rate: Some(30.0),
            ..TrackerParams::default()
        };
        let mut t = ByteTracker::new(params).unwrap();
        // Moves 5 px/frame; hidden on frames 10..16 (6 frames), then visible again.
        let frames: Vec<Vec<Detection>> = (0..25)
            .map(|i| {
                if (10..16).contains(&i) {
                    vec![]
                } else {
                    vec![det(100.0 + 5.0 * i as f32, 50.0, 0.9)]
                }
            })
            .collect();
        let out = run(&mut t, &frames);
        let id = out[0][0].track_id;
        assert!(out[10..16].iter().all(|o| o.is_empty()));
        assert_eq!(out[16].len(), 1);
        assert_eq!(out[16][0].track_id, id, "same id after a 6-frame occlusion");
        // Now hide for longer than the buffer (10 frames): a new id.
        let mut later = Vec::new();
        for i in 25..40 {
            later.push(t.update(i, Duration::ZERO, &[]));
        }
        assert_eq!(t.take_finished().len(), 1, "removed after the buffer");
        let o = t.update(40, Duration::ZERO, &[det(300.0, 50.0, 0.9)]);
        assert!(
            o.is_empty(),
            "a new track is unconfirmed on its first frame"
        );
        let o = t.update(41, Duration::ZERO, &[det(302.0, 50.0, 0.9)]);
        assert_eq!(o.len(), 1);
        assert_ne!(o[0].track_id, id);
    }

    #[test]
    fn low_score_boxes_continue_but_never_start_tracks() {
        let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
        let mut out = Vec::new();
        out.push(t.update(0, Duration::ZERO, &[det(100.0, 50.0, 0.9)]));
        // The person's score drops to 0.3 (partly occluded): kept by round two.
        for i in 1..6 {
            out.push(t.update(i, Duration::ZERO, &[det(100.0 + i as f32, 50.0, 0.3)]));
        }
        assert!(out.iter().all(|o| o.len() == 1 && o[0].track_id == 1));
        // A lone low-score box never starts a track; a 0.55 box (high, below new_track) neither.
        let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
        for i in 0..5 {
            assert!(t
                .update(
                    i,
                    Duration::ZERO,
                    &[det(10.0, 10.0, 0.3), det(300.0, 10.0, 0.55)]
                )
                .is_empty());
        }
        assert_eq!(t.active_tracks().count(), 0);
    }

    #[test]
    fn classes_do_not_swap() {
        let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
        let person = det(100.0, 50.0, 0.9);
        let mut bag = det(100.0, 50.0, 0.9);
        bag.class_id = 26;
        let a = t.update(0, Duration::ZERO, &[person, bag]);
        let b = t.update(1, Duration::ZERO, &[bag, person]);
        let find =
            |v: &Vec<TrackedObject>, c: usize| v.iter().find(|o| o.class_id == c).unwrap().track_id;
        assert_eq!(find(&a, 0), find(&b, 0));
        assert_eq!(find(&a, 26), find(&b, 26));
        assert_ne!(find(&a, 0), find(&a, 26));
    }

    #[test]
    fn params_from_system_config() {
        let c = surveil_config::TrackerConfig {
            track_buffer: 12,
            match_threshold: 0.7,
            frame_rate: Some(10.0),
        };
        let p = TrackerParams::from_config(&c);
        assert_eq!(
            (p.track_buffer, p.match_threshold, p.frame_rate),
            (12, 0.7, Some(10.0))
        );
        // int(10 / 30 * 12) = 4, whatever the source says.
        assert_eq!(p.max_time_lost(Some(25.0)), 4);
        assert_eq!(
            p.track_high_thresh,
            TrackerParams::default().track_high_thresh
        );
        let p = TrackerParams::from_config(&surveil_config::TrackerConfig::default());
        assert_eq!(p.frame_rate, None, "absent in the config: from the source");
    }

    #[test]
    fn max_time_lost_follows_the_source_frame_rate() {
        let p = TrackerParams::default(); // track_buffer 30 = one second
        assert_eq!(p.max_time_lost(Some(10.0)), 10);
        assert_eq!(p.max_time_lost(Some(30.0)), 30);
        // Fractional rates: int(12.5 / 30 * 30) = 12, int(29.97) = 29, int(25 / 30 * 30) = 25.
        assert_eq!(p.max_time_lost(Some(12.5)), 12);
        assert_eq!(p.max_time_lost(Some(30000.0 / 1001.0)), 29);
        assert_eq!(p.max_time_lost(Some(25.0)), 25);
        // Unknown or unusable source rate: 30 fps.
        for unknown in [
            None,
            Some(0.0),
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            assert_eq!(
                p.frame_rate_for(unknown),
                FALLBACK_FRAME_RATE,
                "{unknown:?}"
            );
            assert_eq!(p.max_time_lost(unknown), 30, "{unknown:?}");
        }
        // The config wins over the source.
        let fixed = TrackerParams {
            frame_rate: Some(15.0),
            ..TrackerParams::default()
        };
        assert_eq!(fixed.max_time_lost(Some(10.0)), 15);
        let t = ByteTracker::for_source(TrackerParams::default(), Some(10.0)).unwrap();
        assert_eq!((t.frame_rate(), t.max_time_lost()), (10.0, 10));
        let t = ByteTracker::new(TrackerParams::default()).unwrap();
        assert_eq!((t.frame_rate(), t.max_time_lost()), (30.0, 30));
    }

    #[test]
    fn new_track_threshold_is_the_high_threshold_plus_a_tenth() {
        for (high, want) in [(0.5f32, 0.6f32), (0.4, 0.5), (0.7, 0.8)] {
            let p = TrackerParams {
                track_high_thresh: high,
                ..TrackerParams::default()
            };
            assert!((p.new_track_thresh() - want).abs() < 1e-6, "{high}");
        }
    }

    #[test]
    fn params_are_refused_in_the_configuration_s_words() {
        let config = surveil_config::TrackerConfig {
            match_threshold: 1.5,
            ..surveil_config::TrackerConfig::default()
        };
        let rule = config.check().unwrap_err();
        let e = ByteTracker::new(TrackerParams::from_config(&config))
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("invalid option {rule}"));
        assert_eq!(
            e,
            "invalid option tracker.match_threshold = 1.5: must be within [0, 1]"
        );
        // What the configuration accepts, the tracker takes: 0 is a cost limit no pair of
        // the first round meets.
        let edge = surveil_config::TrackerConfig {
            match_threshold: 0.0,
            ..surveil_config::TrackerConfig::default()
        };
        assert!(edge.check().is_ok());
        assert!(ByteTracker::new(TrackerParams::from_config(&edge)).is_ok());
    }

    #[test]
    fn invalid_params_are_rejected() {
        let e = ByteTracker::new(TrackerParams {
            match_threshold: 1.5,
            ..TrackerParams::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("match_threshold"), "{e}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = ByteTracker::new(TrackerParams {
                frame_rate: Some(bad),
                ..TrackerParams::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("tracker.frame_rate") && e.contains("> 0"), "{e}");
        }
    }
}
