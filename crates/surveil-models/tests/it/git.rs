//! GIT parity tests: the tiny GitForCausalLM fixture (`git/`), the CLIP processor cases
//! (`processors/`, `clip_*`) and the BERT tokenizer (`tokenizers/`, `bert`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::generation::{Sampling, TokenSampler};
use surveil_models::git::{
    git_base_coco_config, CaptionSettings, ClipProcessor, ClipProcessorConfig, GitCaptioner,
    GitConfig, GitModel, GitTokenizer,
};
use surveil_models::image_ops::resize_bicubic_u8;
use surveil_models::weights::{DummySource, SafetensorsSource, Weights};

use crate::common::{assets_dir, cases, fixtures_dir, load_tensors, max_abs_diff};

fn git_dir() -> PathBuf {
    fixtures_dir().join("git")
}

fn load_fixture_model() -> GitModel {
    let dir = git_dir();
    let cfg = GitConfig::from_file(&dir.join("config.json")).unwrap();
    let source = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(
        Box::new(source),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    GitModel::load(&cfg, &w).unwrap()
}

fn tol(case: &Value, tensor: &str) -> f32 {
    case["tolerance"][tensor]["max_abs_diff"]
        .as_f64()
        .unwrap_or_else(|| panic!("no tolerance for {tensor}")) as f32
}

fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|v| v as u32).collect())
        .collect()
}

fn check_shape(case: &Value, group: &str, name: &str, t: &Tensor) {
    let shape: Vec<usize> = serde_json::from_value(case[group][name]["shape"].clone()).unwrap();
    assert_eq!(t.dims(), shape.as_slice(), "{name}");
}

/// Image features, projection and logits of every case, within the fixture tolerances.
#[test]
fn parity_git_logits() {
    let model = load_fixture_model();
    let all = cases(&git_dir());
    for (name, case) in all["cases"].as_object().unwrap() {
        let t = load_tensors(&git_dir().join(case["file"].as_str().unwrap()));
        let pixels = &t["pixel_values"];
        let ids = &t["input_ids"];
        check_shape(case, "inputs", "pixel_values", pixels);

        let feats = model.image_features(pixels).unwrap();
        check_shape(case, "outputs", "image_features", &feats);
        let d = max_abs_diff(&feats, &t["image_features"]);
        println!(
            "{name}: image_features max diff {d:e} (tol {:e})",
            tol(case, "image_features")
        );
        assert!(
            d <= tol(case, "image_features"),
            "{name} image_features {d}"
        );

        let proj = model.project_image_features(&feats).unwrap();
        check_shape(case, "outputs", "projected_image_features", &proj);
        let d = max_abs_diff(&proj, &t["projected_image_features"]);
        let limit = tol(case, "projected_image_features");
        println!("{name}: projected_image_features max diff {d:e} (tol {limit:e})");
        assert!(d <= limit, "{name} projected {d}");

        assert_eq!(
            model.num_image_tokens() as u64,
            case["num_image_tokens"].as_u64().unwrap()
        );
        let logits = model.forward(pixels, ids).unwrap();
        check_shape(case, "outputs", "logits", &logits);
        let d = max_abs_diff(&logits, &t["logits"]);
        println!(
            "{name}: logits max diff {d:e} (tol {:e})",
            tol(case, "logits")
        );
        assert!(d <= tol(case, "logits"), "{name} logits {d}");
    }
}

/// Greedy decoding with the KV cache: every step's logits within tolerance and the ids exact,
/// both through prefill/step and through `generate` (no EOS stopping, like the fixture).
#[test]
fn parity_git_greedy() {
    let model = load_fixture_model();
    let all = cases(&git_dir());
    for (name, case) in all["cases"].as_object().unwrap() {
        let t = load_tensors(&git_dir().join(case["file"].as_str().unwrap()));
        let pixels = &t["pixel_values"];
        let ids = &t["input_ids"];
        let expected = ids_of(&t["greedy_ids"]);
        let steps = expected[0].len();
        let ref_steps = &t["greedy_step_logits"];
        let limit = tol(case, "logits");

        let image = model.image_embeddings(pixels).unwrap();
        // Room for one text token only: the cache has to grow during the steps.
        let mut cache = model.new_cache(1);
        let mut logits = model.prefill(&image, ids, &mut cache).unwrap();
        let mut ours = Vec::new();
        let mut worst = 0f32;
        for s in 0..steps {
            let reference = ref_steps.narrow(1, s, 1).unwrap().squeeze(1).unwrap();
            let d = max_abs_diff(&logits, &reference);
            worst = worst.max(d);
            assert!(
                d <= limit,
                "{name}: step {s} logits differ by {d} (tol {limit})"
            );
            let row: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
            let token = surveil_models::generation::argmax(&row);
            ours.push(token);
            if s + 1 < steps {
                let next = Tensor::new(&[[token]], &Device::Cpu).unwrap();
                logits = model.step(&next, &mut cache).unwrap();
            }
        }
        println!("{name}: greedy_step_logits max diff {worst:e} (tol {limit:e}), ids {ours:?}");
        assert_eq!(ours, expected[0], "{name}: greedy ids");
        assert_eq!(cache.text_tokens(), ids.dim(1).unwrap() + steps - 1);

        let prompt: Vec<u32> = ids_of(ids)[0].clone();
        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
        let generated = model
            .generate(pixels, &prompt, steps, &mut sampler, None)
            .unwrap();
        assert_eq!(generated, expected, "{name}: generate ids");
    }
}

/// Several frames in one batch give the same tokens as one at a time, and stopping at a token
/// truncates exactly there.
#[test]
fn git_generate_batches_and_stops() {
    let model = load_fixture_model();
    let all = cases(&git_dir());
    let mut names: Vec<&String> = all["cases"].as_object().unwrap().keys().collect();
    names.sort();
    let pixels: Vec<Tensor> = names
        .iter()
        .map(|n| {
            let file = all["cases"][n.as_str()]["file"].as_str().unwrap();
            load_tensors(&git_dir().join(file))["pixel_values"].clone()
        })
        .collect();
    let cfg = model.config().clone();
    let bos = [cfg.bos_token_id];
    let greedy = || TokenSampler::new(Sampling::Greedy, 0);
    let single: Vec<Vec<u32>> = pixels
        .iter()
        .map(|p| {
            model
                .generate(p, &bos, 6, &mut greedy(), None)
                .unwrap()
                .remove(0)
        })
        .collect();
    let batch = Tensor::cat(&pixels, 0).unwrap();
    let together = model
        .generate(&batch, &bos, 6, &mut greedy(), None)
        .unwrap();
    assert_eq!(together, single);

    // Stop at the third token of the first sequence: it ends before it, the other continues
    // unless it produces the same token.
    let stop = single[0][2];
    let stopped = model
        .generate(&batch, &bos, 6, &mut greedy(), Some(stop))
        .unwrap();
    assert_eq!(stopped[0], single[0][..2].to_vec());
    let cut = single[1].iter().position(|&t| t == stop).unwrap_or(6);
    assert_eq!(stopped[1], single[1][..cut].to_vec());

    // Nucleus sampling with a tiny top_p keeps only the best token: greedy again.
    let mut narrow = TokenSampler::new(Sampling::from_params(1.0, 1e-6), 5);
    assert_eq!(
        model.generate(&batch, &bos, 6, &mut narrow, None).unwrap(),
        single
    );
    // Seeded sampling at a high temperature is reproducible.
    let sample = |seed| {
        let mut s = TokenSampler::new(Sampling::from_params(5.0, 1.0), seed);
        model.generate(&batch, &bos, 6, &mut s, None).unwrap()
    };
    assert_eq!(sample(11), sample(11));
}

/// Bad inputs are errors, not panics.
#[test]
fn git_rejects_bad_inputs() {
    let model = load_fixture_model();
    let cfg = model.config().clone();
    let s = cfg.vision_config.image_size;
    let wrong = Tensor::zeros((1, 3, s + 16, s), DType::F32, &Device::Cpu).unwrap();
    assert!(model.image_features(&wrong).is_err());
    let pixels = Tensor::zeros((1, 3, s, s), DType::F32, &Device::Cpu).unwrap();
    let out_of_vocab = Tensor::new(&[[cfg.vocab_size as u32]], &Device::Cpu).unwrap();
    let err = model.forward(&pixels, &out_of_vocab).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let mut cache = model.new_cache(1);
    let bos = Tensor::new(&[[cfg.bos_token_id]], &Device::Cpu).unwrap();
    assert!(model.step(&bos, &mut cache).is_err());
    let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
    assert!(model.generate(&pixels, &[], 3, &mut sampler, None).is_err());
}

fn clip_case_names(all: &Value) -> Vec<String> {
    let mut names: Vec<String> = all["cases"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("clip_"))
        .cloned()
        .collect();
    names.sort();
    names
}

/// Our processor from the PNG vs transformers' CLIPImageProcessor (PIL backend).
fn check_clip_case(name: &str) {
    let dir = fixtures_dir().join("processors");
    let all = cases(&dir);
    let case = &all["cases"][name];
    assert!(case.is_object(), "no case {name}");
    let img = image::open(dir.join(case["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let hw: Vec<u32> = serde_json::from_value(case["input_size_hw"].clone()).unwrap();
    assert_eq!((img.height(), img.width()), (hw[0], hw[1]));

    let pc = &all["clip_processor_config"];
    let cfg = ClipProcessorConfig::from_json(&pc.to_string()).unwrap();
    let processor = ClipProcessor::new(cfg, Device::Cpu);
    let resized: Vec<u32> = serde_json::from_value(case["resized_hw"].clone()).unwrap();
    assert_eq!(
        processor.resized_size(img.width(), img.height()),
        (resized[1], resized[0])
    );
    let ours = processor.preprocess(&img).unwrap();
    let t = load_tensors(&dir.join(case["file"].as_str().unwrap()));
    let reference = &t["pixel_values"];
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    let max_tol = tier["pixel_values_max_abs_diff"].as_f64().unwrap() as f32;
    let mean_tol = tier["pixel_values_mean_abs_diff"].as_f64().unwrap();
    let d = max_abs_diff(&ours, reference);
    let mean = (&ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    println!("{name}: pixel_values max diff {d:e} (tol {max_tol}), mean {mean:e} (tol {mean_tol})");
    assert!(d <= max_tol, "{name}: max diff {d}");
    assert!(mean <= mean_tol, "{name}: mean diff {mean}");
}

#[test]
fn parity_processors_clip_vtest_frame() {
    check_clip_case("clip_vtest_frame");
}

#[test]
fn parity_processors_clip_synthetic() {
    check_clip_case("clip_synthetic");
}

#[test]
fn parity_processors_clip_small() {
    check_clip_case("clip_small");
}

/// Every `clip_*` case of the fixture set has a test above (other sets have the same names).
#[test]
fn parity_processors_clip_cases_are_covered() {
    let all = cases(&fixtures_dir().join("processors"));
    assert_eq!(
        clip_case_names(&all),
        ["clip_small", "clip_synthetic", "clip_vtest_frame"]
    );
}

/// `image_ops::resize_bicubic_u8` against every `resized_u8` the processor fixtures store
/// (Pillow's output; downscale, mixed and upscale cases).
#[test]
fn parity_processors_bicubic_resized_u8() {
    let dir = fixtures_dir().join("processors");
    let all = cases(&dir);
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    let max_tol = tier["resized_u8_max_abs_diff"].as_f64().unwrap();
    let mean_tol = tier["resized_u8_mean_abs_diff"].as_f64().unwrap();
    let mut checked = 0;
    for (name, case) in all["cases"].as_object().unwrap() {
        let t = load_tensors(&dir.join(case["file"].as_str().unwrap()));
        let Some(reference) = t.get("resized_u8") else {
            continue;
        };
        let (h, w, _) = reference.dims3().unwrap();
        let img = image::open(dir.join(case["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let ours = resize_bicubic_u8(&img, w as u32, h as u32).unwrap();
        let reference: Vec<u8> = reference.flatten_all().unwrap().to_vec1().unwrap();
        let diffs: Vec<f64> = ours
            .as_raw()
            .iter()
            .zip(&reference)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
            .collect();
        let max = diffs.iter().copied().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        println!("{name}: resized_u8 {w}x{h} max diff {max} (tol {max_tol}), mean {mean:e} (tol {mean_tol})");
        assert!(
            max <= max_tol && mean <= mean_tol,
            "{name}: max {max} mean {mean}"
        );
        checked += 1;
    }
    assert!(checked > 0, "no resized_u8 in the processor fixtures");
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The BERT tokenizer fetched by setup, if it is there and has the recorded hash.
fn bert_tokenizer(bert: &Value) -> Option<GitTokenizer> {
    let path = assets_dir().join("tokenizers/bert-base-uncased/tokenizer.json");
    if !path.is_file() {
        println!("SKIP: {} absent (run scripts/setup.sh)", path.display());
        return None;
    }
    let expected = bert["tokenizer_files"]["tokenizer.json"]["sha256"]
        .as_str()
        .unwrap();
    assert_eq!(sha256_hex(&path), expected, "{} hash", path.display());
    Some(GitTokenizer::from_file(&path).unwrap())
}

/// Word pieces of the fixture joined the way a caption should read.
fn join_tokens(tokens: &[String]) -> String {
    let mut out = String::new();
    for tok in tokens.iter().filter(|t| !t.starts_with('[')) {
        if let Some(piece) = tok.strip_prefix("##") {
            out.push_str(piece);
        } else if tok.len() == 1 && tok.chars().all(|c| c.is_ascii_punctuation()) {
            out.push_str(tok);
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(tok);
        }
    }
    out
}

#[test]
fn parity_tokenizers_bert_ids_and_decode() {
    let all = cases(&fixtures_dir().join("tokenizers"));
    let bert = &all["bert"];
    let Some(tok) = bert_tokenizer(bert) else {
        return;
    };
    assert_eq!(tok.token_id("[CLS]"), Some(101));
    assert_eq!(tok.token_id("[SEP]"), Some(102));
    for case in bert["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let plain: Vec<u32> =
            serde_json::from_value(case["ids_without_special_tokens"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(case["tokens"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids, "{text}");
        assert_eq!(tok.encode(text, false).unwrap(), plain, "{text}");
        // A generated caption: [CLS] ... [SEP] decodes to clean text.
        assert_eq!(tok.decode(&ids).unwrap(), join_tokens(&tokens), "{text}");
    }
}

/// Frames → captions through the processor, the tiny fixture model and the real tokenizer:
/// batched captions equal single ones and the decoded ids of `generate`.
#[test]
fn git_captioner_batches_frames() {
    let all = cases(&fixtures_dir().join("tokenizers"));
    let Some(tok) = bert_tokenizer(&all["bert"]) else {
        return;
    };
    let model = load_fixture_model();
    let size = model.config().vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let settings = CaptionSettings {
        max_new_tokens: 5,
        ..CaptionSettings::default()
    };
    let images = fixtures_dir().join("processors/images");
    let frames: Vec<_> = ["vtest_frame.png", "synthetic.png"]
        .iter()
        .map(|f| image::open(images.join(f)).unwrap().to_rgb8())
        .collect();
    let captioner =
        GitCaptioner::new(processor.clone(), tok.clone(), model.clone(), settings).unwrap();
    let both = captioner.caption(&frames).unwrap();
    assert_eq!(both.len(), 2);
    for (frame, caption) in frames.iter().zip(&both) {
        let one = captioner.caption(std::slice::from_ref(frame)).unwrap();
        assert_eq!(&one[0], caption);
        let cfg = model.config();
        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
        let ids = model
            .generate(
                &processor.preprocess(frame).unwrap(),
                &[cfg.bos_token_id],
                5,
                &mut sampler,
                Some(cfg.eos_token_id),
            )
            .unwrap()
            .remove(0);
        assert_eq!(caption, &tok.decode(&ids).unwrap());
        assert!(!caption.contains("[CLS]") && !caption.contains("[SEP]"));
    }
    // A processor for another image size is refused.
    let other = ClipProcessor::new(ClipProcessorConfig::square(size + 16), Device::Cpu);
    assert!(GitCaptioner::new(other, tok, model, settings).is_err());
}

/// Full-size git-base-coco (dummy weights, 4-bit): the real layout loads with every linear in
/// Q4K, and one frame goes through processor, vision tower and decoder to the requested number
/// of tokens. Timing and memory are measured by `benches/git_caption.rs`.
#[test]
fn git_base_coco_full_size_dummy_4bit() {
    let cfg = git_base_coco_config();
    let layout = GitModel::tensor_layout(&cfg);
    let source = DummySource::new("microsoft/git-base-coco", layout.clone(), DType::F32, 1);
    let params = source.parameter_count();
    // "177 M parameters" (model card): CLIP ViT-B/16 + 6-layer BERT decoder + untied head.
    assert!((176_500_000..177_500_000).contains(&params), "{params}");
    let linear_weights = layout
        .iter()
        .filter(|(name, shape)| shape.len() == 2 && !name.contains("embedding"))
        .count();
    let w = Weights::new(
        Box::new(source),
        Device::Cpu,
        QuantPolicy::four_bit(StorageDtype::F16),
    );
    let model = GitModel::load(&cfg, &w).unwrap();
    let report = w.report();
    assert_eq!(report.tensors_loaded, layout.len());
    assert!(
        report.fallback_tensors.is_empty(),
        "{:?}",
        report.fallback_tensors
    );
    assert_eq!(report.tensors_by_dtype[&StorageDtype::Q4K], linear_weights);
    let gib = report.total_bytes() as f64 / (1u64 << 30) as f64;
    assert!(gib < 0.15, "4-bit weights take {gib:.3} GiB");

    let frame = image::open(fixtures_dir().join("processors/images/vtest_frame.png"))
        .unwrap()
        .to_rgb8();
    let processor = ClipProcessor::new(ClipProcessorConfig::git_base_coco(), Device::Cpu);
    let pixels = processor.preprocess(&frame).unwrap();
    let features = model.image_features(&pixels).unwrap();
    assert_eq!(features.dims(), &[1, 197, 768]);
    let image = model.project_image_features(&features).unwrap();
    let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
    let ids = model
        .generate_from_embeddings(&image, &[cfg.bos_token_id], 4, &mut sampler, None)
        .unwrap();
    assert_eq!(ids[0].len(), 4);
    assert!(ids[0].iter().all(|&t| (t as usize) < cfg.vocab_size));
}

/// GIT behind the model-agnostic interface: one image through the shared loop gives the
/// batched loop's tokens (stop token excluded), the prompt is ignored, and anything but one
/// image is refused. Also through the model manager (tokenizer from the asset cache).
#[test]
fn git_vlm_captions_like_the_batch_loop() {
    use std::ops::ControlFlow;
    use std::sync::Arc;
    use surveil_models::generation::{GenerationParams, StopReason};
    use surveil_models::vlm::{NoHooks, OnToken, Vlm, VlmKind, VlmRequest};
    let all = cases(&fixtures_dir().join("tokenizers"));
    let Some(tok) = bert_tokenizer(&all["bert"]) else {
        return;
    };
    let model = load_fixture_model();
    let cfg = model.config().clone();
    let size = cfg.vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let vlm = surveil_models::git::GitVlm::new(
        "git-base-coco",
        Arc::new(model.clone()),
        processor.clone(),
        tok.clone(),
    )
    .unwrap();
    assert_eq!(vlm.kind(), VlmKind::Captioner);
    assert_eq!(vlm.model_id(), "git-base-coco");
    let images = fixtures_dir().join("processors/images");
    for file in ["vtest_frame.png", "synthetic.png"] {
        let frame = image::open(images.join(file)).unwrap().to_rgb8();
        let frames = [frame];
        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
        let pixels = processor.preprocess(&frames[0]).unwrap();
        // Without a stop token: exactly the batch loop's 8 tokens.
        let reference = model
            .generate(&pixels, &[cfg.bos_token_id], 8, &mut sampler, None)
            .unwrap()
            .remove(0);
        // Forbid [SEP] so the shared loop runs the full 8 tokens too.
        struct NoSep(u32);
        impl surveil_models::vlm::GenerationHooks for NoSep {
            fn mask_logits(&mut self, logits: &mut [f32]) -> surveil_models::Result<()> {
                logits[self.0 as usize] = f32::NEG_INFINITY;
                Ok(())
            }
        }
        let req = VlmRequest {
            images: &frames,
            system: None,
            prompt: "ignored",
        };
        let greedy = GenerationParams::greedy(8);
        let out = vlm
            .analyse(&req, &greedy, &mut NoSep(cfg.eos_token_id))
            .unwrap();
        if !reference.contains(&cfg.eos_token_id) {
            assert_eq!(out.tokens, reference, "{file}");
            assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
        }
        // With the stop rule: the captioner's batch of one and the batch loop with [SEP].
        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
        let stopped = model
            .generate(
                &pixels,
                &[cfg.bos_token_id],
                8,
                &mut sampler,
                Some(cfg.eos_token_id),
            )
            .unwrap()
            .remove(0);
        let mut streamed = String::new();
        let out = vlm
            .analyse(
                &req,
                &greedy,
                &mut OnToken(|_, piece: &str| {
                    streamed.push_str(piece);
                    ControlFlow::Continue(())
                }),
            )
            .unwrap();
        assert_eq!(out.tokens, stopped, "{file}");
        assert!(!out.tokens.contains(&cfg.eos_token_id));
        if out.tokens.len() < 8 {
            assert_eq!(out.stop_reason, StopReason::StopToken(cfg.eos_token_id));
        }
        assert_eq!(out.text, tok.decode(&stopped).unwrap());
        assert_eq!(streamed.trim(), out.text);
        assert_eq!(out.reasoning, None);
        assert_eq!(out.timings.generated_tokens, out.tokens.len());
        assert_eq!(
            out.timings.prompt_tokens,
            model.num_image_tokens() + 1,
            "image tokens + [CLS]"
        );
        // The prompt and system text change nothing for a captioner.
        let other = VlmRequest {
            images: &frames,
            system: Some("Be brief."),
            prompt: "What is happening?",
        };
        assert_eq!(
            vlm.analyse(&other, &greedy, &mut NoHooks).unwrap().tokens,
            stopped
        );
    }
    // Exactly one image.
    let frame = image::open(images.join("small.png")).unwrap().to_rgb8();
    for imgs in [vec![], vec![frame.clone(), frame]] {
        let req = VlmRequest {
            images: &imgs,
            system: None,
            prompt: "",
        };
        let err = vlm
            .analyse(&req, &GenerationParams::greedy(2), &mut NoHooks)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one image"), "{err}");
    }
}

/// The model manager builds the text side right after the weights: the fixture checkpoint has
/// no tokenizer, so the asset cache's is used, and `vlm()` answers like a hand-built GitVlm.
#[test]
fn git_manager_builds_the_vlm() {
    use surveil_models::generation::GenerationParams;
    use surveil_models::manager::{LoadOptions, ModelManager};
    use surveil_models::vlm::{NoHooks, VlmKind, VlmRequest};
    let all = cases(&fixtures_dir().join("tokenizers"));
    let Some(tok) = bert_tokenizer(&all["bert"]) else {
        return;
    };
    let opts = LoadOptions {
        weights: surveil_config::WeightsSpec::Dir(git_dir()),
        device: surveil_config::Device::Cpu,
        quant: surveil_config::Quant::F32,
        hub_cache: PathBuf::from("/nonexistent/hub"),
        model_dir: None,
        progress: None,
        dummy_seed: 0,
    };
    let mut m = ModelManager::new();
    let summary = m.load("git-base-coco", &opts).unwrap();
    assert_eq!(summary.checkpoint_dir.as_deref(), Some(git_dir().as_path()));
    assert!(m.memory().get("after_load").is_some());
    let vlm = m.vlm().unwrap();
    assert_eq!(vlm.kind(), VlmKind::Captioner);
    assert_eq!(vlm.model_id(), "git-base-coco");
    assert_eq!(vlm.tokenizer().stop_token_ids(), vec![102], "[SEP]");
    let frames = [
        image::open(fixtures_dir().join("processors/images/vtest_frame.png"))
            .unwrap()
            .to_rgb8(),
    ];
    let req = VlmRequest {
        images: &frames,
        system: None,
        prompt: "",
    };
    let out = vlm
        .analyse(&req, &GenerationParams::greedy(5), &mut NoHooks)
        .unwrap();
    let model = load_fixture_model();
    let size = model.config().vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let settings = CaptionSettings {
        max_new_tokens: 5,
        ..CaptionSettings::default()
    };
    let captioner = GitCaptioner::new(processor, tok, model, settings).unwrap();
    assert_eq!(out.tokens, captioner.caption_ids(&frames).unwrap()[0]);
    assert_eq!(out.text, captioner.caption(&frames).unwrap()[0]);
    m.unload();
    assert!(m.vlm().is_none());
}
