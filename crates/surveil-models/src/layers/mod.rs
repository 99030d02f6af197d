//! The building blocks the architectures share: one [`Linear`] (plain, fused parts, shared
//! input in decode), one [`KvCache`] (a growing per-layer pair), one [`Logits`] choice, the
//! norms and the token [`Embedding`], and fused CPU kernels (`kernels`).
//!
//! Layers read their tensors through [`crate::load::weights::Weights`]; nothing in
//! [`crate::load`] depends on them.

mod embedding;
pub(crate) mod kernels;
mod kv_cache;
mod linear;
mod logits;
mod norm;

pub use crate::load::weights::MatWeight;
pub use embedding::Embedding;
pub use kv_cache::{KvCache, LayerKvCache};
pub use linear::Linear;
pub use logits::Logits;
pub use norm::{LayerNorm, RmsNorm};
