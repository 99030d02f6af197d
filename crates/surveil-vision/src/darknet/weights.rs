//! Reader for Darknet `.weights` files.
//!
//! Layout: `int32 major, minor, revision`, then `seen` (int64 when `major*10 + minor >= 2`
//! and both are < 1000, else int32), then for every `[convolutional]` in cfg order,
//! little-endian f32: `biases[filters]`; with batch norm `scales`, `rolling_mean`,
//! `rolling_variance` (each `[filters]`); then `weights[filters * in * size * size]` (OIHW).
//! The file must hold exactly that many values: a longer or shorter file means a different
//! network, and is an error that says expected vs found bytes.

use std::path::Path;

use super::cfg::{ConvSpec, DarknetConfig, LayerSpec};
use crate::error::{Result, VisionError};

/// The version header of a `.weights` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsHeader {
    /// Major version.
    pub major: i32,
    /// Minor version.
    pub minor: i32,
    /// Revision.
    pub revision: i32,
    /// Images seen in training.
    pub seen: u64,
    /// Header size in bytes (16 or 20).
    pub bytes: usize,
}

/// Parameters of one convolutional layer with batch norm folded in (Darknet inference
/// semantics: `s = gamma / (sqrt(var) + 1e-6)`, `W' = W * s`, `b' = beta - mean * s`).
#[derive(Debug, Clone)]
pub struct ConvParams {
    /// Weights, OIHW, `filters * in * size * size`.
    pub weights: Vec<f32>,
    /// Bias per output channel.
    pub bias: Vec<f32>,
}

/// Parameters of every convolutional layer, indexed by layer index (None for other layers).
#[derive(Debug, Clone)]
pub struct DarknetWeights {
    /// The file's header.
    pub header: WeightsHeader,
    /// Per layer: folded conv parameters, or None for non-conv layers.
    pub layers: Vec<Option<ConvParams>>,
}

/// Darknet's batch-norm epsilon, added to the standard deviation (not the variance).
const BN_EPS: f32 = 1e-6;

impl DarknetWeights {
    /// Reads a `.weights` file for the network `cfg`.
    pub fn from_file(path: &Path, cfg: &DarknetConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(VisionError::io("cannot read", path))?;
        Self::from_bytes(&bytes, cfg, path)
    }

    /// Parses the bytes of a `.weights` file; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], cfg: &DarknetConfig, path: &Path) -> Result<Self> {
        let header = read_header(bytes, path)?;
        let params = cfg.weight_param_count();
        let expected = (params as u64)
            .saturating_mul(4)
            .saturating_add(header.bytes as u64);
        if bytes.len() as u64 != expected {
            return Err(VisionError::WeightsSize {
                path: path.to_path_buf(),
                expected,
                found: bytes.len() as u64,
                header: header.bytes as u64,
                params: params as u64,
            });
        }
        let mut reader = F32Reader {
            bytes: &bytes[header.bytes..],
        };
        let layers = cfg
            .layers
            .iter()
            .map(|layer| match layer {
                LayerSpec::Convolutional(spec) => Some(read_conv(&mut reader, spec)),
                _ => None,
            })
            .collect();
        Ok(Self { header, layers })
    }
}

fn read_header(bytes: &[u8], path: &Path) -> Result<WeightsHeader> {
    let word = |i: usize| -> Option<i32> {
        bytes
            .get(4 * i..4 * i + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
    };
    let short = || VisionError::WeightsHeader {
        path: path.to_path_buf(),
        message: format!(
            "file has {} bytes, too short for a Darknet header (16 or 20 bytes)",
            bytes.len()
        ),
    };
    let (major, minor, revision) = match (word(0), word(1), word(2)) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(short()),
    };
    if !(0..1000).contains(&major) || !(0..1000).contains(&minor) {
        return Err(VisionError::WeightsHeader {
            path: path.to_path_buf(),
            message: format!(
                "implausible version {major}.{minor}.{revision}: not a Darknet weights file"
            ),
        });
    }
    let (seen, header_bytes) = if major * 10 + minor >= 2 {
        let seen = bytes
            .get(12..20)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(short)?;
        (seen, 20)
    } else {
        let seen = word(3).ok_or_else(short)? as u32 as u64;
        (seen, 16)
    };
    Ok(WeightsHeader {
        major,
        minor,
        revision,
        seen,
        bytes: header_bytes,
    })
}

struct F32Reader<'a> {
    bytes: &'a [u8],
}

impl F32Reader<'_> {
    /// Takes `n` values. The total size was checked up front, so running out is a broken
    /// invariant, not bad input.
    fn take(&mut self, n: usize) -> Vec<f32> {
        let (head, tail) = self.bytes.split_at(4 * n);
        self.bytes = tail;
        head.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

fn read_conv(reader: &mut F32Reader<'_>, spec: &ConvSpec) -> ConvParams {
    let n = spec.filters;
    let biases = reader.take(n);
    let bn = spec
        .batch_normalize
        .then(|| (reader.take(n), reader.take(n), reader.take(n)));
    let mut weights = reader.take(n * spec.in_channels * spec.size * spec.size);
    let bias = match bn {
        None => biases,
        Some((gamma, mean, var)) => {
            let per_out = spec.in_channels * spec.size * spec.size;
            let mut bias = Vec::with_capacity(n);
            for o in 0..n {
                let s = gamma[o] / (var[o].sqrt() + BN_EPS);
                for w in &mut weights[o * per_out..(o + 1) * per_out] {
                    *w *= s;
                }
                bias.push(biases[o] - mean[o] * s);
            }
            bias
        }
    };
    ConvParams { weights, bias }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DarknetConfig {
        DarknetConfig::parse(
            "[net]\nwidth=4\nheight=4\nchannels=1\n\
             [convolutional]\nbatch_normalize=1\nfilters=2\nsize=1\nstride=1\npad=1\nactivation=leaky\n",
            Path::new("t.cfg"),
        )
        .unwrap()
    }

    fn file(values: &[f32]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [0i32, 2, 0] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&7u64.to_le_bytes());
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn folds_batch_norm_darknet_style() {
        // beta, gamma, mean, var, weights
        let values = [1.0, 2.0, 3.0, 4.0, 0.5, 1.0, 4.0, 0.25, 10.0, 20.0];
        let w = DarknetWeights::from_bytes(&file(&values), &cfg(), Path::new("t.weights")).unwrap();
        assert_eq!(w.header.seen, 7);
        assert_eq!(w.header.bytes, 20);
        let p = w.layers[0].as_ref().unwrap();
        let s0 = 3.0f32 / (4.0f32.sqrt() + 1e-6);
        let s1 = 4.0f32 / (0.25f32.sqrt() + 1e-6);
        assert_eq!(p.weights, vec![10.0 * s0, 20.0 * s1]);
        assert_eq!(p.bias, vec![1.0 - 0.5 * s0, 2.0 - 1.0 * s1]);
    }

    #[test]
    fn wrong_length_says_expected_and_found() {
        let e = DarknetWeights::from_bytes(&file(&[0.0; 9]), &cfg(), Path::new("t.weights"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected 60 bytes") && e.contains("found 56 bytes"),
            "{e}"
        );
        let e = DarknetWeights::from_bytes(&[1, 2, 3], &cfg(), Path::new("t.weights"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 bytes"), "{e}");
    }
}
