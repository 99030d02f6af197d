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

impl Vocabulary {
    /// The vocabulary of a byte-level BPE `tokenizer.json` (GPT-2, Qwen2, Llama-3 style): each
    /// token string is mapped back to its bytes through the GPT-2 byte↔unicode table
    /// (`bytes_to_unicode` of OpenAI's GPT-2 `encoder.py`, also in Hugging Face `tokenizers`'
    /// `ByteLevel` pre-tokenizer). Added tokens (`added_tokens` of the file, e.g. `<|im_end|>`)
    /// are marked special and hold their content as text form; ids below the largest id that
    /// have no token are left empty and marked special.
    ///
    /// Errors: [`crate::ModelError::Tokenizer`] when a regular token holds a character outside
    /// the byte-level table (the tokenizer is not byte-level, e.g. SentencePiece or WordPiece).
    pub fn from_hf_tokenizer(tokenizer: &tokenizers::Tokenizer) -> Result<Vocabulary> {
        let added = tokenizer.get_added_tokens_decoder();
        let vocab = tokenizer.get_vocab(true);
        let size = vocab
            .values()
            .chain(added.keys())
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut tokens = vec![Vec::new(); size];
        let mut special: HashSet<u32> = (0..size as u32).collect();
        let table = byte_level_decoder_table();
        for (text, &id) in &vocab {
            if added.contains_key(&id) {
                continue;
            }
            let Some(slot) = tokens.get_mut(id as usize) else {
                continue;
            };
            let mut bytes = Vec::with_capacity(text.len());
            for c in text.chars() {
                match table.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => {
                        return Err(crate::ModelError::Tokenizer {
                            path: "<in-memory tokenizer>".into(),
                            reason: format!(
                                "token {id} ({text:?}) holds {c:?}, which is not in the \
                                 byte-level BPE table: not a byte-level tokenizer"
                            ),
                        })
                    }
                }
            }
            *slot = bytes;
            special.remove(&id);
        }
        for (&id, token) in &added {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = token.content.as_bytes().to_vec();
                special.insert(id);
            }
        }
        Ok(Vocabulary::new(tokens, special))
    }
}

/// The GPT-2 byte-level alphabet: byte `b` is written as the character `byte_level_char(b)`.
/// Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68
/// bytes are mapped in increasing order to U+0100, U+0101, … (so a space is `Ġ` U+0120 and a
/// newline `Ċ` U+010A). Source: `bytes_to_unicode` in OpenAI's GPT-2 `encoder.py`.
fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    // 256 + rank < 256 + 68 is always a valid scalar value.
    char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Character of the byte-level alphabet → the byte it stands for.
fn byte_level_decoder_table() -> std::collections::HashMap<char, u8> {
    (0..=255u8).map(|b| (byte_level_char(b), b)).collect()
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
    fn byte_level_table_matches_gpt2() {
        let table = byte_level_decoder_table();
        assert_eq!(table.len(), 256, "the alphabet is a bijection");
        assert_eq!(byte_level_char(b'!'), '!');
        assert_eq!(byte_level_char(b'~'), '~');
        assert_eq!(byte_level_char(0x00), '\u{100}');
        assert_eq!(byte_level_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_level_char(0x7F), '\u{121}');
        assert_eq!(byte_level_char(0xAD), 'Ń');
        assert_eq!(byte_level_char(0xE9), 'é');
        assert!((0..=255u8).all(|b| table[&byte_level_char(b)] == b));
    }

    /// A byte-level BPE `tokenizer.json` in the format Qwen2 uses: the model's tokens, then
    /// added tokens (one special, one not), numbered after the model's vocabulary.
    fn byte_level_tokenizer(vocab: &str, merges: &str) -> tokenizers::Tokenizer {
        let json = r#"{
          "version": "1.0",
          "truncation": null,
          "padding": null,
          "added_tokens": [
            {"id": 100, "content": "<|im_end|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 101, "content": "<tool>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": false}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                            "use_regex": true},
          "post_processor": null,
          "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                      "use_regex": true},
          "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": VOCAB, "merges": MERGES
          }
        }"#;
        json.replace("VOCAB", vocab)
            .replace("MERGES", merges)
            .parse()
            .unwrap()
    }

    #[test]
    fn hf_byte_level_vocabulary_maps_tokens_to_bytes() {
        let tok = byte_level_tokenizer(
            r#"{"a": 0, "b": 1, "Ġ": 2, "Ċ": 3, "Ġa": 4, "Ã": 5, "©": 6, "Ã©": 7}"#,
            r#"[["Ġ", "a"], ["Ã", "©"]]"#,
        );
        let vocab = Vocabulary::from_hf_tokenizer(&tok).unwrap();
        assert_eq!(vocab.len(), 10);
        assert_eq!(vocab.bytes(0), Some(&b"a"[..]));
        assert_eq!(vocab.bytes(2), Some(&b" "[..]));
        assert_eq!(vocab.bytes(3), Some(&b"\n"[..]));
        assert_eq!(vocab.bytes(4), Some(&b" a"[..]));
        assert_eq!(vocab.bytes(5), Some(&[0xC3u8][..]), "half of a character");
        assert_eq!(vocab.bytes(7), Some("é".as_bytes()));
        assert!((0..8).all(|id| !vocab.is_special(id)));
        // Added tokens (ids 8 and 9, after the model's): special, text form kept.
        for (text, id) in [("<|im_end|>", 8), ("<tool>", 9)] {
            assert_eq!(tok.token_to_id(text), Some(id));
            assert!(vocab.is_special(id));
            assert_eq!(vocab.bytes(id), None);
            assert_eq!(vocab.entry(id), Some(text.as_bytes()));
        }
        // Encoding then concatenating the bytes gives the text back.
        let text = " a\né a";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![4, 3, 7, 4]);
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| vocab.bytes(i).unwrap().to_vec())
            .collect();
        assert_eq!(bytes, text.as_bytes());
    }

    #[test]
    fn hf_vocabulary_ids_without_a_token_are_empty_and_special() {
        // Model ids 0, 1 and 5 (a size of 3), so the added tokens take ids 3 and 4 and id 2
        // has no token.
        let tok = byte_level_tokenizer(r#"{"a": 0, "b": 1, "c": 5}"#, "[]");
        assert_eq!(tok.token_to_id("<tool>"), Some(4));
        let vocab = Vocabulary::from_hf_tokenizer(&tok).unwrap();
        assert_eq!(vocab.len(), 6);
        assert!(vocab.is_special(2));
        assert_eq!(vocab.entry(2), Some(&b""[..]));
        assert_eq!(vocab.bytes(2), None);
        assert_eq!(vocab.bytes(5), Some(&b"c"[..]));
        assert!(vocab.is_special(3) && vocab.is_special(4));
    }

    #[test]
    fn non_byte_level_vocabulary_is_refused() {
        // A SentencePiece-style token: '▁' (U+2581) is not in the byte-level alphabet.
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
          "model": {"type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": {"a": 0, "▁a": 1}, "merges": []}
        }"#;
        let tok: tokenizers::Tokenizer = json.parse().unwrap();
        let err = Vocabulary::from_hf_tokenizer(&tok).unwrap_err().to_string();
        assert!(err.contains("not a byte-level tokenizer"), "{err}");
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
        assert_eq!(
            s.push(7).unwrap(),
            "\u{fffd}",
            "a byte that never starts a character"
        );
        assert_eq!(s.push(0).unwrap(), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.text(), "abéx▷\u{fffd}\u{fffd}");
    }
}
