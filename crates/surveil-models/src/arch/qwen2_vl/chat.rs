//! Qwen2-VL tokenizer and chat format.
//!
//! [`render_chat`] reproduces the Qwen2-VL-Instruct chat template (default system prompt,
//! `<|im_start|>role\n…<|im_end|>\n`, `<|vision_start|><|image_pad|><|vision_end|>` per image);
//! [`Qwen2VlTokenizer::encode_chat`] tokenizes it with the Qwen byte-level BPE `tokenizer.json`
//! and repeats each `<|image_pad|>` / `<|video_pad|>` once per merged patch of its image.

use std::path::{Path, PathBuf};

use super::vision::GridThw;
use crate::tokenizer::{TextTokenizer, Vocabulary};
use crate::{ModelError, Result};

/// `<|endoftext|>`.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// `<|im_start|>`.
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>`.
pub const IM_END: &str = "<|im_end|>";
/// `<|vision_start|>`.
pub const VISION_START: &str = "<|vision_start|>";
/// `<|vision_end|>`.
pub const VISION_END: &str = "<|vision_end|>";
/// `<|image_pad|>`.
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// `<|video_pad|>`.
pub const VIDEO_PAD: &str = "<|video_pad|>";

/// System prompt the template inserts when the first message is not a system message.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    /// Plain text.
    Text(String),
    /// An image placeholder (its pixels are passed separately, in order).
    Image,
    /// A video placeholder.
    Video,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Content in order.
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A text-only message.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: vec![ContentPart::Text(text.into())],
        }
    }

    /// A user message with `images` image placeholders followed by `text`.
    pub fn user_with_images(images: usize, text: impl Into<String>) -> Self {
        let mut content = vec![ContentPart::Image; images];
        content.push(ContentPart::Text(text.into()));
        Self {
            role: "user".into(),
            content,
        }
    }
}

/// One piece of a rendered chat: a special token of the template, or text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChatPiece<'a> {
    Special(&'static str),
    Text(std::borrow::Cow<'a, str>),
}

/// The Qwen2-VL-Instruct chat template as pieces, special tokens apart from text.
fn chat_pieces(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    add_vision_id: bool,
) -> Vec<ChatPiece<'_>> {
    use std::borrow::Cow;
    let mut out = Vec::new();
    let (mut images, mut videos) = (0usize, 0usize);
    for (i, msg) in messages.iter().enumerate() {
        if i == 0 && msg.role != "system" {
            out.push(ChatPiece::Special(IM_START));
            out.push(ChatPiece::Text(Cow::Owned(format!(
                "system\n{DEFAULT_SYSTEM_PROMPT}"
            ))));
            out.push(ChatPiece::Special(IM_END));
            out.push(ChatPiece::Text(Cow::Borrowed("\n")));
        }
        out.push(ChatPiece::Special(IM_START));
        out.push(ChatPiece::Text(Cow::Owned(format!("{}\n", msg.role))));
        for part in &msg.content {
            let (pad, label, count) = match part {
                ContentPart::Text(t) => {
                    out.push(ChatPiece::Text(Cow::Borrowed(t)));
                    continue;
                }
                ContentPart::Image => {
                    images += 1;
                    (IMAGE_PAD, "Picture", images)
                }
                ContentPart::Video => {
                    videos += 1;
                    (VIDEO_PAD, "Video", videos)
                }
            };
            if add_vision_id {
                out.push(ChatPiece::Text(Cow::Owned(format!("{label} {count}: "))));
            }
            out.push(ChatPiece::Special(VISION_START));
            out.push(ChatPiece::Special(pad));
            out.push(ChatPiece::Special(VISION_END));
        }
        out.push(ChatPiece::Special(IM_END));
        out.push(ChatPiece::Text(Cow::Borrowed("\n")));
    }
    if add_generation_prompt {
        out.push(ChatPiece::Special(IM_START));
        out.push(ChatPiece::Text(Cow::Borrowed("assistant\n")));
    }
    out
}

/// Render messages with the Qwen2-VL-Instruct chat template. `add_vision_id` prefixes each
/// image with `Picture N: ` (and videos with `Video N: `), as the template's option does.
pub fn render_chat(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    add_vision_id: bool,
) -> String {
    chat_pieces(messages, add_generation_prompt, add_vision_id)
        .iter()
        .map(|p| match p {
            ChatPiece::Special(t) => *t,
            ChatPiece::Text(t) => t.as_ref(),
        })
        .collect()
}

/// A tokenized chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    /// Token ids with the vision placeholders expanded.
    pub input_ids: Vec<u32>,
    /// 1 on image placeholder tokens, 2 on video placeholder tokens, 0 elsewhere.
    pub mm_token_type_ids: Vec<u8>,
}

/// The Qwen byte-level BPE tokenizer with the special ids Qwen2-VL needs.
pub struct Qwen2VlTokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token text treated as plain text
    /// ([`TextTokenizer::encode`]).
    plain: tokenizers::Tokenizer,
    vocabulary: Option<Vocabulary>,
    path: PathBuf,
    image_pad: u32,
    video_pad: u32,
    im_end: u32,
    endoftext: u32,
}

impl Qwen2VlTokenizer {
    /// Load a `tokenizer.json` (padding and truncation are switched off).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: "file not found (run scripts/setup to fetch the Qwen tokenizer)".into(),
            });
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let id = |tok: &str| {
            inner.token_to_id(tok).ok_or_else(|| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("special token {tok} is missing: not a Qwen2-VL tokenizer"),
            })
        };
        let (image_pad, video_pad, im_end, endoftext) =
            (id(IMAGE_PAD)?, id(VIDEO_PAD)?, id(IM_END)?, id(ENDOFTEXT)?);
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        // The byte strings of the vocabulary, for constrained decoding and streaming.
        let vocabulary = Some(Vocabulary::from_hf_tokenizer(&inner)?);
        Ok(Self {
            image_pad,
            video_pad,
            im_end,
            endoftext,
            path: path.to_path_buf(),
            inner,
            plain,
            vocabulary,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, true)
            .map_err(|e| self.err(e))?
            .get_ids()
            .to_vec())
    }

    /// Token strings (byte-level, e.g. `Ġperson`) of `text`.
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        Ok(self
            .inner
            .encode(text, true)
            .map_err(|e| self.err(e))?
            .get_tokens()
            .to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    /// Id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids that end an assistant turn: `<|im_end|>` and `<|endoftext|>`.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        vec![self.im_end, self.endoftext]
    }

    /// Render `messages` with the chat template, tokenize, and repeat the `n`-th image
    /// placeholder `image_grids[n].merged_tokens(merge_size)` times (videos likewise).
    ///
    /// The template's special tokens are inserted by id and the message text is tokenized as
    /// plain text, so special-token text inside a message (`<|im_end|>` typed by a user) stays
    /// text. Otherwise the ids equal tokenizing [`render_chat`]'s string, which splits at the
    /// special tokens the same way.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        image_grids: &[GridThw],
        video_grids: &[GridThw],
        merge_size: usize,
    ) -> Result<ChatPrompt> {
        let mut ids = Vec::new();
        let mut text = String::new();
        for piece in chat_pieces(messages, true, false) {
            match piece {
                ChatPiece::Text(t) => text.push_str(&t),
                ChatPiece::Special(tok) => {
                    if !text.is_empty() {
                        ids.extend(TextTokenizer::encode(self, &text)?);
                        text.clear();
                    }
                    let id = self.token_id(tok).ok_or_else(|| {
                        self.err(format!(
                            "special token {tok} is missing from the vocabulary"
                        ))
                    })?;
                    ids.push(id);
                }
            }
        }
        if !text.is_empty() {
            ids.extend(TextTokenizer::encode(self, &text)?);
        }
        self.expand_placeholders(&ids, image_grids, video_grids, merge_size)
    }

    /// Repeat each single `<|image_pad|>` / `<|video_pad|>` of `ids` once per merged patch of its
    /// image or video (placeholders and grids are matched in order).
    pub fn expand_placeholders(
        &self,
        ids: &[u32],
        image_grids: &[GridThw],
        video_grids: &[GridThw],
        merge_size: usize,
    ) -> Result<ChatPrompt> {
        let count = |tok: u32| ids.iter().filter(|&&t| t == tok).count();
        let (ni, nv) = (count(self.image_pad), count(self.video_pad));
        if ni != image_grids.len() || nv != video_grids.len() {
            return Err(ModelError::InvalidInput(format!(
                "the prompt has {ni} image and {nv} video placeholders but {} images and {} videos were given",
                image_grids.len(),
                video_grids.len()
            )));
        }
        let m = merge_size.max(1);
        let (mut gi, mut gv) = (image_grids.iter(), video_grids.iter());
        let mut input_ids = Vec::with_capacity(ids.len());
        let mut types = Vec::with_capacity(ids.len());
        for &t in ids {
            let (grid, kind) = if t == self.image_pad {
                (gi.next(), 1u8)
            } else if t == self.video_pad {
                (gv.next(), 2u8)
            } else {
                input_ids.push(t);
                types.push(0);
                continue;
            };
            let n = grid.map(|g| g.merged_tokens(m)).unwrap_or(0);
            input_ids.extend(std::iter::repeat_n(t, n));
            types.extend(std::iter::repeat_n(kind, n));
        }
        Ok(ChatPrompt {
            input_ids,
            mm_token_type_ids: types,
        })
    }
}

impl TextTokenizer for Qwen2VlTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .plain
            .encode(text, false)
            .map_err(|e| self.err(e))?
            .get_ids()
            .to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Qwen2VlTokenizer::decode(self, ids, true)
    }

    fn vocabulary(&self) -> Option<&Vocabulary> {
        self.vocabulary.as_ref()
    }

    fn stop_token_ids(&self) -> Vec<u32> {
        Qwen2VlTokenizer::stop_token_ids(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_the_reference_rendering() {
        let msgs = [ChatMessage::user_with_images(1, "Describe.")];
        assert_eq!(
            render_chat(&msgs, true, false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        );
        let msgs = [
            ChatMessage::text("system", "Be brief."),
            ChatMessage {
                role: "user".into(),
                content: vec![
                    ContentPart::Image,
                    ContentPart::Video,
                    ContentPart::Text("Hi".into()),
                ],
            },
        ];
        assert_eq!(
            render_chat(&msgs, false, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nPicture 1: \
             <|vision_start|><|image_pad|><|vision_end|>Video 1: <|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n"
        );
    }
}
