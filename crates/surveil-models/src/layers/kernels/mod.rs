//! Fused CPU kernels shared by the architectures: one pass over memory, rows split over
//! threads.
//!
//! The kernels are candle custom ops with a CPU implementation only. Every op therefore comes
//! with a dispatch function that runs the kernel for f32 tensors on the CPU
//! ([`runs_cpu_kernel`]) and, on any other device or dtype, a composition of candle ops that
//! computes the same function (built from candle-nn's fused ops where they have GPU kernels).
//! The compositions are separate functions so that tests can run them on the CPU against the
//! kernels.

mod attention;
mod decode;
mod flash;

pub use attention::full_attention_composed;
pub(crate) use decode::DECODE_MAX_ROWS;
pub use decode::{decode_attention, mla_decode_attention};
pub use flash::{flash_attention, flash_attention_with, AttentionPrecision, FlashPath, KeyMask};

pub(crate) use attention::{
    gelu_erf, packed_rope_attention, quick_gelu, quick_gelu_composed, scaled_softmax,
    scaled_softmax_unmasked, swiglu_in_place, RopeLayout,
};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

/// An elementwise activation a linear layer can apply to its output
/// ([`crate::layers::Linear::forward_act`]): applied by the tiled matmul's kernels as they write
/// each output on the CPU ([`crate::quant::Epilogue`]), a separate op elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Activation {
    /// None.
    #[default]
    Identity,
    /// `x · sigmoid(1.702 x)` ([`quick_gelu`]).
    QuickGelu,
    /// GELU's tanh form `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (PyTorch's
    /// `gelu(approximate="tanh")`, candle's `gelu`), computed as `x · sigmoid(2u)`.
    GeluTanh,
    /// Exact GELU `0.5 x (1 + erf(x / √2))` ([`gelu_erf`]).
    GeluErf,
}

impl Activation {
    /// The elementwise function for a run of outputs on the calling thread (a tiled matmul's epilogue, [`crate::quant::Epilogue`]); `None` for the
    /// identity.
    pub(crate) fn tile_fn(self) -> Option<fn(&mut [f32])> {
        match self {
            Self::Identity => None,
            Self::QuickGelu => Some(attention::gate_any::<false>),
            Self::GeluTanh => Some(attention::gate_any::<true>),
            Self::GeluErf => Some(attention::gelu_erf_in_place),
        }
    }

    /// On a tensor (any device and dtype the op supports).
    pub(crate) fn apply(self, x: Tensor) -> crate::Result<Tensor> {
        match self {
            Self::Identity => Ok(x),
            Self::QuickGelu => quick_gelu(&x),
            Self::GeluTanh => Ok(x.gelu()?),
            Self::GeluErf => gelu_erf(&x),
        }
    }
}

/// Whether `x` goes to the fused CPU kernels: f32 on the CPU (a non-contiguous input is copied
/// first). Anything else (another device, another dtype) takes the op's candle composition.
pub(crate) fn runs_cpu_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// RoPE inverse frequencies `θ^(-2i/dim)` for `i` in `0..dim/2` (RoFormer, Su et al. 2021; the
/// `inv_freq` of the reference rotary embeddings), f32. `dim` is the rotated width.
pub(crate) fn rope_inv_freq(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / dim as f64)) as f32)
        .collect()
}

/// Below this many elements a kernel runs on the calling thread only.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

/// Run `f` over `src`/`dst` split into whole rows of `row` elements, on up to candle's thread
/// count when the tensor is large.
pub(crate) fn for_rows(
    src: &[f32],
    dst: &mut [f32],
    row: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) {
    let rows = src.len() / row.max(1);
    let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
    if threads == 1 || src.len() < PARALLEL_MIN_ELEMS {
        f(src, dst);
        return;
    }
    let chunk = rows.div_ceil(threads) * row;
    std::thread::scope(|scope| {
        let mut parts = src.chunks(chunk).zip(dst.chunks_mut(chunk));
        let first = parts.next();
        for (s, d) in parts {
            let f = &f;
            scope.spawn(move || f(s, d));
        }
        if let Some((s, d)) = first {
            f(s, d);
        }
    });
}

/// The f32 data of a contiguous CPU tensor.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("expected f32 storage")
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// The sizes of an attention call on `q` `(..., n, dk)`, `k` `(..., m, dk)`, `v`
/// `(..., m, dv)` (the same leading dimensions).
#[derive(Debug, Clone)]
pub(crate) struct AttentionShape {
    /// Product of the leading dimensions.
    pub(crate) heads: usize,
    pub(crate) n: usize,
    pub(crate) m: usize,
    pub(crate) dk: usize,
    pub(crate) dv: usize,
    /// The output's shape, `(..., n, dv)`.
    pub(crate) out: Shape,
}

impl AttentionShape {
    /// From the three layouts; an error naming `op` when the ranks or sizes do not match or
    /// there are no keys or no value columns.
    pub(crate) fn of(op: &str, lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<Self> {
        let (qd, kd, vd) = (lq.shape().dims(), lk.shape().dims(), lv.shape().dims());
        let rank = qd.len();
        if rank < 2 || kd.len() != rank || vd.len() != rank {
            candle_core::bail!("{op}: shapes {qd:?}, {kd:?}, {vd:?}")
        }
        let lead = &qd[..rank - 2];
        let (n, dk) = (qd[rank - 2], qd[rank - 1]);
        let (m, dv) = (kd[rank - 2], vd[rank - 1]);
        if &kd[..rank - 2] != lead
            || &vd[..rank - 2] != lead
            || kd[rank - 1] != dk
            || vd[rank - 2] != m
            || m == 0
            || dv == 0
        {
            candle_core::bail!("{op}: q {qd:?}, k {kd:?}, v {vd:?} do not match")
        }
        let mut out = qd.to_vec();
        out[rank - 1] = dv;
        Ok(Self {
            heads: lead.iter().product(),
            n,
            m,
            dk,
            dv,
            out: Shape::from(out),
        })
    }
}

/// Fused two-pass LayerNorm over the last dimension (weight and bias), f32 on the CPU only:
/// `x [..., d]` contiguous f32, weight and bias `[d]` contiguous f32. Other devices use
/// [`crate::layers::LayerNorm`]'s composition.
pub(crate) struct LayerNormOp {
    /// Added to the variance.
    pub(crate) eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s1, l1)?;
        let weight = contiguous_f32(s2, l2)?;
        let bias = contiguous_f32(s3, l3)?;
        let dim = l1.shape().dims().last().copied().unwrap_or(0);
        if dim == 0 || weight.len() != dim || bias.len() != dim {
            candle_core::bail!(
                "layer norm: last dim {dim}, weight {}, bias {}",
                weight.len(),
                bias.len()
            );
        }
        let eps = self.eps as f32;
        let mut dst = vec![0f32; src.len()];
        for_rows(src, &mut dst, dim, |s, d| {
            for (x, y) in s.chunks_exact(dim).zip(d.chunks_exact_mut(dim)) {
                let mean = x.iter().sum::<f32>() / dim as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                    *y = (x - mean) * inv * w + b;
                }
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// Largest `|a − b|` over two tensors of one shape, compared in f32 on the host (test helper):
/// equal values (infinities included) differ by 0, and a NaN on either side counts as an
/// infinite difference rather than being skipped.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "max_abs_diff of two shapes");
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    values(a)
        .iter()
        .zip(values(b))
        .map(|(&x, y)| match (x - y).abs() {
            _ if x == y => 0.0,
            d if d.is_nan() => f32::INFINITY,
            d => d,
        })
        .fold(0.0, f32::max)
}

/// `a · b` (equal lengths) in eight lanes, so that the compiler vectorises it without
/// reassociation flags; the lanes are summed at the end, then the tail.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn max_abs_diff_does_not_skip_nan() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        let inf = f32::INFINITY;
        assert_eq!(max_abs_diff(&t(&[1.0, -inf]), &t(&[1.5, -inf])), 0.5);
        assert_eq!(max_abs_diff(&t(&[0.0, f32::NAN]), &t(&[0.0, 0.0])), inf);
        assert_eq!(max_abs_diff(&t(&[0.0, 1.0]), &t(&[0.0, inf])), inf);
    }
}
