//! When the vision-language model is due.
//!
//! Rules, in order:
//! 1. Something is due: a tool cue of at least Notable not reported within its own cooldown
//!    ([`FireReason::ToolCue`]); else persons in view that no analysis has covered yet
//!    ([`FireReason::PersonsPresent`]); else persons in view and the periodic interval passed
//!    since the last analysis ([`FireReason::Periodic`]). Otherwise skip with
//!    [`SkipReason::NoPersons`] or [`SkipReason::NothingNew`].
//! 2. Never while the analyst is busy ([`SkipReason::AnalystBusy`]).
//! 3. Never within the cooldown of the last call ([`SkipReason::Cooldown`]), nor sooner after
//!    it than the last analysis took ([`SkipReason::Pacing`]): calls never come faster than
//!    the model serves them.
//!
//! Time is passed in as a clock value (a [`Duration`] since the run started, from any
//! monotonic clock), so the rules are testable without sleeping.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use surveil_config::OrchestrationConfig;

use crate::scene::Scene;
use crate::tools::{Cue, Observation};

/// Trigger thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSettings {
    /// Minimum time between two VLM calls (`orchestration.vlm_cooldown_seconds`).
    pub cooldown: Duration,
    /// Time after which persons in view are analysed again
    /// (`orchestration.vlm_periodic_seconds`).
    pub periodic: Duration,
    /// Minimum time before the same cue (tool, kind, track) triggers again
    /// (`orchestration.vlm_cue_cooldown_seconds`).
    pub cue_cooldown: Duration,
    /// Weakest cue that triggers.
    pub min_cue: Cue,
}

impl TriggerSettings {
    /// The trigger settings of the `orchestration` section; cues from Notable up trigger.
    pub fn from_config(o: &OrchestrationConfig) -> Self {
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO);
        Self {
            cooldown: secs(o.vlm_cooldown_seconds),
            periodic: secs(o.vlm_periodic_seconds),
            cue_cooldown: secs(o.vlm_cue_cooldown_seconds),
            min_cue: Cue::Notable,
        }
    }
}

/// Why the VLM is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FireReason {
    /// A tool reported a cue of at least the minimum level.
    ToolCue,
    /// Persons no analysis has covered are in view.
    PersonsPresent,
    /// Persons are still in view and the periodic interval has passed.
    Periodic,
}

/// Why the VLM is not called on a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// No person in view and no cue.
    NoPersons,
    /// Persons in view, all covered by a recent analysis, no new cue.
    NothingNew,
    /// An analysis is still running.
    AnalystBusy,
    /// Within the cooldown of the last call.
    Cooldown,
    /// Sooner after the last call than the last analysis took.
    Pacing,
}

impl FireReason {
    /// snake_case name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FireReason::ToolCue => "tool_cue",
            FireReason::PersonsPresent => "persons_present",
            FireReason::Periodic => "periodic",
        }
    }
}

impl SkipReason {
    /// snake_case name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoPersons => "no_persons",
            SkipReason::NothingNew => "nothing_new",
            SkipReason::AnalystBusy => "analyst_busy",
            SkipReason::Cooldown => "cooldown",
            SkipReason::Pacing => "pacing",
        }
    }
}

/// What the trigger decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", content = "reason", rename_all = "snake_case")]
pub enum TriggerDecision {
    /// Call the VLM now.
    Fire(FireReason),
    /// Do not call it.
    Skip(SkipReason),
}

impl TriggerDecision {
    /// Whether the VLM is to be called.
    pub fn fires(self) -> bool {
        matches!(self, TriggerDecision::Fire(_))
    }
}

/// A cue's identity for its cooldown.
type CueKey = (String, String, Option<u64>);

/// The trigger's state; see the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Trigger {
    settings: TriggerSettings,
    busy: bool,
    last_fired: Option<Duration>,
    last_analysis: Duration,
    /// Persons covered by an analysis → when last seen in view.
    analysed: HashMap<u64, Duration>,
    /// Cues that triggered (or were analysed) → when.
    cues: HashMap<CueKey, Duration>,
}

impl Trigger {
    /// A trigger with no analysis behind it.
    pub fn new(settings: TriggerSettings) -> Self {
        Self {
            settings,
            busy: false,
            last_fired: None,
            last_analysis: Duration::ZERO,
            analysed: HashMap::new(),
            cues: HashMap::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &TriggerSettings {
        &self.settings
    }

    /// Whether an analysis is running (from a [`TriggerDecision::Fire`] until
    /// [`Trigger::analysis_finished`]).
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Clock value of the last call, if any.
    pub fn last_fired(&self) -> Option<Duration> {
        self.last_fired
    }

    /// The analyst took a scene (outside a [`TriggerDecision::Fire`] of this trigger) at
    /// `now`: treat it as a call.
    pub fn analysis_started(&mut self, now: Duration) {
        self.busy = true;
        self.last_fired = Some(now);
    }

    /// The running analysis ended (with a verdict, an error or a timeout) after `took`.
    pub fn analysis_finished(&mut self, took: Duration) {
        self.busy = false;
        self.last_analysis = took;
    }

    /// Decide for the current frame of `scene` (persons from its current objects).
    pub fn evaluate_scene(
        &mut self,
        now: Duration,
        scene: &Scene,
        observations: &[Observation],
    ) -> TriggerDecision {
        let persons: Vec<u64> = scene.persons().map(|p| p.track_id).collect();
        self.evaluate(now, &persons, observations)
    }

    /// Decide for a frame at clock value `now` with these persons (track ids) in view and
    /// these tool observations. A [`TriggerDecision::Fire`] marks the analyst busy and
    /// records the persons and cues as covered.
    pub fn evaluate(
        &mut self,
        now: Duration,
        persons: &[u64],
        observations: &[Observation],
    ) -> TriggerDecision {
        let s = &self.settings;
        // Forget persons gone longer than the periodic interval (a later return is new) and
        // cues whose cooldown has passed.
        let keep_persons = s.periodic.max(s.cooldown);
        self.analysed
            .retain(|_, seen| now.saturating_sub(*seen) <= keep_persons);
        for id in persons {
            if let Some(seen) = self.analysed.get_mut(id) {
                *seen = now;
            }
        }
        let cue_cooldown = s.cue_cooldown;
        self.cues
            .retain(|_, at| now.saturating_sub(*at) < cue_cooldown);

        let cue_keys: Vec<CueKey> = observations
            .iter()
            .filter(|o| o.cue >= s.min_cue)
            .map(|o| (o.tool.clone(), o.kind.clone(), o.track_id))
            .collect();
        let fresh_cue = cue_keys.iter().any(|k| !self.cues.contains_key(k));
        let new_person = persons.iter().any(|id| !self.analysed.contains_key(id));
        let since_last = self.last_fired.map(|t| now.saturating_sub(t));

        let reason = if fresh_cue {
            FireReason::ToolCue
        } else if new_person {
            FireReason::PersonsPresent
        } else if !persons.is_empty() && since_last.is_none_or(|d| d >= s.periodic) {
            FireReason::Periodic
        } else if persons.is_empty() {
            return TriggerDecision::Skip(SkipReason::NoPersons);
        } else {
            return TriggerDecision::Skip(SkipReason::NothingNew);
        };
        if self.busy {
            return TriggerDecision::Skip(SkipReason::AnalystBusy);
        }
        if let Some(d) = since_last {
            if d < s.cooldown {
                return TriggerDecision::Skip(SkipReason::Cooldown);
            }
            if d < self.last_analysis {
                return TriggerDecision::Skip(SkipReason::Pacing);
            }
        }

        self.busy = true;
        self.last_fired = Some(now);
        for &id in persons {
            self.analysed.insert(id, now);
        }
        for k in cue_keys {
            self.cues.insert(k, now);
        }
        tracing::debug!(
            reason = reason.as_str(),
            now_s = now.as_secs_f64(),
            "VLM due"
        );
        TriggerDecision::Fire(reason)
    }
}
