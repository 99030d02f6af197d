//! Building blocks shared by the architectures.

mod embedding;
pub(crate) mod kernels;
mod kv_cache;
mod linear;
mod logits;
mod norm;

pub use embedding::Embedding;
pub use kv_cache::{KvCache, LayerKvCache};
pub use linear::Linear;
pub use logits::Logits;
pub use norm::{LayerNorm, RmsNorm};
