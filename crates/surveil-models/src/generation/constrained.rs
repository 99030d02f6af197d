//! JSON-Schema-constrained decoding: at every step of generation, the tokens that cannot extend
//! the reply towards a JSON document valid for a schema are forbidden, so every reply parses —
//! even from a model with random weights, whose unconstrained output is noise.
//!
//! The grammar engine is [`llguidance`] (Microsoft's structured-generation library, the one
//! behind Guidance and used by serving engines such as vLLM and llama.cpp): the schema is
//! compiled to a grammar, the vocabulary to a byte trie ([`llguidance::toktrie`]), and each
//! step's token mask is computed by walking the trie against the grammar's lexer and Earley
//! parser. Building the trie and the lexer's token slices for a 150k-token vocabulary takes
//! a while, so it happens once per vocabulary: [`ConstraintVocabulary::shared`] keeps it in a
//! process-wide cache and every [`JsonSchemaConstraint`] over that vocabulary reuses it.
//!
//! What this module adds to llguidance:
//! - the output form is fixed to compact JSON (`,` and `:` separators, no whitespace between
//!   tokens, no `\uXXXX` escapes in strings), so the length of a reply is bounded when the
//!   schema bounds its strings (`maxLength`), arrays (`maxItems`) and objects
//!   (`additionalProperties: false`): see [`JsonSchemaConstraint::max_tokens`];
//! - number literals are capped at [`MAX_NUMBER_LEN`] bytes (JSON Schema has no keyword that
//!   bounds the digits of a number, and a degenerate model can write `0.99999…` forever);
//! - the caller's stop tokens: allowed exactly when the JSON document is complete, then the
//!   only tokens allowed;
//! - thinking models ([`ConstraintStart::AfterText`]): reasoning before a text marker is free,
//!   the constraint switches on after it, and the marker is forced once the reasoning reaches
//!   its token budget.
//!
//! Not here: the generation loop ([`crate::generation`]), splitting a reply into reasoning and
//! answer ([`crate::generation::thinking`]), parsing and validating the verdict (the orchestrator).

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Vocabulary;
use crate::vlm::GenerationHooks;
use crate::{ModelError, Result};

/// Longest JSON number literal the constraint lets a model write, in bytes. 24 bytes hold any
/// `f64` in its shortest round-trip form (`-1.2345678901234567e-308`).
pub const MAX_NUMBER_LEN: usize = 24;

/// Once a number literal is longer than `MAX_NUMBER_LEN - NUMBER_RESERVE` bytes, it may only
/// grow by tokens after which it ends in a digit (a complete JSON number), so that the range
/// check of the grammar has bytes left to close it.
const NUMBER_RESERVE: usize = 8;

/// How many distinct vocabularies [`ConstraintVocabulary::shared`] keeps (oldest dropped).
const SHARED_CAPACITY: usize = 4;

/// Worst-case bytes of one character of a JSON string under the constraint: a 4-byte UTF-8
/// sequence (escapes such as `\n` are 2 bytes; `\uXXXX` escapes are not allowed).
const MAX_STRING_CHAR_BYTES: usize = 4;

/// Text of the trie's extra end-of-grammar token (id = vocabulary length; never a model id).
const GRAMMAR_END: &[u8] = b"\xFF<|json_end|>";

/// A byte that can occur in a JSON number literal.
fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
}

fn constraint_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Constraint(e.to_string())
}

/// Per-token facts about number literals, for the [`MAX_NUMBER_LEN`] cap.
#[derive(Debug, Clone, Copy, Default)]
struct NumberShape {
    /// Length of the run of number bytes the token starts with (saturating at 255).
    lead: u8,
    /// The whole token is that run.
    lead_is_whole: bool,
    /// The run ends with a digit.
    lead_ends_digit: bool,
    /// A later run inside the token is longer than `MAX_NUMBER_LEN - NUMBER_RESERVE`.
    long_inner_run: bool,
}

impl NumberShape {
    fn of(bytes: &[u8]) -> Self {
        let lead = bytes.iter().take_while(|&&b| is_number_byte(b)).count();
        let long_inner_run = bytes
            .get(lead..)
            .unwrap_or_default()
            .split(|&b| !is_number_byte(b))
            .any(|run| run.len() > MAX_NUMBER_LEN - NUMBER_RESERVE);
        Self {
            lead: lead.min(255) as u8,
            lead_is_whole: lead == bytes.len(),
            lead_ends_digit: lead > 0 && bytes[lead - 1].is_ascii_digit(),
            long_inner_run,
        }
    }
}

/// The token trie and grammar factory of one vocabulary: built once, shared by every
/// constraint over that vocabulary (see [`ConstraintVocabulary::shared`]).
///
/// The trie holds every regular token by its bytes, special tokens behind llguidance's `0xFF`
/// marker (so no JSON text can ever select them), no entry for ids without a token, and one
/// extra id, `len()`, that the grammar allows when the document is complete and that the
/// constraint maps to the caller's stop tokens.
pub struct ConstraintVocabulary {
    vocab: Vocabulary,
    factory: ParserFactory,
    /// Regular, non-empty tokens: what free text (reasoning) may use.
    regular: Vec<bool>,
    numbers: Vec<NumberShape>,
    /// Tokens made only of JSON punctuation and digits (`"`, `",`, `]}`, `0`, ...): what the
    /// closing mode prefers, since they end strings, arrays and objects rather than fill them.
    closers: Vec<bool>,
}

/// Tokens kept in reserve to close the document: when fewer than this many remain of the
/// budget set with [`JsonSchemaConstraint::with_token_budget`], only closing tokens are
/// allowed where the grammar leaves a choice, and the longest allowed tokens where it forces
/// text. The longest forced tail of the verdict schema (every key with an empty or shortest
/// value) is under 48 tokens of a byte-level BPE vocabulary written that way.
pub const CLOSING_RESERVE: usize = 48;

fn is_closer(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|b| {
            matches!(
                b,
                b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'0'..=b'9' | b'.'
            )
        })
}

impl std::fmt::Debug for ConstraintVocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocabulary")
            .field("tokens", &self.vocab.len())
            .finish_non_exhaustive()
    }
}

impl ConstraintVocabulary {
    /// Build the trie and the grammar factory of `vocab` (not cached: prefer
    /// [`ConstraintVocabulary::shared`]). Takes about a second for a 150k-token vocabulary.
    ///
    /// Errors: [`ModelError::Constraint`] for an empty vocabulary or one llguidance rejects.
    pub fn build(vocab: &Vocabulary) -> Result<Self> {
        if vocab.is_empty() {
            return Err(constraint_err("the vocabulary is empty"));
        }
        let n = vocab.len();
        let grammar_end = u32::try_from(n).map_err(constraint_err)?;
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(n + 1);
        let mut regular = Vec::with_capacity(n);
        let mut numbers = Vec::with_capacity(n);
        let mut closers = Vec::with_capacity(n);
        for id in 0..grammar_end {
            let entry = vocab.entry(id).unwrap_or_default();
            if vocab.is_special(id) {
                let mut word = Vec::new();
                if !entry.is_empty() {
                    word.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    word.extend_from_slice(entry);
                }
                words.push(word);
                regular.push(false);
                numbers.push(NumberShape::default());
                closers.push(false);
            } else {
                words.push(entry.to_vec());
                regular.push(!entry.is_empty());
                numbers.push(NumberShape::of(entry));
                closers.push(is_closer(entry));
            }
        }
        words.push(GRAMMAR_END.to_vec());
        let info = TokRxInfo::new(grammar_end + 1, grammar_end);
        // toktrie asserts on malformed input (e.g. more ids than its node format holds):
        // report that as an error rather than unwinding through the caller.
        let factory = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
            ParserFactory::new_simple(&env)
        }))
        .map_err(|_| constraint_err("llguidance could not build the token trie"))?
        .map_err(constraint_err)?;
        let mut factory = factory;
        factory.quiet();
        Ok(Self {
            vocab: vocab.clone(),
            factory,
            regular,
            numbers,
            closers,
        })
    }

    /// The shared trie of `vocab`: built on first use, then taken from a process-wide cache
    /// of weak references (up to four vocabularies; a hit costs one comparison of the token
    /// tables) for as long as some caller holds it. Hold the returned `Arc` for as long as the
    /// model lives; dropping the last one frees the trie.
    ///
    /// Errors: as [`ConstraintVocabulary::build`].
    pub fn shared(vocab: &Vocabulary) -> Result<Arc<Self>> {
        // Weak entries: the cache never keeps a trie alive by itself, so the memory goes
        // with the last user (the model's owner drops it when the model is unloaded).
        static SHARED: OnceLock<Mutex<Vec<Weak<ConstraintVocabulary>>>> = OnceLock::new();
        let cache = SHARED.get_or_init(Default::default);
        // A panic while the lock was held cannot leave the list half-updated (push and
        // retain are the only writes), so a poisoned lock is still usable.
        let mut cached = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cached.retain(|w| w.strong_count() > 0);
        if let Some(hit) = cached
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.same_vocabulary(vocab))
        {
            return Ok(hit);
        }
        let started = std::time::Instant::now();
        let built = Arc::new(Self::build(vocab)?);
        tracing::debug!(
            tokens = vocab.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built the token trie for constrained decoding"
        );
        if cached.len() >= SHARED_CAPACITY {
            cached.remove(0);
        }
        cached.push(Arc::downgrade(&built));
        Ok(built)
    }

    fn same_vocabulary(&self, vocab: &Vocabulary) -> bool {
        self.vocab.len() == vocab.len()
            && self.vocab.entries() == vocab.entries()
            && (0..vocab.len() as u32).all(|id| self.vocab.is_special(id) == vocab.is_special(id))
    }

    /// Number of token ids of the vocabulary (ids at or past this are always forbidden).
    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// True for an empty vocabulary (never: [`ConstraintVocabulary::build`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// The vocabulary the trie was built from.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    fn grammar_end(&self) -> u32 {
        self.vocab.len() as u32
    }
}

/// When the constraint takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintStart {
    /// From the first generated token: the reply is the JSON document.
    Immediately,
    /// After the generated text contains `marker` (a thinking model's end of reasoning, e.g.
    /// Kimi-VL's `◁/think▷`): until then, any regular token is allowed (never a special or
    /// stop token, and never a token that would run past the end of the marker, so the JSON
    /// starts exactly after it). After `max_reasoning_tokens` reasoning tokens the marker is
    /// forced, token by token.
    AfterText {
        /// The text that ends the free part.
        marker: String,
        /// Reasoning tokens allowed before the marker is forced.
        max_reasoning_tokens: usize,
    },
}

impl ConstraintStart {
    /// [`ConstraintStart::AfterText`] with `marker` and a reasoning budget in tokens.
    pub fn after_text(marker: impl Into<String>, max_reasoning_tokens: usize) -> Self {
        Self::AfterText {
            marker: marker.into(),
            max_reasoning_tokens,
        }
    }
}

/// Where the constraint stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Free text before the marker.
    Reasoning,
    /// The marker is being forced: the ids still to emit, in order.
    ForcingMarker(Vec<u32>),
    /// The JSON document is being generated.
    Json,
    /// A stop token was committed after a complete document.
    Stopped,
}

/// The free-text part of [`ConstraintStart::AfterText`]: the marker and a matcher for it.
#[derive(Debug, Clone)]
struct MarkerWatch {
    marker: Vec<u8>,
    /// Knuth–Morris–Pratt failure function of `marker`.
    failure: Vec<usize>,
    /// Bytes of `marker` matched by the end of the text so far.
    matched: usize,
    /// Regular ids whose bytes contain the marker's last byte (only they can complete it).
    completers: Vec<u32>,
    /// The marker's tokens (greedy longest-match over the trie), forced at the budget.
    forced: Vec<u32>,
    max_reasoning_tokens: usize,
    reasoning_tokens: usize,
}

impl MarkerWatch {
    fn new(
        marker: &str,
        max_reasoning_tokens: usize,
        shared: &ConstraintVocabulary,
    ) -> Result<Self> {
        let marker = marker.as_bytes().to_vec();
        let Some(&last) = marker.last() else {
            return Err(constraint_err("the start marker is empty"));
        };
        let mut failure = vec![0; marker.len()];
        let mut k = 0;
        for i in 1..marker.len() {
            while k > 0 && marker[i] != marker[k] {
                k = failure[k - 1];
            }
            if marker[i] == marker[k] {
                k += 1;
            }
            failure[i] = k;
        }
        let vocab = &shared.vocab;
        let completers = (0..vocab.len() as u32)
            .filter(|&id| shared.regular[id as usize])
            .filter(|&id| vocab.bytes(id).is_some_and(|b| b.contains(&last)))
            .collect();
        let forced = shared.factory.tok_env().tok_trie().greedy_tokenize(&marker);
        let spelled: Vec<u8> = forced
            .iter()
            .flat_map(|&id| vocab.bytes(id).unwrap_or_default().iter().copied())
            .collect();
        if spelled != marker
            || forced
                .iter()
                .any(|&id| shared.regular.get(id as usize) != Some(&true))
        {
            return Err(constraint_err(format!(
                "the marker {:?} cannot be spelled with regular tokens of the vocabulary",
                String::from_utf8_lossy(&marker)
            )));
        }
        Ok(Self {
            marker,
            failure,
            matched: 0,
            completers,
            forced,
            max_reasoning_tokens,
            reasoning_tokens: 0,
        })
    }

    /// Feed `bytes` from state `matched`; the index of the byte that completes the marker,
    /// if one does, and the state after the bytes otherwise.
    fn scan(&self, mut matched: usize, bytes: &[u8]) -> std::result::Result<usize, usize> {
        for (i, &b) in bytes.iter().enumerate() {
            while matched > 0 && self.marker[matched] != b {
                matched = self.failure[matched - 1];
            }
            if self.marker[matched] == b {
                matched += 1;
            }
            if matched == self.marker.len() {
                return Err(i);
            }
        }
        Ok(matched)
    }
}

/// Lexical state of the JSON text generated so far, for the number-length cap.
#[derive(Debug, Clone, Copy, Default)]
struct JsonScan {
    in_string: bool,
    escaped: bool,
    /// Length of the run of number bytes at the end of the text (outside strings).
    number_run: usize,
}

impl JsonScan {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else if b == b'"' {
                self.in_string = true;
                self.number_run = 0;
            } else if is_number_byte(b) {
                self.number_run += 1;
            } else {
                self.number_run = 0;
            }
        }
    }

    /// Whether appending a token of this shape keeps every number literal within
    /// [`MAX_NUMBER_LEN`] and leaves room to finish it.
    fn allows(&self, shape: NumberShape) -> bool {
        if shape.long_inner_run {
            return false;
        }
        if self.in_string || shape.lead == 0 {
            return true;
        }
        let len = self.number_run + shape.lead as usize;
        len <= MAX_NUMBER_LEN
            && (!shape.lead_is_whole
                || len <= MAX_NUMBER_LEN - NUMBER_RESERVE
                || shape.lead_ends_digit)
    }
}

/// A JSON Schema constraint over one generation: [`JsonSchemaConstraint::mask`] before each
/// sampling step, [`JsonSchemaConstraint::commit`] with the chosen token after it.
///
/// The document is written in compact form (no whitespace, `\uXXXX` escapes not allowed) and
/// its properties in the order of the schema's `properties`. An `x-guidance` key of the schema
/// (llguidance's options) is replaced by these settings.
pub struct JsonSchemaConstraint {
    shared: Arc<ConstraintVocabulary>,
    matcher: Matcher,
    stop_tokens: Vec<u32>,
    phase: Phase,
    marker: Option<MarkerWatch>,
    scan: JsonScan,
    json: Vec<u8>,
    max_json_bytes: Option<usize>,
    error: Option<String>,
    /// Tokens the whole generation may use (reasoning, marker and document), if bounded.
    token_budget: Option<usize>,
    /// Tokens committed so far, every phase.
    committed: usize,
}

impl std::fmt::Debug for JsonSchemaConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchemaConstraint")
            .field("phase", &self.phase)
            .field("json", &String::from_utf8_lossy(&self.json))
            .finish_non_exhaustive()
    }
}

impl JsonSchemaConstraint {
    /// A constraint to `schema` (JSON Schema, the subset llguidance supports: types, `enum`,
    /// `const`, `properties`/`required`/`additionalProperties`, `items`/`minItems`/`maxItems`,
    /// `minLength`/`maxLength`/`pattern`/`format`, `minimum`/`maximum`, `anyOf`/`oneOf`,
    /// `$ref` to `$defs`) over `vocab`, ending at any of `stop_tokens` (e.g. `<|im_end|>`).
    /// The vocabulary's trie comes from [`ConstraintVocabulary::shared`].
    ///
    /// Errors: [`ModelError::Constraint`] for a schema that is not an object or that
    /// llguidance cannot compile (unsupported keyword, unsatisfiable), no stop token, a stop
    /// token outside the vocabulary, or a marker the vocabulary cannot spell.
    pub fn new(
        schema: &Value,
        vocab: &Vocabulary,
        stop_tokens: &[u32],
        start: ConstraintStart,
    ) -> Result<Self> {
        Self::with_vocabulary(
            schema,
            ConstraintVocabulary::shared(vocab)?,
            stop_tokens,
            start,
        )
    }

    /// As [`JsonSchemaConstraint::new`], over an already built [`ConstraintVocabulary`].
    pub fn with_vocabulary(
        schema: &Value,
        shared: Arc<ConstraintVocabulary>,
        stop_tokens: &[u32],
        start: ConstraintStart,
    ) -> Result<Self> {
        let Value::Object(fields) = schema else {
            return Err(constraint_err("the JSON schema must be an object"));
        };
        if stop_tokens.is_empty() {
            return Err(constraint_err("at least one stop token is needed"));
        }
        if let Some(bad) = stop_tokens.iter().find(|&&id| id as usize >= shared.len()) {
            return Err(constraint_err(format!(
                "stop token {bad} is outside the vocabulary ({} ids)",
                shared.len()
            )));
        }
        let mut schema = fields.clone();
        schema.insert(
            "x-guidance".into(),
            serde_json::json!({
                "item_separator": ",",
                "key_separator": ":",
                "whitespace_flexible": false,
                "json_allowed_escapes": "nrbtf\\\"",
            }),
        );
        let grammar = TopLevelGrammar::from_json_schema(Value::Object(schema));
        let parser =
            std::panic::catch_unwind(AssertUnwindSafe(|| shared.factory.create_parser(grammar)))
                .map_err(|_| constraint_err("llguidance failed while compiling the schema"))?
                .map_err(|e| constraint_err(format!("cannot compile the JSON schema: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(constraint_err(format!(
                "cannot compile the JSON schema: {e}"
            )));
        }
        let (phase, marker) = match start {
            ConstraintStart::Immediately => (Phase::Json, None),
            ConstraintStart::AfterText {
                marker,
                max_reasoning_tokens,
            } => {
                let watch = MarkerWatch::new(&marker, max_reasoning_tokens, &shared)?;
                let phase = if max_reasoning_tokens == 0 {
                    Phase::ForcingMarker(watch.forced.clone())
                } else {
                    Phase::Reasoning
                };
                (phase, Some(watch))
            }
        };
        let mut stop_tokens = stop_tokens.to_vec();
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        Ok(Self {
            max_json_bytes: max_json_bytes(fields),
            shared,
            matcher,
            stop_tokens,
            phase,
            marker,
            scan: JsonScan::default(),
            json: Vec::new(),
            error: None,
            token_budget: None,
            committed: 0,
        })
    }

    /// Bound the generation to `max_new_tokens` tokens (reasoning included): once fewer than
    /// [`CLOSING_RESERVE`] remain, wherever the grammar leaves a choice only closing tokens
    /// (JSON punctuation and digits) are allowed, and the stop tokens as soon as the document
    /// is complete, so the document ends within the budget instead of being cut off. With a
    /// budget below the reserve, closing starts with the document.
    pub fn with_token_budget(mut self, max_new_tokens: usize) -> Self {
        self.token_budget = Some(max_new_tokens);
        self
    }

    /// Whether the closing mode is on (see [`JsonSchemaConstraint::with_token_budget`]).
    pub fn is_closing(&self) -> bool {
        self.token_budget
            .is_some_and(|b| b.saturating_sub(self.committed) <= CLOSING_RESERVE)
    }

    /// Set the logits of every forbidden token to `f32::NEG_INFINITY`. `logits` has one entry
    /// per row of the model's output (ids at or past the vocabulary's length are always
    /// forbidden). When the document is complete only the stop tokens stay.
    ///
    /// Errors: [`ModelError::Constraint`] when the grammar engine fails or no token at all is
    /// allowed (a dead end, which the constraint is built never to reach).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let rows = logits.len();
        let n = self.shared.len().min(rows);
        if let Some(rest) = logits.get_mut(n..) {
            rest.fill(f32::NEG_INFINITY);
        }
        let logits = &mut logits[..n];
        let allowed = match &self.phase {
            Phase::Stopped => self.mask_stop_only(logits),
            Phase::ForcingMarker(ids) => {
                let next = ids.first().copied();
                let mut count = 0;
                for (id, l) in logits.iter_mut().enumerate() {
                    if Some(id as u32) == next {
                        count += 1;
                    } else {
                        *l = f32::NEG_INFINITY;
                    }
                }
                count
            }
            Phase::Reasoning => self.mask_reasoning(logits),
            Phase::Json => self.mask_json(logits)?,
        };
        if allowed == 0 {
            return Err(constraint_err(format!(
                "no token is allowed after {:?} (the model's vocabulary has {} rows, the \
                 tokenizer {} ids)",
                String::from_utf8_lossy(&self.json),
                rows,
                self.shared.len()
            )));
        }
        Ok(())
    }

    fn mask_stop_only(&self, logits: &mut [f32]) -> usize {
        let mut count = 0;
        for (id, l) in logits.iter_mut().enumerate() {
            if self.stop_tokens.binary_search(&(id as u32)).is_ok() {
                count += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        count
    }

    fn mask_reasoning(&self, logits: &mut [f32]) -> usize {
        let regular = &self.shared.regular;
        let mut count = 0;
        for (l, &ok) in logits.iter_mut().zip(regular) {
            if ok {
                count += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if let Some(watch) = &self.marker {
            let vocab = &self.shared.vocab;
            for &id in &watch.completers {
                let bytes = vocab.bytes(id).unwrap_or_default();
                let overshoots =
                    matches!(watch.scan(watch.matched, bytes), Err(i) if i + 1 < bytes.len());
                if overshoots {
                    // Completers are regular tokens, so this one was counted above.
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                        count -= 1;
                    }
                }
            }
        }
        count
    }

    fn mask_json(&mut self, logits: &mut [f32]) -> Result<usize> {
        let set = self.matcher.compute_mask_or_eos().map_err(constraint_err)?;
        let end_allowed = set.is_allowed(self.shared.grammar_end());
        let stops: Vec<(usize, f32)> = self
            .stop_tokens
            .iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
            .collect();
        let numbers = &self.shared.numbers;
        let within_cap = |id: usize| numbers.get(id).is_some_and(|&s| self.scan.allows(s));
        let mut use_cap = true;
        if !end_allowed && !(0..logits.len()).any(|id| set.is_allowed(id as u32) && within_cap(id))
        {
            // The number cap would close every way on (a range that needs more digits than
            // the cap leaves): give up the cap rather than the document.
            tracing::warn!(
                json = %String::from_utf8_lossy(&self.json),
                "number length cap lifted: no other token continues the document"
            );
            use_cap = false;
        }
        let allowed = |id: usize| set.is_allowed(id as u32) && (!use_cap || within_cap(id));
        let closing = self.is_closing();
        if closing && end_allowed {
            // Out of budget and the document is complete: stop now.
            logits.fill(f32::NEG_INFINITY);
            let mut kept = 0;
            for (id, l) in stops {
                logits[id] = l;
                kept += 1;
            }
            return Ok(kept);
        }
        // Inside a string, punctuation is text: only a token that starts with the closing quote
        // ends it. Outside, punctuation and digits are the structure itself.
        let in_string = self.scan.in_string;
        let (closers, vocab) = (&self.shared.closers, &self.shared.vocab);
        let closes = |id: usize| {
            closers.get(id).copied().unwrap_or(false)
                && (!in_string || vocab.bytes(id as u32).and_then(|b| b.first()) == Some(&b'"'))
        };
        let prefer_closers = closing && (0..logits.len()).any(|id| allowed(id) && closes(id));
        // Where nothing closes (a forced key, an enum value), the longest allowed tokens
        // write the required text in the fewest steps.
        let token_len = |id: usize| vocab.bytes(id as u32).map_or(0, <[u8]>::len);
        let longest = if closing && !prefer_closers {
            (0..logits.len())
                .filter(|&id| allowed(id))
                .map(token_len)
                .max()
        } else {
            None
        };
        let mut kept = 0;
        for (id, l) in logits.iter_mut().enumerate() {
            let keep = allowed(id)
                && (!prefer_closers || closes(id))
                && longest.is_none_or(|n| token_len(id) == n);
            if keep {
                kept += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if end_allowed {
            for (id, l) in stops {
                logits[id] = l;
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// Record the token chosen after the last [`JsonSchemaConstraint::mask`]. `text` (the
    /// decoded piece) is not used: the constraint works on the vocabulary's bytes.
    ///
    /// Errors: [`ModelError::Constraint`] for a token the last mask forbade (the constraint is
    /// then in an error state and every later call fails).
    pub fn commit(&mut self, token: u32, text: &str) -> Result<()> {
        let _ = text;
        if let Some(e) = &self.error {
            return Err(constraint_err(e));
        }
        let r = self.commit_inner(token);
        if let Err(e) = &r {
            self.error = Some(e.to_string());
        }
        r
    }

    fn commit_inner(&mut self, token: u32) -> Result<()> {
        self.committed += 1;
        let is_stop = self.stop_tokens.binary_search(&token).is_ok();
        match &mut self.phase {
            Phase::Stopped => {
                if is_stop {
                    Ok(())
                } else {
                    Err(constraint_err(format!(
                        "token {token} after the document ended"
                    )))
                }
            }
            Phase::ForcingMarker(ids) => {
                if ids.first() != Some(&token) {
                    return Err(constraint_err(format!(
                        "token {token} while the marker is forced (expected {:?})",
                        ids.first()
                    )));
                }
                ids.remove(0);
                if ids.is_empty() {
                    self.phase = Phase::Json;
                }
                Ok(())
            }
            Phase::Reasoning => {
                let Some(watch) = self.marker.as_mut() else {
                    return Err(constraint_err("reasoning without a marker"));
                };
                let bytes = match self.shared.regular.get(token as usize) {
                    Some(true) => self.shared.vocab.bytes(token).unwrap_or_default(),
                    _ => {
                        return Err(constraint_err(format!(
                            "token {token} is not a regular token (not allowed in reasoning)"
                        )))
                    }
                };
                watch.reasoning_tokens += 1;
                match watch.scan(watch.matched, bytes) {
                    Err(i) if i + 1 == bytes.len() => {
                        self.phase = Phase::Json;
                        return Ok(());
                    }
                    Err(_) => {
                        return Err(constraint_err(format!(
                            "token {token} runs past the end of the marker"
                        )))
                    }
                    Ok(matched) => watch.matched = matched,
                }
                if watch.reasoning_tokens >= watch.max_reasoning_tokens {
                    tracing::debug!(
                        tokens = watch.reasoning_tokens,
                        "reasoning budget spent: forcing the end marker"
                    );
                    self.phase = Phase::ForcingMarker(watch.forced.clone());
                }
                Ok(())
            }
            Phase::Json => {
                if is_stop {
                    let complete = self.matcher.is_accepting().map_err(constraint_err)?;
                    if !complete {
                        return Err(constraint_err(format!(
                            "stop token {token} before the document is complete: {:?}",
                            String::from_utf8_lossy(&self.json)
                        )));
                    }
                    self.phase = Phase::Stopped;
                    return Ok(());
                }
                self.matcher
                    .consume_token(token)
                    .map_err(|e| constraint_err(format!("token {token} rejected: {e}")))?;
                let bytes = self.shared.vocab.bytes(token).unwrap_or_default();
                self.scan.push(bytes);
                self.json.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// The JSON document is complete: nothing but a stop token may follow (also true once a
    /// stop token was committed).
    pub fn is_complete(&self) -> bool {
        match self.phase {
            Phase::Stopped => true,
            Phase::Json => self.matcher.is_stopped() && !self.matcher.is_error(),
            Phase::Reasoning | Phase::ForcingMarker(_) => false,
        }
    }

    /// The constraint is on (the marker, if any, has been generated).
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Json | Phase::Stopped)
    }

    /// The JSON text generated so far (the bytes of the tokens committed while active).
    pub fn json_text(&self) -> String {
        String::from_utf8_lossy(&self.json).into_owned()
    }

    /// Upper bound on the bytes of the JSON document, from the schema: `None` when the schema
    /// leaves the document unbounded (a string without `maxLength`, an array without
    /// `maxItems`, an object without `additionalProperties: false`, `$ref`, `allOf`, `not`).
    /// Strings count 4 bytes a character plus quotes, numbers [`MAX_NUMBER_LEN`], objects
    /// every property, enums their longest compact serialization.
    pub fn max_json_bytes(&self) -> Option<usize> {
        self.max_json_bytes
    }

    /// Upper bound on the tokens of the whole generation, stop token included: every token of
    /// the document carries at least one byte, so `max_json_bytes + 1`, plus for
    /// [`ConstraintStart::AfterText`] the reasoning budget and the marker's forced tokens.
    pub fn max_tokens(&self) -> Option<usize> {
        let reasoning = self
            .marker
            .as_ref()
            .map_or(0, |w| w.max_reasoning_tokens + w.forced.len());
        self.max_json_bytes.map(|b| b + 1 + reasoning)
    }
}

/// Upper bound on the compact serialization of any instance the constraint can produce for
/// `schema`, or `None` when unbounded (see [`JsonSchemaConstraint::max_json_bytes`]).
fn max_json_bytes(schema: &serde_json::Map<String, Value>) -> Option<usize> {
    let literal_len = |v: &Value| serde_json::to_string(v).ok().map(|s| s.len());
    if let Some(c) = schema.get("const") {
        return literal_len(c);
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        return options
            .iter()
            .map(literal_len)
            .try_fold(0, |m, l| Some(m.max(l?)));
    }
    if [
        "$ref",
        "allOf",
        "not",
        "if",
        "patternProperties",
        "prefixItems",
    ]
    .iter()
    .any(|k| schema.contains_key(*k))
    {
        return None;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            return branches.iter().try_fold(0, |m, b| match b {
                Value::Object(b) => Some(m.max(max_json_bytes(b)?)),
                Value::Bool(false) => Some(m),
                _ => None,
            });
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let usize_of = |key: &str| schema.get(key).and_then(Value::as_u64).map(|v| v as usize);
    types.iter().try_fold(0, |m, t| {
        let bound = match *t {
            "null" => 4,
            "boolean" => 5,
            "number" | "integer" => MAX_NUMBER_LEN,
            "string" => 2 + MAX_STRING_CHAR_BYTES * usize_of("maxLength")?,
            "array" => {
                let n = usize_of("maxItems")?;
                let item = match schema.get("items") {
                    Some(Value::Object(items)) => max_json_bytes(items)?,
                    _ if n == 0 => 0,
                    _ => return None,
                };
                2 + n * item + n.saturating_sub(1)
            }
            "object" => {
                if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return None;
                }
                let props = match schema.get("properties") {
                    Some(Value::Object(p)) => p,
                    None => return Some(m.max(2)),
                    _ => return None,
                };
                let mut total = 2 + props.len().saturating_sub(1);
                for (key, value) in props {
                    let Value::Object(value) = value else {
                        return None;
                    };
                    total += literal_len(&Value::String(key.clone()))? + 1 + max_json_bytes(value)?;
                }
                total
            }
            _ => return None,
        };
        Some(m.max(bound))
    })
}

/// The constraint as the generation loop's hooks: [`GenerationHooks::mask_logits`] is
/// [`JsonSchemaConstraint::mask`]; [`GenerationHooks::on_token`] commits the token and stops
/// generation (`Break`) if it was refused, the error then being in
/// [`JsonSchemaConstraint::error`].
impl GenerationHooks for JsonSchemaConstraint {
    fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(constraint_err(e));
        }
        self.mask(logits)
    }

    fn on_token(&mut self, token: u32, text: &str) -> ControlFlow<()> {
        match self.commit(token, text) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                tracing::warn!(token, error = %e, "constrained decoding refused a token");
                ControlFlow::Break(())
            }
        }
    }
}

impl JsonSchemaConstraint {
    /// The error that put the constraint out of action (a refused token), if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The stop tokens, sorted.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// Ids allowed at this step, as [`JsonSchemaConstraint::mask`] would leave them over
    /// `rows` logits (for tests and diagnostics; costs one mask computation).
    pub fn allowed_tokens(&mut self, rows: usize) -> Result<HashSet<u32>> {
        let mut logits = vec![0.0f32; rows];
        self.mask(&mut logits)?;
        Ok(logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(id, _)| id as u32)
            .collect())
    }
}
