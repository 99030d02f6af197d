//! Describes one image with a vision-language model through the public API of
//! `surveil-models`, and prints what the load made resident and the process memory before the
//! load, after it, after the answer and after the unload.
//!
//! ```text
//! cargo run -p surveil-models --example describe -- [--model ID] [--image PATH]
//!     [--prompt TEXT] [--weights dummy|auto|DIR] [--max-new-tokens N]
//!     [--device auto|cpu|cuda:N] [--quant q4k|q4_0|q8_0|f16|bf16|f32]
//! ```
//!
//! Defaults: `git-base-coco`, dummy weights (deterministic random tensors with the real shapes,
//! so it runs anywhere without a download; the text they produce is meaningless, the memory
//! and timings are real), 8 new tokens, device `auto`, `q4k`, and the still
//! `images/basketball1.png` of the asset cache (`$SURVEIL_ASSETS`, default
//! `~/.cache/surveil/assets`, filled by `scripts/setup.sh`); without it, a synthetic 768×576
//! scene built in memory. The tokenizer comes from the checkpoint directory, else the asset
//! cache (git-base-coco: `tokenizers/bert-base-uncased/tokenizer.json`).
//!
//! `--weights auto` looks in the Hugging Face cache, then `$SURVEIL_MODEL_DIR/<id>/`;
//! `--weights DIR` reads `config.json` and safetensors from `DIR`. Logs go to stderr
//! (`RUST_LOG=info` for the load steps).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use image::RgbImage;
use surveil_config::{Choice, Device, StorageDtype, WeightsSpec};
use surveil_memory::units::{format_mb, format_mb_opt};
use surveil_memory::ProcessMemory;
use surveil_models::load::registry;
use surveil_models::load::smoke::test_image;
use surveil_models::{GenerationParams, LoadOptions, ModelManager, NoHooks, VlmKind, VlmRequest};

/// The still used when `--image` is not given, relative to the asset cache.
const DEFAULT_IMAGE_ASSET: &str = "images/basketball1.png";

const DEFAULT_PROMPT: &str = "Describe what the people in this image are doing.";

/// The command line, checked.
struct Args {
    model: String,
    image: Option<PathBuf>,
    prompt: String,
    weights: WeightsSpec,
    max_new_tokens: usize,
    device: Device,
    storage: StorageDtype,
}

fn usage() -> String {
    format!(
        "usage: describe [--model ID] [--image PATH] [--prompt TEXT] [--weights dummy|auto|DIR]\n\
         \x20               [--max-new-tokens N] [--device {}] [--quant {}]\n\
         models: {}",
        Device::ALLOWED.join("|"),
        StorageDtype::NAMES.join("|"),
        registry::ids().join(", ")
    )
}

/// `Ok(None)` when `--help` was asked for.
fn parse_args(mut raw: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        model: "git-base-coco".into(),
        image: None,
        prompt: DEFAULT_PROMPT.into(),
        weights: WeightsSpec::Dummy,
        max_new_tokens: 8,
        device: Device::Auto,
        storage: StorageDtype::Q4K,
    };
    while let Some(flag) = raw.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let Some(value) = raw.next() else {
            bail!("{flag} needs a value\n{}", usage());
        };
        match flag.as_str() {
            "--model" => args.model = value,
            "--image" => args.image = Some(PathBuf::from(value)),
            "--prompt" => args.prompt = value,
            "--weights" => args.weights = WeightsSpec::parse(&value),
            "--max-new-tokens" => {
                args.max_new_tokens = value
                    .parse()
                    .with_context(|| format!("--max-new-tokens {value:?} is not a whole number"))?;
            }
            "--device" => {
                args.device = Device::parse(&value).with_context(|| {
                    format!(
                        "--device {value:?}: expected one of {}",
                        Device::ALLOWED.join(", ")
                    )
                })?;
            }
            "--quant" => {
                args.storage = StorageDtype::parse_choice(&value).with_context(|| {
                    format!(
                        "--quant {value:?}: expected one of {}",
                        StorageDtype::NAMES.join(", ")
                    )
                })?;
            }
            other => bail!("unknown option {other}\n{}", usage()),
        }
    }
    Ok(Some(args))
}

/// The image to describe and where it came from.
fn load_image(path: Option<&PathBuf>) -> anyhow::Result<(RgbImage, String)> {
    if let Some(path) = path {
        let img = image::open(path)
            .with_context(|| format!("reading the image {}", path.display()))?
            .to_rgb8();
        return Ok((img, path.display().to_string()));
    }
    let asset = surveil_config::paths::asset(DEFAULT_IMAGE_ASSET);
    if asset.is_file() {
        let img = image::open(&asset)
            .with_context(|| {
                format!(
                    "reading the image {} (rerun scripts/setup.sh to fetch it again)",
                    asset.display()
                )
            })?
            .to_rgb8();
        return Ok((img, asset.display().to_string()));
    }
    Ok((
        test_image(),
        format!(
            "a synthetic 768x576 scene built in memory ({} is missing; scripts/setup.sh \
             installs it)",
            asset.display()
        ),
    ))
}

/// What `main` returns on failure: printed as the message and its causes on one line
/// (`Error: loading git-base-coco (weights: dummy): ...`), without the backtrace `anyhow` adds
/// under `RUST_BACKTRACE=1`.
struct Failure(anyhow::Error);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

fn main() -> Result<(), Failure> {
    run().map_err(Failure)
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{}", usage());
        return Ok(());
    };
    let started = Instant::now();
    let (image, image_origin) = load_image(args.image.as_ref())?;
    println!(
        "image: {image_origin} ({}x{})",
        image.width(),
        image.height()
    );

    // How to load: the same fields `LoadOptions::from_config` fills from a configuration. The
    // paths (hub cache, model directory, asset cache) as `surveil` resolves them from the
    // environment (`HF_HUB_CACHE`, `HF_HOME`, `SURVEIL_MODEL_DIR`, `SURVEIL_ASSETS`).
    let paths = surveil_config::paths::from_environment();
    let opts = LoadOptions {
        weights: args.weights.clone(),
        device: args.device,
        storage: args.storage,
        threads: None,
        hub_cache: paths.hub_cache,
        model_dir: paths.model_dir,
        assets: paths.assets,
        progress: None,
        dummy_seed: 0,
    };
    let mut manager = ModelManager::new();
    let summary = manager
        .load(&args.model, &opts)
        .with_context(|| format!("loading {} (weights: {})", args.model, args.weights))?
        .clone();
    println!(
        "{} ({}) loaded on {} from {} in {:.2} s",
        summary.model, summary.architecture, summary.device, summary.weights, summary.load_seconds
    );
    println!("  device choice: {}", summary.device_reason);
    println!("  fit check: {}", summary.fit.message());
    println!("  policy: {}", summary.policy.describe());
    println!(
        "  parameters: {:.1} M in {} tensors, resident {} (estimate {})",
        summary.report.parameters as f64 / 1e6,
        summary.report.tensors_loaded,
        format_mb(summary.report.total_bytes()),
        format_mb(summary.estimate.total_bytes)
    );
    for (dtype, bytes) in &summary.report.bytes_by_dtype {
        let n = summary
            .report
            .tensors_by_dtype
            .get(dtype)
            .copied()
            .unwrap_or(0);
        println!("    {dtype:<5} {:>12}  ({n} tensors)", format_mb(*bytes));
    }
    if !summary.report.fallback_tensors.is_empty() {
        println!(
            "  {} linear weights kept in float (rows do not divide into blocks)",
            summary.report.fallback_tensors.len()
        );
    }

    let vlm = manager
        .vlm()
        .context("the manager reported a load but holds no model")?;
    if matches!(args.weights, WeightsSpec::Dummy) {
        println!("  note: dummy weights (random tensors): the text below is meaningless");
    }
    if vlm.kind() == VlmKind::Captioner {
        println!(
            "  note: {} is a captioner: it ignores the prompt",
            vlm.model_id()
        );
    }
    let request = VlmRequest {
        images: std::slice::from_ref(&image),
        system: None,
        prompt: &args.prompt,
    };
    let params = GenerationParams::greedy(args.max_new_tokens);
    let answer = vlm
        .analyse(&request, &params, &mut NoHooks)
        .with_context(|| format!("describing the image with {}", args.model))?;
    manager.record_memory("after_inference");

    println!("prompt: {:?}", args.prompt);
    if let Some(reasoning) = &answer.reasoning {
        println!("reasoning: {reasoning:?}");
    }
    println!("answer: {:?}", answer.text);
    let t = &answer.timings;
    println!(
        "  {} new tokens (stop: {:?}), prompt {} tokens; preprocess {:.2} s, vision {:.2} s, \
         prefill {:.2} s, first token after {:.2} s, {:.1} tokens/s, total {:.2} s",
        answer.tokens.len(),
        answer.stop_reason,
        t.prompt_tokens,
        t.preprocess_s,
        t.vision_s,
        t.prefill_s,
        t.time_to_first_token_s,
        t.decode_tokens_per_s,
        t.total_s
    );

    if let Some(cleanup) = manager.unload() {
        println!(
            "unloaded: released {} of RSS (heap trimmed: {})",
            format_mb(cleanup.released_bytes),
            cleanup.heap_trimmed
        );
    }
    println!("memory:");
    print!("{}", manager.memory());
    println!(
        "peak RSS: {}",
        format_mb_opt(ProcessMemory::current().peak_rss_bytes)
    );
    println!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
