//! DeepSeek-V3 decoder parity tests against `../shared/fixtures/deepseek_v3` (random tiny
//! weights, reference = transformers `DeepseekV3ForCausalLM`), plus config and layout checks.
//! Ids, shapes and tolerances are read from `cases.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::deepseek_v3::{
    kimi_vl_a3b_text_config, tensor_layout, tensor_layout_with_prefix, DeepseekV3Config,
    DeepseekV3Model, Logits, RouterChoice,
};
use surveil_models::generation::argmax;
use surveil_models::weights::{DummySource, SafetensorsSource, TensorSource, Weights};

use crate::common::{cases, fixtures_dir, load_tensors, max_abs_diff};

fn folder() -> PathBuf {
    fixtures_dir().join("deepseek_v3")
}

fn config() -> DeepseekV3Config {
    DeepseekV3Config::from_file(&folder().join("config.json")).expect("config.json")
}

fn load_model() -> DeepseekV3Model {
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).expect("weights");
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    DeepseekV3Model::load(&config(), &w).expect("load")
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

struct Case {
    spec: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    input_ids: Vec<u32>,
}

fn prompt_case() -> Case {
    let all = cases(&folder());
    let spec = all["cases"]["prompt"].clone();
    let tensors = load_tensors(&folder().join(spec["file"].as_str().expect("file")));
    let input_ids = ids_of(&tensors["input_ids"])
        .iter()
        .map(|&x| x as u32)
        .collect();
    Case {
        spec,
        tensors,
        input_ids,
    }
}

fn logits_tolerance(case: &Case) -> f32 {
    case.spec["tolerance"]["logits"]["max_abs_diff"]
        .as_f64()
        .expect("logits tolerance") as f32
}

#[test]
fn parity_deepseek_v3_prompt_logits() {
    let case = prompt_case();
    let model = load_model();
    let mut cache = model.new_cache();
    let logits = model
        .forward_ids(&case.input_ids, &mut cache, Logits::All)
        .unwrap();
    let tl = logits_tolerance(&case);
    let d = max_abs_diff(&logits, &case.tensors["logits"]);
    println!(
        "prompt: logits max_abs_diff {d:.3e} (tolerance {tl:.0e}), {} tokens",
        case.input_ids.len()
    );
    assert!(d <= tl, "logits {d} > {tl}");
    assert_eq!(cache.len(), case.input_ids.len());
}

#[test]
fn parity_deepseek_v3_prompt_router() {
    let case = prompt_case();
    let model = load_model();
    let cfg = model.config().clone();
    let mut trace: Vec<RouterChoice> = Vec::new();
    let embeds = model.embed(&case.input_ids).unwrap();
    model
        .forward_traced(
            &embeds,
            &mut model.new_cache(),
            Logits::Last,
            Some(&mut trace),
        )
        .unwrap();
    let moe_layers: Vec<usize> = (0..cfg.num_hidden_layers)
        .filter(|&i| cfg.is_moe_layer(i))
        .collect();
    assert_eq!(
        trace.iter().map(|c| c.layer).collect::<Vec<_>>(),
        moe_layers
    );
    let tl = case.spec["tolerance"]["router_topk_weights"]
        .as_str()
        .and_then(|s| s.strip_prefix("max_abs_diff "))
        .and_then(|s| s.parse::<f32>().ok())
        .expect("router_topk_weights tolerance");
    for choice in &trace {
        let i = choice.layer;
        let k = cfg.num_experts_per_tok;
        let expected = ids_of(&case.tensors[&format!("router_topk_experts_layer{i}")]);
        let ours: Vec<i64> = choice.experts.iter().flatten().map(|&e| e as i64).collect();
        assert_eq!(ours, expected, "layer {i}: routed experts");
        assert!(choice.experts.iter().all(|e| e.len() == k));
        let ours = Tensor::from_vec(
            choice
                .weights
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<f32>>(),
            (case.input_ids.len(), k),
            &Device::Cpu,
        )
        .unwrap();
        let d = max_abs_diff(
            &ours,
            &case.tensors[&format!("router_topk_weights_layer{i}")],
        );
        println!("layer {i}: router weights max_abs_diff {d:.3e} (tolerance {tl:.0e})");
        assert!(d <= tl, "layer {i}: router weights {d} > {tl}");
    }
}

#[test]
fn parity_deepseek_v3_prompt_greedy() {
    let case = prompt_case();
    let model = load_model();
    let tl = logits_tolerance(&case);
    let expected: Vec<u32> = ids_of(&case.tensors["greedy_ids"])
        .iter()
        .map(|&x| x as u32)
        .collect();
    let ref_steps = &case.tensors["greedy_step_logits"];
    // Prefill, then one token per step through the KV cache.
    let mut cache = model.new_cache();
    let mut logits = model
        .forward_ids(&case.input_ids, &mut cache, Logits::Last)
        .unwrap()
        .flatten_all()
        .unwrap();
    let mut ids = Vec::new();
    let mut worst = 0f32;
    for k in 0..expected.len() {
        let r = ref_steps.narrow(1, k, 1).unwrap().flatten_all().unwrap();
        let d = max_abs_diff(&logits, &r);
        assert!(
            d <= tl,
            "greedy step {k} logits {d} > {tl} (first divergence)"
        );
        worst = worst.max(d);
        let tok = argmax(&logits.to_vec1::<f32>().unwrap());
        ids.push(tok);
        logits = model
            .forward_ids(&[tok], &mut cache, Logits::Last)
            .unwrap()
            .flatten_all()
            .unwrap();
    }
    println!("prompt: greedy_step_logits max_abs_diff {worst:.3e} (tolerance {tl:.0e})");
    assert_eq!(ids, expected, "greedy ids");
    // The public greedy generation gives the same ids without stop tokens, and stops after a
    // stop token when one is given.
    let out = model
        .generate_greedy(&case.input_ids, expected.len(), &[])
        .unwrap();
    assert_eq!(out, expected, "generate_greedy()");
    let stop = expected[2];
    let first = expected.iter().position(|&t| t == stop).unwrap();
    let out = model
        .generate_greedy(&case.input_ids, expected.len(), &[stop])
        .unwrap();
    assert_eq!(out, expected[..=first].to_vec(), "stop token");
}

#[test]
fn deepseek_v3_kv_cache_matches_full_recompute() {
    let case = prompt_case();
    let model = load_model();
    let tl = logits_tolerance(&case);
    // Prompt in two chunks (prefill 7, then 5 more with a cache) vs all at once.
    let full = model
        .forward_ids(&case.input_ids, &mut model.new_cache(), Logits::All)
        .unwrap();
    let mut cache = model.new_cache();
    let (a, b) = case.input_ids.split_at(7);
    let la = model.forward_ids(a, &mut cache, Logits::All).unwrap();
    let lb = model.forward_ids(b, &mut cache, Logits::All).unwrap();
    let chunked = Tensor::cat(&[&la, &lb], 1).unwrap();
    let d = max_abs_diff(&chunked, &full);
    println!("chunked prefill vs one pass: max_abs_diff {d:.3e}");
    assert!(d <= tl, "chunked prefill {d} > {tl}");
    // A fork of the cache after the prompt is independent: the original's next token does not
    // leak into the fork's history.
    let mut fork = cache.try_clone().unwrap();
    let next = |c: &mut surveil_models::deepseek_v3::DeepseekV3Cache, tok: u32| {
        model
            .forward_ids(&[tok], c, Logits::Last)
            .unwrap()
            .flatten_all()
            .unwrap()
    };
    next(&mut fork, 9);
    next(&mut cache, 7);
    let forked = next(&mut fork, 5);
    let mut ids = case.input_ids.clone();
    ids.extend([9, 5]);
    let expected = model
        .forward_ids(&ids, &mut model.new_cache(), Logits::Last)
        .unwrap()
        .flatten_all()
        .unwrap();
    let d = max_abs_diff(&forked, &expected);
    assert!(d <= tl, "forked cache {d} > {tl}");
    assert_eq!((cache.len(), fork.len()), (13, 14));
}

#[test]
fn deepseek_v3_tensor_layout_matches_fixture() {
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).unwrap();
    let stored: BTreeMap<String, Vec<usize>> = src
        .names()
        .into_iter()
        .map(|n| {
            let shape = src.meta(&n).unwrap().shape;
            (n, shape)
        })
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = tensor_layout(&config()).into_iter().collect();
    assert_eq!(ours, stored);
    let prefixed = tensor_layout_with_prefix(&config(), "language_model.");
    assert_eq!(prefixed.len(), stored.len());
    assert!(prefixed
        .iter()
        .any(|(n, _)| n == "language_model.model.layers.1.mlp.experts.7.down_proj.weight"));
    assert!(prefixed
        .iter()
        .any(|(n, _)| n == "language_model.lm_head.weight"));
}

#[test]
fn deepseek_v3_config_reads_fixture_and_kimi_text_config() {
    let cfg = config();
    assert_eq!(cfg.hidden_size, 64);
    assert_eq!(cfg.num_hidden_layers, 3);
    assert_eq!(cfg.kv_lora_rank, 32);
    assert_eq!(cfg.qk_head_dim(), 24);
    assert_eq!(cfg.v_head_dim, 12);
    assert_eq!(cfg.n_routed_experts, 8);
    assert_eq!(cfg.num_experts_per_tok, 3);
    assert_eq!(cfg.shared_intermediate_size(), 64);
    assert_eq!(cfg.rope_theta, 10000.0);
    assert_eq!(cfg.routed_scaling_factor, 2.446);
    assert_eq!(cfg.eos_token_ids, vec![1]);
    assert!(!cfg.is_moe_layer(0) && cfg.is_moe_layer(1) && cfg.is_moe_layer(2));
    // The same object as the `text_config` of a Kimi-VL config (v4 layout: top-level
    // `rope_theta` instead of `rope_parameters`).
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("config.json")).unwrap())
            .unwrap();
    let mut text = text;
    let obj = text.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    obj.insert("rope_theta".into(), 10000.0.into());
    obj.insert("rope_scaling".into(), serde_json::Value::Null);
    let kimi = serde_json::json!({
        "model_type": "kimi_vl",
        "vision_config": {"model_type": "moonvit"},
        "text_config": text,
    });
    assert_eq!(DeepseekV3Config::from_value(&kimi).unwrap(), cfg);
    assert_eq!(
        DeepseekV3Config::from_json_str(&kimi.to_string()).unwrap(),
        cfg
    );
}

#[test]
fn deepseek_v3_config_rejects_bad_values() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder().join("config.json")).unwrap())
            .unwrap();
    let cases: [(&str, serde_json::Value, &str); 9] = [
        ("q_lora_rank", 1536.into(), "q_lora_rank"),
        ("num_experts_per_tok", 9.into(), "num_experts_per_tok"),
        ("n_group", 3.into(), "n_group"),
        ("topk_group", 2.into(), "topk_group"),
        ("scoring_func", "softmax".into(), "scoring_func"),
        ("model_type", "llama".into(), "model_type"),
        ("qk_rope_head_dim", 7.into(), "qk_rope_head_dim"),
        ("num_key_value_heads", 2.into(), "num_key_value_heads"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0}),
            "yarn",
        ),
    ];
    for (key, value, needle) in cases {
        let mut v = base.clone();
        v[key] = value;
        let err = DeepseekV3Config::from_value(&v).unwrap_err().to_string();
        assert!(err.contains(needle), "{key}: {err}");
    }
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("kv_lora_rank");
    let err = DeepseekV3Config::from_value(&v).unwrap_err().to_string();
    assert!(err.contains("missing `kv_lora_rank`"), "{err}");
    let mut cfg = config();
    cfg.first_k_dense_replace = 4;
    assert!(cfg
        .validate()
        .unwrap_err()
        .contains("first_k_dense_replace"));
    cfg = config();
    cfg.routed_scaling_factor = f64::NAN;
    assert!(cfg
        .validate()
        .unwrap_err()
        .contains("routed_scaling_factor"));
}

#[test]
fn deepseek_v3_kimi_vl_a3b_dims() {
    let cfg = kimi_vl_a3b_text_config();
    cfg.validate().unwrap();
    let layout = tensor_layout(&cfg);
    let params: u64 = layout
        .iter()
        .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
        .sum();
    // 26 MoE layers x (64 + 2 shared) experts of 3 x 2048 x 1408 weights dominate.
    println!("kimi-vl-a3b text parameters: {params}");
    assert!((15.5e9..16.5e9).contains(&(params as f64)), "{params}");
    assert_eq!(
        layout
            .iter()
            .filter(|(n, _)| n.contains(".experts."))
            .count(),
        26 * 64 * 3
    );
    // The decoder loads from dummy weights of a shrunk Kimi layout and produces finite logits.
    let mut small = cfg.clone();
    small.vocab_size = 512;
    small.hidden_size = 64;
    small.intermediate_size = 96;
    small.moe_intermediate_size = 32;
    small.num_hidden_layers = 2;
    small.kv_lora_rank = 32;
    small.qk_nope_head_dim = 16;
    small.qk_rope_head_dim = 8;
    small.v_head_dim = 16;
    small.bos_token_id = None;
    small.eos_token_ids.clear();
    small.validate().unwrap();
    let src = DummySource::new("kimi-small", tensor_layout(&small), DType::F32, 5);
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    let model = DeepseekV3Model::load(&small, &w).unwrap();
    let logits = model
        .forward_ids(&[1, 2, 3, 4], &mut model.new_cache(), Logits::Last)
        .unwrap();
    assert_eq!(logits.dims(), &[1, 1, 512]);
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn deepseek_v3_q8_keeps_router_and_kv_b_in_f32() {
    let case = prompt_case();
    let src = SafetensorsSource::open(&[folder().join("model.safetensors")]).unwrap();
    let policy = QuantPolicy {
        linear: StorageDtype::Q8_0,
        float: StorageDtype::F32,
    };
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    let model = DeepseekV3Model::load(&config(), &w).unwrap();
    let report = w.report();
    // Every projection, expert and the output head are 8-bit; norms, the embedding table, the
    // router weights and their correction biases stay f32 (the routing choice is sensitive), and
    // so does `kv_b_proj` (absorbed into the query and the output in decode).
    let cfg = config();
    let moe = (0..cfg.num_hidden_layers)
        .filter(|&i| cfg.is_moe_layer(i))
        .count();
    let dense = cfg.num_hidden_layers - moe;
    let linears = cfg.num_hidden_layers * 3 + dense * 3 + moe * (cfg.n_routed_experts + 1) * 3 + 1;
    let floats = cfg.num_hidden_layers * 4 + 1 + 1 + moe * 2;
    println!("q8 load: {:?}", report.tensors_by_dtype);
    // o_proj rows (heads * v_head_dim = 48) do not divide into 32-blocks: they stay f32.
    let fallback: Vec<String> = (0..cfg.num_hidden_layers)
        .map(|i| format!("model.layers.{i}.self_attn.o_proj.weight"))
        .collect();
    assert_eq!(report.fallback_tensors, fallback);
    assert_eq!(
        report.tensors_by_dtype[&StorageDtype::Q8_0],
        linears - fallback.len()
    );
    assert_eq!(
        report.tensors_by_dtype[&StorageDtype::F32],
        floats + fallback.len()
    );
    let logits = model
        .forward_ids(&case.input_ids, &mut model.new_cache(), Logits::All)
        .unwrap();
    let d = max_abs_diff(&logits, &case.tensors["logits"]);
    // No closeness bound here: 8-bit weights and activations move the router input enough to
    // flip expert choices of this random model (its routing margins are tiny, and a flip is
    // scaled by routed_scaling_factor), so the distance to the f32 reference is chaotic. What
    // is checked: the 8-bit weights are in use, and the output stays finite.
    let a: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = case.tensors["logits"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    println!(
        "q8 logits: max_abs_diff {d:.3e}, correlation with the f32 reference {:.5}",
        pearson(&a, &b)
    );
    assert!(d > 0.0, "q8 weights were not used");
    assert!(a.iter().all(|x| x.is_finite()));
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

/// The decoder inside the Kimi-VL fixture checkpoint: `text_config` of its config, names under
/// `language_model.`.
#[test]
fn deepseek_v3_reads_kimi_vl_text_config_and_layout() {
    let dir = fixtures_dir().join("kimi_vl");
    let cfg = DeepseekV3Config::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.vocab_size, 320);
    assert_eq!(cfg.v_head_dim, 16);
    assert_eq!(cfg.rope_theta, 800000.0);
    assert_eq!(cfg.eos_token_ids, vec![2]);
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let stored: BTreeMap<String, Vec<usize>> = src
        .names()
        .into_iter()
        .filter(|n| n.starts_with("language_model."))
        .map(|n| {
            let shape = src.meta(&n).unwrap().shape;
            (n, shape)
        })
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = tensor_layout_with_prefix(&cfg, "language_model.")
        .into_iter()
        .collect();
    assert_eq!(ours, stored);
    let w = Weights::new(
        Box::new(src),
        Device::Cpu,
        QuantPolicy::unquantized(StorageDtype::F32),
    );
    let model = DeepseekV3Model::load(&cfg, &w.pp("language_model")).unwrap();
    assert_eq!(w.report().tensors_loaded, stored.len());
    let logits = model
        .forward_ids(&[3, 4, 5], &mut model.new_cache(), Logits::All)
        .unwrap();
    assert_eq!(logits.dims(), &[1, 3, 320]);
}

#[test]
fn deepseek_v3_decode_reads_only_the_chosen_experts() {
    let case = prompt_case();
    let model = load_model();
    let cfg = model.config().clone();
    let moe_layers = (0..cfg.num_hidden_layers)
        .filter(|&l| {
            l >= cfg.first_k_dense_replace
                && (l - cfg.first_k_dense_replace).is_multiple_of(cfg.moe_layer_freq.max(1))
        })
        .count() as u64;
    let total = model.routed_expert_bytes();
    assert!(moe_layers > 0 && total > 0);
    // Every routed expert has the same shape, so each weighs total / (layers × experts).
    let per_expert = total / (moe_layers * cfg.n_routed_experts as u64);
    assert_eq!(per_expert * moe_layers * cfg.n_routed_experts as u64, total);
    let mut cache = model.new_cache();
    model
        .forward_ids(&case.input_ids, &mut cache, Logits::Last)
        .unwrap();
    for token in [3u32, 11, 5] {
        let before = model.routed_expert_bytes_read();
        model
            .forward_ids(&[token], &mut cache, Logits::Last)
            .unwrap();
        let read = model.routed_expert_bytes_read() - before;
        // One token picks `num_experts_per_tok` distinct experts in each MoE layer.
        assert_eq!(
            read,
            moe_layers * cfg.num_experts_per_tok as u64 * per_expert,
            "decode step read {read} of {total} routed-expert bytes"
        );
        assert!(read < total);
    }
}
