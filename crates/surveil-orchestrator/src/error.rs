//! The one error type of `surveil-orchestrator`.

use std::path::PathBuf;

/// Everything that can go wrong while running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A file of the run's output could not be written (the OS error is the source).
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration asks for something the pipeline cannot do.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Frame source, detector or tracker failed.
    #[error(transparent)]
    Vision(#[from] surveil_vision::VisionError),
    /// Model loading or generation failed.
    #[error(transparent)]
    Model(#[from] surveil_models::ModelError),
    /// A behaviour tool failed.
    #[error("tool `{tool}` failed: {reason}")]
    Tool {
        /// Tool name.
        tool: String,
        /// What went wrong.
        reason: String,
    },
    /// A stop was requested (Ctrl-C, SIGTERM) before the pipeline could start.
    #[error("interrupted before the first frame (while the model was loading)")]
    Interrupted,
    /// What went wrong with one camera of a run of several (its source could not be opened).
    #[error("camera `{camera}`: {source}")]
    Camera {
        /// The camera's name.
        camera: String,
        /// What went wrong.
        #[source]
        source: Box<OrchestratorError>,
    },
    /// The metrics endpoint cannot listen on its address (in use, not an address of this
    /// machine, a privileged port).
    #[error("cannot serve metrics on {addr}")]
    MetricsEndpoint {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics registry refused a metric or could not encode one (a broken invariant of
    /// the exporter).
    #[error("metrics registry: {0}")]
    MetricsRegistry(String),
    /// A worker thread of the pipeline stopped unexpectedly.
    #[error("pipeline thread `{0}` stopped unexpectedly")]
    ThreadLost(String),
}

/// `Result` with [`OrchestratorError`].
pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;
