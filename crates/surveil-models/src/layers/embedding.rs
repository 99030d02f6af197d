//! [`Embedding`]: a token table and row lookup.

use candle_core::{DType, Tensor};

use crate::load::weights::Weights;
use crate::Result;

/// An embedding table kept in the policy's float type; looked-up rows come back in the
/// model's activation dtype ([`Weights::activation_dtype`]).
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    /// The dtype of looked-up rows.
    dtype: DType,
}

impl Embedding {
    /// Load a `[vocab, dim]` table named `weight` under `w`.
    pub fn load(w: &Weights, vocab: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            table: w.get_table(&[vocab, dim], "weight")?,
            dtype: w.activation_dtype(),
        })
    }

    /// Rows for `ids` (any shape of u32 ids) → `[..ids, dim]` in the activation dtype.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.table.dim(1)?);
        let rows = self.table.index_select(&ids.flatten_all()?, 0)?;
        Ok(rows.to_dtype(self.dtype)?.reshape(shape)?)
    }

    /// The table itself (for tied output heads).
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}
