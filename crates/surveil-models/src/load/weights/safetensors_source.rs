//! Memory-mapped safetensors checkpoints, single-file or sharded.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::SafeTensors;
use surveil_memory::checkpoint::read_safetensors_header;
use surveil_memory::MemoryError;

use super::{TensorMeta, TensorSource};
use crate::{ModelError, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// Tensors read straight from memory-mapped `.safetensors` files. Nothing is copied until a
/// tensor is asked for, and then only that tensor.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    index: BTreeMap<String, usize>,
}

impl SafetensorsSource {
    /// Open one or more safetensors files (the shards of one checkpoint). Every header is
    /// validated (length, JSON, offsets within the file, sizes matching dtypes and shapes)
    /// before anything is returned.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let path = path.as_ref().to_path_buf();
            let file = File::open(&path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; a checkpoint modified while it is mapped would give
            // wrong numbers, not memory unsafety in our code (bounds are checked on every read).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // The reference reader adds the end of the data section to the header length
            // unchecked (an overflow panic in debug builds when a crafted header's offsets sum
            // past 64 bits), so the byte ranges are first checked against the file by the
            // header reader the memory estimate uses.
            if let Err(MemoryError::InvalidTensor { tensor, reason, .. }) =
                read_safetensors_header(&path)
            {
                return Err(ModelError::Safetensors {
                    path,
                    reason: format!("tensor `{tensor}`: {reason}"),
                });
            }
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    reason: describe_error(&e, mmap.len()),
                })?;
            for name in metadata.tensors().keys() {
                if name == "__metadata__" {
                    continue;
                }
                index.insert(name.clone(), i);
            }
            shards.push(Shard {
                path,
                data_start: 8 + header_len,
                mmap,
                metadata,
            });
        }
        Ok(Self { shards, index })
    }

    /// Open a sharded checkpoint from its `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let paths = shard_paths(index_path)?;
        Self::open(&paths)
    }

    /// Total bytes of all mapped files.
    pub fn file_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.mmap.len() as u64).sum()
    }

    fn info(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.index.get(name)?];
        Some((shard, shard.metadata.info(name)?))
    }
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

/// The shard files named by a `model.safetensors.index.json`, in a stable order, each checked
/// to exist.
pub fn shard_paths(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|source| ModelError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: index_path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Config {
            path: index_path.to_path_buf(),
            reason: "no `weight_map` object".into(),
        })?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Config {
            path: index_path.to_path_buf(),
            reason: format!("weight_map entry for `{tensor}` is not a file name"),
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::Config {
                path: index_path.to_path_buf(),
                reason: format!("shard name `{file}` must be a plain file name"),
            });
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(ModelError::Config {
            path: index_path.to_path_buf(),
            reason: format!("shard {} is missing", missing.display()),
        });
    }
    Ok(paths)
}

fn describe_error(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {file_len} bytes, too short for a header"),
        E::HeaderTooLarge => "header is larger than 100 MB".into(),
        E::InvalidHeaderLength => {
            format!("header length points past the end of the {file_len}-byte file")
        }
        E::MetadataIncompleteBuffer => format!(
            "tensor data does not match the file length ({file_len} bytes): truncated or padded"
        ),
        other => other.to_string(),
    }
}

pub(crate) fn candle_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match dtype {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        _ => return None,
    })
}

impl TensorSource for SafetensorsSource {
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (_, info) = self.info(name)?;
        Some(TensorMeta {
            shape: info.shape.clone(),
            dtype: candle_dtype(info.dtype).unwrap_or(DType::U8),
        })
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (shard, info) = self.info(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            source_desc: self.describe(),
        })?;
        let dtype = candle_dtype(info.dtype).ok_or_else(|| ModelError::UnexpectedDtype {
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        // An empty tensor may state huge dimensions next to its zero; candle's strides are the
        // products of the trailing dimensions and must fit.
        if info
            .shape
            .iter()
            .rev()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(ModelError::Safetensors {
                path: shard.path.clone(),
                reason: format!(
                    "tensor `{name}` has shape {:?}, whose strides do not fit in 64 bits",
                    info.shape
                ),
            });
        }
        let (start, end) = info.data_offsets;
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| ModelError::Safetensors {
                path: shard.path.clone(),
                reason: format!("tensor `{name}` lies outside the file"),
            })?;
        let tensor = Tensor::from_raw_buffer(bytes, dtype, &info.shape, device)?;
        shard.release_pages(shard.data_start + start, end - start);
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
