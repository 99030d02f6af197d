//! The verdict type, its schema and the lenient parser on messy replies.

use proptest::prelude::*;
use surveil_orchestrator::verdict::{
    parse_verdict, verdict_json_schema, ActionType, ParsedVerdict, SuspicionLevel, Verdict,
    VerdictSource, MAX_RECOMMENDATIONS, MAX_TEXT_CHARS,
};

use ActionType::*;
use SuspicionLevel::*;

/// What a reply should give.
enum Want {
    /// A verdict with this status, level, action and confidence (±1e-6).
    Ok(&'static str, SuspicionLevel, ActionType, f32),
    /// A parse failure whose reason contains this text.
    Fail(&'static str),
}

const STRICT: &str = r#"{"suspicion_level":"high","action_type":"item_concealment","confidence":0.85,"description":"A man puts a bottle in his coat.","reasoning":"The bottle leaves the shelf and does not reappear.","recommendations":["Watch the exit"]}"#;

/// (name, reply, expectation)
fn table() -> Vec<(&'static str, String, Want)> {
    vec![
        ("strict", STRICT.into(), Want::Ok("parsed", High, ItemConcealment, 0.85)),
        (
            "strict pretty-printed with surrounding blank lines",
            format!(
                "\n  {}\n",
                serde_json::to_string_pretty(
                    &serde_json::from_str::<serde_json::Value>(STRICT).unwrap()
                )
                .unwrap()
            ),
            Want::Ok("parsed", High, ItemConcealment, 0.85),
        ),
        (
            "json code fence",
            format!("```json\n{STRICT}\n```"),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "bare code fence",
            format!("```\n{STRICT}\n```\n"),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "think span with braces inside, then strict JSON",
            format!("<think>Is it {{theft}}? The coat {{ bulges.</think>\n{STRICT}"),
            Want::Ok("parsed", High, ItemConcealment, 0.85),
        ),
        (
            "kimi think markers",
            format!("◁think▷The person hides a bottle.◁/think▷{STRICT}"),
            Want::Ok("parsed", High, ItemConcealment, 0.85),
        ),
        (
            "closing marker only (span opened in the prompt)",
            format!("the bottle is gone◁/think▷\n{STRICT}"),
            Want::Ok("parsed", High, ItemConcealment, 0.85),
        ),
        (
            "unclosed think span",
            format!("<think>Let me look at {STRICT} again, the man"),
            Want::Fail("never closed"),
        ),
        (
            "unclosed kimi span",
            "◁think▷The customer walks to the".into(),
            Want::Fail("never closed"),
        ),
        (
            "closed think span, nothing after",
            "<THINK>all normal</THINK>   \n".into(),
            Want::Fail("no answer after the reasoning"),
        ),
        (
            "leading and trailing prose",
            format!("Here is my analysis of the frame:\n{STRICT}\nLet me know if you need more."),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "python dict with single quotes and an apostrophe",
            "{'suspicion_level': 'medium', 'action_type': 'suspicious_movement', 'confidence': 0.6, 'description': 'The customer's eyes follow the guard', 'reasoning': 'Repeated glances', 'recommendations': []}".into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.6),
        ),
        (
            "trailing commas",
            r#"{"suspicion_level": "low", "action_type": "normal_shopping", "confidence": 0.9, "description": "", "reasoning": "", "recommendations": ["none",],}"#.into(),
            Want::Ok("repaired", Low, NormalShopping, 0.9),
        ),
        (
            "unquoted keys and bare words",
            "{suspicion_level: high, action_type: potential_theft, confidence: 0.8}".into(),
            Want::Ok("repaired", High, PotentialTheft, 0.8),
        ),
        (
            "French level élevé",
            r#"{"suspicion_level": "élevé", "action_type": "item_concealment", "confidence": 0.8}"#.into(),
            Want::Ok("repaired", High, ItemConcealment, 0.8),
        ),
        (
            "French level faible",
            r#"{"suspicion_level": "Faible", "action_type": "normal_shopping", "confidence": 0.95}"#.into(),
            Want::Ok("repaired", Low, NormalShopping, 0.95),
        ),
        (
            "French level moyen",
            r#"{"suspicion_level": "moyen", "action_type": "suspicious_movement", "confidence": 0.7}"#.into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.7),
        ),
        (
            "French level critique",
            r#"{"suspicion_level": "CRITIQUE", "action_type": "confirmed_theft", "confidence": 0.99}"#.into(),
            Want::Ok("repaired", Critical, ConfirmedTheft, 0.99),
        ),
        (
            "upper-case level",
            r#"{"suspicion_level": "HIGH", "action_type": "potential_theft", "confidence": 0.75}"#.into(),
            Want::Ok("repaired", High, PotentialTheft, 0.75),
        ),
        (
            "free wording: concealment",
            r#"{"suspicion_level": "medium", "action_type": "concealment", "confidence": 0.7}"#.into(),
            Want::Ok("repaired", Medium, ItemConcealment, 0.7),
        ),
        (
            "free wording: theft",
            r#"{"suspicion_level": "high", "action_type": "Theft", "confidence": 0.7}"#.into(),
            Want::Ok("repaired", High, PotentialTheft, 0.7),
        ),
        (
            "free wording: normal",
            r#"{"suspicion_level": "low", "action_type": "normal", "confidence": 0.7}"#.into(),
            Want::Ok("repaired", Low, NormalShopping, 0.7),
        ),
        (
            "free wording: confirmed theft with spaces",
            r#"{"suspicion_level": "critical", "action_type": "Confirmed theft", "confidence": 0.9}"#.into(),
            Want::Ok("repaired", Critical, ConfirmedTheft, 0.9),
        ),
        (
            "confidence as a percent string",
            r#"{"suspicion_level": "high", "action_type": "item_concealment", "confidence": "85%"}"#.into(),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "confidence as a bare percent",
            "{\"suspicion_level\": \"high\", \"action_type\": \"item_concealment\", \"confidence\": 85%}".into(),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "confidence 85 without percent sign",
            r#"{"suspicion_level": "high", "action_type": "item_concealment", "confidence": 85}"#.into(),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "confidence above 100 clamped",
            r#"{"suspicion_level": "high", "action_type": "item_concealment", "confidence": 150}"#.into(),
            Want::Ok("repaired", High, ItemConcealment, 1.0),
        ),
        (
            "negative confidence clamped",
            r#"{"suspicion_level": "low", "action_type": "normal_shopping", "confidence": -0.3}"#.into(),
            Want::Ok("repaired", Low, NormalShopping, 0.0),
        ),
        (
            "numbers as strings",
            r#"{"suspicion_level": "medium", "action_type": "suspicious_movement", "confidence": "0.65"}"#.into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.65),
        ),
        (
            "confidence as a fraction",
            r#"{"suspicion_level": "medium", "action_type": "suspicious_movement", "confidence": "8/10"}"#.into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.8),
        ),
        (
            "missing optional fields",
            r#"{"suspicion_level": "medium", "action_type": "suspicious_movement"}"#.into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.0),
        ),
        (
            "nested verdict object",
            format!(r#"{{"frame": 12, "verdict": {STRICT}}}"#),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "verdict inside an array",
            format!("[{STRICT}]"),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "two verdicts: the first wins",
            format!(
                r#"{{"suspicion_level": "low", "action_type": "normal_shopping", "confidence": 0.9}} {STRICT}"#
            ),
            Want::Ok("repaired", Low, NormalShopping, 0.9),
        ),
        (
            "a non-verdict object, then the verdict",
            format!(r#"Detected: {{"objects": ["bottle", "coat"]}}. Verdict: {STRICT}"#),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "an incomplete verdict, then a complete one",
            format!(r#"{{"suspicion_level": "high"}} {STRICT}"#),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        (
            "camelCase keys and Python literals",
            "{'suspicionLevel': 'medium', 'actionType': 'suspicious movement', 'confidence': 0.7, 'reviewed': True}".into(),
            Want::Ok("repaired", Medium, SuspiciousMovement, 0.7),
        ),
        (
            "French keys and wording",
            r#"{"niveau_de_suspicion": "Élevé", "action": "dissimulation d'un article", "confiance": "90 %"}"#.into(),
            Want::Ok("repaired", High, ItemConcealment, 0.9),
        ),
        (
            "typographic quotes",
            "{“suspicion_level”: “high”, “action_type”: “potential_theft”, “confidence”: 0.8}".into(),
            Want::Ok("repaired", High, PotentialTheft, 0.8),
        ),
        (
            "markdown key: value lines",
            "**Suspicion level:** High\n**Action type:** item concealment\n**Confidence:** 80%\n**Reasoning:** the bag closes over a box".into(),
            Want::Ok("repaired", High, ItemConcealment, 0.8),
        ),
        (
            "think span, prose, fence",
            format!("<think>hmm</think>\nSure! Here it is:\n```json\n{STRICT}\n```"),
            Want::Ok("repaired", High, ItemConcealment, 0.85),
        ),
        ("empty reply", String::new(), Want::Fail("empty reply")),
        ("blank reply", " \n\t ".into(), Want::Fail("empty reply")),
        (
            "prose only",
            "The customer is browsing the shelves normally.".into(),
            Want::Fail("no JSON object"),
        ),
        (
            "reply cut off",
            r#"{"suspicion_level": "high", "action_type": "potential_theft", "confidence": 0.9, "description": "The man"#.into(),
            Want::Fail("cut off"),
        ),
        (
            "unknown level word",
            r#"{"suspicion_level": "maybe", "action_type": "potential_theft", "confidence": 0.9}"#.into(),
            Want::Fail("is not one of low, medium, high, critical"),
        ),
        (
            "no suspicion level",
            r#"{"action_type": "potential_theft", "confidence": 0.9}"#.into(),
            Want::Fail("no JSON object with a suspicion_level"),
        ),
        (
            "no action type",
            r#"{"suspicion_level": "high", "confidence": 0.9}"#.into(),
            Want::Fail("no action_type"),
        ),
        (
            "unknown action wording",
            r#"{"suspicion_level": "high", "action_type": "dancing", "confidence": 0.9}"#.into(),
            Want::Fail("`dancing` is not a known action"),
        ),
    ]
}

#[test]
fn messy_replies_table() {
    let cases = table();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, reply, want) in &cases {
        let got = parse_verdict(reply);
        let ok = match want {
            Want::Ok(status, level, action, confidence) => {
                got.status() == *status
                    && got.verdict.suspicion_level == *level
                    && got.verdict.action_type == *action
                    && (got.verdict.confidence - confidence).abs() < 1e-6
                    && got.verdict.within_schema()
            }
            Want::Fail(reason) => match &got.source {
                VerdictSource::ParseFailed { reason: r, raw } => {
                    r.contains(reason) && raw == reply && got.verdict == Verdict::fallback()
                }
                _ => false,
            },
        };
        if !ok {
            failures.push(format!("{name}: got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parsed_keeps_every_field() {
    let got = parse_verdict(STRICT);
    assert_eq!(got.source, VerdictSource::Parsed);
    let v = got.usable().unwrap();
    assert_eq!(v.description, "A man puts a bottle in his coat.");
    assert_eq!(
        v.reasoning,
        "The bottle leaves the shelf and does not reappear."
    );
    assert_eq!(v.recommendations, vec!["Watch the exit".to_string()]);
}

#[test]
fn repairs_name_each_fix() {
    let got = parse_verdict(
        "```json\n{suspicion_level: 'HIGH', action_type: theft, confidence: '85%',}\n```",
    );
    let VerdictSource::Repaired { repairs } = &got.source else {
        panic!("expected repaired, got {got:?}");
    };
    let all = repairs.join(" | ");
    for expected in [
        "removed a code fence",
        "quoted unquoted keys",
        "read single-quoted strings",
        "removed a stray comma",
        "read suspicion_level `HIGH` as high",
        "read action_type `theft` as potential_theft",
        "as a percentage: 0.85",
        "description missing",
    ] {
        assert!(all.contains(expected), "missing `{expected}` in: {all}");
    }
}

#[test]
fn apostrophes_and_inner_quotes_stay_in_text() {
    let got = parse_verdict(
        "{'suspicion_level': 'low', 'action_type': 'normal_shopping', 'confidence': 0.9, 'description': 'It's the cashier's bag', 'reasoning': \"She says \"hello\" to staff\"}",
    );
    let v = got.usable().unwrap();
    assert_eq!(v.description, "It's the cashier's bag");
    assert_eq!(v.reasoning, "She says \"hello\" to staff");
}

#[test]
fn long_fields_are_bounded() {
    let long = "x".repeat(MAX_TEXT_CHARS + 100);
    let recs: Vec<String> = (0..8).map(|i| format!("step {i}")).collect();
    let reply = serde_json::json!({
        "suspicion_level": "medium",
        "action_type": "suspicious_movement",
        "confidence": 0.7,
        "description": long,
        "reasoning": "é".repeat(MAX_TEXT_CHARS + 1),
        "recommendations": recs,
    })
    .to_string();
    let got = parse_verdict(&reply);
    assert_eq!(got.status(), "repaired");
    let v = got.usable().unwrap();
    assert_eq!(v.description.chars().count(), MAX_TEXT_CHARS);
    assert_eq!(v.reasoning.chars().count(), MAX_TEXT_CHARS);
    assert_eq!(v.recommendations.len(), MAX_RECOMMENDATIONS);
    assert_eq!(v.recommendations[4], "step 4");
}

#[test]
fn recommendations_as_one_string() {
    let got = parse_verdict(
        r#"{"suspicion_level": "high", "action_type": "item_concealment", "confidence": 0.9, "recommendations": "Alert security"}"#,
    );
    assert_eq!(
        got.usable().unwrap().recommendations,
        vec!["Alert security".to_string()]
    );
}

#[test]
fn json_output_carries_status() {
    let parsed = serde_json::to_value(parse_verdict(STRICT)).unwrap();
    assert_eq!(parsed["status"], "parsed");
    assert_eq!(parsed["suspicion_level"], "high");
    assert!(parsed.get("repairs").is_none());

    let failed = serde_json::to_value(parse_verdict("no idea")).unwrap();
    assert_eq!(failed["status"], "parse_failed");
    assert_eq!(failed["raw"], "no idea");
    assert_eq!(failed["suspicion_level"], "low");
    assert_eq!(failed["confidence"], 0.0);
    assert!(failed["reason"]
        .as_str()
        .unwrap()
        .contains("no JSON object"));

    // Round trip through JSON.
    let repaired = parse_verdict("{suspicion_level: high, action_type: theft}");
    let back: ParsedVerdict =
        serde_json::from_str(&serde_json::to_string(&repaired).unwrap()).unwrap();
    assert_eq!(back, repaired);
}

#[test]
fn schema_matches_the_type() {
    let schema = verdict_json_schema();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        [
            "suspicion_level",
            "action_type",
            "confidence",
            "description",
            "reasoning",
            "recommendations"
        ]
    );
    let props = schema["properties"].as_object().unwrap();
    assert_eq!(props.len(), 6);
    assert_eq!(
        props["suspicion_level"]["enum"],
        serde_json::json!(["low", "medium", "high", "critical"])
    );
    assert_eq!(
        props["action_type"]["enum"],
        serde_json::json!([
            "normal_shopping",
            "suspicious_movement",
            "item_concealment",
            "potential_theft",
            "confirmed_theft"
        ])
    );
    assert_eq!(props["confidence"]["minimum"], 0.0);
    assert_eq!(props["confidence"]["maximum"], 1.0);
    assert_eq!(props["description"]["maxLength"], 400);
    assert_eq!(props["recommendations"]["maxItems"], 5);
    assert_eq!(props["recommendations"]["items"]["type"], "string");

    // Every level and action written by serde is one the schema allows and the parser reads
    // back as `parsed`.
    for level in SuspicionLevel::ALL {
        for action in ActionType::ALL {
            let v = Verdict {
                suspicion_level: level,
                action_type: action,
                confidence: 0.5,
                description: "d".into(),
                reasoning: "r".into(),
                recommendations: vec![],
            };
            let json = serde_json::to_value(&v).unwrap();
            assert!(props["suspicion_level"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json["suspicion_level"]));
            assert!(props["action_type"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json["action_type"]));
            let back = parse_verdict(&json.to_string());
            assert_eq!(back, ParsedVerdict::parsed(v));
        }
    }
}

/// Pieces of replies that exercise every branch of the reader when shuffled together.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "'",
    "“",
    "”",
    "\\",
    "\\u",
    "\\ud83d",
    "d800",
    "\n",
    " ",
    "<think>",
    "</think>",
    "◁think▷",
    "◁/think▷",
    "```json",
    "```",
    "suspicion_level",
    "action_type",
    "confidence",
    "recommendations",
    "verdict",
    "high",
    "élevé",
    "theft",
    "85%",
    "8/0",
    "1e999",
    "-",
    "NaN",
    "True",
    "None",
    "0.5",
    "description",
    "=",
    "/",
    "é",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary text never panics; a failure keeps the raw text, a verdict stays in bounds.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let got = parse_verdict(&text);
        match &got.source {
            VerdictSource::ParseFailed { raw, .. } => prop_assert_eq!(raw, &text),
            _ => prop_assert!(got.verdict.within_schema()),
        }
    }

    /// Reply-like fragment soup never panics and gives bounded verdicts.
    #[test]
    fn fragment_soup_never_panics(parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..60)) {
        let text = parts.concat();
        let got = parse_verdict(&text);
        match &got.source {
            VerdictSource::ParseFailed { raw, .. } => prop_assert_eq!(raw, &text),
            _ => prop_assert!(got.verdict.within_schema()),
        }
    }
}

#[test]
fn deep_nesting_does_not_overflow() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(parse_verdict(&deep).is_failed());
    let braces = "{\"a\":".repeat(50_000);
    assert!(parse_verdict(&braces).is_failed());
}

/// Every table reply that gives a verdict, cut at every character boundary: no panic; a
/// failure keeps the cut text as `raw`; what is read stays in bounds and never names a level or
/// action the whole reply does not give (the fallback's low / normal shopping aside).
#[test]
fn fuzz_every_prefix_of_valid_replies() {
    let mut cuts = 0;
    for (name, reply, want) in table() {
        if matches!(want, Want::Fail(_)) {
            continue;
        }
        let full = parse_verdict(&reply).verdict;
        for cut in (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)) {
            let text = &reply[..cut];
            let got = parse_verdict(text);
            cuts += 1;
            match &got.source {
                VerdictSource::ParseFailed { raw, .. } => {
                    assert_eq!(raw, text, "{name} cut at {cut}");
                    assert_eq!(got.verdict, Verdict::fallback(), "{name} cut at {cut}");
                }
                _ => {
                    let v = &got.verdict;
                    assert!(v.within_schema(), "{name} cut at {cut}: {v:?}");
                    assert!(
                        [full.suspicion_level, Low].contains(&v.suspicion_level),
                        "{name} cut at {cut} ({text:?}): level {:?}, the whole reply says {:?}",
                        v.suspicion_level,
                        full.suspicion_level
                    );
                    assert!(
                        [full.action_type, NormalShopping].contains(&v.action_type),
                        "{name} cut at {cut} ({text:?}): action {:?}, the whole reply says {:?}",
                        v.action_type,
                        full.action_type
                    );
                }
            }
        }
    }
    assert!(cuts > 1000, "only {cuts} cuts");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes read the way a model's output is (lossy UTF-8).
    #[test]
    fn fuzz_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let got = parse_verdict(&text);
        match &got.source {
            VerdictSource::ParseFailed { raw, .. } => prop_assert_eq!(raw, &text),
            _ => prop_assert!(got.verdict.within_schema()),
        }
    }

    /// A valid reply cut anywhere and followed by junk (a stream stopped mid-token, then
    /// whatever came next).
    #[test]
    fn fuzz_cut_replies_with_junk_tails(
        case in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        tail in prop_oneof![".{0,12}", prop::sample::select(FRAGMENTS).prop_map(str::to_string)],
    ) {
        let cases = table();
        let (_, reply, _) = &cases[case.index(cases.len())];
        let at = cut.index(reply.len() + 1);
        let at = (0..=at).rev().find(|&i| reply.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{tail}", &reply[..at]);
        let got = parse_verdict(&text);
        match &got.source {
            VerdictSource::ParseFailed { raw, .. } => prop_assert_eq!(raw, &text),
            _ => prop_assert!(got.verdict.within_schema()),
        }
    }
}
