//! [`FusedLinear`]: checkpoint linears loaded through [`Weights`] and joined into one matmul.
//!
//! Two CPU speed-ups that do not change the math: q/k/v projections share one matmul (one
//! pass over the input, one activation quantization instead of three), and quantized weights
//! whose row count is not a multiple of 16 (the 30522-row output head) get zero rows appended so
//! candle's tiled AVX-512 kernels apply; the extra outputs are cut off again.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Module, Tensor, D};

use crate::load::weights::Weights;
use crate::Result;

/// Row multiple candle's x86 tiled quantized kernels need.
const TILE_ROWS: usize = 16;

/// One matmul over the concatenation of several `[out_i, in]` linears (+ biases).
#[derive(Debug, Clone)]
pub(crate) struct FusedLinear {
    weight: QMatMul,
    bias: Option<Tensor>,
    /// Output width of each part, in order.
    splits: Vec<usize>,
    /// Rows of `weight`: the parts' outputs plus zero padding.
    rows: usize,
}

impl FusedLinear {
    /// Load the linears `parts` (name under `w`, output width), all with input width `in_dim`,
    /// as one matmul. Each is read and stored exactly as [`Weights::linear`] would (same
    /// quantization, same load report).
    pub(crate) fn load(
        w: &Weights,
        in_dim: usize,
        parts: &[(&str, usize)],
        bias: bool,
    ) -> Result<Self> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for &(name, out) in parts {
            let p = w.pp(name);
            weights.push(p.matmul_weight(&[out, in_dim], "weight")?);
            if bias {
                biases.push(p.get(&[out], "bias")?);
            }
        }
        let splits: Vec<usize> = parts.iter().map(|&(_, out)| out).collect();
        let out: usize = splits.iter().sum();
        let (weight, rows) = concat_rows(weights, out, in_dim, w)?;
        let bias = if bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            splits,
            rows,
        })
    }

    /// `x` `[..., in]` → `[..., Σ out_i]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let mut y = self.weight.forward(&x)?;
        let out: usize = self.splits.iter().sum();
        if self.rows != out {
            y = y.narrow(D::Minus1, 0, out)?;
        }
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x` `[..., in]` → one `[..., out_i]` per part (views into one result).
    #[cfg(test)]
    pub(crate) fn forward_parts(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = self.forward(x)?;
        let mut start = 0;
        let mut out = Vec::with_capacity(self.splits.len());
        for &n in &self.splits {
            out.push(y.narrow(D::Minus1, start, n)?);
            start += n;
        }
        Ok(out)
    }
}

/// Stack `[out_i, in]` weights into one `[rows, in]` matmul weight; quantized weights get zero
/// rows up to a multiple of [`TILE_ROWS`]. Returns the weight and its row count.
fn concat_rows(
    mut weights: Vec<QMatMul>,
    out: usize,
    in_dim: usize,
    w: &Weights,
) -> Result<(QMatMul, usize)> {
    let all_quantized = weights.iter().all(|q| matches!(q, QMatMul::QTensor(_)));
    if all_quantized {
        let tensors: Vec<Arc<QTensor>> = weights
            .iter()
            .filter_map(|q| match q {
                QMatMul::QTensor(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let dtype = tensors[0].dtype();
        let same_dtype = tensors.iter().all(|t| t.dtype() == dtype);
        let rows = out.next_multiple_of(TILE_ROWS);
        if same_dtype && (tensors.len() > 1 || rows != out) {
            let row_bytes = in_dim / dtype.block_size() * dtype.type_size();
            let mut bytes = Vec::with_capacity(rows * row_bytes);
            for t in &tensors {
                bytes.extend_from_slice(&t.data()?);
            }
            // Zero blocks (scale 0) dequantize to 0.
            bytes.resize(rows * row_bytes, 0);
            drop(tensors);
            weights.clear();
            let storage = QStorage::from_data(Cow::Owned(bytes), w.device(), dtype)?;
            let qt = QTensor::new(storage, (rows, in_dim))?;
            return Ok((QMatMul::QTensor(Arc::new(qt)), rows));
        }
    }
    if weights.len() == 1 {
        return Ok((weights.remove(0), out));
    }
    // Float weights (f32, f16, bf16): concatenate the tensors of the same kind.
    let first_kind = std::mem::discriminant(&weights[0]);
    if weights
        .iter()
        .all(|q| std::mem::discriminant(q) == first_kind)
    {
        let tensors: Vec<Tensor> = weights
            .iter()
            .filter_map(|q| match q {
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Some(t.clone()),
                QMatMul::QTensor(_) => None,
            })
            .collect();
        if tensors.len() == weights.len() {
            let cat = Tensor::cat(&tensors, 0)?;
            return Ok((
                match weights[0] {
                    QMatMul::TensorF16(_) => QMatMul::TensorF16(cat),
                    _ => QMatMul::Tensor(cat),
                },
                out,
            ));
        }
    }
    // Mixed storage (not produced by one policy for one input width): dequantize to f32.
    let tensors = weights
        .iter()
        .map(|q| match q {
            QMatMul::QTensor(t) => t.dequantize(w.device()),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(candle_core::DType::F32),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((QMatMul::Tensor(Tensor::cat(&tensors, 0)?), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::weights::DummySource;
    use candle_core::{DType, Device};
    use surveil_memory::{QuantPolicy, StorageDtype};

    fn weights(policy: QuantPolicy, layout: Vec<(String, Vec<usize>)>) -> Weights {
        Weights::new(
            Box::new(DummySource::new("t", layout, DType::F32, 3)),
            Device::Cpu,
            policy,
        )
    }

    #[test]
    fn fused_equals_separate_linears() {
        let layout = vec![
            ("a.weight".to_string(), vec![32, 256]),
            ("a.bias".to_string(), vec![32]),
            ("b.weight".to_string(), vec![7, 256]),
            ("b.bias".to_string(), vec![7]),
        ];
        let x = Tensor::randn(0f32, 1.0, (2, 3, 256), &Device::Cpu).unwrap();
        for policy in [
            QuantPolicy::unquantized(StorageDtype::F32),
            QuantPolicy::four_bit(StorageDtype::F16),
        ] {
            let w = weights(policy, layout.clone());
            let fused = FusedLinear::load(&w, 256, &[("a", 32), ("b", 7)], true).unwrap();
            let parts = fused.forward_parts(&x).unwrap();
            assert_eq!(parts[1].dims(), &[2, 3, 7]);
            for (part, (name, out)) in parts.iter().zip([("a", 32), ("b", 7)]) {
                let single = w.linear(256, out, true, name).unwrap().forward(&x).unwrap();
                let d = (part - &single)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "{policy:?} {name}: {d}");
            }
            // Quantized: 39 rows padded to 48.
            let expected_rows = if policy.linear.is_quantized() { 48 } else { 39 };
            assert_eq!(fused.rows, expected_rows);
        }
    }
}
