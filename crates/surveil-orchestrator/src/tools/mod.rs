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

pub mod crowding;
pub mod proximity;
pub mod runner;
pub mod trajectory;
pub mod zones;

use std::sync::Arc;

use surveil_config::{OrchestrationMode, SystemConfig};

use crate::scene::Scene;

pub use crowding::CrowdingTool;
pub use proximity::{ProximitySettings, ProximityTool};
pub use runner::{ToolFailure, ToolFailureReason, ToolReport, ToolRunner, ToolTiming};
pub use trajectory::{TrajectoryMetrics, TrajectorySettings, TrajectoryTool};
pub use zones::{Zone, ZonesTool};

/// A behaviour tool: a pure function of a scene (and the tool's own settings) that reports
/// what it sees as observations. Tools keep no state between frames and never call a model;
/// the [`ToolRunner`] runs them on worker threads under a time limit.
pub trait BehaviourTool: Send + Sync {
    /// Stable snake_case name, used in observations, failures and timings.
    fn name(&self) -> &'static str;

    /// Observations of the current frame of `scene`.
    ///
    /// # Errors
    /// [`crate::OrchestratorError::Tool`] when the tool cannot judge the scene.
    fn observe(&self, scene: &Scene) -> crate::Result<Vec<Observation>>;
}

/// The behaviour tools that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Speed, direction changes, stops, return to start ([`TrajectoryTool`]).
    Trajectory,
    /// Dwell time in zones, loitering ([`ZonesTool`]).
    Zones,
    /// People count over a threshold ([`CrowdingTool`]).
    Crowding,
    /// Bags near people, bags vanishing beside people ([`ProximityTool`]).
    Proximity,
}

impl ToolKind {
    /// Every tool, in the order they run and report.
    pub const ALL: &'static [ToolKind] = &[
        ToolKind::Trajectory,
        ToolKind::Zones,
        ToolKind::Crowding,
        ToolKind::Proximity,
    ];

    /// The tools an orchestration mode runs: `fast` = trajectory + zones; `balanced` = + crowding
    /// + proximity; `thorough` = every tool.
    pub fn for_mode(mode: OrchestrationMode) -> &'static [ToolKind] {
        match mode {
            OrchestrationMode::Fast => &[ToolKind::Trajectory, ToolKind::Zones],
            OrchestrationMode::Balanced => &[
                ToolKind::Trajectory,
                ToolKind::Zones,
                ToolKind::Crowding,
                ToolKind::Proximity,
            ],
            OrchestrationMode::Thorough => Self::ALL,
        }
    }

    /// The tool's name (as [`BehaviourTool::name`] reports it).
    pub fn name(self) -> &'static str {
        match self {
            ToolKind::Trajectory => trajectory::NAME,
            ToolKind::Zones => zones::NAME,
            ToolKind::Crowding => crowding::NAME,
            ToolKind::Proximity => proximity::NAME,
        }
    }

    /// The tool with its settings from `config`.
    pub fn build(self, config: &SystemConfig) -> Arc<dyn BehaviourTool> {
        match self {
            ToolKind::Trajectory => Arc::new(TrajectoryTool::new(TrajectorySettings::from_config(
                &config.tools,
            ))),
            ToolKind::Zones => Arc::new(ZonesTool::from_config(config)),
            ToolKind::Crowding => Arc::new(CrowdingTool::new(config.tools.crowd_threshold)),
            ToolKind::Proximity => Arc::new(ProximityTool::new(ProximitySettings::from_config(
                &config.tools,
            ))),
        }
    }
}

/// The tools `config.orchestration.mode` runs, built from `config`, in [`ToolKind::ALL`]
/// order.
pub fn tools_for_config(config: &SystemConfig) -> Vec<Arc<dyn BehaviourTool>> {
    ToolKind::for_mode(config.orchestration.mode)
        .iter()
        .map(|k| k.build(config))
        .collect()
}

/// Euclidean distance between two points, pixels.
pub(crate) fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - b.0).hypot(a.1 - b.1)
}
