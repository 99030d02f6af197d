//! Parser for Darknet `.cfg` network descriptions.
//!
//! Supports the layer types YOLOv3-tiny uses: `[convolutional]`, `[maxpool]`, `[route]`,
//! `[upsample]` and `[yolo]`. Anything else is an error naming the section, so a cfg that this
//! crate cannot run is rejected when it is loaded, not halfway through a forward pass. The parse
//! also infers every layer's output shape, which the weights reader needs for its size check.
//!
//! Sizes are checked, never left to overflow: the input and every layer's output may hold at
//! most `i32::MAX` values (channels × height × width), and so may a convolution's kernel
//! (filters × channels × size²), because Darknet keeps both in C `int`s (`l.outputs`,
//! `l.nweights` in `src/parser.c`): a larger cfg does not run in the reference implementation
//! either. A maxpool's padded input, which the forward pass materialises, has the same bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, VisionError};

/// Largest number of values in a layer's output or a convolution's kernel (Darknet's `int`).
const MAX_LAYER_ELEMENTS: usize = i32::MAX as usize;

/// Activation of a convolutional layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x > 0 ? x : 0.1 * x`.
    Leaky,
    /// Identity.
    Linear,
}

/// A `[convolutional]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    /// Output channels.
    pub filters: usize,
    /// Input channels (inferred from the previous layer).
    pub in_channels: usize,
    /// Kernel size (square).
    pub size: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side (`size / 2` when `pad=1`).
    pub padding: usize,
    /// Whether the layer has batch-norm parameters (then its `biases` are the batch-norm beta).
    pub batch_normalize: bool,
    /// Activation.
    pub activation: Activation,
}

impl ConvSpec {
    /// Number of f32 values this layer reads from a `.weights` file (saturating at
    /// `usize::MAX` for a spec that was not built by [`DarknetConfig::parse`], which bounds it).
    pub fn param_count(&self) -> usize {
        let bn = if self.batch_normalize {
            self.filters.saturating_mul(3)
        } else {
            0
        };
        self.filters
            .saturating_add(bn)
            .saturating_add(self.kernel_len())
    }

    /// Kernel values, `filters * in_channels * size * size` (saturating).
    fn kernel_len(&self) -> usize {
        self.filters
            .saturating_mul(self.in_channels)
            .saturating_mul(self.size)
            .saturating_mul(self.size)
    }
}

/// A `[maxpool]` section, with Darknet's padding rule.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPoolSpec {
    /// Window size (square).
    pub size: usize,
    /// Stride.
    pub stride: usize,
    /// Darknet `padding` (default `size - 1`); the window origin is `-(padding / 2)`.
    pub padding: usize,
}

/// A `[yolo]` section: which anchors this head predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct YoloSpec {
    /// Indices into `anchors`, one per anchor slot of the head, in channel order.
    pub mask: Vec<usize>,
    /// All anchors `(w, h)` of the cfg, in network-input pixels.
    pub anchors: Vec<(f32, f32)>,
    /// Number of classes.
    pub classes: usize,
}

impl YoloSpec {
    /// The anchors of this head, in mask order.
    pub fn masked_anchors(&self) -> Vec<(f32, f32)> {
        self.mask.iter().map(|&m| self.anchors[m]).collect()
    }
}

/// One layer of the network.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// `[convolutional]`.
    Convolutional(ConvSpec),
    /// `[maxpool]`.
    MaxPool(MaxPoolSpec),
    /// `[route]`: channel concatenation of the listed layers (absolute indices).
    Route {
        /// Source layers, absolute indices, in concatenation order.
        layers: Vec<usize>,
    },
    /// `[upsample]`: nearest-neighbour upsampling.
    Upsample {
        /// Scale factor.
        stride: usize,
    },
    /// `[yolo]`: a detection head (identity in the forward pass).
    Yolo(YoloSpec),
}

/// Output shape of a layer, channels x height x width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

impl LayerShape {
    /// `channels * height * width`, or `None` beyond [`MAX_LAYER_ELEMENTS`].
    fn elements(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
            .filter(|&n| n <= MAX_LAYER_ELEMENTS)
    }
}

/// A parsed and shape-checked Darknet network.
#[derive(Debug, Clone, PartialEq)]
pub struct DarknetConfig {
    /// Network input width (`[net] width`).
    pub width: usize,
    /// Network input height (`[net] height`).
    pub height: usize,
    /// Network input channels (`[net] channels`).
    pub channels: usize,
    /// Layers in cfg order (index 0 is the first section after `[net]`).
    pub layers: Vec<LayerSpec>,
    /// Output shape of every layer.
    pub shapes: Vec<LayerShape>,
}

struct Section {
    name: String,
    line: usize,
    options: BTreeMap<String, (usize, String)>,
}

impl DarknetConfig {
    /// Reads and parses a cfg file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(VisionError::io("cannot read", path))?;
        Self::parse(&text, path)
    }

    /// Parses cfg text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| VisionError::Cfg {
            path: path.to_path_buf(),
            message,
        };
        let mut sections: Vec<Section> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| err(format!("line {lineno}: unterminated section header")))?;
                sections.push(Section {
                    name: name.trim().to_string(),
                    line: lineno,
                    options: BTreeMap::new(),
                });
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("line {lineno}: expected key=value, got {line:?}")))?;
            let section = sections
                .last_mut()
                .ok_or_else(|| err(format!("line {lineno}: option before the first section")))?;
            section
                .options
                .insert(key.trim().to_string(), (lineno, value.trim().to_string()));
        }
        let mut iter = sections.into_iter();
        let net = iter.next().ok_or_else(|| err("no sections".to_string()))?;
        if net.name != "net" && net.name != "network" {
            return Err(err(format!(
                "line {}: first section is [{}], expected [net]",
                net.line, net.name
            )));
        }
        let width = get_usize(&net, "width", None, path)?;
        let height = get_usize(&net, "height", None, path)?;
        let channels = get_usize(&net, "channels", Some(3), path)?;
        if width == 0 || height == 0 || channels == 0 {
            return Err(err(
                "[net] width, height and channels must be > 0".to_string()
            ));
        }
        let input = LayerShape {
            channels,
            height,
            width,
        };
        if input.elements().is_none() {
            return Err(err(format!(
                "[net] input {width}x{height}x{channels} has more than {MAX_LAYER_ELEMENTS} values"
            )));
        }

        let mut layers = Vec::new();
        let mut shapes: Vec<LayerShape> = Vec::new();
        for section in iter {
            let index = layers.len();
            let prev = shapes.last().copied().unwrap_or(input);
            let lerr = |m: String| {
                err(format!(
                    "layer {index} [{}] (line {}): {m}",
                    section.name, section.line
                ))
            };
            let (layer, shape) = match section.name.as_str() {
                "convolutional" | "conv" => {
                    let filters = get_usize(&section, "filters", Some(1), path)?;
                    let size = get_usize(&section, "size", Some(1), path)?;
                    let stride = get_usize(&section, "stride", Some(1), path)?;
                    let pad = get_usize(&section, "pad", Some(0), path)?;
                    let padding = if pad != 0 {
                        size / 2
                    } else {
                        get_usize(&section, "padding", Some(0), path)?
                    };
                    let groups = get_usize(&section, "groups", Some(1), path)?;
                    if groups != 1 {
                        return Err(lerr(format!("groups={groups} is not supported")));
                    }
                    if filters == 0 || size == 0 || stride == 0 {
                        return Err(lerr("filters, size and stride must be > 0".to_string()));
                    }
                    let batch_normalize =
                        get_usize(&section, "batch_normalize", Some(0), path)? != 0;
                    let activation = match get_str(&section, "activation").unwrap_or("logistic") {
                        "leaky" => Activation::Leaky,
                        "linear" => Activation::Linear,
                        other => {
                            return Err(lerr(format!("activation {other:?} is not supported")))
                        }
                    };
                    // Darknet's `(n + 2 * pad - size) / stride + 1`.
                    let out = |n: usize| {
                        padding
                            .checked_mul(2)
                            .and_then(|p| p.checked_add(n))
                            .ok_or_else(|| lerr(format!("padding={padding} is too large")))?
                            .checked_sub(size)
                            .map(|v| v / stride + 1)
                            .ok_or_else(|| lerr("kernel larger than its padded input".to_string()))
                    };
                    let (out_h, out_w) = (out(prev.height)?, out(prev.width)?);
                    let spec = ConvSpec {
                        filters,
                        in_channels: prev.channels,
                        size,
                        stride,
                        padding,
                        batch_normalize,
                        activation,
                    };
                    if spec.kernel_len() > MAX_LAYER_ELEMENTS {
                        return Err(lerr(format!(
                            "kernel of {filters} filters x {} channels x {size}x{size} has more \
                             than {MAX_LAYER_ELEMENTS} weights",
                            prev.channels
                        )));
                    }
                    (
                        LayerSpec::Convolutional(spec),
                        LayerShape {
                            channels: filters,
                            height: out_h,
                            width: out_w,
                        },
                    )
                }
                "maxpool" | "max" => {
                    let size = get_usize(&section, "size", Some(2), path)?;
                    let stride = get_usize(&section, "stride", Some(size), path)?;
                    let padding =
                        get_usize(&section, "padding", Some(size.saturating_sub(1)), path)?;
                    if size == 0 || stride == 0 {
                        return Err(lerr("size and stride must be > 0".to_string()));
                    }
                    let out = |n: usize| {
                        n.checked_add(padding)
                            .ok_or_else(|| lerr(format!("padding={padding} is too large")))?
                            .checked_sub(size)
                            .map(|v| v / stride + 1)
                            .ok_or_else(|| lerr("window larger than its padded input".to_string()))
                    };
                    let padded = LayerShape {
                        channels: prev.channels,
                        height: prev.height.saturating_add(padding),
                        width: prev.width.saturating_add(padding),
                    };
                    if padded.elements().is_none() {
                        return Err(lerr(format!(
                            "padding={padding} makes the padded input larger than \
                             {MAX_LAYER_ELEMENTS} values"
                        )));
                    }
                    (
                        LayerSpec::MaxPool(MaxPoolSpec {
                            size,
                            stride,
                            padding,
                        }),
                        LayerShape {
                            channels: prev.channels,
                            height: out(prev.height)?,
                            width: out(prev.width)?,
                        },
                    )
                }
                "route" => {
                    let raw = get_str(&section, "layers")
                        .ok_or_else(|| lerr("missing layers=".to_string()))?;
                    let mut sources = Vec::new();
                    for item in raw.split(',') {
                        let rel: i64 = item
                            .trim()
                            .parse()
                            .map_err(|_| lerr(format!("bad layer index {item:?}")))?;
                        let abs = if rel < 0 { index as i64 + rel } else { rel };
                        if abs < 0 || abs as usize >= index {
                            return Err(lerr(format!(
                                "layer index {rel} points outside layers 0..{index}"
                            )));
                        }
                        sources.push(abs as usize);
                    }
                    let first = shapes[sources[0]];
                    let mut channels: usize = 0;
                    for &s in &sources {
                        let sh = shapes[s];
                        if sh.height != first.height || sh.width != first.width {
                            return Err(lerr(format!(
                                "layers {sources:?} have different spatial sizes"
                            )));
                        }
                        channels = channels.checked_add(sh.channels).ok_or_else(|| {
                            lerr(format!("layers {sources:?} have too many channels"))
                        })?;
                    }
                    (
                        LayerSpec::Route { layers: sources },
                        LayerShape {
                            channels,
                            height: first.height,
                            width: first.width,
                        },
                    )
                }
                "upsample" => {
                    let stride = get_usize(&section, "stride", Some(2), path)?;
                    if stride == 0 {
                        return Err(lerr("stride must be > 0".to_string()));
                    }
                    (
                        LayerSpec::Upsample { stride },
                        LayerShape {
                            channels: prev.channels,
                            height: prev.height.saturating_mul(stride),
                            width: prev.width.saturating_mul(stride),
                        },
                    )
                }
                "yolo" => {
                    let classes = get_usize(&section, "classes", Some(20), path)?;
                    let anchors_raw = get_list::<f32>(&section, "anchors", path)?;
                    if anchors_raw.len() % 2 != 0 || anchors_raw.is_empty() {
                        return Err(lerr(
                            "anchors must be a non-empty list of w,h pairs".to_string(),
                        ));
                    }
                    let anchors: Vec<(f32, f32)> =
                        anchors_raw.chunks(2).map(|c| (c[0], c[1])).collect();
                    let mask = if get_str(&section, "mask").is_some() {
                        get_list::<usize>(&section, "mask", path)?
                    } else {
                        (0..anchors.len()).collect()
                    };
                    let spec = YoloSpec {
                        mask,
                        anchors,
                        classes,
                    };
                    validate_yolo(&spec, prev).map_err(lerr)?;
                    (LayerSpec::Yolo(spec), prev)
                }
                other => return Err(lerr(format!("section type [{other}] is not supported"))),
            };
            if shape.elements().is_none() {
                return Err(lerr(format!(
                    "output {}x{}x{} has more than {MAX_LAYER_ELEMENTS} values",
                    shape.width, shape.height, shape.channels
                )));
            }
            layers.push(layer);
            shapes.push(shape);
        }
        if layers.is_empty() {
            return Err(err("no layers after [net]".to_string()));
        }
        Ok(Self {
            width,
            height,
            channels,
            layers,
            shapes,
        })
    }

    /// The `[yolo]` layers as `(layer index, spec)`, in cfg order.
    pub fn yolo_layers(&self) -> Vec<(usize, &YoloSpec)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l {
                LayerSpec::Yolo(y) => Some((i, y)),
                _ => None,
            })
            .collect()
    }

    /// Replaces the mask of the `[yolo]` layer at `layer` (used to apply a known cfg fix,
    /// e.g. YOLOv3-tiny's second head trained with mask `1,2,3`).
    pub fn override_mask(&mut self, layer: usize, mask: Vec<usize>) -> Result<()> {
        let input = if layer == 0 {
            None
        } else {
            self.shapes.get(layer - 1).copied()
        };
        match (self.layers.get_mut(layer), input) {
            (Some(LayerSpec::Yolo(spec)), Some(input)) => {
                let mut new = spec.clone();
                new.mask = mask;
                validate_yolo(&new, input).map_err(|m| VisionError::Cfg {
                    path: PathBuf::from("<mask override>"),
                    message: format!("layer {layer}: {m}"),
                })?;
                *spec = new;
                Ok(())
            }
            _ => Err(VisionError::Cfg {
                path: PathBuf::from("<mask override>"),
                message: format!("layer {layer} is not a [yolo] layer"),
            }),
        }
    }

    /// Number of f32 values a matching `.weights` file holds after its header (saturating at
    /// `usize::MAX`, which no file matches).
    pub fn weight_param_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerSpec::Convolutional(c) => c.param_count(),
                _ => 0,
            })
            .fold(0, usize::saturating_add)
    }
}

fn validate_yolo(spec: &YoloSpec, input: LayerShape) -> std::result::Result<(), String> {
    if spec.mask.is_empty() {
        return Err("empty mask".to_string());
    }
    if let Some(&bad) = spec.mask.iter().find(|&&m| m >= spec.anchors.len()) {
        return Err(format!(
            "mask index {bad} out of range for {} anchors",
            spec.anchors.len()
        ));
    }
    if let Some(&(w, h)) = spec
        .anchors
        .iter()
        .find(|&&(w, h)| !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0))
    {
        return Err(format!(
            "anchor ({w}, {h}): anchors must be finite numbers > 0"
        ));
    }
    let expected = spec
        .classes
        .checked_add(5)
        .and_then(|per_anchor| per_anchor.checked_mul(spec.mask.len()))
        .ok_or_else(|| format!("classes={} is too large", spec.classes))?;
    if input.channels != expected {
        return Err(format!(
            "input has {} channels, expected {} anchors x (5 + {} classes) = {expected}",
            input.channels,
            spec.mask.len(),
            spec.classes
        ));
    }
    Ok(())
}

fn get_str<'a>(section: &'a Section, key: &str) -> Option<&'a str> {
    section.options.get(key).map(|(_, v)| v.as_str())
}

fn get_usize(section: &Section, key: &str, default: Option<usize>, path: &Path) -> Result<usize> {
    match section.options.get(key) {
        Some((line, v)) => v.parse().map_err(|_| VisionError::Cfg {
            path: path.to_path_buf(),
            message: format!(
                "line {line}: [{}] {key}={v:?} is not a non-negative integer",
                section.name
            ),
        }),
        None => default.ok_or_else(|| VisionError::Cfg {
            path: path.to_path_buf(),
            message: format!(
                "[{}] (line {}) is missing {key}=",
                section.name, section.line
            ),
        }),
    }
}

fn get_list<T: std::str::FromStr>(section: &Section, key: &str, path: &Path) -> Result<Vec<T>> {
    let (line, raw) = section.options.get(key).ok_or_else(|| VisionError::Cfg {
        path: path.to_path_buf(),
        message: format!(
            "[{}] (line {}) is missing {key}=",
            section.name, section.line
        ),
    })?;
    raw.split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| VisionError::Cfg {
                path: path.to_path_buf(),
                message: format!("line {line}: [{}] {key}: bad number {s:?}", section.name),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "[net]\nwidth=8\nheight=8\nchannels=3\n\
        [convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n\
        [maxpool]\nsize=2\nstride=1\n\
        [convolutional]\nsize=1\nstride=1\npad=1\nfilters=21\nactivation=linear\n\
        [yolo]\nmask = 0,1,2\nanchors = 1,2, 3,4, 5,6\nclasses=2\nnum=3\n\
        [route]\nlayers = -3\n\
        [upsample]\nstride=2\n\
        [route]\nlayers=-1, 5\n";

    #[test]
    fn parses_shapes_and_padding() {
        let cfg = DarknetConfig::parse(TINY, Path::new("tiny.cfg")).unwrap();
        assert_eq!(cfg.layers.len(), 7);
        match &cfg.layers[2] {
            LayerSpec::Convolutional(c) => {
                assert_eq!(c.padding, 0, "1x1 conv with pad=1 has padding 0");
                assert_eq!(c.in_channels, 4);
                assert_eq!(c.param_count(), 21 + 21 * 4);
            }
            other => panic!("unexpected {other:?}"),
        }
        // stride-1 maxpool keeps the size
        assert_eq!(cfg.shapes[1].width, 8);
        assert_eq!(cfg.layers[4], LayerSpec::Route { layers: vec![1] });
        assert_eq!(cfg.shapes[5].height, 16);
        assert_eq!(cfg.shapes[6].channels, 8);
        // route of an upsampled 16x16 and the 8x8 conv is a shape error
        let bad = TINY.replace("layers=-1, 5", "layers=-1, 0");
        assert!(DarknetConfig::parse(&bad, Path::new("x")).is_err());
        assert_eq!(cfg.weight_param_count(), (4 + 12 + 4 * 3 * 9) + (21 + 84));
    }

    #[test]
    fn rejects_unknown_sections_and_bad_values() {
        let e = DarknetConfig::parse(
            "[net]\nwidth=8\nheight=8\n[shortcut]\nfrom=-3\n",
            Path::new("a.cfg"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[shortcut]") && e.contains("a.cfg"), "{e}");
        let e = DarknetConfig::parse(
            "[net]\nwidth=eight\nheight=8\n[maxpool]\n",
            Path::new("a.cfg"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("width"), "{e}");
        let e = DarknetConfig::parse(
            &TINY.replace("mask = 0,1,2", "mask = 0,1,7"),
            Path::new("a"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mask index 7"), "{e}");
    }

    #[test]
    fn mask_override_is_validated() {
        let mut cfg = DarknetConfig::parse(TINY, Path::new("tiny.cfg")).unwrap();
        cfg.override_mask(3, vec![2, 1, 0]).unwrap();
        assert_eq!(cfg.yolo_layers()[0].1.masked_anchors()[0], (5.0, 6.0));
        assert!(cfg.override_mask(2, vec![0, 1, 2]).is_err());
        assert!(cfg.override_mask(3, vec![0, 1]).is_err());
    }
}
