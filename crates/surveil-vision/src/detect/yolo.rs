//! YOLO (Darknet) detector: letterbox, batched forward, head decoding with the cfg's anchors and
//! masks, confidence threshold, class filter, class-wise NMS, boxes in frame pixels.
//!
//! Scores follow Darknet: `sigmoid(objectness) * sigmoid(class logit)`, and a box yields a
//! detection for **every** class whose score is `> conf_threshold` (not only the argmax class).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::letterbox::{letterbox_into, LetterboxGeometry};
use super::{nms_per_class, Candidate, DetectOutput, DetectTimings, Detection, Detector};
use crate::darknet::{DarknetConfig, DarknetNetwork, DarknetWeights};
use crate::error::{Result, VisionError};
use crate::frame::Frame;
use crate::geometry::BBox;

/// Replaces the anchor mask of one `[yolo]` layer of the cfg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskOverride {
    /// Layer index of the `[yolo]` section (0 = first section after `[net]`).
    pub layer: usize,
    /// The mask to use.
    pub mask: Vec<usize>,
}

/// Where the model files are and how to post-process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YoloOptions {
    /// Darknet `.cfg`.
    pub cfg: PathBuf,
    /// Darknet `.weights`.
    pub weights: PathBuf,
    /// Class names, one per line (`coco.names`).
    pub names: PathBuf,
    /// A detection needs `score > conf_threshold`.
    #[serde(default = "default_conf")]
    pub conf_threshold: f32,
    /// NMS drops a box whose IoU with a kept box of its class is `> nms_iou`.
    #[serde(default = "default_nms")]
    pub nms_iou: f32,
    /// Class names to keep; empty keeps all classes.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    /// Mask fixes applied to the cfg after parsing.
    #[serde(default)]
    pub mask_overrides: Vec<MaskOverride>,
}

fn default_conf() -> f32 {
    0.25
}
fn default_nms() -> f32 {
    0.45
}
/// The classes a retail-surveillance run keeps by default: person, backpack, handbag, suitcase.
pub fn default_classes() -> Vec<String> {
    ["person", "backpack", "handbag", "suitcase"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl YoloOptions {
    /// Options from the `detection` section of a validated system config, with the model files
    /// of `detection.model` in `model_dir` (for the asset cache:
    /// `paths.asset(detection.model.asset_folder())`).
    pub fn from_config(c: &surveil_config::DetectionConfig, model_dir: &Path) -> Self {
        let files = match c.model {
            surveil_config::Detector::Yolov3Tiny => Self::yolov3_tiny(model_dir),
        };
        Self {
            conf_threshold: c.confidence as f32,
            nms_iou: c.iou as f32,
            classes: c.classes.clone(),
            ..files
        }
    }

    /// Options for the YOLOv3-tiny files in `dir` (`yolov3-tiny.cfg`, `yolov3-tiny.weights`,
    /// `coco.names`) with the default thresholds and class filter.
    pub fn yolov3_tiny(dir: &Path) -> Self {
        Self {
            cfg: dir.join("yolov3-tiny.cfg"),
            weights: dir.join("yolov3-tiny.weights"),
            names: dir.join("coco.names"),
            conf_threshold: default_conf(),
            nms_iou: default_nms(),
            classes: default_classes(),
            mask_overrides: Vec::new(),
        }
    }
}

/// Decoding parameters of one `[yolo]` head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadLayout {
    /// Anchors `(w, h)` of the head's slots, in mask order, network-input pixels.
    pub anchors: Vec<(f32, f32)>,
    /// Number of classes.
    pub classes: usize,
    /// Grid width (columns).
    pub grid_w: usize,
    /// Grid height (rows).
    pub grid_h: usize,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes one image's raw head (`[anchors * (5 + classes), grid_h, grid_w]`, flattened) into
/// candidates in frame pixels (not clipped), for classes with `keep[c]` and `score > conf`.
pub fn decode_yolo_head(
    head: &[f32],
    layout: &HeadLayout,
    geom: &LetterboxGeometry,
    conf: f32,
    keep: &[bool],
    out: &mut Vec<Candidate>,
) {
    let (gw, gh) = (layout.grid_w, layout.grid_h);
    let cell = gw * gh;
    let stride = 5 + layout.classes;
    let conf = conf as f64;
    for (a, &(aw, ah)) in layout.anchors.iter().enumerate() {
        let base = a * stride * cell;
        let chan = |k: usize, idx: usize| head[base + k * cell + idx] as f64;
        for j in 0..gh {
            for i in 0..gw {
                let idx = j * gw + i;
                let obj = sigmoid(chan(4, idx));
                // score = obj * sigmoid(cls) < obj: nothing can pass.
                if obj <= conf {
                    continue;
                }
                let bx = (i as f64 + sigmoid(chan(0, idx))) / gw as f64 * geom.net_w as f64;
                let by = (j as f64 + sigmoid(chan(1, idx))) / gh as f64 * geom.net_h as f64;
                let bw = chan(2, idx).exp() * aw as f64;
                let bh = chan(3, idx).exp() * ah as f64;
                let (x, y) = geom.to_frame(bx, by);
                let (w, h) = geom.size_to_frame(bw, bh);
                let bbox = BBox::new(
                    (x - w / 2.0) as f32,
                    (y - h / 2.0) as f32,
                    (x + w / 2.0) as f32,
                    (y + h / 2.0) as f32,
                );
                for (c, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                    let score = obj * sigmoid(chan(5 + c, idx));
                    if score > conf {
                        out.push(Candidate {
                            class_id: c,
                            score: score as f32,
                            bbox,
                        });
                    }
                }
            }
        }
    }
}

/// A Darknet YOLO detector (YOLOv3-tiny, or any cfg made of the supported layer types).
///
/// Load it with [`DarknetYolo::on_cpu`] (or [`DarknetYolo::new`] on another candle device) and
/// call [`Detector::detect`] on a batch of frames, or hand it to a
/// [`DetectTrackStream`](crate::DetectTrackStream). Boxes come back in frame pixels.
///
/// ```no_run
/// use surveil_vision::{DarknetYolo, Detector, Frame, YoloOptions};
///
/// // The files `scripts/setup.sh` installs: yolov3-tiny.cfg, .weights and coco.names.
/// let dir = surveil_config::paths::asset("yolov3-tiny");
/// let detector = DarknetYolo::on_cpu(&YoloOptions::yolov3_tiny(&dir))?;
/// let frame = Frame::new(0, std::time::Duration::ZERO, 640, 480, vec![128; 640 * 480 * 3])?;
/// let out = detector.detect(&[&frame])?;
/// for d in &out.detections[0] {
///     println!("{} {:.2} {:?}", detector.class_names()[d.class_id], d.score, d.bbox);
/// }
/// # Ok::<(), surveil_vision::VisionError>(())
/// ```
#[derive(Debug)]
pub struct DarknetYolo {
    net: DarknetNetwork,
    heads: Vec<HeadLayout>,
    names: Vec<String>,
    keep: Vec<bool>,
    conf: f32,
    nms_iou: f32,
    name: String,
}

impl DarknetYolo {
    /// [`new`](Self::new) on the CPU, where surveil runs its detector: no candle types needed.
    ///
    /// Errors: as [`new`](Self::new).
    pub fn on_cpu(options: &YoloOptions) -> Result<Self> {
        Self::new(options, &Device::Cpu)
    }

    /// Loads cfg, weights and names onto `device`, and checks the options.
    ///
    /// Errors: [`VisionError::Io`] (a file cannot be read), [`VisionError::Cfg`] (a malformed
    /// or unsupported cfg, a bad mask override, a names file that does not match the cfg's
    /// classes), [`VisionError::WeightsHeader`] / [`VisionError::WeightsSize`] (weights that do
    /// not fit the cfg), [`VisionError::InvalidOption`] (a threshold outside `[0, 1)`, an
    /// unknown class name), [`VisionError::Tensor`] (building the network on `device`).
    pub fn new(options: &YoloOptions, device: &Device) -> Result<Self> {
        let span = tracing::info_span!("load_detector", cfg = %options.cfg.display());
        let _guard = span.enter();
        let started = Instant::now();
        check_unit("conf_threshold", options.conf_threshold)?;
        check_unit("nms_iou", options.nms_iou)?;
        let mut cfg = DarknetConfig::from_file(&options.cfg)?;
        for o in &options.mask_overrides {
            cfg.override_mask(o.layer, o.mask.clone())?;
        }
        let weights = DarknetWeights::from_file(&options.weights, &cfg)?;
        let names_text = std::fs::read_to_string(&options.names)
            .map_err(VisionError::io("cannot read", &options.names))?;
        let names: Vec<String> = names_text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let mut heads = Vec::new();
        for (layer, spec) in cfg.yolo_layers() {
            if spec.classes != names.len() {
                return Err(VisionError::Cfg {
                    path: options.cfg.clone(),
                    message: format!(
                        "layer {layer}: classes={} but {} has {} names",
                        spec.classes,
                        options.names.display(),
                        names.len()
                    ),
                });
            }
            let shape = cfg.shapes[layer];
            heads.push(HeadLayout {
                anchors: spec.masked_anchors(),
                classes: spec.classes,
                grid_w: shape.width,
                grid_h: shape.height,
            });
        }
        if heads.is_empty() {
            return Err(VisionError::Cfg {
                path: options.cfg.clone(),
                message: "no [yolo] layers".to_string(),
            });
        }
        let keep = class_filter(&options.classes, &names)?;
        let header = weights.header;
        let name = options
            .cfg
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "darknet-yolo".to_string());
        let net = DarknetNetwork::new(cfg, weights, device)?;
        tracing::info!(
            model = %name,
            weights_version = %format!("{}.{}.{}", header.major, header.minor, header.revision),
            seen = header.seen,
            input = %format!("{}x{}", net.config().width, net.config().height),
            classes_kept = keep.iter().filter(|&&k| k).count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "detector loaded"
        );
        Ok(Self {
            net,
            heads,
            names,
            keep,
            conf: options.conf_threshold,
            nms_iou: options.nms_iou,
            name,
        })
    }

    /// Network input size `(width, height)`.
    pub fn input_size(&self) -> (usize, usize) {
        (self.net.config().width, self.net.config().height)
    }

    /// The decoding layout of each head, in cfg order.
    pub fn head_layouts(&self) -> &[HeadLayout] {
        &self.heads
    }

    /// Letterboxes the frames into one `[N, 3, H, W]` input tensor.
    pub fn preprocess(&self, frames: &[&Frame]) -> Result<(Tensor, Vec<LetterboxGeometry>)> {
        let (nw, nh) = self.input_size();
        let per = 3 * nw * nh;
        let mut buf = vec![0f32; per * frames.len()];
        let mut geoms = Vec::with_capacity(frames.len());
        for (f, chunk) in frames.iter().zip(buf.chunks_exact_mut(per)) {
            f.validate()?;
            let g = LetterboxGeometry::new(f.width as usize, f.height as usize, nw, nh);
            letterbox_into(&f.data, &g, chunk);
            geoms.push(g);
        }
        let t = Tensor::from_vec(buf, (frames.len(), 3, nh, nw), self.net.device())
            .map_err(VisionError::tensor("building the input batch"))?;
        Ok((t, geoms))
    }

    /// Raw head outputs (inputs of the `[yolo]` layers) for an `[N, 3, H, W]` input.
    pub fn forward_heads(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        self.net.forward(input)
    }

    /// The underlying network (per-layer profiling, cfg).
    pub fn network(&self) -> &DarknetNetwork {
        &self.net
    }

    /// Decodes raw heads of a batch into detections per image (NMS applied, boxes clipped).
    pub fn decode(
        &self,
        heads: &[Tensor],
        geoms: &[LetterboxGeometry],
    ) -> Result<Vec<Vec<Detection>>> {
        let flat: Vec<Vec<f32>> = heads
            .iter()
            .map(|h| {
                h.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(VisionError::tensor("reading head outputs"))
            })
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(geoms.len());
        for (n, g) in geoms.iter().enumerate() {
            let mut cands = Vec::new();
            for (layout, data) in self.heads.iter().zip(&flat) {
                let per =
                    layout.anchors.len() * (5 + layout.classes) * layout.grid_w * layout.grid_h;
                let slice =
                    data.get(n * per..(n + 1) * per)
                        .ok_or_else(|| VisionError::Tensor {
                            context: "reading head outputs".to_string(),
                            source: candle_core::Error::Msg(format!(
                                "head has {} values, image {n} needs {per} more",
                                data.len()
                            )),
                        })?;
                decode_yolo_head(slice, layout, g, self.conf, &self.keep, &mut cands);
            }
            let (fw, fh) = (g.frame_w as f32, g.frame_h as f32);
            out.push(
                nms_per_class(cands, self.nms_iou)
                    .into_iter()
                    .map(|c| Detection {
                        class_id: c.class_id,
                        score: c.score,
                        bbox: c.bbox.clipped(fw, fh),
                    })
                    .collect(),
            );
        }
        Ok(out)
    }
}

impl Detector for DarknetYolo {
    fn name(&self) -> &str {
        &self.name
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    fn detect(&self, frames: &[&Frame]) -> Result<DetectOutput> {
        if frames.is_empty() {
            return Ok(DetectOutput::default());
        }
        let t0 = Instant::now();
        let (input, geoms) = self.preprocess(frames)?;
        let t1 = Instant::now();
        let heads = self.forward_heads(&input)?;
        let t2 = Instant::now();
        let detections = self.decode(&heads, &geoms)?;
        let t3 = Instant::now();
        Ok(DetectOutput {
            detections,
            timings: DetectTimings {
                preprocess: t1 - t0,
                forward: t2 - t1,
                postprocess: t3 - t2,
            },
        })
    }
}

fn check_unit(name: &'static str, v: f32) -> Result<()> {
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(VisionError::InvalidOption {
            name,
            value: v.to_string(),
            message: "must be in [0, 1)".to_string(),
        })
    }
}

fn class_filter(wanted: &[String], names: &[String]) -> Result<Vec<bool>> {
    if wanted.is_empty() {
        return Ok(vec![true; names.len()]);
    }
    let mut keep = vec![false; names.len()];
    for w in wanted {
        let idx = names
            .iter()
            .position(|n| n == w)
            .ok_or_else(|| VisionError::InvalidOption {
                name: "classes",
                value: w.clone(),
                message: format!("unknown class; the model knows: {}", names.join(", ")),
            })?;
        keep[idx] = true;
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_one_cell() {
        // 1 anchor, 2 classes, 2x2 grid; only cell (row 1, col 0) is confident.
        let layout = HeadLayout {
            anchors: vec![(10.0, 20.0)],
            classes: 2,
            grid_w: 2,
            grid_h: 2,
        };
        let mut head = vec![-10f32; 7 * 4];
        let idx = 2; // j=1, i=0
        head[idx] = 0.0; // tx -> 0.5
        head[4 + idx] = 0.0; // ty -> 0.5
        head[2 * 4 + idx] = 0.0; // tw -> exp(0) = 1
        head[3 * 4 + idx] = 2f32.ln(); // th -> 2
        head[4 * 4 + idx] = 5.0; // objectness
        head[5 * 4 + idx] = 5.0; // class 0 passes
        head[6 * 4 + idx] = 0.0; // class 1: score ~0.5 passes too
        let geom = LetterboxGeometry::new(8, 4, 4, 4); // new 4x2, pad_y 1, scale 2
        let mut out = Vec::new();
        decode_yolo_head(&head, &layout, &geom, 0.25, &[true, true], &mut out);
        assert_eq!(out.len(), 2, "every class above the threshold");
        // centre in net px: (0.5/2*4, 1.5/2*4) = (1, 3) -> frame ((1-0)*2, (3-1)*2) = (2, 4)
        let b = out[0].bbox;
        assert!((b.x1 - (2.0 - 10.0)).abs() < 1e-4 && (b.x2 - 12.0).abs() < 1e-4);
        assert!((b.y1 - (4.0 - 40.0)).abs() < 1e-4 && (b.y2 - 44.0).abs() < 1e-4);
        let s = 1.0 / (1.0 + (-5f64).exp());
        assert!((out[0].score as f64 - s * s).abs() < 1e-6);
        let mut filtered = Vec::new();
        decode_yolo_head(&head, &layout, &geom, 0.25, &[false, true], &mut filtered);
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].class_id, 1);
    }

    #[test]
    fn options_from_system_config() {
        let c = surveil_config::DetectionConfig::default();
        let o = YoloOptions::from_config(&c, Path::new("/m"));
        assert_eq!(o.weights, Path::new("/m/yolov3-tiny.weights"));
        assert_eq!(o.conf_threshold as f64, c.confidence);
        assert_eq!(o.classes, c.classes);
        // An unknown detector name is refused when the configuration is validated (the
        // `detection.model` rule of surveil-config); a `DetectionConfig` names a known one.
    }

    #[test]
    fn unknown_class_name_is_an_error() {
        let names = vec!["person".to_string(), "car".to_string()];
        let e = class_filter(&["persn".to_string()], &names)
            .unwrap_err()
            .to_string();
        assert!(e.contains("persn") && e.contains("person, car"), "{e}");
        assert_eq!(class_filter(&[], &names).unwrap(), vec![true, true]);
    }
}
