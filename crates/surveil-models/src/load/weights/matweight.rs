//! [`MatWeight`]: a matmul weight `W [n, k]` as it is kept resident: candle's storage (float
//! tensors; GGML blocks on CUDA) or the CPU tile layouts of [`crate::quant`] with the thread
//! pool their kernels run on.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use crate::layers::kernels::Activation;
use crate::quant::{
    self, bf16_matmul, grouped_expert_gemv, matmul_quantized_many, matmul_quantized_then,
    ExpertRoute, Kernel, MatmulOut, PackedQ4, PackedQ8, PackedWeight, QuantError,
    QuantizedActivations, ThreadPool, BF16_GEMV_MAX_ROWS,
};
use crate::{ModelError, Result};

/// A packed CPU weight of either tile format.
#[derive(Debug)]
pub enum Packed {
    /// 4-bit (`q4kx16`).
    Q4(PackedQ4),
    /// 8-bit (`q8_0x16`).
    Q8(PackedQ8),
}

impl Packed {
    /// Outputs `n`.
    pub fn rows(&self) -> usize {
        match self {
            Packed::Q4(w) => w.rows(),
            Packed::Q8(w) => w.rows(),
        }
    }

    /// Input width `k`.
    pub fn cols(&self) -> usize {
        match self {
            Packed::Q4(w) => w.cols(),
            Packed::Q8(w) => w.cols(),
        }
    }

    /// Bytes resident (the packed buffer, padding included).
    pub fn bytes(&self) -> usize {
        match self {
            Packed::Q4(w) => w.bytes(),
            Packed::Q8(w) => w.bytes(),
        }
    }

    /// The 4-bit weight, if it is one.
    fn as_q4(&self) -> Option<&PackedQ4> {
        match self {
            Packed::Q4(w) => Some(w),
            Packed::Q8(_) => None,
        }
    }

    /// The 8-bit weight, if it is one.
    fn as_q8(&self) -> Option<&PackedQ8> {
        match self {
            Packed::Q8(w) => Some(w),
            Packed::Q4(_) => None,
        }
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        match self {
            Packed::Q4(w) => w.dequantize_row(row, out),
            Packed::Q8(w) => w.dequantize_row(row, out),
        }
    }

    fn matmul(
        &self,
        x: &QuantizedActivations,
        y: &mut [f32],
        pool: &ThreadPool,
        epilogue: quant::Epilogue<'_>,
    ) -> std::result::Result<(), crate::quant::QuantError> {
        match self {
            Packed::Q4(w) => matmul_quantized_then(Kernel::best(), w, x, y, pool, epilogue),
            Packed::Q8(w) => matmul_quantized_then(Kernel::best(), w, x, y, pool, epilogue),
        }
    }
}

/// A weight in a CPU tile layout, shared by the clones of its layer, with the pool its kernels
/// run on (one pool per loaded model: `vlm.threads` threads, parked between calls).
#[derive(Debug, Clone)]
pub struct TiledWeight {
    packed: Arc<Packed>,
    pool: Arc<ThreadPool>,
}

impl TiledWeight {
    /// `packed` run on `pool`.
    pub fn new(packed: Packed, pool: Arc<ThreadPool>) -> Self {
        Self {
            packed: Arc::new(packed),
            pool,
        }
    }

    /// The packed weight.
    pub fn packed(&self) -> &Packed {
        &self.packed
    }
}

/// A bf16 weight on the CPU (`vlm.storage = bf16`), with the pool of its GEMV.
#[derive(Debug, Clone)]
pub struct Bf16Weight {
    /// `[n, k]` bf16, contiguous, on the CPU.
    tensor: Tensor,
    pool: Arc<ThreadPool>,
}

impl Bf16Weight {
    /// `tensor` (`[n, k]` bf16 on the CPU, made contiguous) run on `pool`.
    ///
    /// Errors: another dtype, rank or device.
    pub fn new(tensor: Tensor, pool: Arc<ThreadPool>) -> Result<Self> {
        if tensor.dtype() != DType::BF16 || tensor.rank() != 2 || !tensor.device().is_cpu() {
            return Err(ModelError::InvalidInput(format!(
                "a bf16 CPU weight must be a 2-D bf16 CPU tensor, not {:?} {:?}",
                tensor.dtype(),
                tensor.dims()
            )));
        }
        Ok(Self {
            tensor: tensor.contiguous()?,
            pool,
        })
    }

    /// The weight tensor `[n, k]`.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// `x [..., k] · Wᵀ`: up to [`BF16_GEMV_MAX_ROWS`] rows through [`bf16_matmul`] (each
    /// weight byte read once, widened in registers, f32 activations); more rows (prefill, the
    /// vision tower) through candle's blocked f32 GEMM over a widened copy of the weight, made
    /// for the call and dropped after it. The result is f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = self.tensor.dims2()?;
        let dims = x.dims().to_vec();
        if dims.last() != Some(&k) {
            return Err(ModelError::InvalidInput(format!(
                "matmul input {dims:?} against a weight [{n}, {k}]"
            )));
        }
        let rows = x.elem_count().checked_div(k).unwrap_or(0);
        let x = x.to_dtype(DType::F32)?;
        if rows > BF16_GEMV_MAX_ROWS || !x.device().is_cpu() {
            return Ok(x.broadcast_matmul(&self.tensor.to_dtype(DType::F32)?.t()?)?);
        }
        let x = x.contiguous()?;
        let mut y = vec![0f32; rows * n];
        {
            let (ws, wl) = self.tensor.storage_and_layout();
            let (xs, xl) = x.storage_and_layout();
            let (Storage::Cpu(CpuStorage::BF16(w)), Storage::Cpu(CpuStorage::F32(xv))) =
                (&*ws, &*xs)
            else {
                return Err(ModelError::InvalidInput(
                    "bf16 matmul operands are not CPU tensors of bf16 and f32".into(),
                ));
            };
            let (Some((wlo, whi)), Some((xlo, xhi))) =
                (wl.contiguous_offsets(), xl.contiguous_offsets())
            else {
                return Err(ModelError::InvalidInput(
                    "bf16 matmul operands are not contiguous".into(),
                ));
            };
            bf16_matmul(&w[wlo..whi], n, k, &xv[xlo..xhi], rows, &mut y, &self.pool)?;
        }
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = n;
        }
        Ok(Tensor::from_vec(y, out, &Device::Cpu)?)
    }
}

/// A matmul weight `W [n, k]` (row `j` = output `j`).
#[derive(Debug, Clone)]
pub enum MatWeight {
    /// candle's storage: a float tensor (f32, f16, bf16) or GGML blocks (on CUDA).
    Candle(QMatMul),
    /// A CPU tile layout ([`crate::quant`]).
    Tiled(TiledWeight),
    /// bf16 on the CPU, multiplied by [`bf16_matmul`] for few rows.
    Bf16(Bf16Weight),
}

impl From<QMatMul> for MatWeight {
    fn from(w: QMatMul) -> Self {
        MatWeight::Candle(w)
    }
}

impl MatWeight {
    /// Outputs `n` (rows of `W`).
    pub fn rows(&self) -> usize {
        match self {
            MatWeight::Candle(QMatMul::QTensor(q)) => q.shape().dims().first().copied(),
            MatWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.dims().first().copied()
            }
            MatWeight::Tiled(t) => Some(t.packed.rows()),
            MatWeight::Bf16(b) => b.tensor.dims().first().copied(),
        }
        .unwrap_or(0)
    }

    /// Bytes the weight occupies (quantized blocks, tiles with their padding, or the float
    /// tensor): what one forward pass reads of it.
    pub fn bytes(&self) -> usize {
        match self {
            MatWeight::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            MatWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
            MatWeight::Tiled(t) => t.packed.bytes(),
            MatWeight::Bf16(b) => b.tensor.elem_count() * 2,
        }
    }

    /// The tiled weight, when it is one.
    pub fn tiled(&self) -> Option<&TiledWeight> {
        match self {
            MatWeight::Tiled(t) => Some(t),
            MatWeight::Candle(_) | MatWeight::Bf16(_) => None,
        }
    }

    /// `x [..., k] · Wᵀ → [..., n]`, in `x`'s dtype. Tiled weights and bf16 CPU weights
    /// compute in f32 (a tiled weight's activations are quantized to 8 bits per 32-block; the
    /// kernels of [`crate::quant`]) and convert the product to `x`'s dtype when it is another.
    ///
    /// Errors: the last dimension of `x` is not `k`; a tiled weight given a tensor that is not
    /// on the CPU; candle's and the kernels' errors.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            MatWeight::Candle(w) => Ok(candle_matmul(w, x)?),
            MatWeight::Tiled(t) => Ok(tiled_forward(&[t], x, &[])?.remove(0)),
            MatWeight::Bf16(b) => Ok(b.forward(x)?.to_dtype(x.dtype())?),
        }
    }

    /// Rows `ids` of `W` (a token table stored as this weight), `ids.dims() + [k]`, f32 for
    /// tiled weights (dequantized), candle's dtype otherwise.
    ///
    /// Errors: an id `≥ n`; candle's errors.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let t = match self {
            MatWeight::Candle(w) => return Ok(w.embedding(ids)?),
            MatWeight::Bf16(b) => {
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
                let (n, k) = b.tensor.dims2()?;
                if let Some(bad) = flat
                    .to_vec1::<u32>()?
                    .into_iter()
                    .find(|&i| i as usize >= n)
                {
                    return Err(ModelError::InvalidInput(format!(
                        "token id {bad} is outside the table ({n} rows)"
                    )));
                }
                let mut dims = ids.dims().to_vec();
                dims.push(k);
                return Ok(b.tensor.index_select(&flat, 0)?.reshape(dims)?);
            }
            MatWeight::Tiled(t) => t,
        };
        let (n, k) = (t.packed.rows(), t.packed.cols());
        let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let mut out = vec![0f32; flat.len() * k];
        for (&id, row) in flat.iter().zip(out.chunks_exact_mut(k.max(1))) {
            if id as usize >= n {
                return Err(ModelError::InvalidInput(format!(
                    "token id {id} is outside the table ({n} rows)"
                )));
            }
            t.packed.dequantize_row(id as usize, row);
        }
        let mut dims = ids.dims().to_vec();
        dims.push(k);
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?.to_device(ids.device())?)
    }
}

/// `x [..., k] · Wᵀ → [..., n]` for a weight `W [n, k]` in candle's storage, on any device, the
/// result in `x`'s dtype. candle's [`QMatMul`] converts the input for quantized blocks and for
/// [`QMatMul::TensorF16`], but multiplies a plain [`QMatMul::Tensor`] as it is, and no backend
/// multiplies two dtypes (`dtype mismatch in matmul, lhs: F32, rhs: BF16`): a float weight of
/// another dtype than `x` (bf16 or f16 weights under f32 activations, as on CUDA, where
/// bf16 weights stay candle's) gets `x` converted to the weight's dtype, multiplied there, and
/// the product converted back. On the CPU, bf16 linear weights are [`MatWeight::Bf16`] and do
/// not come here.
///
/// Errors: candle's (shape mismatch, a dtype the backend cannot multiply).
fn candle_matmul(weight: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    match weight {
        QMatMul::Tensor(w) if w.dtype() != x.dtype() => {
            weight.forward(&x.to_dtype(w.dtype())?)?.to_dtype(x.dtype())
        }
        _ => weight.forward(x),
    }
}

/// What a tiled matmul applies to each output as its kernel writes it, on the thread that
/// computed it ([`quant::Epilogue`]): `y = act(x·Wᵀ + bias) + residual`. No second pass over
/// the output and no new tensor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// `[n]`, added to every output row.
    pub(crate) bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub(crate) act: Activation,
    /// Added last: a tensor of the output's shape (a residual connection), read as contiguous
    /// f32 values.
    pub(crate) residual: Option<&'a Tensor>,
}

/// `x [..., k]` times each of `weights` (all of input width `k`): the activations are quantized
/// once and shared, one row-major `[..., n_i]` f32 buffer per weight, with `epilogues[i]` (when
/// given) applied to output `i` as it is written; also returns `x`'s shape (the outputs' but
/// for the last dimension).
///
/// Errors: `x` not on the CPU; a weight of another input width; a bias of another width; a
/// residual of another shape, dtype or device; the kernels' errors.
pub(crate) fn tiled_forward_raw(
    weights: &[&TiledWeight],
    x: &Tensor,
    epilogues: &[Epilogue<'_>],
) -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
    if !x.device().is_cpu() {
        return Err(ModelError::Unsupported(format!(
            "a weight in a CPU tile layout was given an input on {:?}",
            x.device().location()
        )));
    }
    let dims = x.dims().to_vec();
    let k = dims.last().copied().unwrap_or(0);
    if let Some(w) = weights.iter().find(|w| w.packed.cols() != k) {
        return Err(ModelError::InvalidInput(format!(
            "matmul input {dims:?} against a weight [{}, {}]",
            w.packed.rows(),
            w.packed.cols()
        )));
    }
    let rows = x.elem_count().checked_div(k).unwrap_or(0);
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let acts = {
        let (storage, layout) = x.storage_and_layout();
        let data = cpu_f32(&storage, layout, "matmul input")?;
        match weights.first() {
            Some(w) => QuantizedActivations::quantize_on(data, rows, k, &w.pool)?,
            None => return Ok((Vec::new(), dims)),
        }
    };
    // Each output's residual, checked against its shape and held while the kernels read it.
    let residuals = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let Some(r) = epilogues.get(i).and_then(|e| e.residual) else {
                return Ok(None);
            };
            let mut shape = dims.clone();
            if let Some(last) = shape.last_mut() {
                *last = w.packed.rows();
            }
            if r.dims() != shape.as_slice() || r.dtype() != DType::F32 {
                return Err(ModelError::InvalidInput(format!(
                    "residual {:?} {:?} for a matmul output {shape:?} f32",
                    r.dims(),
                    r.dtype()
                )));
            }
            Ok(Some(r.contiguous()?))
        })
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = residuals
        .iter()
        .map(|r| r.as_ref().map(Tensor::storage_and_layout))
        .collect();
    let mut kernel_epilogues = Vec::with_capacity(weights.len());
    for (i, guard) in guards.iter().enumerate() {
        let e = epilogues.get(i).copied().unwrap_or_default();
        let residual = match guard {
            Some((storage, layout)) => Some(cpu_f32(storage, layout, "residual")?),
            None => None,
        };
        kernel_epilogues.push(quant::Epilogue {
            bias: e.bias,
            activation: e.act.tile_fn(),
            residual,
        });
    }
    let mut outs: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| vec![0f32; rows * w.packed.rows()])
        .collect();
    // Weights of one format on one pool share one job; others run one by one.
    let one_pool = weights
        .iter()
        .all(|w| Arc::ptr_eq(&w.pool, &weights[0].pool));
    // Every weight in one format, or `None`.
    fn all<'w, W>(
        weights: &[&'w TiledWeight],
        pick: fn(&Packed) -> Option<&W>,
    ) -> Option<Vec<&'w W>> {
        weights.iter().map(|w| pick(&w.packed)).collect()
    }
    let pool = &weights[0].pool;
    match (
        one_pool,
        all(weights, Packed::as_q4),
        all(weights, Packed::as_q8),
    ) {
        (true, Some(ws), _) => many(&ws, &mut outs, &kernel_epilogues, &acts, pool)?,
        (true, _, Some(ws)) => many(&ws, &mut outs, &kernel_epilogues, &acts, pool)?,
        _ => {
            for ((w, y), e) in weights.iter().zip(&mut outs).zip(&kernel_epilogues) {
                w.packed.matmul(&acts, y, &w.pool, *e)?;
            }
        }
    }
    Ok((outs, dims))
}

/// `outs[i] = epilogues[i](acts · weights[i]ᵀ)` as one pool job ([`matmul_quantized_many`]).
fn many<W: PackedWeight>(
    weights: &[&W],
    outs: &mut [Vec<f32>],
    epilogues: &[quant::Epilogue<'_>],
    acts: &QuantizedActivations,
    pool: &ThreadPool,
) -> Result<()> {
    let mut products: Vec<MatmulOut<'_, '_, W>> = weights
        .iter()
        .zip(outs.iter_mut())
        .zip(epilogues)
        .map(|((&w, y), &epilogue)| MatmulOut { w, y, epilogue })
        .collect();
    Ok(matmul_quantized_many(
        Kernel::best(),
        &mut products,
        acts,
        pool,
    )?)
}

/// The values of a contiguous f32 CPU tensor's storage, or an error naming `what`.
fn cpu_f32<'s>(
    storage: &'s Storage,
    layout: &candle_core::Layout,
    what: &str,
) -> Result<&'s [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((lo, hi))) => Ok(&d[lo..hi]),
        _ => Err(ModelError::InvalidInput(format!(
            "{what} is not a contiguous f32 CPU tensor"
        ))),
    }
}

/// [`tiled_forward_raw`] as tensors: one `[..., n_i]` tensor per weight, computed in f32 and
/// given `x`'s dtype.
///
/// Errors: as [`tiled_forward_raw`].
pub(crate) fn tiled_forward(
    weights: &[&TiledWeight],
    x: &Tensor,
    epilogues: &[Epilogue<'_>],
) -> Result<Vec<Tensor>> {
    let (outs, dims) = tiled_forward_raw(weights, x, epilogues)?;
    outs.into_iter()
        .zip(weights)
        .map(|(y, w)| {
            let mut out = dims.clone();
            if let Some(last) = out.last_mut() {
                *last = w.packed.rows();
            }
            Ok(Tensor::from_vec(y, out, &Device::Cpu)?.to_dtype(x.dtype())?)
        })
        .collect()
}

/// One routed (token, expert) pair of a mixture-of-experts layer and its routing weight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoutedPair {
    /// Row of the layer's input.
    pub(crate) token: usize,
    /// Index into the experts.
    pub(crate) expert: usize,
    /// Routing weight of the pair.
    pub(crate) weight: f32,
}

/// The routed experts of a MoE layer, each a SwiGLU MLP `down(silu(gate(x)) · up(x))` with
/// weights `[gate, up, down]` in one CPU tile format, over the rows `x [tokens, hidden]`:
/// `out[t] = Σ_pairs of t weight · expert(x[t])`, `[tokens, hidden]` f32. Three pool jobs in
/// all ([`grouped_expert_gemv`] for gate, up and down), each reading only the chosen experts,
/// once per call. `None` when the experts' weights are not all of one tile format.
///
/// Errors: shapes that do not agree; the kernels' errors.
pub(crate) fn tiled_experts_forward(
    experts: &[[&TiledWeight; 3]],
    x: &[f32],
    tokens: usize,
    pairs: &[RoutedPair],
) -> Result<Option<Vec<f32>>> {
    let Some(first) = experts.first() else {
        return Ok(None);
    };
    let pool = first[0].pool.clone();
    let q4 = |i: usize| -> Option<Vec<&PackedQ4>> {
        experts
            .iter()
            .map(|e| match &*e[i].packed {
                Packed::Q4(w) => Some(w),
                Packed::Q8(_) => None,
            })
            .collect()
    };
    let q8 = |i: usize| -> Option<Vec<&PackedQ8>> {
        experts
            .iter()
            .map(|e| match &*e[i].packed {
                Packed::Q8(w) => Some(w),
                Packed::Q4(_) => None,
            })
            .collect()
    };
    if let (Some(g), Some(u), Some(d)) = (q4(0), q4(1), q4(2)) {
        return Ok(Some(swiglu_experts(&g, &u, &d, x, tokens, pairs, &pool)?));
    }
    if let (Some(g), Some(u), Some(d)) = (q8(0), q8(1), q8(2)) {
        return Ok(Some(swiglu_experts(&g, &u, &d, x, tokens, pairs, &pool)?));
    }
    Ok(None)
}

/// [`tiled_experts_forward`] for one format.
fn swiglu_experts<W: PackedWeight>(
    gate: &[W],
    up: &[W],
    down: &[W],
    x: &[f32],
    tokens: usize,
    pairs: &[RoutedPair],
    pool: &ThreadPool,
) -> std::result::Result<Vec<f32>, QuantError> {
    let kernel = Kernel::best();
    let (Some(g0), Some(d0)) = (gate.first(), down.first()) else {
        return Ok(vec![0f32; x.len()]);
    };
    let (hidden, inner) = (g0.cols(), g0.rows());
    if d0.rows() != hidden || d0.cols() != inner {
        return Err(QuantError::Shape(format!(
            "expert down projection [{}, {}] after gate [{inner}, {hidden}]",
            d0.rows(),
            d0.cols()
        )));
    }
    let acts = QuantizedActivations::quantize_on(x, tokens, hidden, pool)?;
    let routes: Vec<ExpertRoute> = pairs
        .iter()
        .map(|p| ExpertRoute {
            expert: p.expert,
            row: p.token,
        })
        .collect();
    let mut g = vec![0f32; pairs.len() * inner];
    let mut u = vec![0f32; pairs.len() * inner];
    grouped_expert_gemv(kernel, gate, &acts, &routes, &mut g, pool)?;
    grouped_expert_gemv(kernel, up, &acts, &routes, &mut u, pool)?;
    // SwiGLU: silu(g) · u, silu(v) = v / (1 + e^−v) as candle computes it.
    crate::layers::kernels::swiglu_in_place(&mut g, &u);
    let hidden_acts = QuantizedActivations::quantize_on(&g, pairs.len(), inner, pool)?;
    let routes: Vec<ExpertRoute> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| ExpertRoute {
            expert: p.expert,
            row: i,
        })
        .collect();
    let mut d = vec![0f32; pairs.len() * hidden];
    grouped_expert_gemv(kernel, down, &hidden_acts, &routes, &mut d, pool)?;
    let mut out = vec![0f32; tokens * hidden];
    for (p, row) in pairs.iter().zip(d.chunks_exact(hidden.max(1))) {
        let dst = &mut out[p.token * hidden..(p.token + 1) * hidden];
        for (o, v) in dst.iter_mut().zip(row) {
            *o += p.weight * v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::max_abs_diff;

    /// `W [16, 64]` and inputs `[..., 64]` of rank 2, 3 and 4 (candle's `QMatMul` broadcasts the
    /// weight over one or two batch dimensions).
    fn weight_and_inputs() -> (Tensor, Vec<Tensor>) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 64), &dev).unwrap();
        let xs = [&[5usize, 64][..], &[2, 3, 64], &[2, 2, 3, 64]]
            .iter()
            .map(|dims| Tensor::randn(0f32, 1.0, *dims, &dev).unwrap())
            .collect();
        (w, xs)
    }

    /// A float weight of another dtype than the activations, in candle's storage as a CUDA
    /// load keeps it (`QMatMul::Tensor` of bf16 or f16, or `QMatMul::TensorF16`, built directly
    /// rather than through the CPU loader, which makes bf16 a [`MatWeight::Bf16`]): f32 in, f32
    /// out, the f32 product within the weight type's precision. Measured (max |y| 20 to 30):
    /// bf16 up to 0.083, f16 (both variants) up to 0.010.
    #[test]
    fn a_float_weight_of_another_dtype_multiplies_f32_activations() {
        let (w, xs) = weight_and_inputs();
        // Relative precision of the type (2⁻⁸ for bf16, 2⁻¹¹ for f16): the input and the output
        // each round by half of it, the 64 weight roundings add up to about as much again.
        let cases = [
            (
                "bf16",
                QMatMul::Tensor(w.to_dtype(DType::BF16).unwrap()),
                2e-2,
            ),
            (
                "f16",
                QMatMul::Tensor(w.to_dtype(DType::F16).unwrap()),
                3e-3,
            ),
            (
                "f16 (TensorF16)",
                QMatMul::TensorF16(w.to_dtype(DType::F16).unwrap()),
                3e-3,
            ),
        ];
        for (name, q, relative) in cases {
            let mw = MatWeight::Candle(q);
            for x in &xs {
                let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                let got = mw.forward(x).unwrap();
                assert_eq!(got.dtype(), DType::F32, "{name}");
                assert_eq!(got.dims(), want.dims(), "{name}");
                let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
                let d = max_abs_diff(&got, &want);
                assert!(
                    d <= relative * scale,
                    "{name} {:?}: max |diff| {d}, max |y| {scale}",
                    x.dims()
                );
            }
        }
    }

    /// The other direction (bf16 activations, an f32 weight) also multiplies, in f32, and
    /// gives bf16: the f32 product rounded once (half a bf16 step, at most 2⁻⁸ relative).
    #[test]
    fn activations_of_another_dtype_than_an_f32_weight_multiply() {
        let (w, xs) = weight_and_inputs();
        let mw = MatWeight::Candle(QMatMul::Tensor(w.clone()));
        let x = xs[1].to_dtype(DType::BF16).unwrap();
        let got = mw.forward(&x).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = x
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap();
        let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
        let d = max_abs_diff(&got, &want);
        assert!(d <= 8e-3 * scale, "{d} against max |y| {scale}");
    }
}
