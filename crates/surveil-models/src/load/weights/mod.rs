//! Where tensors come from and how they become resident.
//!
//! A [`TensorSource`] lists tensors (name, shape, dtype) and produces one tensor at a time: from
//! memory-mapped safetensors files ([`SafetensorsSource`]) or generated deterministically from
//! real shapes ([`DummySource`]). [`Weights`] is what architectures read through: a prefix-scoped
//! view that checks shapes, applies the [`QuantPolicy`](surveil_memory::QuantPolicy) tensor by
//! tensor, and records every byte it makes resident in a [`LoadReport`]. A matmul weight comes
//! out as a [`MatWeight`]: candle's storage, or (on the CPU) a tile layout of
//! [`crate::quant`] with the pool its kernels run on, and the matmuls over it.

mod dummy;
mod matweight;
mod safetensors_source;
mod store;

pub use dummy::DummySource;
pub(crate) use matweight::{
    tiled_experts_forward, tiled_forward, tiled_forward_raw, Epilogue, RoutedPair,
};
pub use matweight::{Bf16Weight, MatWeight, Packed, TiledWeight};
pub use safetensors_source::SafetensorsSource;
pub use store::{default_activations, LoadProgress, LoadReport, Weights};

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Name, shape and on-disk dtype of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Dtype as stored (for dummy weights: the dtype generated).
    pub dtype: DType,
}

/// A set of named tensors that can be read one at a time.
pub trait TensorSource: Send + Sync {
    /// Metadata of `name`, if the source has it.
    fn meta(&self, name: &str) -> Option<TensorMeta>;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// Materialise `name` on `device` in its stored dtype.
    fn load(&self, name: &str, device: &Device) -> Result<Tensor>;
    /// Human description for errors ("dummy weights for ...", "/path/model.safetensors").
    fn describe(&self) -> String;
}
