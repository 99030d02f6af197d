//! Integration tests of surveil-vision (one binary, one module per area).

mod bytetrack;
mod common;
mod detector_errors;
mod fuzz;
mod images;
mod parity;
mod pipeline;
mod sources;
mod stream;
