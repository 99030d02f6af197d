//! The error type of the quantized kernels.

/// What can go wrong when quantizing a weight or running a quantized matmul.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A weight value is NaN or infinite; nothing can be quantized from it.
    #[error("weight [{row}, {col}] is {value}: cannot quantize a non-finite weight")]
    NonFiniteWeight {
        /// Row (output index) of the value.
        row: usize,
        /// Column (input index) of the value.
        col: usize,
        /// The value.
        value: f32,
    },
    /// A block's minimum or scale does not fit in f16 (|value| above 65504).
    #[error(
        "weight row {row}, columns {col}..{}: range [{min}, {max}] does not fit the f16 \
         scale and minimum of a 4-bit block",
        col + super::BLOCK
    )]
    OutOfRange {
        /// Row of the block.
        row: usize,
        /// First column of the block.
        col: usize,
        /// Smallest value of the block.
        min: f32,
        /// Largest value of the block.
        max: f32,
    },
    /// A slice has another length than the shape it is given with.
    #[error("{what}: expected {expected} values, got {found}")]
    Length {
        /// Which argument.
        what: &'static str,
        /// `rows × cols` of the shape.
        expected: usize,
        /// Length of the slice.
        found: usize,
    },
    /// Shapes that must agree do not (input width of the weight and the activations, or the
    /// experts of one grouped call).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A forced kernel path needs CPU features this machine lacks.
    #[error("kernel {kernel:?} needs CPU features this machine lacks ({needs})")]
    KernelUnavailable {
        /// The path asked for.
        kernel: super::Kernel,
        /// The features it needs.
        needs: &'static str,
    },
    /// A thread pool of zero threads was asked for.
    #[error("a thread pool needs at least one thread")]
    NoThreads,
    /// A worker thread could not be started.
    #[error("cannot start a kernel worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A job panicked on one of the pool's threads; the other parts of the call were finished
    /// or skipped and the pool is usable again.
    #[error("a kernel job panicked: {0}")]
    JobPanicked(String),
}
