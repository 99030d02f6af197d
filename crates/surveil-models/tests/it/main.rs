//! Integration tests of surveil-models (one test binary, one module per area).

mod common;
mod constrained;
mod deepseek_v3;
mod fuzz;
mod git;
mod kimi_tokenizer;
mod kimi_vl;
mod loader;
mod qwen2_vl;
