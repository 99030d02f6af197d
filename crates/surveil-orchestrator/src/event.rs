//! The event record: one JSON object per analysed frame, and one per VLM analysis, as written
//! to `events.jsonl` (and any other sink).

use serde::Serialize;

use crate::decision::AlertLevel;
use crate::tools::Observation;
use crate::verdict::ParsedVerdict;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A frame went through detection, tracking, the tools and the decision engine.
    Frame,
    /// A VLM analysis of an earlier frame finished (or failed); `frame_id` is the analysed frame.
    Analysis,
}

impl EventKind {
    /// The name events are written with (`frame`, `analysis`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Frame => "frame",
            EventKind::Analysis => "analysis",
        }
    }
}

/// One tracked object as recorded in an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventTrack {
    /// ByteTrack id.
    pub track_id: u64,
    /// Detector class name (`person`, `handbag`, ...).
    pub class: String,
    /// Box `[x1, y1, x2, y2]` in pixels of the source frame.
    pub bbox: [f32; 4],
    /// Score of the detection matched on this frame.
    pub score: f32,
}

/// A behaviour tool that failed or ran past its timeout on this frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolFailureRecord {
    /// Tool name.
    pub tool: String,
    /// Why (error text, `timeout after N ms`, `panicked`).
    pub reason: String,
}

/// How a VLM call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VlmOutcome {
    /// A verdict was read from the answer (strictly or after lenient repairs).
    Ok,
    /// The answer could not be read as a verdict (kept raw in the event).
    ParseFailed,
    /// Generation failed with an error.
    Error,
    /// The analysis ran past `orchestration.vlm_timeout_seconds` and was abandoned.
    Timeout,
    /// The run was stopping and the analysis was abandoned.
    Cancelled,
}

impl VlmOutcome {
    /// Every outcome.
    pub const ALL: [VlmOutcome; 5] = [
        VlmOutcome::Ok,
        VlmOutcome::ParseFailed,
        VlmOutcome::Error,
        VlmOutcome::Timeout,
        VlmOutcome::Cancelled,
    ];

    /// The name events are written with (`ok`, `parse_failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VlmOutcome::Ok => "ok",
            VlmOutcome::ParseFailed => "parse_failed",
            VlmOutcome::Error => "error",
            VlmOutcome::Timeout => "timeout",
            VlmOutcome::Cancelled => "cancelled",
        }
    }
}

/// The record of one VLM call, attached to analysis events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VlmCallRecord {
    /// Model id.
    pub model: String,
    /// Why it was asked (`persons_present`, `tool_cue`, `periodic`).
    pub trigger: String,
    /// How it ended.
    pub outcome: VlmOutcome,
    /// Error text for `error`, `timeout`, `parse_failed`.
    pub error: Option<String>,
    /// The answer text as generated (after the reasoning span for thinking models).
    pub raw_text: String,
    /// Reasoning span of thinking models.
    pub reasoning: Option<String>,
    /// Tokens generated.
    pub tokens: usize,
    /// Images given (the frame, and the crop of the person of interest when there was one).
    pub images: usize,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Vision encoder time, seconds.
    pub vision_s: f64,
    /// Time to first token, seconds.
    pub ttft_s: f64,
    /// Decode speed, tokens per second.
    pub decode_tokens_per_s: f64,
    /// Wall time from hand-off to result, seconds (includes waiting for the model).
    pub total_s: f64,
    /// Whether decoding was constrained to the verdict's JSON schema.
    pub constrained: bool,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Frame or analysis.
    pub kind: EventKind,
    /// Index of the frame in its source (for analyses: the analysed frame).
    pub frame_id: u64,
    /// Time of the frame in the source, seconds from its start.
    pub source_time_s: f64,
    /// Wall-clock time the event was made, RFC 3339 in UTC.
    pub timestamp: String,
    /// Camera name.
    pub camera: String,
    /// People in the frame.
    pub persons: usize,
    /// Tracked objects in the frame.
    pub tracks: Vec<EventTrack>,
    /// What the behaviour tools observed.
    pub tool_observations: Vec<Observation>,
    /// Tools that failed or were late.
    pub tool_failures: Vec<ToolFailureRecord>,
    /// The decision engine's level.
    pub alert_level: AlertLevel,
    /// Flagged for a human: the verdict's confidence was below the threshold, or the answer
    /// could not be read while tools saw something.
    pub needs_review: bool,
    /// Decision rules that fired (ids of `docs/decisions.md`).
    pub rules: Vec<String>,
    /// The VLM verdict with its parse status (`parsed`, `repaired`, `parse_failed` with the
    /// raw reply), or null.
    pub vlm_analysis: Option<ParsedVerdict>,
    /// The VLM call behind `vlm_analysis` (analysis events).
    pub vlm: Option<VlmCallRecord>,
    /// The trigger's decision on this frame (`persons_present`, `skip:cooldown`, ...).
    pub trigger: Option<String>,
    /// Actions the decision engine asks for.
    pub actions: Vec<String>,
    /// Per-frame processing time (detection to sinks), milliseconds; for analyses the VLM time.
    pub processing_ms: f64,
    /// Annotated frame written for this event (alerts), relative to the run directory.
    pub snapshot: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_names() {
        for kind in [EventKind::Frame, EventKind::Analysis] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        for outcome in VlmOutcome::ALL {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::json!(outcome.as_str())
            );
        }
    }
}
