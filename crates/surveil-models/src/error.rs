//! The one error type of `surveil-models`.

use std::path::PathBuf;

/// Everything that can go wrong while finding, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tensor of a mapped safetensors file cannot be materialised (strides beyond 64 bits,
    /// bytes no longer inside the file). Malformed headers are [`ModelError::Checkpoint`].
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint's headers or shard index are malformed, as `surveil-memory`'s checkpoint
    /// reader found (the message names the file and the tensor or `weight_map` key at fault).
    #[error(transparent)]
    Checkpoint(#[from] surveil_memory::MemoryError),
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor {
        /// Full tensor name.
        name: String,
        /// Where it was looked for.
        source_desc: String,
    },
    /// The model code asked for a tensor in a role its architecture's rules (the `roles.rs` of
    /// the architecture) do not give it; the memory estimate follows the rules, so it would not
    /// match this load.
    #[error(
        "tensor `{name}` is loaded as {requested:?}, but its architecture's tensor rules keep it \
         as {allowed:?}; the memory estimate would not match the load"
    )]
    RoleMismatch {
        /// Full tensor name.
        name: String,
        /// The role the call site asked for.
        requested: surveil_memory::TensorRole,
        /// The roles the rules give the tensor.
        allowed: Vec<surveil_memory::TensorRole>,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Full tensor name.
        name: String,
        /// Shape the architecture expects.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the loader does not accept for it.
    #[error("tensor `{name}` has dtype {dtype}, expected a float type (f32, f16, bf16)")]
    UnexpectedDtype {
        /// Full tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A model config (config.json, preprocessor config) is unusable.
    #[error("invalid model config {path}: {reason}")]
    Config {
        /// The file (or a description when the config did not come from a file).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A directory that already holds checkpoint files was not to be written into.
    #[error("{} already holds checkpoint files ({}); nothing was written", dir.display(), files.join(", "))]
    CheckpointExists {
        /// The directory.
        dir: PathBuf,
        /// The checkpoint files found in it.
        files: Vec<String>,
    },
    /// A model's weights are in none of the places searched.
    #[error("weights of `{model}` ({repo}) not found: missing {missing}; searched: {}. No download is attempted: put the checkpoint in the Hugging Face cache, pass --weights DIR, or use --weights dummy", searched.join(", "))]
    WeightsNotFound {
        /// Model id.
        model: String,
        /// Hugging Face repository.
        repo: String,
        /// The files that were not found.
        missing: String,
        /// Every place looked in.
        searched: Vec<String>,
    },
    /// A tokenizer could not be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Something this build cannot do (an architecture not implemented, CUDA not compiled in).
    #[error("{0}")]
    Unsupported(String),
    /// The model does not fit in the memory of the device.
    #[error("{0}")]
    DoesNotFit(String),
    /// An image or prompt the model cannot take.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Constrained decoding failed: a schema that cannot be compiled, a token outside the
    /// constraint, or a state where no token is allowed.
    #[error("constrained decoding: {0}")]
    Constraint(String),
    /// A linear weight could not be quantized into the CPU tile layout (a non-finite value, a
    /// block out of f16 range).
    #[error("tensor `{name}`: {source}")]
    Quantize {
        /// The checkpoint tensor (the first part at fault of a stacked weight).
        name: String,
        /// What the quantizer found.
        #[source]
        source: crate::quant::QuantError,
    },
    /// A quantized CPU matmul failed (shapes that do not agree, a worker that panicked).
    #[error("quantized matmul: {0}")]
    Kernel(#[from] crate::quant::QuantError),
    /// A numerical operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Read a config file and parse it with `parse`, naming the file in every error (`parse` works
/// on text and does not know where it came from).
pub(crate) fn parse_config_file<T>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ModelError::Config { reason, .. } => ModelError::Config {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    })
}
