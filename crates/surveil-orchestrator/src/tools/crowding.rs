//! Crowding: more people in the frame than the configured threshold.

use super::{BehaviourTool, Cue, Observation};
use crate::scene::Scene;

/// The tool's name.
pub const NAME: &str = "crowding";

/// Reports `crowding` (Notable) when the current frame holds more than `threshold` persons.
/// The score grows from 0.5 just over the threshold to 1 at twice the threshold.
#[derive(Debug, Clone)]
pub struct CrowdingTool {
    threshold: usize,
}

impl CrowdingTool {
    /// A tool for which more than `threshold` persons make a crowd.
    pub fn new(threshold: usize) -> Self {
        Self { threshold }
    }

    /// The threshold, persons.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

impl BehaviourTool for CrowdingTool {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&self, scene: &Scene) -> crate::Result<Vec<Observation>> {
        let count = scene.persons().count();
        if count <= self.threshold {
            return Ok(Vec::new());
        }
        let score = count as f64 / (2 * self.threshold.max(1)) as f64;
        Ok(vec![Observation {
            tool: NAME.into(),
            kind: "crowding".into(),
            track_id: None,
            cue: Cue::Notable,
            score: score.clamp(0.0, 1.0) as f32,
            detail: format!(
                "{count} people in view (more than the crowd threshold of {})",
                self.threshold
            ),
        }])
    }
}
