//! A lifecycle report taken from the real process, as the model loader records it.

use surveil_memory::{MemoryReport, MemorySnapshot};

#[test]
fn lifecycle_report_from_real_snapshots() {
    let mut report = MemoryReport::new();
    report.record("before load");
    let weights = vec![7u8; 8 << 20];
    report.record("after load");
    let checksum: u64 = weights.iter().step_by(4096).map(|&b| b as u64).sum();
    assert_eq!(checksum, 7 * (8 << 20) / 4096);
    report.record("after first inference");
    drop(weights);
    report.push(MemorySnapshot::take("after unload"));

    let labels: Vec<&str> = report.snapshots().iter().map(|s| s.label()).collect();
    assert_eq!(
        labels,
        [
            "before load",
            "after load",
            "after first inference",
            "after unload"
        ]
    );
    assert_eq!(report.deltas().len(), 3);
    let table = report.to_string();
    assert!(table.contains("before load -> after load"), "{table}");
    #[cfg(target_os = "linux")]
    {
        assert!(table.contains(" MB"), "{table}");
        let d = report.delta("before load", "after load").unwrap();
        assert!(d.rss_bytes.is_some() && d.vms_bytes.is_some());
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let first = &json["snapshots"][0];
    for key in [
        "rss_bytes",
        "vms_bytes",
        "peak_rss_bytes",
        "gpu_allocated_bytes",
        "gpu_reserved_bytes",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
}
