//! Time per caption and peak RSS of full-size git-base-coco with dummy weights, f32 and 4-bit.
//!
//! ```text
//! cargo bench -p surveil-models --bench git_caption -- [--runs N] [--tokens N] [--image PATH] [--modes f32,q4]
//! ```
//!
//! Each mode runs in its own child process (this binary, re-executed) so its peak RSS (`VmHWM`)
//! is its own. A caption here is: preprocess one frame, encode it, and generate exactly
//! `--tokens` tokens greedily (no early stop: dummy weights would stop at random places). The
//! median over `--runs` captions is reported after one warm-up caption. The reference
//! (transformers, f32, same machine) takes 1.15 s and 1.45 GiB for a 20-token caption.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::git::{
    git_base_coco_config, ClipProcessor, ClipProcessorConfig, GitModel,
};
use surveil_models::generation::{Sampling, TokenSampler};
use surveil_models::load::weights::{DummySource, Weights};

const CHILD_ENV: &str = "SURVEIL_GIT_BENCH_MODE";

struct Args {
    runs: usize,
    tokens: usize,
    image: PathBuf,
    modes: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        runs: 5,
        tokens: 20,
        image: default_image(),
        modes: vec!["f32".into(), "q4".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.runs),
            "--tokens" => {
                args.tokens = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.tokens)
            }
            "--image" => {
                if let Some(p) = it.next() {
                    args.image = p.into();
                }
            }
            "--modes" => {
                if let Some(m) = it.next() {
                    args.modes = m.split(',').map(str::to_string).collect();
                }
            }
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    args.runs = args.runs.max(1);
    args
}

fn default_image() -> PathBuf {
    if let Some(dir) = std::env::var_os("SURVEIL_FIXTURES") {
        return PathBuf::from(dir).join("processors/images/vtest_frame.png");
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("../shared/fixtures/processors/images/vtest_frame.png"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vtest_frame.png"))
}

/// A `kB` field of `/proc/self/status` in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run_mode(mode: &str, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let policy = match mode {
        "f32" => QuantPolicy::unquantized(StorageDtype::F32),
        "q4" => QuantPolicy::four_bit(StorageDtype::F16),
        other => return Err(format!("unknown mode {other} (f32, q4)").into()),
    };
    let cfg = git_base_coco_config();
    let frame = image::open(&args.image)
        .map_err(|e| format!("{}: {e}", args.image.display()))?
        .to_rgb8();
    let rss_start = proc_status_bytes("VmRSS:");

    let t = Instant::now();
    let source = DummySource::new(
        "microsoft/git-base-coco",
        GitModel::tensor_layout(&cfg),
        DType::F32,
        7,
    );
    let params = source.parameter_count();
    let w = Weights::new(Box::new(source), Device::Cpu, policy);
    let model = GitModel::load(&cfg, &w)?;
    let load_s = t.elapsed().as_secs_f64();
    let report = w.report();
    drop(w);
    let rss_loaded = proc_status_bytes("VmRSS:");

    let size = cfg.vision_config.image_size as u32;
    let processor = ClipProcessor::new(ClipProcessorConfig::square(size), Device::Cpu);
    let caption = || -> Result<(f64, f64, f64, usize), Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let pixels = processor.preprocess(&frame)?;
        let image = model.image_embeddings(&pixels)?;
        let t1 = Instant::now();
        let mut sampler = TokenSampler::new(Sampling::Greedy, 0);
        let ids = model.generate_from_embeddings(
            &image,
            &[cfg.bos_token_id],
            args.tokens,
            &mut sampler,
            None,
        )?;
        let t2 = Instant::now();
        let vision = (t1 - t0).as_secs_f64();
        let text = (t2 - t1).as_secs_f64();
        Ok((vision + text, vision, text, ids[0].len()))
    };
    let (warm_s, _, _, n) = caption()?;
    let mut totals = Vec::new();
    let mut visions = Vec::new();
    let mut texts = Vec::new();
    for _ in 0..args.runs {
        let (total, vision, text, _) = caption()?;
        totals.push(total);
        visions.push(vision);
        texts.push(text);
    }
    let peak = proc_status_bytes("VmHWM:");
    let by_dtype: Vec<String> = report
        .tensors_by_dtype
        .iter()
        .map(|(d, n)| format!("{d}:{n}"))
        .collect();
    println!(
        "{mode:>4}: {params} params, weights {:.3} GiB ({}), load {load_s:.2} s",
        gib(report.total_bytes()),
        by_dtype.join(" "),
    );
    println!(
        "{mode:>4}: caption of {n} tokens: median {:.3} s (vision+projection {:.3} s, decoder {:.3} s) over {} runs, warm-up {warm_s:.3} s",
        median(totals),
        median(visions),
        median(texts),
        args.runs,
    );
    println!(
        "{mode:>4}: RSS start {:.3} GiB, after load {:.3} GiB, peak (VmHWM) {:.3} GiB",
        gib(rss_start),
        gib(rss_loaded),
        gib(peak)
    );
    Ok(())
}

fn main() {
    let args = parse_args();
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        if let Err(e) = run_mode(&mode, &args) {
            eprintln!("{mode}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this executable: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "git-base-coco, dummy weights, image {}, {} candle threads (RAYON_NUM_THREADS)",
        args.image.display(),
        candle_core::utils::get_num_threads()
    );
    let mut failed = false;
    for mode in &args.modes {
        let status = Command::new(&exe)
            .args(std::env::args().skip(1))
            .env(CHILD_ENV, mode)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("{mode}: child exited with {s}");
                failed = true;
            }
            Err(e) => {
                eprintln!("{mode}: cannot run child: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
