//! Multi-object tracking: ByteTrack with a constant-velocity Kalman filter and optimal
//! (Hungarian) IoU assignment.

pub(crate) mod assignment;
pub mod bytetrack;
pub(crate) mod kalman;

pub use bytetrack::{
    ByteTracker, Track, TrackState, TrackedObject, TrackerParams, TrajectoryPoint,
};
