//! Memory facts for surveil: what the process and the GPU hold, what a checkpoint will take
//! before it is loaded, whether it fits, and giving memory back after unload.
//!
//! - [`ProcessMemory`]: RSS, VMS and peak RSS of this process (cheap, per frame).
//! - [`GpuMemory`]: the CUDA driver's view per device plus our registered tensor bytes
//!   ([`GpuAllocation`]); feature `cuda`, otherwise [`GpuMemory::Unavailable`].
//! - [`SwapMemory`] / [`processes_named`]: swap, and the RSS of every process running one
//!   executable (all `surveil` processes of the machine).
//! - [`MemorySnapshot`] / [`MemoryReport`]: labelled snapshots of a model lifecycle with
//!   deltas, as a human table or JSON.
//! - [`CheckpointHeader::read`]: the one reader of safetensors headers and shard indexes, for
//!   the estimate here and the loader of `surveil-models` alike.
//! - [`estimate_checkpoint`] / [`estimate_tensors`]: bytes a model takes under a
//!   [`QuantPolicy`], from safetensors headers alone; [`ModelDims::runtime_allowance`] for the
//!   KV cache and activations.
//! - [`TensorRules`]: an architecture's rule for the role each tensor is kept in, which the
//!   estimate sizes and the loader checks ([`GuessedRoles`] when the architecture is unknown).
//! - [`fits`]: the estimate against free memory on a [`Device`], with advice when it does not fit.
//! - [`cleanup()`] / [`release`]: hand freed heap and CUDA pool memory back to the OS/driver.
//! - [`MemorySampler`]: a background thread keeping peak RSS and recent history.
//!
//!
//! Sizes are bytes (`u64`) everywhere; the human forms in [`units`] use MB = 2^20 bytes and
//! GiB = 2^30 bytes. Process figures come from `/proc/self/status` on Linux (elsewhere only
//! the peak RSS is known; the rest is `None`, never zero), GPU figures from the CUDA driver.
//!
//! # Example
//!
//! A lifecycle report, and a fit check of a (tiny) model before loading it:
//!
//! ```
//! use surveil_memory::{
//!     check_fit, estimate_tensors, Device, FitHints, MemoryReport, QuantPolicy, StorageDtype,
//! };
//!
//! let mut report = MemoryReport::new();
//! report.record("before load");
//! let weights = vec![1u8; 8 << 20]; // stands for a model load
//! report.record("after load");
//! drop(weights);
//! report.record("after unload");
//! println!("{report}"); // a table; `report.to_json()` has the exact byte counts
//! let delta = report.delta("before load", "after load");
//! assert!(delta.is_some());
//!
//! // Tensor names and shapes, as a safetensors header lists them. A `[out, in]` linear
//! // weight whose rows divide by 256 becomes Q4K (144 bytes per 256 weights); norms stay f32.
//! let tensors: [(&str, &[usize]); 2] = [
//!     ("model.layers.0.mlp.up_proj.weight", &[1024, 512]),
//!     ("model.layers.0.input_layernorm.weight", &[512]),
//! ];
//! let policy = QuantPolicy::four_bit(StorageDtype::F16);
//! let estimate = estimate_tensors(tensors, &policy);
//! assert_eq!(estimate.total_bytes, 1024 * 512 / 256 * 144 + 512 * 4);
//!
//! // `fits` asks the device for its free memory; `check_fit` compares with a figure you give.
//! let fit = check_fit(&estimate, Device::Cpu, 64 << 20, &FitHints::default());
//! assert!(fit.fits(), "{fit}");
//! let no_room = check_fit(&estimate, Device::Cpu, 1 << 10, &FitHints::default());
//! assert!(!no_room.fits());
//! println!("{no_room}"); // "needs ..., ... available on cpu; try ..."
//! ```
//!
//! `examples/checkpoint_fit.rs` does this for a checkpoint directory (`cargo run -p
//! surveil-memory --example checkpoint_fit -- DIR`).
//!
//! Not for: deciding *which* model or device to use (that is `surveil-models`), or loading
//! anything. This crate measures and advises; it never allocates model memory itself.
// Library code reports failures as errors; `unwrap`/`expect` are for tests only.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod cleanup;
pub mod error;
pub mod estimate;
pub mod fit;
pub mod gpu;
pub mod host;
pub mod process;
pub mod quant;
pub mod roles;
pub mod sampler;
pub mod snapshot;
pub mod system;
pub mod units;

pub use checkpoint::{CheckpointHeader, CheckpointTensor, ShardIndex, MAX_HEADER_BYTES};
pub use cleanup::{cleanup, release, CleanupReport};
pub use error::MemoryError;
pub use estimate::{
    estimate_checkpoint, estimate_header, estimate_tensors, estimate_with_roles,
    estimate_with_rules, DtypeTotals, Estimate, FloatFallback, ModelDims, RuntimeAllowance,
    TensorPlan,
};
pub use fit::{available_bytes, check_fit, fits, fits_with_hints, Device, Fit, FitHints};
pub use gpu::{cuda_usable, gpu_allocated_bytes, GpuAllocation, GpuDeviceMemory, GpuMemory};
pub use host::{processes_named, NamedProcess, SwapMemory};
pub use process::ProcessMemory;
pub use quant::{QuantPolicy, StorageDtype, TensorRole};
pub use roles::{resident_roles, GuessedRoles, TensorRules};
pub use sampler::{MemorySampler, Sample, SamplerConfig, SamplerStats};
pub use snapshot::{MemoryReport, MemorySnapshot, SnapshotDelta};
pub use system::HostMemory;
