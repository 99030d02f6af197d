//! Helpers shared by the integration tests: fixture lookup, reading fixture tensors, comparing.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// The fixture root: `$SURVEIL_FIXTURES`, else `../shared/fixtures` next to the checkout.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SURVEIL_FIXTURES") {
        return dir.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("../shared/fixtures"))
        .find(|dir| dir.is_dir())
        .expect("shared/fixtures not found next to the project checkout")
}

/// The asset cache filled by `scripts/setup.sh`: `$SURVEIL_ASSETS`, else `~/.cache/surveil/assets`.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SURVEIL_ASSETS") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/surveil/assets")
}

/// Every tensor of a fixture safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Parsed `cases.json` of a fixture folder.
pub fn cases(folder: &Path) -> serde_json::Value {
    let path = folder.join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {}: {e}", path.display()))
}

/// Largest absolute difference between two float tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
