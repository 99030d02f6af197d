//! Parity of the YOLOv3-tiny detector against the Darknet reference fixtures
//! (`shared/fixtures/yolov3_tiny`, see its README). Every threshold and tolerance is read from
//! `cases.json`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use serde_json::Value;
use surveil_vision::darknet::{DarknetConfig, DarknetWeights};
use surveil_vision::detect::{DarknetYolo, Detector, MaskOverride, YoloOptions};
use surveil_vision::{BBox, Frame};

use crate::common::{asset, fixtures_root, sha256_file};

struct Fixture {
    dir: PathBuf,
    cases: Value,
}

fn fixture() -> Option<Fixture> {
    let Some(root) = fixtures_root() else {
        eprintln!("SKIP: no fixtures (set SURVEIL_FIXTURES)");
        return None;
    };
    let dir = root.join("yolov3_tiny");
    let text = match std::fs::read_to_string(dir.join("cases.json")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIP: {}: {e}", dir.join("cases.json").display());
            return None;
        }
    };
    let cases = serde_json::from_str(&text).expect("cases.json is valid JSON");
    Some(Fixture { dir, cases })
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("cases.json: {path:?} is not a number"))
}

/// Loads the detector once for all parity tests: the upstream cfg (hash as in the fixture
/// README) with the fixture's mask overrides, the weights, and the post-processing parameters
/// of cases.json.
fn detector(fx: &Fixture) -> Option<Arc<DarknetYolo>> {
    static DETECTOR: OnceLock<Option<Arc<DarknetYolo>>> = OnceLock::new();
    DETECTOR
        .get_or_init(|| {
            let weights = asset("yolov3-tiny/yolov3-tiny.weights")?;
            let cfg = asset("yolov3-tiny/yolov3-tiny.upstream.cfg")?;
            let names = asset("yolov3-tiny/coco.names")?;
            let model = &fx.cases["model"];
            for (path, key) in [(&weights, "weights"), (&cfg, "cfg"), (&names, "names")] {
                assert_eq!(
                    sha256_file(path),
                    model[key]["sha256"].as_str().expect("sha256 string"),
                    "{} is not the file the fixtures were made with",
                    path.display()
                );
            }
            let mask_overrides = model["mask_overrides"]
                .as_object()
                .expect("mask_overrides object")
                .iter()
                .map(|(layer, mask)| MaskOverride {
                    layer: layer.parse().expect("layer index"),
                    mask: serde_json::from_value(mask.clone()).expect("mask list"),
                })
                .collect();
            let coco: Vec<String> = std::fs::read_to_string(&names)
                .expect("names")
                .lines()
                .map(str::to_string)
                .collect();
            let classes = fx.cases["tolerances"]["detections"]["classes"]
                .as_array()
                .expect("classes")
                .iter()
                .map(|c| coco[c.as_u64().expect("class id") as usize].clone())
                .collect();
            let opts = YoloOptions {
                cfg,
                weights,
                names,
                conf_threshold: num(&fx.cases, &["postprocess", "conf_threshold"]) as f32,
                nms_iou: num(&fx.cases, &["postprocess", "nms_iou"]) as f32,
                classes,
                mask_overrides,
            };
            Some(Arc::new(
                DarknetYolo::new(&opts, &Device::Cpu).expect("detector loads"),
            ))
        })
        .clone()
}

fn case<'a>(fx: &'a Fixture, name: &str) -> &'a Value {
    fx.cases["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} not in cases.json"))
}

fn load_png(path: &Path, index: u64) -> Frame {
    let img = image::open(path).expect("fixture PNG").to_rgb8();
    let (w, h) = img.dimensions();
    Frame::new(index, std::time::Duration::ZERO, w, h, img.into_raw()).expect("frame")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
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

struct RefDet {
    score: f32,
    bbox: BBox,
}

fn run_case(name: &str) {
    let Some(fx) = fixture() else { return };
    let Some(det) = detector(&fx) else { return };
    let c = case(&fx, name);
    let tol = &fx.cases["tolerances"];
    let pre = &fx.cases["preprocess"];
    for key in ["image", "tensors", "detections"] {
        let file = fx.dir.join(c[key].as_str().expect("file name"));
        assert_eq!(
            sha256_file(&file),
            c[format!("{key}_sha256")].as_str().expect("sha"),
            "{} changed",
            file.display()
        );
    }
    let frame = load_png(
        &fx.dir.join(c["image"].as_str().unwrap()),
        c["frame_index"].as_u64().unwrap(),
    );
    let tensors =
        candle_core::safetensors::load(fx.dir.join(c["tensors"].as_str().unwrap()), &Device::Cpu)
            .expect("fixture tensors");
    let rows = &tensors[pre["input_rows"]["tensor"].as_str().unwrap()];
    let row0 = pre["input_rows"]["row"].as_u64().unwrap() as usize;
    let (_, _, n_rows, _) = rows.dims4().unwrap();

    // 1. Pre-processing: our letterbox vs input_rows, padding exactly the fill value.
    let (input, geoms) = det.preprocess(&[&frame]).unwrap();
    assert_eq!(
        (
            geoms[0].new_w,
            geoms[0].new_h,
            geoms[0].pad_x,
            geoms[0].pad_y
        ),
        (
            pre["new_w"].as_u64().unwrap() as usize,
            pre["new_h"].as_u64().unwrap() as usize,
            pre["pad_x"].as_u64().unwrap() as usize,
            pre["pad_y"].as_u64().unwrap() as usize
        )
    );
    let ours_rows = input.narrow(2, row0, n_rows).unwrap();
    let input_diff = max_abs(&ours_rows, rows);
    let fill = num(pre, &["fill"]) as f32;
    let (_, _, net_h, _) = input.dims4().unwrap();
    let top = input.narrow(2, 0, row0).unwrap();
    let bottom = input
        .narrow(2, row0 + n_rows, net_h - row0 - n_rows)
        .unwrap();
    for pad in [top, bottom] {
        let v = pad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|&x| x == fill),
            "padding must be exactly {fill}"
        );
    }

    // 2. Network on the input rebuilt from input_rows.
    let (n, ch, _, w) = rows.dims4().unwrap();
    let block = |h: usize| Tensor::full(fill, (n, ch, h, w), &Device::Cpu).unwrap();
    let rebuilt = Tensor::cat(&[&block(row0), rows, &block(net_h - row0 - n_rows)], 2).unwrap();
    let heads = det.forward_heads(&rebuilt).unwrap();
    let names: Vec<&str> = fx.cases["model"]["yolo_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["head"].as_str().unwrap())
        .collect();
    assert_eq!(heads.len(), names.len());
    let head_diffs: Vec<f32> = heads
        .iter()
        .zip(&names)
        .map(|(h, n)| max_abs(h, &tensors[*n]))
        .collect();

    // 3. End to end: PNG -> detector -> persons, matched to the reference.
    let ours = det.detect(&[&frame]).unwrap().detections.remove(0);
    let det_tol = &tol["detections"];
    let classes: Vec<usize> = det_tol["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    let reference: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fx.dir.join(c["detections"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut refs: Vec<RefDet> = reference
        .iter()
        .filter(|d| classes.contains(&(d["class_id"].as_u64().unwrap() as usize)))
        .map(|d| RefDet {
            score: d["score"].as_f64().unwrap() as f32,
            bbox: BBox::new(
                d["x1"].as_f64().unwrap() as f32,
                d["y1"].as_f64().unwrap() as f32,
                d["x2"].as_f64().unwrap() as f32,
                d["y2"].as_f64().unwrap() as f32,
            ),
        })
        .collect();
    refs.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mine: Vec<_> = ours
        .iter()
        .filter(|d| classes.contains(&d.class_id))
        .collect();
    let iou_min = num(det_tol, &["iou_min"]) as f32;
    let score_abs = num(det_tol, &["score_abs"]) as f32;
    let unmatched_below = num(det_tol, &["may_be_unmatched_below_score"]) as f32;
    let mut used = vec![false; mine.len()];
    let mut worst_iou = 1f32;
    let mut worst_score = 0f32;
    for r in &refs {
        let best = mine
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                !used[*i]
                    && d.bbox.iou(&r.bbox) >= iou_min
                    && (d.score - r.score).abs() <= score_abs
            })
            .max_by(|a, b| a.1.bbox.iou(&r.bbox).total_cmp(&b.1.bbox.iou(&r.bbox)));
        match best {
            Some((i, d)) => {
                used[i] = true;
                worst_iou = worst_iou.min(d.bbox.iou(&r.bbox));
                worst_score = worst_score.max((d.score - r.score).abs());
            }
            None => assert!(
                r.score < unmatched_below,
                "{name}: reference person {:?} score {} has no match in {mine:?}",
                r.bbox,
                r.score
            ),
        }
    }
    for (i, d) in mine.iter().enumerate() {
        assert!(
            used[i] || d.score < unmatched_below,
            "{name}: extra detection {d:?}"
        );
    }
    eprintln!(
        "{name}: input max abs {input_diff:.3e}; heads max abs {:?}; persons {} (ref {}), \
         worst IoU {worst_iou:.4}, worst score diff {worst_score:.2e}",
        names.iter().zip(&head_diffs).collect::<Vec<_>>(),
        mine.len(),
        refs.len()
    );
    assert!(
        input_diff as f64 <= num(tol, &["input_rows_max_abs"]),
        "{name}: input rows differ by {input_diff}"
    );
    let head_tol = num(tol, &["head_max_abs"]);
    for (n, d) in names.iter().zip(&head_diffs) {
        assert!(
            *d as f64 <= head_tol,
            "{name}: {n} differs by {d} > {head_tol}"
        );
    }
    assert_eq!(
        mine.len() as u64,
        c["persons"].as_u64().unwrap(),
        "{name}: person count"
    );
}

#[test]
fn parity_yolov3_tiny_vtest_f0000() {
    run_case("vtest_f0000");
}

#[test]
fn parity_yolov3_tiny_vtest_f0201() {
    run_case("vtest_f0201");
}

#[test]
fn parity_yolov3_tiny_vtest_f0600() {
    run_case("vtest_f0600");
}

/// Every case in cases.json has a parity test above.
#[test]
fn parity_yolov3_tiny_covers_every_case() {
    let Some(fx) = fixture() else { return };
    let src = include_str!("parity.rs");
    for c in fx.cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert!(
            src.contains(&format!("fn parity_yolov3_tiny_{name}()")),
            "no parity test for case {name}"
        );
    }
}

/// The weights header and the parameter count agree with the fixture (0 bytes left over).
#[test]
fn parity_yolov3_tiny_weights_header() {
    let Some(fx) = fixture() else { return };
    let (Some(w), Some(cfg)) = (
        asset("yolov3-tiny/yolov3-tiny.weights"),
        asset("yolov3-tiny/yolov3-tiny.upstream.cfg"),
    ) else {
        return;
    };
    let cfg = DarknetConfig::from_file(&cfg).unwrap();
    let weights = DarknetWeights::from_file(&w, &cfg).unwrap();
    let h = &fx.cases["model"]["weights_header"];
    assert_eq!(weights.header.major as i64, h["major"].as_i64().unwrap());
    assert_eq!(weights.header.minor as i64, h["minor"].as_i64().unwrap());
    assert_eq!(
        weights.header.revision as i64,
        h["revision"].as_i64().unwrap()
    );
    assert_eq!(weights.header.seen, h["seen"].as_u64().unwrap());
    assert_eq!(
        weights.header.bytes as u64,
        h["header_bytes"].as_u64().unwrap()
    );
    assert_eq!(cfg.layers.len(), 24);
}

/// The installed (corrected) cfg reads the same anchors as the upstream cfg plus the fixture's
/// mask override, so production runs decode exactly like the parity target.
#[test]
fn installed_cfg_equals_upstream_with_mask_override() {
    let Some(fx) = fixture() else { return };
    let (Some(installed), Some(upstream)) = (
        asset("yolov3-tiny/yolov3-tiny.cfg"),
        asset("yolov3-tiny/yolov3-tiny.upstream.cfg"),
    ) else {
        return;
    };
    let installed = DarknetConfig::from_file(&installed).unwrap();
    let mut upstream = DarknetConfig::from_file(&upstream).unwrap();
    for (layer, mask) in fx.cases["model"]["mask_overrides"].as_object().unwrap() {
        upstream
            .override_mask(
                layer.parse().unwrap(),
                serde_json::from_value(mask.clone()).unwrap(),
            )
            .unwrap();
    }
    assert_eq!(installed, upstream);
    for l in fx.cases["model"]["yolo_layers"].as_array().unwrap() {
        let layer = l["layer"].as_u64().unwrap() as usize;
        let (_, spec) = installed
            .yolo_layers()
            .into_iter()
            .find(|(i, _)| *i == layer)
            .expect("yolo layer");
        let want: Vec<(f32, f32)> =
            serde_json::from_value::<Vec<(f32, f32)>>(l["anchors"].clone()).unwrap();
        assert_eq!(spec.masked_anchors(), want, "layer {layer}");
    }
}
