//! Kimi-VL parity tests against `../shared/fixtures/kimi_vl` (random tiny weights, reference =
//! a PyTorch port of a public engine's MoonViT + projector). Shapes, grids and tolerances are
//! read from `cases.json`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::deepseek_v3::Logits;
use surveil_models::kimi_vl::{
    full_tensor_layout, tensor_layout, GridHw, KimiVlConfig, KimiVlImageProcessor, KimiVlModel,
    KimiVlProjector, MoonVit,
};
use surveil_models::weights::{SafetensorsSource, Weights};

use crate::common::{cases, fixtures_dir, load_tensors};

fn folder() -> PathBuf {
    fixtures_dir().join("kimi_vl")
}

fn config() -> KimiVlConfig {
    KimiVlConfig::from_file(&folder().join("config.json")).expect("config.json")
}

fn weights() -> Weights {
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).expect("weights");
    Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    )
}

fn load_vision() -> (MoonVit, KimiVlProjector) {
    let cfg = config();
    let w = weights();
    let tower = MoonVit::load(&cfg.vision, &w.pp("vision_tower")).expect("tower");
    let projector = KimiVlProjector::load(
        &cfg.vision,
        cfg.text_hidden_size,
        &w.pp("multi_modal_projector"),
    )
    .expect("projector");
    (tower, projector)
}

fn case(name: &str) -> serde_json::Value {
    let all = cases(&folder());
    all["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .clone()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn grids_of(t: &Tensor) -> Vec<GridHw> {
    ints(t)
        .chunks(2)
        .map(|c| GridHw::new(c[0] as usize, c[1] as usize))
        .collect()
}

/// Elementwise `|a - e| <= atol + rtol·|e|` with the case's tolerances; returns the max abs
/// difference.
fn check(spec: &serde_json::Value, label: &str, ours: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(ours.dims(), expected.dims(), "{label}: shape");
    let atol = spec["atol"].as_f64().expect("atol") as f32;
    let rtol = spec["rtol"].as_f64().unwrap_or(0.0) as f32;
    let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = expected
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f32;
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let d = (x - y).abs();
        assert!(
            d <= atol + rtol * y.abs(),
            "{label}[{i}]: {x} vs {y} (atol {atol}, rtol {rtol})"
        );
        worst = worst.max(d);
    }
    println!("{label}: max_abs_diff {worst:.3e} (atol {atol:.0e}, rtol {rtol:.0e})");
    worst
}

fn spec<'a>(case: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let s = &case["outputs"][name];
    if s.is_null() {
        &case["intermediates"][name]
    } else {
        s
    }
}

fn check_vision_case(name: &str) {
    let c = case(name);
    let t: HashMap<String, Tensor> = load_tensors(&folder().join(c["file"].as_str().unwrap()));
    let grids = grids_of(&t["image_grid_hws"]);
    let expected_grids: Vec<GridHw> = c["image_grid_hws"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            GridHw::new(
                g[0].as_u64().unwrap() as usize,
                g[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(grids, expected_grids, "{name}: grids");
    let (tower, projector) = load_vision();
    let out = tower
        .forward_with_intermediates(&t["pixel_values"], &grids)
        .unwrap();
    let mut compared = Vec::new();
    let mut cmp = |label: &str, ours: &Tensor| {
        if let Some(expected) = t.get(label) {
            check(spec(&c, label), &format!("{name}: {label}"), ours, expected);
            compared.push(label.to_string());
        }
    };
    cmp("pos_embeds", &out.pos_embeds);
    cmp("patch_embed_out", &out.patch_embed_out);
    cmp("rope_cos", &out.rope_cos);
    cmp("rope_sin", &out.rope_sin);
    for (i, b) in out.block_outs.iter().enumerate() {
        cmp(&format!("block{i}_out"), b);
    }
    cmp("encoder_out", &out.encoder_out);
    let merged = tower.merge_patches(&out.encoder_out, &grids).unwrap();
    cmp("vision_tower_out", &merged);
    let projected = projector.forward(&merged).unwrap();
    cmp("projector_out", &projected);
    // Every tensor of the fixture except the inputs was compared.
    let mut outputs: Vec<&String> = t
        .keys()
        .filter(|k| !matches!(k.as_str(), "pixel_values" | "image_grid_hws"))
        .collect();
    outputs.sort();
    compared.sort();
    assert_eq!(
        outputs,
        compared.iter().collect::<Vec<_>>(),
        "{name}: compared tensors"
    );
    assert!(compared.iter().any(|k| k == "projector_out"), "{name}");
}

#[test]
fn parity_kimi_vl_vision_packed() {
    check_vision_case("vision_packed");
}

#[test]
fn parity_kimi_vl_vision_native_grid() {
    check_vision_case("vision_native_grid");
}

#[test]
fn kimi_vl_config_and_layout_match_the_fixture_checkpoint() {
    let cfg = config();
    assert_eq!(cfg.media_placeholder_token_id, 317);
    assert_eq!(cfg.vision.merge_kernel_size, [2, 2]);
    assert_eq!(cfg.text_hidden_size, 64);
    let all = cases(&folder());
    let ckpt = all["checkpoint"]["tensors"].as_object().unwrap();
    let layout = tensor_layout(&cfg.vision, cfg.text_hidden_size);
    let expected: Vec<(String, Vec<usize>)> = ckpt
        .iter()
        .filter(|(k, _)| !k.starts_with("language_model."))
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect();
    let mut ours = layout.clone();
    ours.sort();
    let mut theirs = expected;
    theirs.sort();
    assert_eq!(ours, theirs);

    // The whole checkpoint, decoder included.
    let mut ours = full_tensor_layout(&cfg).unwrap();
    ours.sort();
    let mut theirs: Vec<(String, Vec<usize>)> = ckpt
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect();
    theirs.sort();
    assert_eq!(
        ours.len(),
        all["checkpoint"]["num_tensors"].as_u64().unwrap() as usize
    );
    assert_eq!(ours, theirs);
}

#[test]
fn moonvit_rejects_bad_inputs() {
    let (tower, _) = load_vision();
    let px = Tensor::zeros((12, 3, 14, 14), DType::F32, &Device::Cpu).unwrap();
    assert!(tower.forward(&px, &[GridHw::new(3, 5)]).is_err());
    assert!(tower.forward(&px, &[]).is_err());
    // An odd grid runs through the encoder but cannot be merged.
    let px = Tensor::zeros((15, 3, 14, 14), DType::F32, &Device::Cpu).unwrap();
    assert!(tower.encode(&px, &[GridHw::new(3, 5)]).is_ok());
    assert!(tower.forward(&px, &[GridHw::new(3, 5)]).is_err());
    let bad = Tensor::zeros((12, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(tower.forward(&bad, &[GridHw::new(2, 6)]).is_err());
}

#[test]
fn parity_kimi_vl_image_preprocess() {
    let c = case("image_preprocess");
    let t = load_tensors(&folder().join(c["file"].as_str().unwrap()));
    let png = folder().join(c["inputs"]["png"].as_str().unwrap());
    let img = image::open(&png)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", png.display()))
        .to_rgb8();
    let wh = &c["inputs"]["png_size_wh"];
    assert_eq!(
        (img.width() as u64, img.height() as u64),
        (wh[0].as_u64().unwrap(), wh[1].as_u64().unwrap())
    );
    let params = &c["processor_params"];
    let floats = |key: &str| -> [f32; 3] {
        let v: Vec<f32> = params[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        [v[0], v[1], v[2]]
    };
    let merge = &params["merge_kernel_size"];
    let outputs = &c["outputs"];
    for (run_name, run) in c["runs"].as_object().unwrap() {
        let prefix = run["tensor_prefix"].as_str().unwrap();
        let processor = KimiVlImageProcessor {
            patch_size: params["patch_size"].as_u64().unwrap() as usize,
            in_token_limit: run["in_token_limit"].as_u64().unwrap() as usize,
            merge_kernel_size: [
                merge[0].as_u64().unwrap() as usize,
                merge[1].as_u64().unwrap() as usize,
            ],
            image_mean: floats("image_mean"),
            image_std: floats("image_std"),
        };
        // Resized image before padding: bit-exact with Pillow.
        let resized = processor.resize(&img).unwrap();
        let expected_rgb = &t[&format!("{prefix}resized_rgb_u8")];
        assert_eq!(
            [resized.height() as usize, resized.width() as usize, 3],
            expected_rgb.dims(),
            "{run_name}: resized size"
        );
        let expected_rgb: Vec<u8> = expected_rgb.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            resized.as_raw(),
            &expected_rgb,
            "{run_name}: resized pixels"
        );

        let out = processor.preprocess(&img).unwrap();
        let rw = &run["resized_wh"];
        assert_eq!(
            (out.resized_wh.0 as u64, out.resized_wh.1 as u64),
            (rw[0].as_u64().unwrap(), rw[1].as_u64().unwrap()),
            "{run_name}: resized_wh"
        );
        let grid_hw = &run["grid_hw"];
        assert_eq!(
            (out.grid.h as u64, out.grid.w as u64),
            (grid_hw[0].as_u64().unwrap(), grid_hw[1].as_u64().unwrap()),
            "{run_name}: grid"
        );
        assert_eq!(
            grids_of(&t[&format!("{prefix}image_grid_hws")]),
            vec![out.grid],
            "{run_name}: image_grid_hws"
        );
        assert_eq!(
            out.grid.merged_tokens(processor.merge_kernel_size) as u64,
            run["num_image_tokens"].as_u64().unwrap(),
            "{run_name}: image tokens"
        );
        let key = format!("{prefix}pixel_values");
        let expected = &t[&key];
        let ours =
            Tensor::from_vec(out.pixel_values.clone(), expected.dims(), &Device::Cpu).unwrap();
        // Exact tolerance (not the relaxed one): the resize above is bit-exact.
        check(
            &outputs[&key],
            &format!("{run_name}: pixel_values"),
            &ours,
            expected,
        );
    }

    // The fixture model on the default run's pixels.
    let packed = KimiVlImageProcessor::default()
        .preprocess_images(&[img], &Device::Cpu)
        .unwrap();
    let (tower, projector) = load_vision();
    let merged = tower.forward(&packed.pixel_values, &packed.grids).unwrap();
    check(
        &outputs["default.vision_tower_out"],
        "image_preprocess: default.vision_tower_out",
        &merged,
        &t["default.vision_tower_out"],
    );
    let projected = projector.forward(&merged).unwrap();
    check(
        &outputs["default.projector_out"],
        "image_preprocess: default.projector_out",
        &projected,
        &t["default.projector_out"],
    );
}

#[test]
fn parity_kimi_vl_full_model() {
    let c = case("full_model");
    let t = load_tensors(&folder().join(c["file"].as_str().unwrap()));
    let packed = load_tensors(&folder().join("vision_packed.safetensors"));
    let pixels = &packed["pixel_values"];
    let grids = grids_of(&t["image_grid_hws"]);
    assert_eq!(grids, grids_of(&packed["image_grid_hws"]));
    let ids: Vec<u32> = ints(&t["input_ids"]).iter().map(|&x| x as u32).collect();
    assert_eq!(ids.len() as u64, c["input_len"].as_u64().unwrap());
    let cfg = config();
    assert_eq!(
        u64::from(cfg.media_placeholder_token_id),
        c["media_placeholder_token_id"].as_u64().unwrap()
    );
    let model = KimiVlModel::load(&cfg, &weights()).expect("load");

    // Placeholder counts per image follow the grids.
    let per_image: Vec<u64> = grids
        .iter()
        .map(|g| g.merged_tokens(cfg.vision.merge_kernel_size) as u64)
        .collect();
    let expected: Vec<u64> = c["placeholder_tokens_per_image"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(per_image, expected);

    let features = model.image_features(pixels, &grids).unwrap();
    check(
        spec(&c, "image_embeds"),
        "full_model: image_embeds",
        &features,
        &t["image_embeds"],
    );
    let embeds = model.splice(&ids, Some(&features)).unwrap();
    check(
        spec(&c, "inputs_embeds"),
        "full_model: inputs_embeds",
        &embeds.squeeze(0).unwrap(),
        &t["inputs_embeds"],
    );

    // Prefill logits for every position.
    let mut cache = model.new_cache();
    let logits = model
        .prefill(&ids, Some((pixels, &grids)), &mut cache, Logits::All)
        .unwrap();
    let logits = logits.squeeze(0).unwrap();
    check(
        spec(&c, "logits"),
        "full_model: logits",
        &logits,
        &t["logits"],
    );

    // Greedy decoding with the KV cache.
    let steps = c["generation"]["max_new_tokens"].as_u64().unwrap() as usize;
    let mut step = logits
        .narrow(0, ids.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let mut tokens = Vec::with_capacity(steps);
    let mut step_logits = Vec::with_capacity(steps);
    for _ in 0..steps {
        let v: Vec<f32> = step.to_vec1().unwrap();
        let tok = surveil_models::generation::argmax(&v);
        tokens.push(i64::from(tok));
        step_logits.push(step.clone());
        step = model
            .decode_step(tok, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap();
    }
    assert_eq!(
        tokens,
        ints(&t["greedy_tokens"]),
        "full_model: greedy_tokens"
    );
    check(
        spec(&c, "greedy_step_logits"),
        "full_model: greedy_step_logits",
        &Tensor::stack(&step_logits, 0).unwrap(),
        &t["greedy_step_logits"],
    );
}

#[test]
fn kimi_vl_rejects_placeholder_mismatch() {
    let cfg = config();
    let model = KimiVlModel::load(&cfg, &weights()).expect("load");
    let p = cfg.media_placeholder_token_id;
    let features = Tensor::zeros((2, cfg.text_hidden_size), DType::F32, &Device::Cpu).unwrap();
    let err = model.splice(&[1, p, 5], Some(&features)).unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");
    assert!(model.splice(&[1, p, 5], None).is_err());
    // Text only: plain token embeddings.
    let e = model.splice(&[1, 4, 5], None).unwrap();
    assert_eq!(e.dims(), &[1, 3, cfg.text_hidden_size]);
}

/// Pearson correlation of two tensors' values.
fn correlation(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let mb = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(&b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

/// Q8_0 linears in the tower and projector (the fixture's 32/64/128-wide rows divide into
/// 32-value blocks): every linear is quantized and the projector output stays close to the
/// f32 reference.
#[test]
fn kimi_vl_vision_q8_0_tracks_the_reference() {
    let cfg = config();
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).unwrap();
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy {
            linear: StorageDtype::Q8_0,
            float: StorageDtype::F32,
        },
    );
    let tower = MoonVit::load(&cfg.vision, &w.pp("vision_tower")).unwrap();
    let projector = KimiVlProjector::load(
        &cfg.vision,
        cfg.text_hidden_size,
        &w.pp("multi_modal_projector"),
    )
    .unwrap();
    let report = w.report();
    // wqkv, wo, fc0, fc1 per block, linear_1 and linear_2 in the projector; the patch
    // embedding (a convolution weight) stays f32.
    let linears = 4 * cfg.vision.num_hidden_layers + 2;
    assert_eq!(
        report.tensors_by_dtype.get(&StorageDtype::Q8_0).copied(),
        Some(linears),
        "{report:?}"
    );
    assert!(report.fallback_tensors.is_empty(), "{report:?}");
    let t = load_tensors(&folder().join("vision_packed.safetensors"));
    let grids = grids_of(&t["image_grid_hws"]);
    let merged = tower.forward(&t["pixel_values"], &grids).unwrap();
    let out = projector.forward(&merged).unwrap();
    let r = correlation(&out, &t["projector_out"]);
    let d = crate::common::max_abs_diff(&out, &t["projector_out"]);
    println!("q8_0 vision_packed: projector_out max_abs_diff {d:.3e}, correlation {r:.6}");
    assert!(r > 0.999, "correlation {r}");
}
