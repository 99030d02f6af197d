//! Memory-mapped safetensors checkpoints, single-file or sharded.
//!
//! Headers and shard indexes are read by `surveil-memory`'s checkpoint reader
//! ([`CheckpointHeader::read`]), the same one the memory estimate uses; this module only maps
//! the files and copies each tensor out of the byte range that reader gives.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use surveil_memory::CheckpointHeader;

use super::{TensorMeta, TensorSource};
use crate::{ModelError, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// One tensor as its header states it.
struct StoredTensor {
    shard: usize,
    shape: Vec<usize>,
    /// The dtype as written in the header (`F32`, `BF16`, ...).
    dtype: String,
    /// Its bytes in the shard file.
    range: Range<usize>,
}

/// Tensors read straight from memory-mapped `.safetensors` files. Nothing is copied until a
/// tensor is asked for, and then only that tensor.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, StoredTensor>,
}

impl SafetensorsSource {
    /// Open one or more checkpoints: each path a `.safetensors` file (e.g. the shards of one
    /// checkpoint), a `model.safetensors.index.json`, or a directory holding either. Each is
    /// read with [`CheckpointHeader::read`], which validates every header (length, JSON,
    /// offsets within the file, sizes matching dtypes and shapes, the data section fully
    /// described) and every index (size, shard names, `weight_map` against the shards) before
    /// anything is returned. A tensor listed twice is taken from the later path.
    ///
    /// Errors: [`ModelError::Checkpoint`] from the reader, naming the file and the tensor or
    /// `weight_map` key at fault; [`ModelError::Io`] when a file cannot be mapped.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let headers = paths
            .iter()
            .map(|p| CheckpointHeader::read(p.as_ref()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_headers(headers)
    }

    /// Open a sharded checkpoint from its `model.safetensors.index.json` (as [`Self::open`]).
    pub fn open_index(index_path: &Path) -> Result<Self> {
        Self::open(&[index_path])
    }

    fn from_headers(headers: Vec<CheckpointHeader>) -> Result<Self> {
        let mut shards: Vec<Shard> = Vec::new();
        let mut tensors = BTreeMap::new();
        for header in headers {
            let first = shards.len();
            for path in &header.files {
                shards.push(Shard {
                    path: path.clone(),
                    mmap: map(path)?,
                });
            }
            let mapped = &shards[first..];
            for t in header.tensors {
                let Some(i) = mapped.iter().position(|s| s.path == t.file) else {
                    continue;
                };
                let shard = &mapped[i];
                let outside = || ModelError::Safetensors {
                    path: shard.path.clone(),
                    reason: format!(
                        "tensor `{}` lies outside the {}-byte file",
                        t.name,
                        shard.mmap.len()
                    ),
                };
                let file_range = t.file_range();
                let start = usize::try_from(file_range.start).map_err(|_| outside())?;
                let end = usize::try_from(file_range.end).map_err(|_| outside())?;
                // The file may have changed since its header was read.
                if end > shard.mmap.len() {
                    return Err(outside());
                }
                tensors.insert(
                    t.name,
                    StoredTensor {
                        shard: first + i,
                        shape: t.shape,
                        dtype: t.dtype,
                        range: start..end,
                    },
                );
            }
        }
        Ok(Self { shards, tensors })
    }

    /// Total bytes of all mapped files.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.mmap.len() as u64).sum()
    }
}

fn map(path: &Path) -> Result<Mmap> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; a checkpoint modified while it is mapped would give wrong
    // numbers, not memory unsafety in our code (bounds are checked on every read).
    unsafe { Mmap::map(&file) }.map_err(io)
}

impl Shard {
    /// Drop the mapped pages of a byte range that has been copied out. The mapping is a
    /// read-only view of the file, so the pages can always be read back from it; without this
    /// every tensor read would stay resident as file-backed RSS until the map is closed, and a
    /// 4-bit load from a 4 GB checkpoint would peak at 4 GB more than it keeps.
    fn release_pages(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        {
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only discards cached
            // pages of this process; later reads fault them back in from the file. No Rust
            // reference into the range outlives this call (the bytes were copied above).
            let r = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
            if let Err(e) = r {
                tracing::debug!(path = %self.path.display(), error = %e, "madvise(DONTNEED) failed");
            }
        }
    }
}

/// The candle dtype of a header dtype, for the dtypes the loader materialises.
fn candle_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl TensorSource for SafetensorsSource {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let t = self.tensors.get(name)?;
        Some(TensorMeta {
            shape: t.shape.clone(),
            dtype: candle_dtype(&t.dtype).unwrap_or(DType::U8),
        })
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let missing = || ModelError::MissingTensor {
            name: name.to_string(),
            source_desc: self.describe(),
        };
        let t = self.tensors.get(name).ok_or_else(missing)?;
        let shard = self.shards.get(t.shard).ok_or_else(missing)?;
        let dtype = candle_dtype(&t.dtype).ok_or_else(|| ModelError::UnexpectedDtype {
            name: name.to_string(),
            dtype: t.dtype.clone(),
        })?;
        // An empty tensor may state huge dimensions next to its zero; candle's strides are the
        // products of the trailing dimensions and must fit.
        if t.shape
            .iter()
            .rev()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(ModelError::Safetensors {
                path: shard.path.clone(),
                reason: format!(
                    "tensor `{name}` has shape {:?}, whose strides do not fit in 64 bits",
                    t.shape
                ),
            });
        }
        let bytes = shard
            .mmap
            .get(t.range.clone())
            .ok_or_else(|| ModelError::Safetensors {
                path: shard.path.clone(),
                reason: format!("tensor `{name}` lies outside the file"),
            })?;
        let tensor = Tensor::from_raw_buffer(bytes, dtype, &t.shape, device)?;
        shard.release_pages(t.range.start, t.range.len());
        Ok(tensor)
    }

    fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!(
                "{} shards in {}",
                many.len(),
                many.first()
                    .and_then(|s| s.path.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}
