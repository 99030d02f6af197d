//! When the VLM is due: one test per rule, time passed in.

use std::time::Duration;

use surveil_orchestrator::tools::{Cue, Observation};
use surveil_orchestrator::trigger::{
    FireReason, SkipReason, Trigger, TriggerDecision, TriggerSettings,
};

use crate::scene::{person, play};

use FireReason::*;
use SkipReason::*;
use TriggerDecision::{Fire, Skip};

fn s(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

/// Cooldown 5 s, periodic 30 s, cue cooldown 60 s.
fn trigger() -> Trigger {
    Trigger::new(TriggerSettings {
        cooldown: s(5.0),
        periodic: s(30.0),
        cue_cooldown: s(60.0),
        min_cue: Cue::Notable,
    })
}

fn cue(kind: &str, track: u64, level: Cue) -> Observation {
    Observation {
        tool: "zones".into(),
        kind: kind.into(),
        track_id: Some(track),
        cue: level,
        score: 1.0,
        detail: String::new(),
    }
}

#[test]
fn no_persons_no_call() {
    let mut t = trigger();
    assert_eq!(t.evaluate(s(0.0), &[], &[]), Skip(NoPersons));
    assert_eq!(
        t.evaluate(s(1.0), &[], &[cue("in_zone", 1, Cue::Info)]),
        Skip(NoPersons),
        "Info observations never trigger"
    );
    assert!(!t.is_busy());
}

#[test]
fn new_persons_trigger_once() {
    let mut t = trigger();
    assert_eq!(t.evaluate(s(0.0), &[1], &[]), Fire(PersonsPresent));
    assert!(t.is_busy());
    assert_eq!(t.last_fired(), Some(s(0.0)));
    t.analysis_finished(s(2.0));
    assert_eq!(t.evaluate(s(10.0), &[1], &[]), Skip(NothingNew));
    assert_eq!(t.evaluate(s(11.0), &[1, 2], &[]), Fire(PersonsPresent));
}

#[test]
fn busy_analyst_blocks_every_reason() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    assert_eq!(t.evaluate(s(40.0), &[1, 2], &[]), Skip(AnalystBusy));
    assert_eq!(
        t.evaluate(s(41.0), &[1], &[cue("loitering", 1, Cue::Suspicious)]),
        Skip(AnalystBusy)
    );
    t.analysis_finished(s(1.0));
    assert_eq!(
        t.evaluate(s(42.0), &[1, 2], &[cue("loitering", 1, Cue::Suspicious)]),
        Fire(ToolCue)
    );
}

#[test]
fn cooldown_between_calls() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    t.analysis_finished(s(1.0));
    assert_eq!(t.evaluate(s(4.9), &[1, 2], &[]), Skip(Cooldown));
    assert_eq!(t.evaluate(s(5.0), &[1, 2], &[]), Fire(PersonsPresent));
}

#[test]
fn calls_are_spaced_by_the_last_analysis_time() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    // The model took 12 s, longer than the 5 s cooldown.
    t.analysis_finished(s(12.0));
    assert_eq!(t.evaluate(s(8.0), &[1, 2], &[]), Skip(Pacing));
    assert_eq!(t.evaluate(s(12.0), &[1, 2], &[]), Fire(PersonsPresent));
}

#[test]
fn periodic_check_while_persons_stay() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    t.analysis_finished(s(3.0));
    assert_eq!(t.evaluate(s(29.9), &[1], &[]), Skip(NothingNew));
    assert_eq!(t.evaluate(s(30.0), &[1], &[]), Fire(Periodic));
    t.analysis_finished(s(3.0));
    // Nobody left: no periodic call.
    assert_eq!(t.evaluate(s(70.0), &[], &[]), Skip(NoPersons));
}

#[test]
fn tool_cues_trigger_with_their_own_cooldown() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    t.analysis_finished(s(1.0));
    let loiter = [cue("loitering", 1, Cue::Notable)];
    assert_eq!(t.evaluate(s(10.0), &[1], &loiter), Fire(ToolCue));
    t.analysis_finished(s(1.0));
    // The same cue again within 60 s: nothing new.
    assert_eq!(t.evaluate(s(20.0), &[1], &loiter), Skip(NothingNew));
    // Another cue (other kind, or other track) is new.
    assert_eq!(
        t.evaluate(s(21.0), &[1], &[cue("erratic_path", 1, Cue::Notable)]),
        Fire(ToolCue)
    );
    t.analysis_finished(s(1.0));
    // After the periodic interval the persons are due again; the old cue is not the reason,
    // but it is part of that analysis.
    assert_eq!(t.evaluate(s(51.0), &[1], &loiter), Fire(Periodic));
    t.analysis_finished(s(1.0));
    assert_eq!(t.evaluate(s(70.0), &[1], &loiter), Skip(NothingNew));
    // 60 s after it was last analysed, the loitering cue triggers again (a cue outranks
    // the periodic check).
    assert_eq!(t.evaluate(s(111.0), &[1], &loiter), Fire(ToolCue));
}

#[test]
fn a_cue_respects_the_cooldown_between_calls() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    t.analysis_finished(s(1.0));
    let bag = [cue("bag_disappeared", 1, Cue::Suspicious)];
    assert_eq!(t.evaluate(s(2.0), &[1], &bag), Skip(Cooldown));
    // Still new after the cooldown: it was never analysed.
    assert_eq!(t.evaluate(s(5.0), &[1], &bag), Fire(ToolCue));
}

#[test]
fn a_person_who_returns_after_a_while_is_new() {
    let mut t = trigger();
    assert!(t.evaluate(s(0.0), &[1], &[]).fires());
    t.analysis_finished(s(1.0));
    assert_eq!(t.evaluate(s(10.0), &[], &[]), Skip(NoPersons));
    // Back within the periodic interval: already covered.
    assert_eq!(t.evaluate(s(20.0), &[1], &[]), Skip(NothingNew));
    // Gone from 20 s to 60 s (longer than the periodic interval): new again.
    assert_eq!(t.evaluate(s(21.0), &[], &[]), Skip(NoPersons));
    assert_eq!(t.evaluate(s(60.0), &[1], &[]), Fire(PersonsPresent));
}

#[test]
fn persons_come_from_the_scene() {
    let scene = play(5, |_, _| vec![person(4, 300.0, 500.0, 150.0)]);
    let mut t = trigger();
    assert_eq!(t.evaluate_scene(s(0.0), &scene, &[]), Fire(PersonsPresent));
    t.analysis_finished(s(1.0));
    let empty = play(5, |_, _| Vec::new());
    assert_eq!(t.evaluate_scene(s(40.0), &empty, &[]), Skip(NoPersons));
}

#[test]
fn settings_from_config() {
    let o = surveil_config::OrchestrationConfig::default();
    let st = TriggerSettings::from_config(&o);
    assert_eq!(st.cooldown, s(o.vlm_cooldown_seconds));
    assert_eq!(st.periodic, s(o.vlm_periodic_seconds));
    assert_eq!(st.cue_cooldown, s(o.vlm_cue_cooldown_seconds));
    assert_eq!(st.min_cue, Cue::Notable);
    assert_eq!(FireReason::ToolCue.as_str(), "tool_cue");
    assert_eq!(SkipReason::AnalystBusy.as_str(), "analyst_busy");
}
