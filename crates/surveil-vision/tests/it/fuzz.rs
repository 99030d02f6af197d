//! Bounded property tests of the Darknet readers: `.cfg` text ([`DarknetConfig::parse`]),
//! `.weights` bytes ([`DarknetWeights::from_bytes`]) and the network built from both. Random
//! text and mutations of a real cfg (huge filters, sizes and strides, negative or far route
//! indexes, mask indexes beyond the anchors, zero sizes, overflowing shapes) never panic; an
//! accepted cfg has consistent shapes, a weights file of exactly its size is accepted, and the
//! network built from them runs and gives one head per `[yolo]` layer of the stated shape.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use surveil_vision::darknet::{
    DarknetConfig, DarknetNetwork, DarknetWeights, LayerShape, LayerSpec,
};

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A small valid network with every supported layer type: two heads, a route of two layers,
/// an upsample and a stride-1 maxpool.
const SMALL_CFG: &str = "\
[net]
width=16
height=16
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 0

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 3,4,5
anchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319
classes=2
num=6
";

/// The real YOLOv3-tiny cfg from the asset cache, else the small one.
fn real_cfg() -> String {
    let path = crate::common::assets_root().join("yolov3-tiny/yolov3-tiny.cfg");
    std::fs::read_to_string(path).unwrap_or_else(|_| SMALL_CFG.to_string())
}

const KEYS: &[&str] = &[
    "width",
    "height",
    "channels",
    "filters",
    "size",
    "stride",
    "pad",
    "padding",
    "groups",
    "batch_normalize",
    "activation",
    "layers",
    "from",
    "mask",
    "anchors",
    "classes",
    "num",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "-1",
    "-3",
    "-100",
    "100",
    "65535",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e40",
    "leaky",
    "linear",
    "logistic",
    "-1,-1",
    "-1, 0",
    "0,0,0",
    "0,1,2,3,4,5,6,7,8,9",
    "1,2,3,4,5,6",
    "-9223372036854775808",
    ",",
    " ",
    "💥",
];

const SECTIONS: &[&str] = &[
    "[convolutional]",
    "[conv]",
    "[maxpool]",
    "[max]",
    "[route]",
    "[upsample]",
    "[yolo]",
    "[shortcut]",
    "[net]",
    "[]",
    "[",
    "]",
];

/// An edit of a cfg's lines.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of the n-th `key=value` line.
    SetValue(usize, &'static str),
    /// Insert `key=value` before line n.
    Insert(usize, &'static str, &'static str),
    /// Insert a section header before line n.
    Section(usize, &'static str),
    /// Remove line n.
    Delete(usize),
    /// Copy line n before line m.
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop::sample::select(VALUES);
    prop_oneof![
        4 => (any::<usize>(), value.clone()).prop_map(|(n, v)| Edit::SetValue(n, v)),
        2 => (any::<usize>(), prop::sample::select(KEYS), value)
            .prop_map(|(n, k, v)| Edit::Insert(n, k, v)),
        1 => (any::<usize>(), prop::sample::select(SECTIONS)).prop_map(|(n, s)| Edit::Section(n, s)),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(n, m)| Edit::Duplicate(n, m)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let len = lines.len().max(1);
        match e {
            Edit::SetValue(n, v) => {
                let kv: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].contains('='))
                    .collect();
                if !kv.is_empty() {
                    let i = kv[n % kv.len()];
                    let key = lines[i].split('=').next().unwrap_or("").to_string();
                    lines[i] = format!("{key}={v}");
                }
            }
            Edit::Insert(n, k, v) => lines.insert(n % len, format!("{k}={v}")),
            Edit::Section(n, s) => lines.insert(n % len, s.to_string()),
            Edit::Delete(n) => {
                if !lines.is_empty() {
                    lines.remove(n % len);
                }
            }
            Edit::Duplicate(n, m) => {
                if let Some(line) = lines.get(n % len).cloned() {
                    lines.insert(m % len, line);
                }
            }
        }
    }
    lines.join("\n")
}

/// Checks a parse result; for an accepted cfg, returns it.
fn check_cfg(text: &str) -> Result<Option<DarknetConfig>, TestCaseError> {
    let cfg = match DarknetConfig::parse(text, Path::new("fuzzed.cfg")) {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains("fuzzed.cfg"), "{msg}");
            return Ok(None);
        }
        Ok(cfg) => cfg,
    };
    prop_assert_eq!(cfg.layers.len(), cfg.shapes.len());
    prop_assert!(!cfg.layers.is_empty());
    let elements = |c: usize, h: usize, w: usize| c.checked_mul(h).and_then(|x| x.checked_mul(w));
    prop_assert!(elements(cfg.channels, cfg.height, cfg.width).is_some());
    for (i, (layer, shape)) in cfg.layers.iter().zip(&cfg.shapes).enumerate() {
        prop_assert!(
            shape.channels > 0 && shape.height > 0 && shape.width > 0,
            "layer {i}"
        );
        prop_assert!(
            elements(shape.channels, shape.height, shape.width).is_some(),
            "layer {i}: {shape:?} overflows"
        );
        match layer {
            LayerSpec::Route { layers } => {
                prop_assert!(!layers.is_empty());
                prop_assert!(layers.iter().all(|&l| l < i), "layer {i}: {layers:?}");
            }
            LayerSpec::Yolo(y) => {
                prop_assert!(y.mask.iter().all(|&m| m < y.anchors.len()));
                prop_assert_eq!(y.masked_anchors().len(), y.mask.len());
                prop_assert!(
                    y.anchors
                        .iter()
                        .all(|&(w, h)| w.is_finite() && h.is_finite()),
                    "layer {i}: anchors {:?}",
                    y.anchors
                );
            }
            LayerSpec::Convolutional(c) => {
                prop_assert!(c.filters > 0 && c.size > 0 && c.stride > 0);
            }
            _ => {}
        }
    }
    // Sizing the weights file must not overflow.
    let _ = cfg.weight_param_count();
    Ok(Some(cfg))
}

/// A `.weights` file (version 0.2.0, 64-bit `seen`) for `cfg`: biases and weights 0.05,
/// batch-norm scales 1, means 0, variances 1.
fn weights_for(cfg: &DarknetConfig) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [0i32, 2, 0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&7u64.to_le_bytes());
    let mut push = |n: usize, v: f32| {
        for _ in 0..n {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    };
    for layer in &cfg.layers {
        if let LayerSpec::Convolutional(c) = layer {
            push(c.filters, 0.05);
            if c.batch_normalize {
                push(c.filters, 1.0);
                push(c.filters, 0.0);
                push(c.filters, 1.0);
            }
            push(c.filters * c.in_channels * c.size * c.size, 0.05);
        }
    }
    bytes
}

/// Builds and runs an accepted cfg when that is cheap: at most this many parameters and values
/// materialised by the forward pass.
const CHEAP: usize = 1 << 18;

fn check_network(cfg: &DarknetConfig) -> Result<(), TestCaseError> {
    // Values the forward pass materialises: every output, a maxpool's padded input, a
    // convolution's unrolled patches.
    let input = LayerShape {
        channels: cfg.channels,
        height: cfg.height,
        width: cfg.width,
    };
    let mut work = input
        .channels
        .saturating_mul(input.height)
        .saturating_mul(input.width);
    for (i, (layer, s)) in cfg.layers.iter().zip(&cfg.shapes).enumerate() {
        let prev = if i == 0 { input } else { cfg.shapes[i - 1] };
        let extra = match layer {
            LayerSpec::MaxPool(m) => prev
                .channels
                .saturating_mul(prev.height.saturating_add(m.padding))
                .saturating_mul(prev.width.saturating_add(m.padding)),
            LayerSpec::Convolutional(c) => c
                .in_channels
                .saturating_mul(c.size)
                .saturating_mul(c.size)
                .saturating_mul(s.height)
                .saturating_mul(s.width),
            _ => 0,
        };
        work = work
            .saturating_add(extra)
            .saturating_add(s.channels.saturating_mul(s.height).saturating_mul(s.width));
    }
    if cfg.weight_param_count() > CHEAP || work > CHEAP {
        return Ok(());
    }
    let bytes = weights_for(cfg);
    let weights = DarknetWeights::from_bytes(&bytes, cfg, Path::new("fuzzed.weights"));
    prop_assert!(
        weights.is_ok(),
        "{:?}",
        weights.err().map(|e| e.to_string())
    );
    let weights = weights.unwrap();
    prop_assert_eq!(weights.layers.len(), cfg.layers.len());
    let net = DarknetNetwork::new(cfg.clone(), weights, &Device::Cpu);
    prop_assert!(net.is_ok(), "{:?}", net.err().map(|e| e.to_string()));
    let net = net.unwrap();
    let x = Tensor::zeros(
        (1, cfg.channels, cfg.height, cfg.width),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let heads = net.forward(&x);
    prop_assert!(heads.is_ok(), "{:?}", heads.err().map(|e| e.to_string()));
    let heads = heads.unwrap();
    let yolo = cfg.yolo_layers();
    prop_assert_eq!(heads.len(), yolo.len());
    for (head, (layer, _)) in heads.iter().zip(yolo) {
        let s = cfg.shapes[layer];
        prop_assert_eq!(
            head.dims(),
            &[1, s.channels, s.height, s.width][..],
            "layer {}",
            layer
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text.
    #[test]
    fn fuzz_cfg_arbitrary_text(text in any::<String>()) {
        check_cfg(&text)?;
    }

    /// Lines of sections and known keys with odd values, after a valid `[net]`.
    #[test]
    fn fuzz_cfg_line_soup(
        lines in prop::collection::vec(
            prop_oneof![
                prop::sample::select(SECTIONS).prop_map(str::to_string),
                (prop::sample::select(KEYS), prop::sample::select(VALUES))
                    .prop_map(|(k, v)| format!("{k}={v}")),
            ],
            0..40,
        ),
    ) {
        let text = format!("[net]\nwidth=8\nheight=8\nchannels=3\n{}", lines.join("\n"));
        if let Some(cfg) = check_cfg(&text)? {
            check_network(&cfg)?;
        }
    }

    /// The small cfg with up to five edits: accepted results build and run.
    #[test]
    fn fuzz_cfg_small_mutations(edits in prop::collection::vec(edit(), 0..5)) {
        let text = apply(SMALL_CFG, &edits);
        let cfg = check_cfg(&text)?;
        if edits.is_empty() {
            prop_assert!(cfg.is_some(), "the small cfg parses");
        }
        if let Some(cfg) = cfg {
            check_network(&cfg)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The real YOLOv3-tiny cfg with up to five edits, cut at any point; its weights size is
    /// checked against a short file without allocating for the claimed size.
    #[test]
    fn fuzz_cfg_real_mutations(
        edits in prop::collection::vec(edit(), 0..5),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut text = apply(&real_cfg(), &edits);
        if let Some(cut) = cut {
            let at = cut.index(text.len() + 1);
            let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(at);
        }
        if let Some(cfg) = check_cfg(&text)? {
            let short = [0u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
            let r = DarknetWeights::from_bytes(&short, &cfg, Path::new("fuzzed.weights"));
            if cfg.weight_param_count() != 1 {
                prop_assert!(r.is_err());
            }
        }
    }

    /// Arbitrary bytes as the weights of the small cfg: accepted exactly when the size is right
    /// for the header's version.
    #[test]
    fn fuzz_weights_arbitrary_bytes(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        major in prop_oneof![Just(0i32), Just(1), Just(999), Just(1000), Just(-1), any::<i32>()],
        minor in prop_oneof![Just(0i32), Just(1), Just(2), Just(999), Just(1000), Just(-1), any::<i32>()],
        extra in -8i64..8,
        structured in any::<bool>(),
    ) {
        let cfg = DarknetConfig::parse(SMALL_CFG, Path::new("small.cfg")).unwrap();
        let bytes = if structured {
            let mut b = Vec::new();
            for v in [major, minor, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            let seen_bytes: usize = if i64::from(major) * 10 + i64::from(minor) >= 2 { 8 } else { 4 };
            let len = (12 + seen_bytes + 4 * cfg.weight_param_count()) as i64 + extra;
            b.resize(len.max(0) as usize, 0);
            b
        } else {
            raw
        };
        let r = DarknetWeights::from_bytes(&bytes, &cfg, Path::new("fuzzed.weights"));
        let plausible = (0..1000).contains(&major) && (0..1000).contains(&minor);
        match r {
            Ok(w) => {
                prop_assert!(plausible || !structured);
                prop_assert_eq!(w.layers.len(), cfg.layers.len());
                let header = w.header.bytes;
                prop_assert_eq!(bytes.len(), header + 4 * cfg.weight_param_count());
            }
            Err(e) => {
                prop_assert!(e.to_string().contains("fuzzed.weights"), "{}", e);
                prop_assert!(!(structured && plausible && extra == 0), "{}", e);
            }
        }
    }
}

/// Parses `text`, expecting a refusal whose message contains every one of `needles`.
fn refused(text: &str, needles: &[&str]) {
    let result = std::panic::catch_unwind(|| DarknetConfig::parse(text, Path::new("crafted.cfg")));
    let msg = match result {
        Ok(Ok(cfg)) => panic!("accepted with {} weights: {text}", cfg.weight_param_count()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("the parser panicked on: {text}"),
    };
    for n in needles.iter().chain(&["crafted.cfg"]) {
        assert!(msg.contains(n), "{msg} lacks {n:?}");
    }
}

const NET: &str = "[net]\nwidth=416\nheight=416\nchannels=3\n";

/// Found by `fuzz_cfg_real_mutations` (`size=2147483647` inserted into a convolutional
/// section): the cfg was accepted and sizing its weights file panicked with "attempt to
/// multiply with overflow".
#[test]
fn fuzz_regression_huge_kernel_is_refused() {
    refused(
        &format!("{NET}[convolutional]\nfilters=16\nsize=2147483647\npad=1\nactivation=leaky\n"),
        &["layer 0", "weights"],
    );
    // Darknet's int limit: 2^31 - 1 weights is the most a kernel may have.
    let ok = "[net]\nwidth=1\nheight=1\nchannels=1\n\
              [convolutional]\nfilters=2147483647\nsize=1\nactivation=linear\n";
    let cfg = DarknetConfig::parse(ok, Path::new("ok.cfg")).unwrap();
    assert_eq!(cfg.weight_param_count(), 2 * 2147483647);
    refused(&ok.replace("channels=1", "channels=2"), &["weights"]);
}

/// Found by `fuzz_cfg_small_mutations` (maxpool `padding=18446744073709551615`): the parser
/// panicked with "attempt to add with overflow"; likewise a convolution's `2 * padding`.
#[test]
fn fuzz_regression_huge_padding_is_refused() {
    refused(
        &format!("{NET}[maxpool]\nsize=2\nstride=2\npadding=18446744073709551615\n"),
        &["layer 0 [maxpool]", "padding"],
    );
    refused(
        &format!(
            "{NET}[convolutional]\nfilters=1\nsize=3\npadding=9223372036854775808\nactivation=linear\n"
        ),
        &["layer 0 [convolutional]", "padding"],
    );
}

/// Found by `fuzz_cfg_small_mutations`, whose process was killed for memory: a maxpool whose
/// padding is far larger than its input gives a small output, but the forward pass pads the
/// input by that much first (an 8x8 input with `padding=1048576` asked for 4.4 TB).
#[test]
fn fuzz_regression_maxpool_padding_beyond_the_input_is_refused() {
    refused(
        &format!("{NET}[maxpool]\nsize=2\nstride=2147483647\npadding=2147483647\n"),
        &["layer 0 [maxpool]", "padded input"],
    );
    // Darknet's usual padding (size - 1) is fine.
    let cfg = DarknetConfig::parse(
        &format!("{NET}[maxpool]\nsize=2\nstride=1\n"),
        Path::new("ok.cfg"),
    )
    .unwrap();
    assert_eq!(cfg.shapes[0].width, 416);
}

/// Upsampling, routes and the input itself may not outgrow Darknet's int-sized outputs.
#[test]
fn fuzz_regression_overflowing_shapes_are_refused() {
    refused(
        &format!("{NET}[maxpool]\nsize=1\nstride=1\n[upsample]\nstride=9223372036854775807\n"),
        &["layer 1 [upsample]", "values"],
    );
    refused(
        "[net]\nwidth=4294967296\nheight=4294967296\nchannels=3\n[maxpool]\n",
        &["input", "values"],
    );
    let wide = "[net]\nwidth=1\nheight=1\nchannels=1\n\
                [convolutional]\nfilters=2000000000\nsize=1\nactivation=linear\n\
                [route]\nlayers=-1,-1\n";
    refused(wide, &["layer 1 [route]", "values"]);
}

/// A `[yolo]` head whose `classes` overflow `mask.len() * (5 + classes)`, or whose anchors are
/// not finite positive numbers, is refused.
#[test]
fn fuzz_regression_yolo_classes_and_anchors() {
    let head = |classes: &str, anchors: &str| {
        format!(
            "[net]\nwidth=8\nheight=8\nchannels=3\n\
             [convolutional]\nfilters=21\nsize=1\nactivation=linear\n\
             [yolo]\nmask=0,1,2\nanchors={anchors}\nclasses={classes}\n"
        )
    };
    let ok = DarknetConfig::parse(&head("2", "1,2, 3,4, 5,6"), Path::new("ok.cfg")).unwrap();
    assert_eq!(ok.yolo_layers()[0].1.masked_anchors()[2], (5.0, 6.0));
    refused(&head("18446744073709551615", "1,2, 3,4, 5,6"), &["classes"]);
    refused(
        &head("2", "1,2, nan,4, 5,6"),
        &["anchors must be finite numbers > 0"],
    );
    refused(
        &head("2", "1,2, 3,inf, 5,6"),
        &["anchors must be finite numbers > 0"],
    );
    refused(
        &head("2", "1,2, 3,-4, 5,6"),
        &["anchors must be finite numbers > 0"],
    );
}

/// The unmodified real cfg is accepted by the bounded parser, and its weights file (when the
/// asset cache has it) has exactly the size the cfg implies: 20 header bytes and 8,858,734
/// f32 values for YOLOv3-tiny.
#[test]
fn fuzz_baseline_real_cfg_sizes_its_weights() {
    let cfg = DarknetConfig::parse(&real_cfg(), Path::new("yolov3-tiny.cfg")).unwrap();
    assert_eq!(cfg.yolo_layers().len(), 2);
    let weights = crate::common::assets_root().join("yolov3-tiny/yolov3-tiny.weights");
    if let Ok(meta) = std::fs::metadata(&weights) {
        assert_eq!(cfg.weight_param_count(), 8_858_734);
        assert_eq!(meta.len(), 20 + 4 * 8_858_734);
    }
}
