//! `surveil test-single-model`: load one model, report its memory at every step, unload.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use image::RgbImage;
use serde_json::json;
use surveil_memory::{MemorySnapshot, ProcessMemory};
use surveil_models::load::manager::{LoadOptions, ModelManager};

use crate::cli::{Cli, TestModelArgs};
use crate::Failure;

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} MB", b as f64 / 1e6))
        .unwrap_or_else(|| "n/a".into())
}

fn snapshot_json(s: Option<&MemorySnapshot>) -> serde_json::Value {
    match s {
        Some(s) => json!({
            "rss_bytes": s.rss_bytes(),
            "vms_bytes": s.vms_bytes(),
            "gpu_allocated_bytes": s.gpu_allocated_bytes(),
            "gpu_reserved_bytes": s.gpu_reserved_bytes(),
            "gpu_pool_reserved_bytes": s.gpu_pool_reserved_bytes(),
            "gpu_free_bytes": s.gpu_free_bytes(),
        }),
        None => serde_json::Value::Null,
    }
}

fn print_block(title: &str, s: Option<&MemorySnapshot>) {
    outln!("{title}:");
    match s {
        Some(s) => {
            outln!("  RSS: {}", mb(s.rss_bytes()));
            outln!("  VMS: {}", mb(s.vms_bytes()));
            outln!("  GPU Allocated: {}", mb(s.gpu_allocated_bytes()));
            outln!("  GPU Reserved: {}", mb(s.gpu_reserved_bytes()));
            if s.gpu().is_available() {
                outln!("  GPU Pool: {}", mb(s.gpu_pool_reserved_bytes()));
                outln!("  GPU Free: {}", mb(s.gpu_free_bytes()));
            }
        }
        None => outln!("  (not taken)"),
    }
}

/// A model-load progress bar on stderr (tensors loaded, bytes resident) and the callback that
/// drives it; `None` when `enabled` is false.
pub(crate) fn progress_bar(
    enabled: bool,
) -> Option<(
    indicatif::ProgressBar,
    surveil_models::load::manager::ProgressFn,
)> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading {bar:30} {pos}/{len} tensors, {msg} resident ({elapsed})",
        )
        .ok()?,
    );
    let b = bar.clone();
    let f: surveil_models::load::manager::ProgressFn = Arc::new(move |done, total, bytes| {
        b.set_length(total as u64);
        b.set_position(done as u64);
        b.set_message(format!("{:.1} MB", bytes as f64 / 1e6));
    });
    Some((bar, f))
}

/// The test inference's image: `--infer-image` decoded and checked against the sizes `model`'s
/// image processor takes (a model the registry does not know is left for the load to report),
/// else the built-in scene.
fn infer_image(args: &TestModelArgs, model: &str) -> anyhow::Result<RgbImage> {
    let Some(path) = &args.infer_image else {
        return Ok(surveil_models::load::smoke::test_image());
    };
    let image =
        surveil_vision::source::images::load_image_frame(path, 0, std::time::Duration::ZERO)
            .and_then(|f| f.to_rgb_image())
            .with_context(|| format!("reading --infer-image {}", path.display()))?;
    if let Some(spec) = surveil_models::load::registry::find(model) {
        surveil_models::arch::check_image(spec.architecture, image.width(), image.height())
            .with_context(|| format!("checking --infer-image {} for {model}", path.display()))?;
    }
    Ok(image)
}

/// The resident bytes and tensor count of each storage type, one line each, the columns as
/// wide as their longest entry.
fn storage_table(report: &surveil_models::LoadReport) -> Vec<String> {
    let rows: Vec<[String; 3]> = report
        .bytes_by_dtype
        .iter()
        .map(|(dtype, bytes)| {
            let n = report.tensors_by_dtype.get(dtype).copied().unwrap_or(0);
            [dtype.to_string(), mb(Some(*bytes)), n.to_string()]
        })
        .collect();
    let width = |col: usize| rows.iter().map(|r| r[col].len()).max().unwrap_or(0);
    let (dtype_w, size_w, count_w) = (width(0), width(1), width(2));
    rows.iter()
        .map(|[dtype, size, n]| {
            let noun = if n == "1" { "tensor" } else { "tensors" };
            format!("{dtype:<dtype_w$}  {size:>size_w$}  {n:>count_w$} {noun}")
        })
        .collect()
}

/// `surveil test-single-model`
pub fn run(cli: &Cli, args: &TestModelArgs) -> Result<(), Failure> {
    let model = args.model_id();
    let mut flags = vec![("vlm.primary_model", model.to_string(), "--model")];
    if let Some(w) = &args.weights {
        flags.push(("vlm.weights", w.clone(), "--weights"));
    }
    if let Some(d) = &args.device {
        flags.push(("vlm.device", d.clone(), "--device"));
    }
    let mut config_args = args.config.clone();
    if config_args.profile.is_none() {
        config_args.profile = Some(args.default_profile().to_string());
    }
    let loaded = crate::cmd::config::load(cli, &config_args, &flags)?;
    let config = &loaded.config;

    let mut opts = LoadOptions::from_config(config);
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let bar = progress_bar(show_progress);
    opts.progress = bar.as_ref().map(|(_, f)| f.clone());

    // the inputs are read and checked before the load, so a bad file fails in a second, not
    // after minutes
    let image = match infer_image(args, model) {
        Ok(image) => image,
        Err(err) => {
            if args.json {
                let out = json!({
                    "model": model,
                    "profile": config.profile,
                    "ok": false,
                    "stage": "input",
                    "error": format!("{err:#}"),
                });
                outln!("{out}");
            }
            return Err(Failure::Runtime(err));
        }
    };
    let prompt = args
        .infer_prompt
        .as_deref()
        .unwrap_or(surveil_models::load::smoke::TEST_PROMPT);

    let mut manager = ModelManager::new();
    let result = manager.load(model, &opts).cloned();
    if let Some((bar, _)) = &bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let err = anyhow::Error::new(e).context(format!("loading {model}"));
            if args.json {
                let out = json!({
                    "model": model,
                    "profile": config.profile,
                    "ok": false,
                    "stage": "load",
                    "error": format!("{err:#}"),
                    "memory": {
                        "before": snapshot_json(manager.memory().get("before_load")),
                        "peak_rss_bytes": ProcessMemory::current().peak_rss_bytes,
                    },
                });
                outln!("{out}");
            }
            return Err(Failure::Runtime(err));
        }
    };
    let inference = if args.infer {
        let mut runs = Vec::with_capacity(args.infer_runs as usize);
        let mut failure = None;
        for run in 0..args.infer_runs {
            let Some(vlm) = manager.vlm() else {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "the model vanished after loading"
                )));
            };
            let params = surveil_models::GenerationParams {
                ignore_stop_tokens: args.ignore_eos,
                ..surveil_models::GenerationParams::greedy(args.infer_tokens)
            };
            match surveil_models::load::smoke::describe(vlm, &image, prompt, &params) {
                Ok(outcome) => {
                    if run == 0 {
                        manager.record_memory("after_inference");
                    }
                    runs.push(outcome);
                }
                Err(e) => {
                    failure = Some((e, "running the test inference"));
                    break;
                }
            }
        }
        let mut prefill = None;
        if failure.is_none() {
            if let (Some(n), Some(vlm)) = (args.prefill_tokens, manager.vlm()) {
                match surveil_models::load::smoke::text_prefill(vlm, n as usize) {
                    Ok(p) => prefill = p,
                    Err(e) => failure = Some((e, "timing the text-only prefill")),
                }
            }
        }
        match failure {
            None => Some((runs, prefill)),
            Some((e, what)) => {
                let err = anyhow::Error::new(e).context(what);
                // Released before the report, so that the report shows the memory given back.
                manager.unload();
                if args.json {
                    let memory = manager.memory();
                    let out = json!({
                        "model": summary.model,
                        "profile": config.profile,
                        "ok": false,
                        "stage": "inference",
                        "error": format!("{err:#}"),
                        "device": summary.device,
                        "weights": summary.weights,
                        "load_seconds": summary.load_seconds,
                        "memory": {
                            "before": snapshot_json(memory.get("before_load")),
                            "after_load": snapshot_json(memory.get("after_load")),
                            "after_unload": snapshot_json(memory.get("after_unload")),
                            "peak_rss_bytes": ProcessMemory::current().peak_rss_bytes,
                        },
                    });
                    outln!("{out}");
                }
                return Err(Failure::Runtime(err));
            }
        }
    } else {
        None
    };
    let (inference, text_prefill) = match inference {
        Some((runs, prefill)) => (Some(runs), prefill),
        None => (None, None),
    };
    manager.unload();
    let memory = manager.memory();
    let peak = ProcessMemory::current().peak_rss_bytes;
    let out = json!({
        "model": summary.model,
        "profile": config.profile,
        "architecture": summary.architecture,
        "device": summary.device,
        "device_reason": summary.device_reason,
        "weights": summary.weights,
        "load_seconds": summary.load_seconds,
        "parameters": summary.report.parameters,
        "quantization": {
            "policy": summary.policy.describe(),
            "activations": summary.activations,
            "bytes_by_dtype": summary.report.bytes_by_dtype,
            "tensors_by_dtype": summary.report.tensors_by_dtype,
            "total_bytes": summary.report.total_bytes(),
            "estimated_bytes": summary.estimate.total_bytes,
            "fallback_tensors": summary.report.fallback_tensors,
        },
        "memory": {
            "before": snapshot_json(memory.get("before_load")),
            "after_load": snapshot_json(memory.get("after_load")),
            "after_inference": snapshot_json(memory.get("after_inference")),
            "after_unload": snapshot_json(memory.get("after_unload")),
            "peak_rss_bytes": peak,
        },
        "inference": inference.as_ref().and_then(|runs| runs.first()),
        "inference_runs": inference,
        "text_prefill": text_prefill,
        "ok": true,
    });
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&out).context("formatting JSON")?
        );
        return Ok(());
    }
    outln!(
        "{} ({}) loaded on {} from {} in {:.2} s",
        summary.model,
        summary.architecture,
        summary.device,
        summary.weights,
        summary.load_seconds
    );
    outln!("  device choice: {}", summary.device_reason);
    outln!(
        "  policy: {}, activations {}",
        summary.policy.describe(),
        summary.activations
    );
    outln!(
        "  parameters: {:.1} M, resident {} (estimate {})",
        summary.report.parameters as f64 / 1e6,
        mb(Some(summary.report.total_bytes())),
        mb(Some(summary.estimate.total_bytes))
    );
    for line in storage_table(&summary.report) {
        outln!("    {line}");
    }
    if !summary.report.fallback_tensors.is_empty() {
        outln!(
            "  {} linear weights kept in float (rows do not divide into blocks): {}",
            summary.report.fallback_tensors.len(),
            summary.report.fallback_tensors.join(", ")
        );
    }
    for (n, i) in inference.iter().flatten().enumerate() {
        let label = if n == 0 {
            "test inference".to_string()
        } else {
            format!("run {}", n + 1)
        };
        outln!(
            "  {label}: {} tokens in {:.2} s (first token after {:.2} s, {:.1} tokens/s, stop: {}): {:?}",
            i.new_tokens,
            i.seconds,
            i.time_to_first_token_s,
            i.decode_tokens_per_s,
            i.stop_reason,
            i.text
        );
        if let Some(r) = &i.reasoning {
            outln!("  reasoning: {r:?}");
        }
    }
    match (&text_prefill, args.prefill_tokens) {
        (Some(p), _) => outln!(
            "  text-only prefill: {} tokens in {:.2} s ({:.1} tokens/s)",
            p.prompt_tokens,
            p.prefill_s,
            p.tokens_per_s
        ),
        (None, Some(_)) if inference.is_some() => {
            outln!("  text-only prefill: not measured ({model} takes no prompt)")
        }
        _ => {}
    }
    if args.memory_stats {
        print_block("Memory before load", memory.get("before_load"));
        print_block("Memory after load", memory.get("after_load"));
        if inference.is_some() {
            print_block(
                "Memory after first inference",
                memory.get("after_inference"),
            );
        }
        print_block("Memory after unload", memory.get("after_unload"));
        outln!("Peak RSS: {}", mb(peak));
    }
    Ok(())
}
