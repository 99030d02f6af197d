//! Getting a model resident.

pub mod manager;
pub mod registry;
pub mod smoke;
pub mod source;
pub mod synth;
pub mod weights;
