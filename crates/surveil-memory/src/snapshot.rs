//! Labelled memory snapshots and reports made of them.
//!
//! A [`MemorySnapshot`] is process + GPU memory at one instant with a label ("before load").
//! A [`MemoryReport`] is the sequence of snapshots of one model lifecycle (before load, after
//! load, after first inference, after unload) with the change from each snapshot to the next.
//! Both print as human text (`RSS: 123.4 MB`, MB = 2^20 bytes, see [`crate::units`]) and
//! serialise to JSON with the exact byte counts: `rss_bytes`, `vms_bytes`, `peak_rss_bytes`,
//! `gpu_allocated_bytes`, `gpu_reserved_bytes` (`null` when unavailable).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gpu::GpuMemory;
use crate::process::ProcessMemory;
use crate::units::{format_mb_delta, format_mb_opt, signed_delta};

/// Process and GPU memory at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySnapshot {
    label: String,
    timestamp_unix_ms: u64,
    #[serde(flatten)]
    process: ProcessMemory,
    gpu_allocated_bytes: Option<u64>,
    gpu_reserved_bytes: Option<u64>,
    gpu: GpuMemory,
}

impl MemorySnapshot {
    /// Measures now: [`ProcessMemory::current`] and [`GpuMemory::query`].
    pub fn take(label: impl Into<String>) -> MemorySnapshot {
        MemorySnapshot::from_parts(label, ProcessMemory::current(), GpuMemory::query())
    }

    /// Measures process memory only, with the GPU reported unavailable for `reason` (for
    /// callers that know no GPU is involved and want the cheapest snapshot).
    pub fn take_process_only(label: impl Into<String>, reason: &str) -> MemorySnapshot {
        MemorySnapshot::from_parts(
            label,
            ProcessMemory::current(),
            GpuMemory::Unavailable(reason.to_string()),
        )
    }

    /// Builds a snapshot from figures measured elsewhere, stamped with the current time.
    pub fn from_parts(
        label: impl Into<String>,
        process: ProcessMemory,
        gpu: GpuMemory,
    ) -> MemorySnapshot {
        MemorySnapshot {
            label: label.into(),
            timestamp_unix_ms: now_unix_ms(),
            gpu_allocated_bytes: gpu.allocated_bytes(),
            gpu_reserved_bytes: gpu.reserved_bytes(),
            process,
            gpu,
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Milliseconds since the Unix epoch when it was taken.
    pub fn timestamp_unix_ms(&self) -> u64 {
        self.timestamp_unix_ms
    }

    /// The process figures.
    pub fn process(&self) -> &ProcessMemory {
        &self.process
    }

    /// The GPU figures.
    pub fn gpu(&self) -> &GpuMemory {
        &self.gpu
    }

    /// Resident set size.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.process.rss_bytes
    }

    /// Virtual size.
    pub fn vms_bytes(&self) -> Option<u64> {
        self.process.vms_bytes
    }

    /// Peak RSS so far.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.process.peak_rss_bytes
    }

    /// Our registered tensor bytes on all GPUs ([`GpuMemory::allocated_bytes`]).
    pub fn gpu_allocated_bytes(&self) -> Option<u64> {
        self.gpu_allocated_bytes
    }

    /// Driver-view used bytes on all GPUs ([`GpuMemory::reserved_bytes`]).
    pub fn gpu_reserved_bytes(&self) -> Option<u64> {
        self.gpu_reserved_bytes
    }

    /// Free bytes on all GPUs where the driver told ([`GpuMemory::free_bytes`]).
    pub fn gpu_free_bytes(&self) -> Option<u64> {
        self.gpu.free_bytes()
    }

    /// Bytes the GPUs' memory pools hold ([`GpuMemory::pool_reserved_bytes`]).
    pub fn gpu_pool_reserved_bytes(&self) -> Option<u64> {
        self.gpu.pool_reserved_bytes()
    }

    /// The change from `earlier` to `self`.
    pub fn delta_since(&self, earlier: &MemorySnapshot) -> SnapshotDelta {
        let d = |a: Option<u64>, b: Option<u64>| Some(signed_delta(a?, b?));
        SnapshotDelta {
            from: earlier.label.clone(),
            to: self.label.clone(),
            elapsed_ms: self
                .timestamp_unix_ms
                .saturating_sub(earlier.timestamp_unix_ms),
            rss_bytes: d(earlier.rss_bytes(), self.rss_bytes()),
            vms_bytes: d(earlier.vms_bytes(), self.vms_bytes()),
            peak_rss_bytes: d(earlier.peak_rss_bytes(), self.peak_rss_bytes()),
            gpu_allocated_bytes: d(earlier.gpu_allocated_bytes, self.gpu_allocated_bytes),
            gpu_reserved_bytes: d(earlier.gpu_reserved_bytes, self.gpu_reserved_bytes),
        }
    }
}

/// `before load: RSS: 123.4 MB, VMS: 456.7 MB, Peak RSS: 130.0 MB, GPU Allocated: n/a, GPU
/// Reserved: n/a`.
impl fmt::Display for MemorySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: RSS: {}, VMS: {}, Peak RSS: {}, GPU Allocated: {}, GPU Reserved: {}",
            self.label,
            format_mb_opt(self.rss_bytes()),
            format_mb_opt(self.vms_bytes()),
            format_mb_opt(self.peak_rss_bytes()),
            format_mb_opt(self.gpu_allocated_bytes),
            format_mb_opt(self.gpu_reserved_bytes),
        )
    }
}

/// Signed change between two snapshots, in bytes; `None` where either side is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDelta {
    /// Label of the earlier snapshot.
    pub from: String,
    /// Label of the later snapshot.
    pub to: String,
    /// Milliseconds between them.
    pub elapsed_ms: u64,
    /// RSS change.
    pub rss_bytes: Option<i64>,
    /// VMS change.
    pub vms_bytes: Option<i64>,
    /// Peak RSS change.
    pub peak_rss_bytes: Option<i64>,
    /// GPU allocated change.
    pub gpu_allocated_bytes: Option<i64>,
    /// GPU reserved change.
    pub gpu_reserved_bytes: Option<i64>,
}

/// Labelled snapshots of one lifecycle, in the order they were taken.
///
/// ```
/// use surveil_memory::MemoryReport;
///
/// let mut report = MemoryReport::new();
/// report.record("before_load");
/// let model = vec![7u8; 16 << 20]; // 16 MB standing for the weights
/// report.record("after_load");
/// drop(model);
/// report.record("after_unload");
///
/// let loaded = report.delta("before_load", "after_load").unwrap();
/// println!("load: {:?} bytes of RSS", loaded.rss_bytes); // None where /proc is missing
/// let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
/// assert_eq!(json["snapshots"].as_array().map(Vec::len), Some(3));
/// assert_eq!(json["deltas"].as_array().map(Vec::len), Some(2));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryReport {
    snapshots: Vec<MemorySnapshot>,
}

/// The JSON shape of a [`MemoryReport`]: the snapshots and the deltas between neighbours.
#[derive(Serialize)]
struct ReportJsonOut<'a> {
    snapshots: &'a [MemorySnapshot],
    deltas: Vec<SnapshotDelta>,
}

/// What is read back: the deltas are recomputed from the snapshots.
#[derive(Deserialize)]
struct ReportJsonIn {
    snapshots: Vec<MemorySnapshot>,
}

impl Serialize for MemoryReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ReportJsonOut {
            snapshots: &self.snapshots,
            deltas: self.deltas(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MemoryReport {
    /// Reads the snapshots back; the deltas are recomputed from them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = ReportJsonIn::deserialize(deserializer)?;
        Ok(MemoryReport {
            snapshots: json.snapshots,
        })
    }
}

impl MemoryReport {
    /// An empty report.
    pub fn new() -> MemoryReport {
        MemoryReport::default()
    }

    /// Takes a snapshot labelled `label` ([`MemorySnapshot::take`]), appends it and returns it.
    pub fn record(&mut self, label: impl Into<String>) -> &MemorySnapshot {
        self.push(MemorySnapshot::take(label))
    }

    /// Appends a snapshot taken elsewhere and returns it.
    pub fn push(&mut self, snapshot: MemorySnapshot) -> &MemorySnapshot {
        let label = snapshot.label().to_string();
        self.snapshots.push(snapshot);
        let last = &self.snapshots[self.snapshots.len() - 1];
        tracing::debug!(label = %label, "{last}");
        last
    }

    /// The snapshots in order.
    pub fn snapshots(&self) -> &[MemorySnapshot] {
        &self.snapshots
    }

    /// The first snapshot with this label.
    pub fn get(&self, label: &str) -> Option<&MemorySnapshot> {
        self.snapshots.iter().find(|s| s.label() == label)
    }

    /// The change from each snapshot to the next.
    pub fn deltas(&self) -> Vec<SnapshotDelta> {
        self.snapshots
            .windows(2)
            .map(|w| w[1].delta_since(&w[0]))
            .collect()
    }

    /// The change between two labelled snapshots, if both exist.
    pub fn delta(&self, from: &str, to: &str) -> Option<SnapshotDelta> {
        Some(self.get(to)?.delta_since(self.get(from)?))
    }

    /// Pretty JSON: `{"snapshots": [...], "deltas": [...]}`.
    pub fn to_json(&self) -> String {
        // Serialising plain data (strings, integers, options) into a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// A table: one row per snapshot, then one row per delta.
impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEADERS: [&str; 5] = ["RSS", "VMS", "Peak RSS", "GPU Allocated", "GPU Reserved"];
        let mut rows: Vec<(String, [String; 5])> = Vec::new();
        for s in &self.snapshots {
            rows.push((
                s.label().to_string(),
                [
                    format_mb_opt(s.rss_bytes()),
                    format_mb_opt(s.vms_bytes()),
                    format_mb_opt(s.peak_rss_bytes()),
                    format_mb_opt(s.gpu_allocated_bytes()),
                    format_mb_opt(s.gpu_reserved_bytes()),
                ],
            ));
        }
        let delta = |d: Option<i64>| d.map_or_else(|| "n/a".to_string(), format_mb_delta);
        for d in self.deltas() {
            rows.push((
                format!("{} -> {}", d.from, d.to),
                [
                    delta(d.rss_bytes),
                    delta(d.vms_bytes),
                    delta(d.peak_rss_bytes),
                    delta(d.gpu_allocated_bytes),
                    delta(d.gpu_reserved_bytes),
                ],
            ));
        }
        let label_width = rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .chain(["stage".len()])
            .max()
            .unwrap_or(5);
        let mut widths = HEADERS.map(str::len);
        for (_, cells) in &rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.len());
            }
        }
        write!(f, "{:<label_width$}", "stage")?;
        for (h, w) in HEADERS.iter().zip(widths) {
            write!(f, "  {h:>w$}")?;
        }
        writeln!(f)?;
        for (label, cells) in &rows {
            write!(f, "{label:<label_width$}")?;
            for (c, w) in cells.iter().zip(widths) {
                write!(f, "  {c:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuDeviceMemory;
    use crate::units::MB;

    fn process(rss_mb: u64) -> ProcessMemory {
        ProcessMemory {
            rss_bytes: Some(rss_mb * MB),
            vms_bytes: Some(rss_mb * MB * 4),
            peak_rss_bytes: Some(rss_mb * MB + MB),
            ..ProcessMemory::default()
        }
    }

    fn gpu(allocated_mb: u64, free_mb: u64) -> GpuMemory {
        GpuMemory::Available(vec![GpuDeviceMemory {
            ordinal: 0,
            name: "Test GPU".into(),
            total_bytes: 8192 * MB,
            free_bytes: Some(free_mb * MB),
            reserved_bytes: Some((8192 - free_mb) * MB),
            allocated_bytes: allocated_mb * MB,
            pool_reserved_bytes: None,
        }])
    }

    #[test]
    fn json_field_names_and_nulls() {
        let s = MemorySnapshot::from_parts(
            "before load",
            process(100),
            GpuMemory::Unavailable("no driver".into()),
        );
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["label"], "before load");
        assert_eq!(v["rss_bytes"], 100 * MB);
        assert_eq!(v["vms_bytes"], 400 * MB);
        assert_eq!(v["peak_rss_bytes"], 101 * MB);
        assert!(v["gpu_allocated_bytes"].is_null());
        assert!(v["gpu_reserved_bytes"].is_null());
        assert_eq!(v["gpu"]["status"], "unavailable");
        assert_eq!(v["gpu"]["detail"], "no driver");
        let back: MemorySnapshot = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn display_uses_mb_with_one_decimal() {
        let s = MemorySnapshot::from_parts("after load", process(1234), gpu(500, 4096));
        assert_eq!(
            s.to_string(),
            "after load: RSS: 1234.0 MB, VMS: 4936.0 MB, Peak RSS: 1235.0 MB, \
             GPU Allocated: 500.0 MB, GPU Reserved: 4096.0 MB"
        );
    }

    #[test]
    fn report_deltas_table_and_json() {
        let mut report = MemoryReport::new();
        report.push(MemorySnapshot::from_parts(
            "before load",
            process(100),
            gpu(0, 8000),
        ));
        report.push(MemorySnapshot::from_parts(
            "after load",
            process(1100),
            gpu(2048, 5000),
        ));
        report.push(MemorySnapshot::from_parts(
            "after unload",
            process(110),
            GpuMemory::Unavailable("lost".into()),
        ));
        let deltas = report.deltas();
        assert_eq!(deltas.len(), 2);
        assert_eq!(deltas[0].rss_bytes, Some(1000 * MB as i64));
        assert_eq!(deltas[0].gpu_allocated_bytes, Some(2048 * MB as i64));
        assert_eq!(deltas[0].gpu_reserved_bytes, Some(3000 * MB as i64));
        assert_eq!(deltas[1].rss_bytes, Some(-990 * MB as i64));
        assert_eq!(deltas[1].gpu_reserved_bytes, None);
        let whole = report.delta("before load", "after unload").unwrap();
        assert_eq!(whole.rss_bytes, Some(10 * MB as i64));

        let table = report.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + 3 + 2, "{table}");
        assert!(lines[0].starts_with("stage"));
        assert!(lines[0].contains("GPU Allocated") && lines[0].contains("GPU Reserved"));
        assert!(lines[2].starts_with("after load") && lines[2].contains("1100.0 MB"));
        assert!(lines[4].contains("+1000.0 MB") && lines[4].contains("+3000.0 MB"));
        assert!(lines[5].contains("-990.0 MB") && lines[5].contains("n/a"));

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["snapshots"].as_array().map(Vec::len), Some(3));
        assert_eq!(json["deltas"][1]["rss_bytes"], -990 * MB as i64);
        let back: MemoryReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn take_measures_this_process() {
        let s = MemorySnapshot::take("now");
        assert_eq!(s.label(), "now");
        assert!(s.timestamp_unix_ms() > 1_600_000_000_000);
        #[cfg(target_os = "linux")]
        assert!(s.rss_bytes().unwrap_or(0) > MB);
        #[cfg(not(feature = "cuda"))]
        assert_eq!(s.gpu_allocated_bytes(), None);
    }
}
