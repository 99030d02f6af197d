//! [`Linear`]: `y = x Wᵀ + b` over a weight stored as the load policy says (f32, f16, bf16 or
//! quantized blocks), read through [`Weights`].
//!
//! One type for every linear layer of the architectures:
//! - one checkpoint linear: [`Linear::load`];
//! - several checkpoint linears over the same input joined into one matmul:
//!   [`Linear::load_fused`];
//! - linears over the same input run as one quantized call in decode:
//!   [`Linear::forward_shared`] (the reason the weight stays a [`QMatMul`] whose quantized
//!   tensor is reachable).
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

/// Bytes a matmul weight occupies (quantized blocks, or the float tensor): what one forward
/// pass reads of it.
pub(crate) fn qmatmul_bytes(weight: &QMatMul) -> usize {
    match weight {
        QMatMul::QTensor(q) => q.storage_size_in_bytes(),
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.elem_count() * t.dtype().size_in_bytes(),
    }
}

/// Row multiple candle's x86 tiled quantized kernels need.
const TILE_ROWS: usize = 16;

/// A linear layer `y = x Wᵀ + b` whose weight `[rows, in]` may be quantized; possibly several
/// checkpoint linears `[out_i, in]` stacked into one weight, with zero rows appended.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    /// `[Σ out_i]`, f32.
    bias: Option<Tensor>,
    /// Output width of each part, in order (one part for a single linear).
    splits: Vec<usize>,
    /// Rows of `weight`: the parts' outputs plus zero padding.
    rows: usize,
}

impl Linear {
    /// From a (possibly quantized) weight `[out, in]` and an optional f32 bias `[out]`.
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        let rows = match &weight {
            QMatMul::QTensor(q) => q.shape().dims().first().copied(),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims().first().copied(),
        }
        .unwrap_or(0);
        Self {
            weight,
            bias,
            splits: vec![rows],
            rows,
        }
    }

    /// The linear `name` under `w`: weight `[out_dim, in_dim]` stored as the policy says
    /// ([`Weights::matmul_weight`]), plus bias `[out_dim]` in f32 when `bias`.
    ///
    /// Errors: the tensor is missing, has another shape or a non-float dtype.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        name: &str,
    ) -> Result<Self> {
        let w = w.pp(name);
        let weight = w.matmul_weight(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(w.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// Load the linears `parts` (name under `w`, output width), all with input width `in_dim`,
    /// as one matmul. Each is read and stored exactly as [`Linear::load`] would (same
    /// quantization, same load report). A single part is padded only.
    pub fn load_fused(
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

    /// Bytes the weight occupies (quantized blocks, or the float tensor), bias excluded: what
    /// one forward pass reads of it.
    pub fn weight_bytes(&self) -> usize {
        qmatmul_bytes(&self.weight)
    }

    /// `x` `[..., in]` (f32) → `[..., Σ out_i]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Quantized matmul kernels need a contiguous input.
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        self.finish(matmul(&self.weight, &x)?)
    }

    /// Apply linears that share the input `x` `[..., in]`. For a single row (decode) with
    /// quantized weights, candle can run them as one call (one input quantization, one
    /// parallel region); otherwise they run one by one. One output per linear.
    pub fn forward_shared(linears: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let row = x.dim(D::Minus1)?;
        if x.elem_count() == row {
            if let Some(qs) = linears
                .iter()
                .map(|l| l.qtensor())
                .collect::<Option<Vec<_>>>()
            {
                let x = x.contiguous()?;
                if let Some(outs) = QTensor::gemv_fused_shared_lhs(&qs, &x)? {
                    return outs
                        .into_iter()
                        .zip(linears)
                        .map(|(y, l)| l.finish(y))
                        .collect();
                }
            }
        }
        linears.iter().map(|l| l.forward(x)).collect()
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

    /// The matmul result `[..., rows]` → `[..., Σ out_i]` (padding rows cut off) plus bias.
    fn finish(&self, y: Tensor) -> Result<Tensor> {
        let out: usize = self.splits.iter().sum();
        let y = if self.rows != out {
            y.narrow(D::Minus1, 0, out)?
        } else {
            y
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The quantized weight, when it is one.
    fn qtensor(&self) -> Option<&QTensor> {
        match &self.weight {
            QMatMul::QTensor(t) => Some(t),
            _ => None,
        }
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

/// `x · Wᵀ` for a weight in any storage type, the result in `x`'s dtype. candle's [`QMatMul`]
/// converts the input for quantized and f16 weights but multiplies a plain tensor as it is, so
/// a bf16 weight (`vlm.storage = bf16`, what `load_in_4bit = false` gives a 4-bit `quant`)
/// gets the input converted to bf16 here and the product converted back.
///
/// Errors: candle's (shape mismatch, a dtype the backend cannot multiply).
pub(crate) fn matmul(weight: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
    match weight {
        QMatMul::Tensor(w) if w.dtype() != x.dtype() => {
            weight.forward(&x.to_dtype(w.dtype())?)?.to_dtype(x.dtype())
        }
        _ => weight.forward(x),
    }
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
    fn a_bf16_weight_takes_an_f32_input_and_gives_f32() {
        let layout = vec![
            ("a.weight".to_string(), vec![16, 64]),
            ("a.bias".to_string(), vec![16]),
        ];
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &Device::Cpu).unwrap();
        let f32 = Linear::load(
            &weights(QuantPolicy::unquantized(StorageDtype::F32), layout.clone()),
            64,
            16,
            true,
            "a",
        )
        .unwrap()
        .forward(&x)
        .unwrap();
        let bf16 = Linear::load(
            &weights(QuantPolicy::unquantized(StorageDtype::Bf16), layout),
            64,
            16,
            true,
            "a",
        )
        .unwrap()
        .forward(&x)
        .unwrap();
        assert_eq!(bf16.dtype(), DType::F32);
        let scale = f32
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = (&bf16 - &f32)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // bf16 keeps 8 significant bits: a 64-term dot product stays within a few percent.
        assert!(
            d <= 0.05 * scale,
            "max |bf16 - f32| = {d}, max |f32| = {scale}"
        );
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
            let fused = Linear::load_fused(&w, 256, &[("a", 32), ("b", 7)], true).unwrap();
            let parts = fused.forward_parts(&x).unwrap();
            assert_eq!(parts[1].dims(), &[2, 3, 7]);
            for (part, (name, out)) in parts.iter().zip([("a", 32), ("b", 7)]) {
                let single = Linear::load(&w, 256, out, true, name)
                    .unwrap()
                    .forward(&x)
                    .unwrap();
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
