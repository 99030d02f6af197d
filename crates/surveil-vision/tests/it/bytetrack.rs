//! ByteTrack against the reference implementation (FoundationVision/ByteTrack,
//! `yolox/tracker/byte_tracker.py`) on short synthetic detection sequences whose outcome follows
//! from its code, and the frame rate the tracker takes from its source.
//!
//! Boxes are 80x200 people on one row; stationary boxes keep their Kalman mean exactly on the
//! detection (zero velocity, zero innovation), so every IoU below is the IoU of the detection
//! boxes themselves.

use std::time::Duration;

use surveil_vision::detect::{DetectOutput, DetectTimings};
use surveil_vision::{
    BBox, ByteTracker, DetectTrackStream, Detection, Detector, Frame, FrameSource, PipelineOptions,
    Result, TrackerParams,
};

fn person(x: f32, score: f32) -> Detection {
    Detection {
        class_id: 0,
        score,
        bbox: BBox::new(x, 100.0, x + 80.0, 300.0),
    }
}

/// Runs one sequence (one entry per `update` call) and returns the track ids output per call.
fn ids(tracker: &mut ByteTracker, frames: &[Vec<Detection>]) -> Vec<Vec<u64>> {
    frames
        .iter()
        .enumerate()
        .map(|(i, dets)| {
            tracker
                .update(i as u64, Duration::from_millis(100 * i as u64), dets)
                .iter()
                .map(|o| o.track_id)
                .collect()
        })
        .collect()
}

/// `max_time_lost` = 10 (track_buffer 10 at 30 fps). The track is seen on tracker frames 1..=5
/// (its `end_frame` is 5), missing on 6..=16 and seen again, at the same place, on 17.
///
/// Reference: on frame 16, step 5 finds `16 - 5 = 11 > 10` and marks it removed, but
/// `self.lost_stracks = sub_stracks(self.lost_stracks, self.removed_stracks)` runs before
/// `self.removed_stracks.extend(removed_stracks)`, so the track stays in the lost list for frame
/// 17, is in `strack_pool`, matches the detection (cost 1 - 1 x 0.9 = 0.1 < 0.8) and is
/// re-activated with its id. On frame 18 it is seen, then missing on 19..=30: marked on 29
/// (29 - 18 = 11 > 10), dropped from the lists at the end of 30, so the detection of frame 31
/// starts a new, unconfirmed track (not output) that frame 32 confirms under a new id.
#[test]
fn a_lost_track_can_be_refound_one_frame_after_max_time_lost() {
    let params = TrackerParams {
        track_buffer: 10,
        ..TrackerParams::default()
    };
    let mut t = ByteTracker::new(params).unwrap();
    let seen = || vec![person(100.0, 0.9)];
    let mut frames: Vec<Vec<Detection>> = Vec::new();
    frames.extend((1..=5).map(|_| seen())); // frames 1..=5
    frames.extend((6..=16).map(|_| vec![])); // 11 frames missing
    frames.extend((17..=18).map(|_| seen()));
    frames.extend((19..=30).map(|_| vec![])); // 12 frames missing
    frames.extend((31..=32).map(|_| seen()));
    let out = ids(&mut t, &frames);
    // out[k] is tracker frame k + 1.
    let id = out[0][0];
    assert!(out[5..16].iter().all(Vec::is_empty));
    assert_eq!(
        out[16],
        vec![id],
        "frame 17: the reference re-finds the track after 11 missing frames"
    );
    assert_eq!(out[17], vec![id]);
    assert!(
        out[30].is_empty(),
        "frame 31: after 12 missing frames the track is gone; a new one is unconfirmed"
    );
    assert_eq!(out[31].len(), 1);
    assert_ne!(out[31][0], id, "frame 32: a new id");
}

/// Track A walks right 4 px per frame on frames 1..=10 (x = 100, 104, .., 136) and is then
/// lost; its prediction keeps walking (the Kalman filter has learnt vx of about 4 px/frame).
/// Track B stands at x = 170 from frame 3 on (confirmed on frame 4). Around frames 17..=18 A's
/// predicted box reaches B's (left edges 6 then 2 px apart, IoU 74/86 = 0.86 then 78/82 =
/// 0.95): IoU distance < 0.15, a duplicate pair. B always wins the detection (its box is the
/// detection: cost 0.1, A's is higher), so the pair is (B tracked, A lost) on a frame j >= 17.
///
/// Reference `remove_duplicate_stracks`: `timep = B.frame_id - B.start_frame = j - 3`,
/// `timeq = A.frame_id - A.start_frame = 10 - 1 = 9`; `j - 3 > 9`, so A (lost) is dropped and
/// B keeps its id on every frame. Keeping the earlier-born track instead would drop B.
#[test]
fn of_two_duplicates_the_one_tracked_longer_stays() {
    let mut t = ByteTracker::new(TrackerParams::default()).unwrap();
    let frames: Vec<Vec<Detection>> = (1..=25u32)
        .map(|f| {
            let mut d = Vec::new();
            if f <= 10 {
                d.push(person(100.0 + 4.0 * (f - 1) as f32, 0.9));
            }
            if f >= 3 {
                d.push(person(170.0, 0.9));
            }
            d
        })
        .collect();
    let out = ids(&mut t, &frames);
    let a = out[0][0];
    let b = out[3]
        .iter()
        .copied()
        .find(|&i| i != a)
        .expect("B is confirmed on frame 4");
    for (k, o) in out.iter().enumerate().skip(3) {
        assert!(o.contains(&b), "frame {}: B must stay: {o:?}", k + 1);
    }
    for (k, o) in out.iter().enumerate().skip(10) {
        assert_eq!(o, &vec![b], "frame {}: only B is output", k + 1);
    }
    let finished: Vec<u64> = t.take_finished().iter().map(|tr| tr.id).collect();
    assert_eq!(
        finished,
        vec![a],
        "A is removed as B's duplicate long before its 30-frame buffer ends"
    );
}

/// `det_thresh = track_thresh + 0.1`: with a high threshold of 0.4 a 0.55 box starts a track
/// (0.55 >= 0.5; on frame 1 a new track is confirmed at once) and a 0.45 box, although high
/// (0.45 > 0.4), never does (0.45 < 0.5). With a high threshold of 0.7, a 0.75 box never starts
/// a track (0.75 < 0.8).
#[test]
fn new_tracks_start_at_the_high_threshold_plus_a_tenth() {
    let mut t = ByteTracker::new(TrackerParams {
        track_high_thresh: 0.4,
        ..TrackerParams::default()
    })
    .unwrap();
    let frames: Vec<Vec<Detection>> = (0..4)
        .map(|_| vec![person(100.0, 0.55), person(400.0, 0.45)])
        .collect();
    let out = ids(&mut t, &frames);
    assert!(
        out.iter().all(|o| o == &vec![1]),
        "one track, from the 0.55 box: {out:?}"
    );
    assert_eq!(t.active_tracks().count(), 1);

    let mut t = ByteTracker::new(TrackerParams {
        track_high_thresh: 0.7,
        ..TrackerParams::default()
    })
    .unwrap();
    let frames: Vec<Vec<Detection>> = (0..4).map(|_| vec![person(100.0, 0.75)]).collect();
    let out = ids(&mut t, &frames);
    assert!(out.iter().all(Vec::is_empty), "no track: {out:?}");
    assert_eq!(t.active_tracks().count(), 0);
}

/// A source of 8x8 black frames at a given nominal frame rate.
struct Clock {
    fps: Option<f64>,
    frames: u64,
    next: u64,
}

impl FrameSource for Clock {
    fn describe(&self) -> String {
        "clock".to_string()
    }
    fn is_live(&self) -> bool {
        false
    }
    fn fps(&self) -> Option<f64> {
        self.fps
    }
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.next == self.frames {
            return Ok(None);
        }
        let rate = self.fps.unwrap_or(30.0);
        let f = Frame::new(
            self.next,
            Duration::from_secs_f64(self.next as f64 / rate),
            8,
            8,
            vec![0; 8 * 8 * 3],
        )?;
        self.next += 1;
        Ok(Some(f))
    }
}

/// One person, visible on frame indices 0..=4 and 20..=23, hidden on 5..=19 (1.5 s at 10 fps).
struct Blink {
    names: Vec<String>,
}

impl Detector for Blink {
    fn name(&self) -> &str {
        "blink"
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn detect(&self, frames: &[&Frame]) -> Result<DetectOutput> {
        Ok(DetectOutput {
            detections: frames
                .iter()
                .map(|f| {
                    if (5..20).contains(&f.index) {
                        vec![]
                    } else {
                        vec![person(100.0, 0.9)]
                    }
                })
                .collect(),
            timings: DetectTimings::default(),
        })
    }
}

/// Track ids per frame of a detect-and-track stream over `Clock` with default options.
fn stream_ids(fps: Option<f64>, options: PipelineOptions) -> Vec<Vec<u64>> {
    let source = Clock {
        fps,
        frames: 24,
        next: 0,
    };
    let detector: Box<dyn Detector> = Box::new(Blink {
        names: vec!["person".to_string()],
    });
    DetectTrackStream::from_source(Box::new(source), detector, options)
        .unwrap()
        .map(|f| f.unwrap().tracks.iter().map(|t| t.track_id).collect())
        .collect()
}

/// The default buffer (30 frames at 30 fps) is one second. At 10 fps that is 10 frames: a
/// person hidden for 15 frames (1.5 s) comes back under a new id (unconfirmed on index 20,
/// output on 21). At 30 fps the same 15 frames (0.5 s) are inside the buffer: same id.
#[test]
fn the_lost_track_buffer_follows_the_source_frame_rate() {
    let at10 = stream_ids(Some(10.0), PipelineOptions::default());
    let id = at10[0][0];
    assert!(at10[20].is_empty(), "10 fps: index 20 starts a new track");
    assert_eq!(at10[21].len(), 1);
    assert_ne!(
        at10[21][0], id,
        "10 fps: 1.5 s hidden is past the 1 s buffer"
    );

    let at30 = stream_ids(Some(30.0), PipelineOptions::default());
    assert_eq!(at30[20], vec![at30[0][0]], "30 fps: 0.5 s hidden, same id");
}
