//! Small building blocks shared by the architectures.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor, D};

use crate::load::weights::Weights;
use crate::Result;

/// A linear layer whose weight may be quantized: `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a (possibly quantized) weight and an optional f32 bias.
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Bytes the weight occupies (quantized blocks, or the float tensor), bias excluded: what
    /// one forward pass reads of it.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            QMatMul::QTensor(q) => q.storage_size_in_bytes(),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        }
    }

    /// Apply to `x` (`[..., in]`, f32).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Quantized matmul kernels need a contiguous input.
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let y = self.weight.forward(&x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

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

/// An embedding table kept in the policy's float type; looked-up rows come back in f32.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Load a `[vocab, dim]` table named `weight` under `w`.
    pub fn load(w: &Weights, vocab: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            table: w.get_table(&[vocab, dim], "weight")?,
        })
    }

    /// Rows for `ids` (any shape of u32 ids) → `[..ids, dim]` in f32.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.table.dim(1)?);
        let rows = self.table.index_select(&ids.flatten_all()?, 0)?;
        Ok(rows.to_dtype(DType::F32)?.reshape(shape)?)
    }

    /// The table itself (for tied output heads).
    pub fn table(&self) -> &Tensor {
        &self.table
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
