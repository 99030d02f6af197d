//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `surveil-vision`. Variants carry the context a user needs
/// (path, layer, byte counts, the redacted source address, ffmpeg's own error lines).
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A file or folder could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A Darknet `.cfg` file is malformed or uses something this crate does not implement.
    #[error("darknet cfg {path}: {message}")]
    Cfg {
        /// The cfg file (or `<memory>` when parsed from a string).
        path: PathBuf,
        /// What is wrong, with the line or layer index.
        message: String,
    },

    /// A Darknet `.weights` file does not have the size the cfg requires.
    #[error(
        "weights file {path}: expected {expected} bytes ({header} header + {params} f32 parameters \
         for the cfg's convolutional layers), found {found} bytes"
    )]
    WeightsSize {
        /// The weights file.
        path: PathBuf,
        /// Bytes required by the header and the cfg.
        expected: u64,
        /// Bytes in the file.
        found: u64,
        /// Header size in bytes.
        header: u64,
        /// Number of f32 parameters the cfg needs.
        params: u64,
    },

    /// The header of a `.weights` file cannot be read (file shorter than a header, bad version).
    #[error("weights file {path}: {message}")]
    WeightsHeader {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A tensor operation failed; `context` says which layer or step.
    #[error("{context}: {source}")]
    Tensor {
        /// Layer or step ("layer 12 convolutional", "stack batch", ...).
        context: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },

    /// The ffmpeg (or ffprobe) binary could not be started.
    #[error("cannot start ffmpeg binary {path}: {source} (install ffmpeg or set the ffmpeg path)")]
    FfmpegSpawn {
        /// The binary that was tried.
        path: PathBuf,
        /// The underlying error (usually "No such file or directory").
        #[source]
        source: std::io::Error,
    },

    /// ffmpeg ran but failed on this input.
    #[error("ffmpeg failed on {input}: {message}{}", fmt_stderr(.stderr))]
    Ffmpeg {
        /// The input, with credentials redacted.
        input: String,
        /// What happened (exit status, timeout, ...).
        message: String,
        /// ffmpeg's last warning/error lines, credentials redacted.
        stderr: String,
    },

    /// A live source could not be (re)opened within the allowed attempts.
    #[error("source {input} unavailable after {attempts} attempts: {last_error}")]
    SourceUnavailable {
        /// The input, with credentials redacted.
        input: String,
        /// Connection attempts made.
        attempts: u32,
        /// The error of the last attempt.
        last_error: Box<VisionError>,
    },

    /// A source was stopped (a stop request, e.g. Ctrl-C) before its stream opened. A live
    /// source says how many connection attempts had failed by then, and why the last one did.
    #[error("stopped while opening {input}{}", fmt_attempts(*.attempts, .last_error.as_deref()))]
    Interrupted {
        /// The input, with credentials redacted.
        input: String,
        /// Connection attempts that failed before the stop (0 when none had, or for a file).
        attempts: u32,
        /// The error of the last failed attempt.
        last_error: Option<Box<VisionError>>,
    },

    /// An image could not be decoded, or has no pixels.
    #[error("image {path}: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A frame handed to the detector or renderer is unusable (zero size, wrong buffer length).
    #[error("invalid frame {index}: {message}")]
    InvalidFrame {
        /// Frame index.
        index: u64,
        /// What is wrong.
        message: String,
    },

    /// An option value is out of range or names something unknown (e.g. a class name).
    #[error("invalid option {name} = {value}: {message}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        message: String,
    },

    /// Writing the JSONL output failed.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

fn fmt_stderr(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("\nffmpeg said:\n{stderr}")
    }
}

fn fmt_attempts(attempts: u32, last_error: Option<&VisionError>) -> String {
    match (attempts, last_error) {
        (0, _) => String::new(),
        (n, Some(e)) => format!(" after {n} failed connection attempt(s); the last: {e}"),
        (n, None) => format!(" after {n} failed connection attempt(s)"),
    }
}

impl VisionError {
    /// Wraps a candle error with the step it happened in.
    pub(crate) fn tensor(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| VisionError::Tensor { context, source }
    }

    /// Wraps an io error with an action and a path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VisionError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = VisionError> = std::result::Result<T, E>;
