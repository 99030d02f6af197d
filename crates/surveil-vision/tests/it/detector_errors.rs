//! Bad model files give clear errors, never panics.

use std::path::Path;

use candle_core::Device;
use surveil_vision::detect::{DarknetYolo, YoloOptions};
use surveil_vision::VisionError;

use crate::common::asset;

fn options(dir: &Path) -> Option<YoloOptions> {
    let cfg = asset("yolov3-tiny/yolov3-tiny.cfg")?;
    let names = asset("yolov3-tiny/coco.names")?;
    let mut o = YoloOptions::yolov3_tiny(dir);
    o.cfg = cfg;
    o.names = names;
    Some(o)
}

#[test]
fn truncated_weights_say_expected_vs_found_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut opts) = options(dir.path()) else {
        return;
    };
    let Some(real) = asset("yolov3-tiny/yolov3-tiny.weights") else {
        return;
    };
    let bytes = std::fs::read(&real).unwrap();
    let short = dir.path().join("short.weights");
    std::fs::write(&short, &bytes[..1_000_000]).unwrap();
    opts.weights = short;
    let err = DarknetYolo::new(&opts, &Device::Cpu).unwrap_err();
    assert!(matches!(err, VisionError::WeightsSize { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("expected {} bytes", bytes.len()))
            && msg.contains("found 1000000 bytes"),
        "{msg}"
    );
    // too short even for a header
    std::fs::write(&opts.weights, [0u8; 7]).unwrap();
    let msg = DarknetYolo::new(&opts, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("7 bytes") && msg.contains("header"), "{msg}");
}

#[test]
fn missing_weights_and_unknown_class_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut opts) = options(dir.path()) else {
        return;
    };
    let msg = DarknetYolo::new(&opts, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("yolov3-tiny.weights") && msg.contains("cannot read"),
        "{msg}"
    );
    let Some(real) = asset("yolov3-tiny/yolov3-tiny.weights") else {
        return;
    };
    opts.weights = real;
    opts.classes = vec!["person".into(), "shoplifter".into()];
    let msg = DarknetYolo::new(&opts, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shoplifter") && msg.contains("unknown class"),
        "{msg}"
    );
    opts.classes.clear();
    opts.conf_threshold = 1.5;
    let msg = DarknetYolo::new(&opts, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("conf_threshold"), "{msg}");
}
