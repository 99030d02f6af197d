//! Verdicts for captioning models (GIT, profile `testing`). A captioner describes the frame
//! but does not judge it: its caption becomes the description, and the suspicion level comes
//! from the tool cues plus a keyword score over the caption. The rule is documented in
//! `docs/decisions.md` ("Captioner verdicts").

use crate::tools::{Cue, Observation};
use crate::verdict::{ActionType, SuspicionLevel, Verdict};

/// Words of a caption that hint at concealment or theft, with their weight.
pub const CONCEALMENT_WORDS: &[(&str, u32)] = &[
    ("steal", 3),
    ("stealing", 3),
    ("theft", 3),
    ("thief", 3),
    ("shoplift", 3),
    ("shoplifting", 3),
    ("hide", 2),
    ("hiding", 2),
    ("conceal", 2),
    ("concealing", 2),
    ("pocket", 1),
    ("bag", 1),
    ("backpack", 1),
    ("running", 1),
    ("mask", 1),
];

/// Confidence of every captioner verdict: a caption is weak evidence, so with the default
/// `confidence_threshold` (0.7) its level alone never escalates past `attention` and strong
/// cues are flagged for review instead.
pub const CAPTIONER_CONFIDENCE: f32 = 0.5;

/// Sum of the weights of the words of `caption` found in [`CONCEALMENT_WORDS`] (whole words,
/// case-insensitive).
pub fn keyword_score(caption: &str) -> u32 {
    caption
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter_map(|w| {
            CONCEALMENT_WORDS
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, s)| *s)
        })
        .sum()
}

/// The verdict of a captioner: the strongest tool cue sets the base level (none or Info →
/// low, Notable → medium, Suspicious → high), a keyword score of 3 or more raises it one step
/// (at most high: a caption never yields critical), and the action type follows the level.
pub fn caption_verdict(caption: &str, observations: &[Observation]) -> Verdict {
    let strongest = observations.iter().map(|o| o.cue).max();
    let mut level = match strongest {
        Some(Cue::Suspicious) => SuspicionLevel::High,
        Some(Cue::Notable) => SuspicionLevel::Medium,
        _ => SuspicionLevel::Low,
    };
    let score = keyword_score(caption);
    if score >= 3 {
        level = match level {
            SuspicionLevel::Low => SuspicionLevel::Medium,
            _ => SuspicionLevel::High,
        };
    }
    let action_type = match level {
        SuspicionLevel::Low => ActionType::NormalShopping,
        SuspicionLevel::Medium => ActionType::SuspiciousMovement,
        _ => ActionType::PotentialTheft,
    };
    let cues: Vec<&str> = observations
        .iter()
        .filter(|o| o.cue > Cue::Info)
        .map(|o| o.detail.as_str())
        .collect();
    Verdict {
        suspicion_level: level,
        action_type,
        confidence: CAPTIONER_CONFIDENCE,
        description: caption.trim().to_string(),
        reasoning: format!(
            "captioner verdict: strongest tool cue {}, caption keyword score {score}{}",
            strongest.map_or("none".to_string(), |c| format!("{c:?}").to_lowercase()),
            if cues.is_empty() {
                String::new()
            } else {
                format!("; cues: {}", cues.join("; "))
            }
        ),
        recommendations: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cue(c: Cue) -> Observation {
        Observation {
            tool: "proximity".into(),
            kind: "bag_disappeared".into(),
            track_id: Some(1),
            cue: c,
            score: 1.0,
            detail: "a bag vanished next to person 1".into(),
        }
    }

    #[test]
    fn keywords_are_whole_words_case_insensitive() {
        assert_eq!(keyword_score("A man HIDING a bottle in his Pocket."), 3);
        assert_eq!(keyword_score("a baggage cart"), 0);
        assert_eq!(keyword_score(""), 0);
    }

    #[test]
    fn level_from_cues_then_keywords() {
        let v = caption_verdict("people walking in a store", &[]);
        assert_eq!(v.suspicion_level, SuspicionLevel::Low);
        assert_eq!(v.action_type, ActionType::NormalShopping);
        let v = caption_verdict("a man stealing a bottle", &[]);
        assert_eq!(v.suspicion_level, SuspicionLevel::Medium);
        let v = caption_verdict("a man with a bag", &[cue(Cue::Notable)]);
        assert_eq!(v.suspicion_level, SuspicionLevel::Medium);
        let v = caption_verdict("a thief hiding things", &[cue(Cue::Suspicious)]);
        assert_eq!(v.suspicion_level, SuspicionLevel::High, "never critical");
        assert_eq!(v.action_type, ActionType::PotentialTheft);
        assert_eq!(v.confidence, CAPTIONER_CONFIDENCE);
        assert!(v.reasoning.contains("suspicious"));
    }
}
