//! The decision engine: one test per rule, the actions per level, opening hours.

use surveil_orchestrator::decision::{
    decide, rule, Action, AlertLevel, ClockTime, Decision, DecisionInput, DecisionPolicy,
    OpeningHours, RULE_IDS,
};
use surveil_orchestrator::tools::{Cue, Observation};
use surveil_orchestrator::verdict::{
    parse_verdict, ActionType, ParsedVerdict, SuspicionLevel, Verdict,
};

fn verdict(level: SuspicionLevel, action: ActionType, confidence: f32) -> ParsedVerdict {
    ParsedVerdict::parsed(Verdict {
        suspicion_level: level,
        action_type: action,
        confidence,
        description: String::new(),
        reasoning: String::new(),
        recommendations: Vec::new(),
    })
}

fn cue(cue: Cue) -> Observation {
    Observation {
        tool: "zones".into(),
        kind: "loitering".into(),
        track_id: Some(3),
        cue,
        score: 0.8,
        detail: "track 3 stayed 95 s in the electronics aisle".into(),
    }
}

fn noon() -> ClockTime {
    ClockTime::new(12, 0).unwrap()
}

fn run(
    policy: &DecisionPolicy,
    verdict: Option<&ParsedVerdict>,
    observations: &[Observation],
    time: ClockTime,
    persons: usize,
) -> Decision {
    decide(
        policy,
        &DecisionInput {
            verdict,
            observations,
            time,
            persons_present: persons,
        },
    )
}

fn simple(verdict: Option<&ParsedVerdict>, observations: &[Observation]) -> Decision {
    run(&DecisionPolicy::default(), verdict, observations, noon(), 1)
}

#[test]
fn rule_verdict_level_maps_each_level() {
    use SuspicionLevel::*;
    for (level, want) in [
        (Low, AlertLevel::Normal),
        (Medium, AlertLevel::Attention),
        (High, AlertLevel::Alert),
        (Critical, AlertLevel::Critical),
    ] {
        let v = verdict(level, ActionType::SuspiciousMovement, 0.9);
        let d = simple(Some(&v), &[]);
        assert_eq!(d.alert_level, want, "{level:?}");
        assert_eq!(d.rules_fired, vec![rule::VERDICT_LEVEL]);
        assert!(!d.needs_review);
    }
}

#[test]
fn rule_theft_action_raises_to_alert() {
    for action in [ActionType::PotentialTheft, ActionType::ConfirmedTheft] {
        let v = verdict(SuspicionLevel::Low, action, 0.9);
        let d = simple(Some(&v), &[]);
        assert_eq!(d.alert_level, AlertLevel::Alert, "{action:?}");
        assert_eq!(
            d.rules_fired,
            vec![rule::VERDICT_LEVEL, rule::VERDICT_THEFT_ACTION]
        );
    }
    // "At least": a critical verdict stays critical.
    let v = verdict(SuspicionLevel::Critical, ActionType::ConfirmedTheft, 0.9);
    assert_eq!(simple(Some(&v), &[]).alert_level, AlertLevel::Critical);
    // Concealment alone does not raise.
    let v = verdict(SuspicionLevel::Low, ActionType::ItemConcealment, 0.9);
    assert_eq!(simple(Some(&v), &[]).alert_level, AlertLevel::Normal);
}

#[test]
fn rule_suspicious_cue_raises_to_attention() {
    let d = simple(None, &[cue(Cue::Info), cue(Cue::Suspicious)]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert_eq!(d.rules_fired, vec![rule::CUE_SUSPICIOUS]);
    // A low verdict does not agree: attention, not alert.
    let v = verdict(SuspicionLevel::Low, ActionType::NormalShopping, 0.9);
    let d = simple(Some(&v), &[cue(Cue::Suspicious)]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    // A Notable cue alone does not raise.
    assert_eq!(
        simple(None, &[cue(Cue::Notable)]).alert_level,
        AlertLevel::Normal
    );
}

#[test]
fn rule_suspicious_cue_confirmed_by_verdict_raises_to_alert() {
    let v = verdict(SuspicionLevel::Medium, ActionType::SuspiciousMovement, 0.9);
    let d = simple(Some(&v), &[cue(Cue::Suspicious)]);
    assert_eq!(d.alert_level, AlertLevel::Alert);
    assert_eq!(
        d.rules_fired,
        vec![
            rule::VERDICT_LEVEL,
            rule::CUE_SUSPICIOUS,
            rule::CUE_SUSPICIOUS_CONFIRMED
        ]
    );
    assert_eq!(
        d.actions,
        vec![
            Action::LogEvent,
            Action::NotifyStaff,
            Action::NotifySecurity,
            Action::SaveClip
        ]
    );
}

#[test]
fn rule_low_confidence_caps_at_attention_and_asks_review() {
    let v = verdict(SuspicionLevel::Critical, ActionType::ConfirmedTheft, 0.5);
    let d = simple(Some(&v), &[]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert!(d.needs_review);
    assert!(d.rules_fired.contains(&rule::VERDICT_LOW_CONFIDENCE));
    assert_eq!(
        d.actions,
        vec![Action::LogEvent, Action::NotifyStaff, Action::RequestReview]
    );
    // Exactly at the threshold is confident enough.
    let v = verdict(SuspicionLevel::High, ActionType::ItemConcealment, 0.7);
    let d = simple(Some(&v), &[]);
    assert_eq!(d.alert_level, AlertLevel::Alert);
    assert!(!d.needs_review);
    // Below the threshold but nothing to escalate: no review.
    let v = verdict(SuspicionLevel::Medium, ActionType::SuspiciousMovement, 0.2);
    let d = simple(Some(&v), &[]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert!(!d.needs_review);
    assert!(!d.rules_fired.contains(&rule::VERDICT_LOW_CONFIDENCE));
    // A NaN confidence counts as too low.
    let v = verdict(SuspicionLevel::High, ActionType::ItemConcealment, f32::NAN);
    let d = simple(Some(&v), &[]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert!(d.needs_review);
}

#[test]
fn rule_after_hours_presence_raises_one_level() {
    let policy = DecisionPolicy {
        confidence_threshold: 0.7,
        opening_hours: Some(OpeningHours::parse("08:00", "21:00").unwrap()),
        after_hours_escalation: true,
    };
    let night = ClockTime::new(23, 30).unwrap();
    let d = run(&policy, None, &[], night, 2);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert_eq!(
        d.rules_fired,
        vec![rule::NO_SIGNAL, rule::AFTER_HOURS_PRESENCE]
    );
    // No one present: nothing.
    assert_eq!(
        run(&policy, None, &[], night, 0).alert_level,
        AlertLevel::Normal
    );
    // Inside opening hours: nothing.
    assert_eq!(
        run(&policy, None, &[], noon(), 2).alert_level,
        AlertLevel::Normal
    );
    // Escalation disabled: nothing.
    let off = DecisionPolicy {
        after_hours_escalation: false,
        ..policy
    };
    assert_eq!(
        run(&off, None, &[], night, 2).alert_level,
        AlertLevel::Normal
    );
    // Applied after the low-confidence cap, and saturating at critical.
    let unsure = verdict(SuspicionLevel::High, ActionType::PotentialTheft, 0.3);
    let d = run(&policy, Some(&unsure), &[], night, 1);
    assert_eq!(d.alert_level, AlertLevel::Alert);
    assert!(d.needs_review);
    let sure = verdict(SuspicionLevel::Critical, ActionType::ConfirmedTheft, 0.9);
    let d = run(&policy, Some(&sure), &[], night, 1);
    assert_eq!(d.alert_level, AlertLevel::Critical);
    assert_eq!(d.actions.last(), Some(&Action::NotifyManager));
}

#[test]
fn rule_parse_failed_is_no_verdict_with_review_on_cues() {
    let failed = parse_verdict("I cannot tell from this image.");
    assert!(failed.is_failed());
    // With a Notable cue: normal, but review.
    let d = simple(Some(&failed), &[cue(Cue::Notable)]);
    assert_eq!(d.alert_level, AlertLevel::Normal);
    assert!(d.needs_review);
    assert_eq!(d.rules_fired, vec![rule::VERDICT_PARSE_FAILED]);
    assert_eq!(d.actions, vec![Action::LogEvent, Action::RequestReview]);
    // With only Info cues: no review, and the no-signal rule.
    let d = simple(Some(&failed), &[cue(Cue::Info)]);
    assert!(!d.needs_review);
    assert_eq!(
        d.rules_fired,
        vec![rule::VERDICT_PARSE_FAILED, rule::NO_SIGNAL]
    );
    // With a Suspicious cue: the cue rule still applies, not the (fallback) verdict.
    let d = simple(Some(&failed), &[cue(Cue::Suspicious)]);
    assert_eq!(d.alert_level, AlertLevel::Attention);
    assert!(d.needs_review);
    assert!(!d.rules_fired.contains(&rule::CUE_SUSPICIOUS_CONFIRMED));
}

#[test]
fn rule_no_signal_is_normal() {
    let d = simple(None, &[]);
    assert_eq!(d.alert_level, AlertLevel::Normal);
    assert!(!d.needs_review);
    assert_eq!(d.rules_fired, vec![rule::NO_SIGNAL]);
    assert_eq!(d.actions, vec![Action::LogEvent]);
}

#[test]
fn actions_per_level_are_cumulative() {
    assert_eq!(AlertLevel::Normal.actions(), vec![Action::LogEvent]);
    assert_eq!(
        AlertLevel::Attention.actions(),
        vec![Action::LogEvent, Action::NotifyStaff]
    );
    assert_eq!(
        AlertLevel::Alert.actions(),
        vec![
            Action::LogEvent,
            Action::NotifyStaff,
            Action::NotifySecurity,
            Action::SaveClip
        ]
    );
    assert_eq!(
        AlertLevel::Critical.actions(),
        vec![
            Action::LogEvent,
            Action::NotifyStaff,
            Action::NotifySecurity,
            Action::SaveClip,
            Action::NotifyManager
        ]
    );
    assert!(AlertLevel::Normal < AlertLevel::Attention);
    assert!(AlertLevel::Alert < AlertLevel::Critical);
    assert_eq!(AlertLevel::Critical.raised(), AlertLevel::Critical);
}

#[test]
fn decision_json_shape() {
    let v = verdict(SuspicionLevel::High, ActionType::ItemConcealment, 0.9);
    let json = serde_json::to_value(simple(Some(&v), &[])).unwrap();
    assert_eq!(json["alert_level"], "alert");
    assert_eq!(json["needs_review"], false);
    assert_eq!(
        json["actions"],
        serde_json::json!(["log_event", "notify_staff", "notify_security", "save_clip"])
    );
    assert_eq!(json["rules_fired"], serde_json::json!(["verdict.level"]));
}

#[test]
fn opening_hours_parse_and_cover_midnight() {
    let day = OpeningHours::parse("08:00", "21:00").unwrap();
    let t = |h, m| ClockTime::new(h, m).unwrap();
    assert!(!day.is_open(t(7, 59)));
    assert!(day.is_open(t(8, 0)));
    assert!(day.is_open(t(20, 59)));
    assert!(!day.is_open(t(21, 0)));

    let bar = OpeningHours::parse("18:30", "2:00").unwrap();
    assert_eq!(bar.close, t(2, 0));
    assert!(bar.is_open(t(23, 0)));
    assert!(bar.is_open(t(1, 59)));
    assert!(!bar.is_open(t(2, 0)));
    assert!(!bar.is_open(t(12, 0)));

    let always = OpeningHours::parse("00:00", "00:00").unwrap();
    assert!(always.is_open(t(3, 0)));

    for (open, close, named) in [
        ("24:00", "21:00", "`24:00`"),
        ("08:60", "21:00", "`08:60`"),
        ("8h", "21:00", "`8h`"),
        ("08:00", "", "``"),
        ("08:00", "-1:00", "`-1:00`"),
    ] {
        let err = OpeningHours::parse(open, close).unwrap_err().to_string();
        assert!(err.contains(named), "{err}");
        assert!(err.contains("opening hours"), "{err}");
    }
    assert!(ClockTime::new(24, 0).is_none());
    assert_eq!(t(9, 5).to_string(), "09:05");
}

#[test]
fn every_rule_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/decisions.md"
    ))
    .unwrap();
    for id in RULE_IDS {
        let row = format!("| `{id}` |");
        assert!(
            doc.contains(&row),
            "docs/decisions.md has no row for `{id}`"
        );
    }
}

#[test]
fn decide_is_pure() {
    let v = verdict(SuspicionLevel::High, ActionType::PotentialTheft, 0.8);
    let obs = [cue(Cue::Suspicious), cue(Cue::Notable)];
    let policy = DecisionPolicy::default();
    assert_eq!(
        run(&policy, Some(&v), &obs, noon(), 1),
        run(&policy, Some(&v), &obs, noon(), 1)
    );
}
