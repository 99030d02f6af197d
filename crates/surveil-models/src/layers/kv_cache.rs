//! [`KvCache`]: what a decoder keeps of the positions it has processed, one growing pair of
//! buffers per layer ([`LayerKvCache`]).
//!
//! Every architecture caches a pair per layer and appends to it along a sequence axis: keys and
//! values `(b, kv_heads, seq, head_dim)` for Qwen2-VL and GIT, the compressed latent and the
//! rotated key part `(1, seq, dim)` for DeepSeek-V3's MLA. The buffers are preallocated with
//! zeros and written in place; when full they grow by a whole number of `grow_by` positions,
//! so appending one token is a copy into the buffer, not a concatenation of everything cached.

use candle_core::Tensor;

use crate::{ModelError, Result};

/// The cached pair of one decoder layer: two buffers of the same rank (keys and values, or
/// MLA's latent and rotated key part) filled from the front along a sequence axis.
#[derive(Debug)]
pub struct LayerKvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// The sequence axis of the buffers.
    axis: usize,
    /// Positions by which the buffers grow when full (the first allocation too).
    grow_by: usize,
}

impl LayerKvCache {
    /// An empty cache whose buffers are appended to along `axis` and grow in steps of
    /// `grow_by` positions (at least 1).
    pub fn new(axis: usize, grow_by: usize) -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            axis,
            grow_by: grow_by.max(1),
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `buf` (or, without one, nothing) followed by `extra` zero positions along the axis,
    /// shaped like `like` elsewhere.
    fn grow(&self, buf: Option<&Tensor>, like: &Tensor, extra: usize) -> Result<Tensor> {
        let mut shape = like.dims().to_vec();
        let Some(axis_len) = shape.get_mut(self.axis) else {
            return Err(ModelError::InvalidInput(format!(
                "kv cache axis {} of a {}-d tensor",
                self.axis,
                like.rank()
            )));
        };
        *axis_len = extra;
        let pad = Tensor::zeros(shape, like.dtype(), like.device())?;
        Ok(match buf {
            Some(buf) => Tensor::cat(&[buf, &pad], self.axis)?,
            None => pad,
        })
    }

    /// Append `k` and `v` (same rank as earlier appends, `s` positions along the axis); return
    /// views of everything cached so far (`len + s` positions).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let need = self.len + k.dim(self.axis)?;
        let cap = self
            .k
            .as_ref()
            .map(|t| t.dim(self.axis))
            .transpose()?
            .unwrap_or(0);
        if need > cap {
            let extra = (need - cap).div_ceil(self.grow_by) * self.grow_by;
            self.k = Some(self.grow(self.k.as_ref(), k, extra)?);
            self.v = Some(self.grow(self.v.as_ref(), v, extra)?);
        }
        let (Some(kb), Some(vb)) = (&self.k, &self.v) else {
            return Err(ModelError::InvalidInput("kv cache not allocated".into()));
        };
        kb.slice_set(&k.contiguous()?, self.axis, self.len)?;
        vb.slice_set(&v.contiguous()?, self.axis, self.len)?;
        self.len = need;
        Ok((
            kb.narrow(self.axis, 0, need)?,
            vb.narrow(self.axis, 0, need)?,
        ))
    }

    /// Bytes held by the buffers (capacity, not just the filled part).
    pub fn bytes(&self) -> usize {
        [&self.k, &self.v]
            .into_iter()
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// A deep copy that grows independently of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy()).transpose();
        Ok(Self {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
            axis: self.axis,
            grow_by: self.grow_by,
        })
    }
}

/// The cache of a whole decoder for one sequence (or one batch): a `LayerKvCache` per layer.
///
/// Not `Clone`: appending writes into the buffers in place, so a shallow copy would see the
/// other's tokens; use [`KvCache::try_clone`] to fork a sequence (e.g. after a shared prompt).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKvCache>,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers, appended to along `axis`, growing in steps
    /// of `grow_by` positions.
    pub fn new(layers: usize, axis: usize, grow_by: usize) -> Self {
        Self {
            layers: (0..layers)
                .map(|_| LayerKvCache::new(axis, grow_by))
                .collect(),
        }
    }

    /// Decoder layers the cache is for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions cached so far (= the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map(LayerKvCache::len).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the cache buffers (capacity, not just the filled part).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKvCache::bytes).sum()
    }

    /// A deep copy that grows independently of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(LayerKvCache::try_clone)
                .collect::<Result<_>>()?,
        })
    }

    /// The per-layer caches, in layer order.
    pub(crate) fn layers_mut(&mut self) -> &mut [LayerKvCache] {
        &mut self.layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn appends_in_place_and_grows_in_whole_steps() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(2, 2, 4);
        let kv = |s: usize, x: f64| {
            let t = (Tensor::ones((1, 3, s, 2), DType::F32, &dev).unwrap() * x).unwrap();
            (t.clone(), t)
        };
        let (k, v) = kv(3, 1.0);
        let (ck, cv) = cache.layers_mut()[0].append(&k, &v).unwrap();
        assert_eq!(
            (ck.dims(), cv.dims()),
            (&[1, 3, 3, 2][..], &[1, 3, 3, 2][..])
        );
        cache.layers_mut()[1].append(&k, &v).unwrap();
        assert_eq!(cache.len(), 3);
        // 3 positions fit the first step of 4; 3 more need 2 more → one more step of 4.
        assert_eq!(cache.bytes(), 2 * 2 * (3 * 4 * 2) * 4);
        let fork = cache.try_clone().unwrap();
        let (k2, v2) = kv(3, 2.0);
        let (ck, _) = cache.layers_mut()[0].append(&k2, &v2).unwrap();
        assert_eq!(ck.dims(), &[1, 3, 6, 2]);
        assert_eq!(cache.layers_mut()[0].bytes(), 2 * (3 * 8 * 2) * 4);
        let col: Vec<f32> = ck
            .narrow(2, 2, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&col[..4], &[1.0, 1.0, 2.0, 2.0]);
        // The fork kept its own buffers.
        assert_eq!(fork.len(), 3);
        assert_eq!(fork.bytes(), 2 * 2 * (3 * 4 * 2) * 4);
    }
}
