//! Integration tests of surveil-orchestrator: one binary, one module per area.

mod analyst;
mod cameras;
mod decision;
mod exporter;
mod pipeline;
mod scene;
mod tools;
mod trigger;
mod verdict;
