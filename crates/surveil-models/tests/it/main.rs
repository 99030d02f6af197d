//! Integration tests of surveil-models (one test binary, one module per area).

mod common;
mod git;
mod loader;
mod qwen2_vl;
