//! Activations and attention shared by the GIT vision tower and text decoder.

use candle_core::Tensor;

use super::config::Activation;
use crate::Result;

/// Apply `act` elementwise (f32).
pub(crate) fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => x.gelu()?,
        Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Multi-head attention over `[B, heads, L, head_dim]` tensors: `softmax(q kᵀ · scale + mask) v`.
/// `mask` is additive (`0` or `-inf`), `[Lq, Lk]`, broadcast over batch and heads.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(v)?)
}

/// `[B, L, heads·d]` → `[B, heads, L, d]` (contiguous).
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, hd) = x.dims3()?;
    Ok(x.reshape((b, l, heads, hd / heads))?.transpose(1, 2)?.contiguous()?)
}

/// `[B, heads, L, d]` → `[B, L, heads·d]` (contiguous).
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_match_their_formulas() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = Tensor::new(&xs[..], &Device::Cpu).unwrap();
        let get = |a| activate(&t, a).unwrap().to_vec1::<f32>().unwrap();
        let erf_gelu = |x: f32| {
            0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2))
        };
        for (i, &x) in xs.iter().enumerate() {
            let quick = x as f64 / (1.0 + (-1.702 * x as f64).exp());
            assert!((get(Activation::QuickGelu)[i] as f64 - quick).abs() < 1e-6);
            assert!((get(Activation::Gelu)[i] as f64 - erf_gelu(x)).abs() < 1e-6);
            assert!((get(Activation::Relu)[i] - x.max(0.0)).abs() < 1e-7);
        }
    }

    /// erf by its Maclaurin series (converges fast for |x| < 3).
    fn erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn masked_keys_get_no_weight() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 2, 4), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((1, 1, 3, 4)).unwrap();
        let v = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [5.0, 5.0]], &dev)
            .unwrap()
            .reshape((1, 1, 3, 2))
            .unwrap();
        let ninf = f32::NEG_INFINITY;
        let mask = Tensor::new(&[[0f32, ninf, ninf], [0.0, 0.0, ninf]], &dev).unwrap();
        let out = attention(&q, &k, &v, Some(&mask), 0.5).unwrap();
        let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&out[0..2], &[1.0, 0.0]);
        assert!(out[2] < 0.01 && out[3] > 0.99, "{out:?}");
    }
}
