//! Loading through the lifecycle, quantization bookkeeping, and bad checkpoints.

use std::path::{Path, PathBuf};

use surveil_config::{Device, WeightsSpec};
use surveil_memory::{estimate_tensors, QuantPolicy, StorageDtype};
use surveil_models::arch::ArchConfig;
use surveil_models::load::manager::{LoadOptions, ModelManager, ModelState};
use surveil_models::load::registry;
use surveil_models::load::weights::SafetensorsSource;

use crate::common::fixture;

fn opts(weights: WeightsSpec, storage: StorageDtype) -> LoadOptions {
    LoadOptions {
        weights,
        device: Device::Cpu,
        storage,
        threads: None,
        hub_cache: PathBuf::from("/nonexistent/hub"),
        model_dir: None,
        assets: surveil_config::paths::assets_dir(),
        progress: None,
        dummy_seed: 1,
    }
}

/// A copy of the GIT fixture checkpoint that a test may damage, or `None` (see
/// `common::require`).
fn git_copy() -> Option<tempfile::TempDir> {
    let git = fixture("git")?;
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(git.join(f), dir.path().join(f)).unwrap();
    }
    Some(dir)
}

fn load_err(dir: &Path) -> String {
    let mut m = ModelManager::new();
    let e = m
        .load(
            "git-base-coco",
            &opts(WeightsSpec::Dir(dir.into()), StorageDtype::F32),
        )
        .unwrap_err()
        .to_string();
    assert!(
        matches!(m.state(), ModelState::Failed { .. }),
        "{:?}",
        m.state()
    );
    assert!(m.model().is_none());
    e
}

#[test]
fn load_unload_from_directory_records_memory_and_matches_estimate() {
    let Some(git) = fixture("git") else {
        return;
    };
    let mut m = ModelManager::new();
    let summary = m
        .load(
            "git-base-coco",
            &opts(WeightsSpec::Dir(git.clone()), StorageDtype::F32),
        )
        .unwrap()
        .clone();
    assert!(
        matches!(m.state(), ModelState::Loaded { model, device } if model == "git-base-coco" && device.to_string() == "cpu")
    );
    assert_eq!(
        summary
            .report
            .bytes_by_dtype
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![StorageDtype::F32]
    );
    let file_bytes = std::fs::metadata(git.join("model.safetensors"))
        .unwrap()
        .len();
    // f32 in, f32 resident: the report equals the tensor data of the file (minus its header).
    assert!(summary.report.total_bytes() <= file_bytes);
    assert!(summary.report.total_bytes() as f64 > file_bytes as f64 * 0.95);
    assert_eq!(summary.report.total_bytes(), summary.estimate.total_bytes);
    assert!(m.memory().get("before_load").is_some() && m.memory().get("after_load").is_some());
    let cleanup = m.unload().expect("a model was loaded");
    assert!(cleanup.rss_after_bytes.is_some());
    assert_eq!(m.state(), &ModelState::Unloaded);
    assert!(m.memory().get("after_unload").is_some());
    assert!(m.unload().is_none(), "second unload is a no-op");
}

#[test]
fn quantized_dummy_report_matches_estimate_within_two_percent() {
    let spec = registry::find("git-base-coco").unwrap();
    let cfg = ArchConfig::full_size(spec).unwrap();
    // The header-style estimate (roles guessed from names) of the plain checkpoint layout, with
    // the policy a CPU load gets (4-bit weights in the kernels' tile layout).
    let layout = cfg.tensor_layout().unwrap();
    let policy = QuantPolicy::for_storage(StorageDtype::Q4K).on_cpu();
    let estimate = estimate_tensors(
        layout.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
        &policy,
    );
    let mut m = ModelManager::new();
    let s = m
        .load(
            "git-base-coco",
            &opts(WeightsSpec::Dummy, StorageDtype::Q4K),
        )
        .unwrap();
    let loaded = s.report.total_bytes() as f64;
    let est = estimate.total_bytes as f64;
    assert!(
        (loaded - est).abs() / est < 0.02,
        "loaded {loaded} vs estimate {est}"
    );
    assert_eq!(s.policy, policy);
    assert!(s.report.bytes_by_dtype.contains_key(&StorageDtype::Q4Kx16));
    assert_eq!(s.weights, "dummy");
    // The published size of git-base-coco.
    let params = s.report.parameters as f64;
    assert!(
        (params - spec.parameters as f64).abs() / (spec.parameters as f64) < 0.01,
        "{params}"
    );
}

#[test]
fn fallback_only_when_enabled_and_one_model_at_a_time() {
    // The GIT checkpoint is no Qwen2-VL checkpoint: loading it as one fails (bad config).
    let Some(git) = fixture("git") else {
        return;
    };
    let o = opts(WeightsSpec::Dir(git), StorageDtype::F32);
    let mut m = ModelManager::new();
    let err = m
        .load_with_fallback("qwen2-vl-2b-instruct", &["git-base-coco".into()], false, &o)
        .unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert!(
        matches!(m.state(), ModelState::Failed { model, .. } if model == "qwen2-vl-2b-instruct")
    );
    // With fallback on, the next model loads.
    let (summary, failures) = m
        .load_with_fallback("qwen2-vl-2b-instruct", &["git-base-coco".into()], true, &o)
        .unwrap();
    assert_eq!(summary.model, "git-base-coco");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "qwen2-vl-2b-instruct");
    // Switching to a model that fails leaves nothing resident.
    assert!(m.switch("kimi-vl-a3b-instruct", &o).is_err());
    assert!(m.model().is_none());
}

/// A CPU load of `cfg` with `vlm.storage = quant`: its policy is the CPU one (quantized weights
/// in the kernels' tile layouts), and what it made resident is the plan estimate of that
/// policy, byte for byte.
fn assert_cpu_load_is_its_estimate(
    cfg: &ArchConfig,
    quant: StorageDtype,
    s: &surveil_models::LoadSummary,
) {
    let policy = QuantPolicy::for_storage(quant).on_cpu();
    assert_eq!(s.policy, policy);
    let est = cfg.estimate(&policy).unwrap();
    assert_eq!(
        s.report.total_bytes(),
        est.total_bytes,
        "{quant:?}: loaded vs estimate"
    );
    assert_eq!(s.estimate.total_bytes, est.total_bytes);
}

#[test]
fn kimi_vl_fixture_loads_and_matches_its_estimate() {
    let Some(dir) = fixture("kimi_vl") else {
        return;
    };
    let spec = registry::find("kimi-vl-a3b-thinking").unwrap();
    let cfg = ArchConfig::from_file(spec, &dir.join("config.json")).unwrap();
    for quant in [StorageDtype::Q8_0, StorageDtype::F32] {
        let mut m = ModelManager::new();
        let s = m
            .load(
                "kimi-vl-a3b-thinking",
                &opts(WeightsSpec::Dir(dir.clone()), quant),
            )
            .unwrap();
        assert_cpu_load_is_its_estimate(&cfg, quant, s);
        assert!(matches!(
            m.model(),
            Some(surveil_models::arch::LoadedModel::KimiVl(_))
        ));
    }
}

#[test]
fn full_size_configs_round_trip_through_hub_json() {
    for id in [
        "git-base-coco",
        "qwen2-vl-2b-instruct",
        "qwen2-vl-7b-instruct",
        "kimi-vl-a3b-thinking",
    ] {
        let spec = registry::find(id).unwrap();
        let cfg = ArchConfig::full_size(spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.hub_config_json().to_string()).unwrap();
        let back = ArchConfig::from_file(spec, &path).unwrap();
        assert_eq!(
            back.tensor_layout().unwrap(),
            cfg.tensor_layout().unwrap(),
            "{id}"
        );
        // The published parameter count of the registry.
        let params: u64 = cfg
            .tensor_layout()
            .unwrap()
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
            .sum();
        let want = spec.parameters as f64;
        assert!(
            (params as f64 - want).abs() / want < 0.01,
            "{id}: {params} vs {want}"
        );
    }
}

#[test]
fn bad_model_ids() {
    let mut m = ModelManager::new();
    let e = m
        .load(
            "../git-base-coco",
            &opts(WeightsSpec::Dummy, StorageDtype::F32),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown model id") && e.contains("git-base-coco"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let Some(dir) = git_copy() else {
        return;
    };
    let f = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len - 1000).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn header_claims_more_than_the_file() {
    let Some(dir) = git_copy() else {
        return;
    };
    let f = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let claimed = (bytes.len() as u64 * 2).to_le_bytes();
    bytes[..8].copy_from_slice(&claimed);
    std::fs::write(&f, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("past the end"), "{e}");
}

#[test]
fn header_over_100_mb() {
    let Some(dir) = git_copy() else {
        return;
    };
    let f = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("100 MB"), "{e}");
}

/// Rewrite the fixture checkpoint with `edit` applied to its tensors.
fn rewrite(
    dir: &Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let f = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&f, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &f).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let Some(dir) = git_copy() else {
        return;
    };
    let name = "git.embeddings.LayerNorm.weight";
    rewrite(dir.path(), |t| {
        assert!(t.remove(name).is_some(), "fixture layout changed");
    });
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("missing"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let Some(dir) = git_copy() else {
        return;
    };
    let name = "git.embeddings.LayerNorm.weight";
    rewrite(dir.path(), |t| {
        let old = t.get(name).unwrap().clone();
        let n = old.dim(0).unwrap();
        t.insert(
            name.into(),
            candle_core::Tensor::zeros(n + 1, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("expected"), "{e}");
}

#[test]
fn unexpected_dtype() {
    let Some(dir) = git_copy() else {
        return;
    };
    let name = "git.embeddings.LayerNorm.weight";
    rewrite(dir.path(), |t| {
        let old = t.get(name).unwrap().clone();
        t.insert(name.into(), old.to_dtype(candle_core::DType::I64).unwrap());
    });
    let e = load_err(dir.path());
    assert!(e.contains(name) && e.contains("I64"), "{e}");
}

#[test]
fn config_not_json_or_missing_field() {
    let Some(dir) = git_copy() else {
        return;
    };
    let original = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
    cfg["hidden_size"] = serde_json::json!("wide");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("wide"), "{e}");
    // A field without a default: Qwen2-VL needs its vision config.
    let Some(qwen) = fixture("qwen2_vl") else {
        return;
    };
    let qdir = tempfile::tempdir().unwrap();
    let mut q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qwen.join("config.json")).unwrap()).unwrap();
    q.as_object_mut().unwrap().remove("vision_config");
    std::fs::write(qdir.path().join("config.json"), q.to_string()).unwrap();
    std::fs::copy(
        qwen.join("model.safetensors"),
        qdir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut m = ModelManager::new();
    let e = m
        .load(
            "qwen2-vl-2b-instruct",
            &opts(WeightsSpec::Dir(qdir.path().into()), StorageDtype::F32),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("vision_config"),
        "{e}"
    );
}

#[test]
fn missing_checkpoint_lists_places_searched_without_network() {
    let models = tempfile::tempdir().unwrap();
    let mut o = opts(WeightsSpec::Auto, StorageDtype::Q4K);
    o.model_dir = Some(models.path().into());
    let mut m = ModelManager::new();
    let e = m.load("qwen2-vl-2b-instruct", &o).unwrap_err().to_string();
    assert!(
        e.contains("Qwen/Qwen2-VL-2B-Instruct") && e.contains("/nonexistent/hub"),
        "{e}"
    );
    assert!(e.contains(&models.path().display().to_string()), "{e}");
}

#[test]
fn synthesized_checkpoint_loads_from_disk_like_dummy() {
    let spec = registry::find("git-base-coco").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let written = surveil_models::load::synth::write_dummy_checkpoint(
        spec,
        dir.path(),
        candle_core::DType::BF16,
        1,
        |_, _| calls += 1,
    )
    .unwrap();
    assert_eq!(calls, written.tensors);
    // bf16: two bytes per parameter plus the header.
    assert!(written.file_bytes > 2 * written.parameters);
    assert!(written.file_bytes < 2 * written.parameters + 1_000_000);
    let from_disk = ModelManager::new()
        .load(
            "git-base-coco",
            &opts(WeightsSpec::Dir(dir.path().into()), StorageDtype::Q4K),
        )
        .unwrap()
        .clone();
    let dummy = ModelManager::new()
        .load(
            "git-base-coco",
            &opts(WeightsSpec::Dummy, StorageDtype::Q4K),
        )
        .unwrap()
        .clone();
    assert_eq!(from_disk.report.parameters, written.parameters);
    assert_eq!(from_disk.report.bytes_by_dtype, dummy.report.bytes_by_dtype);
    // The header-only estimate of the real file agrees with what was loaded.
    let est = surveil_memory::estimate_checkpoint(
        &dir.path().join("model.safetensors"),
        &QuantPolicy::for_storage(StorageDtype::Q4K).on_cpu(),
    )
    .unwrap();
    let (a, b) = (
        est.total_bytes as f64,
        from_disk.report.total_bytes() as f64,
    );
    assert!((a - b).abs() / b < 0.02, "estimate {a} vs loaded {b}");
}

#[test]
fn qwen2_vl_report_matches_plan_estimate_for_every_quantization() {
    let Some(dir) = fixture("qwen2_vl") else {
        return;
    };
    let spec = registry::find("qwen2-vl-2b-instruct").unwrap();
    let cfg = ArchConfig::from_file(spec, &dir.join("config.json")).unwrap();
    for quant in [
        StorageDtype::Q4K,
        StorageDtype::Q4_0,
        StorageDtype::Q8_0,
        StorageDtype::F16,
        StorageDtype::F32,
    ] {
        let mut m = ModelManager::new();
        let s = m
            .load(
                "qwen2-vl-2b-instruct",
                &opts(WeightsSpec::Dir(dir.clone()), quant),
            )
            .unwrap();
        assert_cpu_load_is_its_estimate(&cfg, quant, s);
    }
}

/// `dir/config.json` (the full-size GIT config) and two valid shards of small f32 tensors,
/// `a` in the first and `b` in the second, with `model.safetensors.index.json` mapping them to
/// `shard_a` and `shard_b` as given. Returns the index path.
fn sharded_git_dir(dir: &Path, shard_a: &str, shard_b: &str) -> PathBuf {
    let spec = registry::find("git-base-coco").unwrap();
    let cfg = ArchConfig::full_size(spec).unwrap();
    std::fs::write(dir.join("config.json"), cfg.hub_config_json().to_string()).unwrap();
    for (name, file) in [
        ("a", "model-00001-of-00002.safetensors"),
        ("b", "model-00002-of-00002.safetensors"),
    ] {
        let t = candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        candle_core::safetensors::save(&[(name, t)].into_iter().collect(), dir.join(file)).unwrap();
    }
    let index = dir.join("model.safetensors.index.json");
    let json = serde_json::json!({"weight_map": {"a": shard_a, "b": shard_b}});
    std::fs::write(&index, json.to_string()).unwrap();
    index
}

/// The checkpoint errors of the estimate and of the loader for the checkpoint in `dir`: the
/// estimate's, the loader's, and the model manager's.
fn estimate_and_loader_errors(dir: &Path, index: &Path) -> (String, String, String) {
    let policy = QuantPolicy::for_storage(StorageDtype::Q4K);
    let estimate = surveil_memory::estimate_checkpoint(dir, &policy)
        .unwrap_err()
        .to_string();
    let loader = SafetensorsSource::open_index(index)
        .err()
        .expect("the loader must refuse what the estimate refuses")
        .to_string();
    let manager = load_err(dir);
    (estimate, loader, manager)
}

#[test]
fn one_reader_refuses_an_escaping_shard_for_the_estimate_and_the_loader() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    // A valid checkpoint file outside the directory, which an escaping name would reach.
    let outside = root.path().join("outside.safetensors");
    let t =
        candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("b", t)].into_iter().collect(), &outside).unwrap();
    for escape in [
        "../outside.safetensors".to_string(),
        outside.display().to_string(),
    ] {
        let index = sharded_git_dir(&dir, "model-00001-of-00002.safetensors", &escape);
        let (estimate, loader, manager) = estimate_and_loader_errors(&dir, &index);
        // One reader: the same words from both doors, naming the index, the key and the shard.
        assert_eq!(estimate, loader);
        assert!(
            estimate.contains("model.safetensors.index.json")
                && estimate.contains(&format!("weight_map[`b`] = `{escape}`")),
            "{estimate}"
        );
        assert!(
            manager.contains(&format!("weight_map[`b`] = `{escape}`")),
            "{manager}"
        );
    }
}

#[test]
fn one_reader_refuses_an_oversized_shard_header_for_the_estimate_and_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let index = sharded_git_dir(
        dir.path(),
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    // The second shard claims a header just over 100 MB, and the (sparse) file is long enough
    // to hold it.
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    let claimed = surveil_memory::MAX_HEADER_BYTES + 1;
    let mut bytes = claimed.to_le_bytes().to_vec();
    bytes.push(b'{');
    std::fs::write(&shard, bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(8 + claimed + 16).unwrap();
    let (estimate, loader, manager) = estimate_and_loader_errors(dir.path(), &index);
    assert_eq!(estimate, loader);
    for msg in [&estimate, &manager] {
        assert!(
            msg.contains("model-00002-of-00002.safetensors")
                && msg.contains("exceeds the limit of 100000000 bytes"),
            "{msg}"
        );
    }
}

#[test]
fn one_reader_refuses_bytes_outside_every_tensor_for_the_estimate_and_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let index = sharded_git_dir(
        dir.path(),
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    // Padding after the last tensor: the reference reader refuses it, and so do both doors.
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.extend_from_slice(&[0; 3]);
    std::fs::write(&shard, bytes).unwrap();
    let (estimate, loader, manager) = estimate_and_loader_errors(dir.path(), &index);
    assert_eq!(estimate, loader);
    for msg in [&estimate, &manager] {
        assert!(
            msg.contains("model-00001-of-00002.safetensors")
                && msg.contains("belong to no tensor (after the last tensor, `a`)"),
            "{msg}"
        );
    }
}
