//! The tokenizer interface every architecture's text side implements, the byte-level
//! vocabulary that structured generation builds its token trie from, and an incremental
//! decoder that turns a stream of token ids into text without splitting UTF-8 characters.
//!
//! Tokenizers whose tokens are byte strings (byte-level BPE as in Qwen2-VL's `tokenizer.json`,
//! tiktoken ranks as in Kimi-VL's `tiktoken.model`) expose their [`Vocabulary`]; word-piece
//! tokenizers (GIT's BERT vocabulary) do not, and the [`TokenStream`] then decodes the whole
//! sequence and emits what is new.

use std::collections::HashSet;

use crate::Result;

/// Token ids → text and back, for one model's vocabulary.
///
/// `encode` never turns special-token text into special ids: `<|im_end|>` typed by a user is
/// plain text. Chat templates insert special tokens by id.
pub trait TextTokenizer: Send + Sync {
    /// Ids of plain `text` (no special tokens parsed, none added).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids`, special tokens left out.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// The byte strings of the vocabulary, when tokens are byte strings.
    fn vocabulary(&self) -> Option<&Vocabulary>;
    /// Ids that end an assistant turn or the sequence.
    fn stop_token_ids(&self) -> Vec<u32>;
}

/// The byte string of every token id, and which ids are special (control tokens that carry no
/// text). Index = token id; ids past the tokenizer's table (padding rows of a model's
/// embedding) are absent and must never be chosen by a constraint.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    tokens: Vec<Vec<u8>>,
    special: HashSet<u32>,
}

impl Vocabulary {
    /// A vocabulary from per-id byte strings (`tokens[id]`) and the set of special ids. A
    /// special id's entry holds its text form (e.g. `<|im_end|>`) for display only.
    pub fn new(tokens: Vec<Vec<u8>>, special: HashSet<u32>) -> Self {
        Self { tokens, special }
    }

    /// Number of ids in the table (regular and special).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True for an empty table.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The bytes a regular token stands for; `None` for special and unknown ids.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        if self.special.contains(&id) {
            return None;
        }
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// The stored entry of any id (special ids: their text form).
    pub fn entry(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// All byte strings, index = id.
    pub fn entries(&self) -> &[Vec<u8>] {
        &self.tokens
    }
}

/// Turns generated ids into text piece by piece. Each [`TokenStream::push`] returns the text
/// that became final with that token: bytes of a UTF-8 character split over several tokens
/// are held back until the character is complete.
pub struct TokenStream<'t> {
    tokenizer: &'t dyn TextTokenizer,
    ids: Vec<u32>,
    pending: Vec<u8>,
    emitted: usize,
    text: String,
}

impl<'t> TokenStream<'t> {
    /// A stream decoding with `tokenizer`.
    pub fn new(tokenizer: &'t dyn TextTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            pending: Vec::new(),
            emitted: 0,
            text: String::new(),
        }
    }

    /// Add one token; returns the new final text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let piece = match self.tokenizer.vocabulary() {
            Some(vocab) => {
                if let Some(bytes) = vocab.bytes(id) {
                    self.pending.extend_from_slice(bytes);
                }
                take_valid_utf8(&mut self.pending)
            }
            None => {
                // Word-piece vocabularies: decode everything, emit the new suffix once it no
                // longer ends in a replacement character (an incomplete byte sequence).
                let full = self.tokenizer.decode(&self.ids)?;
                if full.ends_with('\u{fffd}') || full.len() < self.emitted {
                    String::new()
                } else {
                    let new = full.get(self.emitted..).unwrap_or_default().to_string();
                    self.emitted = full.len();
                    new
                }
            }
        };
        self.text.push_str(&piece);
        Ok(piece)
    }

    /// Flush what is held back (an incomplete character becomes U+FFFD); returns it.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.text.push_str(&rest);
        rest
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Remove and return the longest valid UTF-8 prefix of `buf`. Invalid bytes that can never
/// start a character (not an incomplete tail) are replaced by U+FFFD so the stream goes on.
fn take_valid_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // `valid` bytes are valid UTF-8 by the error's contract.
                out.push_str(&String::from_utf8_lossy(&buf[..valid]));
                match e.error_len() {
                    // An incomplete character at the end: keep it for the next token.
                    None => {
                        buf.drain(..valid);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{fffd}');
                        buf.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vocabulary);
    impl TextTokenizer for Bytes {
        fn encode(&self, _: &str) -> Result<Vec<u32>> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let b: Vec<u8> = ids
                .iter()
                .filter_map(|&i| self.0.bytes(i))
                .flatten()
                .copied()
                .collect();
            Ok(String::from_utf8_lossy(&b).into_owned())
        }
        fn vocabulary(&self) -> Option<&Vocabulary> {
            Some(&self.0)
        }
        fn stop_token_ids(&self) -> Vec<u32> {
            vec![3]
        }
    }

    #[test]
    fn split_character_is_held_until_complete() {
        // "é" = C3 A9 split over two tokens; "▷" = E2 96 B7 over three.
        let vocab = Vocabulary::new(
            vec![
                vec![0xC3],
                vec![0xA9, b'x'],
                b"ab".to_vec(),
                b"<|end|>".to_vec(),
                vec![0xE2],
                vec![0x96],
                vec![0xB7],
                vec![0xFF],
            ],
            [3].into_iter().collect(),
        );
        let tok = Bytes(vocab);
        let mut s = TokenStream::new(&tok);
        assert_eq!(s.push(2).unwrap(), "ab");
        assert_eq!(s.push(0).unwrap(), "");
        assert_eq!(s.push(1).unwrap(), "éx");
        assert_eq!(s.push(3).unwrap(), "", "special tokens carry no text");
        assert_eq!(s.push(4).unwrap(), "");
        assert_eq!(s.push(5).unwrap(), "");
        assert_eq!(s.push(6).unwrap(), "▷");
        assert_eq!(s.push(7).unwrap(), "\u{fffd}", "a byte that never starts a character");
        assert_eq!(s.push(0).unwrap(), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.text(), "abéx▷\u{fffd}\u{fffd}");
    }
}
