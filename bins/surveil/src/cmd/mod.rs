//! One module per command.

pub mod config;
pub mod detect;
pub mod doctor;
pub mod models;
pub mod test_model;
