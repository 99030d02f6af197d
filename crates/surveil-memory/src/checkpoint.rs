//! The tensor list of a safetensors checkpoint, read from its headers alone.
//!
//! A safetensors file starts with an 8-byte little-endian header length `n`, then `n` bytes of
//! JSON mapping each tensor name to its dtype, shape and byte range in the data section that
//! follows. Only those `8 + n` bytes are read here; no tensor data is touched.
//!
//! Reading is defensive, because checkpoints come from downloads that get truncated: a file
//! shorter than 8 bytes, a header length beyond the end of the file or above
//! [`MAX_HEADER_BYTES`], invalid JSON, a malformed tensor entry, or a tensor whose bytes lie
//! beyond the end of the file each give a typed [`MemoryError`] naming the file. So do a shape
//! whose element count overflows 64 bits, a byte range that does not match the dtype and shape
//! (for dtypes this crate does not know: fewer than one bit per element), and byte ranges of
//! two tensors that overlap. The header buffer is allocated only after its length has been
//! checked against the file size, so a corrupt length can never make this allocate more than
//! the file holds.
//!
//! Sharded checkpoints are read through their `model.safetensors.index.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::MemoryError;

/// Largest header accepted (100 MB). Real headers are kilobytes to a few megabytes; the
/// safetensors crate uses the same bound.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Largest index file accepted (same bound as a header).
const MAX_INDEX_BYTES: u64 = MAX_HEADER_BYTES;

/// The conventional index file name of a sharded checkpoint.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// The conventional single-file checkpoint name.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";

/// One tensor as the checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTensor {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Stored dtype as written in the header (`BF16`, `F32`, ...).
    pub dtype: String,
    /// Bytes of data in the file.
    pub stored_bytes: u64,
    /// The file it is in.
    pub file: PathBuf,
}

/// The tensors of a checkpoint (one file or all shards), in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// The path that was read (a `.safetensors` file or an index file).
    pub source: PathBuf,
    /// The safetensors files the tensors come from.
    pub files: Vec<PathBuf>,
    /// The tensors, sorted by name.
    pub tensors: Vec<CheckpointTensor>,
    /// The `__metadata__` of the (first) file, if any.
    pub metadata: BTreeMap<String, String>,
}

impl CheckpointHeader {
    /// Reads a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// directory holding either (index preferred, else `model.safetensors`, else the only
    /// `*.safetensors` file).
    pub fn read(path: &Path) -> Result<CheckpointHeader, MemoryError> {
        if path.is_dir() {
            return CheckpointHeader::read(&find_in_dir(path)?);
        }
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        if is_index {
            read_index(path)
        } else {
            let file = read_safetensors_header(path)?;
            Ok(CheckpointHeader {
                source: path.to_path_buf(),
                files: vec![path.to_path_buf()],
                tensors: file.tensors,
                metadata: file.metadata,
            })
        }
    }

    /// Sum of the stored (on-disk) tensor bytes.
    pub fn stored_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.stored_bytes).sum()
    }
}

/// The parsed header of one safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsFileHeader {
    /// The header length from the first 8 bytes.
    pub header_len: u64,
    /// The file size.
    pub file_len: u64,
    /// The tensors, sorted by name.
    pub tensors: Vec<CheckpointTensor>,
    /// `__metadata__` (string to string), empty when absent.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads and validates the header of one safetensors file without reading tensor data.
pub fn read_safetensors_header(path: &Path) -> Result<SafetensorsFileHeader, MemoryError> {
    let mut file = File::open(path).map_err(|e| MemoryError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| MemoryError::io(path, e))?.len();
    if file_len < 8 {
        return Err(MemoryError::TruncatedHeaderLength {
            path: path.to_path_buf(),
            file_len,
        });
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| truncated_or_io(path, file_len, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 {
        return Err(MemoryError::HeaderLengthExceedsFile {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(MemoryError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
            limit: MAX_HEADER_BYTES,
        });
    }
    // Bounded by both checks above: at most the file size and at most 100 MB.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| truncated_or_io(path, file_len, e))?;
    let data_len = file_len - 8 - header_len;
    parse_header_json(path, &header, header_len, file_len, data_len)
}

/// A short read after the size checks means the file shrank while we read it.
fn truncated_or_io(path: &Path, file_len: u64, e: std::io::Error) -> MemoryError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        MemoryError::TruncatedHeaderLength {
            path: path.to_path_buf(),
            file_len,
        }
    } else {
        MemoryError::io(path, e)
    }
}

fn parse_header_json(
    path: &Path,
    header: &[u8],
    header_len: u64,
    file_len: u64,
    data_len: u64,
) -> Result<SafetensorsFileHeader, MemoryError> {
    let json_error = |source| MemoryError::HeaderJson {
        path: path.to_path_buf(),
        source,
    };
    let entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(json_error)?;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(entries.len());
    let mut metadata = BTreeMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            // `null` means no metadata, as in the reference implementation.
            metadata = serde_json::from_value::<Option<_>>(value)
                .map_err(json_error)?
                .unwrap_or_default();
            continue;
        }
        let invalid = |reason: String| MemoryError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let entry: RawTensorEntry =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let [start, end] = entry.data_offsets;
        if start > end {
            return Err(invalid(format!(
                "data_offsets [{start}, {end}] are reversed"
            )));
        }
        if end > data_len {
            return Err(invalid(format!(
                "data ends at byte {end} of the data section, which has only {data_len} bytes \
                 (file truncated?)"
            )));
        }
        let stored_bytes = end - start;
        check_size(&entry.dtype, &entry.shape, stored_bytes).map_err(invalid)?;
        spans.push((start, end, tensors.len()));
        tensors.push(CheckpointTensor {
            name,
            shape: entry.shape,
            dtype: entry.dtype,
            stored_bytes,
            file: path.to_path_buf(),
        });
    }
    // Byte ranges may not overlap (empty ranges included, as in the reference implementation,
    // which requires the ranges to tile the data section in order).
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if let [(a_start, a_end, a), (b_start, b_end, b)] = *pair {
            if b_start < a_end {
                let (Some(first), Some(second)) = (tensors.get(a), tensors.get(b)) else {
                    continue;
                };
                return Err(MemoryError::InvalidTensor {
                    path: path.to_path_buf(),
                    tensor: second.name.clone(),
                    reason: format!(
                        "data_offsets [{b_start}, {b_end}] overlap those of tensor `{}` \
                         [{a_start}, {a_end}]",
                        first.name
                    ),
                });
            }
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SafetensorsFileHeader {
        header_len,
        file_len,
        tensors,
        metadata,
    })
}

/// Bits per element of the safetensors dtypes (`Dtype::bitsize` of the reference
/// implementation); `None` for names this crate does not know (future types).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Checks that `stored_bytes` holds a tensor of `dtype` and `shape`: exactly, for dtypes this
/// crate knows; at least one bit per element for the others. The element count must fit in 64
/// bits either way, so that everything computed from the shape later (parameter counts,
/// quantized sizes) stays in range.
fn check_size(dtype: &str, shape: &[usize], stored_bytes: u64) -> Result<(), String> {
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("shape {shape:?} has more elements than fit in 64 bits"))?;
    let Some(bits) = dtype_bits(dtype) else {
        if elements > stored_bytes.saturating_mul(8) {
            return Err(format!(
                "{dtype} {shape:?} has {elements} elements, more than the {stored_bytes} bytes of \
                 its data_offsets can hold at one bit each"
            ));
        }
        return Ok(());
    };
    let expected_bits = elements
        .checked_mul(bits)
        .ok_or_else(|| format!("{dtype} {shape:?} needs more bytes than fit in 64 bits"))?;
    if expected_bits % 8 != 0 {
        return Err(format!(
            "{dtype} {shape:?} takes {expected_bits} bits, not a whole number of bytes"
        ));
    }
    let expected = expected_bits / 8;
    if expected != stored_bytes {
        return Err(format!(
            "{dtype} {shape:?} needs {expected} bytes but data_offsets span {stored_bytes}"
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

fn read_index(path: &Path) -> Result<CheckpointHeader, MemoryError> {
    let invalid = |reason: String| MemoryError::InvalidIndex {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| MemoryError::io(path, e))?;
    let len = file.metadata().map_err(|e| MemoryError::io(path, e))?.len();
    if len > MAX_INDEX_BYTES {
        return Err(invalid(format!(
            "{len} bytes exceeds the limit of {MAX_INDEX_BYTES} bytes"
        )));
    }
    let mut text = Vec::with_capacity(len as usize);
    file.take(MAX_INDEX_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| MemoryError::io(path, e))?;
    let index: RawIndex = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    if index.weight_map.is_empty() {
        return Err(invalid("weight_map is empty".to_string()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let shard_names: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
    let mut by_name: BTreeMap<String, CheckpointTensor> = BTreeMap::new();
    let mut files = Vec::with_capacity(shard_names.len());
    let mut metadata = None;
    for shard in shard_names {
        let relative = Path::new(shard);
        // Shards live next to the index; refuse anything that would escape that directory.
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(invalid(format!(
                "shard `{shard}` is not a plain file name next to the index"
            )));
        }
        let shard_path = dir.join(relative);
        let header = read_safetensors_header(&shard_path)?;
        metadata.get_or_insert(header.metadata);
        for t in header.tensors {
            by_name.insert(t.name.clone(), t);
        }
        files.push(shard_path);
    }
    let mut tensors = Vec::with_capacity(index.weight_map.len());
    for (name, shard) in &index.weight_map {
        match by_name.remove(name) {
            Some(t) if t.file.ends_with(shard) => tensors.push(t),
            Some(t) => {
                return Err(invalid(format!(
                    "tensor `{name}` is mapped to {shard} but found in {}",
                    t.file.display()
                )))
            }
            None => {
                return Err(invalid(format!(
                    "tensor `{name}` is mapped to {shard} but that file has no such tensor"
                )))
            }
        }
    }
    if !by_name.is_empty() {
        let extra: Vec<&str> = by_name.keys().map(String::as_str).take(5).collect();
        tracing::warn!(
            index = %path.display(),
            count = by_name.len(),
            "shards hold tensors missing from the index weight_map (not counted): {}",
            extra.join(", ")
        );
    }
    Ok(CheckpointHeader {
        source: path.to_path_buf(),
        files,
        tensors,
        metadata: metadata.unwrap_or_default(),
    })
}

fn find_in_dir(dir: &Path) -> Result<PathBuf, MemoryError> {
    let index = dir.join(INDEX_FILE_NAME);
    if index.is_file() {
        return Ok(index);
    }
    let single = dir.join(SINGLE_FILE_NAME);
    if single.is_file() {
        return Ok(single);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| MemoryError::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(MemoryError::NoCheckpoint {
            dir: dir.to_path_buf(),
            looked_for: format!("{INDEX_FILE_NAME}, {SINGLE_FILE_NAME} or one *.safetensors"),
        }),
        n => Err(MemoryError::NoCheckpoint {
            dir: dir.to_path_buf(),
            looked_for: format!(
                "{INDEX_FILE_NAME} (found {n} *.safetensors files and no index to tie them together)"
            ),
        }),
    }
}
