//! The question put to the vision-language model: what the camera shows, what the tools saw,
//! and the verdict format. The verdict's JSON schema lives in [`crate::verdict`]; this module
//! turns a scene summary into the system and user turns.

use crate::tools::{Cue, Observation};

/// What the prompt says about one tracked person.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackNote {
    /// ByteTrack id.
    pub track_id: u64,
    /// Seconds the person has been tracked.
    pub seconds_tracked: f64,
    /// Zones the person's feet are in now.
    pub zones: Vec<String>,
    /// Whether this is the person of interest (a crop of them is the second image).
    pub of_interest: bool,
}

/// Everything the prompt is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptContext<'a> {
    /// Camera name.
    pub camera: &'a str,
    /// Local wall-clock time of the frame, e.g. `2026-11-29 21:14`.
    pub local_time: &'a str,
    /// Whether the shop is closed at that time (outside `decision.opening_hours`).
    pub after_hours: bool,
    /// People in the frame.
    pub persons: usize,
    /// Bags (handbag, backpack, suitcase) in the frame.
    pub bags: usize,
    /// Recent history of the tracked people.
    pub tracks: &'a [TrackNote],
    /// What the behaviour tools observed on this frame.
    pub observations: &'a [Observation],
    /// Whether a crop of the person of interest follows the full frame.
    pub has_crop: bool,
}

/// The system turn: the role and the answer format (the schema itself constrains decoding;
/// the prose keeps an unconstrained model close to it).
pub const SYSTEM_PROMPT: &str = "You are a retail loss-prevention analyst watching a shop's \
security camera. Judge only what is visible. Most shoppers are innocent: say normal_shopping \
unless the image shows otherwise. Answer with one JSON object and nothing else: \
{\"suspicion_level\": \"low|medium|high|critical\", \"action_type\": \
\"normal_shopping|suspicious_movement|item_concealment|potential_theft|confirmed_theft\", \
\"confidence\": 0.0-1.0, \"description\": \"what the people do\", \"reasoning\": \"why\", \
\"recommendations\": [\"...\"]}";

/// Observations listed in the prompt at most (the strongest first).
pub const MAX_OBSERVATIONS: usize = 8;

/// The user turn for `ctx`.
pub fn user_prompt(ctx: &PromptContext<'_>) -> String {
    let mut s = String::with_capacity(512);
    s.push_str(&format!(
        "Camera \"{}\" at {}{}. {} {} and {} {} in view.",
        ctx.camera,
        ctx.local_time,
        if ctx.after_hours {
            " (the shop is closed)"
        } else {
            ""
        },
        ctx.persons,
        if ctx.persons == 1 { "person" } else { "people" },
        ctx.bags,
        if ctx.bags == 1 { "bag" } else { "bags" },
    ));
    if ctx.has_crop {
        s.push_str(" The second image is a close-up of the person of interest.");
    }
    let mut people: Vec<&TrackNote> = ctx.tracks.iter().collect();
    people.sort_by(|a, b| {
        b.of_interest
            .cmp(&a.of_interest)
            .then(b.seconds_tracked.total_cmp(&a.seconds_tracked))
    });
    if !people.is_empty() {
        s.push_str("\nPeople:");
        for t in people.iter().take(6) {
            s.push_str(&format!(
                "\n- person {}{}: seen for {:.0} s",
                t.track_id,
                if t.of_interest { " (of interest)" } else { "" },
                t.seconds_tracked
            ));
            if !t.zones.is_empty() {
                s.push_str(&format!(", in {}", t.zones.join(", ")));
            }
        }
    }
    let mut obs: Vec<&Observation> = ctx
        .observations
        .iter()
        .filter(|o| o.cue > Cue::Info)
        .collect();
    obs.sort_by(|a, b| b.cue.cmp(&a.cue).then(b.score.total_cmp(&a.score)));
    if !obs.is_empty() {
        s.push_str("\nTool observations:");
        for o in obs.iter().take(MAX_OBSERVATIONS) {
            s.push_str(&format!("\n- {}", o.detail));
        }
    }
    s.push_str("\nWhat are these people doing, and is anything suspicious? Answer in JSON.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(cue: Cue, detail: &str) -> Observation {
        Observation {
            tool: "zones".into(),
            kind: "loitering".into(),
            track_id: Some(3),
            cue,
            score: 0.5,
            detail: detail.into(),
        }
    }

    #[test]
    fn prompt_names_camera_people_and_strong_observations_only() {
        let tracks = [
            TrackNote {
                track_id: 3,
                seconds_tracked: 42.0,
                zones: vec!["electronics".into()],
                of_interest: true,
            },
            TrackNote {
                track_id: 9,
                seconds_tracked: 5.0,
                zones: vec![],
                of_interest: false,
            },
        ];
        let observations = [
            obs(Cue::Info, "person 9 walks at 1.1 m/s"),
            obs(Cue::Suspicious, "person 3 loiters 42 s in electronics"),
        ];
        let p = user_prompt(&PromptContext {
            camera: "aisle-3",
            local_time: "2026-11-29 22:10",
            after_hours: true,
            persons: 2,
            bags: 1,
            tracks: &tracks,
            observations: &observations,
            has_crop: true,
        });
        assert!(p.starts_with(
            "Camera \"aisle-3\" at 2026-11-29 22:10 (the shop is closed). 2 people and 1 bag"
        ));
        assert!(p.contains("person 3 (of interest): seen for 42 s, in electronics"));
        assert!(p.contains("loiters 42 s"));
        assert!(!p.contains("1.1 m/s"), "Info observations stay out: {p}");
        assert!(p.contains("close-up"));
    }
}
