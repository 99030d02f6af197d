//! JSON-Schema-constrained decoding: random logits through mask → top-p sample → commit must
//! always give a document that parses and satisfies the schema, within the stated bound.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use surveil_models::generation::constrained::{
    ConstraintStart, ConstraintVocabulary, JsonSchemaConstraint, MAX_NUMBER_LEN,
};
use surveil_models::generation::{Sampling, TokenSampler};
use surveil_models::tokenizer::Vocabulary;

/// Rows of Qwen2-VL-2B's output head: more than the tokenizer's 151,665 ids.
const QWEN_VOCAB_ROWS: usize = 151_936;

struct Qwen {
    tokenizer: tokenizers::Tokenizer,
    vocab: Vocabulary,
    stop: Vec<u32>,
}

/// The Qwen2-VL tokenizer of the asset cache (parsed once per test binary), or `None` when
/// setup has not fetched it on a developer's machine (under CI that fails, see
/// `common::require`).
fn qwen() -> Option<&'static Qwen> {
    static QWEN: OnceLock<Option<Qwen>> = OnceLock::new();
    QWEN.get_or_init(|| {
        let path = crate::common::asset("tokenizers/qwen2-vl/tokenizer.json")?;
        let tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
        let vocab = Vocabulary::from_hf_tokenizer(&tokenizer).unwrap();
        let stop = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .map(|t| tokenizer.token_to_id(t).unwrap())
            .collect();
        Some(Qwen {
            tokenizer,
            vocab,
            stop,
        })
    })
    .as_ref()
}

/// The analyst's verdict, the schema the pipeline constrains its VLM replies to.
fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "suspicion_level": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
            "action_type": {"type": "string", "enum": [
                "normal_shopping", "suspicious_movement", "item_concealment",
                "potential_theft", "confirmed_theft"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "description": {"type": "string", "maxLength": 200},
            "reasoning": {"type": "string", "maxLength": 200},
            "recommendations": {
                "type": "array", "maxItems": 3,
                "items": {"type": "string", "maxLength": 100}
            }
        },
        "required": ["suspicion_level", "action_type", "confidence", "description",
                     "reasoning", "recommendations"],
        "additionalProperties": false
    })
}

/// Check a parsed verdict against [`verdict_schema`] rule by rule; the failing rule on error.
fn check_verdict(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not an object")?;
    let keys = [
        "suspicion_level",
        "action_type",
        "confidence",
        "description",
        "reasoning",
        "recommendations",
    ];
    if obj.len() != keys.len() || !keys.iter().all(|k| obj.contains_key(*k)) {
        return Err(format!("keys {:?}", obj.keys().collect::<Vec<_>>()));
    }
    let level = obj["suspicion_level"]
        .as_str()
        .ok_or("level not a string")?;
    if !["low", "medium", "high", "critical"].contains(&level) {
        return Err(format!("suspicion_level {level}"));
    }
    let action = obj["action_type"].as_str().ok_or("action not a string")?;
    let actions = [
        "normal_shopping",
        "suspicious_movement",
        "item_concealment",
        "potential_theft",
        "confirmed_theft",
    ];
    if !actions.contains(&action) {
        return Err(format!("action_type {action}"));
    }
    let c = obj["confidence"]
        .as_f64()
        .ok_or("confidence not a number")?;
    if !(0.0..=1.0).contains(&c) {
        return Err(format!("confidence {c}"));
    }
    for key in ["description", "reasoning"] {
        let s = obj[key].as_str().ok_or(format!("{key} not a string"))?;
        if s.chars().count() > 200 {
            return Err(format!("{key} has {} characters", s.chars().count()));
        }
    }
    let recs = obj["recommendations"].as_array().ok_or("not an array")?;
    if recs.len() > 3 {
        return Err(format!("{} recommendations", recs.len()));
    }
    for r in recs {
        let s = r.as_str().ok_or("recommendation not a string")?;
        if s.chars().count() > 100 {
            return Err(format!(
                "recommendation of {} characters",
                s.chars().count()
            ));
        }
    }
    Ok(())
}

/// Seeded uniform noise logits in [-8, 8): what a model with random weights produces.
struct Noise(u64);

impl Noise {
    fn logits(&mut self, rows: usize) -> Vec<f32> {
        (0..rows)
            .map(|_| {
                // xorshift64*
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
            })
            .collect()
    }
}

/// Candidates handed to the sampler: the highest allowed logits. Masked ids have probability
/// zero, and with logits spread over [-8, 8) the ids past the 512th hold a negligible share of
/// the top-p mass, so this draws like the sampler over the whole masked row at a fraction of
/// its cost (it sorts every row).
const CANDIDATES: usize = 512;

/// What one constrained generation produced.
struct Run {
    ids: Vec<u32>,
    stopped_by: u32,
    mask_time: Duration,
    steps: usize,
}

/// mask → sample (top-p) → commit until a stop token; asserts every mask leaves a token and
/// that no id outside the allowed set or the tokenizer's table is ever drawn.
fn generate(
    constraint: &mut JsonSchemaConstraint,
    rows: usize,
    vocab_len: usize,
    seed: u64,
    mut bias: impl FnMut(usize, &mut [f32]),
) -> Run {
    let mut noise = Noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut sampler = TokenSampler::new(Sampling::from_params(1.0, 0.9), seed);
    let mut ids = Vec::new();
    let mut mask_time = Duration::ZERO;
    let bound = constraint.max_tokens().unwrap_or(usize::MAX);
    for step in 0.. {
        assert!(step <= bound, "seed {seed}: more than {bound} tokens");
        let mut logits = noise.logits(rows);
        bias(step, &mut logits);
        let t = Instant::now();
        constraint.mask(&mut logits).unwrap();
        mask_time += t.elapsed();
        let mut allowed: Vec<(u32, f32)> = (0..rows as u32)
            .zip(logits)
            .filter(|(_, l)| l.is_finite())
            .collect();
        assert!(!allowed.is_empty(), "seed {seed}: dead end at step {step}");
        if allowed.len() > CANDIDATES {
            allowed.select_nth_unstable_by(CANDIDATES - 1, |a, b| b.1.total_cmp(&a.1));
            allowed.truncate(CANDIDATES);
            allowed.sort_unstable_by_key(|&(id, _)| id);
        }
        let candidate_logits: Vec<f32> = allowed.iter().map(|&(_, l)| l).collect();
        let token = allowed[sampler.sample_slice(&candidate_logits).unwrap() as usize].0;
        assert!(
            (token as usize) < vocab_len,
            "id {token} past the tokenizer"
        );
        constraint.commit(token, "").unwrap();
        if constraint.stop_tokens().contains(&token) {
            return Run {
                ids,
                stopped_by: token,
                mask_time,
                steps: step + 1,
            };
        }
        ids.push(token);
    }
    unreachable!()
}

#[test]
fn qwen_vocabulary_spells_encoded_text_byte_for_byte() {
    let Some(q) = qwen() else { return };
    assert_eq!(q.vocab.len(), q.tokenizer.get_vocab_size(true));
    let im_end = q.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(q.vocab.is_special(im_end));
    assert_eq!(q.vocab.entry(im_end), Some(&b"<|im_end|>"[..]));
    let text =
        "{\"suspicion_level\": \"low\"}\n\tPerson near shelf 3 — 价格 0.75 ◁/think▷ é\u{1F600}";
    let ids = q.tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&id| q.vocab.bytes(id).unwrap().to_vec())
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
}

#[test]
fn verdict_bound_is_the_sum_of_its_parts() {
    let Some(q) = qwen() else { return };
    let c = JsonSchemaConstraint::new(
        &verdict_schema(),
        &q.vocab,
        &q.stop,
        ConstraintStart::Immediately,
    )
    .unwrap();
    // Braces and 5 commas; each property: quoted key + ':' + its value's bound.
    let string = |n: usize| 2 + 4 * n;
    let expected = 2
        + 5
        + (17 + 1 + "\"critical\"".len())
        + (13 + 1 + "\"suspicious_movement\"".len())
        + (12 + 1 + MAX_NUMBER_LEN)
        + (13 + 1 + string(200))
        + (11 + 1 + string(200))
        + (17 + 1 + 2 + 3 * string(100) + 2);
    assert_eq!(c.max_json_bytes(), Some(expected));
    assert_eq!(expected, 2965);
    assert_eq!(c.max_tokens(), Some(expected + 1));
}

#[test]
fn random_logits_always_give_valid_verdicts() {
    let Some(q) = qwen() else { return };
    let schema = verdict_schema();
    let built = Instant::now();
    let shared = ConstraintVocabulary::shared(&q.vocab).unwrap();
    let build_time = built.elapsed();
    let again = Instant::now();
    assert!(Arc::ptr_eq(
        &shared,
        &ConstraintVocabulary::shared(&q.vocab).unwrap()
    ));
    let hit_time = again.elapsed();
    let (mut steps, mut mask_time, mut longest) = (0, Duration::ZERO, 0);
    let (mut fractional, mut full_string, mut full_array) = (false, false, false);
    for seed in 0..50u64 {
        let mut c =
            JsonSchemaConstraint::new(&schema, &q.vocab, &q.stop, ConstraintStart::Immediately)
                .unwrap();
        let run = generate(&mut c, QWEN_VOCAB_ROWS, q.vocab.len(), seed, |_, _| {});
        assert!(q.stop.contains(&run.stopped_by));
        assert!(c.is_complete());
        let text = c.json_text();
        // The committed tokens really spell the text the constraint accepted.
        assert_eq!(q.tokenizer.decode(&run.ids, false).unwrap(), text);
        let verdict: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        check_verdict(&verdict).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        assert!(run.steps <= c.max_tokens().unwrap());
        let c = verdict["confidence"].as_f64().unwrap();
        fractional |= c > 0.0 && c < 1.0;
        full_string |= verdict["description"].as_str().unwrap().chars().count() == 200;
        full_array |= verdict["recommendations"].as_array().unwrap().len() == 3;
        steps += run.steps;
        mask_time += run.mask_time;
        longest = longest.max(run.steps);
    }
    // The seeds reach the interesting edges: decimals, strings cut at maxLength, full arrays.
    assert!(fractional && full_string && full_array);
    println!(
        "Qwen vocabulary ({} ids, {QWEN_VOCAB_ROWS} rows): trie built in {build_time:?}, cache \
         hit in {hit_time:?}; {steps} steps over 50 seeds (longest {longest}), mask {:?} per step",
        q.vocab.len(),
        mask_time / steps as u32
    );
}

#[test]
fn after_text_reasoning_is_free_until_the_marker() {
    let Some(q) = qwen() else { return };
    let marker = "◁/think▷";
    let marker_ids = q
        .tokenizer
        .encode(marker, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let regular = (0..q.vocab.len() as u32)
        .filter(|&id| !q.vocab.is_special(id) && !q.vocab.entry(id).unwrap().is_empty())
        .count();
    for seed in 0..6u64 {
        // Seeds 0..3: noise only, so the budget runs out and the marker is forced.
        // Seeds 3..6: the "model" writes the marker itself after 12 tokens of reasoning.
        let natural = seed >= 3;
        let budget = 40;
        let mut c = JsonSchemaConstraint::new(
            &verdict_schema(),
            &q.vocab,
            &q.stop,
            ConstraintStart::after_text(marker, budget),
        )
        .unwrap();
        // The first mask leaves every regular token but none of the special ones.
        let first = c.allowed_tokens(QWEN_VOCAB_ROWS).unwrap();
        assert_eq!(first.len(), regular);
        assert!(q.stop.iter().all(|s| !first.contains(s)));
        let run = generate(
            &mut c,
            QWEN_VOCAB_ROWS,
            q.vocab.len(),
            seed,
            |step, logits| {
                if natural && (12..12 + marker_ids.len()).contains(&step) {
                    logits[marker_ids[step - 12] as usize] = 1e4;
                }
            },
        );
        // Bytes, not decoded text: noise may end inside a UTF-8 character.
        let spell = |ids: &[u32]| -> Vec<u8> {
            ids.iter()
                .flat_map(|&id| q.vocab.bytes(id).unwrap().to_vec())
                .collect()
        };
        let bytes = spell(&run.ids);
        let m = marker.as_bytes();
        let cut = bytes
            .windows(m.len())
            .position(|w| w == m)
            .expect("the marker is in the reply");
        let (reasoning, answer) = (&bytes[..cut], &bytes[cut + m.len()..]);
        assert_eq!(
            answer,
            c.json_text().as_bytes(),
            "the JSON starts right after the marker"
        );
        check_verdict(&serde_json::from_slice(answer).unwrap()).unwrap();
        if natural {
            // 12 free tokens, then the marker the "model" wrote.
            assert_eq!(reasoning, &spell(&run.ids[..12])[..]);
            assert_eq!(&run.ids[12..12 + marker_ids.len()], &marker_ids[..]);
        } else {
            // The budget's 40 free tokens, then the forced marker.
            assert_eq!(reasoning, &spell(&run.ids[..budget])[..]);
        }
        // Noise is not JSON: the free part was left unconstrained.
        assert!(serde_json::from_slice::<Value>(reasoning).is_err());
        assert!(run.steps <= c.max_tokens().unwrap());
    }
}

// ----- mechanics on a byte vocabulary (no assets needed) -----------------------------------

/// Ids 0..=255: the single bytes; then a few multi-byte tokens; then two special tokens.
fn byte_vocabulary(extra: &[&[u8]]) -> (Vocabulary, u32) {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    tokens.extend(extra.iter().map(|t| t.to_vec()));
    let stop = tokens.len() as u32;
    tokens.push(b"<|end|>".to_vec());
    tokens.push(b"<|pad|>".to_vec());
    let special = [stop, stop + 1].into_iter().collect();
    (Vocabulary::new(tokens, special), stop)
}

fn commit_text(c: &mut JsonSchemaConstraint, vocab: &Vocabulary, text: &[u8], rows: usize) {
    // Greedy longest-match over the vocabulary, checking each id against the mask.
    let mut i = 0;
    while i < text.len() {
        let id = (0..vocab.len() as u32)
            .filter(|&id| {
                vocab
                    .bytes(id)
                    .is_some_and(|b| !b.is_empty() && text[i..].starts_with(b))
            })
            .max_by_key(|&id| vocab.bytes(id).map_or(0, <[u8]>::len))
            .unwrap();
        assert!(c.allowed_tokens(rows).unwrap().contains(&id), "{id} masked");
        c.commit(id, "").unwrap();
        i += vocab.bytes(id).unwrap().len();
    }
}

#[test]
fn complete_document_allows_only_stop_tokens() {
    let (vocab, stop) = byte_vocabulary(&[b"true", b"{\""]);
    let schema = json!({"type": "object", "properties": {"a": {"type": "boolean"}},
                        "required": ["a"], "additionalProperties": false});
    let rows = vocab.len() + 30;
    let mut c =
        JsonSchemaConstraint::new(&schema, &vocab, &[stop], ConstraintStart::Immediately).unwrap();
    // Only `{` (byte or the `{"` token) can start; nothing past the table, no special id.
    let first = c.allowed_tokens(rows).unwrap();
    assert_eq!(first, [b'{' as u32, 257].into_iter().collect());
    // A token the mask forbids is refused and the constraint stays failed.
    let mut failed =
        JsonSchemaConstraint::new(&schema, &vocab, &[stop], ConstraintStart::Immediately).unwrap();
    assert!(failed.commit(b'x' as u32, "x").is_err());
    assert!(failed.commit(b'{' as u32, "{").is_err());
    assert!(failed.error().is_some());

    commit_text(&mut c, &vocab, b"{\"a\":tru", rows);
    assert!(!c.is_complete());
    assert!(
        c.commit(stop, "").is_err(),
        "stop before the end is refused"
    );
    let mut c =
        JsonSchemaConstraint::new(&schema, &vocab, &[stop], ConstraintStart::Immediately).unwrap();
    commit_text(&mut c, &vocab, b"{\"a\":true}", rows);
    assert!(c.is_complete());
    assert_eq!(c.json_text(), "{\"a\":true}");
    assert_eq!(
        c.allowed_tokens(rows).unwrap(),
        [stop].into_iter().collect()
    );
    c.commit(stop, "").unwrap();
    assert!(c.is_complete());
    // Compact form: 1 + 3 + 1 + 5 + 1 = 11 bytes at most.
    assert_eq!(c.max_json_bytes(), Some(2 + 3 + 1 + 5));
}

#[test]
fn number_literals_stop_at_the_length_cap() {
    let (vocab, stop) = byte_vocabulary(&[]);
    let schema = json!({"type": "object", "properties": {"x": {"type": "number"}},
                        "required": ["x"], "additionalProperties": false});
    let rows = vocab.len();
    let mut c =
        JsonSchemaConstraint::new(&schema, &vocab, &[stop], ConstraintStart::Immediately).unwrap();
    commit_text(&mut c, &vocab, b"{\"x\":1.", rows);
    // Keep writing '7' while allowed: the literal ends at exactly MAX_NUMBER_LEN bytes.
    let mut digits = 2;
    while c.allowed_tokens(rows).unwrap().contains(&(b'7' as u32)) {
        c.commit(b'7' as u32, "7").unwrap();
        digits += 1;
        assert!(digits <= MAX_NUMBER_LEN);
    }
    assert_eq!(digits, MAX_NUMBER_LEN);
    // Closing is still possible; an exponent is not (it would need more bytes).
    let allowed = c.allowed_tokens(rows).unwrap();
    assert!(allowed.contains(&(b'}' as u32)));
    assert!(!allowed.contains(&(b'e' as u32)));
    c.commit(b'}' as u32, "}").unwrap();
    assert!(c.is_complete());
    let v: Value = serde_json::from_str(&c.json_text()).unwrap();
    assert!((v["x"].as_f64().unwrap() - 1.777_777_777_777_777_7).abs() < 1e-12);
}

#[test]
fn marker_tokens_that_run_past_it_are_masked() {
    // "</t>" is the marker; "</t>{" would put a byte after it into the free part.
    let (vocab, stop) = byte_vocabulary(&[b"</t>{", b"</t>", b"/t>", b"ok <"]);
    let schema = json!({"type": "boolean"});
    let rows = vocab.len();
    let mut c = JsonSchemaConstraint::new(
        &schema,
        &vocab,
        &[stop],
        ConstraintStart::after_text("</t>", 100),
    )
    .unwrap();
    let (overshoot, whole, tail, lead) = (256, 257, 258, 259);
    let allowed = c.allowed_tokens(rows).unwrap();
    assert!(!allowed.contains(&overshoot) && allowed.contains(&whole));
    assert!(!allowed.contains(&stop), "no stop inside the reasoning");
    c.commit(lead, "ok <").unwrap();
    assert!(!c.is_active());
    c.commit(tail, "/t>").unwrap();
    assert!(
        c.is_active(),
        "the marker split over tokens switches the constraint on"
    );
    let allowed = c.allowed_tokens(rows).unwrap();
    assert_eq!(allowed, [b't' as u32, b'f' as u32].into_iter().collect());
    // A budget of 2 forces the marker's tokens after two free ones.
    let mut c = JsonSchemaConstraint::new(
        &schema,
        &vocab,
        &[stop],
        ConstraintStart::after_text("</t>", 2),
    )
    .unwrap();
    c.commit(b'a' as u32, "a").unwrap();
    c.commit(b'<' as u32, "<").unwrap();
    assert_eq!(
        c.allowed_tokens(rows).unwrap(),
        [whole].into_iter().collect()
    );
    c.commit(whole, "</t>").unwrap();
    assert!(c.is_active());
    assert_eq!(c.max_tokens(), Some(2 + 1 + 5 + 1));
}

#[test]
fn bad_schemas_and_arguments_are_errors() {
    let (vocab, stop) = byte_vocabulary(&[]);
    let start = || ConstraintStart::Immediately;
    let err = |r: surveil_models::Result<JsonSchemaConstraint>| r.unwrap_err().to_string();
    assert!(err(JsonSchemaConstraint::new(
        &json!(true),
        &vocab,
        &[stop],
        start()
    ))
    .contains("must be an object"));
    assert!(err(JsonSchemaConstraint::new(
        &json!({"type": "string"}),
        &vocab,
        &[],
        start()
    ))
    .contains("stop token"));
    assert!(err(JsonSchemaConstraint::new(
        &json!({"type": "string"}),
        &vocab,
        &[9999],
        start()
    ))
    .contains("outside the vocabulary"));
    let unsat = json!({"type": "integer", "minimum": 5, "maximum": 1});
    assert!(
        err(JsonSchemaConstraint::new(&unsat, &vocab, &[stop], start())).contains("cannot compile")
    );
    // Local references compile (the bound does not follow them).
    let with_ref = json!({"$defs": {"flag": {"type": "boolean"}},
                          "type": "object", "properties": {"f": {"$ref": "#/$defs/flag"}},
                          "required": ["f"], "additionalProperties": false});
    let c = JsonSchemaConstraint::new(&with_ref, &vocab, &[stop], start()).unwrap();
    assert_eq!(c.max_json_bytes(), None);
    // Unbounded schemas compile but have no length bound.
    let c =
        JsonSchemaConstraint::new(&json!({"type": "string"}), &vocab, &[stop], start()).unwrap();
    assert_eq!(c.max_tokens(), None);
}

#[test]
fn generation_hooks_mask_and_commit() {
    use std::ops::ControlFlow;
    use surveil_models::vlm::GenerationHooks;

    let (vocab, stop) = byte_vocabulary(&[]);
    let schema = json!({"type": "boolean"});
    let mut c =
        JsonSchemaConstraint::new(&schema, &vocab, &[stop], ConstraintStart::Immediately).unwrap();
    let hooks: &mut dyn GenerationHooks = &mut c;
    let mut logits = vec![0.0; vocab.len() + 4];
    hooks.mask_logits(&mut logits).unwrap();
    let allowed: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] == 0.0).collect();
    assert_eq!(allowed, vec![b'f' as usize, b't' as usize]);
    for b in b"fals" {
        assert_eq!(hooks.on_token(*b as u32, ""), ControlFlow::Continue(()));
    }
    // A refused token stops generation; the error is kept and fails the next mask.
    assert_eq!(hooks.on_token(b'x' as u32, "x"), ControlFlow::Break(()));
    assert!(hooks.mask_logits(&mut logits).is_err());
    assert!(c.error().unwrap().contains("rejected"));
}

#[test]
fn a_token_budget_closes_the_document_in_time() {
    let Some(q) = qwen() else { return };
    let schema = verdict_schema();
    // A model that keeps writing one long word, as random weights do: the strings would run
    // to their maxLength (hundreds of tokens) without the budget.
    let word = q.tokenizer.token_to_id("Ġgovernments").unwrap() as usize;
    for budget in [64usize, 128] {
        for seed in 0..8u64 {
            let mut c =
                JsonSchemaConstraint::new(&schema, &q.vocab, &q.stop, ConstraintStart::Immediately)
                    .unwrap()
                    .with_token_budget(budget);
            let run = generate(&mut c, QWEN_VOCAB_ROWS, q.vocab.len(), seed, |_, l| {
                l[word] += 30.0;
            });
            assert!(q.stop.contains(&run.stopped_by));
            let text = c.json_text();
            let verdict: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("budget {budget}, seed {seed}: {e}: {text}"));
            check_verdict(&verdict).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
            assert!(
                run.steps <= budget,
                "budget {budget}, seed {seed}: {} steps: {text}",
                run.steps
            );
        }
    }
    // Without a budget the same model writes far longer.
    let mut c = JsonSchemaConstraint::new(&schema, &q.vocab, &q.stop, ConstraintStart::Immediately)
        .unwrap();
    let run = generate(&mut c, QWEN_VOCAB_ROWS, q.vocab.len(), 0, |_, l| {
        l[word] += 30.0;
    });
    assert!(run.steps > 64, "{} steps", run.steps);
}
