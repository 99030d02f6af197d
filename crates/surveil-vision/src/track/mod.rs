//! Multi-object tracking: ByteTrack with a constant-velocity Kalman filter and optimal
//! (Hungarian) IoU assignment.

pub mod assignment;
pub mod bytetrack;
pub mod kalman;

pub use assignment::{linear_assignment, Assignment};
pub use bytetrack::{
    ByteTracker, Track, TrackState, TrackedObject, TrackerParams, TrajectoryPoint,
};
pub use kalman::KalmanBox;
