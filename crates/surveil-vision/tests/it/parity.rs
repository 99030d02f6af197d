//! Parity of the YOLOv3-tiny detector against the Darknet reference fixtures
//! (`shared/fixtures/yolov3_tiny`, see its README).
//!
//! Every case `cases.json` lists is checked, and of each case every output it lists: the
//! letterboxed input rows and the raw heads (the tensors of its `.safetensors` file) and the
//! final detections (its `detections` file). File names, sizes, layer indices, class ids,
//! counts, thresholds and tolerances all come from `cases.json`, so another fixture set of the
//! same layout runs unchanged: `SURVEIL_FIXTURES=DIR cargo test -p surveil-vision --test it
//! parity`. Comparisons fail on a NaN or an infinity on either side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use surveil_vision::darknet::{DarknetConfig, DarknetWeights};
use surveil_vision::detect::{DarknetYolo, Detection, Detector, MaskOverride, YoloOptions};
use surveil_vision::{BBox, Frame};

use crate::common::{asset, fixture_dir, sha256_file};

/// The fixture folder under the fixture root.
const FOLDER: &str = "yolov3_tiny";
/// Asset cache paths (as `scripts/setup.sh` installs them); their identity is checked against
/// the hashes of `cases.json`.
const WEIGHTS: &str = "yolov3-tiny/yolov3-tiny.weights";
const UPSTREAM_CFG: &str = "yolov3-tiny/yolov3-tiny.upstream.cfg";
const INSTALLED_CFG: &str = "yolov3-tiny/yolov3-tiny.cfg";
const NAMES: &str = "yolov3-tiny/coco.names";

// ---------------------------------------------------------------------------------------------
// Reading cases.json

/// The folder and its parsed `cases.json`.
struct Fixture {
    dir: PathBuf,
    json: Value,
}

impl Fixture {
    /// The fixture, or `None` (skipped) where [`fixture_dir`] allows it.
    fn load() -> Option<Self> {
        let dir = fixture_dir(FOLDER)?;
        let path = dir.join("cases.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        Some(Self { dir, json })
    }

    /// The cases, in the order listed; a set without cases is an error, not a pass.
    fn cases(&self) -> &[Value] {
        let cases = at(&self.json, &["cases"])
            .as_array()
            .expect("cases.json: `cases` is an array");
        assert!(!cases.is_empty(), "cases.json lists no case");
        cases
    }

    /// A file of a case: `key` names the file, `{key}_sha256` its hash, which must match.
    /// `None` when the case does not list `key`.
    fn case_file(&self, case: &Value, key: &str, failures: &mut Failures) -> Option<PathBuf> {
        let name = case
            .get(key)?
            .as_str()
            .unwrap_or_else(|| panic!("cases.json: {}.{key} is not a file name", case_name(case)));
        let path = self.dir.join(name);
        let want = str_at(case, &[&format!("{key}_sha256")]);
        let got = sha256_file(&path);
        failures.check(got == want, || {
            format!(
                "{}: {} has sha256 {got}, cases.json says {want}",
                case_name(case),
                path.display()
            )
        });
        Some(path)
    }
}

/// The value at `path`; a missing key is a broken fixture.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .unwrap_or_else(|| panic!("cases.json: {path:?} is missing"));
    }
    cur
}

fn f64_at(v: &Value, path: &[&str]) -> f64 {
    at(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("cases.json: {path:?} is not a number"))
}

fn usize_at(v: &Value, path: &[&str]) -> usize {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("cases.json: {path:?} is not a non-negative integer"))
        as usize
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("cases.json: {path:?} is not a string"))
}

fn case_name(case: &Value) -> &str {
    str_at(case, &["name"])
}

/// A `[yolo]` layer as `cases.json` describes it.
#[derive(Debug)]
struct YoloLayer {
    /// Layer index in the cfg.
    layer: usize,
    /// Name of its input tensor (the raw head) in the case files.
    head: String,
    /// Grid size (rows = columns).
    grid: usize,
    /// Anchor indices.
    mask: Vec<usize>,
    /// The masked anchors, network pixels.
    anchors: Vec<(f32, f32)>,
}

/// Every `[yolo]` layer, by layer index (the order the network returns its heads in).
fn yolo_layers(fx: &Fixture) -> Vec<YoloLayer> {
    let mut layers: Vec<YoloLayer> = at(&fx.json, &["model", "yolo_layers"])
        .as_array()
        .expect("cases.json: model.yolo_layers is an array")
        .iter()
        .map(|l| YoloLayer {
            layer: usize_at(l, &["layer"]),
            head: str_at(l, &["head"]).to_string(),
            grid: usize_at(l, &["grid"]),
            mask: serde_json::from_value(at(l, &["mask"]).clone()).expect("mask: list of ints"),
            anchors: serde_json::from_value(at(l, &["anchors"]).clone())
                .expect("anchors: [w, h] list"),
        })
        .collect();
    layers.sort_by_key(|l| l.layer);
    layers
}

fn mask_overrides(fx: &Fixture) -> Vec<MaskOverride> {
    at(&fx.json, &["model", "mask_overrides"])
        .as_object()
        .expect("cases.json: model.mask_overrides is an object")
        .iter()
        .map(|(layer, mask)| MaskOverride {
            layer: layer.parse().expect("mask override key: a layer index"),
            mask: serde_json::from_value(mask.clone()).expect("mask override: list of ints"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparing

/// Failures collected over every case, so that one run reports all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn push(&mut self, message: String) {
        self.0.push(message);
    }

    /// Fails the test with every message collected.
    fn finish(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} failure(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// `max |ours − reference|` over two equally shaped sequences. `Err` names the first element
/// where either side, or their difference, is not finite: a plain maximum would skip a NaN.
fn max_abs_diff(ours: &[f32], reference: &[f32]) -> Result<f32, String> {
    if ours.len() != reference.len() {
        return Err(format!(
            "{} elements, reference {}",
            ours.len(),
            reference.len()
        ));
    }
    let mut worst = 0f32;
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let d = (a - b).abs();
        if !d.is_finite() {
            return Err(format!("element {i}: ours {a}, reference {b} (not finite)"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// [`max_abs_diff`] of two tensors, which must have the same shape.
fn max_abs_diff_tensors(ours: &Tensor, reference: &Tensor) -> Result<f32, String> {
    if ours.dims() != reference.dims() {
        return Err(format!(
            "shape {:?}, reference {:?}",
            ours.dims(),
            reference.dims()
        ));
    }
    let flat = |t: &Tensor| -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .expect("tensor to f32 values")
    };
    max_abs_diff(&flat(ours), &flat(reference))
}

/// Checks `max |ours − reference| <= tolerance`; NaN/inf and shape mismatches fail.
fn compare(
    failures: &mut Failures,
    what: &str,
    ours: &Tensor,
    reference: &Tensor,
    tolerance: f64,
) -> Option<f32> {
    match max_abs_diff_tensors(ours, reference) {
        Ok(d) if f64::from(d) <= tolerance => Some(d),
        Ok(d) => {
            failures.push(format!("{what}: max abs diff {d:e} > {tolerance:e}"));
            Some(d)
        }
        Err(e) => {
            failures.push(format!("{what}: {e}"));
            None
        }
    }
}

/// A maximum difference for the log: `failed` when the comparison could not be made.
fn shown(d: Option<f32>) -> String {
    d.map_or_else(|| "failed".to_string(), |d| format!("{d:.2e}"))
}

/// One reference detection.
#[derive(Debug)]
struct RefDet {
    class_id: usize,
    score: f32,
    bbox: BBox,
}

fn reference_detections(path: &Path) -> Vec<RefDet> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let list: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not a JSON list: {e}", path.display()));
    list.iter()
        .map(|d| {
            let f = |k: &str| f64_at(d, &[k]) as f32;
            RefDet {
                class_id: usize_at(d, &["class_id"]),
                score: f("score"),
                bbox: BBox::new(f("x1"), f("y1"), f("x2"), f("y2")),
            }
        })
        .collect()
}

/// The detection rule of the fixture README: references by descending score, each matched one
/// to one to the unused detection of the same class with the best IoU among those with
/// `IoU >= iou_min` and `|score diff| <= score_abs`; unmatched on either side only below
/// `unmatched_below`. Returns the worst IoU and score difference of the matches.
fn match_detections(
    ours: &[&Detection],
    reference: &[&RefDet],
    iou_min: f32,
    score_abs: f32,
    unmatched_below: f32,
) -> Result<(f32, f32), Vec<String>> {
    let mut errors = Vec::new();
    for d in ours {
        let values = [d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2];
        if values.iter().any(|v| !v.is_finite()) {
            errors.push(format!("detection with a value that is not finite: {d:?}"));
        }
    }
    let mut order: Vec<&RefDet> = reference.to_vec();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used = vec![false; ours.len()];
    let (mut worst_iou, mut worst_score) = (1f32, 0f32);
    for r in order {
        let best = ours
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                !used[*i]
                    && d.class_id == r.class_id
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
            None if r.score < unmatched_below => {}
            None => errors.push(format!(
                "reference class {} score {} at {:?} has no match",
                r.class_id, r.score, r.bbox
            )),
        }
    }
    for (d, used) in ours.iter().zip(&used) {
        let may_stay_unmatched = d.score < unmatched_below;
        if !used && !may_stay_unmatched {
            errors.push(format!("detection without a reference: {d:?}"));
        }
    }
    if errors.is_empty() {
        Ok((worst_iou, worst_score))
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// The detector and the inputs

/// The detector, loaded once for all parity tests: the upstream cfg with the fixture's mask
/// overrides, the weights, the post-processing parameters and classes of `cases.json`. The
/// model files must be the ones `cases.json` names by sha256 and size.
fn detector(fx: &Fixture) -> Option<Arc<DarknetYolo>> {
    static DETECTOR: OnceLock<Option<Arc<DarknetYolo>>> = OnceLock::new();
    DETECTOR
        .get_or_init(|| {
            let weights = asset(WEIGHTS)?;
            let cfg = asset(UPSTREAM_CFG)?;
            let names = asset(NAMES)?;
            for (path, key) in [(&weights, "weights"), (&cfg, "cfg"), (&names, "names")] {
                let model = at(&fx.json, &["model", key]);
                assert_eq!(
                    sha256_file(path),
                    str_at(model, &["sha256"]),
                    "{} is not the file the fixtures were made with",
                    path.display()
                );
                let bytes = std::fs::metadata(path).expect("asset metadata").len();
                assert_eq!(
                    bytes,
                    usize_at(model, &["bytes"]) as u64,
                    "{}",
                    path.display()
                );
            }
            let coco: Vec<String> = std::fs::read_to_string(&names)
                .expect("class names")
                .lines()
                .map(str::to_string)
                .collect();
            let classes = reference_classes(fx)
                .into_iter()
                .map(|id| {
                    coco.get(id)
                        .unwrap_or_else(|| panic!("class id {id} is not in {}", names.display()))
                        .clone()
                })
                .collect();
            let post = at(&fx.json, &["postprocess"]);
            let opts = YoloOptions {
                cfg,
                weights,
                names,
                conf_threshold: f64_at(post, &["conf_threshold"]) as f32,
                nms_iou: f64_at(post, &["nms_iou"]) as f32,
                classes,
                mask_overrides: mask_overrides(fx),
            };
            Some(Arc::new(
                DarknetYolo::new(&opts, &Device::Cpu).expect("detector loads"),
            ))
        })
        .clone()
}

/// The class ids the detection rule compares.
fn reference_classes(fx: &Fixture) -> Vec<usize> {
    at(&fx.json, &["tolerances", "detections", "classes"])
        .as_array()
        .expect("cases.json: tolerances.detections.classes is an array")
        .iter()
        .map(|c| c.as_u64().expect("class id") as usize)
        .collect()
}

fn load_png(path: &Path, index: u64) -> Frame {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    Frame::new(index, std::time::Duration::ZERO, w, h, img.into_raw()).expect("frame")
}

/// The case's input frame (its `image` file, index `frame_index`).
fn case_frame(fx: &Fixture, case: &Value, failures: &mut Failures) -> Frame {
    let path = fx
        .case_file(case, "image", failures)
        .unwrap_or_else(|| panic!("cases.json: case {} lists no image", case_name(case)));
    load_png(&path, usize_at(case, &["frame_index"]) as u64)
}

/// The tensors of the case's `tensors` file, by name (empty when it lists none).
fn case_tensors(fx: &Fixture, case: &Value, failures: &mut Failures) -> BTreeMap<String, Tensor> {
    match fx.case_file(case, "tensors", failures) {
        Some(path) => candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .collect(),
        None => BTreeMap::new(),
    }
}

/// Where the stored rows sit in the network input, and the fill value elsewhere.
struct InputLayout {
    tensor: String,
    row: usize,
    col: usize,
    fill: f32,
    net_w: usize,
    net_h: usize,
}

impl InputLayout {
    fn new(fx: &Fixture) -> Self {
        let pre = at(&fx.json, &["preprocess"]);
        Self {
            tensor: str_at(pre, &["input_rows", "tensor"]).to_string(),
            row: usize_at(pre, &["input_rows", "row"]),
            col: usize_at(pre, &["input_rows", "col"]),
            fill: f64_at(pre, &["fill"]) as f32,
            net_w: usize_at(pre, &["net_w"]),
            net_h: usize_at(pre, &["net_h"]),
        }
    }

    /// Whether the element at (`y`, `x`) of a plane lies in the stored block of
    /// `rows x cols`.
    fn inside(&self, y: usize, x: usize, rows: usize, cols: usize) -> bool {
        (self.row..self.row + rows).contains(&y) && (self.col..self.col + cols).contains(&x)
    }

    /// The full `[n, c, net_h, net_w]` network input: the fill value with `rows` written at
    /// (`row`, `col`).
    fn rebuild(&self, rows: &Tensor) -> Tensor {
        let (n, c, h, w) = rows.dims4().expect("input rows: 4 dims");
        let src = rows
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("input rows: f32");
        let mut full = vec![self.fill; n * c * self.net_h * self.net_w];
        for plane in 0..n * c {
            for y in 0..h {
                let from = (plane * h + y) * w;
                let to = (plane * self.net_h + self.row + y) * self.net_w + self.col;
                full[to..to + w].copy_from_slice(&src[from..from + w]);
            }
        }
        Tensor::from_vec(full, (n, c, self.net_h, self.net_w), &Device::Cpu).expect("input")
    }
}

// ---------------------------------------------------------------------------------------------
// The parity tests

/// Pre-processing: the letterbox geometry of `cases.json`, our input equal to the stored rows
/// within `input_rows_max_abs`, every other element exactly the fill value.
#[test]
fn parity_yolov3_tiny_preprocess() {
    let Some(fx) = Fixture::load() else { return };
    let Some(det) = detector(&fx) else { return };
    let layout = InputLayout::new(&fx);
    let pre = at(&fx.json, &["preprocess"]);
    let tol = f64_at(&fx.json, &["tolerances", "input_rows_max_abs"]);
    let mut failures = Failures::default();
    let mut compared = 0;
    for case in fx.cases() {
        let name = case_name(case);
        let tensors = case_tensors(&fx, case, &mut failures);
        let Some(rows) = tensors.get(&layout.tensor) else {
            eprintln!("{name}: lists no `{}`; nothing to compare", layout.tensor);
            continue;
        };
        compared += 1;
        let frame = case_frame(&fx, case, &mut failures);
        let (input, geoms) = match det.preprocess(&[&frame]) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: preprocess: {e}"));
                continue;
            }
        };
        let g = &geoms[0];
        let want = ["new_w", "new_h", "pad_x", "pad_y"].map(|k| usize_at(pre, &[k]));
        failures.check([g.new_w, g.new_h, g.pad_x, g.pad_y] == want, || {
            format!(
                "{name}: letterbox (new_w, new_h, pad_x, pad_y) = {:?}, reference {want:?}",
                [g.new_w, g.new_h, g.pad_x, g.pad_y]
            )
        });
        let (_, c, h, w) = rows.dims4().expect("input rows: 4 dims");
        let (_, ic, ih, iw) = input.dims4().expect("input: 4 dims");
        if (ic, ih, iw) != (c, layout.net_h, layout.net_w)
            || layout.row + h > ih
            || layout.col + w > iw
        {
            failures.push(format!(
                "{name}: input {:?} cannot hold {:?} at row {}, col {} of {}x{}",
                input.dims(),
                rows.dims(),
                layout.row,
                layout.col,
                layout.net_w,
                layout.net_h
            ));
            continue;
        }
        let ours = input
            .narrow(2, layout.row, h)
            .and_then(|t| t.narrow(3, layout.col, w))
            .expect("narrow");
        let d = compare(
            &mut failures,
            &format!("{name}: {}", layout.tensor),
            &ours,
            rows,
            tol,
        );
        let values = input
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("input values");
        let off_fill = values
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let (y, x) = ((i / iw) % ih, i % iw);
                !layout.inside(y, x, h, w)
            })
            .find(|(_, v)| **v != layout.fill);
        if let Some((i, v)) = off_fill {
            failures.push(format!(
                "{name}: padding element {i} is {v}, must be exactly {}",
                layout.fill
            ));
        }
        eprintln!("{name}: {} max abs diff {}", layout.tensor, shown(d));
    }
    assert!(compared > 0, "no case lists `{}`", layout.tensor);
    failures.finish("yolov3_tiny preprocess parity");
}

/// Network: every head a case lists, computed from the input rebuilt from its stored rows,
/// within `head_max_abs` (NaN/inf fail).
#[test]
fn parity_yolov3_tiny_heads() {
    let Some(fx) = Fixture::load() else { return };
    let Some(det) = detector(&fx) else { return };
    let layout = InputLayout::new(&fx);
    let layers = yolo_layers(&fx);
    let tol = f64_at(&fx.json, &["tolerances", "head_max_abs"]);
    let mut failures = Failures::default();
    let mut compared = 0;
    for case in fx.cases() {
        let name = case_name(case);
        let tensors = case_tensors(&fx, case, &mut failures);
        for t in tensors.keys() {
            failures.check(
                *t == layout.tensor || layers.iter().any(|l| l.head == *t),
                || format!("{name}: tensor `{t}` is neither the input rows nor a listed head"),
            );
        }
        let listed: Vec<(usize, &YoloLayer)> = layers
            .iter()
            .enumerate()
            .filter(|(_, l)| tensors.contains_key(&l.head))
            .collect();
        if listed.is_empty() {
            eprintln!("{name}: lists no head; nothing to compare");
            continue;
        }
        let Some(rows) = tensors.get(&layout.tensor) else {
            failures.push(format!(
                "{name}: lists heads but no `{}` to rebuild the input from",
                layout.tensor
            ));
            continue;
        };
        let heads = match det.forward_heads(&layout.rebuild(rows)) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!("{name}: forward: {e}"));
                continue;
            }
        };
        failures.check(heads.len() == layers.len(), || {
            format!(
                "{name}: the network has {} heads, cases.json lists {} [yolo] layers",
                heads.len(),
                layers.len()
            )
        });
        let mut report = Vec::new();
        for (i, YoloLayer { layer, head, .. }) in listed {
            let Some(ours) = heads.get(i) else { continue };
            compared += 1;
            let what = format!("{name}: {head} (input of [yolo] layer {layer})");
            let d = compare(&mut failures, &what, ours, &tensors[head], tol);
            report.push(format!("{head} {}", shown(d)));
        }
        eprintln!("{name}: heads max abs diff: {}", report.join(", "));
    }
    assert!(compared > 0, "no case lists a head");
    failures.finish("yolov3_tiny head parity");
}

/// End to end: the case image through our detector, matched to the reference detections of the
/// compared classes by the README's rule (IoU, score difference and the score below which a
/// detection may be unmatched, all from `cases.json`).
#[test]
fn parity_yolov3_tiny_detections() {
    let Some(fx) = Fixture::load() else { return };
    let Some(det) = detector(&fx) else { return };
    let rule = at(&fx.json, &["tolerances", "detections"]);
    let classes = reference_classes(&fx);
    let iou_min = f64_at(rule, &["iou_min"]) as f32;
    let score_abs = f64_at(rule, &["score_abs"]) as f32;
    let unmatched_below = f64_at(rule, &["may_be_unmatched_below_score"]) as f32;
    let mut failures = Failures::default();
    let mut compared = 0;
    for case in fx.cases() {
        let name = case_name(case);
        let Some(path) = fx.case_file(case, "detections", &mut failures) else {
            eprintln!("{name}: lists no detections; nothing to compare");
            continue;
        };
        compared += 1;
        let all = reference_detections(&path);
        let reference: Vec<&RefDet> = all
            .iter()
            .filter(|d| classes.contains(&d.class_id))
            .collect();
        // The README's person count of the case is the count in its detections file.
        if let Some(n) = case.get("persons").and_then(Value::as_u64) {
            failures.check(reference.len() as u64 == n, || {
                format!(
                    "{name}: {} reference detections of classes {classes:?}, cases.json says {n}",
                    reference.len()
                )
            });
        }
        let frame = case_frame(&fx, case, &mut failures);
        let ours = match det.detect(&[&frame]) {
            Ok(mut out) => out.detections.remove(0),
            Err(e) => {
                failures.push(format!("{name}: detect: {e}"));
                continue;
            }
        };
        let ours: Vec<&Detection> = ours
            .iter()
            .filter(|d| classes.contains(&d.class_id))
            .collect();
        match match_detections(&ours, &reference, iou_min, score_abs, unmatched_below) {
            Ok((iou, score)) => eprintln!(
                "{name}: {} detections (reference {}), worst IoU {iou:.4}, worst score diff \
                 {score:.2e}",
                ours.len(),
                reference.len()
            ),
            Err(errors) => {
                for e in errors {
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
    }
    assert!(compared > 0, "no case lists detections");
    failures.finish("yolov3_tiny detection parity");
}

/// Every file a case lists (including the alternative-mask detections, information only) has
/// the sha256 `cases.json` gives, and every case lists at least one output to compare.
#[test]
fn parity_yolov3_tiny_fixture_files() {
    let Some(fx) = Fixture::load() else { return };
    let mut failures = Failures::default();
    for case in fx.cases() {
        let name = case_name(case);
        let outputs = ["tensors", "detections"]
            .into_iter()
            .filter_map(|k| fx.case_file(case, k, &mut failures))
            .count();
        failures.check(outputs > 0, || format!("{name}: lists no output"));
        fx.case_file(case, "image", &mut failures)
            .unwrap_or_else(|| panic!("{name}: lists no image"));
        if let Some(alt) = case.get("alternative_mask") {
            fx.case_file(alt, "detections", &mut failures);
        }
    }
    failures.finish("yolov3_tiny fixture files");
}

/// The weights header equals `model.weights_header`, and the file holds exactly the header
/// and the parameters the cfg's layers consume (its size is `model.weights.bytes`).
#[test]
fn parity_yolov3_tiny_weights_header() {
    let Some(fx) = Fixture::load() else { return };
    let (Some(w), Some(cfg)) = (asset(WEIGHTS), asset(UPSTREAM_CFG)) else {
        return;
    };
    let cfg = DarknetConfig::from_file(&cfg).unwrap();
    let weights = DarknetWeights::from_file(&w, &cfg).unwrap();
    let h = at(&fx.json, &["model", "weights_header"]);
    let got = &weights.header;
    assert_eq!(i64::from(got.major), at(h, &["major"]).as_i64().unwrap());
    assert_eq!(i64::from(got.minor), at(h, &["minor"]).as_i64().unwrap());
    assert_eq!(
        i64::from(got.revision),
        at(h, &["revision"]).as_i64().unwrap()
    );
    assert_eq!(got.seen, at(h, &["seen"]).as_u64().unwrap());
    assert_eq!(got.bytes, usize_at(h, &["header_bytes"]));
    let file_bytes = usize_at(&fx.json, &["model", "weights", "bytes"]);
    assert_eq!(
        got.bytes + 4 * cfg.weight_param_count(),
        file_bytes,
        "header + f32 parameters of the cfg must fill the file exactly"
    );
}

/// The upstream cfg with the fixture's mask overrides reads the `[yolo]` layers of
/// `cases.json` (index, grid, mask, anchors); the installed (corrected) cfg reads the same, so
/// production runs decode exactly like the parity target.
#[test]
fn parity_yolov3_tiny_installed_cfg_equals_upstream_with_mask_override() {
    let Some(fx) = Fixture::load() else { return };
    let (Some(installed), Some(upstream)) = (asset(INSTALLED_CFG), asset(UPSTREAM_CFG)) else {
        return;
    };
    let installed = DarknetConfig::from_file(&installed).unwrap();
    let mut upstream = DarknetConfig::from_file(&upstream).unwrap();
    for o in mask_overrides(&fx) {
        upstream.override_mask(o.layer, o.mask).unwrap();
    }
    assert_eq!(installed, upstream);
    let ours = installed.yolo_layers();
    let want = yolo_layers(&fx);
    let got_layers: Vec<usize> = ours.iter().map(|(i, _)| *i).collect();
    let want_layers: Vec<usize> = want.iter().map(|l| l.layer).collect();
    assert_eq!(got_layers, want_layers, "[yolo] layer indices");
    for ((_, spec), l) in ours.iter().zip(&want) {
        assert_eq!(spec.mask, l.mask, "{l:?}: mask");
        assert_eq!(spec.masked_anchors(), l.anchors, "{l:?}: anchors");
        let shape = &installed.shapes[l.layer];
        assert_eq!((shape.height, shape.width), (l.grid, l.grid), "{l:?}: grid");
    }
}

// ---------------------------------------------------------------------------------------------
// The comparison rules themselves

#[test]
fn max_abs_diff_fails_on_nan_and_infinity_anywhere() {
    let reference = [1.0f32, -2.0, 3.0, 4.0];
    assert_eq!(max_abs_diff(&[1.0, -2.5, 3.0, 4.25], &reference), Ok(0.5));
    for (i, bad) in [
        (0, f32::NAN),
        (2, f32::NAN),
        (3, f32::INFINITY),
        (1, f32::NEG_INFINITY),
    ] {
        let mut ours = reference;
        ours[i] = bad;
        let e = max_abs_diff(&ours, &reference).unwrap_err();
        assert!(e.contains(&format!("element {i}")), "{e}");
        // The reference side is checked as well.
        let e = max_abs_diff(&reference, &ours).unwrap_err();
        assert!(e.contains("not finite"), "{e}");
    }
    // Both finite, difference overflowing f32.
    assert!(max_abs_diff(&[f32::MAX], &[-f32::MAX]).is_err());
    assert!(max_abs_diff(&[1.0], &[1.0, 2.0]).is_err());
}

#[test]
fn compare_fails_on_nan_in_a_tensor_and_on_shape() {
    let reference = Tensor::new(&[[0.0f32, 1.0, 2.0], [3.0, 4.0, 5.0]], &Device::Cpu).unwrap();
    let ours = Tensor::new(&[[0.0f32, f32::NAN, 2.0], [3.0, 4.0, 5.0]], &Device::Cpu).unwrap();
    let mut failures = Failures::default();
    assert_eq!(compare(&mut failures, "nan", &ours, &reference, 1.0), None);
    assert!(failures.0[0].contains("element 1"), "{:?}", failures.0);
    let wide = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        compare(&mut failures, "shape", &wide, &reference, 1.0),
        None
    );
    assert!(failures.0[1].contains("shape [3, 2]"), "{:?}", failures.0);
    let near = (&reference + 1e-3).unwrap();
    assert!(compare(&mut failures, "near", &near, &reference, 1e-2).is_some());
    assert!(compare(&mut failures, "far", &near, &reference, 1e-4).is_some());
    assert_eq!(failures.0.len(), 3, "{:?}", failures.0);
}

#[test]
fn detection_matching_rule() {
    let det = |class_id, score, x: f32| Detection {
        class_id,
        score,
        bbox: BBox::new(x, 0.0, x + 10.0, 20.0),
    };
    let rd = |class_id, score, x: f32| RefDet {
        class_id,
        score,
        bbox: BBox::new(x, 0.0, x + 10.0, 20.0),
    };
    let refs = [rd(0, 0.9, 0.0), rd(0, 0.8, 100.0), rd(0, 0.255, 200.0)];
    let refs: Vec<&RefDet> = refs.iter().collect();
    let good = [det(0, 0.805, 100.0), det(0, 0.9, 0.0)];
    let good: Vec<&Detection> = good.iter().collect();
    // The reference at 0.255 may stay unmatched (below 0.26).
    let (worst_iou, worst_score) = match_detections(&good, &refs, 0.95, 0.01, 0.26).unwrap();
    assert_eq!(worst_iou, 1.0);
    assert!((worst_score - 0.005).abs() < 1e-6, "{worst_score}");
    // A score off by more than 0.01, a box moved off, a wrong class, a NaN score: no match.
    for bad in [
        det(0, 0.78, 100.0),
        det(0, 0.8, 101.0),
        det(1, 0.8, 100.0),
        det(0, f32::NAN, 100.0),
    ] {
        let ours = [det(0, 0.9, 0.0), bad];
        let ours: Vec<&Detection> = ours.iter().collect();
        let e = match_detections(&ours, &refs, 0.95, 0.01, 0.26).unwrap_err();
        assert!(e.iter().any(|m| m.contains("score 0.8")), "{e:?}");
    }
    // An extra detection scoring 0.26 or more fails; one below may stay unmatched.
    let extra = [det(0, 0.9, 0.0), det(0, 0.8, 100.0), det(0, 0.3, 300.0)];
    let extra: Vec<&Detection> = extra.iter().collect();
    assert!(match_detections(&extra, &refs, 0.95, 0.01, 0.26).is_err());
    let low = [det(0, 0.9, 0.0), det(0, 0.8, 100.0), det(0, 0.25, 300.0)];
    let low: Vec<&Detection> = low.iter().collect();
    assert!(match_detections(&low, &refs, 0.95, 0.01, 0.26).is_ok());
}
