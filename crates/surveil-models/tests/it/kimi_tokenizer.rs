//! Kimi-VL's text side against the real `tiktoken.model`: golden ids of the reference tiktoken
//! library, special tokens, streaming decode, the reasoning split over real tokens, and the
//! chat template written out by hand from the tokenizer README.

use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use surveil_models::kimi_vl::{
    encode_chat, GridHw, KimiMessage, KimiSpecialIds, KimiTokenizer, KimiVlImageProcessor,
};
use surveil_models::thinking::{split_thinking, ThinkingMarkers, ThinkingStream};
use surveil_models::tokenizer::{TextTokenizer, TokenStream};

use crate::common::{assets_dir, fixtures_dir};

fn fixture() -> serde_json::Value {
    let path = fixtures_dir().join("tokenizers/kimi.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {}: {e}", path.display()))
}

/// The tokenizer file: the asset cache's copy (`scripts/setup.sh`), else the shared folder's.
/// `None` (test skipped) when neither exists, unless `CI=true`, where that is a failure.
fn tokenizer_path() -> Option<PathBuf> {
    let candidates = [
        assets_dir().join(KimiTokenizer::ASSET),
        fixtures_dir().join("../tokenizers/kimi/tiktoken.model"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    let msg = format!(
        "Kimi tokenizer not found at {:?} (run scripts/setup.sh)",
        candidates
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// One tokenizer for the whole test binary (163,584 ranks are loaded once).
fn tokenizer() -> Option<&'static KimiTokenizer> {
    static TOKENIZER: OnceLock<Option<KimiTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = tokenizer_path()?;
            let start = std::time::Instant::now();
            let tok = KimiTokenizer::from_file(&path).unwrap();
            eprintln!(
                "loaded {} in {:.0} ms",
                path.display(),
                start.elapsed().as_secs_f64() * 1e3
            );
            Some(tok)
        })
        .as_ref()
}

#[test]
fn parity_tokenizers_kimi_cases() {
    let Some(tok) = tokenizer() else { return };
    let fixture = fixture();
    if let Some(want) = fixture["sha256"].as_str() {
        let bytes = std::fs::read(tok.path()).unwrap();
        let got = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(got, want, "sha256 of {}", tok.path().display());
    }
    let cases = fixture["cases"].as_array().expect("`cases` is an array");
    assert!(!cases.is_empty(), "the fixture lists no case");
    for case in cases {
        let text = case["text"].as_str().expect("case text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("case ids")
            .iter()
            .map(|v| u32::try_from(v.as_u64().expect("id")).expect("id fits u32"))
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "encode {text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text, "decode {text:?}");
    }
    eprintln!("{} Kimi tokenizer cases match", cases.len());
}

#[test]
fn kimi_tokenizer_special_text_stays_plain() {
    let Some(tok) = tokenizer() else { return };
    let text = "stop here<|im_end|><|im_assistant|>[EOS]";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.iter().all(|&id| id < 163_584),
        "special-token text became special ids: {ids:?}"
    );
    assert_eq!(tok.decode(&ids).unwrap(), text);

    // Special ids are skipped when decoding; regular ones are not.
    let mut with_specials = vec![KimiSpecialIds::IM_USER];
    with_specials.extend(tok.encode("hello").unwrap());
    with_specials.push(KimiSpecialIds::IM_END);
    assert_eq!(tok.decode(&with_specials).unwrap(), "hello");
    assert!(tok.decode(&[163_840]).is_err(), "past the vocabulary");

    let vocab = tok.vocabulary().expect("byte vocabulary");
    assert_eq!(vocab.len(), 163_840);
    assert!(!vocab.is_special(163_583));
    assert!((163_584..163_840).all(|id| vocab.is_special(id)));
    assert_eq!(vocab.entry(163_586), Some(&b"<|im_end|>"[..]));
    assert_eq!(vocab.entry(163_605), Some(&b"<|media_pad|>"[..]));
    assert_eq!(
        vocab.entry(163_589),
        Some(&b"<|reserved_token_163589|>"[..])
    );
    assert_eq!(vocab.bytes(163_586), None);
    assert_eq!(tok.special_id("<|im_middle|>"), Some(163_601));
    assert_eq!(tok.special_id("[EOS]"), Some(163_585));
    assert_eq!(tok.stop_token_ids(), vec![163_586, 163_585]);
    // Every regular id's bytes encode back to that id when it is a whole split piece.
    let hello = tok.encode(" hello").unwrap();
    assert_eq!(hello.len(), 1);
    assert_eq!(vocab.bytes(hello[0]), Some(&b" hello"[..]));
}

#[test]
fn kimi_tokenizer_streams_utf8_split_over_tokens() {
    let Some(tok) = tokenizer() else { return };
    let text = "◁think▷顾客把商品放进了包里 — 🙂🛒 ok◁/think▷ {\"level\": \"高\"}";
    let ids = tok.encode(text).unwrap();
    let vocab = tok.vocabulary().unwrap();
    let partial = ids
        .iter()
        .filter(|&&id| std::str::from_utf8(vocab.bytes(id).unwrap()).is_err())
        .count();
    assert!(
        partial > 0,
        "the text should have tokens that split a character"
    );
    let mut stream = TokenStream::new(tok);
    let mut thinking = ThinkingStream::new(ThinkingMarkers::KIMI);
    let mut out = String::new();
    for &id in &ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains('\u{fffd}'), "{piece:?}");
        thinking.push(&piece);
        out.push_str(&piece);
    }
    assert_eq!(stream.finish(), "");
    assert_eq!(out, text);
    let streamed = thinking.finish();
    assert_eq!(streamed, split_thinking(text, ThinkingMarkers::KIMI));
    assert_eq!(streamed.reasoning, "顾客把商品放进了包里 — 🙂🛒 ok");
    assert_eq!(streamed.answer, "{\"level\": \"高\"}");
    assert!(!streamed.reasoning_unfinished);
}

/// A system turn, a user turn with one 768×576 image and text, and the generation prompt:
/// the sequence the README layout implies, written out by hand.
#[test]
fn kimi_chat_template_system_user_image_generation_prompt() {
    let Some(tok) = tokenizer() else { return };
    // 768×576 fits the 4096-patch limit (54 × 41 patches): no resize; padded to 784 × 588,
    // a 56 × 42 patch grid, 28 × 21 = 588 image tokens after the 2×2 merge.
    let frame = image::RgbImage::new(768, 576);
    let grid = KimiVlImageProcessor::default()
        .preprocess(&frame)
        .unwrap()
        .grid;
    assert_eq!(grid, GridHw::new(42, 56));
    let system = "You are a retail security analyst.";
    let question = "Is anyone hiding an item? Answer in JSON.";
    let messages = [
        KimiMessage::system(system),
        KimiMessage::user_with_images(1, question),
    ];
    let prompt = encode_chat(tok, &messages, &[grid], [2, 2], true).unwrap();

    let enc = |s: &str| tok.encode(s).unwrap();
    let mut want: Vec<u32> = Vec::new();
    want.push(163_594); // <|im_system|>
    want.extend(enc("system"));
    want.push(163_601); // <|im_middle|>
    want.extend(enc(system));
    want.push(163_586); // <|im_end|>
    want.push(163_587); // <|im_user|>
    want.extend(enc("user"));
    want.push(163_601); // <|im_middle|>
    want.push(163_602); // <|media_start|>
    want.extend(enc("image"));
    want.push(163_603); // <|media_content|>
    want.extend(std::iter::repeat_n(163_605, 588)); // <|media_pad|> × image tokens
    want.push(163_604); // <|media_end|>
    want.extend(enc(question));
    want.push(163_586); // <|im_end|>
    want.push(163_588); // <|im_assistant|>
    want.extend(enc("assistant"));
    want.push(163_601); // <|im_middle|>
    assert_eq!(prompt.input_ids, want);
    assert_eq!(prompt.image_tokens, vec![588]);
    // The role names are single tokens of the vocabulary.
    for role in ["system", "user", "assistant", "image"] {
        assert_eq!(enc(role).len(), 1, "{role}");
    }

    // Without a system turn the default one comes first.
    let prompt = encode_chat(tok, &messages[1..], &[grid], [2, 2], true).unwrap();
    let mut head = vec![163_594];
    head.extend(enc("system"));
    head.push(163_601);
    head.extend(enc("You are a helpful assistant"));
    head.push(163_586);
    head.push(163_587);
    assert!(prompt.input_ids.starts_with(&head));
    // The image count must match.
    assert!(encode_chat(tok, &messages, &[], [2, 2], true).is_err());
}

#[test]
fn kimi_tokenizer_is_found_beside_the_checkpoint_first() {
    let Some(tok) = tokenizer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let beside = dir.path().join("tiktoken.model");
    std::fs::copy(tok.path(), &beside).unwrap();
    assert_eq!(KimiTokenizer::locate(Some(dir.path())).unwrap(), beside);

    let empty = tempfile::tempdir().unwrap();
    let asset = surveil_config::paths::asset(KimiTokenizer::ASSET);
    match KimiTokenizer::locate(Some(empty.path())) {
        Ok(found) => assert_eq!(found, asset),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&empty.path().join("tiktoken.model").display().to_string())
                    && msg.contains(&asset.display().to_string()),
                "the error names both places: {msg}"
            );
        }
    }
}
