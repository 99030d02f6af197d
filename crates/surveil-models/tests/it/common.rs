//! Shared by the integration tests: where fixtures and assets are and what a missing one means,
//! reading the cases a fixture folder lists, and comparing numbers (non-finite values fail).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

// ----- fixtures and assets -------------------------------------------------------------------

/// Whether the tests run under continuous integration: `CI` is set to a non-empty value other
/// than `false` or `0`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// The first of `candidates` that exists. When none does, the test cannot run: under CI
/// ([`under_ci`]) that is a failure naming every place searched; elsewhere the reason is
/// printed and `None` tells the test to skip. Every test of this crate that needs a fixture or
/// an asset goes through here.
pub fn require(what: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Some(found.clone());
    }
    let places: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let msg = format!("{what} not found (searched {})", places.join(", "));
    assert!(!under_ci(), "{msg}; it is required under CI");
    println!("SKIPPED: {msg}");
    None
}

/// The fixture root: `$SURVEIL_FIXTURES` (which must then exist), else `../shared/fixtures`
/// next to the checkout.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SURVEIL_FIXTURES") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "SURVEIL_FIXTURES={} is not a directory",
            dir.display()
        );
        return dir;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("../shared/fixtures"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| manifest.join("../../../shared/fixtures"))
}

/// One folder of the fixture root (`qwen2_vl`, `processors`, ...), through [`require`].
pub fn fixture(folder: &str) -> Option<PathBuf> {
    require(
        &format!("fixture folder `{folder}`"),
        &[fixtures_dir().join(folder)],
    )
}

/// The asset cache filled by `scripts/setup.sh`: `$SURVEIL_ASSETS`, else
/// `~/.cache/surveil/assets`.
pub fn assets_dir() -> PathBuf {
    surveil_config::paths::assets_dir()
}

/// A file of the asset cache, through [`require`].
pub fn asset(relative: &str) -> Option<PathBuf> {
    require(
        &format!("asset `{relative}` (scripts/setup.sh fetches it)"),
        &[assets_dir().join(relative)],
    )
}

// ----- cases ---------------------------------------------------------------------------------

/// Every tensor of a fixture safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Parsed `cases.json` of a fixture folder.
pub fn cases(folder: &Path) -> Value {
    let path = folder.join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {}: {e}", path.display()))
}

/// One case of a fixture folder: its name and its `cases.json` entry.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case's name (the key of `cases`, or its `name` field).
    pub name: String,
    /// The case's entry.
    pub spec: Value,
}

impl Case {
    /// The case's tensors (its `file`, relative to `folder`).
    pub fn tensors(&self, folder: &Path) -> HashMap<String, Tensor> {
        let file = self.spec["file"]
            .as_str()
            .unwrap_or_else(|| panic!("case {}: no `file`", self.name));
        load_tensors(&folder.join(file))
    }

    /// The names listed under `group` (`inputs`, `outputs`, ...), sorted; none when the group
    /// is absent.
    pub fn listed(&self, group: &str) -> Vec<String> {
        let mut names: Vec<String> = self.spec[group]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether `name` is listed under `group`.
    pub fn lists(&self, group: &str, name: &str) -> bool {
        self.spec[group].get(name).is_some()
    }

    /// Panic naming the case and the tensor: a listed output this test cannot produce.
    pub fn unknown(&self, group: &str, name: &str) -> ! {
        panic!(
            "case {}: {group} `{name}` is listed, but this test does not know how to produce \
             or read it",
            self.name
        )
    }

    /// The file holds exactly the tensors listed under `groups`, each with its listed shape
    /// (entries without a `shape`, such as `{"from": ...}`, live in another file).
    pub fn check_file(&self, tensors: &HashMap<String, Tensor>, groups: &[&str]) {
        let mut listed = Vec::new();
        for group in groups {
            for name in self.listed(group) {
                let entry = &self.spec[group][&name];
                let Some(shape) = entry.get("shape") else {
                    continue;
                };
                let shape: Vec<usize> = serde_json::from_value(shape.clone())
                    .unwrap_or_else(|e| panic!("case {}: shape of {name}: {e}", self.name));
                let t = tensors.get(&name).unwrap_or_else(|| {
                    panic!(
                        "case {}: {group} `{name}` is listed but not in the file",
                        self.name
                    )
                });
                assert_eq!(t.dims(), shape.as_slice(), "case {}: {name}", self.name);
                listed.push(name);
            }
        }
        let mut unlisted: Vec<&String> = tensors.keys().filter(|k| !listed.contains(k)).collect();
        unlisted.sort();
        assert!(
            unlisted.is_empty(),
            "case {}: the file holds tensors cases.json does not list: {unlisted:?}",
            self.name
        );
    }
}

/// The cases a `cases.json` lists, sorted by name: `cases` is an object keyed by name or an
/// array of objects with a `name`.
pub fn case_list(all: &Value) -> Vec<Case> {
    let mut list: Vec<Case> = match &all["cases"] {
        Value::Object(map) => map
            .iter()
            .map(|(name, spec)| Case {
                name: name.clone(),
                spec: spec.clone(),
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|spec| Case {
                name: spec["name"]
                    .as_str()
                    .expect("a case without a `name`")
                    .to_string(),
                spec: spec.clone(),
            })
            .collect(),
        other => panic!("`cases` is neither an object nor an array: {other}"),
    };
    assert!(!list.is_empty(), "cases.json lists no case");
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// Integer values of a tensor, flattened.
pub fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Token ids of a tensor, flattened.
pub fn token_ids(t: &Tensor) -> Vec<u32> {
    ints(t)
        .iter()
        .map(|&x| u32::try_from(x).expect("token id out of range"))
        .collect()
}

/// Float values of a tensor, flattened.
pub fn floats(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A JSON array of unsigned integers.
pub fn usizes(v: &Value) -> Vec<usize> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a list of sizes: {v} ({e})"))
}

// ----- tolerances ----------------------------------------------------------------------------

/// How an output of the transformers-generated folders (`qwen2_vl`, `git`, `deepseek_v3`) is
/// compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// Bit-identical (integers: ids, positions, expert choices).
    Exact,
    /// `max |ours − reference| ≤` this.
    MaxAbs(f32),
}

/// The tolerance `cases.json` gives `output` in `case`: `tolerance.<output>` (or, for
/// per-layer tensors, `tolerance.<output without _layerN>`), an object with `max_abs_diff` or
/// one of the sentences "exact match…", "max_abs_diff <x>", "same max_abs_diff as <other>".
/// Integer outputs without an entry are exact; any other output without one is a failure.
pub fn tolerance(case: &Case, output: &str) -> Tolerance {
    let table = &case.spec["tolerance"];
    let mut entry = table.get(output);
    if entry.is_none() {
        if let Some((base, layer)) = output.rsplit_once("_layer") {
            if !layer.is_empty() && layer.chars().all(|c| c.is_ascii_digit()) {
                entry = table.get(base);
            }
        }
    }
    let Some(entry) = entry else {
        let dtype = case.spec["outputs"][output]["dtype"].as_str();
        assert!(
            dtype.is_some_and(|d| d.starts_with("int")),
            "case {}: no tolerance for output `{output}`",
            case.name
        );
        return Tolerance::Exact;
    };
    if let Some(x) = entry.get("max_abs_diff").and_then(Value::as_f64) {
        return Tolerance::MaxAbs(x as f32);
    }
    let text = entry.as_str().unwrap_or_else(|| {
        panic!(
            "case {}: unreadable tolerance for `{output}`: {entry}",
            case.name
        )
    });
    if text.starts_with("exact") {
        Tolerance::Exact
    } else if let Some(other) = text.strip_prefix("same max_abs_diff as ") {
        tolerance(case, other.trim())
    } else if let Some(x) = text.strip_prefix("max_abs_diff ") {
        Tolerance::MaxAbs(x.trim().parse().unwrap_or_else(|e| {
            panic!("case {}: tolerance of `{output}`: {text:?}: {e}", case.name)
        }))
    } else {
        panic!(
            "case {}: unreadable tolerance for `{output}`: {text:?}",
            case.name
        )
    }
}

/// The `max_abs_diff` tolerance of a float output (a failure if the output is exact).
pub fn max_abs_tolerance(case: &Case, output: &str) -> f32 {
    match tolerance(case, output) {
        Tolerance::MaxAbs(x) => x,
        Tolerance::Exact => panic!(
            "case {}: `{output}` is a float output with an exact tolerance",
            case.name
        ),
    }
}

// ----- comparisons ---------------------------------------------------------------------------

/// Largest absolute difference of two equally long slices; NaN when any value on either side
/// is NaN or infinite (so `d <= tolerance` fails), 0 for empty slices.
pub fn max_abs_diff_values(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = 0f32;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f32::NAN;
        }
        worst = worst.max((x - y).abs());
    }
    worst
}

/// Largest absolute difference between two float tensors of the same shape; NaN when any
/// element of either is NaN or infinite.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    max_abs_diff_values(&floats(a), &floats(b))
}

/// Assert `max |ours − reference| ≤ tol` (shapes equal, every value finite); prints and returns
/// the difference. `label` names the case and the output.
pub fn assert_close(label: &str, ours: &Tensor, reference: &Tensor, tol: f32) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "{label}: shape");
    let d = max_abs_diff(ours, reference);
    println!("{label}: max_abs_diff {d:.3e} (tolerance {tol:.0e})");
    assert!(
        d <= tol,
        "{label}: max_abs_diff {d} > {tol} (or not finite)"
    );
    d
}

/// Pearson correlation of two tensors' values (NaN when either holds a non-finite value or is
/// constant).
pub fn correlation(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (floats(a), floats(b));
    assert_eq!(a.len(), b.len(), "length mismatch");
    if a.iter().chain(&b).any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let mb = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(&b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

/// Gap between the largest and the second largest logit of a row.
pub fn top2_margin(row: &[f32]) -> f32 {
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1]
}

/// Greedy ids of a quantized model against the float32 reference. Up to the first divergence
/// both decode the same prefix, so step `k`'s logits are comparable: its measured error is
/// `max |ours − reference|` over the vocabulary. An argmax flip is legitimate only where the
/// reference's top-1 − top-2 margin is below that error (a near tie); comparing stops there,
/// as the prefixes differ afterwards. A flip past a clear margin, or a non-finite logit, fails.
/// `ours` holds, per step, the id our model chose and the logits it chose it from. Returns the
/// number of steps that agree.
pub fn check_quantized_greedy(
    label: &str,
    ours: &[(u32, Vec<f32>)],
    reference_ids: &[u32],
    reference_logits: &[Vec<f32>],
) -> usize {
    assert_eq!(ours.len(), reference_ids.len(), "{label}: number of steps");
    assert_eq!(
        reference_logits.len(),
        reference_ids.len(),
        "{label}: steps"
    );
    for (k, ((id, logits), (&want, reference))) in ours
        .iter()
        .zip(reference_ids.iter().zip(reference_logits))
        .enumerate()
    {
        let err = max_abs_diff_values(logits, reference);
        assert!(err.is_finite(), "{label}: step {k}: non-finite logits");
        let margin = top2_margin(reference);
        if *id == want {
            println!("{label}: step {k}: id {id} agrees (error {err:.3e}, margin {margin:.3e})");
            continue;
        }
        println!(
            "{label}: step {k}: id {id} vs reference {want}: reference margin {margin:.3e}, \
             quantization error {err:.3e}"
        );
        assert!(
            margin < err,
            "{label}: step {k}: quantized id {id} differs from the reference's {want} although \
             the reference's top-1 margin {margin} exceeds the step's quantization error {err}"
        );
        return k;
    }
    ours.len()
}

/// The images of the processor fixtures (`processors/cases.json` → `images`), smallest area
/// first.
pub fn processor_images(processors: &Path) -> Vec<PathBuf> {
    let all = cases(processors);
    let images = all["images"]
        .as_object()
        .expect("processors/cases.json: `images`");
    let mut list: Vec<(usize, PathBuf)> = images
        .values()
        .map(|image| {
            let wh = usizes(&image["size_wh"]);
            let file = image["file"].as_str().expect("image file");
            (wh[0] * wh[1], processors.join(file))
        })
        .collect();
    assert!(!list.is_empty(), "processors/cases.json lists no image");
    list.sort();
    list.into_iter().map(|(_, p)| p).collect()
}

/// An RGB image of the fixtures.
pub fn open_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .to_rgb8()
}

/// The cases of the processor fixtures whose `processor` starts with `prefix`
/// (`Qwen2VLImageProcessor`, `CLIPImageProcessor`); a case whose processor is neither fails.
pub fn processor_cases(all: &Value, prefix: &str) -> Vec<Case> {
    let list: Vec<Case> = case_list(all)
        .into_iter()
        .filter(|c| {
            let processor = c.spec["processor"].as_str().unwrap_or_default();
            assert!(
                ["Qwen2VLImageProcessor", "CLIPImageProcessor"]
                    .iter()
                    .any(|p| processor.starts_with(p)),
                "case {}: unknown processor {processor:?}",
                c.name
            );
            processor.starts_with(prefix)
        })
        .collect();
    assert!(
        !list.is_empty(),
        "no {prefix} case in processors/cases.json"
    );
    list
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ----- tests of the comparisons ---------------------------------------------------------------

#[test]
fn max_abs_diff_fails_on_non_finite_values() {
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    let reference = t(&[0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        max_abs_diff(&t(&[0.0, 1.5, 2.0, 3.0, 4.0]), &reference),
        0.5
    );
    // A NaN that is neither first nor last, on either side.
    let nan_mid = t(&[0.0, 1.5, f32::NAN, 3.0, 4.0]);
    assert!(max_abs_diff(&nan_mid, &reference).is_nan());
    assert!(max_abs_diff(&reference, &nan_mid).is_nan());
    // Infinities, even equal ones.
    let inf = t(&[0.0, 1.0, f32::INFINITY, 3.0, 4.0]);
    assert!(max_abs_diff(&inf, &reference).is_nan());
    assert!(max_abs_diff(&inf, &inf).is_nan());
    assert!(max_abs_diff(&t(&[f32::NEG_INFINITY; 5]), &reference).is_nan());
    // The comparison every parity test makes fails on them.
    let nan_ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_close("nan", &nan_mid, &reference, 1e3)
    }));
    assert!(nan_ok.is_err());
    assert!(correlation(&nan_mid, &reference).is_nan());
}

#[test]
fn quantized_greedy_tolerates_only_near_ties() {
    let reference = vec![vec![1.0, 0.0, 0.0], vec![0.0, 2.0, 1.95]];
    let ids = [0, 1];
    // The same ids: every step agrees.
    let same = [(0, reference[0].clone()), (1, reference[1].clone())];
    assert_eq!(check_quantized_greedy("same", &same, &ids, &reference), 2);
    // A flip at a near tie (margin 0.05) with a larger error: legitimate, comparing stops.
    let near = [(0, vec![1.0, 0.0, 0.0]), (2, vec![0.0, 1.9, 2.0])];
    assert_eq!(check_quantized_greedy("near", &near, &ids, &reference), 1);
    // A flip past a clear margin (1.0) with a small error fails.
    let clear = [(1, vec![0.9, 0.95, 0.0]), (1, reference[1].clone())];
    assert!(
        std::panic::catch_unwind(|| check_quantized_greedy("clear", &clear, &ids, &reference))
            .is_err()
    );
}
