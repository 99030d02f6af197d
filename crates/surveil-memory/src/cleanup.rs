//! Giving memory back after a model is unloaded.
//!
//! Dropping a model frees its memory to the allocator, but not necessarily to the operating
//! system: glibc keeps freed small-block heap memory for reuse, and the CUDA stream-ordered
//! allocator keeps freed device memory in its pool. [`cleanup`] asks both to give it back
//! (`malloc_trim(0)` on glibc; `cuCtxSynchronize` + `cuMemPoolTrimTo(pool, 0)` with the `cuda`
//! feature) and reports how much RSS went away.
//!
//! Drop order matters: call [`release`] with the model *by value* to measure the whole unload
//! (RSS before the drop − RSS after the trim), or drop everything first and call [`cleanup`] to
//! measure only what the trim returned.

use serde::{Deserialize, Serialize};

use crate::gpu::{gpu_synchronize_and_trim, GpuTrim};
use crate::process::ProcessMemory;

/// What a cleanup did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// RSS when the cleanup (or [`release`]) started.
    pub rss_before_bytes: Option<u64>,
    /// RSS after it.
    pub rss_after_bytes: Option<u64>,
    /// `rss_before − rss_after`, saturating at 0 (also 0 when RSS is not measured).
    pub released_bytes: u64,
    /// Whether `malloc_trim` ran and reported returning memory (always `false` off glibc).
    pub heap_trimmed: bool,
    /// Per-device result of the CUDA synchronize + pool trim (devices where this process has a
    /// context); empty when the GPU step was skipped.
    pub gpu: Vec<GpuTrim>,
    /// Why the GPU step was skipped, if it was.
    pub gpu_skipped: Option<String>,
}

/// Returns freed memory to the OS (see the module docs) and reports the RSS change.
pub fn cleanup() -> CleanupReport {
    let before = ProcessMemory::current().rss_bytes;
    trim(before)
}

/// Drops `value`, then runs [`cleanup`]; `released_bytes` covers both the drop and the trim.
pub fn release<T>(value: T) -> CleanupReport {
    let before = ProcessMemory::current().rss_bytes;
    drop(value);
    trim(before)
}

fn trim(rss_before: Option<u64>) -> CleanupReport {
    let (gpu, gpu_skipped) = match gpu_synchronize_and_trim() {
        Ok(trims) => {
            for t in &trims {
                if let Some(e) = &t.error {
                    tracing::warn!(device = t.ordinal, "CUDA synchronize/trim failed: {e}");
                }
            }
            (trims, None)
        }
        Err(reason) => (Vec::new(), Some(reason)),
    };
    let heap_trimmed = malloc_trim();
    let rss_after = ProcessMemory::current().rss_bytes;
    let released_bytes = match (rss_before, rss_after) {
        (Some(b), Some(a)) => b.saturating_sub(a),
        _ => 0,
    };
    tracing::debug!(
        released_bytes,
        heap_trimmed,
        "cleanup: RSS {:?} -> {:?}",
        rss_before,
        rss_after
    );
    CleanupReport {
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        released_bytes,
        heap_trimmed,
        gpu,
        gpu_skipped,
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() -> bool {
    // SAFETY: `malloc_trim` has no preconditions; it only releases free heap pages.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() -> bool {
    false
}
