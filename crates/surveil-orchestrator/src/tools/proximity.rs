//! Person–bag proximity, and the concealment cue: a bag that was next to a person vanishes
//! while that person is still in view.
//!
//! A bag is near a person when the gap between their boxes (0 when they overlap) is at most
//! `proximity_margin` times the person's box height.

use surveil_config::ToolsConfig;
use surveil_vision::BBox;

use super::{BehaviourTool, Cue, Observation};
use crate::scene::{ObjectKind, Scene, TrackHistory};

/// The tool's name.
pub const NAME: &str = "proximity";

/// A visible bag overlapping a vanished bag's last box at least this much (IoU) is taken to
/// be the same bag under a new track id.
const SAME_BAG_IOU: f32 = 0.3;

/// A bag whose last box comes this close to the frame border (pixels) left the view rather
/// than vanished in it.
const BORDER_PX: f32 = 2.0;

/// Thresholds of the proximity tool (see [`ToolsConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ProximitySettings {
    /// Largest gap between a bag box and a person box that counts as near, as a fraction of
    /// the person's box height.
    pub margin: f64,
    /// How long a bag must have been near the person before it vanished, seconds.
    pub association_seconds: f64,
    /// How long the bag must have been gone, seconds.
    pub gone_seconds: f64,
}

impl ProximitySettings {
    /// The proximity thresholds of the `tools` section.
    pub fn from_config(c: &ToolsConfig) -> Self {
        Self {
            margin: c.proximity_margin,
            association_seconds: c.bag_association_seconds,
            gone_seconds: c.bag_gone_seconds,
        }
    }
}

impl Default for ProximitySettings {
    fn default() -> Self {
        Self::from_config(&ToolsConfig::default())
    }
}

/// Euclidean gap between two boxes, pixels; 0 when they touch or overlap.
pub fn box_gap(a: &BBox, b: &BBox) -> f64 {
    let dx = (a.x1 - b.x2).max(b.x1 - a.x2).max(0.0);
    let dy = (a.y1 - b.y2).max(b.y1 - a.y2).max(0.0);
    f64::from(dx).hypot(f64::from(dy))
}

/// Fraction of `bag`'s area covered by `person`, in [0, 1].
pub fn overlap_fraction(bag: &BBox, person: &BBox) -> f64 {
    let iw = (bag.x2.min(person.x2) - bag.x1.max(person.x1)).max(0.0);
    let ih = (bag.y2.min(person.y2) - bag.y1.max(person.y1)).max(0.0);
    let area = bag.area();
    if area > 0.0 {
        f64::from(iw * ih / area).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Whether `bag` is near `person`: box gap at most `margin` × the person's box height.
pub fn is_near(bag: &BBox, person: &BBox, margin: f64) -> bool {
    box_gap(bag, person) <= margin * f64::from(person.height())
}

/// `bag_near_person` (Info) for each bag in view with a person near it (the nearest one);
/// `bag_disappeared` (Suspicious) for each bag that was near a person for at least
/// `association_seconds`, vanished inside the view at least `gone_seconds` ago while that
/// person is still in view, and did not reappear under a new track id.
#[derive(Debug, Clone, Default)]
pub struct ProximityTool {
    settings: ProximitySettings,
}

impl ProximityTool {
    /// A tool with these thresholds.
    pub fn new(settings: ProximitySettings) -> Self {
        Self { settings }
    }

    /// The thresholds.
    pub fn settings(&self) -> &ProximitySettings {
        &self.settings
    }

    /// The concealment check of one vanished bag: the visible person it vanished beside and
    /// how long it had been near them, seconds, with the overlap at the last sighting.
    fn vanished_beside(&self, scene: &Scene, bag: &TrackHistory) -> Option<(u64, f64, f64)> {
        let last = bag.latest()?;
        let gone = scene.seconds() - last.seconds();
        if gone < self.settings.gone_seconds {
            return None;
        }
        let (w, h) = scene.frame_size();
        let b = last.bbox;
        if b.x1 <= BORDER_PX
            || b.y1 <= BORDER_PX
            || b.x2 >= w as f32 - BORDER_PX
            || b.y2 >= h as f32 - BORDER_PX
        {
            return None;
        }
        if scene.bags().any(|v| v.bbox.iou(&b) >= SAME_BAG_IOU) {
            return None;
        }
        let margin = self.settings.margin;
        // The visible person nearest to the bag at its last sighting.
        let (person, _) = scene
            .persons()
            .filter_map(|p| {
                let ph = scene.history(p.track_id)?;
                let at = ph.at_frame(last.frame_index)?;
                is_near(&b, &at.bbox, margin).then(|| (ph, box_gap(&b, &at.bbox)))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        // The unbroken run of joint sightings, back from the last, with the bag near them.
        let near_since = bag
            .points
            .iter()
            .rev()
            .take_while(|bp| {
                person
                    .at_frame(bp.frame_index)
                    .is_some_and(|pp| is_near(&bp.bbox, &pp.bbox, margin))
            })
            .last()?;
        let together = last.seconds() - near_since.seconds();
        if together < self.settings.association_seconds {
            return None;
        }
        let overlap = person
            .at_frame(last.frame_index)
            .map_or(0.0, |pp| overlap_fraction(&b, &pp.bbox));
        Some((person.track_id, together, overlap))
    }
}

impl BehaviourTool for ProximityTool {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&self, scene: &Scene) -> crate::Result<Vec<Observation>> {
        let mut out = Vec::new();
        let margin = self.settings.margin;
        for bag in scene.bags() {
            let nearest = scene
                .persons()
                .filter(|p| is_near(&bag.bbox, &p.bbox, margin))
                .min_by(|a, b| box_gap(&bag.bbox, &a.bbox).total_cmp(&box_gap(&bag.bbox, &b.bbox)));
            if let Some(p) = nearest {
                out.push(Observation {
                    tool: NAME.into(),
                    kind: "bag_near_person".into(),
                    track_id: Some(p.track_id),
                    cue: Cue::Info,
                    score: overlap_fraction(&bag.bbox, &p.bbox) as f32,
                    detail: format!(
                        "{} {} is next to person {}",
                        bag.class_name, bag.track_id, p.track_id
                    ),
                });
            }
        }
        for bag in scene.vanished().filter(|h| h.kind == ObjectKind::Bag) {
            if let Some((person, together, overlap)) = self.vanished_beside(scene, bag) {
                let gone = scene.seconds() - bag.last_seen.as_secs_f64();
                out.push(Observation {
                    tool: NAME.into(),
                    kind: "bag_disappeared".into(),
                    track_id: Some(person),
                    cue: Cue::Suspicious,
                    score: (0.5 + 0.5 * overlap) as f32,
                    detail: format!(
                        "{} {} vanished {gone:.1} s ago beside person {person}, who is still \
                         in view (together for {together:.1} s)",
                        bag.class_name, bag.track_id
                    ),
                });
            }
        }
        Ok(out)
    }
}
