//! A Darknet network (from a parsed cfg and its weights) as candle tensors, with a batched
//! forward pass that returns the raw inputs of every `[yolo]` layer.

use candle_core::{DType, Device, Tensor};

use super::cfg::{Activation, DarknetConfig, LayerSpec, MaxPoolSpec};
use super::weights::DarknetWeights;
use crate::error::{Result, VisionError};

/// A convolution with folded batch norm.
#[derive(Debug)]
pub struct Conv {
    /// OIHW kernel (for the candle path on non-CPU devices).
    weight: Tensor,
    /// `[O, I*K*K]` kernel for the CPU im2col path.
    weight_2d: Tensor,
    /// `[1, O, 1, 1]` bias.
    bias: Tensor,
    bias_vec: Vec<f32>,
    in_channels: usize,
    size: usize,
    padding: usize,
    stride: usize,
    activation: Activation,
}

impl Conv {
    /// Applies the convolution, bias and activation.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() {
            return self.forward_cpu(x);
        }
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?;
        match self.activation {
            Activation::Linear => Ok(y),
            // Darknet leaky: x > 0 ? x : 0.1 x, which equals max(x, 0.1 x).
            Activation::Leaky => y.maximum(&(&y * 0.1)?),
        }
    }

    /// CPU path: im2col (row copies for stride 1) + one GEMM per image, then bias and
    /// activation fused into the copy of the result (candle's generic conv2d spends most of
    /// its time outside the GEMM on these shapes).
    fn forward_cpu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (k, p, s) = (self.size, self.padding, self.stride);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let plane = oh * ow;
        let out_c = self.bias_vec.len();
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * out_c * plane];
        let rows = c * k * k;
        for b in 0..n {
            let img = &input[b * c * h * w..(b + 1) * c * h * w];
            let col = if k == 1 && p == 0 && s == 1 {
                img.to_vec()
            } else {
                im2col(img, c, h, w, k, p, s, oh, ow)
            };
            let col = Tensor::from_vec(col, (rows, plane), x.device())?;
            let y = self
                .weight_2d
                .matmul(&col)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let dst = &mut out[b * out_c * plane..(b + 1) * out_c * plane];
            for (o, (d, r)) in dst
                .chunks_exact_mut(plane)
                .zip(y.chunks_exact(plane))
                .enumerate()
            {
                let bias = self.bias_vec[o];
                match self.activation {
                    Activation::Linear => d.iter_mut().zip(r).for_each(|(d, r)| *d = r + bias),
                    Activation::Leaky => d.iter_mut().zip(r).for_each(|(d, r)| {
                        let v = r + bias;
                        *d = if v > 0.0 { v } else { 0.1 * v };
                    }),
                }
            }
        }
        debug_assert_eq!(c, self.in_channels);
        Tensor::from_vec(out, (n, out_c, oh, ow), x.device())
    }
}

/// Unrolls one CHW image into `[C*K*K, OH*OW]` patches (zero padding).
#[allow(clippy::too_many_arguments)]
fn im2col(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    p: usize,
    s: usize,
    oh: usize,
    ow: usize,
) -> Vec<f32> {
    let plane = oh * ow;
    let mut col = vec![0f32; c * k * k * plane];
    for ci in 0..c {
        let src = &img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * plane..][..plane];
                for oy in 0..oh {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src_row = &src[iy as usize * w..(iy as usize + 1) * w];
                    let dst_row = &mut row[oy * ow..(oy + 1) * ow];
                    if s == 1 {
                        // ox + kx - p in [0, w): a contiguous, shifted copy.
                        let shift = kx as isize - p as isize;
                        let ox_lo = (-shift).max(0) as usize;
                        let ox_hi = ((w as isize - shift).min(ow as isize)).max(0) as usize;
                        if ox_lo < ox_hi {
                            let from = (ox_lo as isize + shift) as usize;
                            dst_row[ox_lo..ox_hi]
                                .copy_from_slice(&src_row[from..from + (ox_hi - ox_lo)]);
                        }
                    } else {
                        for (ox, d) in dst_row.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p as isize;
                            if ix >= 0 && ix < w as isize {
                                *d = src_row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    col
}

#[derive(Debug)]
enum Layer {
    Conv(Conv),
    MaxPool(MaxPoolSpec),
    Route(Vec<usize>),
    Upsample(usize),
    Yolo,
}

/// The network, ready to run.
#[derive(Debug)]
pub struct DarknetNetwork {
    cfg: DarknetConfig,
    layers: Vec<Layer>,
    /// Whether layer i's output is needed later by a route or yolo layer.
    keep: Vec<bool>,
    device: Device,
}

impl DarknetNetwork {
    /// Builds the network from a cfg and its weights on `device`.
    pub fn new(cfg: DarknetConfig, weights: DarknetWeights, device: &Device) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (i, (spec, params)) in cfg.layers.iter().zip(weights.layers).enumerate() {
            let layer = match spec {
                LayerSpec::Convolutional(c) => {
                    let p = params.ok_or_else(|| VisionError::Cfg {
                        path: "<weights>".into(),
                        message: format!("layer {i}: no parameters for a convolutional layer"),
                    })?;
                    let ctx = || format!("layer {i} convolutional: building tensors");
                    let weight = Tensor::from_vec(
                        p.weights,
                        (c.filters, c.in_channels, c.size, c.size),
                        device,
                    )
                    .map_err(VisionError::tensor(ctx()))?;
                    let weight_2d = weight
                        .reshape((c.filters, c.in_channels * c.size * c.size))
                        .map_err(VisionError::tensor(ctx()))?;
                    let bias_vec = p.bias.clone();
                    let bias = Tensor::from_vec(p.bias, (1, c.filters, 1, 1), device)
                        .map_err(VisionError::tensor(ctx()))?;
                    Layer::Conv(Conv {
                        weight,
                        weight_2d,
                        bias,
                        bias_vec,
                        in_channels: c.in_channels,
                        size: c.size,
                        padding: c.padding,
                        stride: c.stride,
                        activation: c.activation,
                    })
                }
                LayerSpec::MaxPool(m) => Layer::MaxPool(m.clone()),
                LayerSpec::Route { layers } => Layer::Route(layers.clone()),
                LayerSpec::Upsample { stride } => Layer::Upsample(*stride),
                LayerSpec::Yolo(_) => Layer::Yolo,
            };
            layers.push(layer);
        }
        let mut keep = vec![false; layers.len()];
        for (i, layer) in layers.iter().enumerate() {
            match layer {
                Layer::Route(srcs) => srcs.iter().for_each(|&s| keep[s] = true),
                Layer::Yolo if i > 0 => keep[i - 1] = true,
                _ => {}
            }
        }
        Ok(Self {
            cfg,
            layers,
            keep,
            device: device.clone(),
        })
    }

    /// The parsed cfg (input size, yolo layers).
    pub fn config(&self) -> &DarknetConfig {
        &self.cfg
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `x` (`[N, C, H, W]` f32 with the cfg's input size) and returns the input of every
    /// `[yolo]` layer (raw head outputs), in cfg order.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_profiled(x, None)
    }

    /// Like [`forward`](Self::forward); when `layer_times` is given, it receives the wall time
    /// of every layer (for benchmarks: where the forward pass spends its time).
    pub fn forward_profiled(
        &self,
        x: &Tensor,
        mut layer_times: Option<&mut Vec<std::time::Duration>>,
    ) -> Result<Vec<Tensor>> {
        let (_, c, h, w) = x.dims4().map_err(VisionError::tensor("network input"))?;
        if (c, h, w) != (self.cfg.channels, self.cfg.height, self.cfg.width) {
            return Err(VisionError::Tensor {
                context: "network input".to_string(),
                source: candle_core::Error::Msg(format!(
                    "expected [N, {}, {}, {}], got {:?}",
                    self.cfg.channels,
                    self.cfg.height,
                    self.cfg.width,
                    x.dims()
                )),
            });
        }
        let x = x
            .to_dtype(DType::F32)
            .map_err(VisionError::tensor("network input"))?;
        let mut saved: Vec<Option<Tensor>> = vec![None; self.layers.len()];
        let mut heads = Vec::new();
        let mut prev = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let started = std::time::Instant::now();
            let out = match layer {
                Layer::Conv(conv) => conv.forward(&prev),
                Layer::MaxPool(m) => max_pool(&prev, m),
                Layer::Route(srcs) => {
                    let parts: Vec<&Tensor> = srcs
                        .iter()
                        .map(|&s| saved[s].as_ref().ok_or_else(|| route_bug(i, s)))
                        .collect::<Result<_>>()?;
                    if parts.len() == 1 {
                        Ok(parts[0].clone())
                    } else {
                        Tensor::cat(&parts, 1)
                    }
                }
                Layer::Upsample(s) => {
                    let (_, _, h, w) = prev.dims4().map_err(VisionError::tensor("upsample"))?;
                    prev.upsample_nearest2d(h * s, w * s)
                }
                Layer::Yolo => {
                    heads.push(prev.clone());
                    Ok(prev.clone())
                }
            }
            .map_err(VisionError::tensor(format!(
                "layer {i} {}",
                layer_name(layer)
            )))?;
            if let Some(times) = layer_times.as_deref_mut() {
                times.push(started.elapsed());
            }
            if self.keep[i] {
                saved[i] = Some(out.clone());
            }
            prev = out;
        }
        Ok(heads)
    }
}

fn route_bug(layer: usize, src: usize) -> VisionError {
    VisionError::Cfg {
        path: "<network>".into(),
        message: format!("layer {layer}: route source {src} was not kept"),
    }
}

fn layer_name(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv(_) => "convolutional",
        Layer::MaxPool(_) => "maxpool",
        Layer::Route(_) => "route",
        Layer::Upsample(_) => "upsample",
        Layer::Yolo => "yolo",
    }
}

/// Darknet maxpool: window origin `-(padding / 2)`, output `(in + padding - size) / stride + 1`,
/// taps outside the input ignored. Implemented by replicating edge values (equivalent for a
/// max, as every window holds at least one real tap) and a plain candle max pool.
fn max_pool(x: &Tensor, spec: &MaxPoolSpec) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let left = spec.padding / 2;
    let out = |n: usize| (n + spec.padding - spec.size) / spec.stride + 1;
    let (oh, ow) = (out(h), out(w));
    let need_h = (oh - 1) * spec.stride + spec.size;
    let need_w = (ow - 1) * spec.stride + spec.size;
    let mut x = x.clone();
    if left > 0 || need_h > h + left {
        x = x.pad_with_same(2, left, need_h.saturating_sub(h + left))?;
    }
    if left > 0 || need_w > w + left {
        x = x.pad_with_same(3, left, need_w.saturating_sub(w + left))?;
    }
    x.max_pool2d_with_stride(spec.size, spec.stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_conv_matches_candle_conv2d() {
        let dev = Device::Cpu;
        for (k, p, s, act) in [
            (3, 1, 1, Activation::Leaky),
            (1, 0, 1, Activation::Linear),
            (3, 1, 2, Activation::Leaky),
            (3, 0, 1, Activation::Linear),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev).unwrap();
            let bias_vec = vec![0.5f32, -0.25, 0.0, 1.0];
            let conv = Conv {
                weight_2d: weight.reshape((4, 3 * k * k)).unwrap(),
                bias: Tensor::from_vec(bias_vec.clone(), (1, 4, 1, 1), &dev).unwrap(),
                weight,
                bias_vec,
                in_channels: 3,
                size: k,
                padding: p,
                stride: s,
                activation: act,
            };
            let ours = conv.forward_cpu(&x).unwrap();
            let mut reference = x
                .conv2d(&conv.weight, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&conv.bias)
                .unwrap();
            if act == Activation::Leaky {
                reference = candle_nn::ops::leaky_relu(&reference, 0.1).unwrap();
            }
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "k={k} p={p} s={s}: {diff}");
        }
    }

    #[test]
    fn stride_one_maxpool_pads_bottom_right_with_edge() {
        let x = Tensor::from_vec(vec![-1f32, -2., -3., -4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let spec = MaxPoolSpec {
            size: 2,
            stride: 1,
            padding: 1,
        };
        let y = max_pool(&x, &spec).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        // windows: {-1,-2,-3,-4}, {-2,-4}, {-3,-4}, {-4}; never a 0 from padding
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![-1., -2., -3., -4.]
        );
        let spec2 = MaxPoolSpec {
            size: 2,
            stride: 2,
            padding: 1,
        };
        let y = max_pool(&x, &spec2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![-1.]
        );
    }
}
