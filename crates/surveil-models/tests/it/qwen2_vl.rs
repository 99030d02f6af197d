//! Qwen2-VL parity tests against `../shared/fixtures/qwen2_vl` (random tiny weights, reference =
//! transformers), plus quantized runs and bad-input checks. Everything (shapes, ids,
//! tolerances) is read from `cases.json`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::qwen2_vl::{
    render_chat, tensor_layout, ChatMessage, ContentPart, GenerationParams, GridThw, Logits,
    MultimodalInput, Qwen2VlConfig, Qwen2VlImageProcessor, Qwen2VlModel, Qwen2VlTokenizer,
    StopReason,
};
use surveil_models::vlm::{GenerationHooks, NoHooks, OnToken};
use surveil_models::weights::{DummySource, SafetensorsSource, Weights};

use crate::common::{cases, fixtures_dir, load_tensors, max_abs_diff};

fn folder() -> PathBuf {
    fixtures_dir().join("qwen2_vl")
}

fn config() -> Qwen2VlConfig {
    Qwen2VlConfig::from_file(&folder().join("config.json")).expect("config.json")
}

fn load_model(policy: QuantPolicy) -> Qwen2VlModel {
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).expect("weights");
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    Qwen2VlModel::load(&config(), &w).expect("load")
}

/// Forbids one token at every step.
struct ForbidToken(u32);

impl GenerationHooks for ForbidToken {
    fn mask_logits(&mut self, logits: &mut [f32]) -> surveil_models::Result<()> {
        logits[self.0 as usize] = f32::NEG_INFINITY;
        Ok(())
    }
}

fn f32_policy() -> QuantPolicy {
    QuantPolicy::unquantized(StorageDtype::F32)
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn tol(case: &serde_json::Value, tensor: &str) -> f32 {
    case["tolerance"][tensor]["max_abs_diff"]
        .as_f64()
        .unwrap_or_else(|| panic!("no tolerance for {tensor}")) as f32
}

/// The prompt of a case: ids, pixel values and grids.
fn input_of(t: &HashMap<String, Tensor>) -> MultimodalInput {
    let input_ids: Vec<u32> = ids_of(&t["input_ids"]).iter().map(|&x| x as u32).collect();
    let grids: Vec<GridThw> = match t.get("image_grid_thw") {
        Some(g) => ids_of(g)
            .chunks(3)
            .map(|c| GridThw::new(c[0] as usize, c[1] as usize, c[2] as usize))
            .collect(),
        None => Vec::new(),
    };
    MultimodalInput {
        input_ids,
        pixel_values: t.get("pixel_values").cloned(),
        image_grids: grids,
        ..Default::default()
    }
}

fn case_names() -> Vec<String> {
    let c = cases(&folder());
    let mut names: Vec<String> = c["cases"].as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
}

/// Greedy ids without EOS stopping, plus the logits that produced each of them.
fn greedy_with_logits(
    model: &Qwen2VlModel,
    input: &MultimodalInput,
    steps: usize,
) -> (Vec<u32>, Vec<Tensor>) {
    let mut state = model.prefill(input, Logits::Last).unwrap();
    let first = state.rope.next_position();
    let mut logits = state.logits.flatten_all().unwrap();
    let mut ids = Vec::new();
    let mut step_logits = Vec::new();
    for pos in (first..).take(steps) {
        let v: Vec<f32> = logits.to_vec1().unwrap();
        let tok = surveil_models::generation::argmax(&v);
        ids.push(tok);
        step_logits.push(logits.clone());
        logits = model
            .decode_step(tok, pos, &mut state.cache)
            .unwrap()
            .flatten_all()
            .unwrap();
    }
    (ids, step_logits)
}

fn check_case(model: &Qwen2VlModel, name: &str) {
    let all = cases(&folder());
    let case = &all["cases"][name];
    let t = load_tensors(&folder().join(case["file"].as_str().unwrap()));
    let input = input_of(&t);
    let n = input.input_ids.len();

    // M-RoPE position ids and deltas: exact.
    let rope = model.rope_index(&input).unwrap();
    let expected = ids_of(&t["position_ids"]);
    let ours: Vec<i64> = rope.positions.iter().flatten().copied().collect();
    assert_eq!(ours, expected, "{name}: position_ids");
    assert_eq!(
        vec![rope.delta],
        ids_of(&t["rope_deltas"]),
        "{name}: rope_deltas"
    );

    // Vision tower: before and after the merger.
    if let Some(pixels) = &input.pixel_values {
        let out = model
            .vision()
            .forward_with_hidden(pixels, &input.image_grids)
            .unwrap();
        let d = max_abs_diff(&out.last_hidden, &t["vision_last_hidden"]);
        let tl = tol(case, "vision_last_hidden");
        println!("{name}: vision_last_hidden max_abs_diff {d:.3e} (tolerance {tl:.0e})");
        assert!(d <= tl, "{name}: vision_last_hidden {d} > {tl}");
        let d = max_abs_diff(&out.embeds, &t["image_embeds"]);
        let tl = tol(case, "image_embeds");
        println!("{name}: image_embeds max_abs_diff {d:.3e} (tolerance {tl:.0e})");
        assert!(d <= tl, "{name}: image_embeds {d} > {tl}");
    }

    // Full prompt logits.
    let state = model.prefill(&input, Logits::All).unwrap();
    let tl = tol(case, "logits");
    let d = max_abs_diff(&state.logits, &t["logits"]);
    println!("{name}: logits max_abs_diff {d:.3e} (tolerance {tl:.0e}), {n} tokens");
    assert!(d <= tl, "{name}: logits {d} > {tl}");

    // Greedy ids with the KV cache (no EOS stopping) and the logits of every step.
    let expected_ids: Vec<u32> = ids_of(&t["greedy_ids"]).iter().map(|&x| x as u32).collect();
    let (ids, step_logits) = greedy_with_logits(model, &input, expected_ids.len());
    let ref_steps = &t["greedy_step_logits"];
    let mut worst = 0f32;
    for (k, l) in step_logits.iter().enumerate() {
        let r = ref_steps.narrow(1, k, 1).unwrap().flatten_all().unwrap();
        let d = max_abs_diff(l, &r);
        assert!(
            d <= tl,
            "{name}: greedy step {k} logits {d} > {tl} (first divergence)"
        );
        worst = worst.max(d);
    }
    println!("{name}: greedy_step_logits max_abs_diff {worst:.3e} (tolerance {tl:.0e})");
    assert_eq!(ids, expected_ids, "{name}: greedy ids");

    // The public generate() gives the same ids when no stop token is set.
    let out = model
        .generate(
            &input,
            &GenerationParams::greedy(expected_ids.len()),
            &[],
            None,
            &mut NoHooks,
        )
        .unwrap();
    assert_eq!(out.tokens, expected_ids, "{name}: generate()");
    assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
}

#[test]
fn parity_qwen2_vl_multimodal() {
    check_case(&load_model(f32_policy()), "multimodal");
}

#[test]
fn parity_qwen2_vl_text_only() {
    check_case(&load_model(f32_policy()), "text_only");
}

#[test]
fn parity_qwen2_vl_config_layouts_agree() {
    let nested = config();
    let flat = Qwen2VlConfig::from_file(&folder().join("config_hub_flat.json")).unwrap();
    assert_eq!(nested, flat);
    // The special ids of the config match the fixture's table.
    let c = cases(&folder());
    let special = &c["special_token_ids"];
    assert_eq!(
        special["<|image_pad|>"].as_u64(),
        Some(nested.image_token_id as u64)
    );
    assert_eq!(
        special["<|video_pad|>"].as_u64(),
        Some(nested.video_token_id as u64)
    );
    assert_eq!(
        special["<|vision_start|>"].as_u64(),
        Some(nested.vision_start_token_id as u64)
    );
    assert_eq!(
        special["<|vision_end|>"].as_u64(),
        Some(nested.vision_end_token_id as u64)
    );
}

#[test]
fn parity_qwen2_vl_flat_config_gives_identical_logits() {
    let flat = Qwen2VlConfig::from_file(&folder().join("config_hub_flat.json")).unwrap();
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).unwrap();
    let w = Weights::new(Box::new(src), Device::Cpu, f32_policy());
    let model_flat = Qwen2VlModel::load(&flat, &w).unwrap();
    let model = load_model(f32_policy());
    let t = load_tensors(&folder().join("case_text_only.safetensors"));
    let input = input_of(&t);
    let a = model.prefill(&input, Logits::All).unwrap().logits;
    let b = model_flat.prefill(&input, Logits::All).unwrap().logits;
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// Pearson correlation of two tensors' values.
fn correlation(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(&b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

#[test]
fn parity_qwen2_vl_quantized_q8_0_greedy_ids() {
    let policy = QuantPolicy {
        linear: StorageDtype::Q8_0,
        float: StorageDtype::F32,
    };
    let model = load_model(policy);
    for name in case_names() {
        let case = &cases(&folder())["cases"][&name];
        let t = load_tensors(&folder().join(case["file"].as_str().unwrap()));
        let input = input_of(&t);
        let expected: Vec<u32> = ids_of(&t["greedy_ids"]).iter().map(|&x| x as u32).collect();
        let (ids, _) = greedy_with_logits(&model, &input, expected.len());
        let logits = model.prefill(&input, Logits::All).unwrap().logits;
        println!(
            "q8_0 {name}: logits max_abs_diff {:.3e}, correlation {:.6}",
            max_abs_diff(&logits, &t["logits"]),
            correlation(&logits, &t["logits"])
        );
        assert_eq!(ids, expected, "q8_0 {name}: greedy ids");
    }
}

/// 4-bit on the tiny fixture: its rows (64 and 128 wide) are too short for Q4K blocks (256), so
/// the policy falls back to Q4_0 for every linear weight. 4-bit weights on 64-wide random rows
/// move the logits a lot (measured correlation 0.927 with the reference); the Q4K path itself
/// is checked on 256-wide rows in `qwen2_vl_q4k_logits_correlate_with_f32`.
#[test]
fn parity_qwen2_vl_quantized_4bit_falls_back_to_q4_0() {
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).unwrap();
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::four_bit(StorageDtype::F32),
    );
    let model = Qwen2VlModel::load(&config(), &w).unwrap();
    let report = w.report();
    println!(
        "4-bit load: {:?}, fallbacks {:?}",
        report.tensors_by_dtype, report.fallback_tensors
    );
    assert!(!report.tensors_by_dtype.contains_key(&StorageDtype::Q4K));
    assert!(
        report
            .tensors_by_dtype
            .get(&StorageDtype::Q4_0)
            .copied()
            .unwrap_or(0)
            > 0
    );
    for name in case_names() {
        let case = &cases(&folder())["cases"][&name];
        let t = load_tensors(&folder().join(case["file"].as_str().unwrap()));
        let input = input_of(&t);
        let logits = model.prefill(&input, Logits::All).unwrap().logits;
        let r = correlation(&logits, &t["logits"]);
        let expected: Vec<u32> = ids_of(&t["greedy_ids"]).iter().map(|&x| x as u32).collect();
        let (ids, _) = greedy_with_logits(&model, &input, expected.len());
        let same = ids.iter().zip(&expected).filter(|(a, b)| a == b).count();
        println!(
            "q4_0 {name}: logits correlation {r:.5}, max_abs_diff {:.3e}, greedy ids equal {same}/{}",
            max_abs_diff(&logits, &t["logits"]),
            expected.len()
        );
        assert!(r > 0.9, "q4_0 {name}: correlation {r}");
    }
}

/// A small Qwen2-VL whose rows divide by 256, with dummy weights: Q4K vs f32 logits.
#[test]
fn qwen2_vl_q4k_logits_correlate_with_f32() {
    let mut cfg = config();
    cfg.text.hidden_size = 256;
    cfg.text.intermediate_size = 512;
    cfg.text.num_attention_heads = 4;
    cfg.text.num_key_value_heads = 2;
    cfg.text.mrope_section = [8, 12, 12];
    cfg.vision.embed_dim = 256;
    cfg.vision.num_heads = 4;
    cfg.vision.out_hidden_size = 256;
    cfg.validate().unwrap();
    let load = |policy: QuantPolicy| {
        let src = DummySource::new("qwen2-vl-small", tensor_layout(&cfg), DType::F32, 11);
        let w = Weights::new(Box::new(src), Device::Cpu, policy);
        let m = Qwen2VlModel::load(&cfg, &w).unwrap();
        (m, w.report())
    };
    let (f32_model, _) = load(f32_policy());
    let (q_model, report) = load(QuantPolicy::four_bit(StorageDtype::F16));
    println!("q4k load: {:?}", report.tensors_by_dtype);
    assert!(report.tensors_by_dtype[&StorageDtype::Q4K] > 0);
    // A prompt with one 4x4-patch image and text around it.
    let grid = GridThw::new(1, 4, 4);
    let mut ids: Vec<u32> = (10..30).collect();
    ids.push(cfg.vision_start_token_id);
    ids.extend(std::iter::repeat_n(
        cfg.image_token_id,
        grid.merged_tokens(2),
    ));
    ids.push(cfg.vision_end_token_id);
    ids.extend(40..60);
    let n = grid.patches() * cfg.vision.patch_dim();
    let pixels: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let input = MultimodalInput {
        input_ids: ids,
        pixel_values: Some(
            Tensor::from_vec(
                pixels,
                (grid.patches(), cfg.vision.patch_dim()),
                &Device::Cpu,
            )
            .unwrap(),
        ),
        image_grids: vec![grid],
        ..Default::default()
    };
    let a = f32_model.prefill(&input, Logits::All).unwrap().logits;
    let b = q_model.prefill(&input, Logits::All).unwrap().logits;
    let r = correlation(&a, &b);
    println!("q4k vs f32 (dummy weights, 256-wide rows): logits correlation {r:.5}");
    assert!(r > 0.99, "q4k correlation {r}");
    // Decoding one token with the KV cache (the fused single-row kernels) gives the logits a
    // full recompute of the longer prompt gives.
    let mut longer = input.clone();
    longer.input_ids.push(77);
    let full = q_model.prefill(&longer, Logits::All).unwrap().logits;
    let full_last = full
        .narrow(1, longer.input_ids.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let mut state = q_model.prefill(&input, Logits::Last).unwrap();
    let step = q_model
        .decode_step(77, state.rope.next_position(), &mut state.cache)
        .unwrap()
        .flatten_all()
        .unwrap();
    let d = max_abs_diff(&step, &full_last);
    let scale = full_last
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!(
        "q4k decode step vs full recompute: max_abs_diff {d:.3e} (logits abs max {scale:.3e})"
    );
    assert!(d <= 1e-3 * scale.max(1e-6), "decode vs recompute {d}");
}

#[test]
fn qwen2_vl_rejects_bad_prompts() {
    let model = load_model(f32_policy());
    let cfg = model.config().clone();
    let params = GenerationParams::greedy(2);
    let go = |input: &MultimodalInput| model.generate(input, &params, &[], None, &mut NoHooks);

    // Empty prompt.
    let err = go(&MultimodalInput::default()).unwrap_err().to_string();
    assert!(err.contains("empty prompt"), "{err}");

    // Longer than the context.
    let long = MultimodalInput {
        input_ids: vec![1; cfg.text.max_position_embeddings + 1],
        ..Default::default()
    };
    let err = go(&long).unwrap_err().to_string();
    assert!(err.contains("does not fit the context"), "{err}");

    // More image placeholder runs than images: the multimodal case with its second image removed.
    let t = load_tensors(&folder().join("case_multimodal.safetensors"));
    let mut input = input_of(&t);
    let first = input.image_grids[0];
    input.image_grids.truncate(1);
    input.pixel_values = Some(
        input
            .pixel_values
            .unwrap()
            .narrow(0, 0, first.patches())
            .unwrap(),
    );
    let err = go(&input).unwrap_err().to_string();
    assert!(err.contains("more image placeholders than images"), "{err}");

    // Image tokens without any pixels.
    let mut input = input_of(&t);
    input.pixel_values = None;
    input.image_grids.clear();
    assert!(go(&input).is_err());

    // Token ids outside the vocabulary.
    let bad = MultimodalInput {
        input_ids: vec![cfg.text.vocab_size as u32],
        ..Default::default()
    };
    let err = go(&bad).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn qwen2_vl_stop_tokens_and_streaming() {
    let model = load_model(f32_policy());
    let t = load_tensors(&folder().join("case_text_only.safetensors"));
    let input = input_of(&t);
    let expected: Vec<u32> = ids_of(&t["greedy_ids"]).iter().map(|&x| x as u32).collect();
    // Stop at the third greedy token: the output ends just before its first occurrence.
    let stop = expected[2];
    let first_hit = expected.iter().position(|&x| x == stop).unwrap();
    let mut streamed = Vec::new();
    let out = model
        .generate(
            &input,
            &GenerationParams::greedy(8),
            &[stop],
            None,
            &mut OnToken(|tok, _: &str| {
                streamed.push(tok);
                ControlFlow::Continue(())
            }),
        )
        .unwrap();
    assert_eq!(out.tokens, expected[..first_hit].to_vec());
    assert_eq!(out.stop_reason, StopReason::StopToken(stop));
    assert_eq!(streamed, out.tokens);
    assert_eq!(out.stats.generated_tokens, first_hit);
    assert_eq!(out.stats.prompt_tokens, input.input_ids.len());
    // The callback can cancel: the token it saw is kept.
    let out = model
        .generate(
            &input,
            &GenerationParams::greedy(8),
            &[],
            None,
            &mut OnToken(|_, _: &str| ControlFlow::Break(())),
        )
        .unwrap();
    assert_eq!(out.tokens, expected[..1].to_vec());
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    // A mask forbidding the greedy first token makes the runner-up come first.
    let state = model.prefill(&input, Logits::Last).unwrap();
    let first: Vec<f32> = state.logits.flatten_all().unwrap().to_vec1().unwrap();
    let mut ranked: Vec<u32> = (0..first.len() as u32).collect();
    ranked.sort_by(|&a, &b| {
        first[b as usize]
            .total_cmp(&first[a as usize])
            .then(a.cmp(&b))
    });
    assert_eq!(ranked[0], expected[0]);
    let out = model
        .generate(
            &input,
            &GenerationParams::greedy(1),
            &[],
            None,
            &mut ForbidToken(expected[0]),
        )
        .unwrap();
    assert_eq!(out.tokens, vec![ranked[1]]);
    // Seeded sampling is reproducible.
    let params = GenerationParams {
        max_new_tokens: 6,
        sampling: surveil_models::generation::Sampling::from_params(0.8, 0.9),
        seed: 7,
    };
    let a = model
        .generate(&input, &params, &[], None, &mut NoHooks)
        .unwrap();
    let b = model
        .generate(&input, &params, &[], None, &mut NoHooks)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 6);
}

// ----- processors ---------------------------------------------------------------------------

fn processors_dir() -> PathBuf {
    fixtures_dir().join("processors")
}

/// The `<= number` inside a tolerance sentence such as "... (max_abs_diff <= 1e-6)".
fn number_after_le(text: &str) -> f64 {
    let rest = &text[text.find("<=").expect("no <= in tolerance text") + 2..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("cannot parse a number in {text:?}"))
}

fn u8_image(t: &Tensor) -> image::RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    let data: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Compare our `pixel_values` (`rows × dim`, row-major) with a case's full tensor or its
/// sampled rows and sums. Returns (max abs diff, mean abs diff, row sum diff, col sum diff).
fn compare_pixels(ours: &[f32], dim: usize, t: &HashMap<String, Tensor>) -> (f64, f64, f64, f64) {
    let n = ours.len() / dim;
    let (mut max, mut sum, mut count) = (0f64, 0f64, 0usize);
    let mut cmp = |row: usize, reference: &[f32]| {
        for (a, b) in ours[row * dim..(row + 1) * dim].iter().zip(reference) {
            let d = (*a as f64 - *b as f64).abs();
            max = max.max(d);
            sum += d;
            count += 1;
        }
    };
    let (mut row_diff, mut col_diff) = (0f64, 0f64);
    if let Some(full) = t.get("pixel_values") {
        let full: Vec<f32> = full.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(full.len(), ours.len(), "pixel_values size");
        for r in 0..n {
            cmp(r, &full[r * dim..(r + 1) * dim]);
        }
    } else {
        let rows: Vec<f32> = t["pixel_values_rows"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (k, &r) in ids_of(&t["pixel_values_row_index"]).iter().enumerate() {
            cmp(r as usize, &rows[k * dim..(k + 1) * dim]);
        }
        let row_sums = f64s(&t["pixel_values_row_sums"]);
        let col_sums = f64s(&t["pixel_values_col_sums"]);
        assert_eq!(row_sums.len(), n, "number of patches");
        let mut cols = vec![0f64; dim];
        for r in 0..n {
            let row = &ours[r * dim..(r + 1) * dim];
            let s: f64 = row.iter().map(|&x| x as f64).sum();
            row_diff = row_diff.max((s - row_sums[r]).abs());
            for (c, &x) in cols.iter_mut().zip(row) {
                *c += x as f64;
            }
        }
        for (a, b) in cols.iter().zip(&col_sums) {
            col_diff = col_diff.max((a - b).abs());
        }
    }
    (max, sum / count as f64, row_diff, col_diff)
}

fn check_processor_case(name: &str) {
    let all = cases(&processors_dir());
    let case = &all["cases"][name];
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    let exact_tol = number_after_le(all["tolerance"]["exact_path"].as_str().unwrap());
    let t = load_tensors(&processors_dir().join(case["file"].as_str().unwrap()));
    let default = Qwen2VlImageProcessor::default();
    let proc = match case["processor_kwargs"]["size"].as_object() {
        Some(size) => Qwen2VlImageProcessor::with_pixels(
            size["shortest_edge"].as_u64().unwrap() as usize,
            size["longest_edge"].as_u64().unwrap() as usize,
        )
        .unwrap(),
        None => default.clone(),
    };
    let img = image::open(processors_dir().join(case["image"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let ours = proc.preprocess_image(&img).unwrap();
    let g = ids_of(&t["image_grid_thw"]);
    assert_eq!(
        vec![ours.grid.t as i64, ours.grid.h as i64, ours.grid.w as i64],
        g,
        "{name}: image_grid_thw"
    );
    let hw: Vec<usize> = case["resized_hw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        vec![ours.resized_hw.0, ours.resized_hw.1],
        hw,
        "{name}: resized size"
    );

    // Exact path: from the reference's resized uint8 image (stored, or the default setting's
    // when this setting gives the same image).
    let resized = t.get("resized_u8").cloned().or_else(|| {
        if case["identical_to_default_setting"].as_bool() == Some(true) {
            let default_name = name
                .rsplit_once("_max_pixels")
                .map(|(base, _)| format!("{base}_default"))?;
            let dcase = &all["cases"][&default_name];
            load_tensors(&processors_dir().join(dcase["file"].as_str()?))
                .get("resized_u8")
                .cloned()
        } else {
            None
        }
    });
    if let Some(resized) = resized {
        let reference_img = u8_image(&resized);
        let exact = proc.patchify(std::slice::from_ref(&reference_img)).unwrap();
        let (max, _, rows, cols) = compare_pixels(&exact.pixel_values, exact.patch_dim, &t);
        println!("{name}: exact path max_abs_diff {max:.2e} (tolerance {exact_tol:.0e}), sums {rows:.2e}/{cols:.2e}");
        assert!(max <= exact_tol, "{name}: exact path {max}");
        // Our resize against the reference's uint8 image.
        let mine =
            surveil_models::image_ops::resize_bicubic_u8(&img, hw[1] as u32, hw[0] as u32).unwrap();
        let diffs: Vec<i32> = mine
            .as_raw()
            .iter()
            .zip(reference_img.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .collect();
        let max_u8 = diffs.iter().copied().max().unwrap_or(0);
        let mean_u8 = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        println!("{name}: resize vs PIL max {max_u8} / mean {mean_u8:.4} uint8 levels");
        assert!(max_u8 as f64 <= tier["resized_u8_max_abs_diff"].as_f64().unwrap());
        assert!(mean_u8 <= tier["resized_u8_mean_abs_diff"].as_f64().unwrap());
    } else {
        println!("{name}: no resized_u8 stored for this setting; checking the full pipeline only");
    }

    // Full pipeline with our own resize.
    let (max, mean, rows, cols) = compare_pixels(&ours.pixel_values, ours.patch_dim, &t);
    println!("{name}: pixel_values max {max:.3e} mean {mean:.2e}, row sums {rows:.3e}, col sums {cols:.3e}");
    assert!(
        max <= tier["pixel_values_max_abs_diff"].as_f64().unwrap(),
        "{name}: max {max}"
    );
    assert!(
        mean <= tier["pixel_values_mean_abs_diff"].as_f64().unwrap(),
        "{name}: mean {mean}"
    );
    assert!(
        rows <= tier["row_sum_abs_diff"].as_f64().unwrap(),
        "{name}: row sums {rows}"
    );
    assert!(
        cols <= tier["col_sum_abs_diff"].as_f64().unwrap(),
        "{name}: col sums {cols}"
    );
}

#[test]
fn parity_processors_qwen2vl_vtest_frame_default() {
    check_processor_case("qwen2vl_vtest_frame_default");
}

#[test]
fn parity_processors_qwen2vl_vtest_frame_max_pixels_200704() {
    check_processor_case("qwen2vl_vtest_frame_max_pixels_200704");
}

#[test]
fn parity_processors_qwen2vl_synthetic_default() {
    check_processor_case("qwen2vl_synthetic_default");
}

#[test]
fn parity_processors_qwen2vl_synthetic_max_pixels_200704() {
    check_processor_case("qwen2vl_synthetic_max_pixels_200704");
}

#[test]
fn parity_processors_qwen2vl_small_default() {
    check_processor_case("qwen2vl_small_default");
}

#[test]
fn parity_processors_qwen2vl_small_max_pixels_200704() {
    check_processor_case("qwen2vl_small_max_pixels_200704");
}

#[test]
fn parity_processors_qwen2vl_config_is_read() {
    let all = cases(&processors_dir());
    let json = all["qwen2vl_processor_config"].to_string();
    let p = Qwen2VlImageProcessor::from_preprocessor_config(&json).unwrap();
    let size = &all["qwen2vl_processor_config"]["size"];
    assert_eq!(p.min_pixels as u64, size["shortest_edge"].as_u64().unwrap());
    assert_eq!(p.max_pixels as u64, size["longest_edge"].as_u64().unwrap());
    assert_eq!(p, Qwen2VlImageProcessor::default());
    // The v4 Hub keys.
    let v4 = r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2}"#;
    assert_eq!(
        Qwen2VlImageProcessor::from_preprocessor_config(v4)
            .unwrap()
            .max_pixels,
        12_845_056
    );
    assert!(Qwen2VlImageProcessor::from_preprocessor_config(
        r#"{"min_pixels": 10, "max_pixels": 5}"#
    )
    .is_err());
}

#[test]
fn qwen2_vl_processor_handles_extreme_image_sizes() {
    let proc = Qwen2VlImageProcessor::default();
    // 1x1 grows to the minimum area.
    let one = proc.preprocess_image(&image::RgbImage::new(1, 1)).unwrap();
    assert_eq!(one.grid, GridThw::new(1, 4, 4));
    assert!(one.grid.patches() * 14 * 14 >= proc.min_pixels);
    // 10000x10000 is clamped by max_pixels: the patch tensor stays bounded.
    let big = image::RgbImage::from_pixel(10_000, 10_000, image::Rgb([120, 60, 30]));
    let out = proc.preprocess_image(&big).unwrap();
    assert!(
        out.grid.patches() * 14 * 14 <= proc.max_pixels,
        "{:?}",
        out.grid
    );
    assert_eq!(out.pixel_values.len(), out.grid.patches() * out.patch_dim);
    // Extreme aspect ratio is an error, not a panic.
    assert!(proc
        .preprocess_image(&image::RgbImage::new(3000, 10))
        .is_err());
    // Video: 3 frames become 2 temporal patches (last frame repeated).
    let frames = vec![image::RgbImage::from_pixel(56, 84, image::Rgb([1, 2, 3])); 3];
    let v = proc.preprocess_video(&frames).unwrap();
    assert_eq!(v.grid, GridThw::new(2, 6, 4));
}

// ----- tokenizers ---------------------------------------------------------------------------

/// The fetched Qwen tokenizer, or `None` (with the reason printed) when setup has not fetched it.
fn qwen_tokenizer() -> Option<Qwen2VlTokenizer> {
    let path = crate::common::assets_dir().join("tokenizers/qwen2-vl/tokenizer.json");
    if !path.is_file() {
        println!(
            "SKIPPED: {} is absent (run scripts/setup to fetch it)",
            path.display()
        );
        return None;
    }
    Some(Qwen2VlTokenizer::from_file(&path).expect("tokenizer.json"))
}

fn tokenizer_case(name: &str) -> serde_json::Value {
    cases(&fixtures_dir().join("tokenizers"))["qwen"]["cases"][name].clone()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_plain_text(name: &str) {
    let Some(tok) = qwen_tokenizer() else { return };
    let case = tokenizer_case(name);
    let text = case["text"].as_str().unwrap();
    assert_eq!(tok.encode(text).unwrap(), u32s(&case["ids"]), "{name}: ids");
    let tokens: Vec<String> = case["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(tok.tokens(text).unwrap(), tokens, "{name}: tokens");
    let decoded = tok.decode(&u32s(&case["ids"]), false).unwrap();
    let nfc: String = unicode_nfc(text);
    assert_eq!(decoded, nfc, "{name}: decode");
}

/// NFC of the fixture texts: the only decomposed sequence they hold is `e` + U+0301.
fn unicode_nfc(text: &str) -> String {
    text.replace("e\u{301}", "é")
}

#[test]
fn parity_tokenizers_qwen_plain() {
    check_plain_text("plain");
}

#[test]
fn parity_tokenizers_qwen_french_accents() {
    check_plain_text("french_accents");
}

fn check_chat(name: &str) {
    let Some(tok) = qwen_tokenizer() else { return };
    let case = tokenizer_case(name);
    let messages: Vec<ChatMessage> = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().unwrap().to_string(),
            content: m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c["type"].as_str().unwrap() {
                    "image" => ContentPart::Image,
                    "video" => ContentPart::Video,
                    _ => ContentPart::Text(c["text"].as_str().unwrap().to_string()),
                })
                .collect(),
        })
        .collect();
    assert_eq!(
        render_chat(
            &messages,
            case["add_generation_prompt"].as_bool().unwrap(),
            false
        ),
        case["rendered_text"].as_str().unwrap(),
        "{name}: rendered text"
    );
    let grids: Vec<GridThw> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let g = u32s(&i["image_grid_thw"]);
            GridThw::new(g[0] as usize, g[1] as usize, g[2] as usize)
        })
        .collect();
    let prompt = tok.encode_chat(&messages, &grids, &[], 2).unwrap();
    assert_eq!(prompt.input_ids, u32s(&case["ids"]), "{name}: ids");
    let types: Vec<u8> = u32s(&case["mm_token_type_ids"])
        .iter()
        .map(|&x| x as u8)
        .collect();
    assert_eq!(prompt.mm_token_type_ids, types, "{name}: mm_token_type_ids");
    // Rendering with the pads already expanded and tokenizing gives the same ids.
    let mut text = case["rendered_text"].as_str().unwrap().to_string();
    let pad = surveil_models::qwen2_vl::IMAGE_PAD;
    for i in 0..grids.len() {
        text = text.replacen(pad, &format!("<|IMG{i}|>"), 1);
    }
    for (i, g) in grids.iter().enumerate() {
        text = text.replace(&format!("<|IMG{i}|>"), &pad.repeat(g.merged_tokens(2)));
    }
    assert_eq!(
        tok.encode(&text).unwrap(),
        prompt.input_ids,
        "{name}: expanded-text ids"
    );
    // More images than placeholders is an error.
    let mut extra = grids.clone();
    extra.push(GridThw::new(1, 2, 2));
    assert!(tok.encode_chat(&messages, &extra, &[], 2).is_err());
}

#[test]
fn parity_tokenizers_qwen_chat_one_image() {
    check_chat("chat_one_image");
}

#[test]
fn parity_tokenizers_qwen_chat_two_images() {
    check_chat("chat_two_images");
}

/// A video of two identical frames is one temporal patch whose pixels equal the still image's
/// (a still image is repeated to fill the temporal patch), so the prompt with `<|video_pad|>`
/// tokens must give exactly the logits of the prompt with `<|image_pad|>` tokens.
#[test]
fn qwen2_vl_video_of_repeated_frame_equals_image() {
    let model = load_model(f32_policy());
    let cfg = model.config().clone();
    let proc = Qwen2VlImageProcessor::default();
    let img = image::open(processors_dir().join("images/small.png"))
        .unwrap()
        .to_rgb8();
    let still = proc.preprocess_image(&img).unwrap();
    let video = proc.preprocess_video(&[img.clone(), img]).unwrap();
    assert_eq!(still.grid, video.grid);
    assert_eq!(still.pixel_values, video.pixel_values);
    let n = still.grid.merged_tokens(cfg.vision.spatial_merge_size);
    let prompt = |pad: u32| {
        let mut ids = vec![5, 6, cfg.vision_start_token_id];
        ids.extend(std::iter::repeat_n(pad, n));
        ids.extend([cfg.vision_end_token_id, 7, 8]);
        ids
    };
    let pixels = still.to_tensor(&Device::Cpu).unwrap();
    let as_image = MultimodalInput {
        input_ids: prompt(cfg.image_token_id),
        pixel_values: Some(pixels.clone()),
        image_grids: vec![still.grid],
        ..Default::default()
    };
    let as_video = MultimodalInput {
        input_ids: prompt(cfg.video_token_id),
        pixel_values_videos: Some(pixels),
        video_grids: vec![video.grid],
        ..Default::default()
    };
    assert_eq!(
        model.rope_index(&as_image).unwrap(),
        model.rope_index(&as_video).unwrap()
    );
    let a = model.prefill(&as_image, Logits::All).unwrap().logits;
    let b = model.prefill(&as_video, Logits::All).unwrap().logits;
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

// ----- the model-agnostic interface ---------------------------------------------------------

/// GPT-2's byte → printable character table of byte-level BPE.
fn byte_level_chars() -> Vec<char> {
    let printable: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).unwrap();
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    chars
}

/// A byte-level `tokenizer.json` that fits the fixture model's 320-row vocabulary: the 256
/// bytes as ids 0..=255 (no merges), fillers, and the Qwen2-VL special tokens at the fixture
/// config's ids (`<|vision_start|>` 313, `<|image_pad|>` 316, ...).
fn fixture_tokenizer_json() -> String {
    // Ids must be contiguous up to the added tokens: 256..310 are filler entries that no
    // text produces (there are no merges).
    let vocab: serde_json::Map<String, serde_json::Value> = byte_level_chars()
        .iter()
        .map(char::to_string)
        .chain((256..310).map(|i| format!("<unused{i}>")))
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let special = [
        ("<|endoftext|>", 310),
        ("<|im_start|>", 311),
        ("<|im_end|>", 312),
        ("<|vision_start|>", 313),
        ("<|vision_end|>", 314),
        ("<|vision_pad|>", 315),
        ("<|image_pad|>", 316),
        ("<|video_pad|>", 317),
    ];
    let added: Vec<serde_json::Value> = special
        .iter()
        .map(|(content, id)| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": false, "use_regex": true});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": []},
    })
    .to_string()
}

/// The fixture checkpoint with [`fixture_tokenizer_json`] beside it.
fn fixture_checkpoint_with_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(folder().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.json"), fixture_tokenizer_json()).unwrap();
    dir
}

/// Qwen2-VL behind `Vlm`, loaded by the manager from a checkpoint with its tokenizer: the
/// request becomes the chat template's ids (special tokens by id, message text as plain text),
/// and the answer is exactly `generate` on that prompt with the tokenizer's stop ids.
#[test]
fn qwen2_vl_vlm_end_to_end_through_the_manager() {
    use surveil_models::manager::{LoadOptions, ModelManager};
    use surveil_models::tokenizer::TextTokenizer;
    use surveil_models::vlm::{VlmKind, VlmRequest};
    let dir = fixture_checkpoint_with_tokenizer();
    let opts = LoadOptions {
        weights: surveil_config::WeightsSpec::Dir(dir.path().to_path_buf()),
        device: surveil_config::Device::Cpu,
        quant: surveil_config::Quant::F32,
        hub_cache: PathBuf::from("/nonexistent/hub"),
        model_dir: None,
        progress: None,
        dummy_seed: 0,
    };
    let mut m = ModelManager::new();
    m.load("qwen2-vl-2b-instruct", &opts).unwrap();
    let vlm = m.vlm().unwrap();
    assert_eq!(vlm.kind(), VlmKind::Instruction);
    assert_eq!(vlm.tokenizer().stop_token_ids(), vec![312, 310]);
    let vocab = vlm.tokenizer().vocabulary().expect("byte-level vocabulary");
    assert_eq!(vocab.bytes(u32::from(b'A')), Some(&b"A"[..]));
    assert_eq!(vocab.bytes(0xE9), Some(&[0xE9u8][..]), "raw byte tokens");
    assert!(vocab.is_special(312) && vocab.bytes(312).is_none());

    let tok = Qwen2VlTokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    // Plain encoding keeps special-token text as text; the template inserts them by id.
    assert_eq!(TextTokenizer::encode(&tok, "<|im_end|>").unwrap().len(), 10);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![312]);
    let messages = [ChatMessage::user_with_images(0, "hi <|im_end|>")];
    let ids = tok.encode_chat(&messages, &[], &[], 2).unwrap().input_ids;
    // Two turns end with <|im_end|> (the default system turn, the user's); the typed one is
    // ten byte tokens.
    assert_eq!(ids.iter().filter(|&&t| t == 312).count(), 2, "{ids:?}");
    let plain = TextTokenizer::encode(&tok, "hi <|im_end|>").unwrap();
    assert!(ids.windows(plain.len()).any(|w| w == plain.as_slice()));

    let model = load_model(f32_policy());
    let frame = image::open(fixtures_dir().join("processors/images/small.png"))
        .unwrap()
        .to_rgb8();
    let frames = [frame];
    for (images, system) in [(&frames[..], None), (&[][..], Some("Be brief."))] {
        let req = VlmRequest {
            images,
            system,
            prompt: "What are the people doing?",
        };
        // The same prompt built by hand.
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::text("system", s));
        }
        messages.push(ChatMessage::user_with_images(images.len(), req.prompt));
        let proc = Qwen2VlImageProcessor::default();
        let (pixel_values, grids) = if images.is_empty() {
            (None, vec![])
        } else {
            let p = proc.preprocess_images(images, &Device::Cpu).unwrap();
            (Some(p.pixel_values), p.grids)
        };
        let input = MultimodalInput {
            input_ids: tok
                .encode_chat(&messages, &grids, &[], 2)
                .unwrap()
                .input_ids,
            pixel_values,
            image_grids: grids,
            ..Default::default()
        };
        let params = GenerationParams::greedy(6);
        let expected = model
            .generate(&input, &params, &[312, 310], Some(&tok), &mut NoHooks)
            .unwrap();
        let mut streamed = String::new();
        let out = vlm
            .analyse(
                &req,
                &params,
                &mut OnToken(|_, piece: &str| {
                    streamed.push_str(piece);
                    ControlFlow::Continue(())
                }),
            )
            .unwrap();
        println!(
            "images {}: {:?} {:?} {:?}",
            images.len(),
            out.tokens,
            out.stop_reason,
            out.text
        );
        assert_eq!(out.tokens, expected.tokens);
        assert_eq!(out.stop_reason, expected.stop_reason);
        assert_eq!(out.timings.prompt_tokens, input.input_ids.len());
        assert_eq!(out.text, tok.decode(&out.tokens, true).unwrap());
        assert!(
            out.text.starts_with(&streamed),
            "{streamed:?} / {:?}",
            out.text
        );
        assert_eq!(out.reasoning, None);
        assert!(!out.reasoning_unfinished);
    }
    m.unload();
}
