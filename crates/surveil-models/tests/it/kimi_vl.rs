//! Kimi-VL parity tests against the `kimi_vl` fixture folder (random tiny weights, reference =
//! a PyTorch port of a public engine's MoonViT + projector and transformers' DeepSeek-V3
//! decoder). Cases, grids, ids, shapes and tolerances are read from the fixtures; every output
//! and intermediate a case lists is compared (or, for the decoder's per-layer outputs, which
//! the library does not expose, named as not compared).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::deepseek_v3::Logits;
use surveil_models::arch::kimi_vl::{
    full_tensor_layout, tensor_layout, GridHw, KimiVlConfig, KimiVlImageProcessor, KimiVlModel,
    KimiVlProjector, MoonVit,
};
use surveil_models::load::weights::{SafetensorsSource, Weights};

use crate::common::{
    case_list, cases, check_quantized_greedy, correlation, fixture, floats, ints, load_tensors,
    max_abs_diff, open_rgb, token_ids, usizes, Case,
};

fn config(dir: &Path) -> KimiVlConfig {
    KimiVlConfig::from_file(&dir.join("config.json")).expect("config.json")
}

fn weights(dir: &Path, policy: QuantPolicy) -> Weights {
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).expect("weights");
    Weights::new(Box::new(src), Device::Cpu, policy)
}

fn f32_policy() -> QuantPolicy {
    QuantPolicy::unquantized(StorageDtype::F32)
}

fn load_vision(dir: &Path, policy: QuantPolicy) -> (MoonVit, KimiVlProjector, Weights) {
    let cfg = config(dir);
    let w = weights(dir, policy);
    let tower = MoonVit::load(&cfg.vision, &w.pp("vision_tower")).expect("tower");
    let projector = KimiVlProjector::load(
        &cfg.vision,
        cfg.text_hidden_size,
        &w.pp("multi_modal_projector"),
    )
    .expect("projector");
    (tower, projector, w)
}

fn grids_of(t: &Tensor) -> Vec<GridHw> {
    ints(t)
        .chunks(2)
        .map(|c| GridHw::new(c[0] as usize, c[1] as usize))
        .collect()
}

fn grids_from_json(v: &Value) -> Vec<GridHw> {
    v.as_array()
        .expect("a list of grids")
        .iter()
        .map(|g| {
            let g = usizes(g);
            GridHw::new(g[0], g[1])
        })
        .collect()
}

/// Compare with a tensor's entry in `cases.json`: `exact` (bit-identical), else elementwise
/// `|ours − expected| ≤ atol + rtol·|expected|`; with `relaxed`, the entry's `relaxed_atol`
/// replaces `atol` (the fixture's rule for resamplers that are not bit-exact with Pillow). Every
/// value must be finite. Returns the max abs difference.
fn check(spec: &Value, label: &str, ours: &Tensor, expected: &Tensor, relaxed: bool) -> f32 {
    assert!(spec.is_object(), "{label}: no entry in cases.json");
    assert_eq!(ours.dims(), expected.dims(), "{label}: shape");
    if expected.dtype().is_int() {
        if relaxed {
            let limit = spec["relaxed_max_abs_diff"]
                .as_i64()
                .unwrap_or_else(|| panic!("{label}: no relaxed_max_abs_diff"));
            let worst = ints(ours)
                .iter()
                .zip(ints(expected))
                .map(|(a, b)| (a - b).abs())
                .max()
                .unwrap_or(0);
            println!("{label}: max_abs_diff {worst} (relaxed tolerance {limit})");
            assert!(worst <= limit, "{label}: {worst} > {limit}");
            return worst as f32;
        }
        assert_eq!(ints(ours), ints(expected), "{label}: exact");
        println!("{label}: exact");
        return 0.0;
    }
    let a = floats(ours);
    let e = floats(expected);
    if spec["exact"].as_bool() == Some(true) && !relaxed {
        assert!(
            a.iter().all(|x| x.is_finite()),
            "{label}: non-finite values"
        );
        assert_eq!(a, e, "{label}: exact");
        println!("{label}: exact");
        return 0.0;
    }
    let key = if relaxed { "relaxed_atol" } else { "atol" };
    let atol = spec[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{label}: no {key}")) as f32;
    let rtol = spec["rtol"].as_f64().unwrap_or(0.0) as f32;
    let mut worst = 0f32;
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!(
            x.is_finite() && y.is_finite(),
            "{label}[{i}]: non-finite value {x} vs {y}"
        );
        let d = (x - y).abs();
        assert!(
            d <= atol + rtol * y.abs(),
            "{label}[{i}]: {x} vs {y} ({key} {atol}, rtol {rtol})"
        );
        worst = worst.max(d);
    }
    println!("{label}: max_abs_diff {worst:.3e} ({key} {atol:.0e}, rtol {rtol:.0e})");
    worst
}

/// The `cases.json` entry of a tensor, under `outputs` or `intermediates`.
fn spec<'a>(case: &'a Case, name: &str) -> &'a Value {
    let s = &case.spec["outputs"][name];
    if s.is_null() {
        &case.spec["intermediates"][name]
    } else {
        s
    }
}

/// Names listed under `outputs` and `intermediates`.
fn listed_tensors(case: &Case) -> Vec<String> {
    let mut names = case.listed("outputs");
    names.extend(case.listed("intermediates"));
    names
}

/// MoonViT + projector on the case's packed pixels: every listed output and intermediate.
fn check_vision_case(
    dir: &Path,
    cfg: &KimiVlConfig,
    tower: &MoonVit,
    projector: &KimiVlProjector,
    case: &Case,
) {
    let name = format!("kimi_vl/{}", case.name);
    let t = case.tensors(dir);
    case.check_file(&t, &["inputs", "outputs", "intermediates"]);
    for input in case.listed("inputs") {
        if !matches!(input.as_str(), "pixel_values" | "image_grid_hws") {
            case.unknown("input", &input);
        }
    }
    let grids = grids_of(&t["image_grid_hws"]);
    if let Some(g) = case.spec.get("image_grid_hws") {
        assert_eq!(grids, grids_from_json(g), "{name}: image_grid_hws");
    }
    if let Some(g) = case.spec.get("pos_emb_grid_hw") {
        assert_eq!(
            usizes(g),
            [
                cfg.vision.init_pos_emb_height,
                cfg.vision.init_pos_emb_width
            ],
            "{name}: pos_emb_grid_hw"
        );
    }
    println!("{name}: grids {grids:?}");
    let out = tower
        .forward_with_intermediates(&t["pixel_values"], &grids)
        .unwrap();
    let mut merged = None;
    for tensor in listed_tensors(case) {
        let label = format!("{name}: {tensor}");
        let block = tensor
            .strip_prefix("block")
            .and_then(|s| s.strip_suffix("_out"))
            .and_then(|i| i.parse::<usize>().ok());
        let ours = match tensor.as_str() {
            "pos_embeds" => out.pos_embeds.clone(),
            "patch_embed_out" => out.patch_embed_out.clone(),
            "rope_cos" => out.rope_cos.clone(),
            "rope_sin" => out.rope_sin.clone(),
            "encoder_out" => out.encoder_out.clone(),
            "vision_tower_out" | "projector_out" => {
                let m = merged
                    .get_or_insert_with(|| tower.merge_patches(&out.encoder_out, &grids).unwrap());
                if tensor == "projector_out" {
                    projector.forward(m).unwrap()
                } else {
                    m.clone()
                }
            }
            _ if block.is_some() => out
                .block_outs
                .get(block.unwrap())
                .unwrap_or_else(|| panic!("{label}: the tower has {} blocks", out.block_outs.len()))
                .clone(),
            other => case.unknown("tensor", other),
        };
        check(spec(case, &tensor), &label, &ours, &t[&tensor], false);
    }
}

/// A tensor named by an input entry: in the case's own file, or `{"from": "file:tensor"}`.
fn input_tensor(dir: &Path, case: &Case, t: &HashMap<String, Tensor>, name: &str) -> Tensor {
    match case.spec["inputs"][name]["from"].as_str() {
        Some(from) => {
            let (file, tensor) = from
                .split_once(':')
                .unwrap_or_else(|| panic!("case {}: bad `from` {from:?}", case.name));
            load_tensors(&dir.join(file))
                .remove(tensor)
                .unwrap_or_else(|| panic!("case {}: {from} not found", case.name))
        }
        None => t
            .get(name)
            .unwrap_or_else(|| panic!("case {}: input {name} not in the file", case.name))
            .clone(),
    }
}

/// Greedy decoding after a prefill whose logits of every position are `logits`
/// `(positions, vocab)`, continuing `cache`: per step, the token chosen and the logits it was
/// chosen from (no EOS stop, like the fixture).
fn greedy_steps(
    model: &KimiVlModel,
    logits: &Tensor,
    cache: &mut surveil_models::arch::deepseek_v3::DeepseekV3Cache,
    steps: usize,
) -> Vec<(u32, Vec<f32>)> {
    let last = logits.dim(0).unwrap() - 1;
    let mut step = floats(&logits.get(last).unwrap());
    let mut out = Vec::with_capacity(steps);
    for k in 0..steps {
        let tok = surveil_models::generation::argmax(&step);
        out.push((tok, step));
        if k + 1 == steps {
            break;
        }
        step = floats(&model.decode_step(tok, cache).unwrap());
    }
    out
}

/// Vision + projector + decoder: prefill logits and greedy decoding with the KV cache.
fn check_full_model_case(dir: &Path, cfg: &KimiVlConfig, model: &KimiVlModel, case: &Case) {
    let name = format!("kimi_vl/{}", case.name);
    let t = case.tensors(dir);
    case.check_file(&t, &["inputs", "outputs", "intermediates"]);
    let mut pixels = None;
    for input in case.listed("inputs") {
        match input.as_str() {
            "input_ids" | "image_grid_hws" => {}
            "pixel_values" => pixels = Some(input_tensor(dir, case, &t, &input)),
            other => case.unknown("input", other),
        }
    }
    let ids = token_ids(&t["input_ids"]);
    let grids = t.get("image_grid_hws").map(grids_of).unwrap_or_default();
    let images = pixels.as_ref().map(|p| (p, grids.as_slice()));
    // What the case states about its prompt.
    if let Some(n) = case.spec["input_len"].as_u64() {
        assert_eq!(ids.len() as u64, n, "{name}: input_len");
    }
    if let Some(p) = case.spec["media_placeholder_token_id"].as_u64() {
        assert_eq!(
            u64::from(cfg.media_placeholder_token_id),
            p,
            "{name}: placeholder id"
        );
    }
    if let Some(per_image) = case.spec.get("placeholder_tokens_per_image") {
        let ours: Vec<usize> = grids
            .iter()
            .map(|g| g.merged_tokens(cfg.vision.merge_kernel_size))
            .collect();
        assert_eq!(ours, usizes(per_image), "{name}: placeholders per image");
        let in_prompt = ids
            .iter()
            .filter(|&&id| id == cfg.media_placeholder_token_id)
            .count();
        assert_eq!(
            in_prompt,
            ours.iter().sum::<usize>(),
            "{name}: placeholders in the prompt"
        );
    }
    println!("{name}: {} tokens, grids {grids:?}", ids.len());

    let listed = listed_tensors(case);
    let steps = ["greedy_tokens", "greedy_step_logits"]
        .iter()
        .find(|n| listed.iter().any(|l| l == *n))
        .map(|n| t[*n].dim(0).unwrap());
    if let (Some(steps), Some(n)) = (steps, case.spec["generation"]["max_new_tokens"].as_u64()) {
        assert_eq!(steps as u64, n, "{name}: max_new_tokens");
    }
    // Prefill (all positions), then greedy decoding with the KV cache.
    let mut cache = model.new_cache();
    let logits = model
        .prefill(&ids, images, &mut cache, Logits::All)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let greedy = steps.map_or_else(Vec::new, |steps| {
        greedy_steps(model, &logits, &mut cache, steps)
    });
    let tokens: Vec<i64> = greedy.iter().map(|(tok, _)| i64::from(*tok)).collect();
    let step_logits: Vec<Tensor> = greedy
        .into_iter()
        .map(|(_, row)| {
            let n = row.len();
            Tensor::from_vec(row, n, &Device::Cpu).unwrap()
        })
        .collect();
    let mut features = None;
    let mut not_compared = Vec::new();
    for tensor in listed {
        let label = format!("{name}: {tensor}");
        let is_layer_out = tensor
            .strip_prefix("layer")
            .and_then(|s| s.strip_suffix("_out"))
            .is_some_and(|i| i.parse::<usize>().is_ok());
        let ours = match tensor.as_str() {
            "logits" => logits.clone(),
            "greedy_tokens" => Tensor::new(tokens.as_slice(), &Device::Cpu).unwrap(),
            "greedy_step_logits" => Tensor::stack(&step_logits, 0).unwrap(),
            "image_embeds" | "inputs_embeds" => {
                let (p, g) = images.unwrap_or_else(|| panic!("{label}: the case has no image"));
                let f = features.get_or_insert_with(|| model.image_features(p, g).unwrap());
                if tensor == "image_embeds" {
                    f.clone()
                } else {
                    model.splice(&ids, Some(f)).unwrap().squeeze(0).unwrap()
                }
            }
            // The decoder's per-layer hidden states: an intermediate the library exposes no
            // hook for. Named, never silently dropped; an output of that name would fail.
            _ if is_layer_out && !case.lists("outputs", &tensor) => {
                not_compared.push(tensor);
                continue;
            }
            other => case.unknown("tensor", other),
        };
        check(spec(case, &tensor), &label, &ours, &t[&tensor], false);
    }
    if !not_compared.is_empty() {
        println!(
            "{name}: intermediates not compared (no decoder hidden-state hook): {not_compared:?}"
        );
    }
}

/// The reconstructed image processor on the case's PNG, one run per `runs` entry, and the
/// fixture model on each run's pixels where the case lists its outputs.
fn check_preprocess_case(dir: &Path, tower: &MoonVit, projector: &KimiVlProjector, case: &Case) {
    let name = format!("kimi_vl/{}", case.name);
    let t = case.tensors(dir);
    let runs = case.spec["runs"].as_object().expect("runs");
    case.check_file(&t, &["outputs"]);
    let png = dir.join(case.spec["inputs"]["png"].as_str().unwrap());
    let img = open_rgb(&png);
    if let Some(wh) = case.spec["inputs"].get("png_size_wh") {
        assert_eq!(
            usizes(wh),
            [img.width() as usize, img.height() as usize],
            "{name}: png size"
        );
    }
    let params = &case.spec["processor_params"];
    let three = |key: &str| -> [f32; 3] {
        serde_json::from_value(params[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let merge = usizes(&params["merge_kernel_size"]);
    struct Run {
        processor: KimiVlImageProcessor,
        out: surveil_models::arch::kimi_vl::ProcessedImage,
        /// Whether our resize is bit-exact with Pillow's (else the relaxed tolerances apply).
        exact_resize: Option<bool>,
    }
    let mut done: HashMap<String, Run> = HashMap::new();
    for (run_name, run) in runs {
        let processor = KimiVlImageProcessor {
            patch_size: params["patch_size"].as_u64().unwrap() as usize,
            in_token_limit: run["in_token_limit"].as_u64().unwrap() as usize,
            merge_kernel_size: [merge[0], merge[1]],
            image_mean: three("image_mean"),
            image_std: three("image_std"),
        };
        let out = processor.preprocess(&img).unwrap();
        let label = format!("{name}: run {run_name}");
        let grid = [out.grid.h, out.grid.w];
        for (key, ours) in [
            (
                "resized_wh",
                vec![out.resized_wh.0 as usize, out.resized_wh.1 as usize],
            ),
            (
                "padded_wh",
                vec![
                    grid[1] * processor.patch_size,
                    grid[0] * processor.patch_size,
                ],
            ),
            ("grid_hw", grid.to_vec()),
        ] {
            if let Some(v) = run.get(key) {
                assert_eq!(ours, usizes(v), "{label}: {key}");
            }
        }
        let tokens = out.grid.merged_tokens(processor.merge_kernel_size);
        for key in ["num_image_tokens", "vllm_formula_num_image_tokens"] {
            if let Some(n) = run[key].as_u64() {
                assert_eq!(tokens as u64, n, "{label}: {key}");
            }
        }
        println!("{label}: grid {grid:?}, resized {:?}", out.resized_wh);
        done.insert(
            run_name.clone(),
            Run {
                processor,
                out,
                exact_resize: None,
            },
        );
    }
    // Which run a tensor belongs to, and its name within the run.
    let split = |tensor: &str| -> (String, String) {
        runs.iter()
            .find_map(|(run_name, run)| {
                let prefix = run["tensor_prefix"].as_str()?;
                tensor
                    .strip_prefix(prefix)
                    .map(|rest| (run_name.clone(), rest.to_string()))
            })
            .unwrap_or_else(|| panic!("{name}: {tensor} belongs to no run"))
    };
    // Resized images first: whether each run's resize is bit-exact decides its tolerances.
    let mut outputs = case.listed("outputs");
    outputs.sort_by_key(|o| !o.ends_with("resized_rgb_u8"));
    let mut features: HashMap<String, Tensor> = HashMap::new();
    for tensor in outputs {
        let (run_name, what) = split(&tensor);
        let label = format!("{name}: {tensor}");
        let expected = &t[&tensor];
        let run = done.get_mut(&run_name).unwrap();
        let pixels = || {
            Tensor::from_vec(
                run.out.pixel_values.clone(),
                (
                    run.out.grid.patches(),
                    3,
                    run.processor.patch_size,
                    run.processor.patch_size,
                ),
                &Device::Cpu,
            )
            .unwrap()
        };
        match what.as_str() {
            "resized_rgb_u8" => {
                let resized = run.processor.resize(&img).unwrap();
                let (w, h) = resized.dimensions();
                let ours = Tensor::from_vec(
                    resized.into_raw(),
                    (h as usize, w as usize, 3),
                    &Device::Cpu,
                )
                .unwrap();
                let exact = ours.dims() == expected.dims() && ints(&ours) == ints(expected);
                run.exact_resize = Some(exact);
                // Without a resize (the image fits) the copy must be exact.
                let resampled = (w, h) != img.dimensions();
                check(
                    spec(case, &tensor),
                    &label,
                    &ours,
                    expected,
                    !exact && resampled,
                );
            }
            "image_grid_hws" => {
                let ours = Tensor::new(
                    &[[run.out.grid.h as i64, run.out.grid.w as i64]],
                    &Device::Cpu,
                )
                .unwrap();
                check(spec(case, &tensor), &label, &ours, expected, false);
            }
            "pixel_values" => {
                let relaxed = run.exact_resize == Some(false);
                check(spec(case, &tensor), &label, &pixels(), expected, relaxed);
            }
            "vision_tower_out" | "projector_out" => {
                let grid = run.out.grid;
                let merged = features
                    .entry(run_name.clone())
                    .or_insert_with(|| tower.forward(&pixels(), &[grid]).unwrap())
                    .clone();
                let ours = if what == "projector_out" {
                    projector.forward(&merged).unwrap()
                } else {
                    merged
                };
                check(spec(case, &tensor), &label, &ours, expected, false);
            }
            _ => case.unknown("output", &tensor),
        }
    }
}

/// Every case of the Kimi-VL fixture, by what its inputs are: a PNG (the image processor),
/// token ids (the whole model), or packed pixels (the vision tower and projector).
#[test]
fn parity_kimi_vl() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = config(&dir);
    let (tower, projector, _) = load_vision(&dir, f32_policy());
    let mut model = None;
    for case in case_list(&cases(&dir)) {
        let inputs = &case.spec["inputs"];
        if inputs.get("png").is_some() {
            check_preprocess_case(&dir, &tower, &projector, &case);
        } else if inputs.get("input_ids").is_some() {
            let model = model.get_or_insert_with(|| {
                KimiVlModel::load(&cfg, &weights(&dir, f32_policy())).expect("load")
            });
            check_full_model_case(&dir, &cfg, model, &case);
        } else if inputs.get("pixel_values").is_some() {
            check_vision_case(&dir, &cfg, &tower, &projector, &case);
        } else {
            panic!(
                "kimi_vl/{}: inputs {inputs} are none this test knows",
                case.name
            );
        }
    }
}

#[test]
fn kimi_vl_config_and_layout_match_the_fixture_checkpoint() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = config(&dir);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        Some(u64::from(cfg.media_placeholder_token_id)),
        json["media_placeholder_token_id"].as_u64()
    );
    assert_eq!(
        cfg.vision.merge_kernel_size.to_vec(),
        usizes(&json["vision_config"]["merge_kernel_size"])
    );
    assert_eq!(
        Some(cfg.text_hidden_size as u64),
        json["text_config"]["hidden_size"].as_u64()
    );
    let all = cases(&dir);
    let ckpt = all["checkpoint"]["tensors"].as_object().unwrap();
    let shapes = |filter: &dyn Fn(&str) -> bool| {
        let mut v: Vec<(String, Vec<usize>)> = ckpt
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(k, v)| (k.clone(), usizes(v)))
            .collect();
        v.sort();
        v
    };
    let mut ours = tensor_layout(&cfg.vision, cfg.text_hidden_size);
    ours.sort();
    assert_eq!(ours, shapes(&|k| !k.starts_with("language_model.")));

    // The whole checkpoint, decoder included.
    let mut ours = full_tensor_layout(&cfg).unwrap();
    ours.sort();
    assert_eq!(
        ours.len(),
        all["checkpoint"]["num_tensors"].as_u64().unwrap() as usize
    );
    assert_eq!(ours, shapes(&|_| true));
}

#[test]
fn moonvit_rejects_bad_inputs() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let (tower, _, _) = load_vision(&dir, f32_policy());
    let p = config(&dir).vision.patch_size;
    let zeros = |n: usize, side: usize| {
        Tensor::zeros((n, 3, side, side), DType::F32, &Device::Cpu).unwrap()
    };
    // Patch count and grid disagree; no grid at all.
    let px = zeros(12, p);
    assert!(tower.forward(&px, &[GridHw::new(3, 5)]).is_err());
    assert!(tower.forward(&px, &[]).is_err());
    // An odd grid runs through the encoder but cannot be merged.
    let px = zeros(15, p);
    assert!(tower.encode(&px, &[GridHw::new(3, 5)]).is_ok());
    assert!(tower.forward(&px, &[GridHw::new(3, 5)]).is_err());
    // Patches of the wrong size.
    let bad = zeros(12, p + 2);
    assert!(tower.forward(&bad, &[GridHw::new(2, 6)]).is_err());
}

#[test]
fn kimi_vl_rejects_placeholder_mismatch() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = config(&dir);
    let model = KimiVlModel::load(&cfg, &weights(&dir, f32_policy())).expect("load");
    let p = cfg.media_placeholder_token_id;
    // Two plain tokens that are not the placeholder.
    let (a, b) = ((p + 1) % 7 + 1, (p + 3) % 7 + 1);
    assert!(a != p && b != p);
    let features = Tensor::zeros((2, cfg.text_hidden_size), DType::F32, &Device::Cpu).unwrap();
    let err = model.splice(&[a, p, b], Some(&features)).unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");
    assert!(model.splice(&[a, p, b], None).is_err());
    // Text only: plain token embeddings.
    let e = model.splice(&[a, b, a], None).unwrap();
    assert_eq!(e.dims(), &[1, 3, cfg.text_hidden_size]);
}

/// The half-precision path a GPU takes with f16 or bf16 weights (hidden states, latent cache
/// and attention scores in the weights' dtype; softmax, norms and the MoE router in f32), run
/// through the same candle compositions on the CPU: on every whole-model case, the prompt
/// logits against the f32 reference (correlation) and greedy tokens that may leave it only at
/// a near tie; on every vision case, the projector output.
#[test]
fn parity_kimi_vl_half_precision_activations() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = config(&dir);
    let all = case_list(&cases(&dir));
    let f32_model = KimiVlModel::load(&cfg, &weights(&dir, f32_policy())).unwrap();
    let mut checked = 0;
    // Floors: measured on the shared set, bf16 0.9985 (logits; bf16 activations with f32
    // weights alone give 0.9980: the MoE router sees rounded hidden states) and 0.9999
    // (projector), f16 0.99999; a broken dtype path (a table or cache in the wrong dtype, an
    // unscaled softmax) falls far lower.
    for (storage, dtype, floor) in [
        (StorageDtype::Bf16, DType::BF16, 0.995),
        (StorageDtype::F16, DType::F16, 0.999),
    ] {
        let w = weights(&dir, QuantPolicy::for_storage(storage))
            .with_activations(dtype)
            .unwrap();
        let model = KimiVlModel::load(&cfg, &w).unwrap();
        for case in &all {
            let label = format!("{dtype:?} activations kimi_vl/{}", case.name);
            let t = case.tensors(&dir);
            if case.lists("inputs", "input_ids") {
                let ids = token_ids(&t["input_ids"]);
                let pixels = case
                    .lists("inputs", "pixel_values")
                    .then(|| input_tensor(&dir, case, &t, "pixel_values"));
                let grids = t.get("image_grid_hws").map(grids_of).unwrap_or_default();
                let images = pixels.as_ref().map(|p| (p, grids.as_slice()));
                let mut cache = model.new_cache();
                let logits = model
                    .prefill(&ids, images, &mut cache, Logits::All)
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                assert_eq!(logits.dtype(), DType::F32, "{label}");
                // The latent cache holds the activation dtype: half the f32 cache's bytes.
                let mut f32_cache = f32_model.new_cache();
                f32_model
                    .prefill(&ids, images, &mut f32_cache, Logits::Last)
                    .unwrap();
                assert_eq!(
                    cache.bytes() * 2,
                    f32_cache.bytes(),
                    "{label}: latent cache"
                );
                if case.lists("outputs", "logits") {
                    let r = correlation(&logits, &t["logits"]);
                    println!("{label}: logits correlation {r:.6}");
                    assert!(r > floor, "{label}: logits correlation {r} <= {floor}");
                    checked += 1;
                }
                let listed = listed_tensors(case);
                if listed.iter().any(|l| l == "greedy_tokens")
                    && listed.iter().any(|l| l == "greedy_step_logits")
                {
                    let reference = &t["greedy_step_logits"];
                    let rows: Vec<Vec<f32>> = (0..reference.dim(0).unwrap())
                        .map(|k| floats(&reference.get(k).unwrap()))
                        .collect();
                    let expected = token_ids(&t["greedy_tokens"]);
                    let ours = greedy_steps(&model, &logits, &mut cache, rows.len());
                    let agree = check_quantized_greedy(&label, &ours, &expected, &rows);
                    println!(
                        "{label}: greedy tokens agree for {agree}/{} steps",
                        rows.len()
                    );
                }
            } else if case.lists("inputs", "pixel_values") && case.lists("outputs", "projector_out")
            {
                let pixels = input_tensor(&dir, case, &t, "pixel_values");
                let grids = grids_of(&t["image_grid_hws"]);
                let out = model.image_features(&pixels, &grids).unwrap();
                assert_eq!(out.dtype(), dtype, "{label}");
                let r = correlation(&out, &t["projector_out"]);
                println!("{label}: projector_out correlation {r:.6}");
                assert!(
                    r > floor,
                    "{label}: projector_out correlation {r} <= {floor}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no kimi_vl case lists logits or projector_out");
}

/// Q8_0 linears in the tower and projector (the fixture's rows divide into 32-value blocks):
/// every linear is quantized and the projector output of every vision case stays close to the
/// f32 reference.
#[test]
fn kimi_vl_vision_q8_0_tracks_the_reference() {
    // candle's Q8_0 blocks and the CPU tile layout of the same math.
    for storage in [StorageDtype::Q8_0, StorageDtype::Q8_0x16] {
        check_vision_q8(storage);
    }
}

fn check_vision_q8(storage: StorageDtype) {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = config(&dir);
    let policy = QuantPolicy {
        linear: storage,
        float: StorageDtype::F32,
    };
    let (tower, projector, w) = load_vision(&dir, policy);
    let report = w.report();
    // wqkv, wo, fc0, fc1 per block, linear_1 and linear_2 in the projector; the patch
    // embedding (a convolution weight) stays f32.
    let linears = 4 * cfg.vision.num_hidden_layers + 2;
    assert_eq!(
        report.tensors_by_dtype.get(&storage).copied(),
        Some(linears),
        "{report:?}"
    );
    assert!(report.fallback_tensors.is_empty(), "{report:?}");
    let mut checked = 0;
    for case in case_list(&cases(&dir)) {
        if !case.lists("inputs", "pixel_values") || !case.lists("outputs", "projector_out") {
            continue;
        }
        let t = case.tensors(&dir);
        let Some(pixels) = t.get("pixel_values") else {
            continue;
        };
        let grids = grids_of(&t["image_grid_hws"]);
        let merged = tower.forward(pixels, &grids).unwrap();
        let out = projector.forward(&merged).unwrap();
        let r = correlation(&out, &t["projector_out"]);
        let d = max_abs_diff(&out, &t["projector_out"]);
        println!(
            "{storage} kimi_vl/{}: projector_out max_abs_diff {d:.3e}, correlation {r:.6}",
            case.name
        );
        assert!(r > 0.999, "kimi_vl/{}: correlation {r}", case.name);
        checked += 1;
    }
    assert!(
        checked > 0,
        "no kimi_vl case lists pixel_values and projector_out"
    );
}
