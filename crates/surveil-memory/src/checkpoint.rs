//! The one reader of safetensors checkpoints: tensor lists from the headers alone, and the
//! shard index of a sharded checkpoint.
//!
//! A safetensors file starts with an 8-byte little-endian header length `n`, then `n` bytes of
//! JSON mapping each tensor name to its dtype, shape and byte range (`data_offsets`) in the data
//! section that follows. Only those `8 + n` bytes are read here; no tensor data is touched.
//!
//! Both the memory estimate ([`crate::estimate_checkpoint`]) and the model loader of
//! `surveil-models` (its `SafetensorsSource`, which memory-maps the files and copies tensors out
//! at the byte ranges read here) go through [`CheckpointHeader::read`], so the two cannot
//! disagree about which files, tensors, shapes and bytes a checkpoint holds.
//!
//! Reading is defensive, because checkpoints come from downloads that get truncated: a file
//! shorter than 8 bytes, a header length beyond the end of the file or above
//! [`MAX_HEADER_BYTES`], invalid JSON, a malformed tensor entry, or a tensor whose bytes lie
//! beyond the end of the file each give a typed [`MemoryError`] naming the file (and the tensor,
//! where one is at fault). So do a shape whose element count overflows 64 bits, a byte range that
//! does not match the dtype and shape (for dtypes this crate does not know: fewer than one bit
//! per element), and byte ranges of two tensors that overlap. The header buffer is allocated
//! only after its length has been checked against the file size, so a corrupt length can never
//! make this allocate more than the file holds.
//!
//! [`read_safetensors_header`] is the per-file parse: it accepts what sizing can use. A
//! checkpoint read with [`CheckpointHeader::read`] must also follow the rest of the format
//! ([`SafetensorsFileHeader::check_layout`]): every dtype is one the format defines, and the
//! byte ranges tile the data section with no unused bytes, as the reference implementation
//! requires.
//!
//! Sharded checkpoints are read through their `model.safetensors.index.json` ([`ShardIndex`]):
//! at most [`MAX_INDEX_BYTES`], and every shard a plain file name next to the index (no
//! directory part, no `.`/`..`, no absolute path), so an index can never make the reader open a
//! file elsewhere, not even through a symbolic link to a directory. A shard *file* may itself be
//! a symbolic link, as every file of a Hugging Face cache snapshot is (to `../../blobs/<hash>`).

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
pub const MAX_INDEX_BYTES: u64 = MAX_HEADER_BYTES;

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
    /// Bytes of data in the file (`data_offsets[1] - data_offsets[0]`).
    pub stored_bytes: u64,
    /// The file it is in.
    pub file: PathBuf,
    /// Start and end of its bytes within the file's data section, as the header states them.
    pub data_offsets: [u64; 2],
    /// Where the data section starts in `file`: 8 + the header length.
    pub data_start: u64,
}

impl CheckpointTensor {
    /// The tensor's bytes as a range of `file`: `data_start + data_offsets[0]` to
    /// `data_start + data_offsets[1]` (the reader checked that it lies inside the file).
    pub fn file_range(&self) -> std::ops::Range<u64> {
        let [start, end] = self.data_offsets;
        self.data_start.saturating_add(start)..self.data_start.saturating_add(end)
    }
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
    /// directory holding either ([`checkpoint_file`]: `model.safetensors`, else the index; failing
    /// both, the only `*.safetensors` file). Every file must pass
    /// [`SafetensorsFileHeader::check_layout`]; an index must pass [`ShardIndex::read`], and each
    /// tensor of its `weight_map` must be in the shard it names.
    ///
    /// This is the one door through which both the memory estimate and the model loader read a
    /// checkpoint. Errors name the file and the tensor or `weight_map` key at fault.
    pub fn read(path: &Path) -> Result<CheckpointHeader, MemoryError> {
        if path.is_dir() {
            return CheckpointHeader::read(&find_in_dir(path)?);
        }
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        if is_index {
            read_sharded(&ShardIndex::read(path)?)
        } else {
            let file = read_safetensors_header(path)?;
            file.check_layout()?;
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
    /// The file.
    pub path: PathBuf,
    /// The header length from the first 8 bytes.
    pub header_len: u64,
    /// The file size.
    pub file_len: u64,
    /// The tensors, sorted by name.
    pub tensors: Vec<CheckpointTensor>,
    /// `__metadata__` (string to string), empty when absent.
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFileHeader {
    /// Bytes of the data section: the file after the length prefix and the header.
    pub fn data_len(&self) -> u64 {
        self.file_len
            .saturating_sub(8)
            .saturating_sub(self.header_len)
    }

    /// The rules of the format that [`read_safetensors_header`] leaves to its caller, because
    /// sizing can do without them: every dtype is one the format defines, and the tensors' byte
    /// ranges tile the data section exactly, from its first byte to its last, with no byte that
    /// belongs to no tensor (a gap, trailing padding, or the leftover range of a tensor name
    /// written twice in the header). The reference implementation refuses such files too.
    ///
    /// Errors: [`MemoryError::InvalidTensor`] naming the tensor with an unknown dtype,
    /// [`MemoryError::UnindexedBytes`] with the unused range and the tensor after it.
    pub fn check_layout(&self) -> Result<(), MemoryError> {
        let invalid = |t: &CheckpointTensor, reason: String| MemoryError::InvalidTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason,
        };
        if let Some(t) = self.tensors.iter().find(|t| dtype_bits(&t.dtype).is_none()) {
            return Err(invalid(
                t,
                format!("dtype `{}` is not a safetensors dtype", t.dtype),
            ));
        }
        let mut by_offset: Vec<&CheckpointTensor> = self.tensors.iter().collect();
        by_offset.sort_by_key(|t| t.data_offsets);
        let mut at = 0u64;
        for t in by_offset {
            let [start, end] = t.data_offsets;
            if start > at {
                return Err(MemoryError::UnindexedBytes {
                    path: self.path.clone(),
                    start: at,
                    end: start,
                    place: format!("before tensor `{}`", t.name),
                });
            }
            if start < at {
                // The parse refuses overlaps; a header built by hand may still hold one.
                return Err(invalid(
                    t,
                    format!("data_offsets [{start}, {end}] overlap the tensor before them"),
                ));
            }
            at = end;
        }
        let data_len = self.data_len();
        if at < data_len {
            let place = match self.tensors.iter().max_by_key(|t| t.data_offsets) {
                Some(last) => format!("after the last tensor, `{}`", last.name),
                None => "and the header lists no tensor".to_string(),
            };
            return Err(MemoryError::UnindexedBytes {
                path: self.path.clone(),
                start: at,
                end: data_len,
                place,
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads and validates the header of one safetensors file without reading tensor data. This is
/// the per-file parse; [`CheckpointHeader::read`] adds [`SafetensorsFileHeader::check_layout`].
///
/// Errors: [`MemoryError::Io`], [`MemoryError::TruncatedHeaderLength`],
/// [`MemoryError::HeaderLengthExceedsFile`], [`MemoryError::HeaderTooLarge`],
/// [`MemoryError::HeaderJson`], [`MemoryError::InvalidMetadata`] and
/// [`MemoryError::InvalidTensor`], each naming `path`.
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
    parse_header_json(path, &header, header_len, file_len)
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
) -> Result<SafetensorsFileHeader, MemoryError> {
    let data_len = file_len - 8 - header_len;
    let data_start = 8 + header_len;
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
                .map_err(|e| MemoryError::InvalidMetadata {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
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
            data_offsets: [start, end],
            data_start,
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
        path: path.to_path_buf(),
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

/// The `model.safetensors.index.json` of a sharded checkpoint, validated: its `weight_map` maps
/// every tensor name to a shard that is a plain file name next to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// The index file.
    pub path: PathBuf,
    /// `weight_map`: tensor name → shard file name, as written.
    pub weight_map: BTreeMap<String, String>,
    /// The shard files (in the index's directory), each once, in name order.
    pub shards: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, serde_json::Value>,
}

impl ShardIndex {
    /// Reads and validates an index file: at most [`MAX_INDEX_BYTES`], JSON with a non-empty
    /// `weight_map` object of strings, every shard a plain file name (no directory part, no
    /// `/` or `\`, not starting with `.`, so never `..`, hidden or absolute). Does not open the
    /// shards.
    ///
    /// Errors: [`MemoryError::Io`] when the index cannot be read, [`MemoryError::InvalidIndex`]
    /// naming the index and, where one is at fault, the `weight_map` key and its shard.
    pub fn read(path: &Path) -> Result<ShardIndex, MemoryError> {
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
        // Bounded by the check above; `take` keeps a file that grows meanwhile in bounds too.
        let mut text = Vec::with_capacity(len as usize);
        file.take(MAX_INDEX_BYTES)
            .read_to_end(&mut text)
            .map_err(|e| MemoryError::io(path, e))?;
        let raw: RawIndex = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if raw.weight_map.is_empty() {
            return Err(invalid("weight_map is empty".to_string()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut weight_map = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (tensor, value) in raw.weight_map {
            let Some(shard) = value.as_str() else {
                return Err(invalid(format!(
                    "weight_map[`{tensor}`] is {}, not a shard file name",
                    json_kind(&value)
                )));
            };
            if let Err(why) = check_shard_name(shard) {
                return Err(invalid(format!(
                    "weight_map[`{tensor}`] = `{shard}`: {why}"
                )));
            }
            names.insert(shard.to_string());
            weight_map.insert(tensor, shard.to_string());
        }
        Ok(ShardIndex {
            path: path.to_path_buf(),
            weight_map,
            shards: names.iter().map(|n| dir.join(n)).collect(),
        })
    }
}

/// A shard must be a file right next to the index: one plain path component. Refusing every
/// separator (not only `..`) also keeps a symbolic link to a directory from redirecting a shard.
fn check_shard_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the shard name is empty");
    }
    if name.contains(['/', '\\']) {
        return Err("a shard must be a plain file name next to the index, not a path");
    }
    if name.starts_with('.') {
        return Err("a shard name may not start with `.` (`.`, `..` and hidden files)");
    }
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err("a shard must be a plain file name next to the index"),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The shard files of the index at `index` ([`ShardIndex::read`]), each checked to be an
/// existing file, in name order. Reads no shard header.
///
/// Errors: those of [`ShardIndex::read`]; [`MemoryError::Io`] naming a shard that cannot be
/// found; [`MemoryError::InvalidIndex`] naming the key whose shard is not a file.
pub fn shard_paths(index: &Path) -> Result<Vec<PathBuf>, MemoryError> {
    let index = ShardIndex::read(index)?;
    for shard in &index.shards {
        let meta = std::fs::metadata(shard).map_err(|e| MemoryError::io(shard, e))?;
        if !meta.is_file() {
            let key = index
                .weight_map
                .iter()
                .find(|(_, name)| shard.file_name().is_some_and(|f| f == name.as_str()))
                .map_or("", |(key, _)| key.as_str());
            return Err(MemoryError::InvalidIndex {
                path: index.path.clone(),
                reason: format!(
                    "weight_map[`{key}`] names {}, which is not a file",
                    shard.display()
                ),
            });
        }
    }
    Ok(index.shards)
}

/// Reads every shard of `index` (each through [`SafetensorsFileHeader::check_layout`]) and keeps
/// the tensors of its `weight_map`, each of which must be in the shard it names.
fn read_sharded(index: &ShardIndex) -> Result<CheckpointHeader, MemoryError> {
    let invalid = |reason: String| MemoryError::InvalidIndex {
        path: index.path.clone(),
        reason,
    };
    let mut by_name: BTreeMap<String, CheckpointTensor> = BTreeMap::new();
    let mut metadata = None;
    for shard_path in &index.shards {
        let header = read_safetensors_header(shard_path)?;
        header.check_layout()?;
        metadata.get_or_insert(header.metadata);
        for t in header.tensors {
            by_name.insert(t.name.clone(), t);
        }
    }
    let mut tensors = Vec::with_capacity(index.weight_map.len());
    for (name, shard) in &index.weight_map {
        match by_name.remove(name) {
            Some(t) if t.file.file_name().is_some_and(|f| f == shard.as_str()) => tensors.push(t),
            Some(t) => {
                return Err(invalid(format!(
                    "weight_map[`{name}`] = `{shard}`, but the tensor is in {}",
                    t.file.display()
                )))
            }
            None => {
                return Err(invalid(format!(
                    "weight_map[`{name}`] = `{shard}`, but that file has no such tensor"
                )))
            }
        }
    }
    if !by_name.is_empty() {
        let extra: Vec<&str> = by_name.keys().map(String::as_str).take(5).collect();
        tracing::warn!(
            index = %index.path.display(),
            count = by_name.len(),
            "shards hold tensors missing from the index weight_map (neither counted nor loaded): {}",
            extra.join(", ")
        );
    }
    Ok(CheckpointHeader {
        source: index.path.clone(),
        files: index.shards.clone(),
        tensors,
        metadata: metadata.unwrap_or_default(),
    })
}

/// The checkpoint file of `dir` under the conventional names: `model.safetensors`, else
/// `model.safetensors.index.json` (the order of Hugging Face `transformers`); `None` when
/// neither is a file.
pub fn checkpoint_file(dir: &Path) -> Option<PathBuf> {
    [SINGLE_FILE_NAME, INDEX_FILE_NAME]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

fn find_in_dir(dir: &Path) -> Result<PathBuf, MemoryError> {
    if let Some(found) = checkpoint_file(dir) {
        return Ok(found);
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
            looked_for: format!("{SINGLE_FILE_NAME}, {INDEX_FILE_NAME} or one *.safetensors"),
        }),
        n => Err(MemoryError::NoCheckpoint {
            dir: dir.to_path_buf(),
            looked_for: format!(
                "{INDEX_FILE_NAME} (found {n} *.safetensors files and no index to tie them together)"
            ),
        }),
    }
}
