//! Reasoning ("thinking") output of reasoning models: the reply starts with the reasoning
//! between two text markers, then the answer. Kimi-VL-A3B-Thinking writes
//! `◁think▷ … ◁/think▷ answer`; DeepSeek-R1-style models `<think> … </think> answer`.
//!
//! [`ThinkingStream`] splits a reply piece by piece as it is generated (a marker may arrive
//! split over several pieces; nothing that could still be part of a marker is emitted early);
//! [`split_thinking`] splits a whole reply the same way. The rules:
//!
//! - the reply opens with the open marker (after optional whitespace): what follows up to the
//!   close marker is reasoning, what follows the close marker is the answer;
//! - generation stops before the close marker: everything after the open marker is reasoning,
//!   the answer is empty and [`ThinkingSplit::reasoning_unfinished`] is set;
//! - the reply does not open with the open marker: all of it is answer (markers later in the
//!   text are kept as text).
//!
//! The markers are plain text in the model's vocabulary (not special tokens), so they are
//! matched on decoded text. Not here: decoding ids to text (`crate::tokenizer::TokenStream`).

/// The text markers that open and close the reasoning part of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkingMarkers {
    /// Marker before the reasoning.
    pub open: &'static str,
    /// Marker after the reasoning.
    pub close: &'static str,
}

impl ThinkingMarkers {
    /// Kimi-VL-A3B-Thinking(-2506): `◁think▷` … `◁/think▷` (the model card's output format).
    pub const KIMI: Self = Self {
        open: "◁think▷",
        close: "◁/think▷",
    };
    /// DeepSeek-R1 / QwQ style: `<think>` … `</think>`.
    pub const THINK_TAGS: Self = Self {
        open: "<think>",
        close: "</think>",
    };
}

/// A reply split into reasoning and answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThinkingSplit {
    /// The reasoning, markers and surrounding whitespace removed (empty when there is none).
    pub reasoning: String,
    /// The answer, surrounding whitespace removed (empty when generation stopped inside the
    /// reasoning).
    pub answer: String,
    /// The reply opened a reasoning part that was never closed (generation stopped, e.g. at
    /// the token limit, before the close marker).
    pub reasoning_unfinished: bool,
}

/// New text of each part produced by one [`ThinkingStream::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThinkingDelta {
    /// New reasoning text.
    pub reasoning: String,
    /// New answer text.
    pub answer: String,
}

impl ThinkingDelta {
    /// True when the push produced no text.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.answer.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Not yet known whether the reply opens with the open marker.
    Undecided,
    /// Inside the reasoning.
    Reasoning,
    /// After the reasoning, or a reply without reasoning.
    Answer,
}

/// Splits a reply into reasoning and answer while it is generated.
///
/// Each [`push`](Self::push) returns the text that became final in each part. Leading
/// whitespace of either part is not emitted; trailing whitespace is, and
/// [`finish`](Self::finish) trims it. The concatenated deltas are a prefix of the final parts:
/// `finish` adds only text held back as a possible marker (a reply that ends in `◁/thi`).
#[derive(Debug, Clone)]
pub struct ThinkingStream {
    markers: ThinkingMarkers,
    part: Part,
    /// Text received but not yet emitted: a possible marker prefix, or leading whitespace.
    held: String,
    reasoning: String,
    answer: String,
}

impl ThinkingStream {
    /// A splitter for replies that use `markers`.
    pub fn new(markers: ThinkingMarkers) -> Self {
        Self {
            markers,
            part: Part::Undecided,
            held: String::new(),
            reasoning: String::new(),
            answer: String::new(),
        }
    }

    /// Add the next piece of decoded text; returns what became final.
    pub fn push(&mut self, piece: &str) -> ThinkingDelta {
        self.held.push_str(piece);
        let mut delta = ThinkingDelta::default();
        loop {
            match self.part {
                Part::Undecided => {
                    let text = self.held.trim_start();
                    if text.len() < self.markers.open.len() && self.markers.open.starts_with(text) {
                        // Only whitespace or a prefix of the open marker so far: wait.
                        return delta;
                    }
                    if let Some(rest) = text.strip_prefix(self.markers.open) {
                        self.held = rest.to_string();
                        self.part = Part::Reasoning;
                    } else {
                        self.held = text.to_string();
                        self.part = Part::Answer;
                    }
                }
                Part::Reasoning => {
                    if self.reasoning.is_empty() {
                        let trimmed = self.held.trim_start();
                        if trimmed.len() != self.held.len() {
                            self.held = trimmed.to_string();
                        }
                    }
                    if let Some(at) = self.held.find(self.markers.close) {
                        let after = self.held.split_off(at + self.markers.close.len());
                        self.held.truncate(at);
                        let ready = std::mem::replace(&mut self.held, after);
                        self.emit_reasoning(&ready, &mut delta);
                        self.part = Part::Answer;
                        continue;
                    }
                    let keep = partial_marker_suffix(&self.held, self.markers.close);
                    let rest = self.held.split_off(self.held.len() - keep);
                    let ready = std::mem::replace(&mut self.held, rest);
                    self.emit_reasoning(&ready, &mut delta);
                    return delta;
                }
                Part::Answer => {
                    let text = std::mem::take(&mut self.held);
                    let text = if self.answer.is_empty() {
                        text.trim_start()
                    } else {
                        text.as_str()
                    };
                    self.answer.push_str(text);
                    delta.answer.push_str(text);
                    return delta;
                }
            }
        }
    }

    fn emit_reasoning(&mut self, text: &str, delta: &mut ThinkingDelta) {
        self.reasoning.push_str(text);
        delta.reasoning.push_str(text);
    }

    /// Whether the reply is inside its reasoning part (opened, not yet closed).
    pub fn in_reasoning(&self) -> bool {
        self.part == Part::Reasoning
    }

    /// End of the reply: flush what is held and return both parts.
    pub fn finish(mut self) -> ThinkingSplit {
        let held = std::mem::take(&mut self.held);
        let reasoning_unfinished = match self.part {
            // A bare prefix of the open marker is text, not a marker.
            Part::Undecided | Part::Answer => {
                let text = if self.answer.is_empty() {
                    held.trim_start()
                } else {
                    held.as_str()
                };
                self.answer.push_str(text);
                false
            }
            Part::Reasoning => {
                self.reasoning.push_str(&held);
                true
            }
        };
        ThinkingSplit {
            reasoning: self.reasoning.trim().to_string(),
            answer: self.answer.trim().to_string(),
            reasoning_unfinished,
        }
    }
}

/// Length in bytes of the longest proper suffix of `text` that is a prefix of `marker` (text
/// that may be the start of a marker completed by the next piece).
fn partial_marker_suffix(text: &str, marker: &str) -> usize {
    let max = marker.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && marker.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

/// Split a whole reply into reasoning and answer (the same rules as [`ThinkingStream`]).
pub fn split_thinking(text: &str, markers: ThinkingMarkers) -> ThinkingSplit {
    let mut stream = ThinkingStream::new(markers);
    stream.push(text);
    stream.finish()
}

/// [`split_thinking`] for a reply that was constrained to end its reasoning with the close
/// marker: when the model never wrote the open marker but the close marker is there, the
/// reasoning is what comes before it (the constraint forces the close marker after the
/// reasoning budget even when the model did not open the span; the reference's own
/// post-processing also splits on the close marker alone).
pub fn split_thinking_closed(text: &str, markers: ThinkingMarkers) -> ThinkingSplit {
    let split = split_thinking(text, markers);
    if split.reasoning.is_empty() && !split.reasoning_unfinished {
        if let Some((reasoning, answer)) = split.answer.split_once(markers.close) {
            if !reasoning.contains(markers.open) {
                return ThinkingSplit {
                    reasoning: reasoning.trim().to_string(),
                    answer: answer.trim().to_string(),
                    reasoning_unfinished: false,
                };
            }
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: ThinkingMarkers = ThinkingMarkers::KIMI;

    fn split(text: &str) -> ThinkingSplit {
        split_thinking(text, K)
    }

    #[test]
    fn thinking_reasoning_then_answer() {
        let s = split("◁think▷The man puts a bottle in his bag.\n◁/think▷\n\n{\"level\": 3}");
        assert_eq!(s.reasoning, "The man puts a bottle in his bag.");
        assert_eq!(s.answer, "{\"level\": 3}");
        assert!(!s.reasoning_unfinished);
    }

    #[test]
    fn thinking_stopped_inside_reasoning_gives_empty_answer() {
        let s = split("\n◁think▷ Let me look at the frame. There are two");
        assert_eq!(s.reasoning, "Let me look at the frame. There are two");
        assert_eq!(s.answer, "");
        assert!(s.reasoning_unfinished);
        // Stopped right after the open marker, and inside the close marker.
        let s = split("◁think▷");
        assert_eq!((s.reasoning.as_str(), s.reasoning_unfinished), ("", true));
        let s = split("◁think▷abc◁/thi");
        assert_eq!(s.reasoning, "abc◁/thi");
        assert!(s.reasoning_unfinished);
    }

    #[test]
    fn thinking_close_marker_alone_ends_the_reasoning() {
        let s = split_thinking_closed("noise before◁/think▷{\"a\": 1}", K);
        assert_eq!(s.reasoning, "noise before");
        assert_eq!(s.answer, "{\"a\": 1}");
        assert!(!s.reasoning_unfinished);
        // Without the close marker it is all answer, as with split_thinking.
        let s = split_thinking_closed("no markers here", K);
        assert_eq!(
            (s.reasoning.as_str(), s.answer.as_str()),
            ("", "no markers here")
        );
    }

    #[test]
    fn thinking_no_marker_is_all_answer() {
        let s = split("  A person is standing near the shelf. ");
        assert_eq!(s.reasoning, "");
        assert_eq!(s.answer, "A person is standing near the shelf.");
        assert!(!s.reasoning_unfinished);
        // A marker that is not at the start is text.
        let s = split("Answer: ◁think▷x◁/think▷y");
        assert_eq!(s.answer, "Answer: ◁think▷x◁/think▷y");
        assert_eq!(s.reasoning, "");
        // A reply that is a bare prefix of the marker.
        assert_eq!(split("◁thi").answer, "◁thi");
        assert_eq!(split("").answer, "");
    }

    #[test]
    fn thinking_other_markers() {
        let s = split_thinking("<think>a < b</think>c", ThinkingMarkers::THINK_TAGS);
        assert_eq!((s.reasoning.as_str(), s.answer.as_str()), ("a < b", "c"));
    }

    /// Every way of cutting the reply into pieces (at char boundaries, one and two cuts, and
    /// char by char) gives the batch result, and the deltas add up to it.
    #[test]
    fn thinking_streaming_matches_batch_for_every_split() {
        let replies = [
            "◁think▷ two people; one ◁ hides ▷ an item ◁/think▷ {\"a\": 1}",
            "◁think▷◁/think▷answer",
            "◁think▷ still thinking ◁/th",
            "plain answer ◁/think▷ with a stray marker",
            "  ◁think",
        ];
        for reply in replies {
            let batch = split(reply);
            let bounds: Vec<usize> = (0..=reply.len())
                .filter(|&i| reply.is_char_boundary(i))
                .collect();
            let mut cuts: Vec<Vec<usize>> = Vec::new();
            for &a in &bounds {
                cuts.push(vec![a]);
                for &b in bounds.iter().filter(|&&b| b >= a) {
                    cuts.push(vec![a, b]);
                }
            }
            cuts.push(bounds.clone());
            for cut in cuts {
                let mut stream = ThinkingStream::new(K);
                let (mut reasoning, mut answer) = (String::new(), String::new());
                let mut last = 0;
                for &c in cut.iter().chain(std::iter::once(&reply.len())) {
                    let d = stream.push(&reply[last..c]);
                    reasoning.push_str(&d.reasoning);
                    answer.push_str(&d.answer);
                    last = c;
                }
                let out = stream.finish();
                assert_eq!(out, batch, "{reply:?} cut at {cut:?}");
                // The deltas never emit anything the final parts do not hold; only text held
                // back as a possible marker (and trailing whitespace) is added by `finish`.
                assert!(
                    out.reasoning.starts_with(reasoning.trim_end()),
                    "{reply:?} {cut:?}"
                );
                assert!(
                    out.answer.starts_with(answer.trim_end()),
                    "{reply:?} {cut:?}"
                );
                if !out.reasoning_unfinished {
                    assert_eq!(reasoning.trim_end(), out.reasoning, "{reply:?} {cut:?}");
                }
                if reply != "  ◁think" {
                    assert_eq!(answer.trim_end(), out.answer, "{reply:?} {cut:?}");
                }
            }
        }
    }

    #[test]
    fn thinking_holds_back_a_split_marker() {
        let mut s = ThinkingStream::new(K);
        assert!(s.push("◁thi").is_empty());
        assert!(s.push("nk▷").is_empty());
        assert!(s.in_reasoning());
        assert_eq!(s.push("It is ◁").reasoning, "It is ");
        assert_eq!(s.push("x").reasoning, "◁x", "not a marker after all");
        let d = s.push(" ok◁/");
        assert_eq!(d.reasoning, " ok");
        let d = s.push("think▷ Yes");
        assert_eq!(
            d,
            ThinkingDelta {
                reasoning: String::new(),
                answer: "Yes".into()
            }
        );
        let out = s.finish();
        assert_eq!(out.reasoning, "It is ◁x ok");
        assert_eq!(out.answer, "Yes");
    }
}
