//! Behaviour tools: pure functions of a scene that report what people do (trajectories, dwell
//! in zones, crowding, bags near people). Each tool is one file; the runner enforces
//! `max_concurrent_tools` and `timeout_seconds`.

use serde::{Deserialize, Serialize};

/// How strongly an observation hints at theft or trouble. Ordered: `Info < Notable <
/// Suspicious`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cue {
    /// A plain fact (a count, a speed) with no hint of trouble.
    Info,
    /// Worth a look (long dwell, a crowd, erratic path).
    Notable,
    /// A behaviour associated with theft (a bag vanishing beside a person, loitering in a
    /// restricted zone).
    Suspicious,
}

/// One fact a tool found in a scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The tool that made it (`trajectory`, `zones`, `crowding`, `proximity`).
    pub tool: String,
    /// What was seen, as a stable snake_case name (`loitering`, `return_to_start`,
    /// `bag_disappeared`, `crowding`, ...).
    pub kind: String,
    /// The track it concerns, when it concerns one person.
    pub track_id: Option<u64>,
    /// How strongly it hints at trouble.
    pub cue: Cue,
    /// Tool-specific strength in [0, 1] (e.g. dwell time over the limit, overlap ratio).
    pub score: f32,
    /// One human-readable sentence for the prompt and the event record.
    pub detail: String,
}
