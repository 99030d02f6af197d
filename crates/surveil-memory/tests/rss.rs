//! Tests that prove the process figures with real allocations and mappings.
//!
//! RSS is process-wide, so these live in their own test binary and hold one lock each: no
//! other test can allocate while one of them measures.
#![cfg(target_os = "linux")]

use std::hint::black_box;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use surveil_memory::{cleanup, release, MemorySampler, ProcessMemory, SamplerConfig};

static RSS_LOCK: Mutex<()> = Mutex::new(());

/// Takes the lock, then trims the heap so each test starts from the same steady state and is
/// not disturbed by memory an earlier (possibly failed) test freed but left resident.
fn serial() -> MutexGuard<'static, ()> {
    let guard = RSS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    cleanup();
    guard
}

const MIB: u64 = 1 << 20;
const SIZE: usize = 256 << 20;

fn rss() -> u64 {
    ProcessMemory::current().rss_bytes.expect("VmRSS on Linux")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// `actual` within `pct` percent of `expected`.
fn assert_close(what: &str, actual: i64, expected: u64, pct: f64) {
    let tolerance = expected as f64 * pct / 100.0;
    let diff = (actual as f64 - expected as f64).abs();
    assert!(
        diff <= tolerance,
        "{what}: {:.1} MiB, expected {:.1} MiB ± {pct}%",
        actual as f64 / MIB as f64,
        mib(expected)
    );
}

/// A buffer of `len` bytes with every page written (a `vec![0; n]` would stay untouched).
fn touched(len: usize) -> Vec<u8> {
    vec![1u8; len]
}

#[test]
fn allocate_touch_256_mib_then_drop_and_cleanup() {
    let _serial = serial();
    let before = ProcessMemory::current();
    let base = before.rss_bytes.unwrap();

    let buffer = black_box(touched(SIZE));
    let during = ProcessMemory::current();
    assert_close(
        "RSS growth after touching 256 MiB",
        during.rss_bytes.unwrap() as i64 - base as i64,
        SIZE as u64,
        5.0,
    );
    assert!(
        during.rss_anon_bytes.unwrap() >= before.rss_anon_bytes.unwrap() + SIZE as u64 * 95 / 100
    );
    // No VMS expectation here: glibc may serve the buffer from heap address space an earlier
    // test freed (and `malloc_trim` made non-resident), so VMS need not grow. The mmap test
    // below checks VMS where it is well defined.
    assert!(during.peak_rss_bytes.unwrap() >= during.rss_bytes.unwrap());

    drop(buffer);
    let report = cleanup();
    let after = rss();
    assert!(
        after.abs_diff(base) <= 16 * MIB,
        "RSS after drop + cleanup {:.1} MiB vs {:.1} MiB before",
        mib(after),
        mib(base)
    );
    // The high-water mark remembers the 256 MiB even after they are gone.
    let peak = ProcessMemory::current().peak_rss_bytes.unwrap();
    assert!(
        peak >= base + SIZE as u64 * 95 / 100,
        "peak {:.1} MiB",
        mib(peak)
    );
    assert_eq!(
        report.rss_after_bytes.map(|a| a.abs_diff(after) < 4 * MIB),
        Some(true)
    );
}

#[test]
fn release_reports_the_bytes_the_drop_gave_back() {
    let _serial = serial();
    let buffer = black_box(touched(SIZE));
    let report = release(buffer);
    assert_close(
        "released_bytes of a 256 MiB buffer",
        report.released_bytes as i64,
        SIZE as u64,
        5.0,
    );
    assert_eq!(
        report.released_bytes,
        report
            .rss_before_bytes
            .unwrap()
            .saturating_sub(report.rss_after_bytes.unwrap())
    );
}

/// Heap blocks freed between live neighbours stay in glibc's heap after `free` (nothing can
/// coalesce into the heap top); only `malloc_trim` hands their pages back. This proves that
/// `cleanup` does real work beyond what `free` already did.
#[cfg(target_env = "gnu")]
#[test]
fn cleanup_returns_fragmented_heap_to_the_os() {
    let _serial = serial();
    let base = rss();
    // 120 KiB stays below glibc's mmap threshold (128 KiB at least), so the blocks come from
    // the heap; each is followed by a small live block that pins it in place.
    const BLOCK: usize = 120 << 10;
    let count = SIZE / BLOCK;
    let mut blocks = Vec::with_capacity(count);
    let mut pins = Vec::with_capacity(count);
    for _ in 0..count {
        blocks.push(touched(BLOCK));
        pins.push(touched(32));
    }
    let grown = rss();
    assert!(
        grown >= base + 240 * MIB,
        "blocks grew RSS by only {:.1} MiB",
        mib(grown - base)
    );
    drop(blocks);
    let freed_but_kept = rss();
    assert!(
        freed_but_kept >= base + 240 * MIB,
        "glibc returned the blocks without a trim ({:.1} MiB above base left)",
        mib(freed_but_kept.saturating_sub(base))
    );
    let report = cleanup();
    assert!(report.heap_trimmed);
    assert!(
        report.released_bytes >= 230 * MIB,
        "malloc_trim released only {:.1} MiB",
        mib(report.released_bytes)
    );
    // The partial pages at both ends of each free block (and the pins) cannot be returned.
    let after = rss();
    assert!(
        after.abs_diff(base) <= 24 * MIB,
        "RSS {:.1} MiB vs {:.1} MiB before",
        mib(after),
        mib(base)
    );
    drop(black_box(pins));
}

#[test]
fn mmap_200_mb_file_moves_vms_then_rss() {
    let _serial = serial();
    const FILE: usize = 200_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.bin");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![3u8; 1 << 20];
        let mut left = FILE;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        f.sync_all().unwrap();
    }
    let file = std::fs::File::open(&path).unwrap();

    let before = ProcessMemory::current();
    // SAFETY: the file is private to this test and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mapped = ProcessMemory::current();
    // Mapping reserves address space but reads nothing. Slack: up to 16 MiB less if the
    // previous test's thread unmaps its stack meanwhile, up to 80 MiB more if a test thread the
    // harness starts meanwhile reserves a glibc arena (64 MiB of address space).
    let vms_growth = mapped.vms_bytes.unwrap() as i64 - before.vms_bytes.unwrap() as i64;
    assert!(
        vms_growth >= FILE as i64 - 16 * MIB as i64 && vms_growth <= FILE as i64 + 80 * MIB as i64,
        "VMS grew by {:.1} MiB on mapping",
        vms_growth as f64 / MIB as f64
    );
    let rss_on_map = mapped.rss_bytes.unwrap() as i64 - before.rss_bytes.unwrap() as i64;
    assert!(
        rss_on_map.unsigned_abs() < 8 * MIB,
        "RSS moved {rss_on_map} bytes on mmap alone"
    );

    // Reading every page brings the file into this process's resident set as file pages.
    let sum: u64 = map.iter().step_by(4096).map(|&b| b as u64).sum();
    assert_eq!(sum, 3 * FILE.div_ceil(4096) as u64);
    let read = ProcessMemory::current();
    assert_close(
        "RSS growth after reading the mapping",
        read.rss_bytes.unwrap() as i64 - mapped.rss_bytes.unwrap() as i64,
        FILE as u64,
        5.0,
    );
    let file_pages = |m: &ProcessMemory| m.rss_file_bytes.unwrap() + m.rss_shmem_bytes.unwrap();
    assert_close(
        "RssFile + RssShmem growth",
        file_pages(&read) as i64 - file_pages(&mapped) as i64,
        FILE as u64,
        5.0,
    );
    assert!(
        read.rss_anon_bytes
            .unwrap()
            .abs_diff(mapped.rss_anon_bytes.unwrap())
            < 8 * MIB
    );

    drop(map);
    let unmapped = ProcessMemory::current();
    let vms_drop = read.vms_bytes.unwrap() as i64 - unmapped.vms_bytes.unwrap() as i64;
    assert_close("VMS drop on unmap", vms_drop, FILE as u64, 5.0);
    assert!(
        unmapped
            .rss_bytes
            .unwrap()
            .abs_diff(before.rss_bytes.unwrap())
            <= 16 * MIB,
        "RSS after unmap {:.1} MiB vs {:.1} MiB before",
        mib(unmapped.rss_bytes.unwrap()),
        mib(before.rss_bytes.unwrap())
    );
}

#[test]
fn sampler_keeps_the_peak_of_a_short_spike() {
    let _serial = serial();
    let base = rss();
    let sampler = MemorySampler::start(SamplerConfig {
        enabled: true,
        interval: Duration::from_millis(2),
        history_len: 10_000,
        include_gpu: false,
    })
    .unwrap();
    let buffer = black_box(touched(SIZE));
    let seen = sampler.stats().samples;
    while sampler.stats().samples < seen + 5 {
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(buffer);
    let seen = sampler.stats().samples;
    while sampler.stats().samples < seen + 5 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = sampler.stats();
    let peak = stats.peak_rss_bytes.unwrap();
    assert!(
        peak >= base + SIZE as u64 * 95 / 100,
        "sampler peak {:.1} MiB",
        mib(peak)
    );
    let latest = stats.latest.and_then(|s| s.process.rss_bytes).unwrap();
    assert!(
        latest < peak - SIZE as u64 / 2,
        "latest sample still shows the spike"
    );
    drop(sampler);
}
