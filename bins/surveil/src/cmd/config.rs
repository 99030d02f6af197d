//! `surveil config show` and the shared configuration loading of every command.

use anyhow::Context;
use surveil_config::{ConfigError, ConfigLoader, LoadedConfig};
use surveil_vision::source::redact_url;

use crate::cli::{Cli, ConfigArgs, ConfigShowArgs};
use crate::Failure;

/// Load the configuration for a command: profile, environment, `--set` overrides, plus any
/// command-specific flag overrides `(key, value, flag)`. From then on the process logs at the
/// configured level (`output.log_level`, `output.debug`) unless `SURVEIL_LOG` or `-q`/`-v`
/// decided it ([`crate::logging`]).
pub fn load(
    cli: &Cli,
    args: &ConfigArgs,
    flags: &[(&str, String, &str)],
) -> Result<LoadedConfig, Failure> {
    let mut loader = ConfigLoader::new()
        .profile(args.profile.as_deref())
        .profiles_dir(cli.profiles_dir.as_deref());
    for item in &args.set {
        let Some((key, value)) = item.split_once('=') else {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--set {item}: expected KEY=VALUE, e.g. --set vlm.device=cpu"
            )));
        };
        loader = loader.flag(key.trim(), value, &format!("--set {}", key.trim()));
    }
    for (key, value, flag) in flags {
        loader = loader.flag(key, value.clone(), flag);
    }
    let loaded = loader
        .load()
        .map_err(|e: ConfigError| Failure::Usage(anyhow::Error::new(e)))?;
    crate::logging::apply_config(&loaded);
    Ok(loaded)
}

/// Whether `key` is a camera's source (`cameras[2].source`), which may hold credentials.
fn is_camera_source(key: &str) -> bool {
    key.strip_prefix("cameras[")
        .and_then(|rest| rest.split_once("].source"))
        .is_some_and(|(index, tail)| tail.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// `surveil config show`. Camera sources are shown with their passwords replaced by `***`
/// (as in logs and summaries).
pub fn show(cli: &Cli, args: &ConfigShowArgs) -> Result<(), Failure> {
    let loaded = load(cli, &args.config, &[])?;
    if args.json {
        let mut json = loaded.shown();
        if let Some(cameras) = json
            .get_mut("cameras")
            .and_then(serde_json::Value::as_array_mut)
        {
            for camera in cameras {
                if let Some(source) = camera.get_mut("source") {
                    if let Some(text) = source.as_str() {
                        *source = serde_json::Value::String(redact_url(text));
                    }
                }
            }
        }
        let origins: serde_json::Map<String, serde_json::Value> = loaded
            .entries()
            .into_iter()
            .map(|(k, _, o)| (k, serde_json::Value::String(o.to_string())))
            .collect();
        if let Some(obj) = json.as_object_mut() {
            obj.insert("_origins".into(), serde_json::Value::Object(origins));
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&json).context("formatting JSON")?
        );
        return Ok(());
    }
    outln!(
        "profile: {} ({})",
        loaded.config.profile,
        loaded.profile_origin
    );
    let entries = loaded.entries();
    let width = entries.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    let mut section = "";
    for (key, value, origin) in &entries {
        let (sec, _) = key.split_once('.').unwrap_or((key, ""));
        if sec != section {
            // A camera's fields (`cameras[0].name`) under the table header a profile writes.
            match sec.split_once('[') {
                Some((list, _)) => outln!("\n[[{list}]]"),
                None => outln!("\n[{sec}]"),
            }
            section = sec;
        }
        let shown = match value {
            serde_json::Value::String(s) if is_camera_source(key) => redact_url(s),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "(none)".into(),
            // A camera's zones by name (`config show --json` has them whole).
            serde_json::Value::Array(items) if key.ends_with(".zones") => {
                let names: Vec<&str> = items
                    .iter()
                    .filter_map(|z| z.get("name").and_then(serde_json::Value::as_str))
                    .collect();
                format!("[{}]", names.join(", "))
            }
            other => other.to_string(),
        };
        outln!("  {key:<width$}  {shown:<28}  # {origin}");
    }
    Ok(())
}
