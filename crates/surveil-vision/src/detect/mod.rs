//! Object detection: the [`Detector`] trait, detections in frame pixels, YOLO head decoding and
//! class-wise NMS, and the Darknet YOLOv3-tiny detector ([`DarknetYolo`]).

pub mod letterbox;
pub mod yolo;

use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::frame::Frame;
use crate::geometry::BBox;

pub use letterbox::{letterbox_into, LetterboxGeometry, LETTERBOX_FILL};
pub use yolo::{decode_yolo_head, DarknetYolo, HeadLayout, MaskOverride, YoloOptions};

/// One detected object in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    /// Class index in the detector's class list (COCO: 0 = person).
    pub class_id: usize,
    /// Confidence in `[0, 1]` (YOLO: objectness x class probability).
    pub score: f32,
    /// Box clipped to the frame.
    pub bbox: BBox,
}

/// Time spent in each step of one `detect` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DetectTimings {
    /// Letterboxing and building the input tensor.
    pub preprocess: Duration,
    /// The network forward pass.
    pub forward: Duration,
    /// Reading the heads, decoding boxes, NMS.
    pub postprocess: Duration,
}

impl std::ops::AddAssign for DetectTimings {
    fn add_assign(&mut self, rhs: Self) {
        self.preprocess += rhs.preprocess;
        self.forward += rhs.forward;
        self.postprocess += rhs.postprocess;
    }
}

/// What a detector returns for a batch of frames.
#[derive(Debug, Clone, Default)]
pub struct DetectOutput {
    /// Per input frame, in input order: its detections sorted by score, descending.
    pub detections: Vec<Vec<Detection>>,
    /// Where the time went.
    pub timings: DetectTimings,
}

/// An object detector. Implementations batch the frames they get into one forward pass where
/// they can; frames of a batch may have different sizes.
pub trait Detector: Send {
    /// A short name for logs and reports ("yolov3-tiny").
    fn name(&self) -> &str;

    /// Class names, indexed by `Detection::class_id`.
    fn class_names(&self) -> &[String];

    /// Detects objects in every frame of the batch.
    fn detect(&self, frames: &[&Frame]) -> Result<DetectOutput>;
}

/// A box before NMS and clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Class index.
    pub class_id: usize,
    /// Score.
    pub score: f32,
    /// Box in frame pixels, not clipped.
    pub bbox: BBox,
}

/// Class-wise greedy NMS: per class, in descending score order, a box is dropped when its IoU
/// with an already kept box of the same class is `> iou_threshold`. Returns the kept boxes
/// sorted by score, descending (stable for equal scores).
pub fn nms_per_class(mut candidates: Vec<Candidate>, iou_threshold: f32) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let suppressed = kept
            .iter()
            .any(|k| k.class_id == c.class_id && k.bbox.iou(&c.bbox) > iou_threshold);
        if !suppressed {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(class_id: usize, score: f32, x1: f32) -> Candidate {
        Candidate {
            class_id,
            score,
            bbox: BBox::new(x1, 0.0, x1 + 10.0, 10.0),
        }
    }

    #[test]
    fn nms_is_per_class_and_strict() {
        // IoU of boxes shifted by 3: 70/130 = 0.538 (> 0.45, suppressed); shifted by 7:
        // 30/170 = 0.176 (kept).
        let out = nms_per_class(
            vec![
                cand(0, 0.5, 3.0),
                cand(0, 0.9, 0.0),
                cand(1, 0.4, 0.0),
                cand(0, 0.6, 7.0),
            ],
            0.45,
        );
        let got: Vec<(usize, f32)> = out.iter().map(|c| (c.class_id, c.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (0, 0.6), (1, 0.4)]);
        // exactly at the threshold is kept (drop only when IoU > threshold)
        let a = cand(0, 0.9, 0.0);
        let b = cand(0, 0.8, 3.0);
        let iou = a.bbox.iou(&b.bbox);
        assert_eq!(nms_per_class(vec![a, b], iou).len(), 2);
    }
}
