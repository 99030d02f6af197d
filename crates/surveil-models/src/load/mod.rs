//! Getting a model resident: from a model id to weights in memory and a [`crate::vlm::Vlm`].
//!
//! - [`registry`]: the models surveil knows ([`registry::ModelSpec`]: Hub repository,
//!   architecture, size, generation defaults, required files).
//! - `source`: resolving a model id and a `weights` setting to a checkpoint directory (Hugging
//!   Face cache, a model directory) or dummy weights.
//! - [`weights`]: tensor sources (memory-mapped safetensors, deterministic dummy tensors) and
//!   the [`weights::Weights`] store architectures load through, quantizing tensor by tensor.
//! - [`manager`]: the lifecycle (resolve → estimate → fit check → load → unload, one model at a
//!   time, with fallbacks) and the memory snapshots of each step.
//! - [`synth`]: dummy checkpoints written to disk, to measure the memory-mapped load path.
//! - [`smoke`]: one short generation on a built-in image, to measure memory after the first
//!   inference.
//!
//! Nothing here depends on the layers of the architectures: they read through
//! [`weights::Weights`], never the reverse.

pub mod manager;
pub mod registry;
pub mod smoke;
pub(crate) mod source;
pub mod synth;
pub mod weights;
