//! [`Logits`]: which positions a decoder's forward pass returns logits for.

use candle_core::Tensor;

use crate::Result;

/// Which logits a decoder's `forward` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// For every input position: `(1, s, vocab)`.
    All,
    /// Only for the last input position: `(1, 1, vocab)` (generation).
    Last,
}

impl Logits {
    /// The hidden states `(b, s, hidden)` the output head is applied to: all of them, or the
    /// last position `(b, 1, hidden)`.
    pub fn select(self, hidden: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Logits::All => hidden.clone(),
            Logits::Last => hidden.narrow(1, hidden.dim(1)?.saturating_sub(1), 1)?,
        })
    }
}
