//! Zones: dwell time of persons in named polygons of the camera view, and loitering.
//!
//! A person is in a zone when the bottom centre of its box (the feet point) lies inside the
//! polygon (even-odd rule, W. R. Franklin's PNPOLY ray-crossing test). Dwell time is the
//! length of the current unbroken run of sightings inside the zone, measured over the scene's
//! history window (so it never exceeds `tools.history_seconds`).

use surveil_config::{SystemConfig, ZoneConfig, ZoneCoordinates};

use super::{BehaviourTool, Cue, Observation};
use crate::scene::{Scene, TrackHistory};

/// The tool's name.
pub const NAME: &str = "zones";

/// A zone ready for use: polygon corners as written, the dwell limit resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Unique name.
    pub name: String,
    /// The camera it belongs to; `None`: every camera.
    pub camera: Option<String>,
    /// Corners `(x, y)`: pixels, or fractions of the frame size when `normalized`.
    pub polygon: Vec<(f64, f64)>,
    /// Whether the corners are fractions of the frame width and height.
    pub normalized: bool,
    /// Restricted zones make presence Notable and loitering Suspicious.
    pub restricted: bool,
    /// Dwell limit, seconds.
    pub max_dwell_seconds: f64,
}

impl Zone {
    /// A zone from its configuration; `default_dwell_seconds` (`tools.loiter_seconds`)
    /// applies when it sets no limit of its own.
    pub fn from_config(z: &ZoneConfig, default_dwell_seconds: f64) -> Self {
        Self {
            name: z.name.clone(),
            camera: z.camera.clone(),
            polygon: z.polygon.iter().map(|&[x, y]| (x, y)).collect(),
            normalized: z.coordinates == ZoneCoordinates::Normalized,
            restricted: z.restricted,
            max_dwell_seconds: z.max_dwell_seconds.unwrap_or(default_dwell_seconds),
        }
    }

    /// Whether the zone applies to `camera`.
    pub fn applies_to(&self, camera: &str) -> bool {
        self.camera.as_deref().is_none_or(|c| c == camera)
    }

    /// Corners in pixels of a `(width, height)` frame.
    pub fn polygon_px(&self, frame_size: (u32, u32)) -> Vec<(f64, f64)> {
        if self.normalized {
            let (w, h) = (f64::from(frame_size.0), f64::from(frame_size.1));
            self.polygon.iter().map(|&(x, y)| (x * w, y * h)).collect()
        } else {
            self.polygon.clone()
        }
    }
}

/// Whether `p` lies inside `polygon` (even-odd rule; points exactly on an edge may go
/// either way).
pub fn point_in_polygon(p: (f64, f64), polygon: &[(f64, f64)]) -> bool {
    let n = polygon.len();
    if n < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = polygon[i];
        let (xj, yj) = polygon[j];
        if (yi > p.1) != (yj > p.1) && p.0 < (xj - xi) * (p.1 - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Seconds of the current unbroken run of sightings of `history` whose feet point is inside
/// `polygon_px`; `None` when the last sighting is outside.
pub fn dwell_seconds(history: &TrackHistory, polygon_px: &[(f64, f64)]) -> Option<f64> {
    let last = history.latest()?;
    if !point_in_polygon(last.feet(), polygon_px) {
        return None;
    }
    let entered = history
        .points
        .iter()
        .rev()
        .take_while(|p| point_in_polygon(p.feet(), polygon_px))
        .last()
        .unwrap_or(last);
    Some(last.seconds() - entered.seconds())
}

/// Per person in the current frame and zone of this camera it stands in: `loitering` when
/// the dwell exceeds the zone's limit (Notable; Suspicious in a restricted zone),
/// `restricted_zone` (Notable) for presence in a restricted zone under the limit, `in_zone`
/// (Info) otherwise.
#[derive(Debug, Clone, Default)]
pub struct ZonesTool {
    zones: Vec<Zone>,
}

impl ZonesTool {
    /// A tool watching these zones.
    pub fn new(zones: Vec<Zone>) -> Self {
        Self { zones }
    }

    /// The zones of `config` (`[[zones]]`, limits defaulting to `tools.loiter_seconds`).
    pub fn from_config(config: &SystemConfig) -> Self {
        Self::new(
            config
                .zones
                .iter()
                .map(|z| Zone::from_config(z, config.tools.loiter_seconds))
                .collect(),
        )
    }

    /// The zones.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }
}

impl BehaviourTool for ZonesTool {
    fn name(&self) -> &'static str {
        NAME
    }

    fn observe(&self, scene: &Scene) -> crate::Result<Vec<Observation>> {
        let mut out = Vec::new();
        for zone in self.zones.iter().filter(|z| z.applies_to(scene.camera())) {
            let polygon = zone.polygon_px(scene.frame_size());
            let limit = zone.max_dwell_seconds;
            for person in scene.persons() {
                let id = person.track_id;
                let Some(dwell) = scene.history(id).and_then(|h| dwell_seconds(h, &polygon)) else {
                    continue;
                };
                let name = &zone.name;
                let (kind, cue, score, detail) = if dwell > limit {
                    (
                        "loitering",
                        if zone.restricted {
                            Cue::Suspicious
                        } else {
                            Cue::Notable
                        },
                        dwell / (2.0 * limit),
                        format!(
                            "person {id} has stayed {dwell:.0} s in {}zone `{name}` (limit \
                             {limit:.0} s)",
                            if zone.restricted { "restricted " } else { "" }
                        ),
                    )
                } else if zone.restricted {
                    (
                        "restricted_zone",
                        Cue::Notable,
                        dwell / limit,
                        format!("person {id} is in restricted zone `{name}` ({dwell:.0} s)"),
                    )
                } else {
                    (
                        "in_zone",
                        Cue::Info,
                        dwell / limit,
                        format!("person {id} is in zone `{name}` ({dwell:.0} s)"),
                    )
                };
                out.push(Observation {
                    tool: NAME.into(),
                    kind: kind.into(),
                    track_id: Some(id),
                    cue,
                    score: score.clamp(0.0, 1.0) as f32,
                    detail,
                });
            }
        }
        Ok(out)
    }
}
