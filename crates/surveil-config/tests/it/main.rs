//! Integration tests of surveil-config.

mod fuzz;
mod layers;
mod resolved;
mod rules;
mod validation;

use surveil_config::{ConfigError, ConfigLoader, LoadedConfig};

/// A loader with exactly these environment variables and the built-in profiles.
pub fn loader(env: &[(&str, &str)]) -> ConfigLoader {
    ConfigLoader::with_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// Load, panicking with the message on error.
pub fn load(l: ConfigLoader) -> LoadedConfig {
    l.load().unwrap_or_else(|e| panic!("{e}"))
}

/// Load expecting an error; return its message.
pub fn load_err(l: ConfigLoader) -> (ConfigError, String) {
    match l.load() {
        Ok(c) => panic!("expected an error, got {:?}", c.config),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}
