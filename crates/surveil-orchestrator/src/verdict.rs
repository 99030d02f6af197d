//! The verdict of the vision-language model (VLM) on one camera frame, its JSON Schema for
//! constrained decoding, and a lenient parser for unconstrained replies.
//!
//! A reply is untrusted input (as in Frigate's GenAI review: strip fences, parse leniently, clamp
//! numbers, fall back to a safe default). [`parse_verdict`] never panics and never errors: a reply
//! it cannot read becomes the [`Verdict::fallback`] verdict marked
//! [`VerdictSource::ParseFailed`], with the raw text and the reason kept.
//!
//! Reading order of [`parse_verdict`]:
//! 1. reasoning spans (`<think>…</think>`, `<thinking>…</thinking>`, `◁think▷…◁/think▷`) are
//!    removed; an unclosed span runs to the end of the reply, and a closing marker without an
//!    opening one ends a reasoning span that began before the reply;
//! 2. strict path: the remaining text, trimmed, is exactly a JSON object with the six fields of
//!    [`verdict_json_schema`] and values inside its bounds → [`VerdictSource::Parsed`];
//! 3. repair path: the first complete verdict object in the text, read by a tolerant JSON reader
//!    (single or typographic quotes, unquoted keys, trailing or missing commas, bare words,
//!    Python literals, raw newlines in strings), possibly nested (`{"verdict": {…}}`), with
//!    tolerant field values (French and mixed-case level words, free action wording, percentages,
//!    numbers as strings, missing optional fields) → [`VerdictSource::Repaired`] listing every fix;
//! 4. when the reply holds no `{` at all, `key: value` lines (`Suspicion level: high`).
//!
//! Not here: the prompt (module `prompt`), the decision taken on a verdict (module `decision`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// Longest `description` and `reasoning`, in characters (`maxLength` of the schema; the repair
/// path truncates longer text).
pub const MAX_TEXT_CHARS: usize = 400;
/// Most `recommendations` (`maxItems` of the schema; the repair path keeps the first ones).
pub const MAX_RECOMMENDATIONS: usize = 5;
/// Longest single recommendation, in characters.
pub const MAX_RECOMMENDATION_CHARS: usize = 200;
/// Deepest nesting of arrays and objects the tolerant reader follows.
const MAX_DEPTH: usize = 32;
/// Most `{` positions tried as the start of a verdict object (bounds the work on hostile
/// input).
const MAX_OBJECT_ATTEMPTS: usize = 256;
/// Deepest nesting searched for a verdict object (`{"result": {"verdict": {…}}}`).
const MAX_SEARCH_DEPTH: usize = 4;

/// How suspicious the scene looks to the VLM. Ordered: `Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspicionLevel {
    /// Nothing unusual.
    Low,
    /// Worth watching.
    Medium,
    /// Likely wrongdoing.
    High,
    /// Wrongdoing under way or certain.
    Critical,
}

impl SuspicionLevel {
    /// Every level, lowest first.
    pub const ALL: [Self; 4] = [Self::Low, Self::Medium, Self::High, Self::Critical];

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Reads a level word leniently: any case, English or French (`élevé` → high, `faible` →
    /// low, `moyen` → medium, `critique` → critical), synonyms (`moderate`, `severe`). The whole
    /// text is tried first, then its words in order; the first recognised one wins.
    pub fn from_word(text: &str) -> Option<Self> {
        let folded = fold(text);
        let whole = folded.split_whitespace().collect::<Vec<_>>().join("_");
        level_word(&whole).or_else(|| folded.split_whitespace().find_map(level_word))
    }
}

/// The level named by one folded (lowercase, unaccented) word.
fn level_word(word: &str) -> Option<SuspicionLevel> {
    Some(match word {
        "low" | "faible" | "bas" | "basse" | "minimal" | "minimale" | "minor" | "none"
        | "aucun" | "aucune" | "negligible" => SuspicionLevel::Low,
        "medium" | "med" | "moderate" | "modere" | "moderee" | "moyen" | "moyenne" | "mid" => {
            SuspicionLevel::Medium
        }
        "high" | "eleve" | "elevee" | "haut" | "haute" | "fort" | "forte" => SuspicionLevel::High,
        "critical" | "critique" | "severe" | "extreme" | "urgent" => SuspicionLevel::Critical,
        _ => return None,
    })
}

/// What the person seems to be doing, from harmless to certain theft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    /// Ordinary shopping or passing by.
    NormalShopping,
    /// Unusual movement: loitering, returning, watching staff or cameras.
    SuspiciousMovement,
    /// An item being hidden in a bag, a pocket or clothing.
    ItemConcealment,
    /// Signs of theft without certainty.
    PotentialTheft,
    /// Theft seen happening.
    ConfirmedTheft,
}

impl ActionType {
    /// Every action type, harmless first.
    pub const ALL: [Self; 5] = [
        Self::NormalShopping,
        Self::SuspiciousMovement,
        Self::ItemConcealment,
        Self::PotentialTheft,
        Self::ConfirmedTheft,
    ];

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NormalShopping => "normal_shopping",
            Self::SuspiciousMovement => "suspicious_movement",
            Self::ItemConcealment => "item_concealment",
            Self::PotentialTheft => "potential_theft",
            Self::ConfirmedTheft => "confirmed_theft",
        }
    }

    /// Reads an action type from free wording, any case, English or French. The exact
    /// snake_case name wins; otherwise keywords, checked in this order: confirmed + theft
    /// (`confirm*` with `theft`/`steal*`/`stole*`/`shoplift*`/`vol`) → confirmed_theft; theft
    /// alone → potential_theft; `conceal*`/`hid*`/`dissimul*`/`cach*` → item_concealment;
    /// `suspicious`/`suspect*`/`loiter*`/`movement`/`mouvement`/`erratic` →
    /// suspicious_movement; `normal`/`shopping`/`brows*`/`achat*` → normal_shopping.
    pub fn from_wording(text: &str) -> Option<Self> {
        let folded = fold(text);
        let whole = folded.split_whitespace().collect::<Vec<_>>().join("_");
        if let Some(exact) = Self::ALL.into_iter().find(|a| a.as_str() == whole) {
            return Some(exact);
        }
        let words: Vec<&str> = folded.split_whitespace().collect();
        let any = |pred: &dyn Fn(&str) -> bool| words.iter().any(|w| pred(w));
        let theft = any(&|w| {
            w.starts_with("theft")
                || w.starts_with("steal")
                || w.starts_with("stole")
                || w.starts_with("shoplift")
                || w == "vol"
                || w == "larceny"
        });
        if theft && any(&|w| w.starts_with("confirm")) {
            return Some(Self::ConfirmedTheft);
        }
        if theft {
            return Some(Self::PotentialTheft);
        }
        if any(&|w| {
            w.starts_with("conceal")
                || w.starts_with("hid")
                || w.starts_with("dissimul")
                || w.starts_with("cach")
        }) {
            return Some(Self::ItemConcealment);
        }
        if any(&|w| {
            w == "suspicious"
                || w.starts_with("suspect")
                || w.starts_with("loiter")
                || w == "movement"
                || w == "mouvement"
                || w == "erratic"
        }) {
            return Some(Self::SuspiciousMovement);
        }
        if any(&|w| {
            w == "normal" || w == "shopping" || w.starts_with("brows") || w.starts_with("achat")
        }) {
            return Some(Self::NormalShopping);
        }
        None
    }
}

/// The VLM's judgement of one frame, as the JSON object of [`verdict_json_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// How suspicious the scene is.
    pub suspicion_level: SuspicionLevel,
    /// What the person seems to be doing.
    pub action_type: ActionType,
    /// The model's confidence in this verdict, in [0, 1].
    pub confidence: f32,
    /// What is seen, at most [`MAX_TEXT_CHARS`] characters.
    pub description: String,
    /// Why this level, at most [`MAX_TEXT_CHARS`] characters.
    pub reasoning: String,
    /// Suggested responses, at most [`MAX_RECOMMENDATIONS`].
    pub recommendations: Vec<String>,
}

impl Verdict {
    /// The safe default that stands in for an unreadable reply: low suspicion, normal shopping,
    /// confidence 0, empty texts.
    pub fn fallback() -> Self {
        Self {
            suspicion_level: SuspicionLevel::Low,
            action_type: ActionType::NormalShopping,
            confidence: 0.0,
            description: String::new(),
            reasoning: String::new(),
            recommendations: Vec::new(),
        }
    }

    /// Whether every value lies inside the bounds of [`verdict_json_schema`].
    pub fn within_schema(&self) -> bool {
        (0.0..=1.0).contains(&self.confidence)
            && self.description.chars().count() <= MAX_TEXT_CHARS
            && self.reasoning.chars().count() <= MAX_TEXT_CHARS
            && self.recommendations.len() <= MAX_RECOMMENDATIONS
            && self
                .recommendations
                .iter()
                .all(|r| r.chars().count() <= MAX_RECOMMENDATION_CHARS)
    }
}

/// How a verdict was obtained from the reply text. Serialized with a `status` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VerdictSource {
    /// The reply (reasoning spans aside) was exactly a JSON verdict inside the schema.
    Parsed,
    /// The verdict was read with lenient fixes.
    Repaired {
        /// One sentence per fix, in the order applied.
        repairs: Vec<String>,
    },
    /// No verdict could be read; the verdict is [`Verdict::fallback`].
    ParseFailed {
        /// Why.
        reason: String,
        /// The reply as received.
        raw: String,
    },
}

/// A verdict and how it was obtained. Serializes as the verdict's fields plus `status` (and
/// `repairs`, or `reason` and `raw`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedVerdict {
    /// The verdict ([`Verdict::fallback`] when parsing failed).
    #[serde(flatten)]
    pub verdict: Verdict,
    /// How it was obtained.
    #[serde(flatten)]
    pub source: VerdictSource,
}

impl ParsedVerdict {
    /// A verdict that needed no parsing (e.g. built from constrained output already decoded).
    pub fn parsed(verdict: Verdict) -> Self {
        Self {
            verdict,
            source: VerdictSource::Parsed,
        }
    }

    /// Whether no verdict could be read.
    pub fn is_failed(&self) -> bool {
        matches!(self.source, VerdictSource::ParseFailed { .. })
    }

    /// The verdict when one was read (parsed or repaired), `None` after a parse failure.
    pub fn usable(&self) -> Option<&Verdict> {
        (!self.is_failed()).then_some(&self.verdict)
    }

    /// `parsed`, `repaired` or `parse_failed`.
    pub fn status(&self) -> &'static str {
        match self.source {
            VerdictSource::Parsed => "parsed",
            VerdictSource::Repaired { .. } => "repaired",
            VerdictSource::ParseFailed { .. } => "parse_failed",
        }
    }
}

/// The JSON Schema of a [`Verdict`], in the draft 2020-12 subset that structured-generation
/// engines accept (type object, properties, required, enum, number minimum/maximum, arrays of
/// strings, `maxLength`, `maxItems`, `additionalProperties: false`). `required` lists the
/// fields in the order a reply should give them; `properties` is a JSON map whose key order
/// follows `serde_json` (alphabetical without its `preserve_order` feature).
pub fn verdict_json_schema() -> Value {
    let levels: Vec<&str> = SuspicionLevel::ALL.iter().map(|l| l.as_str()).collect();
    let actions: Vec<&str> = ActionType::ALL.iter().map(|a| a.as_str()).collect();
    serde_json::json!({
        "type": "object",
        "properties": {
            "suspicion_level": { "type": "string", "enum": levels },
            "action_type": { "type": "string", "enum": actions },
            "confidence": { "type": "number", "minimum": 0.0, "maximum": 1.0 },
            "description": { "type": "string", "maxLength": MAX_TEXT_CHARS },
            "reasoning": { "type": "string", "maxLength": MAX_TEXT_CHARS },
            "recommendations": {
                "type": "array",
                "items": { "type": "string", "maxLength": MAX_RECOMMENDATION_CHARS },
                "maxItems": MAX_RECOMMENDATIONS
            }
        },
        "required": FIELD_NAMES,
        "additionalProperties": false
    })
}

/// The six fields of a verdict, in answer order.
const FIELD_NAMES: [&str; 6] = [
    "suspicion_level",
    "action_type",
    "confidence",
    "description",
    "reasoning",
    "recommendations",
];

/// Reads a verdict from a VLM reply. Never panics, never errors: see the module documentation
/// for the reading order. An unreadable reply gives [`Verdict::fallback`] marked
/// [`VerdictSource::ParseFailed`] with the reason and the raw text.
pub fn parse_verdict(text: &str) -> ParsedVerdict {
    let result = strip_reasoning(text).and_then(|answer| {
        let answer = answer.trim();
        if let Some(verdict) = strict(answer) {
            return Ok(ParsedVerdict::parsed(verdict));
        }
        let (verdict, mut repairs) = lenient(answer)?;
        if repairs.is_empty() {
            repairs.push("reply was not a strict JSON verdict".to_string());
        }
        Ok(ParsedVerdict {
            verdict,
            source: VerdictSource::Repaired { repairs },
        })
    });
    match result {
        Ok(parsed) => {
            if let VerdictSource::Repaired { repairs } = &parsed.source {
                tracing::debug!(?repairs, "verdict repaired");
            }
            parsed
        }
        Err(reason) => {
            tracing::debug!(%reason, "verdict reply could not be parsed");
            ParsedVerdict {
                verdict: Verdict::fallback(),
                source: VerdictSource::ParseFailed {
                    reason,
                    raw: text.to_string(),
                },
            }
        }
    }
}

/// Reasoning markers: (opening, closing), ASCII tags matched case-insensitively.
const REASONING_MARKERS: [(&str, &str); 3] = [
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("◁think▷", "◁/think▷"),
];

/// The reply without its reasoning spans, or why nothing is left.
fn strip_reasoning(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("empty reply".to_string());
    }
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let mut rest = 0usize;
    let mut had_reasoning = false;
    // A closing marker before any opening one ends a span that began before the reply (chat
    // templates that open the reasoning in the prompt).
    let first_open = REASONING_MARKERS
        .iter()
        .filter_map(|(open, _)| lower.find(open))
        .min();
    let first_close = REASONING_MARKERS
        .iter()
        .filter_map(|(_, close)| lower.find(close).map(|at| (at, at + close.len())))
        .min();
    if let Some((at, end)) = first_close {
        if first_open.is_none_or(|open| at < open) {
            rest = end;
            had_reasoning = true;
        }
    }
    let mut answer = String::new();
    loop {
        let next_open = REASONING_MARKERS
            .iter()
            .filter_map(|(open, close)| {
                lower
                    .get(rest..)
                    .and_then(|s| s.find(open))
                    .map(|at| (rest + at, *open, *close))
            })
            .min_by_key(|(at, _, _)| *at);
        let Some((at, open, close)) = next_open else {
            answer.push_str(text.get(rest..).unwrap_or(""));
            break;
        };
        answer.push_str(text.get(rest..at).unwrap_or(""));
        had_reasoning = true;
        let body = at + open.len();
        match lower.get(body..).and_then(|s| s.find(close)) {
            Some(end) => rest = body + end + close.len(),
            None => {
                if answer.trim().is_empty() {
                    return Err(format!(
                        "reasoning span `{open}` never closed: no answer after it"
                    ));
                }
                break;
            }
        }
    }
    if answer.trim().is_empty() {
        let why = if had_reasoning {
            "no answer after the reasoning span"
        } else {
            "empty reply"
        };
        return Err(why.to_string());
    }
    Ok(answer)
}

/// The strict path: exactly the six fields, exact values, inside the schema's bounds.
fn strict(answer: &str) -> Option<Verdict> {
    let value: Value = serde_json::from_str(answer).ok()?;
    let object = value.as_object()?;
    if object.len() != FIELD_NAMES.len() || !FIELD_NAMES.iter().all(|f| object.contains_key(*f)) {
        return None;
    }
    let verdict: Verdict = serde_json::from_value(value).ok()?;
    verdict.within_schema().then_some(verdict)
}

/// The repair path: the first complete verdict in JSON-like objects, else `key: value` lines.
fn lenient(answer: &str) -> Result<(Verdict, Vec<String>), String> {
    let chars: Vec<char> = answer.chars().collect();
    let mut first_error: Option<String> = None;
    let mut any_object = false;
    let mut pos = 0;
    let mut attempts = 0;
    while let Some(start) = (pos..chars.len()).find(|&i| chars[i] == '{') {
        attempts += 1;
        if attempts > MAX_OBJECT_ATTEMPTS {
            break;
        }
        let mut reader = Reader::new(&chars, start);
        let Some(value) = reader.value(0) else {
            pos = start + 1;
            continue;
        };
        any_object = true;
        let end = reader.pos;
        let mut candidates = Vec::new();
        collect_candidates(&value, 0, &mut candidates);
        for (object, depth) in candidates {
            match extract(object) {
                Ok((verdict, field_repairs)) => {
                    let mut repairs = reader.fixes;
                    let before: String = chars[..start].iter().collect();
                    let after: String = chars[end..].iter().collect();
                    if let Some(fix) = describe_surroundings(&before, &after) {
                        repairs.insert(0, fix);
                    }
                    if depth > 0 {
                        repairs.push("took the verdict from a nested object".to_string());
                    }
                    repairs.extend(field_repairs);
                    return Ok((verdict, repairs));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        pos = end.max(start + 1);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if any_object {
        return Err("no JSON object with a suspicion_level in the reply".to_string());
    }
    if chars.contains(&'{') {
        return Err("no complete JSON object in the reply (cut off?)".to_string());
    }
    let object = key_value_lines(answer);
    if object
        .keys()
        .any(|k| field_of(k) == Some(Field::SuspicionLevel))
    {
        let (verdict, field_repairs) = extract(&object)?;
        let mut repairs = vec!["read `key: value` lines (no JSON object)".to_string()];
        repairs.extend(field_repairs);
        return Ok((verdict, repairs));
    }
    Err("no JSON object in the reply".to_string())
}

/// A repair sentence for text found around the verdict object, if any.
fn describe_surroundings(before: &str, after: &str) -> Option<String> {
    let (before, after) = (before.trim(), after.trim());
    if before.is_empty() && after.is_empty() {
        return None;
    }
    let fence_only = |s: &str| {
        s.is_empty() || (s.starts_with("```") && s[3..].chars().all(|c| c.is_alphanumeric()))
    };
    if (before.contains("```") || after.contains("```")) && fence_only(before) && fence_only(after)
    {
        return Some("removed a code fence".to_string());
    }
    Some("ignored text around the JSON object".to_string())
}

/// Objects that name a suspicion level, preorder, with their nesting depth; children under
/// the usual wrapper keys (`verdict`, `result`, …) come first.
fn collect_candidates<'v>(
    value: &'v Value,
    depth: usize,
    out: &mut Vec<(&'v Map<String, Value>, usize)>,
) {
    if depth > MAX_SEARCH_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            if map
                .keys()
                .any(|k| field_of(k) == Some(Field::SuspicionLevel))
            {
                out.push((map, depth));
            }
            const WRAPPERS: [&str; 6] = [
                "verdict", "result", "analysis", "answer", "output", "response",
            ];
            let is_wrapper = |k: &str| WRAPPERS.contains(&normalize_key(k).as_str());
            let wrapped = map.iter().filter(|(k, _)| is_wrapper(k));
            let others = map.iter().filter(|(k, _)| !is_wrapper(k));
            for (_, child) in wrapped.chain(others) {
                collect_candidates(child, depth + 1, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_candidates(item, depth + 1, out);
            }
        }
        _ => {}
    }
}

/// The verdict fields, under any of their accepted names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SuspicionLevel,
    ActionType,
    Confidence,
    Description,
    Reasoning,
    Recommendations,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::SuspicionLevel => "suspicion_level",
            Self::ActionType => "action_type",
            Self::Confidence => "confidence",
            Self::Description => "description",
            Self::Reasoning => "reasoning",
            Self::Recommendations => "recommendations",
        }
    }
}

/// `suspicionLevel`, `Suspicion Level`, `**suspicion-level**` → `suspicion_level`.
fn normalize_key(key: &str) -> String {
    let trimmed = key.trim_matches(|c: char| {
        c.is_whitespace() || matches!(c, '*' | '#' | '`' | '"' | '\'' | '-' | '>' | '_')
    });
    // camelCase boundaries become spaces before folding.
    let mut spaced = String::with_capacity(trimmed.len() + 4);
    let mut prev_lower = false;
    for c in trimmed.chars() {
        if c.is_uppercase() && prev_lower {
            spaced.push(' ');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        spaced.push(c);
    }
    fold(&spaced)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
}

/// The verdict field a key names, if any.
fn field_of(key: &str) -> Option<Field> {
    Some(match normalize_key(key).as_str() {
        "suspicion_level"
        | "suspicion"
        | "level"
        | "suspicionlevel"
        | "threat_level"
        | "risk_level"
        | "niveau_de_suspicion"
        | "niveau_suspicion"
        | "niveau" => Field::SuspicionLevel,
        "action_type" | "action" | "actiontype" | "type_action" | "type_d_action" | "behavior"
        | "behaviour" | "activity" => Field::ActionType,
        "confidence" | "confidence_score" | "confiance" => Field::Confidence,
        "description" | "summary" | "resume" => Field::Description,
        "reasoning" | "reason" | "rationale" | "explanation" | "raisonnement" | "justification" => {
            Field::Reasoning
        }
        "recommendations"
        | "recommendation"
        | "recommended_actions"
        | "recommandations"
        | "recommandation" => Field::Recommendations,
        _ => return None,
    })
}

/// The value of `field` in `object`: under its exact name first, else under the first alias;
/// with a repair sentence when an alias was used.
fn lookup<'v>(
    object: &'v Map<String, Value>,
    field: Field,
    repairs: &mut Vec<String>,
) -> Option<&'v Value> {
    if let Some(v) = object.get(field.name()) {
        return Some(v);
    }
    let (key, value) = object.iter().find(|(k, _)| field_of(k) == Some(field))?;
    repairs.push(format!("read key `{key}` as {}", field.name()));
    Some(value)
}

/// A verdict from one object's fields, with the repairs its values needed.
fn extract(object: &Map<String, Value>) -> Result<(Verdict, Vec<String>), String> {
    let mut repairs = Vec::new();

    let level_value = lookup(object, Field::SuspicionLevel, &mut repairs)
        .ok_or_else(|| "no suspicion_level".to_string())?;
    let level_text = scalar_text(level_value).unwrap_or_default();
    let suspicion_level = SuspicionLevel::from_word(&level_text).ok_or_else(|| {
        format!("suspicion_level `{level_text}` is not one of low, medium, high, critical")
    })?;
    if level_text != suspicion_level.as_str() {
        repairs.push(format!(
            "read suspicion_level `{level_text}` as {}",
            suspicion_level.as_str()
        ));
    }

    let action_value = lookup(object, Field::ActionType, &mut repairs)
        .ok_or_else(|| "no action_type".to_string())?;
    let action_text = scalar_text(action_value).unwrap_or_default();
    let action_type = ActionType::from_wording(&action_text)
        .ok_or_else(|| format!("action_type `{action_text}` is not a known action"))?;
    if action_text != action_type.as_str() {
        repairs.push(format!(
            "read action_type `{action_text}` as {}",
            action_type.as_str()
        ));
    }

    let confidence = match lookup(object, Field::Confidence, &mut repairs) {
        None | Some(Value::Null) => {
            repairs.push("confidence missing: set to 0".to_string());
            0.0
        }
        Some(value) => match read_confidence(value) {
            Some((c, note)) => {
                if let Some(note) = note {
                    repairs.push(note);
                }
                c
            }
            None => {
                repairs.push(format!("confidence `{value}` unreadable: set to 0"));
                0.0
            }
        },
    };

    let description = text_field(object, Field::Description, MAX_TEXT_CHARS, &mut repairs);
    let reasoning = text_field(object, Field::Reasoning, MAX_TEXT_CHARS, &mut repairs);

    let mut recommendations: Vec<String> =
        match lookup(object, Field::Recommendations, &mut repairs) {
            None | Some(Value::Null) => {
                repairs.push("recommendations missing: none".to_string());
                Vec::new()
            }
            Some(Value::Array(items)) => items.iter().filter_map(scalar_text).collect(),
            Some(other) => {
                repairs.push("recommendations was not a list: read as one item".to_string());
                scalar_text(other).into_iter().collect()
            }
        };
    recommendations.retain(|r| !r.trim().is_empty());
    if recommendations.len() > MAX_RECOMMENDATIONS {
        repairs.push(format!(
            "kept the first {MAX_RECOMMENDATIONS} of {} recommendations",
            recommendations.len()
        ));
        recommendations.truncate(MAX_RECOMMENDATIONS);
    }
    for r in &mut recommendations {
        if truncate_chars(r, MAX_RECOMMENDATION_CHARS) {
            repairs.push(format!(
                "truncated a recommendation to {MAX_RECOMMENDATION_CHARS} characters"
            ));
        }
    }

    for key in object.keys() {
        if field_of(key).is_none() {
            repairs.push(format!("ignored unknown field `{key}`"));
        }
    }

    Ok((
        Verdict {
            suspicion_level,
            action_type,
            confidence,
            description,
            reasoning,
            recommendations,
        },
        repairs,
    ))
}

/// A string field: strings as they are, numbers and booleans written out, lists of strings
/// joined by spaces; missing → empty; truncated to `max` characters.
fn text_field(
    object: &Map<String, Value>,
    field: Field,
    max: usize,
    repairs: &mut Vec<String>,
) -> String {
    let mut text = match lookup(object, field, repairs) {
        None | Some(Value::Null) => {
            repairs.push(format!("{} missing: empty", field.name()));
            String::new()
        }
        Some(Value::Array(items)) => {
            repairs.push(format!("{} was a list: joined", field.name()));
            items
                .iter()
                .filter_map(scalar_text)
                .collect::<Vec<_>>()
                .join(" ")
        }
        Some(value) => {
            if !value.is_string() {
                repairs.push(format!("{} was not a string", field.name()));
            }
            scalar_text(value).unwrap_or_default()
        }
    };
    if truncate_chars(&mut text, max) {
        repairs.push(format!("truncated {} to {max} characters", field.name()));
    }
    text
}

/// A scalar as text: strings as they are, numbers and booleans written out; objects, arrays
/// and null have none.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keeps the first `max` characters; whether anything was cut.
fn truncate_chars(text: &mut String, max: usize) -> bool {
    match text.char_indices().nth(max) {
        Some((at, _)) => {
            text.truncate(at);
            true
        }
        None => false,
    }
}

/// A confidence in [0, 1] and a repair sentence when it needed one. Accepts numbers and
/// numeric strings; `85%`, `85 percent` and `8/10` are ratios; a plain number in (1, 100] is a
/// percentage; anything else outside [0, 1] is clamped.
fn read_confidence(value: &Value) -> Option<(f32, Option<String>)> {
    let (number, percent, from_string) = match value {
        Value::Number(n) => (n.as_f64()?, false, false),
        Value::String(s) => {
            let t = s.trim().to_lowercase();
            if let Some((num, den)) = t.split_once('/') {
                let num: f64 = num.trim().parse().ok()?;
                let den: f64 = den.trim().parse().ok()?;
                if den.is_nan() || den <= 0.0 {
                    return None;
                }
                let ratio = num / den;
                let c = clamp_unit(ratio);
                return Some((c, Some(format!("read confidence `{s}` as {c}"))));
            }
            let percent = t.ends_with('%') || t.ends_with("percent") || t.ends_with("pourcent");
            let digits = t
                .trim_end_matches('%')
                .trim_end_matches("pourcent")
                .trim_end_matches("percent")
                .trim()
                .replace(',', ".");
            (digits.parse::<f64>().ok()?, percent, true)
        }
        _ => return None,
    };
    if !number.is_finite() {
        return None;
    }
    let original = value.to_string();
    let (scaled, why) = if percent || (number > 1.0 && number <= 100.0) {
        (number / 100.0, "as a percentage")
    } else if !(0.0..=1.0).contains(&number) {
        (number, "clamped to [0, 1]")
    } else if from_string {
        (number, "from a string")
    } else {
        return Some((number as f32, None));
    };
    let c = clamp_unit(scaled);
    Some((c, Some(format!("read confidence {original} {why}: {c}"))))
}

/// `x` clamped to [0, 1] as f32 (NaN → 0).
fn clamp_unit(x: f64) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0) as f32
    }
}

/// `key: value` lines whose key names a verdict field (`**Suspicion level:** high`), as an
/// object of strings.
fn key_value_lines(answer: &str) -> Map<String, Value> {
    let mut object = Map::new();
    for line in answer.lines() {
        let line = line.trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '-' | '*' | '#' | '>' | '•')
        });
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if field_of(key).is_none() {
            continue;
        }
        let value = value
            .trim()
            .trim_end_matches(',')
            .trim_matches(|c: char| matches!(c, '*' | '"' | '\'' | '`' | ' '));
        object
            .entry(normalize_key(key))
            .or_insert_with(|| Value::String(value.to_string()));
    }
    object
}

/// Lowercase, without the accents of French and other Latin scripts, punctuation as spaces.
fn fold(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ý' | 'ÿ' => 'y',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        })
        .collect()
}

/// A tolerant reader of JSON-like text into [`Value`]: JSON plus single and typographic quotes,
/// unquoted keys, trailing and missing commas, bare words, Python literals, raw newlines in
/// strings, unescaped quotes inside strings. Each tolerance used is noted once in `fixes`.
struct Reader<'a> {
    chars: &'a [char],
    pos: usize,
    fixes: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(chars: &'a [char], pos: usize) -> Self {
        Self {
            chars,
            pos,
            fixes: Vec::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn fix(&mut self, what: &str) {
        if !self.fixes.iter().any(|f| f == what) {
            self.fixes.push(what.to_string());
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// One value starting at the next non-blank character; `None` when there is none.
    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        match self.peek()? {
            '{' => self.object(depth),
            '[' => self.array(depth),
            '"' | '\'' | '“' | '‘' => self.string().map(Value::String),
            c if c.is_alphanumeric() || matches!(c, '-' | '+' | '.') => self.bare(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<Value> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        let mut after_member = false;
        loop {
            self.skip_ws();
            match self.peek()? {
                '}' => {
                    self.pos += 1;
                    return Some(Value::Object(map));
                }
                ',' => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some('}') || !after_member {
                        self.fix("removed a stray comma");
                    }
                    after_member = false;
                    continue;
                }
                _ if after_member => self.fix("inserted a missing comma"),
                _ => {}
            }
            let key = match self.peek()? {
                '"' | '\'' | '“' | '‘' => self.string()?,
                _ => self.bare_key()?,
            };
            self.skip_ws();
            if !matches!(self.peek()?, ':' | '=') {
                return None;
            }
            self.pos += 1;
            let value = self.value(depth + 1)?;
            map.entry(key).or_insert(value);
            after_member = true;
        }
    }

    fn array(&mut self, depth: usize) -> Option<Value> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        let mut after_item = false;
        loop {
            self.skip_ws();
            match self.peek()? {
                ']' => {
                    self.pos += 1;
                    return Some(Value::Array(items));
                }
                ',' => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(']') || !after_item {
                        self.fix("removed a stray comma");
                    }
                    after_item = false;
                    continue;
                }
                _ if after_item => self.fix("inserted a missing comma"),
                _ => {}
            }
            items.push(self.value(depth + 1)?);
            after_item = true;
        }
    }

    /// An unquoted key: letters, digits, `_`, `-` and inner spaces up to `:` or `=`.
    fn bare_key(&mut self) -> Option<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' ' | '\t'))
        {
            self.pos += 1;
        }
        let key: String = self.chars[start..self.pos].iter().collect();
        let key = key.trim();
        if key.is_empty() {
            return None;
        }
        self.fix("quoted unquoted keys");
        Some(key.to_string())
    }

    /// A bare token up to `,`, `}`, `]` or the end of the line: a number, a literal
    /// (`true`/`True`, `false`/`False`, `null`/`None`) or a string.
    fn bare(&mut self) -> Option<Value> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| !matches!(c, ',' | '}' | ']' | '\n' | '\r'))
        {
            self.pos += 1;
        }
        let token: String = self.chars[start..self.pos].iter().collect();
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        match token {
            "true" | "false" | "null" => {}
            "True" | "False" | "None" => self.fix("read Python literals"),
            _ => {}
        }
        Some(match token {
            "true" | "True" => Value::Bool(true),
            "false" | "False" => Value::Bool(false),
            "null" | "None" => Value::Null,
            _ => {
                let strict_number = token
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '-');
                match token.parse::<f64>().ok().and_then(Number::from_f64) {
                    Some(n) => {
                        if !strict_number || serde_json::from_str::<Number>(token).is_err() {
                            self.fix("read a non-JSON number");
                        }
                        Value::Number(n)
                    }
                    None => {
                        self.fix("quoted bare words");
                        Value::String(token.to_string())
                    }
                }
            }
        })
    }

    /// A quoted string. A closing quote counts only when the next non-blank character on the
    /// line ends a value (`,` `}` `]` `:`), or at the end of a line or of the text; otherwise it
    /// is part of the text (apostrophes in single-quoted strings, unescaped quotes).
    fn string(&mut self) -> Option<String> {
        let open = self.peek()?;
        let close = match open {
            '“' => '”',
            '‘' => '’',
            c => c,
        };
        match open {
            '"' => {}
            '\'' => self.fix("read single-quoted strings"),
            _ => self.fix("read typographic quotes"),
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                '\\' => {
                    let e = self.peek()?;
                    self.pos += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'u' => out.push(self.unicode_escape()),
                        other => out.push(other),
                    }
                }
                '\n' | '\r' => {
                    self.fix("kept line breaks inside strings");
                    out.push(c);
                }
                c if c == close => {
                    if self.closes_here() {
                        return Some(out);
                    }
                    if close == '"' {
                        self.fix("kept unescaped quotes inside strings");
                    }
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }

    /// Whether a quote just read ends its string (see [`Reader::string`]).
    fn closes_here(&self) -> bool {
        let mut i = self.pos;
        while let Some(&c) = self.chars.get(i) {
            match c {
                ' ' | '\t' => i += 1,
                ',' | '}' | ']' | ':' | '=' | '\n' | '\r' => return true,
                _ => return false,
            }
        }
        true
    }

    /// The character of a `\uXXXX` escape (after `\u`), joining surrogate pairs; U+FFFD for a
    /// malformed one.
    fn unicode_escape(&mut self) -> char {
        let Some(high) = self.hex4() else {
            return char::REPLACEMENT_CHARACTER;
        };
        if (0xD800..0xDC00).contains(&high)
            && self.chars.get(self.pos) == Some(&'\\')
            && self.chars.get(self.pos + 1) == Some(&'u')
        {
            let save = self.pos;
            self.pos += 2;
            if let Some(low) = self.hex4().filter(|l| (0xDC00..0xE000).contains(l)) {
                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
            }
            self.pos = save;
        }
        char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits: String = self.chars.get(self.pos..self.pos + 4)?.iter().collect();
        let code = u32::from_str_radix(&digits, 16).ok()?;
        self.pos += 4;
        Some(code)
    }
}
