//! Two ways to get a validated `SystemConfig`: built in code from the defaults, and loaded
//! from a profile with an override, as `surveil run --profile testing --weights dummy` does.
//!
//! ```text
//! cargo run -p surveil-config --example system_config [PROFILE]
//! ```
//!
//! `PROFILE` defaults to `testing`. The environment is ignored (the loader is given an empty
//! one) so the output is the same on every machine. Prints the first configuration as JSON and
//! the second as `key = value (origin)` lines: the layer each value came from.

use std::process::ExitCode;

use surveil_config::{ConfigError, ConfigLoader, Device, RawConfig, SystemConfig};

/// The defaults with a few keys changed, validated like any profile.
fn built_in_code() -> Result<SystemConfig, ConfigError> {
    let mut raw = RawConfig::default();
    raw.vlm.primary_model = "git-base-coco".into();
    raw.vlm.device = Device::Cpu;
    raw.vlm.max_new_tokens = 24;
    raw.orchestration.max_concurrent_tools = 2;
    raw.monitoring.enabled = false;
    // `origin(key)` names where a value came from in error messages.
    raw.validate("in-code", |_key| "built in code".to_string())
}

fn main() -> ExitCode {
    let profile = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testing".to_string());
    match run(&profile) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("system_config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(profile: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = built_in_code()?;
    println!(
        "# built in code\n{}",
        serde_json::to_string_pretty(&config)?
    );

    // Profile, then a flag on top (the highest layer); no environment variables.
    let loaded = ConfigLoader::with_env(Vec::new())
        .profile(Some(profile))
        .flag("vlm.weights", "dummy", "--weights")
        .load()?;
    println!(
        "\n# profile {} ({}) with --weights dummy",
        loaded.config.profile, loaded.profile_origin
    );
    for (key, value, origin) in loaded.entries() {
        println!("{key} = {value}  ({origin})");
    }
    Ok(())
}
