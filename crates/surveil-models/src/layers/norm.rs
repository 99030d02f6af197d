//! [`LayerNorm`] and [`RmsNorm`] over the last dimension, f32.

use candle_core::{DType, Tensor, D};

use crate::load::weights::Weights;
use crate::Result;

/// LayerNorm over the last dimension with weight and bias, f32. The fused CPU kernel computes
/// the mean first and the variance of the centred values second (no `E[x²] − E[x]²`
/// cancellation).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
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

    /// Normalise over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = if x.is_contiguous() {
                x.clone()
            } else {
                x.contiguous()?
            };
            return Ok(x.apply_op3_no_bwd(
                &self.weight,
                &self.bias,
                &crate::layers::kernels::LayerNormOp { eps: self.eps },
            )?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// RMSNorm (weight only), computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
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

    /// Normalise over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_layer_norm_matches_composite() {
        let dev = Device::Cpu;
        let dim = 96;
        // Large common offset: where E[x²] − E[x]² would lose digits.
        let x = (Tensor::randn(0f32, 1.0, (3, 5, dim), &dev).unwrap() + 300.0).unwrap();
        let ln = LayerNorm {
            weight: Tensor::randn(0f32, 1.0, dim, &dev).unwrap(),
            bias: Tensor::randn(0f32, 1.0, dim, &dev).unwrap(),
            eps: 1e-12,
        };
        let fused = ln.forward(&x).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let mean = x64.mean_keepdim(D::Minus1).unwrap();
        let xc = x64.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let reference = xc
            .broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&ln.weight.to_dtype(DType::F64).unwrap())
            .unwrap()
            .broadcast_add(&ln.bias.to_dtype(DType::F64).unwrap())
            .unwrap();
        let diff = (fused.to_dtype(DType::F64).unwrap() - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // f32 rounding of values near 300 allows ~2e-4; E[x²] − E[x]² in f32 is off by ~1e-2.
        assert!(diff < 1e-3, "{diff}");
    }
}
