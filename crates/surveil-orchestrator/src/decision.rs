//! The decision engine: an alert level, a review flag and actions from the VLM verdict, the
//! behaviour-tool cues, the time of day and the people present.
//!
//! [`decide`] is a pure function of a [`DecisionPolicy`] and a [`DecisionInput`]: it reads no
//! clock and no configuration. Its rules run in a fixed order, each with a stable id reported in
//! [`Decision::rules_fired`] when its condition holds; `docs/decisions.md` documents one rule
//! per row, and [`RULE_IDS`] lists them in evaluation order.
//!
//! Not here: when the VLM is asked (module `trigger`), how a verdict is read (module `verdict`),
//! what an action does (the sinks).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tools::{Cue, Observation};
use crate::verdict::{ActionType, ParsedVerdict, SuspicionLevel};

/// Stable rule ids, in evaluation order.
pub mod rule {
    /// A parse-failed verdict counts as no verdict; review when a cue is Notable or stronger.
    pub const VERDICT_PARSE_FAILED: &str = "verdict.parse_failed";
    /// Verdict level → base alert level (low→normal, medium→attention, high→alert,
    /// critical→critical).
    pub const VERDICT_LEVEL: &str = "verdict.level";
    /// Action type potential_theft or confirmed_theft → at least alert.
    pub const VERDICT_THEFT_ACTION: &str = "verdict.theft_action";
    /// A Suspicious tool cue → at least attention.
    pub const CUE_SUSPICIOUS: &str = "cue.suspicious";
    /// A Suspicious tool cue and a verdict at medium or above → at least alert.
    pub const CUE_SUSPICIOUS_CONFIRMED: &str = "cue.suspicious_confirmed";
    /// Verdict confidence below the threshold while the level is above attention → capped at
    /// attention, review needed.
    pub const VERDICT_LOW_CONFIDENCE: &str = "verdict.low_confidence";
    /// No usable verdict and no Notable or Suspicious cue → normal (after-hours presence may
    /// still raise it).
    pub const NO_SIGNAL: &str = "no_signal.normal";
    /// People present outside opening hours, escalation enabled → one level up.
    pub const AFTER_HOURS_PRESENCE: &str = "after_hours.presence";
}

/// Every rule id, in evaluation order.
pub const RULE_IDS: [&str; 8] = [
    rule::VERDICT_PARSE_FAILED,
    rule::VERDICT_LEVEL,
    rule::VERDICT_THEFT_ACTION,
    rule::CUE_SUSPICIOUS,
    rule::CUE_SUSPICIOUS_CONFIRMED,
    rule::VERDICT_LOW_CONFIDENCE,
    rule::NO_SIGNAL,
    rule::AFTER_HOURS_PRESENCE,
];

/// How urgent a frame is. Ordered: `Normal < Attention < Alert < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    /// Nothing to do beyond the log.
    Normal,
    /// Staff should have a look.
    Attention,
    /// Security should intervene.
    Alert,
    /// Immediate response.
    Critical,
}

impl AlertLevel {
    /// The base level of a verdict level: low→normal, medium→attention, high→alert,
    /// critical→critical.
    pub fn from_suspicion(level: SuspicionLevel) -> Self {
        match level {
            SuspicionLevel::Low => Self::Normal,
            SuspicionLevel::Medium => Self::Attention,
            SuspicionLevel::High => Self::Alert,
            SuspicionLevel::Critical => Self::Critical,
        }
    }

    /// One level up; critical stays critical.
    pub fn raised(self) -> Self {
        match self {
            Self::Normal => Self::Attention,
            Self::Attention => Self::Alert,
            Self::Alert | Self::Critical => Self::Critical,
        }
    }

    /// The actions of this level, cumulative: normal logs the event; attention also notifies
    /// staff; alert also notifies security and saves the clip; critical also notifies the
    /// manager.
    pub fn actions(self) -> Vec<Action> {
        let all = [
            Action::LogEvent,
            Action::NotifyStaff,
            Action::NotifySecurity,
            Action::SaveClip,
            Action::NotifyManager,
        ];
        let n = match self {
            Self::Normal => 1,
            Self::Attention => 2,
            Self::Alert => 4,
            Self::Critical => 5,
        };
        all.into_iter().take(n).collect()
    }

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Attention => "attention",
            Self::Alert => "alert",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the pipeline's sinks carry out for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the event (every level).
    LogEvent,
    /// Tell the floor staff (attention and above).
    NotifyStaff,
    /// Tell security (alert and above).
    NotifySecurity,
    /// Keep the video clip around the frame (alert and above).
    SaveClip,
    /// Tell the manager on duty (critical).
    NotifyManager,
    /// Put the frame in the human review queue (when [`Decision::needs_review`]).
    RequestReview,
}

pub use surveil_config::{ClockTime, OpeningHours};

/// The decision policy: plain values, resolved from the configuration by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionPolicy {
    /// Verdict confidence, in [0, 1], needed to escalate above attention.
    pub confidence_threshold: f32,
    /// Opening hours; `None` disables the after-hours rule.
    pub opening_hours: Option<OpeningHours>,
    /// Whether people present outside opening hours raise the level by one.
    pub after_hours_escalation: bool,
}

impl Default for DecisionPolicy {
    /// Threshold 0.7 (the default `orchestration.confidence_threshold`), no opening hours.
    fn default() -> Self {
        Self {
            confidence_threshold: 0.7,
            opening_hours: None,
            after_hours_escalation: false,
        }
    }
}

/// What one decision is taken on.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The verdict for this frame; `None` when the VLM was not asked or did not answer. A
    /// parse-failed verdict counts as none (rule `verdict.parse_failed`).
    pub verdict: Option<&'a ParsedVerdict>,
    /// The behaviour tools' observations for this frame.
    pub observations: &'a [Observation],
    /// Local time of day of the frame.
    pub time: ClockTime,
    /// People in the frame.
    pub persons_present: usize,
}

/// The outcome for one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// How urgent.
    pub alert_level: AlertLevel,
    /// Whether a person should confirm (low confidence, unreadable verdict with cues).
    pub needs_review: bool,
    /// What to do: the level's actions, then [`Action::RequestReview`] when review is needed.
    pub actions: Vec<Action>,
    /// Ids of the rules whose condition held, in evaluation order (see [`RULE_IDS`]).
    pub rules_fired: Vec<&'static str>,
}

/// Decides the alert level, review flag and actions for one frame. Pure: the same policy and
/// input always give the same decision.
///
/// Rules, in order (ids in [`rule`]):
/// 1. `verdict.parse_failed`: the verdict could not be read → no verdict; review when any cue
///    is Notable or Suspicious.
/// 2. `verdict.level`: the verdict's level sets the base level.
/// 3. `verdict.theft_action`: potential or confirmed theft → at least alert.
/// 4. `cue.suspicious`: a Suspicious cue → at least attention; `cue.suspicious_confirmed`:
///    with a verdict at medium or above → at least alert.
/// 5. `verdict.low_confidence`: confidence below the threshold (or not a number) while the
///    level so far is above attention → capped at attention, review needed.
/// 6. `no_signal.normal`: no usable verdict and no cue at Notable or above → normal.
/// 7. `after_hours.presence`: escalation enabled, opening hours set, the frame outside them and
///    people present → one level up (after the cap: presence after hours does not depend on
///    the verdict's confidence).
pub fn decide(policy: &DecisionPolicy, input: &DecisionInput<'_>) -> Decision {
    let mut fired = Vec::new();
    let mut needs_review = false;
    let strongest_cue = input.observations.iter().map(|o| o.cue).max();
    let notable = strongest_cue.is_some_and(|c| c >= Cue::Notable);
    let suspicious_cue = strongest_cue == Some(Cue::Suspicious);

    let verdict = match input.verdict {
        Some(parsed) if parsed.is_failed() => {
            fired.push(rule::VERDICT_PARSE_FAILED);
            needs_review |= notable;
            None
        }
        Some(parsed) => parsed.usable(),
        None => None,
    };

    let mut level = AlertLevel::Normal;
    if let Some(v) = verdict {
        fired.push(rule::VERDICT_LEVEL);
        level = AlertLevel::from_suspicion(v.suspicion_level);
        if matches!(
            v.action_type,
            ActionType::PotentialTheft | ActionType::ConfirmedTheft
        ) {
            fired.push(rule::VERDICT_THEFT_ACTION);
            level = level.max(AlertLevel::Alert);
        }
    }

    if suspicious_cue {
        fired.push(rule::CUE_SUSPICIOUS);
        level = level.max(AlertLevel::Attention);
        if verdict.is_some_and(|v| v.suspicion_level >= SuspicionLevel::Medium) {
            fired.push(rule::CUE_SUSPICIOUS_CONFIRMED);
            level = level.max(AlertLevel::Alert);
        }
    }

    if let Some(v) = verdict {
        // NaN compares false: an unreadable confidence counts as too low.
        let confident = v.confidence >= policy.confidence_threshold;
        if !confident && level > AlertLevel::Attention {
            fired.push(rule::VERDICT_LOW_CONFIDENCE);
            level = AlertLevel::Attention;
            needs_review = true;
        }
    }

    if verdict.is_none() && !notable {
        fired.push(rule::NO_SIGNAL);
    }

    if policy.after_hours_escalation && input.persons_present > 0 {
        if let Some(hours) = policy.opening_hours {
            if !hours.is_open(input.time) {
                fired.push(rule::AFTER_HOURS_PRESENCE);
                level = level.raised();
            }
        }
    }

    let mut actions = level.actions();
    if needs_review {
        actions.push(Action::RequestReview);
    }
    tracing::debug!(
        alert_level = %level,
        needs_review,
        rules = ?fired,
        "decision"
    );
    Decision {
        alert_level: level,
        needs_review,
        actions,
        rules_fired: fired,
    }
}
