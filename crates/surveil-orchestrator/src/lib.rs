//! surveil-orchestrator
