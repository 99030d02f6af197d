//! `surveil doctor`: the environment report a bug report needs.

use std::process::Command;

use anyhow::Context;
use serde::Serialize;
use surveil_config::paths::ASSET_FILES;
use surveil_config::LoadedConfig;
use surveil_memory::gpu::{GpuDeviceMemory, GpuMemory};
use surveil_memory::system::HostMemory;
use surveil_models::load::registry::REGISTRY;

use crate::cli::{Cli, DoctorArgs};
use crate::Failure;

#[derive(Debug, Serialize)]
struct Report {
    surveil_version: &'static str,
    os: String,
    arch: &'static str,
    cpu: Cpu,
    memory: Memory,
    cuda: Cuda,
    ffmpeg: Option<String>,
    hf_cache: HfCache,
    model_dir: Option<ModelDir>,
    assets: Assets,
}

#[derive(Debug, Serialize)]
struct Cpu {
    model: Option<String>,
    logical_cores: usize,
    features: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct Memory {
    total_bytes: Option<u64>,
    available_bytes: Option<u64>,
    cgroup_limit_bytes: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Cuda {
    compiled: bool,
    available: bool,
    reason: Option<String>,
    devices: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct HfCache {
    path: String,
    /// Where `paths.hub_cache` came from (`default`, `env HF_HOME`, ...).
    origin: String,
    offline: bool,
    models: Vec<CachedModel>,
}

#[derive(Debug, Serialize)]
struct CachedModel {
    id: &'static str,
    repo: &'static str,
    snapshot: Option<String>,
}

/// `paths.model_dir`, when one is configured.
#[derive(Debug, Serialize)]
struct ModelDir {
    path: String,
    origin: String,
}

#[derive(Debug, Serialize)]
struct Assets {
    path: String,
    /// Where `paths.assets` came from.
    origin: String,
    files: Vec<AssetStatus>,
}

#[derive(Debug, Serialize)]
struct AssetStatus {
    path: &'static str,
    purpose: &'static str,
    present: bool,
    bytes: Option<u64>,
}

fn os_name() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    match (pretty, kernel) {
        (Some(p), Some(k)) => format!("{p} (kernel {k})"),
        (Some(p), None) => p,
        (None, Some(k)) => format!("{} (kernel {k})", std::env::consts::OS),
        (None, None) => std::env::consts::OS.to_string(),
    }
}

fn cpu() -> Cpu {
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
    });
    #[allow(unused_mut)]
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            features.push("fma");
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            features.push("f16c");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon");
        }
    }
    Cpu {
        model,
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        features,
    }
}

fn ffmpeg_version() -> Option<String> {
    let out = Command::new("ffmpeg").arg("-version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// The report, with the paths `loaded` resolved.
fn gather(loaded: &LoadedConfig) -> Report {
    let paths = &loaded.config.paths;
    let memory = match HostMemory::read() {
        Ok(m) => Memory {
            total_bytes: Some(m.total_bytes),
            available_bytes: Some(m.effective_available_bytes()),
            cgroup_limit_bytes: m.cgroup.as_ref().map(|c| c.limit_bytes),
            error: None,
        },
        Err(e) => Memory {
            total_bytes: None,
            available_bytes: None,
            cgroup_limit_bytes: None,
            error: Some(e.to_string()),
        },
    };
    let gpu = GpuMemory::query();
    // The driver may answer while a library the backend needs is missing: that is unusable too.
    let reason = gpu
        .unavailable_reason()
        .map(str::to_string)
        .or_else(|| surveil_memory::cuda_usable().err());
    let cuda = Cuda {
        compiled: cfg!(feature = "cuda"),
        available: gpu.is_available() && reason.is_none(),
        reason,
        devices: gpu
            .devices()
            .iter()
            .cloned()
            .map(with_free_figures)
            .filter_map(|d| serde_json::to_value(d).ok())
            .collect(),
    };
    let hub = &paths.hub_cache;
    let hf_cache = HfCache {
        path: hub.display().to_string(),
        origin: loaded.origin("paths.hub_cache").to_string(),
        offline: std::env::var("HF_HUB_OFFLINE")
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false),
        models: REGISTRY
            .iter()
            .map(|m| CachedModel {
                id: m.id,
                repo: m.hf_repo,
                snapshot: m.cached_snapshot(hub).map(|p| p.display().to_string()),
            })
            .collect(),
    };
    let model_dir = paths.model_dir.as_ref().map(|d| ModelDir {
        path: d.display().to_string(),
        origin: loaded.origin("paths.model_dir").to_string(),
    });
    let dir = &paths.assets;
    let assets = Assets {
        path: dir.display().to_string(),
        origin: loaded.origin("paths.assets").to_string(),
        files: ASSET_FILES
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(dir.join(f.path)).ok();
                AssetStatus {
                    path: f.path,
                    purpose: f.purpose,
                    present: meta.as_ref().is_some_and(|m| m.is_file()),
                    bytes: meta.map(|m| m.len()),
                }
            })
            .collect(),
    };
    Report {
        surveil_version: env!("CARGO_PKG_VERSION"),
        os: os_name(),
        arch: std::env::consts::ARCH,
        cpu: cpu(),
        memory,
        cuda,
        ffmpeg: ffmpeg_version(),
        hf_cache,
        model_dir,
        assets,
    }
}

/// Fills the driver's free and reserved figures of a device where this process has no CUDA
/// context yet ([`GpuMemory::query`] never creates one) by opening and releasing the primary
/// context once: `reserved_bytes` then includes that context (a few hundred MB), which the
/// text report says.
fn with_free_figures(mut d: GpuDeviceMemory) -> GpuDeviceMemory {
    if d.free_bytes.is_none() {
        match surveil_memory::gpu::device_free_bytes(d.ordinal) {
            Ok((free, total)) => {
                d.free_bytes = Some(free);
                d.reserved_bytes = Some(total.saturating_sub(free));
            }
            Err(e) => tracing::warn!("cuda:{}: free memory unknown: {e}", d.ordinal),
        }
    }
    d
}

fn gib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "unknown".into())
}

/// `surveil doctor`
pub fn run(cli: &Cli, args: &DoctorArgs) -> Result<(), Failure> {
    let loaded = crate::cmd::config::load(cli, &args.config, &[])?;
    let r = gather(&loaded);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&r).context("formatting JSON")?
        );
        return Ok(());
    }
    outln!("surveil {}", r.surveil_version);
    outln!("os:       {} ({})", r.os, r.arch);
    outln!(
        "cpu:      {} — {} logical cores, features: {}",
        r.cpu.model.as_deref().unwrap_or("unknown model"),
        r.cpu.logical_cores,
        if r.cpu.features.is_empty() {
            "none detected".to_string()
        } else {
            r.cpu.features.join(" ")
        }
    );
    match &r.memory.error {
        None => outln!(
            "memory:   {} total, {} available{}",
            gib(r.memory.total_bytes),
            gib(r.memory.available_bytes),
            r.memory
                .cgroup_limit_bytes
                .map(|l| format!(" (cgroup limit {})", gib(Some(l))))
                .unwrap_or_default()
        ),
        Some(e) => outln!("memory:   unknown ({e})"),
    }
    if r.cuda.available {
        outln!(
            "cuda:     available, {} device(s) (reserved includes this check's own context)",
            r.cuda.devices.len()
        );
        for d in &r.cuda.devices {
            outln!("          {d}");
        }
    } else {
        outln!(
            "cuda:     unavailable — {}",
            r.cuda.reason.as_deref().unwrap_or("no reason given")
        );
    }
    outln!(
        "ffmpeg:   {}",
        r.ffmpeg.as_deref().unwrap_or(
            "not found on PATH (install it: scripts/setup.sh or apt-get install ffmpeg)"
        )
    );
    outln!(
        "hf cache: {} ({}){}",
        r.hf_cache.path,
        r.hf_cache.origin,
        if r.hf_cache.offline {
            " (HF_HUB_OFFLINE)"
        } else {
            ""
        }
    );
    for m in &r.hf_cache.models {
        outln!(
            "          {:<28} {}",
            m.id,
            m.snapshot.as_deref().unwrap_or("missing")
        );
    }
    if let Some(d) = &r.model_dir {
        outln!("models:   {} ({})", d.path, d.origin);
    }
    outln!("assets:   {} ({})", r.assets.path, r.assets.origin);
    for f in &r.assets.files {
        outln!(
            "          {:<45} {}",
            f.path,
            if f.present {
                "ok"
            } else {
                "missing (run scripts/setup.sh)"
            }
        );
    }
    Ok(())
}
