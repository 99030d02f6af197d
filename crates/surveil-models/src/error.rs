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
    /// A safetensors file is malformed (truncated, bad header, offsets past the end, ...).
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor {
        /// Full tensor name.
        name: String,
        /// Where it was looked for.
        source_desc: String,
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
    /// A tokenizer could not be loaded or used.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An image or prompt the model cannot take.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A numerical operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
