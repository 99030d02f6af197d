//! [`LayerNorm`] and [`RmsNorm`] over the last dimension, f32.

use candle_core::{DType, Tensor, D};

use crate::layers::kernels::{runs_cpu_kernel, LayerNormOp};
use crate::load::weights::Weights;
use crate::Result;

/// LayerNorm over the last dimension with weight and bias, f32. The mean is taken first and
/// the variance of the centred values second (no `E[x²] − E[x]²` cancellation) on every
/// device: by the fused CPU kernel for f32 on the CPU, by [`LayerNorm::forward_composed`]
/// elsewhere.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[dim]` f32, on the model's device.
    weight: Tensor,
    /// `[dim]` f32, on the model's device.
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Load `weight` and `bias` of size `dim` under `w`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[dim], "weight")?,
            bias: w.get(&[dim], "bias")?,
            eps,
        })
    }

    /// Normalise `x [..., dim]` over the last dimension; the result has `x`'s shape, dtype
    /// and device. f32 on the CPU runs the fused kernel; anything else
    /// [`LayerNorm::forward_composed`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !runs_cpu_kernel(x) {
            return self.forward_composed(x);
        }
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        Ok(x.apply_op3_no_bwd(&self.weight, &self.bias, &LayerNormOp { eps: self.eps })?)
    }

    /// [`LayerNorm::forward`] as candle ops, for any device and dtype (computed in the
    /// weight's f32): the row mean is subtracted first, then candle-nn's fused `layer_norm`
    /// (a CUDA kernel) normalises the centred rows. That kernel takes the variance as
    /// `E[x²] − E[x]²` in f32, which on uncentred rows (a residual stream with a large common
    /// offset) loses most digits; on centred rows `E[x]` is rounding noise and the result is
    /// the two-pass one: within 1e-5 of an f64 reference on rows near 300, where the CPU
    /// kernel is within 1e-3 (its running f32 sum for the mean).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(self.weight.dtype())?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let y = candle_nn::ops::layer_norm(&centred, &self.weight, &self.bias, self.eps as f32)?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// RMSNorm (weight only), computed in f32 by candle-nn's fused `rms_norm` (CPU and CUDA
/// kernels).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[dim]` f32, on the model's device.
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Load `weight` of size `dim` under `w`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&[dim], "weight")?,
            eps: eps as f32,
        })
    }

    /// Normalise `x [..., dim]` over the last dimension; the result has `x`'s shape, dtype and
    /// device (another dtype than f32 is converted for the computation and back).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let x = if x.is_contiguous() {
            x
        } else {
            x.contiguous()?
        };
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::max_abs_diff;
    use candle_core::Device;

    /// A LayerNorm of width `dim` with random weight and bias.
    fn random_layer_norm(dim: usize, eps: f64) -> LayerNorm {
        let dev = Device::Cpu;
        LayerNorm {
            weight: Tensor::randn(0f32, 1.0, dim, &dev).unwrap(),
            bias: Tensor::randn(0f32, 1.0, dim, &dev).unwrap(),
            eps,
        }
    }

    /// `ln(x)` two-pass in f64.
    fn reference_f64(ln: &LayerNorm, x: &Tensor) -> Tensor {
        let x64 = x.to_dtype(DType::F64).unwrap();
        let mean = x64.mean_keepdim(D::Minus1).unwrap();
        let xc = x64.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        xc.broadcast_div(&(var + ln.eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&ln.weight.to_dtype(DType::F64).unwrap())
            .unwrap()
            .broadcast_add(&ln.bias.to_dtype(DType::F64).unwrap())
            .unwrap()
    }

    /// Rows `[3, 5, dim]` of N(offset, 1).
    fn rows(dim: usize, offset: f64) -> Tensor {
        (Tensor::randn(0f32, 1.0, (3, 5, dim), &Device::Cpu).unwrap() + offset).unwrap()
    }

    #[test]
    fn fused_layer_norm_matches_composite() {
        let ln = random_layer_norm(96, 1e-12);
        // Large common offset: where E[x²] − E[x]² would lose digits.
        let x = rows(96, 300.0);
        let diff = max_abs_diff(&ln.forward(&x).unwrap(), &reference_f64(&ln, &x));
        // f32 rounding of values near 300 allows ~2e-4; E[x²] − E[x]² in f32 is off by ~1e-2.
        assert!(diff < 1e-3, "{diff}");
    }

    /// The composition that runs off the CPU, against the f64 reference and the fused kernel
    /// on the same rows: a large common offset (where candle-nn's `layer_norm` alone,
    /// `E[x²] − E[x]²` in f32, is off by 0.1 to 0.3), rows around 0, and a non-contiguous
    /// input. Measured at offset 300: composition to f64 1.4e-6, kernel to f64 (and so to the
    /// composition) up to 2.8e-4 (its running f32 sum for the mean); around 0 and transposed:
    /// 1e-6.
    #[test]
    fn composed_layer_norm_matches_the_kernel() {
        let ln = random_layer_norm(96, 1e-6);
        for (offset, tolerance) in [(300.0, 1e-3f32), (0.0, 1e-5)] {
            let x = rows(96, offset);
            let composed = ln.forward_composed(&x).unwrap();
            let d = max_abs_diff(&composed, &reference_f64(&ln, &x));
            assert!(d < 1e-5, "offset {offset}: composition to f64 {d}");
            let d = max_abs_diff(&ln.forward(&x).unwrap(), &composed);
            assert!(d < tolerance, "offset {offset}: kernel to composition {d}");
        }
        let x = Tensor::randn(0f32, 1.0, (96, 7), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let y = ln.forward(&x).unwrap();
        let d = max_abs_diff(&y, &ln.forward_composed(&x).unwrap());
        assert!(d < 1e-5, "transposed: {d}");
        // Another dtype takes the composition and keeps its dtype.
        let yb = ln.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        // bf16 keeps 8 significant bits: the input and the output each round by 2⁻⁹ relative.
        let (d, scale) = (
            max_abs_diff(&yb, &y),
            max_abs_diff(&y, &y.zeros_like().unwrap()),
        );
        assert!(d < 0.02 * scale, "bf16: {d} (max |y| {scale})");
    }

    #[test]
    fn rms_norm_keeps_the_input_dtype() {
        let dev = Device::Cpu;
        let norm = RmsNorm {
            weight: Tensor::randn(0f32, 1.0, 64, &dev).unwrap(),
            eps: 1e-6,
        };
        let x = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
        let y = norm.forward(&x).unwrap();
        let yb = norm.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let (d, scale) = (
            max_abs_diff(&yb, &y),
            max_abs_diff(&y, &y.zeros_like().unwrap()),
        );
        assert!(d < 0.02 * scale, "bf16: {d} (max |y| {scale})");
    }
}
