//! Activations and attention shared by the GIT vision tower and text decoder.
//!
//! On the CPU with contiguous f32 input, the activations run as fused kernels
//! (one pass over memory, rows split over threads); on any other device, dtype or layout they
//! run as candle's ops with the same math ([`activate_composed`]). The attention runs the
//! fused CPU kernels on f32 CPU tensors and candle ops elsewhere.

use candle_core::Tensor;

use super::config::Activation;
use crate::layers::kernels::{
    decode_attention, flash_attention, gelu_erf, runs_cpu_kernel, scaled_softmax,
    scaled_softmax_unmasked, Activation as FusedActivation, KeyMask, DECODE_MAX_ROWS,
};
use crate::layers::Linear;
use crate::Result;

/// Apply `act` elementwise to `x` (any shape); the result has `x`'s shape, dtype and device.
/// Exact-erf GELU and quick-GELU of a contiguous f32 CPU tensor run fused CPU kernels; all
/// else runs [`activate_composed`].
pub(crate) fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    if runs_cpu_kernel(x) && x.is_contiguous() {
        match act {
            Activation::Gelu => return gelu_erf(x),
            Activation::QuickGelu => return crate::layers::kernels::quick_gelu(x),
            _ => {}
        }
    }
    activate_composed(x, act)
}

/// `act(x Wᵀ + b)` through `linear`: an activation the tiled matmul's kernels apply as they
/// write each output (the GELUs) is fused there; the others run after it ([`activate`]).
pub(crate) fn linear_act(linear: &Linear, x: &Tensor, act: Activation) -> Result<Tensor> {
    let fused = match act {
        Activation::Gelu => FusedActivation::GeluErf,
        Activation::GeluNew => FusedActivation::GeluTanh,
        Activation::QuickGelu => FusedActivation::QuickGelu,
        Activation::Relu | Activation::Silu => return activate(&linear.forward(x)?, act),
    };
    linear.forward_act(x, fused)
}

/// [`activate`] as candle ops (unary ops and candle-nn's `sigmoid`, all with CUDA kernels),
/// for any device and float dtype. Matches the fused kernels on f32 within a few f32 steps of
/// the result (GELU: their erf approximation is within 1.5e-7; quick-GELU: their `exp`).
pub(crate) fn activate_composed(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => x.gelu()?,
        Activation::QuickGelu => crate::layers::kernels::quick_gelu_composed(x)?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// GIT's decoder mask in both forms: additive (`0` or `-inf`, `[rows, keys]`, broadcast over
/// batch and heads) for the composition of candle ops, and the same rule as a [`KeyMask`] for
/// the fused CPU kernel.
#[derive(Debug, Clone)]
pub(crate) struct DecoderMask {
    pub(crate) additive: Tensor,
    pub(crate) keys: KeyMask,
}

/// Multi-head attention over `[B, heads, L, head_dim]` tensors: `softmax(q kᵀ · scale + mask) v`
/// (`mask` `None`: every query sees every key). f32 on the CPU runs the fused kernels: a decode
/// step's few query rows against the cache read in place ([`decode_attention`]), anything else
/// the tiled kernel with the mask's [`KeyMask`]; other devices and dtypes run candle ops with
/// the additive mask.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&DecoderMask>,
    scale: f64,
) -> Result<Tensor> {
    if runs_cpu_kernel(q) && k.dim(2)? > 0 {
        let scale = scale as f32;
        return match mask {
            None if q.dim(2)? <= DECODE_MAX_ROWS => decode_attention(q, k, v, scale, None),
            None => flash_attention(q, k, v, scale, KeyMask::All),
            Some(m) => flash_attention(q, k, v, scale, m.keys),
        };
    }
    // `scale · (q kᵀ + mask)` equals the reference's `scale · q kᵀ + mask` (the mask is 0 or
    // -inf); the softmax reduces in f32 whatever the scores' dtype.
    let scores = q.matmul(&k.t()?)?;
    let probs = match mask {
        Some(m) => scaled_softmax(
            &scores.broadcast_add(&m.additive.to_dtype(scores.dtype())?)?,
            scale as f32,
        )?,
        None => scaled_softmax_unmasked(&scores, scale as f32)?,
    };
    Ok(probs.matmul(v)?)
}

/// A fused q/k/v projection `[B, L, 3·heads·d]` → q, k, v as `[B, heads, L, d]`, contiguous,
/// with one copy.
pub(crate) fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, three_hd) = qkv.dims3()?;
    let d = three_hd / (3 * heads);
    let all = qkv
        .reshape((b, l, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    Ok((all.get(0)?, all.get(1)?, all.get(2)?))
}

/// `[B, heads, L, d]` → `[B, L, heads·d]` (contiguous).
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::max_abs_diff;
    use candle_core::{DType, Device};

    #[test]
    fn activations_match_their_formulas() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = Tensor::new(&xs[..], &Device::Cpu).unwrap();
        let get = |a| activate(&t, a).unwrap().to_vec1::<f32>().unwrap();
        let erf_gelu = |x: f32| {
            0.5 * x as f64
                * (1.0 + candle_core::cpu::erf::erf_f64(x as f64 / std::f64::consts::SQRT_2))
        };
        for (i, &x) in xs.iter().enumerate() {
            let quick = x as f64 / (1.0 + (-1.702 * x as f64).exp());
            assert!((get(Activation::QuickGelu)[i] as f64 - quick).abs() < 1e-6);
            assert!((get(Activation::Gelu)[i] as f64 - erf_gelu(x)).abs() < 1e-6);
            assert!((get(Activation::Relu)[i] - x.max(0.0)).abs() < 1e-7);
        }
    }

    /// The fused kernels against the composition that runs off the CPU, on the same random
    /// input, contiguous (fused) and transposed (composition on both sides: the dispatch for a
    /// non-contiguous input). Measured over N(0, 3²): GELU 4.8e-7, quick-GELU 7.2e-7 (one f32
    /// step at |x| ≈ 8).
    #[test]
    fn composed_activations_match_the_kernels() {
        let x = Tensor::randn(0f32, 3.0, (16, 4096), &Device::Cpu).unwrap();
        for (act, tolerance) in [(Activation::Gelu, 5e-6f32), (Activation::QuickGelu, 1e-5)] {
            let fused = activate(&x, act).unwrap();
            let composed = activate_composed(&x, act).unwrap();
            let d = max_abs_diff(&fused, &composed);
            assert!(d < tolerance, "{act:?}: {d}");
            let xt = x.t().unwrap();
            let d = max_abs_diff(&activate(&xt, act).unwrap(), &fused.t().unwrap());
            assert!(d < tolerance, "{act:?} transposed: {d}");
        }
        // Another dtype takes the composition and keeps its dtype.
        let y = activate(&x.to_dtype(DType::BF16).unwrap(), Activation::Gelu).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
    }

    #[test]
    fn masked_keys_get_no_weight() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 2, 4), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let v = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [5.0, 5.0]], &dev)
            .unwrap()
            .reshape((1, 1, 3, 2))
            .unwrap();
        let ninf = f32::NEG_INFINITY;
        let mask = DecoderMask {
            additive: Tensor::new(&[[0f32, ninf, ninf], [0.0, 0.0, ninf]], &dev).unwrap(),
            keys: KeyMask::Causal {
                offset: 0,
                period: 2,
            },
        };
        // The fused kernel (f32) and the composition (f64, the f32 mask cast to it).
        for dtype in [DType::F32, DType::F64] {
            let [q, k, v] = [&q, &k, &v].map(|t| t.to_dtype(dtype).unwrap());
            let out = attention(&q, &k, &v, Some(&mask), 0.5).unwrap();
            let out = out.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let out: Vec<f32> = out.to_vec1().unwrap();
            assert_eq!(&out[0..2], &[1.0, 0.0], "{dtype:?}");
            assert!(out[2] < 0.01 && out[3] > 0.99, "{dtype:?}: {out:?}");
        }
    }

    /// GIT's mask through the fused kernel (f32 on the CPU: the [`KeyMask`]) and through the
    /// composition (f64: the additive matrix) on the same random inputs: the first prefill
    /// (image tokens and a prompt), text after cached image tokens, a text step with several
    /// tokens.
    #[test]
    fn the_mask_kernel_matches_the_additive_mask() {
        let dev = Device::Cpu;
        for (past, image_new, text_new) in [(0, 9, 1), (0, 5, 4), (6, 0, 3), (0, 20, 17)] {
            let rows = image_new + text_new;
            let mask = super::super::decoder::decoder_mask(past, image_new, text_new, &dev)
                .unwrap()
                .expect("a mask");
            let q = Tensor::randn(0f32, 1.0, (1, 2, rows, 16), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, 2, past + rows, 16), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, 2, past + rows, 8), &dev).unwrap();
            let fused = attention(&q, &k, &v, Some(&mask), 0.25).unwrap();
            let [q, k, v] = [&q, &k, &v].map(|t| t.to_dtype(DType::F64).unwrap());
            // The f32 additive mask is cast to the scores' dtype.
            let composed = attention(&q, &k, &v, Some(&mask), 0.25)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let d = max_abs_diff(&fused, &composed);
            assert!(
                d < 1e-5,
                "past {past} image {image_new} text {text_new}: {d}"
            );
        }
    }
}
