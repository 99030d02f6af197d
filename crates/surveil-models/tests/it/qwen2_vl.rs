//! Qwen2-VL parity tests against the `qwen2_vl`, `processors` (Qwen2-VL cases) and
//! `tokenizers` (`qwen`) fixture folders (random tiny weights, reference = transformers), plus
//! quantized runs and bad-input checks. Cases, ids, grids, shapes and tolerances are read from
//! the fixtures; every output a case lists is compared.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::qwen2_vl::{
    render_chat, tensor_layout, ChatMessage, ContentPart, GenerationParams, GridThw, Logits,
    MultimodalInput, Qwen2VlConfig, Qwen2VlImageProcessor, Qwen2VlModel, Qwen2VlTokenizer,
    StopReason,
};
use surveil_models::load::weights::{DummySource, SafetensorsSource, Weights};
use surveil_models::vlm::{GenerationHooks, NoHooks, OnToken};

use crate::common::{
    assert_close, asset, case_list, cases, check_quantized_greedy, correlation, fixture, floats,
    ints, max_abs_diff, max_abs_tolerance, open_rgb, processor_images, token_ids, tolerance,
    usizes, Case, Tolerance,
};

fn config(dir: &Path) -> Qwen2VlConfig {
    Qwen2VlConfig::from_file(&dir.join("config.json")).expect("config.json")
}

fn load_model(dir: &Path, policy: QuantPolicy) -> Qwen2VlModel {
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).expect("weights");
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    Qwen2VlModel::load(&config(dir), &w).expect("load")
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

fn grids_of(t: &Tensor) -> Vec<GridThw> {
    ints(t)
        .chunks(3)
        .map(|c| GridThw::new(c[0] as usize, c[1] as usize, c[2] as usize))
        .collect()
}

/// A case with its tensors and the prompt its inputs make.
struct Loaded {
    case: Case,
    t: HashMap<String, Tensor>,
    input: MultimodalInput,
}

/// The prompt of a case from the inputs it lists (an input this test cannot place fails).
/// `mm_token_type_ids`, when listed, must mark exactly the config's `<|image_pad|>` tokens.
fn load_case(dir: &Path, cfg: &Qwen2VlConfig, case: Case) -> Loaded {
    let t = case.tensors(dir);
    case.check_file(&t, &["inputs", "outputs"]);
    let mut input = MultimodalInput::default();
    for name in case.listed("inputs") {
        let v = &t[&name];
        match name.as_str() {
            "input_ids" => input.input_ids = token_ids(v),
            "pixel_values" => input.pixel_values = Some(v.clone()),
            "image_grid_thw" => input.image_grids = grids_of(v),
            "pixel_values_videos" => input.pixel_values_videos = Some(v.clone()),
            "video_grid_thw" => input.video_grids = grids_of(v),
            "mm_token_type_ids" => {}
            other => case.unknown("input", other),
        }
    }
    assert!(
        !input.input_ids.is_empty(),
        "case {}: no input_ids",
        case.name
    );
    if let Some(types) = t.get("mm_token_type_ids") {
        for (i, (&ty, &id)) in ints(types).iter().zip(&input.input_ids).enumerate() {
            if id == cfg.image_token_id {
                assert_eq!(ty, 1, "case {}: mm_token_type_ids[{i}]", case.name);
            } else if id != cfg.video_token_id {
                assert_eq!(ty, 0, "case {}: mm_token_type_ids[{i}]", case.name);
            }
        }
    }
    Loaded { case, t, input }
}

fn all_cases(dir: &Path) -> Vec<Loaded> {
    let cfg = config(dir);
    case_list(&cases(dir))
        .into_iter()
        .map(|case| load_case(dir, &cfg, case))
        .collect()
}

/// Greedy decoding without EOS stopping: per step, the id chosen and the logits it was
/// chosen from.
fn greedy_steps(
    model: &Qwen2VlModel,
    input: &MultimodalInput,
    steps: usize,
) -> Vec<(u32, Vec<f32>)> {
    let mut state = model.prefill(input, Logits::Last).unwrap();
    let first = state.rope.next_position();
    let mut logits: Vec<f32> = floats(&state.logits);
    let mut out = Vec::with_capacity(steps);
    for (k, pos) in (first..).take(steps).enumerate() {
        let tok = surveil_models::generation::argmax(&logits);
        out.push((tok, logits));
        if k + 1 == steps {
            break;
        }
        logits = floats(&model.decode_step(tok, pos, &mut state.cache).unwrap());
    }
    out
}

/// The reference's per-step logits `(batch, steps, vocab)` as one row per step.
fn step_rows(t: &Tensor) -> Vec<Vec<f32>> {
    let (_, steps, _) = t.dims3().unwrap();
    (0..steps)
        .map(|k| floats(&t.narrow(1, k, 1).unwrap()))
        .collect()
}

/// Number of greedy steps of a case: from `greedy_ids`, else `greedy_step_logits`.
fn greedy_len(c: &Loaded) -> Option<usize> {
    if let Some(ids) =
        c.t.get("greedy_ids")
            .filter(|_| c.case.lists("outputs", "greedy_ids"))
    {
        return Some(ids.elem_count());
    }
    c.case
        .lists("outputs", "greedy_step_logits")
        .then(|| c.t["greedy_step_logits"].dim(1).unwrap())
}

/// Every output the case lists, produced by our model and compared with its tolerance.
fn check_case(model: &Qwen2VlModel, c: &Loaded) {
    let name = &c.case.name;
    let input = &c.input;
    let outputs = c.case.listed("outputs");
    println!(
        "qwen2_vl/{name}: {} tokens, {} images, outputs {outputs:?}",
        input.input_ids.len(),
        input.image_grids.len()
    );
    let rope = model.rope_index(input).unwrap();
    let mut vision = None;
    let mut greedy = None;
    for output in &outputs {
        let label = format!("qwen2_vl/{name}: {output}");
        let reference = &c.t[output];
        let tol = || tolerance(&c.case, output);
        match output.as_str() {
            "position_ids" => {
                let ours: Vec<i64> = rope.positions.iter().flatten().copied().collect();
                assert_eq!(tol(), Tolerance::Exact, "{label}");
                assert_eq!(ours, ints(reference), "{label}");
                println!("{label}: exact");
            }
            "rope_deltas" => {
                assert_eq!(tol(), Tolerance::Exact, "{label}");
                assert_eq!(vec![rope.delta], ints(reference), "{label}");
                println!("{label}: exact ({})", rope.delta);
            }
            "vision_last_hidden" | "image_embeds" => {
                let out = vision.get_or_insert_with(|| {
                    let pixels = input
                        .pixel_values
                        .as_ref()
                        .unwrap_or_else(|| panic!("{label}: the case has no pixel_values"));
                    model
                        .vision()
                        .forward_with_hidden(pixels, &input.image_grids)
                        .unwrap()
                });
                let ours = if output == "image_embeds" {
                    &out.embeds
                } else {
                    &out.last_hidden
                };
                assert_close(&label, ours, reference, max_abs_tolerance(&c.case, output));
            }
            "logits" => {
                let state = model.prefill(input, Logits::All).unwrap();
                assert_close(
                    &label,
                    &state.logits,
                    reference,
                    max_abs_tolerance(&c.case, output),
                );
            }
            "greedy_step_logits" | "greedy_ids" => {
                let steps = greedy_len(c).unwrap();
                let ours = greedy.get_or_insert_with(|| greedy_steps(model, input, steps));
                if output == "greedy_ids" {
                    assert_eq!(tol(), Tolerance::Exact, "{label}");
                    let ids: Vec<u32> = ours.iter().map(|(id, _)| *id).collect();
                    assert_eq!(ids, token_ids(reference), "{label}");
                    println!("{label}: {ids:?}");
                    // The public generate() gives the same ids when no stop token is set.
                    let out = model
                        .generate(
                            input,
                            &GenerationParams::greedy(steps),
                            &[],
                            None,
                            &mut NoHooks,
                        )
                        .unwrap();
                    assert_eq!(out.tokens, ids, "{label}: generate()");
                    assert_eq!(out.stop_reason, StopReason::MaxNewTokens, "{label}");
                } else {
                    let tl = max_abs_tolerance(&c.case, output);
                    let rows = step_rows(reference);
                    assert_eq!(rows.len(), ours.len(), "{label}: steps");
                    let mut worst = 0f32;
                    for (k, ((_, l), r)) in ours.iter().zip(&rows).enumerate() {
                        let d = crate::common::max_abs_diff_values(l, r);
                        assert!(d <= tl, "{label}: step {k}: {d} > {tl} (first divergence)");
                        worst = worst.max(d);
                    }
                    println!("{label}: max_abs_diff {worst:.3e} (tolerance {tl:.0e})");
                }
            }
            other => c.case.unknown("output", other),
        }
    }
    // The listed margins are those of the reference's step logits.
    if let (Some(margins), Some(steps)) = (
        c.case.spec["greedy_top1_margins"].as_array(),
        c.t.get("greedy_step_logits"),
    ) {
        for (k, (m, row)) in margins.iter().zip(step_rows(steps)).enumerate() {
            let ours = crate::common::top2_margin(&row);
            let want = m.as_f64().unwrap() as f32;
            assert!(
                (ours - want).abs() <= 1e-5 * want.abs().max(1.0),
                "qwen2_vl/{name}: greedy_top1_margins[{k}] {want} vs {ours} from the logits"
            );
        }
    }
}

#[test]
fn parity_qwen2_vl() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let model = load_model(&dir, f32_policy());
    for c in all_cases(&dir) {
        check_case(&model, &c);
    }
}

#[test]
fn parity_qwen2_vl_config_layouts_agree() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let nested = config(&dir);
    let flat = Qwen2VlConfig::from_file(&dir.join("config_hub_flat.json")).unwrap();
    assert_eq!(nested, flat);
    // The special ids of the config match the fixture's table.
    let special = &cases(&dir)["special_token_ids"];
    for (token, id) in [
        ("<|image_pad|>", nested.image_token_id),
        ("<|video_pad|>", nested.video_token_id),
        ("<|vision_start|>", nested.vision_start_token_id),
        ("<|vision_end|>", nested.vision_end_token_id),
    ] {
        assert_eq!(special[token].as_u64(), Some(u64::from(id)), "{token}");
    }
}

#[test]
fn parity_qwen2_vl_flat_config_gives_identical_logits() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let flat = Qwen2VlConfig::from_file(&dir.join("config_hub_flat.json")).unwrap();
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(Box::new(src), Device::Cpu, f32_policy());
    let model_flat = Qwen2VlModel::load(&flat, &w).unwrap();
    let model = load_model(&dir, f32_policy());
    for c in all_cases(&dir) {
        let a = model.prefill(&c.input, Logits::All).unwrap().logits;
        let b = model_flat.prefill(&c.input, Logits::All).unwrap().logits;
        assert_eq!(max_abs_diff(&a, &b), 0.0, "qwen2_vl/{}", c.case.name);
    }
}

/// A quantized load against the f32 reference on every case: a logits correlation floor, and
/// greedy ids that may leave the reference only at a near tie ([`check_quantized_greedy`]).
fn check_quantized(label: &str, model: &Qwen2VlModel, cases: &[Loaded], floor: f64) {
    for c in cases {
        let name = format!("{label} qwen2_vl/{}", c.case.name);
        if c.case.lists("outputs", "logits") {
            let logits = model.prefill(&c.input, Logits::All).unwrap().logits;
            let r = correlation(&logits, &c.t["logits"]);
            println!(
                "{name}: logits max_abs_diff {:.3e}, correlation {r:.6} (floor {floor})",
                max_abs_diff(&logits, &c.t["logits"])
            );
            assert!(r > floor, "{name}: logits correlation {r} <= {floor}");
        }
        if c.case.lists("outputs", "greedy_ids") && c.case.lists("outputs", "greedy_step_logits") {
            let expected = token_ids(&c.t["greedy_ids"]);
            let ours = greedy_steps(model, &c.input, expected.len());
            let rows = step_rows(&c.t["greedy_step_logits"]);
            let agree = check_quantized_greedy(&name, &ours, &expected, &rows);
            println!(
                "{name}: greedy ids agree for {agree}/{} steps",
                expected.len()
            );
        }
    }
}

#[test]
fn parity_qwen2_vl_quantized_q8_0() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let policy = QuantPolicy {
        linear: StorageDtype::Q8_0,
        float: StorageDtype::F32,
    };
    // Measured 0.9994 / 0.9997 on the shared set; the floor leaves room for other seeds while
    // a broken 8-bit path (wrong scales, block order) correlates far lower.
    check_quantized("q8_0", &load_model(&dir, policy), &all_cases(&dir), 0.995);
}

/// 4-bit on the tiny fixture: rows narrower than a Q4K block (256) make the policy fall back
/// to Q4_0 for those linear weights. 4-bit weights on 64-wide random rows move the logits a
/// lot (measured correlation 0.93 and 0.96 with the reference on the shared set, hence a floor
/// of 0.8 for other seeds); the Q4K path itself is checked on 256-wide rows in
/// `qwen2_vl_q4k_logits_correlate_with_f32`.
#[test]
fn parity_qwen2_vl_quantized_4bit_falls_back_to_q4_0() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::four_bit(StorageDtype::F32),
    );
    let model = Qwen2VlModel::load(&config(&dir), &w).unwrap();
    let report = w.report();
    println!(
        "4-bit load: {:?}, fallbacks {:?}",
        report.tensors_by_dtype, report.fallback_tensors
    );
    assert!(
        report
            .tensors_by_dtype
            .get(&StorageDtype::Q4_0)
            .copied()
            .unwrap_or(0)
            > 0
    );
    check_quantized("q4_0", &model, &all_cases(&dir), 0.8);
}

/// The half-precision path a GPU takes with f16 or bf16 weights: activations, KV cache and
/// attention scores in the weights' dtype (softmax and norms reduce in f32), the vision tower
/// included, run here through the same candle compositions on the CPU. Logits against the f32
/// reference on every case; greedy ids may leave it only at a near tie.
#[test]
fn parity_qwen2_vl_half_precision_activations() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let cases = all_cases(&dir);
    let Some(first) = cases.first() else {
        panic!("qwen2_vl/cases.json lists no case");
    };
    let f32_cache = load_model(&dir, f32_policy())
        .prefill(&first.input, Logits::Last)
        .unwrap()
        .cache
        .bytes();
    // Floors: measured 0.99989 (bf16) and 0.999998 (f16) on the shared set; a broken dtype
    // path falls far lower.
    for (storage, dtype, floor) in [
        (StorageDtype::Bf16, DType::BF16, 0.995),
        (StorageDtype::F16, DType::F16, 0.999),
    ] {
        let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
        let w = Weights::new(
            Box::new(src),
            Device::Cpu,
            QuantPolicy::for_storage(storage),
        )
        .with_activations(dtype)
        .unwrap();
        assert_eq!(w.activation_dtype(), dtype);
        let model = Qwen2VlModel::load(&config(&dir), &w).unwrap();
        // The KV cache holds the activation dtype: half the f32 cache's bytes.
        let state = model.prefill(&first.input, Logits::Last).unwrap();
        assert_eq!(state.cache.bytes() * 2, f32_cache, "{dtype:?} KV cache");
        assert_eq!(state.logits.dtype(), DType::F32);
        check_quantized(&format!("{dtype:?} activations"), &model, &cases, floor);
    }
}

/// The CPU tile layouts on the fixture: every linear weight quantized (no fallback, whatever
/// the row widths), logits against the f32 reference with the floors of the GGML types (8-bit:
/// measured 0.9994 on the shared set; 4-bit on 64-wide random rows moves the logits a lot).
#[test]
fn parity_qwen2_vl_quantized_cpu_tiles() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    for (storage, floor) in [(StorageDtype::Q8_0x16, 0.995), (StorageDtype::Q4Kx16, 0.8)] {
        let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
        let policy = QuantPolicy::for_storage(storage);
        let w = Weights::new(Box::new(src), Device::Cpu, policy);
        let model = Qwen2VlModel::load(&config(&dir), &w).unwrap();
        let report = w.report();
        println!("{storage} load: {:?}", report.tensors_by_dtype);
        assert!(report.fallback_tensors.is_empty(), "{report:?}");
        assert!(report.tensors_by_dtype[&storage] > 0, "{report:?}");
        check_quantized(storage.name(), &model, &all_cases(&dir), floor);
    }
}

/// Token ids below every vision special id of `cfg`: plain text for any fixture vocabulary.
fn text_ids(cfg: &Qwen2VlConfig, n: usize, offset: u32) -> Vec<u32> {
    let limit = [
        cfg.image_token_id,
        cfg.video_token_id,
        cfg.vision_start_token_id,
        cfg.vision_end_token_id,
    ]
    .into_iter()
    .min()
    .unwrap();
    (0..n as u32).map(|i| (offset + 7 * i) % limit).collect()
}

/// A small Qwen2-VL whose rows divide by 256, with dummy weights: Q4K vs f32 logits.
#[test]
fn qwen2_vl_q4k_logits_correlate_with_f32() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let mut cfg = config(&dir);
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
    // candle's Q4K blocks (what a GPU load gets) and the CPU tile layout (`q4kx16`).
    for policy in [
        QuantPolicy::four_bit(StorageDtype::F16),
        QuantPolicy::four_bit(StorageDtype::F16).on_cpu(),
    ] {
        check_small_4bit(&cfg, &f32_model, load(policy));
    }
}

/// A 4-bit load of the small model of `qwen2_vl_q4k_logits_correlate_with_f32` against its f32
/// load: a logits correlation floor, and one decode step against a full recompute.
fn check_small_4bit(
    cfg: &Qwen2VlConfig,
    f32_model: &Qwen2VlModel,
    (q_model, report): (Qwen2VlModel, surveil_models::load::weights::LoadReport),
) {
    let label = report
        .bytes_by_dtype
        .keys()
        .find(|d| d.is_four_bit())
        .copied()
        .expect("a 4-bit load stores 4-bit weights");
    println!("{label} load: {:?}", report.tensors_by_dtype);
    assert!(report.tensors_by_dtype[&label] > 0);
    // A prompt with one 4x4-patch image and text around it.
    let merge = cfg.vision.spatial_merge_size;
    let grid = GridThw::new(1, 2 * merge, 2 * merge);
    let mut ids = text_ids(cfg, 20, 10);
    ids.push(cfg.vision_start_token_id);
    ids.extend(std::iter::repeat_n(
        cfg.image_token_id,
        grid.merged_tokens(merge),
    ));
    ids.push(cfg.vision_end_token_id);
    ids.extend(text_ids(cfg, 20, 40));
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
    println!("{label} vs f32 (dummy weights, 256-wide rows): logits correlation {r:.5}");
    assert!(r > 0.99, "{label} correlation {r}");
    // Decoding one token with the KV cache (the fused single-row kernels) gives the logits a
    // full recompute of the longer prompt gives.
    let next = text_ids(cfg, 1, 77)[0];
    let mut longer = input.clone();
    longer.input_ids.push(next);
    let full = q_model.prefill(&longer, Logits::All).unwrap().logits;
    let full_last = full
        .narrow(1, longer.input_ids.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let mut state = q_model.prefill(&input, Logits::Last).unwrap();
    let step = q_model
        .decode_step(next, state.rope.next_position(), &mut state.cache)
        .unwrap()
        .flatten_all()
        .unwrap();
    let d = max_abs_diff(&step, &full_last);
    let scale = floats(&full_last).iter().fold(0f32, |m, x| m.max(x.abs()));
    println!(
        "{label} decode step vs full recompute: max_abs_diff {d:.3e} (logits abs max \
         {scale:.3e})"
    );
    assert!(d <= 1e-3 * scale.max(1e-6), "decode vs recompute {d}");
}

#[test]
fn qwen2_vl_rejects_bad_prompts() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let model = load_model(&dir, f32_policy());
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

    // The case with the most images.
    let with_images = all_cases(&dir)
        .into_iter()
        .max_by_key(|c| c.input.image_grids.len())
        .filter(|c| !c.input.image_grids.is_empty())
        .expect("no qwen2_vl case has an image");
    // More image placeholder runs than images: the last image removed.
    if with_images.input.image_grids.len() > 1 {
        let mut input = with_images.input.clone();
        input.image_grids.pop();
        let kept: usize = input.image_grids.iter().map(GridThw::patches).sum();
        input.pixel_values = Some(input.pixel_values.unwrap().narrow(0, 0, kept).unwrap());
        let err = go(&input).unwrap_err().to_string();
        assert!(err.contains("more image placeholders than images"), "{err}");
    }

    // Image tokens without any pixels.
    let mut input = with_images.input.clone();
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
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let model = load_model(&dir, f32_policy());
    let c = all_cases(&dir)
        .into_iter()
        .find(|c| c.case.lists("outputs", "greedy_ids"))
        .expect("no qwen2_vl case lists greedy_ids");
    let input = &c.input;
    let expected = token_ids(&c.t["greedy_ids"]);
    let n = expected.len();
    // Stop at the third greedy token (or the last): the output ends just before its first
    // occurrence.
    let stop = expected[2.min(n - 1)];
    let first_hit = expected.iter().position(|&x| x == stop).unwrap();
    let mut streamed = Vec::new();
    let out = model
        .generate(
            input,
            &GenerationParams::greedy(n),
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
            input,
            &GenerationParams::greedy(n),
            &[],
            None,
            &mut OnToken(|_, _: &str| ControlFlow::Break(())),
        )
        .unwrap();
    assert_eq!(out.tokens, expected[..1].to_vec());
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    // A mask forbidding the greedy first token makes the runner-up come first.
    let state = model.prefill(input, Logits::Last).unwrap();
    let first = floats(&state.logits);
    let mut ranked: Vec<u32> = (0..first.len() as u32).collect();
    ranked.sort_by(|&a, &b| {
        first[b as usize]
            .total_cmp(&first[a as usize])
            .then(a.cmp(&b))
    });
    assert_eq!(ranked[0], expected[0]);
    let out = model
        .generate(
            input,
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
        ignore_stop_tokens: false,
    };
    let a = model
        .generate(input, &params, &[], None, &mut NoHooks)
        .unwrap();
    let b = model
        .generate(input, &params, &[], None, &mut NoHooks)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 6);
}

// ----- processors ---------------------------------------------------------------------------

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

/// The Qwen2-VL processor of a case: the folder's `qwen2vl_processor_config` with the case's
/// `processor_kwargs` over it.
fn qwen_processor(all: &Value, case: &Case) -> Qwen2VlImageProcessor {
    let mut cfg = all["qwen2vl_processor_config"].clone();
    assert!(cfg.is_object(), "processors: no qwen2vl_processor_config");
    if let Some(kwargs) = case.spec["processor_kwargs"].as_object() {
        for (k, v) in kwargs {
            cfg[k] = v.clone();
        }
    }
    Qwen2VlImageProcessor::from_preprocessor_config(&cfg.to_string()).unwrap()
}

/// Max and mean absolute difference of `(row index, reference row)` pairs against our rows.
fn rows_diff<'a>(
    ours: &[f32],
    dim: usize,
    rows: impl Iterator<Item = (usize, &'a [f32])>,
) -> (f64, f64) {
    let (mut max, mut sum, mut count) = (0f64, 0f64, 0usize);
    for (r, reference) in rows {
        assert!(
            (r + 1) * dim <= ours.len(),
            "row {r} past our {} rows",
            ours.len() / dim
        );
        for (a, b) in ours[r * dim..(r + 1) * dim].iter().zip(reference) {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            if !d.is_finite() {
                return (f64::NAN, f64::NAN);
            }
            max = max.max(d);
            sum += d;
            count += 1;
        }
    }
    (max, sum / count.max(1) as f64)
}

/// Row sums and column sums of a `rows × dim` tensor, in float64.
fn sums(values: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut cols = vec![0f64; dim];
    let rows = values
        .chunks(dim)
        .map(|row| {
            for (c, &x) in cols.iter_mut().zip(row) {
                *c += f64::from(x);
            }
            row.iter().map(|&x| f64::from(x)).sum()
        })
        .collect();
    (rows, cols)
}

fn max_diff64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).fold(0f64, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_finite() {
            m.max(d)
        } else {
            f64::NAN
        }
    })
}

/// Our processor on the case's image against every tensor the case lists, with the folder's
/// tolerances: the own-resize tier for our full pipeline, and the exact-path tolerance for
/// normalisation + patchify of the reference's resized image (the case's `resized_u8`, or the
/// default setting's when the case says they are identical).
fn check_qwen_processor_case(dir: &Path, all: &Value, case: &Case) {
    let name = format!("processors/{}", case.name);
    let t = case.tensors(dir);
    case.check_file(&t, &["tensors"]);
    let tier = &all["tolerance"]["own_resize"]["tier_pil_structured"];
    let tier_of = |key: &str| {
        tier[key]
            .as_f64()
            .unwrap_or_else(|| panic!("processors: no tier_pil_structured.{key}"))
    };
    let exact_tol = number_after_le(all["tolerance"]["exact_path"].as_str().unwrap());
    let proc = qwen_processor(all, case);
    let img = open_rgb(&dir.join(case.spec["image"].as_str().unwrap()));
    if let Some(hw) = case.spec.get("input_size_hw") {
        assert_eq!(
            usizes(hw),
            [img.height() as usize, img.width() as usize],
            "{name}: input size"
        );
    }
    let ours = proc.preprocess_image(&img).unwrap();
    let dim = ours.patch_dim;
    let grid = [ours.grid.t, ours.grid.h, ours.grid.w];
    // What the case states about the result.
    for (key, value) in [
        ("resized_hw", vec![ours.resized_hw.0, ours.resized_hw.1]),
        ("image_grid_thw", grid.to_vec()),
        ("pixel_values_shape", vec![ours.grid.patches(), dim]),
        ("num_patches", vec![ours.grid.patches()]),
        (
            "num_merged_tokens",
            vec![ours.grid.merged_tokens(proc.merge_size)],
        ),
    ] {
        if let Some(v) = case.spec.get(key) {
            let want = if v.is_array() {
                usizes(v)
            } else {
                vec![v.as_u64().unwrap() as usize]
            };
            assert_eq!(value, want, "{name}: {key}");
        }
    }
    println!("{name}: grid {grid:?}, resized {:?}", ours.resized_hw);

    // The reference's resized image: this case's, or the default setting's.
    let resized = t.get("resized_u8").cloned().or_else(|| {
        if case.spec["identical_to_default_setting"].as_bool() != Some(true) {
            return None;
        }
        let sibling = case_list(all).into_iter().find(|c| {
            c.name != case.name
                && c.spec["image"] == case.spec["image"]
                && c.spec["processor"] == case.spec["processor"]
                && c.spec["processor_kwargs"]
                    .as_object()
                    .is_none_or(|k| k.is_empty())
        })?;
        sibling.tensors(dir).get("resized_u8").cloned()
    });
    let exact = resized.as_ref().map(|r| {
        proc.patchify(std::slice::from_ref(&u8_image(r)))
            .unwrap()
            .pixel_values
    });
    if exact.is_none() {
        println!("{name}: no resized_u8 for this setting; checking our full pipeline only");
    }

    let (row_sums, col_sums) = sums(&ours.pixel_values, dim);
    let exact_sums = exact.as_ref().map(|e| sums(e, dim));
    let n_rows = ours.pixel_values.len() / dim;
    for tensor in case.listed("tensors") {
        let label = format!("{name}: {tensor}");
        let reference = &t[&tensor];
        match tensor.as_str() {
            "image_grid_thw" => {
                assert_eq!(ints(reference), grid.map(|x| x as i64), "{label}");
            }
            "resized_u8" => {
                let (h, w, _) = reference.dims3().unwrap();
                let mine =
                    surveil_models::image_ops::resize_bicubic_u8(&img, w as u32, h as u32).unwrap();
                let reference = u8_image(reference);
                let diffs: Vec<f64> = mine
                    .as_raw()
                    .iter()
                    .zip(reference.as_raw())
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                    .collect();
                let max = diffs.iter().copied().fold(0.0, f64::max);
                let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
                println!("{label}: our resize vs PIL max {max} / mean {mean:.4} uint8 levels");
                assert!(
                    max <= tier_of("resized_u8_max_abs_diff"),
                    "{label}: max {max}"
                );
                assert!(
                    mean <= tier_of("resized_u8_mean_abs_diff"),
                    "{label}: mean {mean}"
                );
            }
            "pixel_values" | "pixel_values_rows" => {
                let values = floats(reference);
                let index: Vec<usize> = if tensor == "pixel_values" {
                    (0..values.len() / dim).collect()
                } else {
                    let idx = t
                        .get("pixel_values_row_index")
                        .unwrap_or_else(|| panic!("{label}: no pixel_values_row_index"));
                    ints(idx).iter().map(|&r| r as usize).collect()
                };
                assert_eq!(index.len() * dim, values.len(), "{label}: size");
                if tensor == "pixel_values" {
                    assert_eq!(values.len(), ours.pixel_values.len(), "{label}: size");
                }
                let pairs = || index.iter().copied().zip(values.chunks(dim));
                if let Some(exact) = &exact {
                    let (max, _) = rows_diff(exact, dim, pairs());
                    println!(
                        "{label}: exact path max_abs_diff {max:.2e} (tolerance {exact_tol:.0e})"
                    );
                    assert!(max <= exact_tol, "{label}: exact path {max}");
                }
                let (max, mean) = rows_diff(&ours.pixel_values, dim, pairs());
                println!("{label}: our pipeline max {max:.3e} mean {mean:.2e}");
                assert!(
                    max <= tier_of("pixel_values_max_abs_diff"),
                    "{label}: max {max}"
                );
                assert!(
                    mean <= tier_of("pixel_values_mean_abs_diff"),
                    "{label}: mean {mean}"
                );
            }
            "pixel_values_row_index" => {
                assert!(
                    case.lists("tensors", "pixel_values_rows"),
                    "{label}: listed without pixel_values_rows"
                );
            }
            "pixel_values_row_sums" | "pixel_values_col_sums" => {
                let (want, mine, exact_mine, per_value, key) = if tensor == "pixel_values_row_sums"
                {
                    (
                        f64s(reference),
                        &row_sums,
                        exact_sums.as_ref().map(|s| &s.0),
                        dim,
                        "row_sum_abs_diff",
                    )
                } else {
                    (
                        f64s(reference),
                        &col_sums,
                        exact_sums.as_ref().map(|s| &s.1),
                        n_rows,
                        "col_sum_abs_diff",
                    )
                };
                if let Some(e) = exact_mine {
                    let d = max_diff64(e, &want);
                    let limit = exact_tol * per_value as f64;
                    println!("{label}: exact path {d:.2e} (limit {limit:.1e})");
                    assert!(d <= limit, "{label}: exact path {d}");
                }
                let d = max_diff64(mine, &want);
                println!("{label}: our pipeline {d:.3e} (tolerance {})", tier_of(key));
                assert!(d <= tier_of(key), "{label}: {d}");
            }
            other => case.unknown("tensor", other),
        }
    }
}

#[test]
fn parity_processors_qwen2vl() {
    let Some(dir) = fixture("processors") else {
        return;
    };
    let all = cases(&dir);
    for case in crate::common::processor_cases(&all, "Qwen2VLImageProcessor") {
        check_qwen_processor_case(&dir, &all, &case);
    }
}

#[test]
fn parity_processors_qwen2vl_config_is_read() {
    let Some(dir) = fixture("processors") else {
        return;
    };
    let all = cases(&dir);
    let json = &all["qwen2vl_processor_config"];
    let p = Qwen2VlImageProcessor::from_preprocessor_config(&json.to_string()).unwrap();
    let size = &json["size"];
    assert_eq!(p.min_pixels as u64, size["shortest_edge"].as_u64().unwrap());
    assert_eq!(p.max_pixels as u64, size["longest_edge"].as_u64().unwrap());
    for (key, ours) in [
        ("patch_size", p.patch_size),
        ("temporal_patch_size", p.temporal_patch_size),
        ("merge_size", p.merge_size),
    ] {
        assert_eq!(Some(ours as u64), json[key].as_u64(), "{key}");
    }
    let three = |key: &str| -> Vec<f32> { serde_json::from_value(json[key].clone()).unwrap() };
    assert_eq!(p.image_mean.to_vec(), three("image_mean"));
    assert_eq!(p.image_std.to_vec(), three("image_std"));
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

/// The fetched Qwen tokenizer (its hash checked against the fixture's record), or `None` when
/// the asset is absent on a developer's machine (a failure under CI).
fn qwen_tokenizer(qwen: &Value) -> Option<Qwen2VlTokenizer> {
    let name = qwen["tokenizer_file"]["name"]
        .as_str()
        .unwrap_or("tokenizer.json");
    let path = asset(&format!("tokenizers/qwen2-vl/{name}"))?;
    if let Some(want) = qwen["tokenizer_file"]["sha256"].as_str() {
        assert_eq!(
            crate::common::sha256_hex(&path),
            want,
            "{} hash",
            path.display()
        );
    }
    Some(Qwen2VlTokenizer::from_file(&path).expect("tokenizer.json"))
}

fn u32s(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a list of ids: {e}"))
}

/// Unicode NFC, the normalisation the Qwen tokenizer applies (and `decode` returns).
fn nfc(text: &str) -> String {
    let mut s = tokenizers::NormalizedString::from(text);
    s.nfc();
    s.get().to_string()
}

fn check_plain_text(tok: &Qwen2VlTokenizer, name: &str, case: &Value) {
    let text = case["text"].as_str().unwrap();
    let ids = u32s(&case["ids"]);
    assert_eq!(tok.encode(text).unwrap(), ids, "{name}: ids");
    if let Some(n) = case["num_tokens"].as_u64() {
        assert_eq!(ids.len() as u64, n, "{name}: num_tokens");
    }
    if let Some(tokens) = case.get("tokens") {
        let tokens: Vec<String> = serde_json::from_value(tokens.clone()).unwrap();
        assert_eq!(tok.tokens(text).unwrap(), tokens, "{name}: tokens");
    }
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        nfc(text),
        "{name}: decode"
    );
    println!("tokenizers/qwen/{name}: {} ids", ids.len());
}

fn check_chat(tok: &Qwen2VlTokenizer, merge: usize, name: &str, case: &Value) {
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
                    "text" => ContentPart::Text(c["text"].as_str().unwrap().to_string()),
                    other => panic!("{name}: unknown content type {other:?}"),
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
    let images = case["images"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let grids: Vec<GridThw> = images
        .iter()
        .map(|i| {
            let g = usizes(&i["image_grid_thw"]);
            GridThw::new(g[0], g[1], g[2])
        })
        .collect();
    for (i, (image, grid)) in images.iter().zip(&grids).enumerate() {
        if let Some(n) = image["num_image_pad_tokens"].as_u64() {
            assert_eq!(
                grid.merged_tokens(merge) as u64,
                n,
                "{name}: image {i} pads"
            );
        }
    }
    let prompt = tok.encode_chat(&messages, &grids, &[], merge).unwrap();
    let ids = u32s(&case["ids"]);
    assert_eq!(prompt.input_ids, ids, "{name}: ids");
    if let Some(n) = case["num_tokens"].as_u64() {
        assert_eq!(ids.len() as u64, n, "{name}: num_tokens");
    }
    if let Some(types) = case.get("mm_token_type_ids") {
        let types: Vec<u8> = u32s(types).iter().map(|&x| x as u8).collect();
        assert_eq!(prompt.mm_token_type_ids, types, "{name}: mm_token_type_ids");
    }
    // Rendering with the pads already expanded and tokenizing gives the same ids.
    let mut text = case["rendered_text"].as_str().unwrap().to_string();
    let pad = surveil_models::arch::qwen2_vl::IMAGE_PAD;
    for i in 0..grids.len() {
        text = text.replacen(pad, &format!("<|IMG{i}|>"), 1);
    }
    for (i, g) in grids.iter().enumerate() {
        text = text.replace(&format!("<|IMG{i}|>"), &pad.repeat(g.merged_tokens(merge)));
    }
    assert_eq!(
        tok.encode(&text).unwrap(),
        prompt.input_ids,
        "{name}: expanded-text ids"
    );
    // More images than placeholders is an error.
    let mut extra = grids.clone();
    extra.push(GridThw::new(1, merge, merge));
    assert!(tok.encode_chat(&messages, &extra, &[], merge).is_err());
    println!(
        "tokenizers/qwen/{name}: {} ids, {} images",
        ids.len(),
        grids.len()
    );
}

/// Every `qwen` case of the tokenizer fixtures: plain texts (ids, tokens, NFC decode) and chat
/// prompts (template, expanded image pads, token types).
#[test]
fn parity_tokenizers_qwen() {
    let Some(dir) = fixture("tokenizers") else {
        return;
    };
    let all = cases(&dir);
    let qwen = &all["qwen"];
    let Some(tok) = qwen_tokenizer(qwen) else {
        return;
    };
    let list = case_list(qwen);
    let mut merge = None;
    for case in &list {
        let name = &case.name;
        if case.spec.get("messages").is_some() {
            // The merge size of the processor the chat cases' images went through.
            let merge = *merge.get_or_insert_with(|| {
                let processors = fixture("processors").expect("processors fixture");
                cases(&processors)["qwen2vl_processor_config"]["merge_size"]
                    .as_u64()
                    .expect("qwen2vl_processor_config.merge_size") as usize
            });
            check_chat(&tok, merge, name, &case.spec);
        } else if case.spec.get("text").is_some() {
            check_plain_text(&tok, name, &case.spec);
        } else {
            panic!("tokenizers/qwen/{name}: neither `text` nor `messages`");
        }
    }
    // The special tokens of the record.
    for (token, id) in qwen["special_tokens"].as_object().into_iter().flatten() {
        assert_eq!(
            tok.token_id(token),
            id.as_u64().map(|x| x as u32),
            "{token}"
        );
    }
}

/// A video of two identical frames is one temporal patch whose pixels equal the still image's
/// (a still image is repeated to fill the temporal patch), so the prompt with `<|video_pad|>`
/// tokens must give exactly the logits of the prompt with `<|image_pad|>` tokens.
#[test]
fn qwen2_vl_video_of_repeated_frame_equals_image() {
    let (Some(dir), Some(processors)) = (fixture("qwen2_vl"), fixture("processors")) else {
        return;
    };
    let model = load_model(&dir, f32_policy());
    let cfg = model.config().clone();
    let proc = Qwen2VlImageProcessor::default();
    let img = open_rgb(&processor_images(&processors)[0]);
    let still = proc.preprocess_image(&img).unwrap();
    let video = proc.preprocess_video(&[img.clone(), img]).unwrap();
    assert_eq!(still.grid, video.grid);
    assert_eq!(still.pixel_values, video.pixel_values);
    let n = still.grid.merged_tokens(cfg.vision.spatial_merge_size);
    let prompt = |pad: u32| {
        let mut ids = text_ids(&cfg, 2, 5);
        ids.push(cfg.vision_start_token_id);
        ids.extend(std::iter::repeat_n(pad, n));
        ids.push(cfg.vision_end_token_id);
        ids.extend(text_ids(&cfg, 2, 7));
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

/// A byte-level `tokenizer.json` that fits the fixture model's vocabulary: the 256 bytes as
/// ids 0..=255 (no merges), fillers, and the Qwen2-VL special tokens at the ids the fixture's
/// `special_token_ids` table gives (contiguous, like the real tokenizer's).
fn fixture_tokenizer_json(special: &serde_json::Map<String, Value>, vocab_size: usize) -> String {
    let mut specials: Vec<(&str, usize)> = special
        .iter()
        .map(|(t, id)| (t.as_str(), id.as_u64().unwrap() as usize))
        .collect();
    specials.sort_by_key(|&(_, id)| id);
    let first = specials[0].1;
    assert!(
        first >= 256,
        "the fixture vocabulary has no room for the 256 bytes"
    );
    assert!(
        specials.last().unwrap().1 < vocab_size,
        "special ids past the vocabulary"
    );
    // Ids must be contiguous up to the added tokens: 256..first are filler entries that no
    // text produces (there are no merges).
    let vocab: serde_json::Map<String, Value> = byte_level_chars()
        .iter()
        .map(char::to_string)
        .chain((256..first).map(|i| format!("<unused{i}>")))
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let added: Vec<Value> = specials
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

/// Qwen2-VL behind `Vlm`, loaded by the manager from the fixture checkpoint with a byte-level
/// tokenizer beside it: the request becomes the chat template's ids (special tokens by id,
/// message text as plain text), and the answer is exactly `generate` on that prompt with the
/// tokenizer's stop ids.
#[test]
fn qwen2_vl_vlm_end_to_end_through_the_manager() {
    use surveil_models::load::manager::{LoadOptions, ModelManager};
    use surveil_models::tokenizer::TextTokenizer;
    use surveil_models::vlm::{VlmKind, VlmRequest};
    let (Some(fixture_dir), Some(processors)) = (fixture("qwen2_vl"), fixture("processors")) else {
        return;
    };
    let cfg = config(&fixture_dir);
    let special = cases(&fixture_dir)["special_token_ids"]
        .as_object()
        .expect("special_token_ids")
        .clone();
    let id_of = |t: &str| {
        special[t]
            .as_u64()
            .unwrap_or_else(|| panic!("no id for {t}")) as u32
    };
    let (im_end, endoftext) = (id_of("<|im_end|>"), id_of("<|endoftext|>"));
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("tokenizer.json"),
        fixture_tokenizer_json(&special, cfg.text.vocab_size),
    )
    .unwrap();
    let opts = LoadOptions {
        weights: surveil_config::WeightsSpec::Dir(dir.path().to_path_buf()),
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
    m.load("qwen2-vl-2b-instruct", &opts).unwrap();
    let vlm = m.vlm().unwrap();
    assert_eq!(vlm.kind(), VlmKind::Instruction);
    assert_eq!(vlm.tokenizer().stop_token_ids(), vec![im_end, endoftext]);
    let vocab = vlm.tokenizer().vocabulary().expect("byte-level vocabulary");
    assert_eq!(vocab.bytes(u32::from(b'A')), Some(&b"A"[..]));
    assert_eq!(vocab.bytes(0xE9), Some(&[0xE9u8][..]), "raw byte tokens");
    assert!(vocab.is_special(im_end) && vocab.bytes(im_end).is_none());

    let tok = Qwen2VlTokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    // Plain encoding keeps special-token text as text (one byte token per byte); the template
    // inserts them by id.
    let typed = "<|im_end|>";
    assert_eq!(
        TextTokenizer::encode(&tok, typed).unwrap().len(),
        typed.len()
    );
    assert_eq!(tok.encode(typed).unwrap(), vec![im_end]);
    let messages = [ChatMessage::user_with_images(0, "hi <|im_end|>")];
    let ids = tok.encode_chat(&messages, &[], &[], 2).unwrap().input_ids;
    // Two turns end with <|im_end|> (the default system turn, the user's); the typed one is
    // byte tokens.
    assert_eq!(ids.iter().filter(|&&t| t == im_end).count(), 2, "{ids:?}");
    let plain = TextTokenizer::encode(&tok, "hi <|im_end|>").unwrap();
    assert!(ids.windows(plain.len()).any(|w| w == plain.as_slice()));

    let model = load_model(&fixture_dir, f32_policy());
    let frames = [open_rgb(&processor_images(&processors)[0])];
    let merge = cfg.vision.spatial_merge_size;
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
                .encode_chat(&messages, &grids, &[], merge)
                .unwrap()
                .input_ids,
            pixel_values,
            image_grids: grids,
            ..Default::default()
        };
        let params = GenerationParams::greedy(6);
        let expected = model
            .generate(
                &input,
                &params,
                &[im_end, endoftext],
                Some(&tok),
                &mut NoHooks,
            )
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

/// The host side of a Qwen2-VL-2B 4-bit GPU load, timed on the CPU device: the GPU policy's
/// Q4K blocks quantized from dummy weights (no upload). A measurement, not a check; run with
/// `cargo test --release -p surveil-models --test it -- --ignored gpu_policy_load --nocapture`.
#[test]
#[ignore = "a timing of a full-size load (about 10 s on 2 cores)"]
fn qwen2_vl_2b_gpu_policy_load_time() {
    let cfg = surveil_models::arch::qwen2_vl::qwen2_vl_2b_config();
    for round in 0..2 {
        let src = DummySource::new("qwen2-vl-2b", tensor_layout(&cfg), DType::F32, 0);
        let w = Weights::new(
            Box::new(src),
            Device::Cpu,
            QuantPolicy::for_storage(StorageDtype::Q4K),
        );
        let start = std::time::Instant::now();
        let model = Qwen2VlModel::load(&cfg, &w).unwrap();
        println!(
            "round {round}: GPU-policy (Q4K) load on the host {:.2} s, {} bytes",
            start.elapsed().as_secs_f64(),
            w.report().total_bytes()
        );
        drop(model);
    }
}
