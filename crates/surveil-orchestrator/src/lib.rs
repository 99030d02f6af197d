//! The analysis pipeline of surveil: triggers (persons present, cooldown, periodic checks),
//! behaviour tools run under `max_concurrent_tools`, VLM verdicts constrained to a JSON schema,
//! the decision engine and event sinks.
//!
//! Not written yet: this crate only fixes the place of the pipeline in the workspace
//! (it depends on config, memory, models and vision; only the CLI depends on it).
