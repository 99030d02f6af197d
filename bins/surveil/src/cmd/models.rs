//! `surveil models list` and `surveil models synth`.

use std::io::IsTerminal;

use anyhow::Context;
use serde_json::json;
use surveil_config::StorageDtype;
use surveil_memory::QuantPolicy;
use surveil_models::arch::ArchConfig;
use surveil_models::load::registry::{self, REGISTRY};
use surveil_models::load::synth::{write_dummy_checkpoint_with, OnExisting};
use surveil_models::ModelError;

use crate::cli::{Cli, ModelsListArgs, ModelsSynthArgs};
use crate::Failure;

/// The storage types `models list` sizes: the CPU tile layouts (what a CPU load keeps for
/// 4-bit and 8-bit), candle's GGML types (what a CUDA load keeps), and the float types.
const STORAGE: [StorageDtype; 7] = [
    StorageDtype::Q4Kx16,
    StorageDtype::Q4K,
    StorageDtype::Q4_0,
    StorageDtype::Q8_0x16,
    StorageDtype::Q8_0,
    StorageDtype::Bf16,
    StorageDtype::F32,
];

/// `surveil models list`: presence in the configured hub cache (`paths.hub_cache`).
pub fn list(cli: &Cli, args: &ModelsListArgs) -> Result<(), Failure> {
    let loaded = crate::cmd::config::load(cli, &args.config, &[])?;
    let hub = &loaded.config.paths.hub_cache;
    let mut rows = Vec::new();
    for spec in REGISTRY {
        let snapshot = spec.cached_snapshot(hub);
        let sizes: serde_json::Map<String, serde_json::Value> = match ArchConfig::full_size(spec) {
            Ok(cfg) => STORAGE
                .iter()
                .filter_map(|q| {
                    let e = cfg.estimate(&QuantPolicy::for_storage(*q)).ok()?;
                    Some((q.name().to_string(), json!(e.total_bytes)))
                })
                .collect(),
            Err(_) => serde_json::Map::new(),
        };
        rows.push(json!({
            "id": spec.id,
            "hf_repo": spec.hf_repo,
            "architecture": spec.architecture.name(),
            "implemented": !sizes.is_empty(),
            "parameters": spec.parameters,
            "present": snapshot.is_some(),
            "snapshot": snapshot.map(|p| p.display().to_string()),
            "expected_bytes": sizes,
            "generation": spec.generation,
        }));
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"hf_cache": hub.display().to_string(), "models": rows})
            )
            .context("formatting JSON")?
        );
        return Ok(());
    }
    outln!("Hugging Face cache: {}", hub.display());
    outln!(
        "{:<27} {:<37} {:<9} {:>8}  {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "id",
        "hugging face repo",
        "arch",
        "params",
        "cache",
        "4bit cpu",
        "4bit gpu",
        "8bit cpu",
        "8bit gpu",
        "bf16",
        "f32"
    );
    for r in &rows {
        let size = |q: &str| {
            r["expected_bytes"][q]
                .as_u64()
                .map(|b| format!("{:.2} GB", b as f64 / 1e9))
                .unwrap_or_else(|| "-".into())
        };
        outln!(
            "{:<27} {:<37} {:<9} {:>7.2}B  {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r["id"].as_str().unwrap_or_default(),
            r["hf_repo"].as_str().unwrap_or_default(),
            r["architecture"].as_str().unwrap_or_default(),
            r["parameters"].as_u64().unwrap_or(0) as f64 / 1e9,
            if r["present"] == true {
                "present"
            } else {
                "missing"
            },
            size("q4kx16"),
            size("q4k"),
            size("q8_0x16"),
            size("q8_0"),
            size("bf16"),
            size("f32"),
        );
    }
    outln!("\nSizes are what the loader makes resident (weights only), from the architecture's tensor layout;");
    outln!("on the CPU, 4-bit and 8-bit weights are kept in the kernels' tile layouts (q4kx16, q8_0x16),");
    outln!("on a GPU in candle's q4k and q8_0 blocks (JSON: `expected_bytes` per storage type, q4_0 too);");
    outln!("`-` marks architectures this build does not implement.");
    Ok(())
}

/// `surveil models synth`
pub fn synth(args: &ModelsSynthArgs) -> Result<(), Failure> {
    let spec = registry::find(&args.id).ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!(
            "unknown model id `{}`; known ids: {}",
            args.id,
            registry::ids().join(", ")
        ))
    })?;
    let dtype = match args.dtype.as_str() {
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        "f32" => candle_core::DType::F32,
        other => {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--dtype {other}: allowed values: bf16, f16, f32"
            )))
        }
    };
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "writing {bar:30} {pos}/{len} tensors ({elapsed})",
        ) {
            b.set_style(style);
        }
        b
    });
    let on_existing = if args.force {
        OnExisting::Replace
    } else {
        OnExisting::Refuse
    };
    let report = match write_dummy_checkpoint_with(
        spec,
        &args.out,
        dtype,
        args.seed,
        on_existing,
        |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        },
    ) {
        Ok(report) => report,
        Err(e @ ModelError::CheckpointExists { .. }) => {
            return Err(Failure::Usage(anyhow::Error::new(e).context(format!(
                "refusing to write a dummy {} checkpoint over an existing one \
                 (choose another --out directory, or pass --force to replace config.json and \
                 model.safetensors)",
                spec.id
            ))))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!(
                    "writing a dummy {} checkpoint to {}",
                    spec.id,
                    args.out.display()
                ))
                .into())
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&report).context("formatting JSON")?
        );
    } else {
        outln!(
            "wrote {} tensors ({:.1} M parameters, {:.2} GB) to {}",
            report.tensors,
            report.parameters as f64 / 1e6,
            report.file_bytes as f64 / 1e9,
            report.dir.display()
        );
        outln!(
            "load it with: surveil test-model --model {} --weights {}",
            spec.id,
            report.dir.display()
        );
    }
    Ok(())
}
