//! What this process holds in RAM: resident set (RSS), virtual size (VMS) and the kernel's
//! high-water mark of RSS (peak), with the RSS split into anonymous, file-backed and shared
//! pages where the platform says so.
//!
//! On Linux everything comes from one read of `/proc/self/status` (about 10 µs, cheap enough to
//! take per frame). Elsewhere, and on Linux without `/proc`, only the peak RSS is known (from
//! `getrusage`); the other fields are `None` and [`ProcessMemory::missing`] names them.
//!
//! Not for: system-wide memory (see [`crate::system`]) or GPU memory (see [`crate::gpu`]).

use serde::{Deserialize, Serialize};

/// One reading of this process's memory. Every field is in bytes; `None` means the platform
/// does not report it (never "zero").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident set size: pages of this process currently in RAM (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Virtual memory size: everything mapped, resident or not (`VmSize`).
    pub vms_bytes: Option<u64>,
    /// Highest RSS since the process started (`VmHWM`, or `getrusage` `ru_maxrss`).
    pub peak_rss_bytes: Option<u64>,
    /// Resident anonymous pages: heap, stacks, anonymous mappings (`RssAnon`).
    pub rss_anon_bytes: Option<u64>,
    /// Resident pages of mapped files, e.g. memory-mapped checkpoints (`RssFile`).
    pub rss_file_bytes: Option<u64>,
    /// Resident shared memory, including mapped files on tmpfs (`RssShmem`).
    pub rss_shmem_bytes: Option<u64>,
    /// Pages of this process swapped out (`VmSwap`).
    pub swap_bytes: Option<u64>,
}

impl ProcessMemory {
    /// Reads the current figures. Never fails: what cannot be measured is `None` (see
    /// [`Self::missing`]), and the reason is logged once at `warn` level.
    pub fn current() -> ProcessMemory {
        #[cfg(target_os = "linux")]
        {
            match std::fs::read_to_string("/proc/self/status") {
                Ok(text) => return ProcessMemory::parse_proc_status(&text),
                Err(e) => warn_once(&format!(
                    "/proc/self/status unreadable ({e}); only peak RSS is measured"
                )),
            }
        }
        #[cfg(not(target_os = "linux"))]
        warn_once("RSS, VMS and the RSS split are only measured on Linux; only peak RSS is known");
        ProcessMemory {
            peak_rss_bytes: peak_rss_from_rusage(),
            ..ProcessMemory::default()
        }
    }

    /// Parses the text of a Linux `/proc/<pid>/status` file. Lines that are absent or
    /// malformed leave their field `None`.
    pub(crate) fn parse_proc_status(text: &str) -> ProcessMemory {
        let mut m = ProcessMemory::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let slot = match key {
                "VmRSS" => &mut m.rss_bytes,
                "VmSize" => &mut m.vms_bytes,
                "VmHWM" => &mut m.peak_rss_bytes,
                "RssAnon" => &mut m.rss_anon_bytes,
                "RssFile" => &mut m.rss_file_bytes,
                "RssShmem" => &mut m.rss_shmem_bytes,
                "VmSwap" => &mut m.swap_bytes,
                _ => continue,
            };
            *slot = parse_kb_value(value);
        }
        m
    }

    /// Names of the fields this platform did not report (empty on Linux).
    pub fn missing(&self) -> Vec<&'static str> {
        let fields = [
            ("rss_bytes", self.rss_bytes),
            ("vms_bytes", self.vms_bytes),
            ("peak_rss_bytes", self.peak_rss_bytes),
            ("rss_anon_bytes", self.rss_anon_bytes),
            ("rss_file_bytes", self.rss_file_bytes),
            ("rss_shmem_bytes", self.rss_shmem_bytes),
            ("swap_bytes", self.swap_bytes),
        ];
        fields
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(name, _)| name)
            .collect()
    }
}

/// Parses `"   123456 kB"` (the value part of a `/proc` line) into bytes.
pub(crate) fn parse_kb_value(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

/// Peak RSS from `getrusage(RUSAGE_SELF)`.
#[cfg(unix)]
fn peak_rss_from_rusage() -> Option<u64> {
    // SAFETY: `getrusage` only writes into the zero-initialised struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return None;
    }
    let max = u64::try_from(usage.ru_maxrss).ok()?;
    // macOS reports bytes, the other Unixes kilobytes.
    if cfg!(any(target_os = "macos", target_os = "ios")) {
        Some(max)
    } else {
        max.checked_mul(1024)
    }
}

#[cfg(not(unix))]
fn peak_rss_from_rusage() -> Option<u64> {
    None
}

fn warn_once(message: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| tracing::warn!("process memory: {message}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsurveil\nUmask:\t0022\nState:\tR (running)\n\
        VmPeak:\t 2000000 kB\nVmSize:\t 1999000 kB\nVmLck:\t       0 kB\nVmHWM:\t  500000 kB\n\
        VmRSS:\t  400000 kB\nRssAnon:\t  300000 kB\nRssFile:\t   90000 kB\nRssShmem:\t   10000 kB\n\
        VmData:\t  800000 kB\nVmSwap:\t       0 kB\nThreads:\t4\n";

    #[test]
    fn parses_proc_status() {
        let m = ProcessMemory::parse_proc_status(STATUS);
        assert_eq!(m.rss_bytes, Some(400_000 * 1024));
        assert_eq!(m.vms_bytes, Some(1_999_000 * 1024));
        assert_eq!(m.peak_rss_bytes, Some(500_000 * 1024));
        assert_eq!(m.rss_anon_bytes, Some(300_000 * 1024));
        assert_eq!(m.rss_file_bytes, Some(90_000 * 1024));
        assert_eq!(m.rss_shmem_bytes, Some(10_000 * 1024));
        assert_eq!(m.swap_bytes, Some(0));
        assert!(m.missing().is_empty());
    }

    #[test]
    fn missing_and_malformed_lines_stay_none() {
        let m = ProcessMemory::parse_proc_status("VmRSS:\tlots kB\nVmSize:\t12 MB\nVmHWM 5 kB\n");
        assert_eq!(m, ProcessMemory::default());
        assert_eq!(m.missing().len(), 7);
        assert!(m.missing().contains(&"rss_bytes"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn current_reads_everything_on_linux() {
        let m = ProcessMemory::current();
        assert!(m.missing().is_empty(), "missing: {:?}", m.missing());
        let rss = m.rss_bytes.unwrap_or(0);
        assert!(rss > 0);
        assert!(m.vms_bytes.unwrap_or(0) >= rss);
        assert!(m.peak_rss_bytes.unwrap_or(0) >= rss);
    }

    #[cfg(unix)]
    #[test]
    fn rusage_peak_is_close_to_vmhwm() {
        let from_rusage = peak_rss_from_rusage().unwrap_or(0);
        assert!(from_rusage > 0);
        #[cfg(target_os = "linux")]
        {
            let hwm = ProcessMemory::current().peak_rss_bytes.unwrap_or(0);
            // ru_maxrss survives execve (it can hold the peak of the process image before the
            // exec, e.g. the harness that spawned us), so it is at least VmHWM, give or take
            // the moments between the two reads.
            assert!(
                from_rusage + (64 << 20) >= hwm,
                "VmHWM {hwm} vs ru_maxrss {from_rusage}"
            );
        }
    }
}
