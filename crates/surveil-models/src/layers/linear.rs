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
use candle_core::{Device, Tensor, D};

use crate::layers::kernels::{swiglu_in_place, Activation};
use crate::load::weights::{
    tiled_forward, tiled_forward_raw, Epilogue, MatWeight, TiledWeight, Weights,
};
use crate::{ModelError, Result};

/// Row multiple candle's x86 tiled quantized kernels need.
const TILE_ROWS: usize = 16;

/// A linear layer `y = x Wᵀ + b` whose weight `[rows, in]` may be quantized; possibly several
/// checkpoint linears `[out_i, in]` stacked into one weight, with zero rows appended or (in the
/// CPU tile layouts) between the parts.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: MatWeight,
    /// `[Σ out_i]`, f32.
    bias: Option<Tensor>,
    /// Output width of each part, in order (one part for a single linear).
    splits: Vec<usize>,
    /// Row of `weight` where each part starts.
    offsets: Vec<usize>,
    /// Rows of `weight`: the parts' outputs plus zero padding.
    rows: usize,
    /// `bias` as host f32 values, kept when the weight is in a CPU tile layout: its matmul's
    /// epilogue adds them (read once at load, not per call).
    host_bias: Option<Arc<[f32]>>,
}

/// The bias as host f32 values when `weight` is in a CPU tile layout (whose matmul adds it in
/// its epilogue); `None` otherwise, or when the bias cannot be read as f32 values (then the
/// layer adds it as an op).
fn host_bias(weight: &MatWeight, bias: Option<&Tensor>) -> Option<Arc<[f32]>> {
    weight.tiled()?;
    let values = bias?
        .to_dtype(candle_core::DType::F32)
        .and_then(|b| b.to_vec1::<f32>());
    values.ok().map(Arc::from)
}

impl Linear {
    /// From a (possibly quantized) weight `[out, in]` and an optional f32 bias `[out]`.
    pub fn new(weight: impl Into<MatWeight>, bias: Option<Tensor>) -> Self {
        let weight = weight.into();
        let rows = weight.rows();
        let host_bias = host_bias(&weight, bias.as_ref());
        Self {
            weight,
            bias,
            splits: vec![rows],
            offsets: vec![0],
            rows,
            host_bias,
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
        let splits: Vec<usize> = parts.iter().map(|&(_, out)| out).collect();
        let out: usize = splits.iter().sum();
        let names: Vec<String> = parts
            .iter()
            .map(|(name, _)| format!("{name}.weight"))
            .collect();
        let stacked: Vec<(&str, usize)> = names
            .iter()
            .zip(&splits)
            .map(|(name, &n)| (name.as_str(), n))
            .collect();
        let (weight, offsets, rows) = match w.matmul_weight_stacked(&stacked, in_dim)? {
            Some(tiled) => {
                let offsets = crate::quant::stacked_offsets(&splits);
                let rows = tiled.rows();
                (tiled, offsets, rows)
            }
            None => {
                // Off the CPU the parts are joined on the host and uploaded once.
                let on_host = !w.device().is_cpu();
                let mut weights = Vec::with_capacity(parts.len());
                for &(name, n) in parts {
                    if on_host {
                        weights.push(w.pp(name).matmul_weight_host(&[n, in_dim], "weight")?);
                        continue;
                    }
                    match w.pp(name).matmul_weight(&[n, in_dim], "weight")? {
                        MatWeight::Candle(q) => weights.push(q),
                        MatWeight::Bf16(b) => weights.push(QMatMul::Tensor(b.tensor().clone())),
                        MatWeight::Tiled(_) => {
                            return Err(crate::ModelError::InvalidInput(format!(
                                "`{}`: a tiled part where the policy gives candle storage",
                                w.path(name)
                            )))
                        }
                    }
                }
                let (weight, rows) = concat_rows(weights, out, in_dim, w)?;
                let weight = onto_device(weight, w.device())?;
                let offsets = splits
                    .iter()
                    .scan(0, |at, &n| {
                        let start = *at;
                        *at += n;
                        Some(start)
                    })
                    .collect();
                (w.candle_or_bf16(weight)?, offsets, rows)
            }
        };
        let bias = if bias {
            let biases = parts
                .iter()
                .map(|&(name, n)| w.pp(name).get(&[n], "bias"))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        let host_bias = host_bias(&weight, bias.as_ref());
        Ok(Self {
            weight,
            bias,
            splits,
            offsets,
            rows,
            host_bias,
        })
    }

    /// Bytes the weight occupies (quantized blocks, tiles, or the float tensor), bias
    /// excluded: what one forward pass reads of it.
    pub fn weight_bytes(&self) -> usize {
        self.weight.bytes()
    }

    /// `x` `[..., in]` → `[..., Σ out_i]`, in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// `act(x Wᵀ + b)`, `x` `[..., in]` → `[..., Σ out_i]` in `x`'s dtype. With a CPU tile layout whose
    /// rows are the layer's outputs, the bias and the activation are applied by the matmul's
    /// kernels as they write each output (no intermediate tensor: a vision MLP's `fc1` output
    /// is 46 MB per frame); otherwise as separate ops.
    pub(crate) fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_then(x, act, None)
    }

    /// `x Wᵀ + b + residual` (a residual connection), `residual` of the output's shape and
    /// `x`'s dtype.
    /// In a CPU tile layout the matmul's kernels add it as they write each output (no second
    /// pass, no new tensor); otherwise an add op.
    ///
    /// Errors: the matmul's; a residual of another shape or dtype.
    pub(crate) fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Activation::Identity, Some(residual))
    }

    /// `act(x Wᵀ + b) + residual`.
    fn forward_then(
        &self,
        x: &Tensor,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Quantized matmul kernels need a contiguous input.
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        // The kernels add an f32 residual; another dtype takes the op.
        let fused = residual.is_none_or(|r| r.dtype() == candle_core::DType::F32);
        if let (Some(t), true) = (self.single_tiled(), fused) {
            let epilogue = Epilogue {
                bias: self.host_bias.as_deref(),
                act,
                residual,
            };
            return Ok(tiled_forward(&[t], &x, &[epilogue])?.remove(0));
        }
        let y = act.apply(self.finish(self.weight.forward(&x)?)?)?;
        Ok(match residual {
            Some(r) => (y + r)?,
            None => y,
        })
    }

    /// The weight in a CPU tile layout when its rows are exactly the layer's outputs (one part,
    /// or parts that follow each other without padding rows) and its bias, if any, is on the
    /// host: its matmul output is the layer's output before the bias.
    fn single_tiled(&self) -> Option<&TiledWeight> {
        if self.bias.is_some() && self.host_bias.is_none() {
            return None;
        }
        let MatWeight::Tiled(t) = &self.weight else {
            return None;
        };
        let mut at = 0;
        for (&start, &n) in self.offsets.iter().zip(&self.splits) {
            if start != at {
                return None;
            }
            at += n;
        }
        (at == self.rows && t.packed().rows() == at).then_some(t)
    }

    /// Apply linears that share the input `x` `[..., in]`: in the CPU tile layouts the input is
    /// quantized once for all of them; for a single row (decode) with candle's quantized
    /// weights, candle runs them as one call (one input quantization, one parallel region);
    /// otherwise they run one by one. One output per linear.
    pub fn forward_shared(linears: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(tiled) = linears
            .iter()
            .map(|l| l.weight.tiled())
            .collect::<Option<Vec<_>>>()
        {
            if linears.iter().all(|l| l.single_tiled().is_some()) {
                // Each bias added in its matmul's epilogue.
                let epilogues: Vec<Epilogue<'_>> = linears
                    .iter()
                    .map(|l| Epilogue {
                        bias: l.host_bias.as_deref(),
                        ..Epilogue::default()
                    })
                    .collect();
                return tiled_forward(&tiled, x, &epilogues);
            }
            return tiled_forward(&tiled, x, &[])?
                .into_iter()
                .zip(linears)
                .map(|(y, l)| l.finish(y))
                .collect();
        }
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

    /// SwiGLU's inner activation `silu(x Gᵀ) ⊙ (x Uᵀ)` `[..., inter]` for the bias-free
    /// linears `gate` and `up` of the same width (the Llama / Qwen2 / DeepSeek MLP before its
    /// down projection). In a CPU tile layout the input is quantized once and the activation
    /// written over the gate's own output buffer (no intermediate tensors: 23 MB each for
    /// Qwen2-VL-2B's 647-token prefill); otherwise candle's `silu(g) * u`.
    ///
    /// Errors: the matmuls' errors; outputs of different shapes.
    pub(crate) fn swiglu(gate: &Linear, up: &Linear, x: &Tensor) -> Result<Tensor> {
        let fused = |l: &Linear| l.bias.is_none() && l.single_tiled().is_some();
        if let (true, true, Some(g), Some(u)) = (
            fused(gate),
            fused(up),
            gate.weight.tiled(),
            up.weight.tiled(),
        ) {
            let x = if x.is_contiguous() {
                x.clone()
            } else {
                x.contiguous()?
            };
            let (mut outs, mut dims) = tiled_forward_raw(&[g, u], &x, &[])?;
            let (Some(u_out), Some(mut g_out)) = (outs.pop(), outs.pop()) else {
                return Err(ModelError::InvalidInput("gate/up projection failed".into()));
            };
            if g_out.len() != u_out.len() {
                return Err(ModelError::InvalidInput(format!(
                    "gate width {} and up width {} differ",
                    gate.rows, up.rows
                )));
            }
            swiglu_in_place(&mut g_out, &u_out);
            if let Some(last) = dims.last_mut() {
                *last = gate.rows;
            }
            return Ok(Tensor::from_vec(g_out, dims, &Device::Cpu)?.to_dtype(x.dtype())?);
        }
        let mut gu = Linear::forward_shared(&[gate, up], x)?.into_iter();
        let (Some(g), Some(u)) = (gu.next(), gu.next()) else {
            return Err(ModelError::InvalidInput("gate/up projection failed".into()));
        };
        Ok((candle_nn::ops::silu(&g)? * u)?)
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

    /// The matmul result `[..., rows]` → `[..., Σ out_i]` (padding rows cut off, parts joined
    /// where padding lies between them) plus bias.
    fn finish(&self, y: Tensor) -> Result<Tensor> {
        let out: usize = self.splits.iter().sum();
        let contiguous = self
            .offsets
            .iter()
            .zip(&self.splits)
            .scan(0, |at, (&start, &n)| {
                let ok = start == *at;
                *at += n;
                Some(ok)
            })
            .all(|ok| ok);
        let y = if !contiguous {
            let parts = self
                .offsets
                .iter()
                .zip(&self.splits)
                .map(|(&start, &n)| y.narrow(D::Minus1, start, n))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, D::Minus1)?
        } else if self.rows != out {
            y.narrow(D::Minus1, 0, out)?
        } else {
            y
        };
        Ok(match &self.bias {
            // The bias is kept in f32; activations of another dtype get it converted.
            Some(b) if b.dtype() != y.dtype() => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The weight in a CPU tile layout, when it is one and the layer has no bias and one part
    /// (what a caller running the kernels itself may use as the whole layer).
    pub(crate) fn plain_tiled(&self) -> Option<&TiledWeight> {
        match (&self.weight, &self.bias, self.splits.len()) {
            (MatWeight::Tiled(t), None, 1) => Some(t),
            _ => None,
        }
    }

    /// The candle quantized weight, when it is one.
    fn qtensor(&self) -> Option<&QTensor> {
        match &self.weight {
            MatWeight::Candle(QMatMul::QTensor(t)) => Some(t),
            _ => None,
        }
    }
}

/// `q` on `device`: unchanged when it is there already, else copied once (quantized blocks as
/// they are).
fn onto_device(q: QMatMul, device: &candle_core::Device) -> Result<QMatMul> {
    Ok(match q {
        QMatMul::QTensor(t) if !t.device().same_device(device) => {
            let storage = QStorage::from_data(t.data()?, device, t.dtype())?;
            QMatMul::QTensor(Arc::new(QTensor::new(storage, t.shape().clone())?))
        }
        QMatMul::Tensor(t) => QMatMul::Tensor(t.to_device(device)?),
        QMatMul::TensorF16(t) => QMatMul::TensorF16(t.to_device(device)?),
        q => q,
    })
}

/// Stack `[out_i, in]` weights into one `[rows, in]` matmul weight; quantized weights get zero
/// rows up to a multiple of [`TILE_ROWS`]. Returns the weight and its row count. Joined
/// quantized blocks are placed on `w`'s device; anything else stays where the parts are.
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
            QMatMul::QTensor(t) => t.dequantize(&t.device()),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(candle_core::DType::F32),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((QMatMul::Tensor(Tensor::cat(&tensors, 0)?), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::max_abs_diff;
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
        let scale = max_abs_diff(&f32, &f32.zeros_like().unwrap());
        let d = max_abs_diff(&bf16, &f32);
        // bf16 keeps 8 significant bits: a 64-term dot product stays within a few percent.
        assert!(
            d <= 0.05 * scale,
            "max |bf16 - f32| = {d}, max |f32| = {scale}"
        );
    }

    /// On the CPU a bf16 weight runs surveil's bf16 GEMV for a few rows and a widened f32 GEMM
    /// for many; both give what an f32 matmul of the bf16-rounded weight gives, fused parts
    /// included.
    #[test]
    fn bf16_weights_give_the_f32_product_of_their_rounded_values() {
        let layout = vec![
            ("a.weight".to_string(), vec![16, 64]),
            ("b.weight".to_string(), vec![7, 64]),
        ];
        let w = weights(QuantPolicy::unquantized(StorageDtype::Bf16), layout.clone());
        let fused = Linear::load_fused(&w, 64, &[("a", 16), ("b", 7)], false).unwrap();
        assert!(matches!(fused.weight, MatWeight::Bf16(_)));
        let exact = weights(QuantPolicy::unquantized(StorageDtype::F32), layout);
        let rounded: Vec<Tensor> = ["a", "b"]
            .iter()
            .map(|n| {
                exact
                    .get(
                        &[if *n == "a" { 16 } else { 7 }, 64],
                        &format!("{n}.weight"),
                    )
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            })
            .collect();
        let wt = Tensor::cat(&rounded, 0).unwrap();
        for rows in [1, 3, crate::quant::BF16_GEMV_MAX_ROWS + 5] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 64), &Device::Cpu).unwrap();
            let want = x.broadcast_matmul(&wt.t().unwrap()).unwrap();
            let got = fused.forward(&x).unwrap();
            assert_eq!(got.dims(), &[1, rows, 23]);
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{rows} rows: {d}");
        }
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
                let d = max_abs_diff(part, &single);
                assert!(d < 1e-5, "{policy:?} {name}: {d}");
            }
            // Quantized: 39 rows padded to 48.
            let expected_rows = if policy.linear.is_quantized() { 48 } else { 39 };
            assert_eq!(fused.rows, expected_rows);
        }
    }

    /// The GPU load path joins a fused linear's parts on the host and uploads the result once
    /// (`matmul_weight_host`, `concat_rows`, `onto_device`): on the CPU it must give exactly
    /// the weight the device path gives, with the same load report.
    #[test]
    fn parts_joined_on_the_host_equal_the_device_join() {
        let layout = vec![
            ("a.weight".to_string(), vec![32, 256]),
            ("b.weight".to_string(), vec![7, 256]),
        ];
        let x = Tensor::randn(0f32, 1.0, (3, 256), &Device::Cpu).unwrap();
        for policy in [
            QuantPolicy::unquantized(StorageDtype::F32),
            QuantPolicy::four_bit(StorageDtype::F16),
            QuantPolicy {
                linear: StorageDtype::Q8_0,
                float: StorageDtype::F16,
            },
        ] {
            let device_join = weights(policy, layout.clone());
            let fused =
                Linear::load_fused(&device_join, 256, &[("a", 32), ("b", 7)], false).unwrap();
            let host = weights(policy, layout.clone());
            let parts = [("a", 32), ("b", 7)]
                .iter()
                .map(|&(name, n)| host.pp(name).matmul_weight_host(&[n, 256], "weight"))
                .collect::<Result<Vec<_>>>()
                .unwrap();
            let (joined, rows) = concat_rows(parts, 39, 256, &host).unwrap();
            let joined = onto_device(joined, &Device::Cpu).unwrap();
            assert_eq!(rows, fused.rows, "{policy:?}");
            let ours = Linear {
                weight: host.candle_or_bf16(joined).unwrap(),
                bias: None,
                splits: vec![32, 7],
                offsets: vec![0, 32],
                rows,
                host_bias: None,
            };
            let d = max_abs_diff(&ours.forward(&x).unwrap(), &fused.forward(&x).unwrap());
            assert_eq!(d, 0.0, "{policy:?}");
            assert_eq!(
                host.report().total_bytes(),
                device_join.report().total_bytes(),
                "{policy:?}"
            );
        }
    }

    /// Pearson correlation of two tensors' values.
    fn correlation(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let n = a.len() as f64;
        let (ma, mb) = (
            a.iter().map(|&v| v as f64).sum::<f64>() / n,
            b.iter().map(|&v| v as f64).sum::<f64>() / n,
        );
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(&b) {
            let (x, y) = (x as f64 - ma, y as f64 - mb);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa * bb).sqrt()
    }

    /// Parts whose widths are not multiples of the 16-row tile (7, 20) leave zero rows between
    /// the parts of a tiled weight; the fused outputs are still exactly the separate ones, the
    /// resident bytes are the parts' own, and the result tracks f32.
    #[test]
    fn tiled_fused_parts_equal_separate_linears_and_track_f32() {
        let layout = vec![
            ("a.weight".to_string(), vec![7, 100]),
            ("a.bias".to_string(), vec![7]),
            ("b.weight".to_string(), vec![20, 100]),
            ("b.bias".to_string(), vec![20]),
            ("c.weight".to_string(), vec![32, 100]),
            ("c.bias".to_string(), vec![32]),
        ];
        let parts = [("a", 7), ("b", 20), ("c", 32)];
        let x = Tensor::randn(0f32, 1.0, (2, 5, 100), &Device::Cpu).unwrap();
        let exact = weights(QuantPolicy::unquantized(StorageDtype::F32), layout.clone());
        let reference = Linear::load_fused(&exact, 100, &parts, true)
            .unwrap()
            .forward(&x)
            .unwrap();
        for storage in [StorageDtype::Q4Kx16, StorageDtype::Q8_0x16] {
            let w = weights(QuantPolicy::for_storage(storage), layout.clone());
            let fused = Linear::load_fused(&w, 100, &parts, true).unwrap();
            assert!(fused.weight.tiled().is_some(), "{storage}");
            // 1 + 2 + 2 tiles; part b starts at row 16, part c at row 48.
            assert_eq!(fused.offsets, vec![0, 16, 48], "{storage}");
            let y = fused.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 5, 59]);
            let mut separate = Vec::new();
            for (name, n) in parts {
                let single = Linear::load(&w, 100, n, true, name).unwrap();
                separate.push(single.forward(&x).unwrap());
            }
            let separate = Tensor::cat(&separate, 2).unwrap();
            assert_eq!(max_abs_diff(&y, &separate), 0.0, "{storage}");
            let shared = Linear::forward_shared(&[&fused, &fused], &x).unwrap();
            assert_eq!(max_abs_diff(&shared[1], &y), 0.0, "{storage}");
            let r = correlation(&y, &reference);
            assert!(r > 0.99, "{storage}: correlation with f32 {r}");
            // Resident bytes: each part's tiles, as the estimate sizes them.
            let per_part: u64 = parts
                .iter()
                .map(|&(_, n)| storage.bytes_for(&[n, 100]))
                .sum();
            assert_eq!(fused.weight_bytes() as u64, per_part, "{storage}");
            assert_eq!(
                w.report().bytes_by_dtype[&storage],
                2 * per_part,
                "{storage}: fused plus separate loads"
            );
        }
    }

    /// A one-part tiled linear adds its bias and applies the activation in the matmul's
    /// epilogue; the result is what the separate ops give: bit for bit without an
    /// activation (the same f32 add), and within f32 rounding of the `exp` with quick GELU and
    /// GELU's tanh form (against candle's `gelu`, which uses `tanh`). Measured: at most
    /// 4.8e-7 of max |y|.
    #[test]
    fn the_epilogue_is_the_separate_ops() {
        let layout = vec![
            ("a.weight".to_string(), vec![40, 64]),
            ("a.bias".to_string(), vec![40]),
        ];
        let x = Tensor::randn(0f32, 3.0, (3, 7, 64), &Device::Cpu).unwrap();
        for storage in [StorageDtype::Q4Kx16, StorageDtype::Q8_0x16] {
            let w = weights(QuantPolicy::for_storage(storage), layout.clone());
            let l = Linear::load(&w, 64, 40, true, "a").unwrap();
            assert!(l.single_tiled().is_some(), "{storage}");
            let ops = l.finish(l.weight.forward(&x).unwrap()).unwrap();
            assert_eq!(
                max_abs_diff(&l.forward(&x).unwrap(), &ops),
                0.0,
                "{storage}"
            );
            let scale = max_abs_diff(&ops, &ops.zeros_like().unwrap());
            for (act, want) in [
                (
                    Activation::QuickGelu,
                    crate::layers::kernels::quick_gelu_composed(&ops).unwrap(),
                ),
                (Activation::GeluTanh, ops.gelu().unwrap()),
            ] {
                let got = l.forward_act(&x, act).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-5 * scale, "{storage} {act:?}: {d} (max |y| {scale})");
            }
        }
    }

    /// A residual added by the matmul's kernels is the add op's result bit for bit (the same
    /// f32 add), for one part and for parts that follow each other without padding rows (a
    /// fused q/k/v of whole tiles), whose bias is then added by the kernels too.
    #[test]
    fn the_residual_epilogue_is_the_add_op() {
        let layout = vec![
            ("a.weight".to_string(), vec![16, 64]),
            ("a.bias".to_string(), vec![16]),
            ("b.weight".to_string(), vec![32, 64]),
            ("b.bias".to_string(), vec![32]),
        ];
        let x = Tensor::randn(0f32, 3.0, (3, 7, 64), &Device::Cpu).unwrap();
        let residual = Tensor::randn(0f32, 1.0, (3, 7, 48), &Device::Cpu).unwrap();
        for storage in [StorageDtype::Q4Kx16, StorageDtype::Q8_0x16] {
            let w = weights(QuantPolicy::for_storage(storage), layout.clone());
            let fused = Linear::load_fused(&w, 64, &[("a", 16), ("b", 32)], true).unwrap();
            assert!(fused.single_tiled().is_some(), "{storage}");
            let ops = fused.finish(fused.weight.forward(&x).unwrap()).unwrap();
            assert_eq!(max_abs_diff(&fused.forward(&x).unwrap(), &ops), 0.0);
            let want = (&ops + &residual).unwrap();
            let got = fused.forward_add(&x, &residual).unwrap();
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{storage}");
            // A residual of another shape is an error, not a broadcast.
            let wrong = residual.narrow(1, 0, 1).unwrap();
            assert!(fused.forward_add(&x, &wrong).is_err(), "{storage}");
        }
    }

    #[test]
    fn a_tiled_table_gives_its_rows_back() {
        let layout = vec![("t.weight".to_string(), vec![40, 64])];
        let ids = Tensor::new(&[[3u32, 39], [0, 17]], &Device::Cpu).unwrap();
        let exact = weights(QuantPolicy::unquantized(StorageDtype::F32), layout.clone())
            .matmul_weight(&[40, 64], "t.weight")
            .unwrap()
            .embedding(&ids)
            .unwrap();
        for storage in [StorageDtype::Q4Kx16, StorageDtype::Q8_0x16] {
            let table = weights(QuantPolicy::for_storage(storage), layout.clone())
                .matmul_weight(&[40, 64], "t.weight")
                .unwrap();
            let rows = table.embedding(&ids).unwrap();
            assert_eq!(rows.dims(), &[2, 2, 64]);
            // Dummy weights are in [-0.02, 0.02]: half a 4-bit step is at most 0.04 / 30 (the
            // stored f16 scale rounds up by less than 1 %).
            let d = max_abs_diff(&rows, &exact);
            assert!(d <= 0.04 / 30.0 * 1.01, "{storage}: {d}");
            let bad = Tensor::new(&[40u32], &Device::Cpu).unwrap();
            assert!(table.embedding(&bad).is_err());
        }
    }
}
