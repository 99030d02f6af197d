//! Kimi-VL's text side against the real `tiktoken.model`: golden ids of the reference tiktoken
//! library, special tokens, streaming decode, the reasoning split over real tokens, the chat
//! template written out by hand from the tokenizer README, and the whole `Vlm` call on a tiny
//! random model with the real vocabulary.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::kimi_vl::{
    encode_chat, full_tensor_layout, GridHw, KimiMessage, KimiSpecialIds, KimiTokenizer,
    KimiVlConfig, KimiVlImageProcessor, KimiVlModel,
};
use surveil_models::arch::LoadedModel;
use surveil_models::generation::thinking::{split_thinking, ThinkingMarkers, ThinkingStream};
use surveil_models::generation::{GenerationParams, StopReason};
use surveil_models::load::weights::{DummySource, Weights};
use surveil_models::tokenizer::{TextTokenizer, TokenStream};
use surveil_models::vlm::{build_vlm, GenerationHooks, NoHooks, VlmKind, VlmRequest};

use crate::common::{assets_dir, fixture, fixtures_dir, require};

/// The golden ids of `tokenizers/kimi.json`, or `None` (see [`require`]).
fn golden() -> Option<serde_json::Value> {
    let path = fixture("tokenizers")?.join("kimi.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {}: {e}", path.display())))
}

/// The tokenizer file: the asset cache's copy (`scripts/setup.sh`), else the shared folder's;
/// `None` (skipped) when neither exists on a developer's machine, a failure under CI.
fn tokenizer_path() -> Option<PathBuf> {
    require(
        "the Kimi tokenizer (scripts/setup.sh fetches it)",
        &[
            assets_dir().join(KimiTokenizer::ASSET),
            fixtures_dir().join("../tokenizers/kimi/tiktoken.model"),
        ],
    )
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
    let (Some(fixture), Some(tok)) = (golden(), tokenizer()) else {
        return;
    };
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
    assert_eq!(
        KimiTokenizer::locate(Some(dir.path()), &assets_dir()).unwrap(),
        beside
    );

    let empty = tempfile::tempdir().unwrap();
    let asset = surveil_config::paths::asset(KimiTokenizer::ASSET);
    match KimiTokenizer::locate(Some(empty.path()), &assets_dir()) {
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

/// Forces a fixed reply through the logits-mask hook: every step allows one token only.
struct ForceReply {
    reply: Vec<u32>,
    step: usize,
    vocab_rows: usize,
}

impl GenerationHooks for ForceReply {
    fn mask_logits(&mut self, logits: &mut [f32]) -> surveil_models::Result<()> {
        self.vocab_rows = logits.len();
        let allowed = self.reply.get(self.step).copied();
        for (id, l) in logits.iter_mut().enumerate() {
            if Some(id as u32) != allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        self.step += 1;
        Ok(())
    }
}

/// The tiny Kimi-VL of the fixtures with random weights; with `real_vocabulary`, 163,840
/// embedding rows and `<|media_pad|>` as placeholder, so the whole text side runs for real.
fn tiny_kimi(dir: &std::path::Path, real_vocabulary: bool) -> std::sync::Arc<KimiVlModel> {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if real_vocabulary {
        json["media_placeholder_token_id"] = 163_605.into();
        json["text_config"]["vocab_size"] = 163_840.into();
    }
    let cfg = KimiVlConfig::from_json_str(&json.to_string()).unwrap();
    let layout = full_tensor_layout(&cfg).unwrap();
    let source = DummySource::new("tiny-kimi", layout, DType::F32, 7);
    let w = Weights::new(
        Box::new(source),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    std::sync::Arc::new(KimiVlModel::load(&cfg, &w).unwrap())
}

#[test]
fn kimi_vlm_forced_reply_splits_reasoning_and_stops_on_im_end() {
    let (Some(fixture_dir), Some(tok)) = (fixture("kimi_vl"), tokenizer()) else {
        return;
    };
    let model = tiny_kimi(&fixture_dir, true);
    // The checkpoint directory holds the tokenizer: found there first.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(tok.path(), dir.path().join("tiktoken.model")).unwrap();
    let vlm = build_vlm(
        LoadedModel::KimiVl(model.clone()),
        &Device::Cpu,
        "kimi-vl-a3b-thinking",
        Some(dir.path()),
        &assets_dir(),
    )
    .unwrap();
    assert_eq!(vlm.kind(), VlmKind::Thinking);

    // 60 × 40 pixels: padded to 84 × 56, a 4 × 6 patch grid, 2 × 3 = 6 image tokens.
    let images = [image::RgbImage::from_fn(60, 40, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 6) as u8, 90])
    })];
    let request = VlmRequest {
        images: &images,
        system: None,
        prompt: "Is anyone hiding an item?",
    };
    let mut want_prompt = vec![163_594];
    want_prompt.extend(tok.encode("system").unwrap());
    want_prompt.push(163_601);
    want_prompt.extend(tok.encode("You are a helpful assistant").unwrap());
    want_prompt.extend([163_586, 163_587]);
    want_prompt.extend(tok.encode("user").unwrap());
    want_prompt.extend([163_601, 163_602]);
    want_prompt.extend(tok.encode("image").unwrap());
    want_prompt.push(163_603);
    want_prompt.extend([163_605; 6]);
    want_prompt.push(163_604);
    want_prompt.extend(tok.encode("Is anyone hiding an item?").unwrap());
    want_prompt.extend([163_586, 163_588]);
    want_prompt.extend(tok.encode("assistant").unwrap());
    want_prompt.push(163_601);

    let reply_text = "◁think▷The man puts a bottle in his bag.◁/think▷\n{\"level\": \"高\"}";
    let reply = tok.encode(reply_text).unwrap();
    let mut forced = reply.clone();
    forced.push(KimiSpecialIds::IM_END);
    let mut hooks = ForceReply {
        reply: forced,
        step: 0,
        vocab_rows: 0,
    };
    let out = vlm
        .analyse(&request, &GenerationParams::greedy(64), &mut hooks)
        .unwrap();
    assert_eq!(hooks.vocab_rows, 163_840);
    assert_eq!(out.timings.prompt_tokens, want_prompt.len());
    assert_eq!(
        out.stop_reason,
        StopReason::StopToken(KimiSpecialIds::IM_END)
    );
    assert_eq!(out.tokens, reply);
    assert_eq!(
        out.reasoning.as_deref(),
        Some("The man puts a bottle in his bag.")
    );
    assert_eq!(out.text, "{\"level\": \"高\"}");
    assert!(!out.reasoning_unfinished);

    // Stopped by the token limit inside the reasoning: no answer, and the result says so.
    let head = tok.encode("◁think▷The man puts").unwrap();
    assert_eq!(reply[..head.len()], head);
    let mut hooks = ForceReply {
        reply: reply.clone(),
        step: 0,
        vocab_rows: 0,
    };
    let out = vlm
        .analyse(&request, &GenerationParams::greedy(head.len()), &mut hooks)
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    assert_eq!(out.tokens, head);
    assert_eq!(out.text, "");
    assert_eq!(out.reasoning.as_deref(), Some("The man puts"));
    assert!(out.reasoning_unfinished);

    // The Instruct model keeps the whole reply as its answer; [EOS] stops too.
    let instruct = build_vlm(
        LoadedModel::KimiVl(model),
        &Device::Cpu,
        "kimi-vl-a3b-instruct",
        Some(dir.path()),
        &assets_dir(),
    )
    .unwrap();
    assert_eq!(instruct.kind(), VlmKind::Instruction);
    let answer = tok.encode("Two people are talking.").unwrap();
    let mut forced = answer.clone();
    forced.push(KimiSpecialIds::EOS);
    let mut hooks = ForceReply {
        reply: forced,
        step: 0,
        vocab_rows: 0,
    };
    let out = instruct
        .analyse(&request, &GenerationParams::greedy(64), &mut hooks)
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::StopToken(KimiSpecialIds::EOS));
    assert_eq!(out.tokens, answer);
    assert_eq!(out.text, "Two people are talking.");
    assert_eq!(out.reasoning, None);

    // The fixture's own (tiny) vocabulary and placeholder cannot take Kimi prompts: the model
    // is built (the loader accepts it) but refuses to analyse.
    let tiny = tiny_kimi(&fixture_dir, false);
    let placeholder = tiny.config().media_placeholder_token_id;
    let small = build_vlm(
        LoadedModel::KimiVl(tiny),
        &Device::Cpu,
        "kimi-vl-a3b-thinking",
        Some(dir.path()),
        &assets_dir(),
    )
    .unwrap();
    let e = small
        .analyse(&request, &GenerationParams::greedy(4), &mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("media_placeholder_token_id is {placeholder}"))
            && e.contains("cannot take"),
        "{e}"
    );
}
