//! The Kimi-VL tokenizer: Moonshot's tiktoken BPE (`tiktoken.model`, one `base64(bytes) rank`
//! pair a line, 163,584 ranks), its split pattern, and 256 special slots after the regular
//! vocabulary (163,840 ids in all).
//!
//! Reference: `tokenization_moonshot.py` of the Kimi-VL Hub repositories (a `tiktoken.Encoding`
//! over these ranks and this pattern). The BPE itself is `tiktoken-rs`'s `CoreBPE`; the split
//! pattern needs a backtracking engine (a look-ahead and `&&` class intersections), which
//! `CoreBPE` has (`fancy-regex`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use tiktoken_rs::CoreBPE;

use crate::tokenizer::{TextTokenizer, Vocabulary};
use crate::{ModelError, Result};

/// Number of regular (BPE) tokens: ranks `0..163_584`.
pub const KIMI_REGULAR_TOKENS: usize = 163_584;
/// Number of ids: the regular tokens and 256 special slots.
pub const KIMI_VOCAB_SIZE: usize = 163_840;

/// The pre-tokenizer split pattern of `tokenization_moonshot.py` (alternatives joined with
/// `|`; `&&` is class intersection, `(?!\S)` a look-ahead).
pub const KIMI_SPLIT_PATTERN: &str = concat!(
    r"[\p{Han}]+",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

/// Ids of Kimi's named special tokens (fixed slots after the regular vocabulary, from the
/// Hub `tokenizer_config.json`).
#[derive(Debug, Clone, Copy)]
pub struct KimiSpecialIds;

impl KimiSpecialIds {
    /// `[BOS]`.
    pub const BOS: u32 = 163_584;
    /// `[EOS]`: end of the sequence; generation stops on it.
    pub const EOS: u32 = 163_585;
    /// `<|im_end|>`: end of a turn; generation stops on it.
    pub const IM_END: u32 = 163_586;
    /// `<|im_user|>`: opens a user turn.
    pub const IM_USER: u32 = 163_587;
    /// `<|im_assistant|>`: opens an assistant turn.
    pub const IM_ASSISTANT: u32 = 163_588;
    /// `<|im_system|>`: opens a system turn.
    pub const IM_SYSTEM: u32 = 163_594;
    /// `<|im_middle|>`: separates a turn's role name from its content.
    pub const IM_MIDDLE: u32 = 163_601;
    /// `<|media_start|>`: opens an image.
    pub const MEDIA_START: u32 = 163_602;
    /// `<|media_content|>`: between the media kind (`image`) and its placeholders.
    pub const MEDIA_CONTENT: u32 = 163_603;
    /// `<|media_end|>`: closes an image.
    pub const MEDIA_END: u32 = 163_604;
    /// `<|media_pad|>`: one per merged image token (`media_placeholder_token_id`).
    pub const MEDIA_PAD: u32 = 163_605;
}

/// The named special tokens; every other slot in `163_584..163_840` is
/// `<|reserved_token_N|>` with `N` its id.
pub const KIMI_NAMED_SPECIAL_TOKENS: &[(u32, &str)] = &[
    (KimiSpecialIds::BOS, "[BOS]"),
    (KimiSpecialIds::EOS, "[EOS]"),
    (KimiSpecialIds::IM_END, "<|im_end|>"),
    (KimiSpecialIds::IM_USER, "<|im_user|>"),
    (KimiSpecialIds::IM_ASSISTANT, "<|im_assistant|>"),
    (163_590, "<|start_header_id|>"),
    (163_591, "<|end_header_id|>"),
    (163_593, "[EOT]"),
    (KimiSpecialIds::IM_SYSTEM, "<|im_system|>"),
    (KimiSpecialIds::IM_MIDDLE, "<|im_middle|>"),
    (KimiSpecialIds::MEDIA_START, "<|media_start|>"),
    (KimiSpecialIds::MEDIA_CONTENT, "<|media_content|>"),
    (KimiSpecialIds::MEDIA_END, "<|media_end|>"),
    (KimiSpecialIds::MEDIA_PAD, "<|media_pad|>"),
    (163_838, "[UNK]"),
    (163_839, "[PAD]"),
];

/// The text form of special id `id` (`163_584..163_840`).
pub fn kimi_special_token_name(id: u32) -> String {
    KIMI_NAMED_SPECIAL_TOKENS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("<|reserved_token_{id}|>"))
}

/// Kimi-VL's tokenizer, loaded from a `tiktoken.model` file.
pub struct KimiTokenizer {
    bpe: CoreBPE,
    vocabulary: Vocabulary,
    path: PathBuf,
}

impl std::fmt::Debug for KimiTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KimiTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocabulary.len())
            .finish_non_exhaustive()
    }
}

impl KimiTokenizer {
    /// File name of the tokenizer in a Hub snapshot.
    pub const FILE_NAME: &'static str = "tiktoken.model";
    /// Path of the tokenizer in the asset cache (`scripts/setup.sh` installs it).
    pub const ASSET: &'static str = "tokenizers/kimi/tiktoken.model";

    /// Where the tokenizer file is: `tiktoken.model` beside the checkpoint first (a Hub
    /// snapshot ships its own), then [`Self::ASSET`] in the asset cache `assets`
    /// (`SystemConfig::paths.assets`).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] naming every place looked at when none holds the file.
    pub fn locate(checkpoint_dir: Option<&Path>, assets: &Path) -> Result<PathBuf> {
        crate::vlm::find_tokenizer_file(checkpoint_dir, Self::FILE_NAME, assets, Self::ASSET)
    }

    /// [`Self::locate`] then [`Self::from_file`].
    pub fn load(checkpoint_dir: Option<&Path>, assets: &Path) -> Result<Self> {
        Self::from_file(&Self::locate(checkpoint_dir, assets)?)
    }

    /// Load a `tiktoken.model` file.
    ///
    /// # Errors
    /// [`ModelError::Io`] when it cannot be read; [`ModelError::Tokenizer`] when a line is
    /// malformed, a rank or a token repeats, or the ranks are not exactly `0..163_584`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let start = Instant::now();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tokenizer = Self::from_ranks(&text, path)?;
        tracing::info!(
            path = %path.display(),
            ms = start.elapsed().as_secs_f64() * 1e3,
            "loaded the Kimi-VL tokenizer"
        );
        Ok(tokenizer)
    }

    /// Build from the text of a `tiktoken.model` file; `path` only names it in errors.
    pub fn from_ranks(text: &str, path: &Path) -> Result<Self> {
        let err = |reason: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut tokens: Vec<Option<Vec<u8>>> = vec![None; KIMI_REGULAR_TOKENS];
        let mut encoder: rustc_hash::FxHashMap<Vec<u8>, u32> = rustc_hash::FxHashMap::default();
        encoder.reserve(KIMI_REGULAR_TOKENS);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line_no = n + 1;
            let mut fields = line.split_ascii_whitespace();
            let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(err(format!(
                    "line {line_no}: expected `base64 rank`, found {line:?}"
                )));
            };
            let bytes = b64
                .decode(token)
                .map_err(|e| err(format!("line {line_no}: bad base64 {token:?}: {e}")))?;
            let rank: u32 = rank
                .parse()
                .map_err(|e| err(format!("line {line_no}: bad rank {rank:?}: {e}")))?;
            let slot = tokens.get_mut(rank as usize).ok_or_else(|| {
                err(format!(
                    "line {line_no}: rank {rank} is past the {KIMI_REGULAR_TOKENS} regular tokens"
                ))
            })?;
            if slot.is_some() {
                return Err(err(format!("line {line_no}: rank {rank} appears twice")));
            }
            *slot = Some(bytes.clone());
            if encoder.insert(bytes, rank).is_some() {
                return Err(err(format!(
                    "line {line_no}: token {token:?} appears twice"
                )));
            }
        }
        let mut table = Vec::with_capacity(KIMI_VOCAB_SIZE);
        for (rank, token) in tokens.into_iter().enumerate() {
            table.push(token.ok_or_else(|| {
                err(format!(
                    "rank {rank} is missing (expected ranks 0..{KIMI_REGULAR_TOKENS})"
                ))
            })?);
        }
        let mut specials = rustc_hash::FxHashMap::default();
        let mut special_ids = HashSet::with_capacity(KIMI_VOCAB_SIZE - KIMI_REGULAR_TOKENS);
        for id in KIMI_REGULAR_TOKENS as u32..KIMI_VOCAB_SIZE as u32 {
            let name = kimi_special_token_name(id);
            table.push(name.clone().into_bytes());
            specials.insert(name, id);
            special_ids.insert(id);
        }
        // The special texts are given to the BPE only so that its encoder knows them; `encode`
        // below allows none of them, so their text in a prompt is split like any other text.
        let bpe = CoreBPE::new(encoder, specials, KIMI_SPLIT_PATTERN)
            .map_err(|e| err(format!("cannot build the BPE: {e}")))?;
        Ok(Self {
            bpe,
            vocabulary: Vocabulary::new(table, special_ids),
            path: path.to_path_buf(),
        })
    }

    /// The file the tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of a special token given by its text form (`<|im_end|>`, `[EOS]`, ...).
    pub fn special_id(&self, name: &str) -> Option<u32> {
        (KIMI_REGULAR_TOKENS as u32..KIMI_VOCAB_SIZE as u32)
            .find(|&id| self.vocabulary.entry(id) == Some(name.as_bytes()))
    }
}

impl TextTokenizer for KimiTokenizer {
    /// Ids of plain `text`. Special-token text (`<|im_end|>`) is split like any other text.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the split pattern gives up on the text (the backtracking
    /// limit of the regex engine).
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // No special token is allowed: their text is encoded as ordinary text.
        self.bpe
            .encode(text, &HashSet::new())
            .map(|(ids, _)| ids)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot encode {} bytes of text: {e}", text.len()),
            })
    }

    /// Text of `ids`; special tokens are left out.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] for an id past the vocabulary (163,840 ids).
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if self.vocabulary.is_special(id) {
                continue;
            }
            let token = self
                .vocabulary
                .bytes(id)
                .ok_or_else(|| ModelError::Tokenizer {
                    path: self.path.clone(),
                    reason: format!(
                        "token id {id} is outside the vocabulary ({KIMI_VOCAB_SIZE} ids)"
                    ),
                })?;
            bytes.extend_from_slice(token);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocabulary(&self) -> Option<&Vocabulary> {
        Some(&self.vocabulary)
    }

    /// `<|im_end|>` (end of the assistant turn) and `[EOS]`.
    fn stop_token_ids(&self) -> Vec<u32> {
        vec![KimiSpecialIds::IM_END, KimiSpecialIds::EOS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_names_fill_every_slot() {
        assert_eq!(kimi_special_token_name(163_586), "<|im_end|>");
        assert_eq!(
            kimi_special_token_name(163_589),
            "<|reserved_token_163589|>"
        );
        assert_eq!(KIMI_VOCAB_SIZE - KIMI_REGULAR_TOKENS, 256);
    }

    /// A four-token table: the loader checks ranks and tokens, and the table gets the 256
    /// special slots.
    #[test]
    fn ranks_file_is_validated() {
        let p = Path::new("t.model");
        let bad = [
            ("YQ== 0\nYg== 0\n", "appears twice"),
            ("YQ== 0\nYQ== 1\n", "appears twice"),
            ("YQ== 0 x\n", "expected `base64 rank`"),
            ("!!! 0\n", "bad base64"),
            ("YQ== 999999\n", "past the"),
            ("YQ== 0\n", "rank 1 is missing"),
        ];
        for (text, want) in bad {
            let e = KimiTokenizer::from_ranks(text, p).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
