//! Deterministic random weights with real names and shapes, generated on demand.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::{TensorMeta, TensorSource};
use crate::{ModelError, Result};

/// Random weights for a checkpoint layout: each tensor is generated from a seed derived from its
/// name, so the same name always gives the same values, whatever order tensors are asked in.
/// Values are uniform in `±scale`, with norm weights (1-D tensors whose name contains `norm`) set
/// to one so activations stay in range. Nothing is written to disk.
pub struct DummySource {
    tensors: BTreeMap<String, TensorMeta>,
    seed: u64,
    scale: f32,
    label: String,
}

impl DummySource {
    /// A dummy checkpoint for `layout` (name → shape), generated in `dtype`.
    pub fn new(
        label: impl Into<String>,
        layout: impl IntoIterator<Item = (String, Vec<usize>)>,
        dtype: DType,
        seed: u64,
    ) -> Self {
        let tensors = layout
            .into_iter()
            .map(|(name, shape)| (name, TensorMeta { shape, dtype }))
            .collect();
        Self {
            tensors,
            seed,
            scale: 0.02,
            label: label.into(),
        }
    }

    /// Number of parameters in the layout.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .values()
            .map(|m| m.shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }
}

/// FNV-1a, so seeds do not depend on the std hasher's randomisation.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's increment: element `i` of a tensor uses state `seed + (i + 1)·GOLDEN`.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Below this many values a tensor is filled on the calling thread only.
const PARALLEL_FILL_MIN: usize = 1 << 22;

/// splitmix64: a fast, well-mixed generator; quality is plenty for dummy weights. Element `i`
/// depends only on `state` and `i`, so large tensors are filled in chunks on all cores
/// (Kimi-VL's 16.4 B values took over a minute on one) with exactly the serial values.
fn fill_uniform(out: &mut [f32], state: u64, scale: f32) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || out.len() < PARALLEL_FILL_MIN {
        return fill_uniform_from(out, state, scale);
    }
    let chunk = out.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            let start = state.wrapping_add(GOLDEN.wrapping_mul((c * chunk) as u64));
            scope.spawn(move || fill_uniform_from(part, start, scale));
        }
    });
}

/// The serial fill: `state` is the generator's state before `out[0]`.
fn fill_uniform_from(out: &mut [f32], mut state: u64, scale: f32) {
    for v in out.iter_mut() {
        state = state.wrapping_add(GOLDEN);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        *v = (unit * 2.0 - 1.0) * scale;
    }
}

impl TensorSource for DummySource {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.tensors.get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let meta = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.describe(),
            })?;
        let n: usize = meta.shape.iter().product();
        let lower = name.to_ascii_lowercase();
        let is_norm = meta.shape.len() == 1 && lower.contains("norm") && lower.ends_with("weight");
        let data = if is_norm {
            vec![1f32; n]
        } else {
            let mut data = vec![0f32; n];
            fill_uniform(&mut data, self.seed ^ fnv1a(name.as_bytes()), self.scale);
            data
        };
        let t = Tensor::from_vec(data, meta.shape.as_slice(), device)?;
        Ok(if meta.dtype == DType::F32 {
            t
        } else {
            t.to_dtype(meta.dtype)?
        })
    }

    fn describe(&self) -> String {
        format!("dummy weights for {}", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked fill gives the serial values, whatever the chunk boundaries.
    #[test]
    fn parallel_fill_is_the_serial_fill() {
        let n = PARALLEL_FILL_MIN + 12_345;
        let mut serial = vec![0f32; n];
        fill_uniform_from(&mut serial, 0xdead_beef, 0.5);
        let mut parallel = vec![0f32; n];
        fill_uniform(&mut parallel, 0xdead_beef, 0.5);
        assert!(serial == parallel);
        assert!(serial.iter().all(|v| v.abs() <= 0.5));
        assert_ne!(serial[0], serial[n - 1]);
    }

    #[test]
    fn same_name_same_values_regardless_of_order() {
        let layout = vec![
            ("a.weight".to_string(), vec![4, 8]),
            ("b.weight".to_string(), vec![3]),
        ];
        let src = DummySource::new("t", layout, DType::F32, 7);
        let a1 = src.load("a.weight", &Device::Cpu).unwrap();
        let _ = src.load("b.weight", &Device::Cpu).unwrap();
        let a2 = src.load("a.weight", &Device::Cpu).unwrap();
        let d = (a1 - a2).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(src.parameter_count(), 35);
        assert!(src.load("c.weight", &Device::Cpu).is_err());
    }
}
