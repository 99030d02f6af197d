//! Run metrics: per-stage latency distributions, frame rate, queue depths and memory samples.
//! Everything here is cheap to record per frame and serialises into the run summary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The stages of the per-frame loop whose latency is recorded. `vlm` is measured on the
/// analyst thread, per analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting for the next decoded frame (decoding is the bottleneck while this is large).
    Decode,
    /// Detector pre-processing, forward pass and post-processing.
    Detect,
    /// ByteTrack update.
    Track,
    /// Behaviour tools (wall time of the runner).
    Tools,
    /// Trigger, prompt building and hand-off to the analyst.
    Trigger,
    /// One VLM analysis, from hand-off to verdict (analyst thread).
    Vlm,
    /// Vision encoding inside one VLM analysis.
    VlmVision,
    /// Time to first token of one VLM analysis.
    VlmTtft,
    /// Decision engine.
    Decide,
    /// Writing events, frames and other sinks.
    Sinks,
    /// The whole per-frame loop (not counting the VLM, which runs on its own thread).
    Frame,
}

impl Stage {
    /// Every stage, in the order of the per-frame loop (the VLM stages after the trigger that
    /// hands a scene over).
    pub const ALL: [Stage; 11] = [
        Stage::Decode,
        Stage::Detect,
        Stage::Track,
        Stage::Tools,
        Stage::Trigger,
        Stage::Vlm,
        Stage::VlmVision,
        Stage::VlmTtft,
        Stage::Decide,
        Stage::Sinks,
        Stage::Frame,
    ];

    /// The stage's name as the summary writes it (`decode`, `vlm_ttft`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Detect => "detect",
            Stage::Track => "track",
            Stage::Tools => "tools",
            Stage::Trigger => "trigger",
            Stage::Vlm => "vlm",
            Stage::VlmVision => "vlm_vision",
            Stage::VlmTtft => "vlm_ttft",
            Stage::Decide => "decide",
            Stage::Sinks => "sinks",
            Stage::Frame => "frame",
        }
    }
}

/// Latency samples of one stage, in milliseconds. Keeps every sample: a run of a day at 10
/// frames/s is under a million `f32`s per stage.
#[derive(Debug, Clone, Default)]
pub struct LatencyRecorder {
    samples_ms: Vec<f32>,
}

/// Summary statistics of a latency distribution (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Sum of all samples.
    pub total_ms: f64,
}

impl LatencyRecorder {
    /// Add one sample.
    pub fn record(&mut self, d: Duration) {
        self.samples_ms.push((d.as_secs_f64() * 1e3) as f32);
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.samples_ms.len()
    }

    /// Percentiles by the nearest-rank method; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.samples_ms.is_empty() {
            return None;
        }
        let mut s: Vec<f64> = self.samples_ms.iter().map(|&v| f64::from(v)).collect();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let rank = |p: f64| -> f64 {
            let k = ((p * n as f64).ceil() as usize).clamp(1, n);
            s[k - 1]
        };
        let total: f64 = s.iter().sum();
        Some(LatencySummary {
            count: n,
            mean_ms: total / n as f64,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: s[n - 1],
            total_ms: total,
        })
    }
}

/// One memory sample of the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryPoint {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: Option<u64>,
    /// GPU memory allocated by the process, bytes (when a GPU is in use).
    pub gpu_allocated_bytes: Option<u64>,
}

/// Metrics of a whole run.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    stages: BTreeMap<Stage, LatencyRecorder>,
    queue_depths: Vec<u32>,
    memory: Vec<MemoryPoint>,
}

/// The serialisable view of [`RunMetrics`].
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSummary {
    /// Latency per stage.
    pub latency: BTreeMap<Stage, LatencySummary>,
    /// Queue depth between decoding and analysis: mean and largest seen.
    pub queue_depth_mean: f64,
    /// Largest queue depth seen.
    pub queue_depth_max: u32,
    /// Memory samples (monitoring on), at `monitoring.interval_seconds`.
    pub memory_samples: Vec<MemoryPoint>,
}

impl RunMetrics {
    /// Record one latency sample of `stage`.
    pub fn record(&mut self, stage: Stage, d: Duration) {
        self.stages.entry(stage).or_default().record(d);
    }

    /// The recorder of a stage, if it has samples.
    pub fn stage(&self, stage: Stage) -> Option<&LatencyRecorder> {
        self.stages.get(&stage)
    }

    /// Record the decode queue's depth seen by one frame.
    pub fn record_queue_depth(&mut self, depth: u32) {
        self.queue_depths.push(depth);
    }

    /// Record a memory sample.
    pub fn record_memory(&mut self, point: MemoryPoint) {
        self.memory.push(point);
    }

    /// Summaries of everything recorded.
    pub fn summary(&self) -> MetricsSummary {
        let latency = self
            .stages
            .iter()
            .filter_map(|(k, v)| v.summary().map(|s| (*k, s)))
            .collect();
        let n = self.queue_depths.len().max(1) as f64;
        MetricsSummary {
            latency,
            queue_depth_mean: self.queue_depths.iter().map(|&d| f64::from(d)).sum::<f64>() / n,
            queue_depth_max: self.queue_depths.iter().copied().max().unwrap_or(0),
            memory_samples: self.memory.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut r = LatencyRecorder::default();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary().unwrap();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 1e-3);
        assert!((s.p90_ms - 90.0).abs() < 1e-3);
        assert!((s.p99_ms - 99.0).abs() < 1e-3);
        assert!((s.max_ms - 100.0).abs() < 1e-3);
        assert!((s.mean_ms - 50.5).abs() < 1e-3);
        assert!(LatencyRecorder::default().summary().is_none());
    }

    #[test]
    fn stage_names_are_the_summary_names() {
        for stage in Stage::ALL {
            assert_eq!(
                serde_json::to_value(stage).unwrap(),
                serde_json::json!(stage.as_str())
            );
        }
        let distinct: std::collections::BTreeSet<_> = Stage::ALL.iter().collect();
        assert_eq!(distinct.len(), Stage::ALL.len());
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut m = RunMetrics::default();
        m.record(Stage::Detect, Duration::from_millis(7));
        m.record_queue_depth(3);
        m.record_queue_depth(1);
        let s = m.summary();
        let d = s.latency[&Stage::Detect];
        assert_eq!((d.p50_ms, d.p99_ms), (7.0, 7.0));
        assert_eq!(s.queue_depth_max, 3);
        assert!((s.queue_depth_mean - 2.0).abs() < 1e-9);
    }
}
