//! Integration tests of surveil-orchestrator: one binary, one module per area.

mod decision;
mod verdict;
mod scene;
mod tools;
mod trigger;
