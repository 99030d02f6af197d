//! A background thread that samples memory at a fixed interval, for the pipeline's metrics:
//! the highest RSS seen since it started and a bounded history of recent samples.
//!
//! The thread is stopped by [`MemorySampler::stop`] or when the sampler is dropped; stopping
//! wakes it at once rather than waiting out the interval. With monitoring disabled
//! ([`SamplerConfig::enabled`] false) no thread is started and every query answers empty.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::gpu::GpuMemory;
use crate::process::ProcessMemory;
use crate::MemoryError;

/// How the sampler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// False when monitoring is disabled: no thread is started.
    pub enabled: bool,
    /// Time between samples; must be non-zero.
    pub interval: Duration,
    /// How many recent samples are kept (older ones are dropped).
    pub history_len: usize,
    /// Whether each sample also asks the GPU driver ([`GpuMemory::query`]).
    pub include_gpu: bool,
}

impl Default for SamplerConfig {
    /// Enabled, one sample per second, five minutes of history, GPU included.
    fn default() -> Self {
        SamplerConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            history_len: 300,
            include_gpu: true,
        }
    }
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub timestamp_unix_ms: u64,
    /// Process figures.
    pub process: ProcessMemory,
    /// [`GpuMemory::allocated_bytes`], `None` when unavailable or not sampled.
    pub gpu_allocated_bytes: Option<u64>,
    /// [`GpuMemory::reserved_bytes`], `None` when unavailable or not sampled.
    pub gpu_reserved_bytes: Option<u64>,
}

/// A summary of what the sampler has seen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SamplerStats {
    /// Samples taken since start.
    pub samples: u64,
    /// Highest RSS among the samples since start.
    pub peak_rss_bytes: Option<u64>,
    /// The kernel's high-water mark of RSS for the whole process (`VmHWM`) at the last sample;
    /// catches spikes between samples.
    pub process_peak_rss_bytes: Option<u64>,
    /// Highest GPU reserved bytes among the samples since start.
    pub peak_gpu_reserved_bytes: Option<u64>,
    /// The most recent sample.
    pub latest: Option<Sample>,
}

#[derive(Default)]
struct State {
    stop: bool,
    history: VecDeque<Sample>,
    stats: SamplerStats,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    history_len: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is completed before any code that could panic runs,
        // so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, sample: Sample) {
        let mut state = self.lock();
        let stats = &mut state.stats;
        stats.samples += 1;
        stats.peak_rss_bytes = max_opt(stats.peak_rss_bytes, sample.process.rss_bytes);
        stats.peak_gpu_reserved_bytes =
            max_opt(stats.peak_gpu_reserved_bytes, sample.gpu_reserved_bytes);
        stats.process_peak_rss_bytes = sample.process.peak_rss_bytes;
        stats.latest = Some(sample.clone());
        if self.history_len > 0 {
            while state.history.len() >= self.history_len {
                state.history.pop_front();
            }
            state.history.push_back(sample);
        }
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The background memory sampler. Stops its thread when dropped.
pub struct MemorySampler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    config: SamplerConfig,
}

impl std::fmt::Debug for MemorySampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySampler")
            .field("config", &self.config)
            .field("running", &self.is_running())
            .finish()
    }
}

impl MemorySampler {
    /// Starts sampling (the first sample is taken immediately), or returns an idle sampler when
    /// `config.enabled` is false.
    pub fn start(config: SamplerConfig) -> Result<MemorySampler, MemoryError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            history_len: config.history_len,
        });
        if !config.enabled {
            tracing::debug!("memory sampler disabled");
            return Ok(MemorySampler {
                shared,
                thread: None,
                config,
            });
        }
        if config.interval.is_zero() {
            return Err(MemoryError::InvalidConfig {
                what: "memory sampler interval".to_string(),
                reason: "the sampling interval must be greater than zero".to_string(),
            });
        }
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("surveil-memory-sampler".to_string())
            .spawn(move || run(&worker, config))
            .map_err(|source| MemoryError::SamplerSpawn { source })?;
        tracing::debug!(
            interval_ms = config.interval.as_millis() as u64,
            "memory sampler started"
        );
        Ok(MemorySampler {
            shared,
            thread: Some(thread),
            config,
        })
    }

    /// An idle sampler (monitoring disabled).
    pub fn disabled() -> MemorySampler {
        let config = SamplerConfig {
            enabled: false,
            ..SamplerConfig::default()
        };
        MemorySampler {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                history_len: 0,
            }),
            thread: None,
            config,
        }
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Whether the thread is running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Summary so far.
    pub fn stats(&self) -> SamplerStats {
        self.shared.lock().stats.clone()
    }

    /// Highest RSS seen since start.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.shared.lock().stats.peak_rss_bytes
    }

    /// The recent samples, oldest first (at most `history_len`).
    pub fn history(&self) -> Vec<Sample> {
        self.shared.lock().history.iter().cloned().collect()
    }

    /// Stops the thread and waits for it; idempotent. The stats and history stay readable.
    pub fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("memory sampler thread panicked");
            }
            tracing::debug!("memory sampler stopped");
        }
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, config: SamplerConfig) {
    loop {
        let sample = take_sample(config.include_gpu);
        shared.record(sample);
        let deadline = Instant::now() + config.interval;
        let mut state = shared.lock();
        loop {
            if state.stop {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = match shared.wake.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn take_sample(include_gpu: bool) -> Sample {
    let process = ProcessMemory::current();
    let (gpu_allocated_bytes, gpu_reserved_bytes) = if include_gpu {
        let gpu = GpuMemory::query();
        (gpu.allocated_bytes(), gpu.reserved_bytes())
    } else {
        (None, None)
    };
    Sample {
        timestamp_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        process,
        gpu_allocated_bytes,
        gpu_reserved_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(rss: u64) -> Sample {
        Sample {
            timestamp_unix_ms: 0,
            process: ProcessMemory {
                rss_bytes: Some(rss),
                peak_rss_bytes: Some(rss * 2),
                ..ProcessMemory::default()
            },
            gpu_allocated_bytes: None,
            gpu_reserved_bytes: None,
        }
    }

    #[test]
    fn history_is_bounded_and_peak_kept() {
        let shared = Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            history_len: 3,
        };
        for rss in [10, 50, 20, 30, 40] {
            shared.record(fake(rss));
        }
        let state = shared.lock();
        let kept: Vec<_> = state.history.iter().map(|s| s.process.rss_bytes).collect();
        assert_eq!(kept, vec![Some(20), Some(30), Some(40)]);
        assert_eq!(state.stats.samples, 5);
        assert_eq!(state.stats.peak_rss_bytes, Some(50));
        assert_eq!(state.stats.process_peak_rss_bytes, Some(80));
        assert_eq!(
            state
                .stats
                .latest
                .as_ref()
                .and_then(|s| s.process.rss_bytes),
            Some(40)
        );
    }
}
