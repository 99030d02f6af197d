//! Will this checkpoint fit? Reads a safetensors checkpoint's headers (no tensor data), estimates
//! its resident size unquantized and in 4 bits, checks each estimate against the free memory of
//! a device, and prints a memory report of this process around the work.
//!
//! ```text
//! cargo run -p surveil-memory --example checkpoint_fit -- PATH [--device cpu|cuda|cuda:N]
//! cargo run -p surveil-memory --example checkpoint_fit -- --sample
//! ```
//!
//! `PATH` is a checkpoint directory (with `model.safetensors.index.json`, `model.safetensors` or
//! a single `*.safetensors` file), an index file, or a `.safetensors` file. `--sample` writes a
//! tiny checkpoint (a few tensors of a made-up decoder, about 1 MB) into a temporary directory
//! and runs on it. Without arguments: usage on stderr, exit status 2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use surveil_memory::units::format_size;
use surveil_memory::{
    fits, CheckpointHeader, Device, Estimate, MemoryReport, MemorySnapshot, QuantPolicy,
    StorageDtype,
};

const USAGE: &str = "usage: checkpoint_fit PATH [--device cpu|cuda|cuda:N]
       checkpoint_fit --sample [--device ...]

PATH: a safetensors checkpoint directory, its model.safetensors.index.json, or a .safetensors
file. --sample writes a tiny checkpoint into a temporary directory and uses that.";

type BoxError = Box<dyn std::error::Error>;

/// What the command line asks for.
struct Args {
    /// The checkpoint, or `None` for `--sample`.
    path: Option<PathBuf>,
    device: Device,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut path = None;
    let mut sample = false;
    let mut device = Device::Cpu;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sample" => sample = true,
            "--device" => {
                let value = it.next().ok_or("--device needs a value")?;
                device = value.parse()?;
            }
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other if path.is_none() => path = Some(PathBuf::from(other)),
            other => return Err(format!("one checkpoint at a time (also got {other})")),
        }
    }
    match (path, sample) {
        (Some(_), true) => Err("give PATH or --sample, not both".into()),
        (None, false) => Err(String::new()),
        (path, _) => Ok(Args { path, device }),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("checkpoint_fit: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("checkpoint_fit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), BoxError> {
    let mut report = MemoryReport::new();
    report.record("start");

    // Kept alive until the end: the sample checkpoint is deleted with it.
    let mut sample_dir = None;
    let path = match &args.path {
        Some(p) => p.clone(),
        None => {
            let dir = tempfile::tempdir()?;
            write_sample_checkpoint(&dir.path().join("model.safetensors"))?;
            let path = dir.path().to_path_buf();
            sample_dir = Some(dir);
            path
        }
    };

    // 1. What the checkpoint holds, from its headers alone.
    let header = CheckpointHeader::read(&path)?;
    report.record("headers read");
    println!("checkpoint {}", header.source.display());
    println!(
        "  {} tensors in {} file(s), {} on disk",
        header.tensors.len(),
        header.files.len(),
        format_size(header.stored_bytes())
    );
    let mut stored: HashMap<&str, (usize, u64)> = HashMap::new();
    for t in &header.tensors {
        let entry = stored.entry(t.dtype.as_str()).or_default();
        entry.0 += 1;
        entry.1 += t.stored_bytes;
    }
    let mut stored: Vec<_> = stored.into_iter().collect();
    stored.sort();
    for (dtype, (count, bytes)) in stored {
        println!("  stored {dtype}: {count} tensors, {}", format_size(bytes));
    }

    // 2. What it will take once loaded, under two policies; 3. whether that fits now.
    for policy in [
        QuantPolicy::unquantized(StorageDtype::F16),
        QuantPolicy::four_bit(StorageDtype::F16),
    ] {
        let estimate = surveil_memory::estimate_header(&header, &policy);
        print_estimate(&estimate);
        let fit = fits(&estimate, args.device);
        println!("  fit on {}: {fit}", args.device);
    }
    report.record("estimated");

    // 4. This process around the work (RSS, VMS, peak; GPU when built with feature `cuda`).
    println!("\nmemory of this process");
    println!("{report}");
    let now = MemorySnapshot::take("end");
    println!("{now}");
    drop(sample_dir);
    Ok(())
}

fn print_estimate(estimate: &Estimate) {
    println!(
        "\n{}: {} resident ({} tensors, {} linear)",
        estimate.policy.describe(),
        format_size(estimate.total_bytes),
        estimate.tensor_count,
        estimate.linear_count
    );
    for (dtype, totals) in &estimate.by_dtype {
        println!(
            "  as {dtype}: {} tensors, {}",
            totals.tensors,
            format_size(totals.bytes)
        );
    }
    for f in &estimate.float_fallbacks {
        println!(
            "  kept in {} (rows do not divide into blocks): {} {:?}",
            f.storage, f.name, f.shape
        );
    }
}

/// A made-up one-layer decoder in bf16 (zeros): a token table, attention and MLP weights, a
/// norm, and a projection whose rows (100) divide into no quantization block.
fn write_sample_checkpoint(path: &Path) -> Result<(), BoxError> {
    let tensors: [(&str, Vec<usize>); 7] = [
        ("model.embed_tokens.weight", vec![1024, 256]),
        ("model.layers.0.self_attn.q_proj.weight", vec![256, 256]),
        ("model.layers.0.self_attn.o_proj.weight", vec![256, 256]),
        ("model.layers.0.mlp.up_proj.weight", vec![512, 256]),
        ("model.layers.0.mlp.down_proj.weight", vec![256, 512]),
        ("model.layers.0.input_layernorm.weight", vec![256]),
        ("visual.merger.proj.weight", vec![256, 100]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape)| {
            let bytes = vec![0u8; shape.iter().product::<usize>() * 2];
            (name.to_string(), shape, bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(data.len());
    for (name, shape, bytes) in &data {
        views.push((
            name.as_str(),
            TensorView::new(Dtype::BF16, shape.clone(), bytes)?,
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}
