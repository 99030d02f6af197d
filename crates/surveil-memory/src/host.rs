//! Machine-wide memory facts beyond [`crate::system::HostMemory`]: swap, and the resident
//! memory of every process running a given executable (e.g. all `surveil` processes).
//!
//! Both come from `/proc` (Linux only; elsewhere the readers return
//! [`MemoryError::Unavailable`]):
//! - swap: `SwapTotal` / `SwapFree` of `/proc/meminfo` (the figures `free` prints);
//! - processes: each `/proc/<pid>` whose executable's file name (`readlink /proc/<pid>/exe`,
//!   or `/proc/<pid>/comm` when the link cannot be read, e.g. another user's process) equals
//!   the name asked for, with `VmRSS` from `/proc/<pid>/status` and the first
//!   [`SHOWN_ARGS`] words of `/proc/<pid>/cmdline`.
//!
//! Not for: this process's own detailed figures (see [`crate::process`]) or GPU memory (see
//! [`crate::gpu`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::process::{parse_kb_value, ProcessMemory};
use crate::MemoryError;

/// How many words of a process's command line are kept: the program and its first argument
/// (for surveil, the subcommand). The rest is dropped because command lines can carry
/// credentials (`--source rtsp://user:password@camera/...`).
pub const SHOWN_ARGS: usize = 2;

/// The kernel keeps at most this many bytes of a process name in `/proc/<pid>/comm`
/// (`TASK_COMM_LEN` − 1).
const COMM_LEN: usize = 15;

/// Suffix the kernel appends to `/proc/<pid>/exe` when the executable file was replaced or
/// removed while the process runs (e.g. a rebuild).
const DELETED_SUFFIX: &str = " (deleted)";

/// Swap space of the machine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapMemory {
    /// `SwapTotal`: all swap devices and files together (0 when there is no swap).
    pub total_bytes: u64,
    /// `SwapTotal − SwapFree`: swap in use.
    pub used_bytes: u64,
}

impl SwapMemory {
    /// Reads `/proc/meminfo`.
    ///
    /// Errors: [`MemoryError::Unavailable`] off Linux, [`MemoryError::Io`] when the file cannot
    /// be read, [`MemoryError::SystemFormat`] when it has no swap lines.
    pub fn read() -> Result<SwapMemory, MemoryError> {
        if cfg!(target_os = "linux") {
            SwapMemory::read_at(Path::new("/"))
        } else {
            Err(MemoryError::Unavailable {
                what: "swap".to_string(),
                reason: format!("only measured on Linux, not on {}", std::env::consts::OS),
            })
        }
    }

    /// Like [`Self::read`] with `root/proc/meminfo` instead of `/proc/meminfo` (for tests).
    pub(crate) fn read_at(root: &Path) -> Result<SwapMemory, MemoryError> {
        let path = root.join("proc/meminfo");
        let text = std::fs::read_to_string(&path).map_err(|e| MemoryError::io(&path, e))?;
        parse_swap(&text).ok_or_else(|| MemoryError::SystemFormat {
            path,
            reason: "no SwapTotal and SwapFree lines".to_string(),
        })
    }

    /// `SwapTotal − used`.
    pub fn free_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.used_bytes)
    }
}

/// Swap total and use from the text of `/proc/meminfo`; `None` when `SwapTotal` or
/// `SwapFree` is missing or malformed. A `SwapFree` above `SwapTotal` (the two are read at
/// slightly different moments) gives 0 used.
pub(crate) fn parse_swap(text: &str) -> Option<SwapMemory> {
    let (mut total, mut free) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "SwapTotal" => total = parse_kb_value(value),
            "SwapFree" => free = parse_kb_value(value),
            _ => {}
        }
    }
    let (total, free) = (total?, free?);
    Some(SwapMemory {
        total_bytes: total,
        used_bytes: total.saturating_sub(free),
    })
}

/// One running process found by [`processes_named`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedProcess {
    /// Process id.
    pub pid: u32,
    /// Resident set size (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub rss_bytes: u64,
    /// The first [`SHOWN_ARGS`] words of the command line (program and first argument); the
    /// rest is never read into memory here.
    pub argv: Vec<String>,
}

/// Every running process whose executable's file name is `name`, sorted by pid; this process
/// too when it matches.
///
/// Processes that exit during the scan, and processes that hold no memory (zombies: no
/// `VmRSS`), are left out. Errors: [`MemoryError::Unavailable`] off Linux,
/// [`MemoryError::Io`] when `/proc` cannot be listed.
pub fn processes_named(name: &str) -> Result<Vec<NamedProcess>, MemoryError> {
    if cfg!(target_os = "linux") {
        processes_named_at(Path::new("/"), name)
    } else {
        Err(MemoryError::Unavailable {
            what: format!("the list of `{name}` processes"),
            reason: format!("only measured on Linux, not on {}", std::env::consts::OS),
        })
    }
}

/// Like [`processes_named`] with `root/proc` instead of `/proc` (for tests).
pub(crate) fn processes_named_at(
    root: &Path,
    name: &str,
) -> Result<Vec<NamedProcess>, MemoryError> {
    let proc_dir = root.join("proc");
    let entries = std::fs::read_dir(&proc_dir).map_err(|e| MemoryError::io(&proc_dir, e))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue; // `self`, `meminfo`, ...
        };
        let dir = entry.path();
        if !runs_executable(&dir, name) {
            continue;
        }
        // Gone since the listing, or a zombie: nothing resident to count.
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let Some(rss_bytes) = ProcessMemory::parse_proc_status(&status).rss_bytes else {
            continue;
        };
        let argv = std::fs::read(dir.join("cmdline"))
            .map(|bytes| parse_cmdline(&bytes, SHOWN_ARGS))
            .unwrap_or_default();
        found.push(NamedProcess {
            pid,
            rss_bytes,
            argv,
        });
    }
    found.sort_by_key(|p| p.pid);
    tracing::debug!(name, count = found.len(), "scanned /proc for processes");
    Ok(found)
}

/// Whether the process of `pid_dir` runs an executable named `name`: the file name of the
/// `exe` link, or, when the link cannot be read (another user's process, a zombie), the
/// `comm` value. `comm` alone is not trusted when the link answers: a process can rename it.
fn runs_executable(pid_dir: &Path, name: &str) -> bool {
    match std::fs::read_link(pid_dir.join("exe")) {
        Ok(target) => executable_name(&target.to_string_lossy()) == name,
        Err(_) => std::fs::read_to_string(pid_dir.join("comm"))
            .map(|comm| comm_names(comm.trim_end_matches('\n'), name))
            .unwrap_or(false),
    }
}

/// Whether a `comm` value (at most [`COMM_LEN`] bytes, longer names cut) stands for `name`.
fn comm_names(comm: &str, name: &str) -> bool {
    if name.len() > COMM_LEN {
        name.as_bytes().get(..COMM_LEN) == Some(comm.as_bytes())
    } else {
        comm == name
    }
}

/// The file name of an `exe` link target, without the kernel's ` (deleted)` suffix:
/// `/opt/bin/surveil (deleted)` → `surveil`.
pub(crate) fn executable_name(link_target: &str) -> String {
    let path = link_target
        .strip_suffix(DELETED_SUFFIX)
        .unwrap_or(link_target);
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// The first `keep` words of a `/proc/<pid>/cmdline` (NUL-separated, usually NUL-terminated);
/// bytes that are not UTF-8 become U+FFFD.
pub(crate) fn parse_cmdline(bytes: &[u8], keep: usize) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .take(keep)
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn swap_from_meminfo() {
        let text = "MemTotal:       16000000 kB\nSwapCached:            0 kB\n\
            SwapTotal:       2097152 kB\nSwapFree:        1572864 kB\nZswap:     0 kB\n";
        let swap = parse_swap(text).unwrap();
        assert_eq!(swap.total_bytes, 2 << 30);
        assert_eq!(swap.used_bytes, 512 << 20);
        assert_eq!(swap.free_bytes(), 1536 << 20);
        let none = parse_swap("SwapTotal: 0 kB\nSwapFree: 0 kB\n").unwrap();
        assert_eq!((none.total_bytes, none.used_bytes), (0, 0));
        // Read at different moments: free above total is no use, not an underflow.
        let skew = parse_swap("SwapTotal: 100 kB\nSwapFree: 104 kB\n").unwrap();
        assert_eq!(skew.used_bytes, 0);
        assert_eq!(parse_swap("SwapTotal: 100 kB\n"), None);
        assert_eq!(parse_swap("SwapTotal: lots\nSwapFree: 1 kB\n"), None);
    }

    #[test]
    fn swap_read_at_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = SwapMemory::read_at(dir.path()).unwrap_err();
        assert!(err.to_string().contains("proc/meminfo"), "{err}");
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: 1 kB\n").unwrap();
        let err = SwapMemory::read_at(dir.path()).unwrap_err();
        assert!(matches!(err, MemoryError::SystemFormat { .. }), "{err}");
    }

    #[test]
    fn cmdline_keeps_only_the_first_words() {
        let raw = b"/usr/bin/surveil\0run\0--source\0rtsp://user:secret@cam/1\0";
        assert_eq!(parse_cmdline(raw, 2), vec!["/usr/bin/surveil", "run"]);
        assert_eq!(parse_cmdline(raw, 1), vec!["/usr/bin/surveil"]);
        assert!(!parse_cmdline(raw, SHOWN_ARGS).concat().contains("secret"));
        // No trailing NUL (a process that rewrote its argv), and an empty one (kernel thread).
        assert_eq!(
            parse_cmdline(b"surveil\0memory", 5),
            vec!["surveil", "memory"]
        );
        assert!(parse_cmdline(b"", 2).is_empty());
        assert_eq!(parse_cmdline(b"a\xff\0b\0", 2), vec!["a\u{fffd}", "b"]);
    }

    #[test]
    fn executable_name_strips_dir_and_deleted_suffix() {
        assert_eq!(executable_name("/opt/surveil/bin/surveil"), "surveil");
        assert_eq!(
            executable_name("/work/target/debug/surveil (deleted)"),
            "surveil"
        );
        assert_eq!(executable_name("surveil"), "surveil");
        assert_eq!(executable_name("/usr/bin/surveil-helper"), "surveil-helper");
    }

    #[test]
    fn comm_compares_truncated_names() {
        assert!(comm_names("surveil", "surveil"));
        assert!(!comm_names("surveil-x", "surveil"));
        // 20-byte name, 15 bytes kept by the kernel.
        assert!(comm_names("surveil-monitor", "surveil-monitor-two"));
        assert!(!comm_names("surveil-monitox", "surveil-monitor-two"));
        assert!(!comm_names("surveil-monit", "surveil-monitor-two"));
    }

    struct FakeProc {
        root: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("proc")).unwrap();
            std::fs::write(root.path().join("proc/meminfo"), "MemTotal: 1 kB\n").unwrap();
            std::os::unix::fs::symlink("1", root.path().join("proc/self")).unwrap();
            FakeProc { root }
        }

        fn dir(&self, pid: u32) -> PathBuf {
            let dir = self.root.path().join(format!("proc/{pid}"));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }

        fn process(&self, pid: u32, exe: Option<&str>, comm: &str, rss_kb: Option<u64>) {
            let dir = self.dir(pid);
            if let Some(exe) = exe {
                std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
            }
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            let rss = rss_kb.map_or(String::new(), |kb| format!("VmRSS:\t{kb:>8} kB\n"));
            std::fs::write(
                dir.join("status"),
                format!("Name:\t{comm}\nState:\tS (sleeping)\n{rss}Threads:\t3\n"),
            )
            .unwrap();
            std::fs::write(
                dir.join("cmdline"),
                format!("{comm}\0run\0--source\0rtsp://u:pw@cam\0"),
            )
            .unwrap();
        }
    }

    #[test]
    fn scan_matches_exe_name_with_comm_fallback() {
        let fake = FakeProc::new();
        fake.process(100, Some("/opt/surveil/bin/surveil"), "surveil", Some(2048));
        // Rebuilt while running.
        fake.process(
            200,
            Some("/w/target/debug/surveil (deleted)"),
            "surveil",
            Some(1),
        );
        // Another user's process: `exe` unreadable, `comm` decides.
        fake.process(300, None, "surveil", Some(4));
        // `exe` answers and it is not ours, whatever `comm` says.
        fake.process(400, Some("/usr/bin/python3"), "surveil", Some(8));
        fake.process(
            500,
            Some("/usr/bin/surveil-helper"),
            "surveil-helper",
            Some(16),
        );
        // Zombie: no VmRSS.
        fake.process(600, None, "surveil", None);
        // Exited between the listing and the status read.
        let gone = fake.dir(700);
        std::os::unix::fs::symlink("/usr/bin/surveil", gone.join("exe")).unwrap();

        let found = processes_named_at(fake.root.path(), "surveil").unwrap();
        let pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![100, 200, 300]);
        assert_eq!(found[0].rss_bytes, 2048 * 1024);
        assert_eq!(found[0].argv, vec!["surveil", "run"]);
        let total: u64 = found.iter().map(|p| p.rss_bytes).sum();
        assert_eq!(total, (2048 + 1 + 4) * 1024);

        let helper = processes_named_at(fake.root.path(), "surveil-helper").unwrap();
        assert_eq!(helper.len(), 1);
        assert_eq!(helper[0].pid, 500);
    }

    #[test]
    fn scan_without_proc_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = processes_named_at(dir.path(), "surveil").unwrap_err();
        assert!(err.to_string().contains("proc"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn scan_finds_this_test_process() {
        let exe = std::env::current_exe().unwrap();
        let name = executable_name(&exe.to_string_lossy());
        let found = processes_named(&name).unwrap();
        let me = found
            .iter()
            .find(|p| p.pid == std::process::id())
            .unwrap_or_else(|| panic!("pid {} not in {found:?}", std::process::id()));
        let own = ProcessMemory::current().rss_bytes.unwrap();
        assert!(me.rss_bytes > 0);
        // Two reads a moment apart: same order of magnitude.
        assert!(
            me.rss_bytes / 2 <= own && own <= me.rss_bytes * 2,
            "{} vs {own}",
            me.rss_bytes
        );
        let argv0 = me.argv.first().map(String::as_str).unwrap_or("");
        assert!(
            argv0.ends_with(&name),
            "argv[0] {argv0:?}, executable {name}"
        );
        let swap = SwapMemory::read().unwrap();
        assert!(swap.used_bytes <= swap.total_bytes);
    }
}
