//! The one error type of this crate.
//!
//! Every variant carries the context a user needs to act on it: the file, the tensor, the limit
//! that was crossed. Memory *facts* that are merely missing on this platform or device (no CUDA
//! driver, no `/proc`) are not errors: they are reported as `None` / [`crate::GpuMemory::Unavailable`]
//! inside the snapshot types.

use std::path::PathBuf;

/// Errors of `surveil-memory`.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file is shorter than the 8-byte little-endian header length that starts every
    /// safetensors file.
    #[error(
        "{path}: not a safetensors file: {file_len} bytes, shorter than the 8-byte header length"
    )]
    TruncatedHeaderLength {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        file_len: u64,
    },

    /// The header length claims more bytes than the file has (typically a truncated download).
    #[error(
        "{path}: safetensors header length {header_len} bytes points past the end of the file \
         ({file_len} bytes){}; the file is truncated or not a safetensors file",
        beyond_header_limit(*header_len)
    )]
    HeaderLengthExceedsFile {
        /// The file.
        path: PathBuf,
        /// The header length the file claims.
        header_len: u64,
        /// The file size in bytes.
        file_len: u64,
    },

    /// The header is larger than any real checkpoint header; refusing to read it.
    #[error("{path}: safetensors header of {header_len} bytes exceeds the limit of {limit} bytes")]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The header length the file claims.
        header_len: u64,
        /// The limit ([`crate::checkpoint::MAX_HEADER_BYTES`]).
        limit: u64,
    },

    /// The header is not valid JSON of the expected shape.
    #[error("{path}: invalid safetensors header JSON: {source}")]
    HeaderJson {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// One tensor entry of the header is malformed or inconsistent with the file.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The `__metadata__` entry of a header is not a map of strings to strings (or `null`).
    #[error("{path}: safetensors header `__metadata__`: {reason}")]
    InvalidMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Bytes of the data section that belong to no tensor: a gap between two tensors, bytes
    /// after the last one, or the range of a tensor name written twice in the header. The
    /// format does not allow them ([`crate::checkpoint::SafetensorsFileHeader::check_layout`]).
    #[error(
        "{path}: bytes {start}..{end} of the data section belong to no tensor ({place}); the \
         header does not describe the file (padded, or edited by hand?)"
    )]
    UnindexedBytes {
        /// The file.
        path: PathBuf,
        /// First unused byte, counted from the start of the data section.
        start: u64,
        /// End of the unused range (exclusive).
        end: u64,
        /// Where: before which tensor, or after the last one.
        place: String,
    },

    /// A sharded checkpoint index (`model.safetensors.index.json`) is malformed or points at
    /// files or tensors that do not exist.
    #[error("{path}: invalid checkpoint index: {reason}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A directory holds no safetensors checkpoint.
    #[error("{dir}: no safetensors checkpoint found (looked for {looked_for})")]
    NoCheckpoint {
        /// The directory.
        dir: PathBuf,
        /// What was looked for.
        looked_for: String,
    },

    /// A system file (`/proc/...`, cgroup files) did not have the expected format.
    #[error("{path}: unexpected format: {reason}")]
    SystemFormat {
        /// The file.
        path: PathBuf,
        /// What was expected.
        reason: String,
    },

    /// The requested fact cannot be measured on this platform or device.
    #[error("{what} is not available: {reason}")]
    Unavailable {
        /// The fact (e.g. `available memory on cuda:0`).
        what: String,
        /// Why not.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: String,
        /// What is allowed.
        reason: String,
    },

    /// The background sampler thread could not be started.
    #[error("cannot start the memory sampler thread: {source}")]
    SamplerSpawn {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The note a too-long header length gets when it is also above the header size limit.
fn beyond_header_limit(header_len: u64) -> &'static str {
    if header_len > crate::checkpoint::MAX_HEADER_BYTES {
        " and above the 100 MB limit of a header"
    } else {
        ""
    }
}

impl MemoryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MemoryError::Io {
            path: path.into(),
            source,
        }
    }
}
