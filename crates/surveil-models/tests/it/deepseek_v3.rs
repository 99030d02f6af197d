//! DeepSeek-V3 decoder parity tests against the `deepseek_v3` fixture folder (random tiny
//! weights, reference = transformers `DeepseekV3ForCausalLM`), plus config and layout checks.
//! Cases, ids, shapes and tolerances are read from the fixtures; every output a case lists is
//! compared.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::deepseek_v3::{
    kimi_vl_a3b_text_config, tensor_layout, tensor_layout_with_prefix, DeepseekV3Config,
    DeepseekV3Model, Logits, RouterChoice,
};
use surveil_models::generation::argmax;
use surveil_models::load::weights::{DummySource, SafetensorsSource, TensorSource, Weights};

use crate::common::{
    case_list, cases, check_quantized_greedy, correlation, fixture, floats, ints, max_abs_diff,
    max_abs_diff_values, max_abs_tolerance, token_ids, tolerance, Case, Tolerance,
};

fn config(dir: &Path) -> DeepseekV3Config {
    DeepseekV3Config::from_file(&dir.join("config.json")).expect("config.json")
}

fn load_model(dir: &Path, policy: QuantPolicy) -> (DeepseekV3Model, Weights) {
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).expect("weights");
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    (DeepseekV3Model::load(&config(dir), &w).expect("load"), w)
}

fn f32_model(dir: &Path) -> DeepseekV3Model {
    load_model(dir, QuantPolicy::unquantized(StorageDtype::F32)).0
}

/// A case with its tensors and prompt.
struct Loaded {
    case: Case,
    t: HashMap<String, Tensor>,
    input_ids: Vec<u32>,
}

fn all_cases(dir: &Path) -> Vec<Loaded> {
    case_list(&cases(dir))
        .into_iter()
        .map(|case| {
            let t = case.tensors(dir);
            case.check_file(&t, &["inputs", "outputs"]);
            for input in case.listed("inputs") {
                if input != "input_ids" {
                    case.unknown("input", &input);
                }
            }
            let input_ids = token_ids(&t["input_ids"]);
            Loaded { case, t, input_ids }
        })
        .collect()
}

/// Greedy decoding without stop tokens: per step, the id chosen and the logits it was chosen
/// from.
fn greedy_steps(model: &DeepseekV3Model, ids: &[u32], steps: usize) -> Vec<(u32, Vec<f32>)> {
    let mut cache = model.new_cache();
    let mut logits = floats(&model.forward_ids(ids, &mut cache, Logits::Last).unwrap());
    let mut out = Vec::with_capacity(steps);
    for k in 0..steps {
        let tok = argmax(&logits);
        out.push((tok, logits));
        if k + 1 == steps {
            break;
        }
        logits = floats(&model.forward_ids(&[tok], &mut cache, Logits::Last).unwrap());
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

/// The layer index of `router_topk_<what>_layer<i>`.
fn router_layer(output: &str) -> Option<usize> {
    output
        .strip_prefix("router_topk_experts_layer")
        .or_else(|| output.strip_prefix("router_topk_weights_layer"))
        .and_then(|i| i.parse().ok())
}

/// Every case: prompt logits, greedy decoding and the routing of every MoE layer the case
/// lists, each with its tolerance.
#[test]
fn parity_deepseek_v3() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let model = f32_model(&dir);
    let cfg = model.config().clone();
    for c in all_cases(&dir) {
        let name = &c.case.name;
        println!("deepseek_v3/{name}: {} tokens", c.input_ids.len());
        let mut greedy = None;
        let mut trace: Option<Vec<RouterChoice>> = None;
        for output in c.case.listed("outputs") {
            let label = format!("deepseek_v3/{name}: {output}");
            let reference = &c.t[&output];
            match output.as_str() {
                "logits" => {
                    let mut cache = model.new_cache();
                    let logits = model
                        .forward_ids(&c.input_ids, &mut cache, Logits::All)
                        .unwrap();
                    let tl = max_abs_tolerance(&c.case, &output);
                    crate::common::assert_close(&label, &logits, reference, tl);
                    assert_eq!(cache.len(), c.input_ids.len(), "{label}: cache length");
                }
                "greedy_ids" | "greedy_step_logits" => {
                    let steps = reference.dim(1).unwrap();
                    let ours =
                        greedy.get_or_insert_with(|| greedy_steps(&model, &c.input_ids, steps));
                    assert_eq!(ours.len(), steps, "{label}: steps");
                    if output == "greedy_ids" {
                        assert_eq!(tolerance(&c.case, &output), Tolerance::Exact, "{label}");
                        let expected = token_ids(reference);
                        let ids: Vec<u32> = ours.iter().map(|(id, _)| *id).collect();
                        println!("{label}: {ids:?}");
                        assert_eq!(ids, expected, "{label}");
                        // The public greedy generation gives the same ids without stop
                        // tokens, and stops after a stop token when one is given.
                        let out = model.generate_greedy(&c.input_ids, steps, &[]).unwrap();
                        assert_eq!(out, expected, "{label}: generate_greedy()");
                        let stop = expected[2.min(steps - 1)];
                        let first = expected.iter().position(|&t| t == stop).unwrap();
                        let out = model.generate_greedy(&c.input_ids, steps, &[stop]).unwrap();
                        assert_eq!(out, expected[..=first].to_vec(), "{label}: stop token");
                    } else {
                        let tl = max_abs_tolerance(&c.case, &output);
                        let mut worst = 0f32;
                        for (k, ((_, l), r)) in ours.iter().zip(step_rows(reference)).enumerate() {
                            let d = max_abs_diff_values(l, &r);
                            assert!(d <= tl, "{label}: step {k}: {d} > {tl} (first divergence)");
                            worst = worst.max(d);
                        }
                        println!("{label}: max_abs_diff {worst:.3e} (tolerance {tl:.0e})");
                    }
                }
                _ if router_layer(&output).is_some() => {
                    let layer = router_layer(&output).unwrap();
                    assert!(
                        layer < cfg.num_hidden_layers && cfg.is_moe_layer(layer),
                        "{label}: layer {layer} is not a MoE layer of the config"
                    );
                    let trace = trace.get_or_insert_with(|| {
                        let mut trace = Vec::new();
                        let embeds = model.embed(&c.input_ids).unwrap();
                        model
                            .forward_traced(
                                &embeds,
                                &mut model.new_cache(),
                                Logits::Last,
                                Some(&mut trace),
                            )
                            .unwrap();
                        let moe: Vec<usize> = (0..cfg.num_hidden_layers)
                            .filter(|&i| cfg.is_moe_layer(i))
                            .collect();
                        assert_eq!(trace.iter().map(|t| t.layer).collect::<Vec<_>>(), moe);
                        trace
                    });
                    let choice = trace.iter().find(|t| t.layer == layer).unwrap();
                    let k = cfg.num_experts_per_tok;
                    assert_eq!(reference.dims(), [c.input_ids.len(), k], "{label}: shape");
                    if output.starts_with("router_topk_experts") {
                        assert_eq!(tolerance(&c.case, &output), Tolerance::Exact, "{label}");
                        // Exact, as sets per token.
                        let want: Vec<Vec<i64>> = ints(reference)
                            .chunks(k)
                            .map(|row| {
                                let mut row = row.to_vec();
                                row.sort_unstable();
                                row
                            })
                            .collect();
                        let ours: Vec<Vec<i64>> = choice
                            .experts
                            .iter()
                            .map(|row| {
                                let mut row: Vec<i64> = row.iter().map(|&e| i64::from(e)).collect();
                                row.sort_unstable();
                                row
                            })
                            .collect();
                        assert_eq!(ours, want, "{label}");
                        println!("{label}: exact");
                    } else {
                        // Weights in the reference's order of experts.
                        let tl = max_abs_tolerance(&c.case, &output);
                        let experts = ints(&c.t[&output.replace("weights", "experts")]);
                        let want = floats(reference);
                        let mut ours = Vec::with_capacity(want.len());
                        for (tok, row) in experts.chunks(k).enumerate() {
                            for &e in row {
                                let at = choice.experts[tok]
                                    .iter()
                                    .position(|&x| i64::from(x) == e)
                                    .unwrap_or_else(|| {
                                        panic!("{label}: token {tok} did not choose expert {e}")
                                    });
                                ours.push(choice.weights[tok][at]);
                            }
                        }
                        let d = max_abs_diff_values(&ours, &want);
                        println!("{label}: max_abs_diff {d:.3e} (tolerance {tl:.0e})");
                        assert!(d <= tl, "{label}: {d} > {tl}");
                    }
                }
                other => c.case.unknown("output", other),
            }
        }
    }
}

/// Tokens `[a, b, ...]` folded into the vocabulary.
fn in_vocab(cfg: &DeepseekV3Config, ids: &[u32]) -> Vec<u32> {
    ids.iter().map(|&t| t % cfg.vocab_size as u32).collect()
}

#[test]
fn deepseek_v3_kv_cache_matches_full_recompute() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let model = f32_model(&dir);
    let cfg = model.config().clone();
    for c in all_cases(&dir) {
        let tl = max_abs_tolerance(&c.case, "logits");
        let ids = &c.input_ids;
        // The prompt in two chunks (the first half, then the rest with a cache) vs all at once.
        let full = model
            .forward_ids(ids, &mut model.new_cache(), Logits::All)
            .unwrap();
        let mut cache = model.new_cache();
        let (a, b) = ids.split_at(ids.len().div_ceil(2));
        let la = model.forward_ids(a, &mut cache, Logits::All).unwrap();
        let chunked = if b.is_empty() {
            la
        } else {
            let lb = model.forward_ids(b, &mut cache, Logits::All).unwrap();
            Tensor::cat(&[&la, &lb], 1).unwrap()
        };
        let d = max_abs_diff(&chunked, &full);
        println!(
            "deepseek_v3/{}: chunked prefill vs one pass: max_abs_diff {d:.3e}",
            c.case.name
        );
        assert!(d <= tl, "chunked prefill {d} > {tl}");
        // A fork of the cache after the prompt is independent: the original's next token does
        // not leak into the fork's history.
        let mut fork = cache.try_clone().unwrap();
        let next = |c: &mut surveil_models::arch::deepseek_v3::DeepseekV3Cache, tok: u32| {
            floats(&model.forward_ids(&[tok], c, Logits::Last).unwrap())
        };
        let [t9, t7, t5] = in_vocab(&cfg, &[9, 7, 5])[..] else {
            unreachable!()
        };
        next(&mut fork, t9);
        next(&mut cache, t7);
        let forked = next(&mut fork, t5);
        let mut longer = ids.clone();
        longer.extend([t9, t5]);
        let expected = floats(
            &model
                .forward_ids(&longer, &mut model.new_cache(), Logits::Last)
                .unwrap(),
        );
        let d = max_abs_diff_values(&forked, &expected);
        assert!(d <= tl, "forked cache {d} > {tl}");
        assert_eq!((cache.len(), fork.len()), (ids.len() + 1, ids.len() + 2));
    }
}

#[test]
fn deepseek_v3_tensor_layout_matches_fixture() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let cfg = config(&dir);
    let src = SafetensorsSource::open(&[dir.join("model.safetensors")]).unwrap();
    let stored: BTreeMap<String, Vec<usize>> = src
        .names()
        .into_iter()
        .map(|n| {
            let shape = src.meta(&n).unwrap().shape;
            (n, shape)
        })
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = tensor_layout(&cfg).into_iter().collect();
    assert_eq!(ours, stored);
    let prefixed = tensor_layout_with_prefix(&cfg, "language_model.");
    assert_eq!(prefixed.len(), stored.len());
    // The last expert of the first MoE layer, and the head, under the prefix.
    let moe = (0..cfg.num_hidden_layers)
        .find(|&i| cfg.is_moe_layer(i))
        .expect("a MoE layer");
    let last_expert = format!(
        "language_model.model.layers.{moe}.mlp.experts.{}.down_proj.weight",
        cfg.n_routed_experts - 1
    );
    assert!(
        prefixed.iter().any(|(n, _)| *n == last_expert),
        "{last_expert}"
    );
    assert!(prefixed
        .iter()
        .any(|(n, _)| n == "language_model.lm_head.weight"));
}

/// `eos_token_id` of a config JSON: one id or a list.
fn eos_ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        x => vec![x.as_u64().unwrap() as u32],
    }
}

/// The parsed config against the raw JSON it came from (a DeepSeek-V3 `config.json` or the
/// `text_config` of a Kimi-VL one).
fn check_config_fields(cfg: &DeepseekV3Config, json: &Value) {
    let uint = |key: &str| {
        json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("config: {key}")) as usize
    };
    for (key, ours) in [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("moe_intermediate_size", cfg.moe_intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("kv_lora_rank", cfg.kv_lora_rank),
        ("qk_nope_head_dim", cfg.qk_nope_head_dim),
        ("qk_rope_head_dim", cfg.qk_rope_head_dim),
        ("v_head_dim", cfg.v_head_dim),
        ("n_routed_experts", cfg.n_routed_experts),
        ("num_experts_per_tok", cfg.num_experts_per_tok),
        ("n_shared_experts", cfg.n_shared_experts),
        ("first_k_dense_replace", cfg.first_k_dense_replace),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ] {
        assert_eq!(ours, uint(key), "{key}");
    }
    assert_eq!(
        cfg.qk_head_dim(),
        uint("qk_nope_head_dim") + uint("qk_rope_head_dim")
    );
    assert_eq!(
        cfg.shared_intermediate_size(),
        uint("moe_intermediate_size") * uint("n_shared_experts")
    );
    let rope_theta = json["rope_parameters"]["rope_theta"]
        .as_f64()
        .or_else(|| json["rope_theta"].as_f64())
        .expect("rope_theta");
    assert_eq!(cfg.rope_theta, rope_theta);
    assert_eq!(
        Some(cfg.routed_scaling_factor),
        json["routed_scaling_factor"].as_f64()
    );
    assert_eq!(Some(cfg.rms_norm_eps), json["rms_norm_eps"].as_f64());
    assert_eq!(cfg.eos_token_ids, eos_ids(&json["eos_token_id"]));
    // transformers' rule: MoE from `first_k_dense_replace` on, every `moe_layer_freq`-th layer.
    let freq = json["moe_layer_freq"].as_u64().unwrap_or(1) as usize;
    for i in 0..cfg.num_hidden_layers {
        let moe = i >= uint("first_k_dense_replace") && i % freq == 0;
        assert_eq!(cfg.is_moe_layer(i), moe, "layer {i}");
    }
}

#[test]
fn deepseek_v3_config_reads_fixture_and_kimi_text_config() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let cfg = config(&dir);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    check_config_fields(&cfg, &json);
    // The same object as the `text_config` of a Kimi-VL config (v4 layout: top-level
    // `rope_theta` instead of `rope_parameters`).
    let mut text = json.clone();
    let obj = text.as_object_mut().unwrap();
    let params = obj.remove("rope_parameters").expect("rope_parameters");
    obj.insert("rope_theta".into(), params["rope_theta"].clone());
    obj.insert("rope_scaling".into(), Value::Null);
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
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = config(&dir);
    // Values that break a rule whatever the fixture's sizes.
    let cases: [(&str, Value, &str); 9] = [
        ("q_lora_rank", 1536.into(), "q_lora_rank"),
        (
            "num_experts_per_tok",
            (cfg.n_routed_experts + 1).into(),
            "num_experts_per_tok",
        ),
        ("n_group", (cfg.n_routed_experts + 1).into(), "n_group"),
        ("topk_group", (cfg.n_group + 1).into(), "topk_group"),
        ("scoring_func", "softmax".into(), "scoring_func"),
        ("model_type", "llama".into(), "model_type"),
        (
            "qk_rope_head_dim",
            (cfg.qk_rope_head_dim + 1).into(),
            "qk_rope_head_dim",
        ),
        (
            "num_key_value_heads",
            (cfg.num_attention_heads + 1).into(),
            "num_key_value_heads",
        ),
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
    let mut bad = cfg.clone();
    bad.first_k_dense_replace = cfg.num_hidden_layers + 1;
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("first_k_dense_replace"));
    bad = cfg.clone();
    bad.routed_scaling_factor = f64::NAN;
    assert!(bad
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

/// Logits correlation of the 8-bit decoder with the f32 reference. 8-bit weights move the
/// router input enough to flip expert choices of a random tiny model (its routing margins are
/// tiny, and a flip is scaled by `routed_scaling_factor`), so the distance is far larger than
/// for a dense model (measured 0.964 on the shared set); a broken 8-bit path correlates near 0.
const Q8_CORRELATION_FLOOR: f64 = 0.8;

/// The CPU tile layout of 8-bit (`q8_0x16`): every linear the GGML policy quantizes, plus the
/// ones whose rows do not divide into blocks (tiles pad them), and the logits against the f32
/// reference with the same floor.
#[test]
fn deepseek_v3_cpu_tiles_track_the_reference() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let policy = QuantPolicy {
        linear: StorageDtype::Q8_0x16,
        float: StorageDtype::F32,
    };
    let (model, w) = load_model(&dir, policy);
    let report = w.report();
    let layout = tensor_layout(&config(&dir));
    let is_linear = |name: &str| {
        (name.contains("_proj") && !name.contains("kv_b_proj")) || name == "lm_head.weight"
    };
    let linears = layout.iter().filter(|(n, _)| is_linear(n)).count();
    assert!(report.fallback_tensors.is_empty(), "{report:?}");
    assert_eq!(
        report.tensors_by_dtype.get(&StorageDtype::Q8_0x16).copied(),
        Some(linears)
    );
    for c in all_cases(&dir) {
        if c.case.lists("outputs", "logits") {
            let name = format!("q8_0x16 deepseek_v3/{}", c.case.name);
            let logits = model
                .forward_ids(&c.input_ids, &mut model.new_cache(), Logits::All)
                .unwrap();
            let r = correlation(&logits, &c.t["logits"]);
            println!("{name}: logits correlation {r:.5}");
            assert!(r > Q8_CORRELATION_FLOOR, "{name}: correlation {r}");
        }
    }
}

/// 8-bit linears: which tensors are quantized, and the output against the f32 reference (a
/// logits correlation floor; greedy ids that leave the reference only at a near tie).
#[test]
fn deepseek_v3_q8_keeps_router_and_kv_b_in_f32() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let policy = QuantPolicy {
        linear: StorageDtype::Q8_0,
        float: StorageDtype::F32,
    };
    let (model, w) = load_model(&dir, policy);
    let report = w.report();
    let cfg = config(&dir);
    // Every projection, expert and the output head are 8-bit; norms, the embedding table, the
    // router weights and their correction biases stay f32 (the routing choice is sensitive), and
    // so does `kv_b_proj` (absorbed into the query and the output in decode). A linear whose
    // rows do not divide into Q8_0 blocks stays f32 too (a fallback).
    let block = StorageDtype::Q8_0.block_len();
    let layout = tensor_layout(&cfg);
    let is_linear = |name: &str| {
        (name.contains("_proj") && !name.contains("kv_b_proj")) || name == "lm_head.weight"
    };
    let mut fallback: Vec<String> = layout
        .iter()
        .filter(|(n, s)| is_linear(n) && s[1] % block != 0)
        .map(|(n, _)| n.clone())
        .collect();
    let quantized = layout
        .iter()
        .filter(|(n, s)| is_linear(n) && s[1] % block == 0)
        .count();
    println!(
        "q8 load: {:?}, fallbacks {:?}",
        report.tensors_by_dtype, report.fallback_tensors
    );
    let mut reported = report.fallback_tensors.clone();
    reported.sort();
    fallback.sort();
    assert_eq!(reported, fallback);
    assert_eq!(
        report.tensors_by_dtype.get(&StorageDtype::Q8_0).copied(),
        Some(quantized)
    );
    assert_eq!(
        report.tensors_by_dtype[&StorageDtype::F32],
        layout.len() - quantized
    );
    for c in all_cases(&dir) {
        let name = format!("q8_0 deepseek_v3/{}", c.case.name);
        if c.case.lists("outputs", "logits") {
            let logits = model
                .forward_ids(&c.input_ids, &mut model.new_cache(), Logits::All)
                .unwrap();
            let r = correlation(&logits, &c.t["logits"]);
            let d = max_abs_diff(&logits, &c.t["logits"]);
            println!("{name}: logits max_abs_diff {d:.3e}, correlation {r:.5}");
            assert!(d > 0.0, "{name}: the 8-bit weights were not used");
            assert!(r > Q8_CORRELATION_FLOOR, "{name}: correlation {r}");
        }
        if c.case.lists("outputs", "greedy_ids") && c.case.lists("outputs", "greedy_step_logits") {
            let expected = token_ids(&c.t["greedy_ids"]);
            let ours = greedy_steps(&model, &c.input_ids, expected.len());
            let rows = step_rows(&c.t["greedy_step_logits"]);
            let agree = check_quantized_greedy(&name, &ours, &expected, &rows);
            println!(
                "{name}: greedy ids agree for {agree}/{} steps",
                expected.len()
            );
        }
    }
}

/// The decoder inside the Kimi-VL fixture checkpoint: `text_config` of its config, names under
/// `language_model.`.
#[test]
fn deepseek_v3_reads_kimi_vl_text_config_and_layout() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let cfg = DeepseekV3Config::from_file(&dir.join("config.json")).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    check_config_fields(&cfg, &json["text_config"]);
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
    let ids = in_vocab(&cfg, &[3, 4, 5]);
    let logits = model
        .forward_ids(&ids, &mut model.new_cache(), Logits::All)
        .unwrap();
    assert_eq!(logits.dims(), &[1, ids.len(), cfg.vocab_size]);
}

#[test]
fn deepseek_v3_decode_reads_only_the_chosen_experts() {
    let Some(dir) = fixture("deepseek_v3") else {
        return;
    };
    let model = f32_model(&dir);
    let cfg = model.config().clone();
    let moe_layers = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.is_moe_layer(l))
        .count() as u64;
    let total = model.routed_expert_bytes();
    assert!(moe_layers > 0 && total > 0);
    // Every routed expert has the same shape, so each weighs total / (layers × experts).
    let per_expert = total / (moe_layers * cfg.n_routed_experts as u64);
    assert_eq!(per_expert * moe_layers * cfg.n_routed_experts as u64, total);
    for c in all_cases(&dir) {
        let mut cache = model.new_cache();
        model
            .forward_ids(&c.input_ids, &mut cache, Logits::Last)
            .unwrap();
        for token in in_vocab(&cfg, &[3, 11, 5]) {
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
}
