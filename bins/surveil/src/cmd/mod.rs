//! One module per command.

pub mod config;
pub mod detect;
pub mod doctor;
pub mod memory;
pub mod models;
pub mod run;
pub mod test_model;
pub mod verdict;
