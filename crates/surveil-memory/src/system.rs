//! How much RAM the machine can still give this process: `/proc/meminfo` `MemAvailable`,
//! lowered by the tightest cgroup memory limit (containers) when there is one.
//!
//! The cgroup figure is `limit − (usage − inactive_file)` for the process's own cgroup and each
//! of its ancestors (cgroup v2 `memory.max` / `memory.current`, or v1
//! `memory.limit_in_bytes` / `memory.usage_in_bytes`); the inactive page cache is subtracted
//! from the usage because the kernel reclaims it before it OOM-kills, just as `MemAvailable`
//! counts it as available.
//!
//! Linux only; elsewhere [`HostMemory::read`] returns [`MemoryError::Unavailable`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::parse_kb_value;
use crate::MemoryError;

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages there).
const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// The tightest memory limit of the cgroups this process is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMemory {
    /// The cgroup directory the figures come from.
    pub path: PathBuf,
    /// Its limit (`memory.max` / `memory.limit_in_bytes`).
    pub limit_bytes: u64,
    /// Its current usage, page cache included.
    pub usage_bytes: u64,
    /// Inactive file cache inside that usage, which the kernel reclaims first.
    pub reclaimable_bytes: u64,
}

impl CgroupMemory {
    /// `limit − (usage − reclaimable)`, saturating.
    pub fn available_bytes(&self) -> u64 {
        self.limit_bytes
            .saturating_sub(self.usage_bytes.saturating_sub(self.reclaimable_bytes))
    }
}

/// RAM of the machine as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable` (or `MemFree + Buffers + Cached` on kernels older than 3.14).
    pub available_bytes: u64,
    /// The tightest cgroup limit, when the process is under one.
    pub cgroup: Option<CgroupMemory>,
}

impl HostMemory {
    /// Reads `/proc/meminfo` and the cgroup files of this process.
    pub fn read() -> Result<HostMemory, MemoryError> {
        if cfg!(target_os = "linux") {
            HostMemory::read_at(Path::new("/"))
        } else {
            Err(MemoryError::Unavailable {
                what: "available system memory".to_string(),
                reason: format!("only measured on Linux, not on {}", std::env::consts::OS),
            })
        }
    }

    /// Like [`Self::read`] with every path below `root` instead of `/` (for tests).
    pub(crate) fn read_at(root: &Path) -> Result<HostMemory, MemoryError> {
        let meminfo_path = root.join("proc/meminfo");
        let text = std::fs::read_to_string(&meminfo_path)
            .map_err(|e| MemoryError::io(&meminfo_path, e))?;
        let (total_bytes, available_bytes) =
            parse_meminfo(&text).ok_or_else(|| MemoryError::SystemFormat {
                path: meminfo_path.clone(),
                reason: "no MemTotal and MemAvailable (or MemFree) lines".to_string(),
            })?;
        Ok(HostMemory {
            total_bytes,
            available_bytes,
            cgroup: tightest_cgroup(root),
        })
    }

    /// What a new allocation can use: `MemAvailable`, or the cgroup's available bytes when
    /// lower.
    pub fn effective_available_bytes(&self) -> u64 {
        match &self.cgroup {
            Some(cg) => self.available_bytes.min(cg.available_bytes()),
            None => self.available_bytes,
        }
    }
}

/// `(MemTotal, MemAvailable)` in bytes from the text of `/proc/meminfo`.
pub(crate) fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            _ => continue,
        };
        *slot = parse_kb_value(value);
    }
    let available =
        available.or_else(|| Some(free? + buffers.unwrap_or(0) + cached.unwrap_or(0)))?;
    Some((total?, available))
}

/// The cgroup (own or ancestor) with the least available memory, if any has a limit.
fn tightest_cgroup(root: &Path) -> Option<CgroupMemory> {
    let cgroup_file = root.join("proc/self/cgroup");
    let text = std::fs::read_to_string(&cgroup_file).ok()?;
    let mut candidates = Vec::new();
    for line in text.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            let mount = root.join("sys/fs/cgroup");
            candidates.extend(walk_up(&mount, relative, read_v2));
        } else if controllers.split(',').any(|c| c == "memory") {
            let mount = root.join("sys/fs/cgroup/memory");
            candidates.extend(walk_up(&mount, relative, read_v1));
        }
    }
    candidates
        .into_iter()
        .min_by_key(CgroupMemory::available_bytes)
}

/// Reads `read` in the cgroup directory and each ancestor up to the mount point. Inside a
/// cgroup namespace the listed path may not exist under the mount (the mount *is* the cgroup):
/// then the mount point itself is read.
fn walk_up(
    mount: &Path,
    relative: &str,
    read: fn(&Path) -> Option<CgroupMemory>,
) -> Vec<CgroupMemory> {
    let mut dir = mount.join(relative);
    if !dir.is_dir() {
        dir = mount.to_path_buf();
    }
    let mut found = Vec::new();
    loop {
        found.extend(read(&dir));
        if dir == mount {
            break;
        }
        match dir.parent() {
            Some(parent) if parent.starts_with(mount) => dir = parent.to_path_buf(),
            _ => break,
        }
    }
    found
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_stat(dir: &Path, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(dir.join("memory.stat")) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_v2(dir: &Path) -> Option<CgroupMemory> {
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let limit: u64 = max.trim().parse().ok()?; // "max" → no limit
    if limit >= UNLIMITED_THRESHOLD {
        return None;
    }
    Some(CgroupMemory {
        path: dir.to_path_buf(),
        limit_bytes: limit,
        usage_bytes: read_number(&dir.join("memory.current")).unwrap_or(0),
        reclaimable_bytes: read_stat(dir, "inactive_file"),
    })
}

fn read_v1(dir: &Path) -> Option<CgroupMemory> {
    let limit = read_number(&dir.join("memory.limit_in_bytes"))?;
    if limit >= UNLIMITED_THRESHOLD {
        return None;
    }
    Some(CgroupMemory {
        path: dir.to_path_buf(),
        limit_bytes: limit,
        usage_bytes: read_number(&dir.join("memory.usage_in_bytes")).unwrap_or(0),
        reclaimable_bytes: read_stat(dir, "total_inactive_file"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
    }

    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n\
        MemAvailable:    6291456 kB\nBuffers:          100000 kB\nCached:          2000000 kB\n";

    #[test]
    fn meminfo_available_and_old_kernel_fallback() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            Some((16_000_000 * 1024, 6_291_456 * 1024))
        );
        let old = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n";
        assert_eq!(parse_meminfo(old), Some((100 * 1024, 35 * 1024)));
        assert_eq!(parse_meminfo("garbage"), None);
    }

    #[test]
    fn no_cgroup_limit_means_meminfo() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/meminfo", MEMINFO);
        write(dir.path(), "proc/self/cgroup", "0::/user.slice\n");
        write(dir.path(), "sys/fs/cgroup/user.slice/memory.max", "max\n");
        let host = HostMemory::read_at(dir.path()).unwrap();
        assert_eq!(host.cgroup, None);
        assert_eq!(host.effective_available_bytes(), 6_291_456 * 1024);
    }

    #[test]
    fn v2_limit_lower_than_meminfo_wins_and_ancestors_count() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/meminfo", MEMINFO);
        write(dir.path(), "proc/self/cgroup", "0::/pod/app\n");
        // Leaf: 4 GiB limit, 3 GiB used of which 1 GiB inactive cache → 2 GiB available.
        write(
            dir.path(),
            "sys/fs/cgroup/pod/app/memory.max",
            "4294967296\n",
        );
        write(
            dir.path(),
            "sys/fs/cgroup/pod/app/memory.current",
            "3221225472\n",
        );
        write(
            dir.path(),
            "sys/fs/cgroup/pod/app/memory.stat",
            "anon 2147483648\ninactive_file 1073741824\n",
        );
        // Parent: 8 GiB limit, 7.5 GiB used → 0.5 GiB available: tighter.
        write(dir.path(), "sys/fs/cgroup/pod/memory.max", "8589934592\n");
        write(
            dir.path(),
            "sys/fs/cgroup/pod/memory.current",
            "8053063680\n",
        );
        let host = HostMemory::read_at(dir.path()).unwrap();
        let cg = host.cgroup.clone().unwrap();
        assert!(cg.path.ends_with("sys/fs/cgroup/pod"), "{:?}", cg.path);
        assert_eq!(host.effective_available_bytes(), 512 << 20);
    }

    #[test]
    fn v1_namespaced_cgroup_reads_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/meminfo", MEMINFO);
        write(
            dir.path(),
            "proc/self/cgroup",
            "4:memory:/docker/abc\n0::/\n",
        );
        write(
            dir.path(),
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "2147483648\n",
        );
        write(
            dir.path(),
            "sys/fs/cgroup/memory/memory.usage_in_bytes",
            "1073741824\n",
        );
        write(
            dir.path(),
            "sys/fs/cgroup/memory/memory.stat",
            "cache 10\ntotal_inactive_file 0\n",
        );
        let host = HostMemory::read_at(dir.path()).unwrap();
        assert_eq!(host.effective_available_bytes(), 1 << 30);
    }

    #[test]
    fn missing_meminfo_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = HostMemory::read_at(dir.path()).unwrap_err();
        assert!(err.to_string().contains("proc/meminfo"), "{err}");
        write(dir.path(), "proc/meminfo", "nonsense\n");
        let err = HostMemory::read_at(dir.path()).unwrap_err();
        assert!(matches!(err, MemoryError::SystemFormat { .. }), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_machine() {
        let host = HostMemory::read().unwrap();
        assert!(host.total_bytes > 0);
        assert!(host.available_bytes <= host.total_bytes);
        assert!(host.effective_available_bytes() <= host.available_bytes);
    }
}
