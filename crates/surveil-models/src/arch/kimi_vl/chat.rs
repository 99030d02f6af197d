//! The Kimi-VL chat template as token ids.
//!
//! Layout (the Hub `chat_template` of Kimi-VL-A3B-Instruct / -Thinking): no newlines between
//! turns; each turn is `<|im_system|>` / `<|im_user|>` / `<|im_assistant|>`, the role name as
//! text, `<|im_middle|>`, the content, `<|im_end|>`. A conversation that does not open with a
//! system turn gets `<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>`
//! first. An image is `<|media_start|>image<|media_content|>` + one `<|media_pad|>` per image
//! token after MoonViT's patch merge + `<|media_end|>`. The generation prompt is
//! `<|im_assistant|>assistant<|im_middle|>`.
//!
//! Special tokens are inserted by id; the text between them goes through
//! [`TextTokenizer::encode`], which never parses special-token text, so a user who types
//! `<|im_end|>` cannot close a turn.

use super::tokenizer::KimiSpecialIds;
use super::vision::GridHw;
use crate::tokenizer::TextTokenizer;
use crate::{ModelError, Result};

/// The system text a conversation gets when it does not open with a system turn.
pub const KIMI_DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant";

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KimiRole {
    /// Instructions for the assistant.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

impl KimiRole {
    /// The role name written after the turn's special token.
    pub fn name(self) -> &'static str {
        match self {
            KimiRole::System => "system",
            KimiRole::User => "user",
            KimiRole::Assistant => "assistant",
        }
    }

    /// The special token that opens a turn of this role.
    pub fn start_token(self) -> u32 {
        match self {
            KimiRole::System => KimiSpecialIds::IM_SYSTEM,
            KimiRole::User => KimiSpecialIds::IM_USER,
            KimiRole::Assistant => KimiSpecialIds::IM_ASSISTANT,
        }
    }
}

/// One part of a turn's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KimiContent {
    /// Plain text.
    Text(String),
    /// The next image of the conversation (images are numbered in order of appearance).
    Image,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KimiMessage {
    /// Who speaks.
    pub role: KimiRole,
    /// Text and images in order.
    pub content: Vec<KimiContent>,
}

impl KimiMessage {
    /// A text-only turn.
    pub fn text(role: KimiRole, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![KimiContent::Text(text.into())],
        }
    }

    /// A system turn.
    pub fn system(text: impl Into<String>) -> Self {
        Self::text(KimiRole::System, text)
    }

    /// A text-only user turn.
    pub fn user(text: impl Into<String>) -> Self {
        Self::text(KimiRole::User, text)
    }

    /// An assistant turn (a previous answer).
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text(KimiRole::Assistant, text)
    }

    /// A user turn with `images` images followed by `text`.
    pub fn user_with_images(images: usize, text: impl Into<String>) -> Self {
        let mut content = vec![KimiContent::Image; images];
        content.push(KimiContent::Text(text.into()));
        Self {
            role: KimiRole::User,
            content,
        }
    }

    /// Number of images in the turn.
    pub fn image_count(&self) -> usize {
        self.content
            .iter()
            .filter(|c| matches!(c, KimiContent::Image))
            .count()
    }
}

/// A conversation rendered as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KimiPrompt {
    /// The prompt ids.
    pub input_ids: Vec<u32>,
    /// `<|media_pad|>` placeholders of each image, in order: what MoonViT and the projector
    /// produce for its grid.
    pub image_tokens: Vec<usize>,
}

/// Image tokens of one image after the patch merge: `(h / kh) · (w / kw)` for a grid of
/// `h × w` patches and a `kh × kw` merge window (MoonViT's `merge_patches`).
///
/// # Errors
/// [`ModelError::InvalidInput`] when the grid does not divide into the window or is empty.
pub fn merged_image_tokens(grid: GridHw, merge_kernel_size: [usize; 2]) -> Result<usize> {
    let [kh, kw] = merge_kernel_size;
    if kh == 0
        || kw == 0
        || !grid.h.is_multiple_of(kh)
        || !grid.w.is_multiple_of(kw)
        || grid.patches() == 0
    {
        return Err(ModelError::InvalidInput(format!(
            "an image grid of {}x{} patches does not divide into the {kh}x{kw} merge window",
            grid.h, grid.w
        )));
    }
    Ok(grid.merged_tokens(merge_kernel_size))
}

enum Segment {
    Special(u32),
    Text(String),
}

/// Render `messages` (and the generation prompt when `add_generation_prompt`) as token ids.
/// `grids` are the patch grids of the conversation's images in order (from
/// [`super::KimiVlImageProcessor`]), `merge_kernel_size` MoonViT's merge window.
///
/// # Errors
/// [`ModelError::InvalidInput`] when the conversation has another number of images than
/// `grids`, or a grid does not divide into the merge window; tokenizer errors.
pub fn encode_chat(
    tokenizer: &dyn TextTokenizer,
    messages: &[KimiMessage],
    grids: &[GridHw],
    merge_kernel_size: [usize; 2],
    add_generation_prompt: bool,
) -> Result<KimiPrompt> {
    let images: usize = messages.iter().map(KimiMessage::image_count).sum();
    if images != grids.len() {
        return Err(ModelError::InvalidInput(format!(
            "the conversation has {images} images but {} were preprocessed",
            grids.len()
        )));
    }
    let image_tokens = grids
        .iter()
        .map(|&g| merged_image_tokens(g, merge_kernel_size))
        .collect::<Result<Vec<_>>>()?;

    let mut segments = Vec::new();
    let turn = |segments: &mut Vec<Segment>, role: KimiRole, content: &[KimiContent]| {
        segments.push(Segment::Special(role.start_token()));
        segments.push(Segment::Text(role.name().to_string()));
        segments.push(Segment::Special(KimiSpecialIds::IM_MIDDLE));
        for part in content {
            match part {
                KimiContent::Text(t) => segments.push(Segment::Text(t.clone())),
                KimiContent::Image => {
                    segments.push(Segment::Special(KimiSpecialIds::MEDIA_START));
                    segments.push(Segment::Text("image".to_string()));
                    segments.push(Segment::Special(KimiSpecialIds::MEDIA_CONTENT));
                    // The placeholders are added below, when the image's count is known.
                    segments.push(Segment::Special(KimiSpecialIds::MEDIA_PAD));
                    segments.push(Segment::Special(KimiSpecialIds::MEDIA_END));
                }
            }
        }
        segments.push(Segment::Special(KimiSpecialIds::IM_END));
    };
    if messages.first().is_some_and(|m| m.role != KimiRole::System) {
        turn(
            &mut segments,
            KimiRole::System,
            &[KimiContent::Text(KIMI_DEFAULT_SYSTEM_PROMPT.to_string())],
        );
    }
    for m in messages {
        turn(&mut segments, m.role, &m.content);
    }
    if add_generation_prompt {
        segments.push(Segment::Special(KimiRole::Assistant.start_token()));
        segments.push(Segment::Text(KimiRole::Assistant.name().to_string()));
        segments.push(Segment::Special(KimiSpecialIds::IM_MIDDLE));
    }

    let mut input_ids = Vec::new();
    let mut text = String::new();
    let mut next_image = image_tokens.iter();
    for segment in segments {
        match segment {
            // Adjacent text parts are one string between special tokens, as the template
            // renders them.
            Segment::Text(t) => text.push_str(&t),
            Segment::Special(id) => {
                if !text.is_empty() {
                    input_ids.extend(tokenizer.encode(&text)?);
                    text.clear();
                }
                if id == KimiSpecialIds::MEDIA_PAD {
                    // Counted above: as many grids as images.
                    let n = next_image.next().copied().unwrap_or(0);
                    input_ids.extend(std::iter::repeat_n(id, n));
                } else {
                    input_ids.push(id);
                }
            }
        }
    }
    if !text.is_empty() {
        input_ids.extend(tokenizer.encode(&text)?);
    }
    check_image_placeholders(&input_ids, &image_tokens)?;
    Ok(KimiPrompt {
        input_ids,
        image_tokens,
    })
}

/// Check that `ids` hold exactly one `<|media_start|>…<|media_end|>` block per entry of
/// `image_tokens`, in order, with that many `<|media_pad|>` placeholders in it, and no
/// placeholder outside the blocks: the features MoonViT and the projector produce fill the
/// placeholders one to one.
///
/// # Errors
/// [`ModelError::InvalidInput`] naming the image and both counts on a mismatch.
pub fn check_image_placeholders(ids: &[u32], image_tokens: &[usize]) -> Result<()> {
    let pads = ids
        .iter()
        .filter(|&&t| t == KimiSpecialIds::MEDIA_PAD)
        .count();
    let expected: usize = image_tokens.iter().sum();
    if pads != expected {
        return Err(ModelError::InvalidInput(format!(
            "the prompt has {pads} <|media_pad|> placeholders but its {} images give {expected} \
             image tokens after the patch merge",
            image_tokens.len()
        )));
    }
    let mut blocks = Vec::new();
    let mut open: Option<usize> = None;
    for &t in ids {
        match t {
            KimiSpecialIds::MEDIA_START => open = Some(0),
            KimiSpecialIds::MEDIA_PAD => {
                match open.as_mut() {
                    Some(n) => *n += 1,
                    None => return Err(ModelError::InvalidInput(
                        "a <|media_pad|> placeholder lies outside <|media_start|>…<|media_end|>"
                            .into(),
                    )),
                }
            }
            KimiSpecialIds::MEDIA_END => blocks.extend(open.take()),
            _ => {}
        }
    }
    if blocks.len() != image_tokens.len() {
        return Err(ModelError::InvalidInput(format!(
            "the prompt has {} image blocks but {} images were given",
            blocks.len(),
            image_tokens.len()
        )));
    }
    for (i, (&found, &want)) in blocks.iter().zip(image_tokens).enumerate() {
        if found != want {
            return Err(ModelError::InvalidInput(format!(
                "image {i}: the prompt has {found} <|media_pad|> placeholders, MoonViT gives \
                 {want} image tokens"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Vocabulary;

    /// One id per byte: makes the text parts of a prompt visible.
    struct ByteTokenizer;
    impl TextTokenizer for ByteTokenizer {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
        }
        fn vocabulary(&self) -> Option<&Vocabulary> {
            None
        }
        fn stop_token_ids(&self) -> Vec<u32> {
            vec![]
        }
    }

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn default_system_turn_and_no_generation_prompt() {
        let p = encode_chat(
            &ByteTokenizer,
            &[KimiMessage::user("hi")],
            &[],
            [2, 2],
            false,
        )
        .unwrap();
        let mut want = vec![KimiSpecialIds::IM_SYSTEM];
        want.extend(bytes("system"));
        want.push(KimiSpecialIds::IM_MIDDLE);
        want.extend(bytes(KIMI_DEFAULT_SYSTEM_PROMPT));
        want.push(KimiSpecialIds::IM_END);
        want.push(KimiSpecialIds::IM_USER);
        want.extend(bytes("user"));
        want.push(KimiSpecialIds::IM_MIDDLE);
        want.extend(bytes("hi"));
        want.push(KimiSpecialIds::IM_END);
        assert_eq!(p.input_ids, want);
        assert!(p.image_tokens.is_empty());
    }

    #[test]
    fn two_images_get_their_own_counts() {
        let msgs = [
            KimiMessage::system("s"),
            KimiMessage::user_with_images(2, "q"),
            KimiMessage::assistant("a"),
        ];
        let grids = [GridHw::new(4, 6), GridHw::new(2, 2)];
        let p = encode_chat(&ByteTokenizer, &msgs, &grids, [2, 2], true).unwrap();
        assert_eq!(p.image_tokens, vec![6, 1]);
        // No default system turn: the conversation opens with one.
        assert_eq!(p.input_ids[0], KimiSpecialIds::IM_SYSTEM);
        assert_eq!(
            p.input_ids
                .iter()
                .filter(|&&t| t == KimiSpecialIds::IM_SYSTEM)
                .count(),
            1
        );
        let tail = [
            KimiSpecialIds::IM_ASSISTANT,
            b'a' as u32,
            b's' as u32,
            b's' as u32,
        ];
        assert!(p.input_ids.ends_with(&[KimiSpecialIds::IM_MIDDLE]));
        assert!(p.input_ids.windows(4).any(|w| w == tail));
    }

    #[test]
    fn image_counts_are_checked() {
        let msgs = [KimiMessage::user_with_images(1, "q")];
        let e = encode_chat(&ByteTokenizer, &msgs, &[], [2, 2], true).unwrap_err();
        assert!(e.to_string().contains("1 images but 0"), "{e}");
        let e = encode_chat(&ByteTokenizer, &msgs, &[GridHw::new(3, 4)], [2, 2], true).unwrap_err();
        assert!(e.to_string().contains("merge window"), "{e}");

        let p = encode_chat(&ByteTokenizer, &msgs, &[GridHw::new(4, 4)], [2, 2], true).unwrap();
        assert!(check_image_placeholders(&p.input_ids, &[4]).is_ok());
        let e = check_image_placeholders(&p.input_ids, &[5]).unwrap_err();
        assert!(
            e.to_string().contains("4 <|media_pad|> placeholders"),
            "{e}"
        );
        let e = check_image_placeholders(&p.input_ids, &[2, 2]).unwrap_err();
        assert!(e.to_string().contains("1 image blocks but 2"), "{e}");
        let stray = [KimiSpecialIds::MEDIA_PAD];
        assert!(check_image_placeholders(&stray, &[1]).is_err());
    }
}
