//! Loading from a memory-mapped checkpoint does not keep the file resident: pages of each
//! tensor are released once it is copied out. Own test binary: it measures process RSS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use surveil_config::{Device, StorageDtype, WeightsSpec};
use surveil_memory::ProcessMemory;
use surveil_models::load::manager::{LoadOptions, ModelManager};

#[test]
fn file_backed_rss_stays_small_during_a_load_from_disk() {
    let spec = surveil_models::load::registry::find("git-base-coco").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = surveil_models::load::synth::write_dummy_checkpoint(
        spec,
        dir.path(),
        candle_core::DType::F32,
        3,
        |_, _| {},
    )
    .unwrap();
    let max_file_rss = Arc::new(Mutex::new(0u64));
    let seen = max_file_rss.clone();
    let opts = LoadOptions {
        weights: WeightsSpec::Dir(PathBuf::from(dir.path())),
        device: Device::Cpu,
        storage: StorageDtype::Q4K,
        threads: None,
        hub_cache: PathBuf::from("/nonexistent"),
        model_dir: None,
        assets: surveil_config::paths::assets_dir(),
        progress: Some(Arc::new(move |_, _, _| {
            let file = ProcessMemory::current().rss_file_bytes.unwrap_or(0);
            let mut m = seen.lock().unwrap();
            *m = (*m).max(file);
        })),
        dummy_seed: 0,
    };
    let mut manager = ModelManager::new();
    manager.load("git-base-coco", &opts).unwrap();
    let max_file = *max_file_rss.lock().unwrap();
    // The checkpoint is ~700 MB of f32; without releasing pages the file-backed RSS would
    // reach that. With it, at most a tensor or two (the largest is 94 MB) plus the binary.
    assert!(written.file_bytes > 600_000_000);
    assert!(
        max_file < 250_000_000,
        "file-backed RSS reached {max_file} bytes while loading a {} byte checkpoint",
        written.file_bytes
    );
}
