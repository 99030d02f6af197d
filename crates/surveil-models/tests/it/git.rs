//! GIT parity tests: the tiny GitForCausalLM fixture (`git/`), the CLIP processor cases
//! (`processors/`, CLIPImageProcessor) and the BERT tokenizer (`tokenizers/`, `bert`). Cases,
//! ids and tolerances are read from the fixtures; every output a case lists is compared.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::git::{
    git_base_coco_config, CaptionSettings, ClipProcessor, ClipProcessorConfig, GitCaptioner,
    GitConfig, GitModel, GitTokenizer,
};
use surveil_models::generation::{Sampling, TokenSampler};
use surveil_models::image_ops::resize_bicubic_u8;
use surveil_models::load::weights::{DummySource, SafetensorsSource, Weights};

use crate::common::{
    assert_close, asset, case_list, cases, check_quantized_greedy, correlation, fixture, floats,
    max_abs_diff_values, max_abs_tolerance, open_rgb, processor_cases, processor_images,
    sha256_hex, token_ids, tolerance, usizes, Tolerance,
};

fn load_fixture_model(dir: &Path) -> GitModel {
    let cfg = GitConfig::from_file(&dir.join("config.json")).unwrap();
    let source = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(
        Box::new(source),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    GitModel::load(&cfg, &w).unwrap()
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

/// Greedy decoding with the KV cache from `(pixels, ids)`: per step (batch of one), the id
/// chosen and the logits it was chosen from. The cache starts with room for one text token,
/// so it has to grow during the steps.
fn greedy_steps(
    model: &GitModel,
    pixels: &Tensor,
    ids: &Tensor,
    steps: usize,
) -> Vec<(u32, Vec<f32>)> {
    let image = model.image_embeddings(pixels).unwrap();
    let mut cache = model.new_cache(1);
    let mut logits = floats(&model.prefill(&image, ids, &mut cache).unwrap());
    let mut out = Vec::with_capacity(steps);
    for s in 0..steps {
        let token = surveil_models::generation::argmax(&logits);
        out.push((token, logits));
        if s + 1 == steps {
            break;
        }
        let next = Tensor::new(&[[token]], &Device::Cpu).unwrap();
        logits = floats(&model.step(&next, &mut cache).unwrap());
    }
    assert_eq!(cache.text_tokens(), ids.dim(1).unwrap() + steps - 1);
    out
}

/// Every case of the GIT fixture: image features, projection, prompt logits and greedy
/// decoding, each compared when the case lists it, with its tolerance.
#[test]
fn parity_git() {
    let Some(dir) = fixture("git") else {
        return;
    };
    let model = load_fixture_model(&dir);
    for case in case_list(&cases(&dir)) {
        let name = &case.name;
        let t = case.tensors(&dir);
        case.check_file(&t, &["inputs", "outputs"]);
        for input in case.listed("inputs") {
            if !matches!(input.as_str(), "pixel_values" | "input_ids") {
                case.unknown("input", &input);
            }
        }
        let pixels = &t["pixel_values"];
        let ids = &t["input_ids"];
        println!("git/{name}: {} prompt tokens", ids.dim(1).unwrap());
        if let Some(n) = case.spec["num_image_tokens"].as_u64() {
            assert_eq!(
                model.num_image_tokens() as u64,
                n,
                "git/{name}: num_image_tokens"
            );
        }
        let features = model.image_features(pixels).unwrap();
        let mut greedy = None;
        for output in case.listed("outputs") {
            let label = format!("git/{name}: {output}");
            let reference = &t[&output];
            match output.as_str() {
                "image_features" => {
                    let tl = max_abs_tolerance(&case, &output);
                    assert_close(&label, &features, reference, tl);
                }
                "projected_image_features" => {
                    let proj = model.project_image_features(&features).unwrap();
                    let tl = max_abs_tolerance(&case, &output);
                    assert_close(&label, &proj, reference, tl);
                }
                "logits" => {
                    let logits = model.forward(pixels, ids).unwrap();
                    let tl = max_abs_tolerance(&case, &output);
                    assert_close(&label, &logits, reference, tl);
                }
                "greedy_ids" | "greedy_step_logits" => {
                    let steps = reference.dim(1).unwrap();
                    let ours =
                        greedy.get_or_insert_with(|| greedy_steps(&model, pixels, ids, steps));
                    assert_eq!(ours.len(), steps, "{label}: steps");
                    if output == "greedy_ids" {
                        assert_eq!(tolerance(&case, &output), Tolerance::Exact, "{label}");
                        let expected = ids_of(reference);
                        let got: Vec<u32> = ours.iter().map(|(id, _)| *id).collect();
                        println!("{label}: {got:?}");
                        assert_eq!(got, expected[0], "{label}");
                        // `generate` gives the same ids (no EOS stopping, like the fixture).
                        let prompt = token_ids(ids);
                        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
                        let generated = model
                            .generate(pixels, &prompt, steps, &mut sampler, None)
                            .unwrap();
                        assert_eq!(generated, expected, "{label}: generate()");
                    } else {
                        let tl = max_abs_tolerance(&case, &output);
                        let mut worst = 0f32;
                        for (s, (_, row)) in ours.iter().enumerate() {
                            let r = floats(&reference.narrow(1, s, 1).unwrap());
                            let d = max_abs_diff_values(row, &r);
                            assert!(d <= tl, "{label}: step {s}: {d} > {tl} (first divergence)");
                            worst = worst.max(d);
                        }
                        println!("{label}: max_abs_diff {worst:.3e} (tolerance {tl:.0e})");
                    }
                }
                other => case.unknown("output", other),
            }
        }
    }
}

/// The half-precision path a GPU takes with f16 or bf16 weights (hidden states, KV cache and
/// attention scores in the weights' dtype; softmax and norms reduce in f32), run through the
/// same candle compositions on the CPU: on every case, the logits against the f32 reference
/// (correlation) and greedy ids that may leave the reference only at a near tie.
#[test]
fn parity_git_half_precision_activations() {
    let Some(dir) = fixture("git") else {
        return;
    };
    let cfg = GitConfig::from_file(&dir.join("config.json")).unwrap();
    // Floors: measured 0.99994 (bf16) and 0.999999 (f16) on the shared set; a broken dtype
    // path falls far lower.
    for (storage, dtype, floor) in [
        (StorageDtype::Bf16, DType::BF16, 0.995),
        (StorageDtype::F16, DType::F16, 0.999),
    ] {
        let source = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
        let w = Weights::new(
            Box::new(source),
            Device::Cpu,
            QuantPolicy::for_storage(storage),
        )
        .with_activations(dtype)
        .unwrap();
        let model = GitModel::load(&cfg, &w).unwrap();
        for case in case_list(&cases(&dir)) {
            let label = format!("{dtype:?} activations git/{}", case.name);
            let t = case.tensors(&dir);
            let (pixels, ids) = (&t["pixel_values"], &t["input_ids"]);
            assert_eq!(
                model.image_features(pixels).unwrap().dtype(),
                dtype,
                "{label}"
            );
            if case.lists("outputs", "logits") {
                let logits = model.forward(pixels, ids).unwrap();
                let r = correlation(&logits, &t["logits"]);
                println!("{label}: logits correlation {r:.6}");
                assert!(r > floor, "{label}: logits correlation {r} <= {floor}");
            }
            if case.lists("outputs", "greedy_ids") && case.lists("outputs", "greedy_step_logits") {
                let reference = &t["greedy_step_logits"];
                let steps = reference.dim(1).unwrap();
                let rows: Vec<Vec<f32>> = (0..steps)
                    .map(|s| floats(&reference.narrow(1, s, 1).unwrap()))
                    .collect();
                let ours = greedy_steps(&model, pixels, ids, steps);
                let expected = ids_of(&t["greedy_ids"]);
                let agree = check_quantized_greedy(&label, &ours, &expected[0], &rows);
                println!("{label}: greedy ids agree for {agree}/{steps} steps");
            }
        }
    }
}

/// The pixels of every case of the GIT fixture, in case-name order.
fn case_pixels(dir: &Path) -> Vec<Tensor> {
    case_list(&cases(dir))
        .iter()
        .map(|c| c.tensors(dir)["pixel_values"].clone())
        .collect()
}

/// Several frames in one batch give the same tokens as one at a time, and stopping at a token
/// truncates exactly there.
#[test]
fn git_generate_batches_and_stops() {
    let Some(dir) = fixture("git") else {
        return;
    };
    let model = load_fixture_model(&dir);
    // The cases' frames and a dimmed copy of the first: at least two frames.
    let mut pixels = case_pixels(&dir);
    pixels.push((&pixels[0] * 0.5).unwrap());
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

    // Stop at the third token of the first sequence: every sequence ends just before its first
    // occurrence of it.
    let stop = single[0][2];
    let stopped = model
        .generate(&batch, &bos, 6, &mut greedy(), Some(stop))
        .unwrap();
    for (i, (got, alone)) in stopped.iter().zip(&single).enumerate() {
        let cut = alone.iter().position(|&t| t == stop).unwrap_or(alone.len());
        assert_eq!(got, &alone[..cut].to_vec(), "frame {i}");
    }

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
    let Some(dir) = fixture("git") else {
        return;
    };
    let model = load_fixture_model(&dir);
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

/// Our processor from the PNG vs transformers' CLIPImageProcessor (PIL backend): the resized
/// size, the crop position and `pixel_values`, with the folder's own-resize tolerances.
fn check_clip_case(dir: &Path, all: &Value, case: &crate::common::Case) {
    let name = format!("processors/{}", case.name);
    let t = case.tensors(dir);
    case.check_file(&t, &["tensors"]);
    let img = open_rgb(&dir.join(case.spec["image"].as_str().unwrap()));
    if let Some(hw) = case.spec.get("input_size_hw") {
        assert_eq!(
            usizes(hw),
            [img.height() as usize, img.width() as usize],
            "{name}: input size"
        );
    }
    let pc = &all["clip_processor_config"];
    let cfg = ClipProcessorConfig::from_json(&pc.to_string()).unwrap();
    let processor = ClipProcessor::new(cfg.clone(), Device::Cpu);
    let (rw, rh) = processor.resized_size(img.width(), img.height());
    if let Some(resized) = case.spec.get("resized_hw") {
        assert_eq!(
            usizes(resized),
            [rh as usize, rw as usize],
            "{name}: resized_hw"
        );
    }
    if let Some(top_left) = case.spec.get("crop_top_left") {
        // The processor's crop is the resized image's window at the stated corner.
        let tl = usizes(top_left);
        let resized = resize_bicubic_u8(&img, rw, rh).unwrap();
        let window = image::imageops::crop_imm(
            &resized,
            tl[1] as u32,
            tl[0] as u32,
            cfg.crop_width,
            cfg.crop_height,
        )
        .to_image();
        assert_eq!(
            processor.resize_and_crop(&img).unwrap(),
            window,
            "{name}: crop at {tl:?}"
        );
    }
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    for tensor in case.listed("tensors") {
        let label = format!("{name}: {tensor}");
        match tensor.as_str() {
            "pixel_values" => {
                let ours = processor.preprocess(&img).unwrap();
                let reference = &t[&tensor];
                let max_tol = tier["pixel_values_max_abs_diff"].as_f64().unwrap() as f32;
                let mean_tol = tier["pixel_values_mean_abs_diff"].as_f64().unwrap();
                assert_close(&label, &ours, reference, max_tol);
                let (a, b) = (floats(&ours), floats(reference));
                let mean = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| f64::from((x - y).abs()))
                    .sum::<f64>()
                    / a.len() as f64;
                println!("{label}: mean {mean:e} (tolerance {mean_tol})");
                assert!(mean <= mean_tol, "{label}: mean diff {mean}");
            }
            other => case.unknown("tensor", other),
        }
    }
}

#[test]
fn parity_processors_clip() {
    let Some(dir) = fixture("processors") else {
        return;
    };
    let all = cases(&dir);
    for case in processor_cases(&all, "CLIPImageProcessor") {
        check_clip_case(&dir, &all, &case);
    }
}

/// `image_ops::resize_bicubic_u8` against every `resized_u8` the processor fixtures store
/// (Pillow's output; downscale, mixed and upscale cases).
#[test]
fn parity_processors_bicubic_resized_u8() {
    let Some(dir) = fixture("processors") else {
        return;
    };
    let all = cases(&dir);
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    let max_tol = tier["resized_u8_max_abs_diff"].as_f64().unwrap();
    let mean_tol = tier["resized_u8_mean_abs_diff"].as_f64().unwrap();
    let mut checked = 0;
    for case in case_list(&all) {
        let name = &case.name;
        let t = case.tensors(&dir);
        let Some(reference) = t.get("resized_u8") else {
            continue;
        };
        let (h, w, _) = reference.dims3().unwrap();
        let img = open_rgb(&dir.join(case.spec["image"].as_str().unwrap()));
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

/// The BERT tokenizer fetched by setup (its hash checked against the fixture's record), or
/// `None` when the asset is absent on a developer's machine (a failure under CI).
fn bert_tokenizer(bert: &Value) -> Option<GitTokenizer> {
    let path = asset("tokenizers/bert-base-uncased/tokenizer.json")?;
    let expected = bert["tokenizer_files"]["tokenizer.json"]["sha256"]
        .as_str()
        .unwrap();
    assert_eq!(sha256_hex(&path), expected, "{} hash", path.display());
    Some(GitTokenizer::from_file(&path).unwrap())
}

/// The fixture's BERT record and the tokenizer, or `None` (see [`bert_tokenizer`]).
fn bert() -> Option<(Value, GitTokenizer)> {
    let dir = fixture("tokenizers")?;
    let bert = cases(&dir)["bert"].clone();
    let tok = bert_tokenizer(&bert)?;
    Some((bert, tok))
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
    let Some((bert, tok)) = bert() else {
        return;
    };
    let list = bert["cases"].as_array().expect("bert cases");
    assert!(!list.is_empty(), "the fixture lists no bert case");
    for case in list {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let plain: Vec<u32> =
            serde_json::from_value(case["ids_without_special_tokens"].clone()).unwrap();
        let tokens: Vec<String> = serde_json::from_value(case["tokens"].clone()).unwrap();
        assert_eq!(tokens.len(), ids.len(), "{text}: tokens vs ids");
        // Every token, [CLS] and [SEP] included, has the listed id.
        for (t, &id) in tokens.iter().zip(&ids) {
            assert_eq!(tok.token_id(t), Some(id), "{text}: {t}");
        }
        assert_eq!(tok.encode(text, true).unwrap(), ids, "{text}");
        assert_eq!(tok.encode(text, false).unwrap(), plain, "{text}");
        // A generated caption: [CLS] ... [SEP] decodes to clean text.
        assert_eq!(tok.decode(&ids).unwrap(), join_tokens(&tokens), "{text}");
        println!("bert: {text:?} {} ids", ids.len());
    }
}

/// Frames → captions through the processor, the tiny fixture model and the real tokenizer:
/// batched captions equal single ones and the decoded ids of `generate`.
#[test]
fn git_captioner_batches_frames() {
    let (Some(dir), Some(processors), Some((_, tok))) =
        (fixture("git"), fixture("processors"), bert())
    else {
        return;
    };
    let model = load_fixture_model(&dir);
    let size = model.config().vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let settings = CaptionSettings {
        max_new_tokens: 5,
        ..CaptionSettings::default()
    };
    // The two largest fixture images.
    let frames: Vec<_> = processor_images(&processors)
        .iter()
        .rev()
        .take(2)
        .map(|p| open_rgb(p))
        .collect();
    let captioner =
        GitCaptioner::new(processor.clone(), tok.clone(), model.clone(), settings).unwrap();
    let both = captioner.caption(&frames).unwrap();
    assert_eq!(both.len(), frames.len());
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

    let Some(processors) = fixture("processors") else {
        return;
    };
    let frame = open_rgb(processor_images(&processors).last().unwrap());
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
    let (Some(dir), Some(processors), Some((_, tok))) =
        (fixture("git"), fixture("processors"), bert())
    else {
        return;
    };
    let model = load_fixture_model(&dir);
    let cfg = model.config().clone();
    let size = cfg.vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let vlm = surveil_models::arch::git::GitVlm::new(
        "git-base-coco",
        Arc::new(model.clone()),
        processor.clone(),
        tok.clone(),
    )
    .unwrap();
    assert_eq!(vlm.kind(), VlmKind::Captioner);
    assert_eq!(vlm.model_id(), "git-base-coco");
    let images = processor_images(&processors);
    for file in images.iter().rev().take(2) {
        let frame = open_rgb(file);
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
            assert_eq!(out.tokens, reference, "{}", file.display());
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
        assert_eq!(out.tokens, stopped, "{}", file.display());
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
    let frame = open_rgb(&images[0]);
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
    use surveil_models::load::manager::{LoadOptions, ModelManager};
    use surveil_models::vlm::{NoHooks, VlmKind, VlmRequest};
    let (Some(dir), Some(processors), Some((_, tok))) =
        (fixture("git"), fixture("processors"), bert())
    else {
        return;
    };
    let opts = LoadOptions {
        weights: surveil_config::WeightsSpec::Dir(dir.clone()),
        device: surveil_config::Device::Cpu,
        storage: surveil_config::StorageDtype::F32,
        threads: None,
        hub_cache: PathBuf::from("/nonexistent/hub"),
        model_dir: None,
        assets: surveil_config::paths::assets_dir(),
        progress: None,
        dummy_seed: 0,
    };
    let mut m = ModelManager::new();
    let summary = m.load("git-base-coco", &opts).unwrap();
    assert_eq!(summary.checkpoint_dir.as_deref(), Some(dir.as_path()));
    assert!(m.memory().get("after_load").is_some());
    let vlm = m.vlm().unwrap();
    assert_eq!(vlm.kind(), VlmKind::Captioner);
    assert_eq!(vlm.model_id(), "git-base-coco");
    let eos = GitConfig::from_file(&dir.join("config.json"))
        .unwrap()
        .eos_token_id;
    assert_eq!(tok.token_id("[SEP]"), Some(eos));
    assert_eq!(vlm.tokenizer().stop_token_ids(), vec![eos], "[SEP]");
    let frames = [open_rgb(processor_images(&processors).last().unwrap())];
    let req = VlmRequest {
        images: &frames,
        system: None,
        prompt: "",
    };
    let out = vlm
        .analyse(&req, &GenerationParams::greedy(5), &mut NoHooks)
        .unwrap();
    let model = load_fixture_model(&dir);
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
