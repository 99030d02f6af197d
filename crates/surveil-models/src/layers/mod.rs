//! Building blocks shared by the architectures.

pub(crate) mod kernels;
mod linear;
mod norm;

pub(crate) use linear::FusedLinear;
pub use norm::{Embedding, LayerNorm, Linear, RmsNorm};
