//! Memory gauges read at scrape time: the process from `/proc/self/status`
//! ([`ProcessMemory`]), the GPU from the CUDA driver ([`GpuMemory`]). A figure that is not
//! known (another OS, no GPU, no CUDA context on a device) has no series rather than a zero.

use prometheus::core::{Collector, Desc};
use prometheus::{IntGauge, IntGaugeVec, Opts};
use surveil_memory::{GpuMemory, ProcessMemory};

/// The collector of the memory gauges; registered once per exporter.
pub(super) struct MemoryCollector {
    resident: IntGauge,
    virtual_size: IntGauge,
    peak_resident: IntGauge,
    gpu_allocated: IntGaugeVec,
    gpu_reserved: IntGaugeVec,
    descs: Vec<Desc>,
}

fn bytes(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX)
}

impl MemoryCollector {
    pub(super) fn new() -> prometheus::Result<Self> {
        let resident = IntGauge::with_opts(Opts::new(
            "surveil_process_resident_bytes",
            "Resident set size of the surveil process, bytes (VmRSS).",
        ))?;
        let virtual_size = IntGauge::with_opts(Opts::new(
            "surveil_process_virtual_bytes",
            "Virtual memory size of the surveil process, bytes (VmSize).",
        ))?;
        let peak_resident = IntGauge::with_opts(Opts::new(
            "surveil_process_peak_resident_bytes",
            "Highest resident set size of the surveil process so far, bytes (VmHWM).",
        ))?;
        let gpu_allocated = IntGaugeVec::new(
            Opts::new(
                "surveil_gpu_allocated_bytes",
                "Bytes of surveil's own model tensors on the GPU.",
            ),
            &["device"],
        )?;
        let gpu_reserved = IntGaugeVec::new(
            Opts::new(
                "surveil_gpu_reserved_bytes",
                "Memory in use on the GPU by anyone (total - free, driver view), bytes; only \
                 for devices where surveil has a CUDA context.",
            ),
            &["device"],
        )?;
        let descs = [
            resident.desc(),
            virtual_size.desc(),
            peak_resident.desc(),
            gpu_allocated.desc(),
            gpu_reserved.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self {
            resident,
            virtual_size,
            peak_resident,
            gpu_allocated,
            gpu_reserved,
            descs,
        })
    }

    /// The families of the known figures of `process` and `gpu`.
    fn families(
        &self,
        process: &ProcessMemory,
        gpu: &GpuMemory,
    ) -> Vec<prometheus::proto::MetricFamily> {
        let mut out = Vec::new();
        for (gauge, value) in [
            (&self.resident, process.rss_bytes),
            (&self.virtual_size, process.vms_bytes),
            (&self.peak_resident, process.peak_rss_bytes),
        ] {
            if let Some(v) = value {
                gauge.set(bytes(v));
                out.extend(gauge.collect());
            }
        }
        self.gpu_allocated.reset();
        self.gpu_reserved.reset();
        for device in gpu.devices() {
            let name = format!("cuda:{}", device.ordinal);
            self.gpu_allocated
                .with_label_values(&[&name])
                .set(bytes(device.allocated_bytes));
            if let Some(reserved) = device.reserved_bytes {
                self.gpu_reserved
                    .with_label_values(&[&name])
                    .set(bytes(reserved));
            }
        }
        // A vector without series gathers as an empty family, which the registry leaves out.
        out.extend(self.gpu_allocated.collect());
        out.extend(self.gpu_reserved.collect());
        out
    }
}

impl Collector for MemoryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.families(&ProcessMemory::current(), &GpuMemory::query())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surveil_memory::GpuDeviceMemory;

    fn names(families: &[prometheus::proto::MetricFamily]) -> Vec<&str> {
        families
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .map(|f| f.name())
            .collect()
    }

    #[test]
    fn unknown_figures_have_no_series() {
        let c = MemoryCollector::new().unwrap();
        let process = ProcessMemory {
            rss_bytes: Some(1000),
            ..ProcessMemory::default()
        };
        let none = c.families(&process, &GpuMemory::Unavailable("no driver".into()));
        assert_eq!(names(&none), ["surveil_process_resident_bytes"]);
        assert_eq!(none[0].get_metric()[0].get_gauge().get_value(), 1000.0);
    }

    #[test]
    fn gpu_figures_by_device_and_reserved_only_where_known() {
        let c = MemoryCollector::new().unwrap();
        let device = |ordinal, reserved: Option<u64>| GpuDeviceMemory {
            ordinal,
            name: "GPU".into(),
            total_bytes: 80 << 30,
            free_bytes: reserved.map(|r| (80u64 << 30) - r),
            reserved_bytes: reserved,
            allocated_bytes: 5 << 30,
            pool_reserved_bytes: None,
        };
        let gpu = GpuMemory::Available(vec![device(0, Some(7 << 30)), device(1, None)]);
        let families = c.families(&ProcessMemory::default(), &gpu);
        assert_eq!(
            names(&families),
            ["surveil_gpu_allocated_bytes", "surveil_gpu_reserved_bytes"]
        );
        let series = |f: &prometheus::proto::MetricFamily| -> Vec<(String, f64)> {
            f.get_metric()
                .iter()
                .map(|m| {
                    (
                        m.get_label()[0].value().to_string(),
                        m.get_gauge().get_value(),
                    )
                })
                .collect()
        };
        assert_eq!(
            series(&families[0]),
            [
                ("cuda:0".to_string(), (5u64 << 30) as f64),
                ("cuda:1".to_string(), (5u64 << 30) as f64)
            ]
        );
        assert_eq!(
            series(&families[1]),
            [("cuda:0".to_string(), (7u64 << 30) as f64)]
        );
        // The next scrape without a GPU leaves no stale device series behind.
        let later = c.families(
            &ProcessMemory::default(),
            &GpuMemory::Unavailable("gone".into()),
        );
        assert!(names(&later).is_empty(), "{:?}", names(&later));
    }
}
