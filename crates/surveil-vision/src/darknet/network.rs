//! A Darknet network (from a parsed cfg and its weights) as candle tensors, with a batched
//! forward pass that returns the raw inputs of every `[yolo]` layer.

use candle_core::{DType, Device, Tensor};

use super::cfg::{Activation, DarknetConfig, LayerSpec, MaxPoolSpec};
use super::weights::DarknetWeights;
use crate::error::{Result, VisionError};

/// A convolution with folded batch norm.
#[derive(Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
    activation: Activation,
}

impl Conv {
    /// Applies the convolution, bias and activation.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias)?;
        match self.activation {
            Activation::Linear => Ok(y),
            // Darknet leaky: x > 0 ? x : 0.1 x, which equals max(x, 0.1 x).
            Activation::Leaky => y.maximum(&(&y * 0.1)?),
        }
    }
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
                    let bias = Tensor::from_vec(p.bias, (1, c.filters, 1, 1), device)
                        .map_err(VisionError::tensor(ctx()))?;
                    Layer::Conv(Conv {
                        weight,
                        bias,
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
            .map_err(VisionError::tensor(format!("layer {i} {}", layer_name(layer))))?;
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
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-1.]);
    }
}
