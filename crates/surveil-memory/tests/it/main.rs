//! Integration tests of `surveil-memory` that do not measure process-wide RSS (those live in
//! `tests/rss.rs`, a binary of their own, so parallel tests cannot disturb them).

mod checkpoint;
mod fuzz;
mod report;
mod sampler;
