//! Integration tests of surveil-vision (one binary, one module per area).

mod common;
mod detector_errors;
mod parity;
mod pipeline;
mod sources;
mod stream;
