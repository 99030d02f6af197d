//! Qwen2-VL tokenizer and chat format.
//!
//! [`render_chat`] reproduces the Qwen2-VL-Instruct chat template (default system prompt,
//! `<|im_start|>role\n…<|im_end|>\n`, `<|vision_start|><|image_pad|><|vision_end|>` per image);
//! [`Qwen2VlTokenizer::encode_chat`] tokenizes it with the Qwen byte-level BPE `tokenizer.json`
//! and repeats each `<|image_pad|>` / `<|video_pad|>` once per merged patch of its image.

use std::path::{Path, PathBuf};

use super::vision::GridThw;
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

/// Render messages with the Qwen2-VL-Instruct chat template. `add_vision_id` prefixes each
/// image with `Picture N: ` (and videos with `Video N: `), as the template's option does.
pub fn render_chat(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    add_vision_id: bool,
) -> String {
    let mut s = String::new();
    let (mut images, mut videos) = (0usize, 0usize);
    for (i, msg) in messages.iter().enumerate() {
        if i == 0 && msg.role != "system" {
            s.push_str(&format!(
                "{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n"
            ));
        }
        s.push_str(IM_START);
        s.push_str(&msg.role);
        s.push('\n');
        for part in &msg.content {
            match part {
                ContentPart::Text(t) => s.push_str(t),
                ContentPart::Image => {
                    images += 1;
                    if add_vision_id {
                        s.push_str(&format!("Picture {images}: "));
                    }
                    s.push_str(&format!("{VISION_START}{IMAGE_PAD}{VISION_END}"));
                }
                ContentPart::Video => {
                    videos += 1;
                    if add_vision_id {
                        s.push_str(&format!("Video {videos}: "));
                    }
                    s.push_str(&format!("{VISION_START}{VIDEO_PAD}{VISION_END}"));
                }
            }
        }
        s.push_str(IM_END);
        s.push('\n');
    }
    if add_generation_prompt {
        s.push_str(IM_START);
        s.push_str("assistant\n");
    }
    s
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
        Ok(Self {
            image_pad: id(IMAGE_PAD)?,
            video_pad: id(VIDEO_PAD)?,
            im_end: id(IM_END)?,
            endoftext: id(ENDOFTEXT)?,
            path: path.to_path_buf(),
            inner,
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
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        image_grids: &[GridThw],
        video_grids: &[GridThw],
        merge_size: usize,
    ) -> Result<ChatPrompt> {
        let text = render_chat(messages, true, false);
        let ids = self.encode(&text)?;
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
