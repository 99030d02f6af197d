//! The configuration reference, `docs/configuration.md`, generated from the schema: every key
//! with its built-in default (from [`RawConfig::default`]), the environment variables that set
//! it (from the same tables the loader reads) and its allowed values (from the lists validation
//! checks against). The tests of this module fail when the file in `docs/` differs from what
//! [`reference_markdown`] writes, so the document cannot drift from the code.

use figment::value::{Dict, Value};
use serde_json::Value as Json;

use crate::env::variables_for;
use crate::loader::shown_json;
use crate::schema::{Choice, DETECTION_CLASSES, KNOWN_MODELS};
use crate::{
    ConfigError, Detector, Device, LogLevel, OrchestrationMode, RawConfig, StorageDtype,
    SystemConfig, ZoneCoordinates, BUILTIN_PROFILES, DEFAULT_PROFILE,
};

/// What a key means and which values it takes; one entry per key of [`SystemConfig`], of a
/// `[[zones]]` table (`zones[].<field>`) and of a `[[cameras]]` table (`cameras[].<field>`).
struct KeyDoc {
    key: &'static str,
    allowed: Allowed,
    meaning: &'static str,
}

/// The values a key takes.
enum Allowed {
    /// Written out by hand: a range, a type.
    Text(&'static str),
    /// One of the names of a [`Choice`] (any case), listed from the type itself.
    Choice(&'static [&'static str]),
    /// A model id or Hugging Face repo id of [`KNOWN_MODELS`].
    Model,
    /// A list of model ids or repo ids.
    Models,
    /// `vlm.device`.
    Device,
    /// A list of names from a fixed set (any case).
    ListOf(&'static [&'static str]),
}

impl Allowed {
    fn render(&self) -> String {
        let names = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Allowed::Text(t) => t.to_string(),
            Allowed::Choice(n) => format!("{} (any case)", names(n)),
            Allowed::ListOf(n) => format!("a list of: {} (any case)", names(n)),
            Allowed::Model => "a model id or its Hugging Face repo id, any case (see \
                               [Models](#models)); stored as the model id"
                .to_string(),
            Allowed::Models => {
                "a list of model ids or repo ids, without the primary model".to_string()
            }
            Allowed::Device => format!(
                "{}; any case, `DeviceType.` prefix accepted (`DeviceType.CPU`); `cuda` is \
                 stored as `cuda:0`",
                names(Device::ALLOWED)
            ),
        }
    }
}

const fn doc(key: &'static str, allowed: Allowed, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        allowed,
        meaning,
    }
}

/// Seconds in (0, tools.history_seconds].
const WITHIN_HISTORY: &str = "seconds in (0, `tools.history_seconds`]";

const KEY_DOCS: &[KeyDoc] = &[
    doc(
        "profile",
        Allowed::Text("a profile name (read only: chosen by `--profile`, else `ENV`)"),
        "Name of the profile the configuration was built from.",
    ),
    doc(
        "vlm.primary_model",
        Allowed::Model,
        "The vision-language model loaded for analysis.",
    ),
    doc(
        "vlm.fallback_models",
        Allowed::Models,
        "Models tried in order when the primary fails to load (only with `enable_fallback`).",
    ),
    doc(
        "vlm.enable_fallback",
        Allowed::Text("`true`, `false` (also `1`/`0`, `yes`/`no` in variables and flags)"),
        "Whether fallback models are tried at all.",
    ),
    doc(
        "vlm.device",
        Allowed::Device,
        "Where the model runs: `auto` takes CUDA device 0 when compiled in and the model fits, \
         else the CPU; `cuda:N` must name a device present when the model loads.",
    ),
    doc(
        "vlm.load_in_4bit",
        Allowed::Text("`true`, `false`"),
        "Quantize linear weights to 4 bits while loading.",
    ),
    doc(
        "vlm.quant",
        Allowed::Choice(StorageDtype::NAMES),
        "Storage type of linear weights: the 4-bit kind when `load_in_4bit`, else the type used \
         (a 4-bit type here then means `bf16`).",
    ),
    doc(
        "vlm.storage",
        Allowed::Text("read only: resolved from `load_in_4bit` and `quant`"),
        "The storage type linear weights get: with `load_in_4bit`, `quant` when it is a 4-bit \
         type (`q4k`, `q4_0`), else `q4k`; without, `quant`, or `bf16` when `quant` is a 4-bit \
         type (so `LOAD_IN_4BIT=false` never loads 4-bit weights). `surveil config show` gives it \
         the origin of the key that decided it.",
    ),
    doc(
        "vlm.weights",
        Allowed::Text(
            "`auto` (the Hugging Face cache `paths.hub_cache`, then `paths.model_dir/<id>`), \
             `dummy` (random weights with the real shapes), or a checkpoint directory \
             (`./Dummy` for a directory of that name)",
        ),
        "Where weights come from.",
    ),
    doc(
        "vlm.max_new_tokens",
        Allowed::Text("an integer ≥ 1"),
        "Generation limit per answer, tokens.",
    ),
    doc(
        "vlm.temperature",
        Allowed::Text("a number ≥ 0"),
        "Sampling temperature (0 = greedy).",
    ),
    doc(
        "vlm.top_p",
        Allowed::Text("a number in [0, 1]"),
        "Nucleus sampling mass.",
    ),
    doc(
        "vlm.seed",
        Allowed::Text("a non-negative integer, or absent"),
        "Seed for sampling and dummy weights (absent: 0).",
    ),
    doc(
        "vlm.threads",
        Allowed::Text("an integer ≥ 1, or absent"),
        "Threads of the CPU matmul kernels and of quantization at load (absent: one per \
         physical core this process may use).",
    ),
    doc(
        "detection.model",
        Allowed::Choice(Detector::NAMES),
        "Person detector (its files: `paths.assets/<name>/`).",
    ),
    doc(
        "detection.confidence",
        Allowed::Text("a number in [0, 1]"),
        "Minimum detection score.",
    ),
    doc(
        "detection.iou",
        Allowed::Text("a number in [0, 1]"),
        "IoU above which overlapping boxes of a class are suppressed.",
    ),
    doc(
        "detection.classes",
        Allowed::ListOf(DETECTION_CLASSES),
        "COCO class names kept (stored lower case).",
    ),
    doc(
        "tracker.track_buffer",
        Allowed::Text("an integer ≥ 0"),
        "Frames a lost track is kept before removal.",
    ),
    doc(
        "tracker.match_threshold",
        Allowed::Text("a number in [0, 1]"),
        "IoU matching threshold, as a cost: 1 − IoU ≤ threshold.",
    ),
    doc(
        "tracker.frame_rate",
        Allowed::Text("a number > 0 (12.5 and 29.97 are fine), or absent"),
        "Frames per second the lost-track buffer is scaled by (absent: the source's rate, 30 \
         when unknown).",
    ),
    doc(
        "orchestration.mode",
        Allowed::Choice(OrchestrationMode::NAMES),
        "Analysis depth: few tools and short timeouts (`fast`) to every tool (`thorough`).",
    ),
    doc(
        "orchestration.max_concurrent_tools",
        Allowed::Text("an integer ≥ 1"),
        "Behaviour tools running at once.",
    ),
    doc(
        "orchestration.timeout_seconds",
        Allowed::Text("seconds > 0"),
        "Time limit of one behaviour tool on one frame; a late tool is recorded and skipped.",
    ),
    doc(
        "orchestration.vlm_timeout_seconds",
        Allowed::Text("seconds > 0"),
        "Time limit of one VLM analysis (prompt to verdict).",
    ),
    doc(
        "orchestration.confidence_threshold",
        Allowed::Text("a number in [0, 1]"),
        "Verdict confidence needed to act.",
    ),
    doc(
        "orchestration.vlm_cooldown_seconds",
        Allowed::Text("seconds ≥ 0"),
        "Minimum time between two VLM calls.",
    ),
    doc(
        "orchestration.vlm_periodic_seconds",
        Allowed::Text("seconds > 0"),
        "Ask the VLM at least this often while people are present.",
    ),
    doc(
        "orchestration.vlm_cue_cooldown_seconds",
        Allowed::Text("seconds ≥ 0"),
        "Minimum time before the same tool cue (tool, kind, track) may trigger the VLM again.",
    ),
    doc(
        "monitoring.enabled",
        Allowed::Text("`true`, `false`"),
        "Whether the background memory sampler runs.",
    ),
    doc(
        "monitoring.interval_seconds",
        Allowed::Text("seconds > 0"),
        "Time between memory samples.",
    ),
    doc(
        "monitoring.metrics_addr",
        Allowed::Text(
            "`IP:PORT` (`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464`; port 0 picks a free \
             port), or absent",
        ),
        "Where `surveil run` serves Prometheus metrics (`GET /metrics`); absent: no endpoint. \
         `surveil run --metrics-addr` sets it too.",
    ),
    doc(
        "output.directory",
        Allowed::Text("a directory path"),
        "Where runs write events and summaries.",
    ),
    doc(
        "output.log_level",
        Allowed::Choice(LogLevel::NAMES),
        "Log level of surveil's own crates on stderr (`warning` is read as `warn`); other \
         crates stay at `warn`. `SURVEIL_LOG` and `-q`/`-v` win over it (see \
         [Logging](#logging)).",
    ),
    doc(
        "output.debug",
        Allowed::Text("`true`, `false`"),
        "Extra diagnostics: surveil's own crates log at `debug` at least, unless a later \
         layer sets `log_level` (`SURVEIL_LOG` and `-q`/`-v` still win; see \
         [Logging](#logging)).",
    ),
    doc(
        "paths.hub_cache",
        Allowed::Text(
            "a directory path; `HF_HOME` sets it too, to its `hub` folder (`HF_HUB_CACHE` wins \
             over it); empty variables are ignored",
        ),
        "The Hugging Face hub cache (`models--<org>--<name>/snapshots/<revision>/`) searched \
         for checkpoints; nothing is downloaded.",
    ),
    doc(
        "paths.model_dir",
        Allowed::Text("a directory path, or absent (none); empty variables are ignored"),
        "A directory of checkpoints, `<model id>/` each, searched after the hub cache.",
    ),
    doc(
        "paths.assets",
        Allowed::Text("a directory path; empty variables are ignored"),
        "The asset cache filled by `scripts/setup.sh`: sample footage, the detector's files, \
         tokenizers.",
    ),
    doc(
        "tools.history_seconds",
        Allowed::Text("seconds in (0, 3600]"),
        "How far back the per-track history reaches; dwell times and paths are measured over it.",
    ),
    doc(
        "tools.loiter_seconds",
        Allowed::Text(WITHIN_HISTORY),
        "Default dwell limit of a zone before a person counts as loitering.",
    ),
    doc(
        "tools.crowd_threshold",
        Allowed::Text("an integer ≥ 1"),
        "More people than this in one frame is a crowd.",
    ),
    doc(
        "tools.proximity_margin",
        Allowed::Text("a number in [0, 5]"),
        "A bag is near a person when the gap between their boxes is at most this fraction of \
         the person's box height.",
    ),
    doc(
        "tools.speed_window_seconds",
        Allowed::Text(WITHIN_HISTORY),
        "Speed is measured over the last this many seconds of a track.",
    ),
    doc(
        "tools.turn_angle_degrees",
        Allowed::Text("degrees in (0, 180]"),
        "Heading changes of at least this angle count as a direction change.",
    ),
    doc(
        "tools.heading_step_body_lengths",
        Allowed::Text("body lengths in (0, 10]"),
        "Headings are taken between path points at least this far apart.",
    ),
    doc(
        "tools.erratic_turns",
        Allowed::Text("an integer ≥ 1"),
        "This many direction changes within the history make a path erratic.",
    ),
    doc(
        "tools.stop_radius_body_lengths",
        Allowed::Text("body lengths in (0, 10]"),
        "A person who stays within this radius is stationary.",
    ),
    doc(
        "tools.stop_seconds",
        Allowed::Text(WITHIN_HISTORY),
        "Shortest stationary spell that counts as a stop.",
    ),
    doc(
        "tools.return_radius_body_lengths",
        Allowed::Text("body lengths in (0, 100]"),
        "A path ends \"back at the start\" within this radius of its first point.",
    ),
    doc(
        "tools.return_excursion_body_lengths",
        Allowed::Text("body lengths in (`tools.return_radius_body_lengths`, 1000]"),
        "... after having gone at least this far away from it.",
    ),
    doc(
        "tools.bag_association_seconds",
        Allowed::Text("seconds in [0, `tools.history_seconds`]"),
        "A bag must have been near a person this long before its disappearance is a \
         concealment cue.",
    ),
    doc(
        "tools.bag_gone_seconds",
        Allowed::Text("seconds in [0, `tools.history_seconds`]"),
        "A bag must have been gone this long before its disappearance is reported.",
    ),
    doc(
        "decision.opening_hours",
        Allowed::Text(
            "absent (always open) or `{ open = \"HH:MM\", close = \"HH:MM\" }`, open ≠ close; \
             close before open spans midnight",
        ),
        "Opening hours, local time.",
    ),
    doc(
        "decision.after_hours_escalation",
        Allowed::Text("`true`, `false`"),
        "Raise the alert level of anything seen outside the opening hours.",
    ),
    doc(
        "mqtt.enabled",
        Allowed::Text("`true`, `false`"),
        "Whether `surveil run` publishes events, alerts, stats and availability to an MQTT \
         broker (topics: [docs/mqtt.md](mqtt.md)).",
    ),
    doc(
        "mqtt.host",
        Allowed::Text("a host name or IP address"),
        "The broker.",
    ),
    doc(
        "mqtt.port",
        Allowed::Text("a TCP port in [1, 65535]"),
        "The broker's port (1883 plain, 8883 the usual TLS port).",
    ),
    doc(
        "mqtt.client_id",
        Allowed::Text("1 to 256 bytes, or absent"),
        "MQTT client id (absent: `surveil-<hostname>-<pid>`, unique per process; a broker \
         disconnects the older of two clients with one id).",
    ),
    doc(
        "mqtt.topic_prefix",
        Allowed::Text("topic levels separated by `/`, no `+` or `#`, no empty level"),
        "First level(s) of every topic.",
    ),
    doc(
        "mqtt.node_id",
        Allowed::Text("one topic level (no `/`, `+`, `#`), or absent"),
        "This process in `<prefix>/node/<node_id>/stats` and `.../available` (absent: the host \
         name; give each process its own when several run on one host).",
    ),
    doc(
        "mqtt.username",
        Allowed::Text("a non-empty name, or absent (anonymous)"),
        "User name for the broker.",
    ),
    doc(
        "mqtt.password_env",
        Allowed::Text("an environment variable name, or absent; needs `username`"),
        "The variable holding the password, read when the connection is set up (never stored, \
         shown or logged).",
    ),
    doc(
        "mqtt.password_file",
        Allowed::Text("a file path, or absent; needs `username`; not with `password_env`"),
        "A file holding the password on its first line, read when the connection is set up \
         (an unreadable file is an error naming this key).",
    ),
    doc(
        "mqtt.tls",
        Allowed::Text("`true`, `false`"),
        "Connect with TLS (rustls).",
    ),
    doc(
        "mqtt.ca_file",
        Allowed::Text("a PEM file path, or absent (the system's trust store); needs `tls`"),
        "Certificate authorities that sign the broker's certificate.",
    ),
    doc(
        "mqtt.keep_alive_seconds",
        Allowed::Text("seconds in [1, 65535]"),
        "MQTT keep alive: pings when nothing else is sent; the broker declares the process \
         gone (its last will: `offline`) after 1.5 times this without a packet.",
    ),
    doc(
        "mqtt.buffer_messages",
        Allowed::Text("an integer in [1, 1000000]"),
        "Messages held in memory while the broker is slow or unreachable; beyond that, new ones \
         are dropped and counted (`summary.json`: `mqtt.dropped`). `events.jsonl` has every \
         event regardless.",
    ),
    doc(
        "mqtt.events_qos",
        Allowed::Text("`0`, `1`, `2`"),
        "QoS of `<prefix>/<camera>/events`; alerts are always QoS 1.",
    ),
    doc(
        "mqtt.stats_interval_seconds",
        Allowed::Text("seconds > 0"),
        "Time between two health messages on `<prefix>/node/<node_id>/stats`.",
    ),
    doc(
        "zones",
        Allowed::Text("a list of `[[zones]]` tables (below)"),
        "Named areas of a camera's view.",
    ),
    doc(
        "zones[].name",
        Allowed::Text("a non-empty name, unique among zones"),
        "Zone name.",
    ),
    doc(
        "zones[].camera",
        Allowed::Text("a camera name, or absent (every camera)"),
        "The camera the zone belongs to.",
    ),
    doc(
        "zones[].polygon",
        Allowed::Text("at least 3 finite `[x, y]` corners enclosing an area"),
        "Corners in order; the polygon closes itself.",
    ),
    doc(
        "zones[].coordinates",
        Allowed::Choice(ZoneCoordinates::NAMES),
        "`pixel` coordinates, or `normalized` fractions of the frame in [0, 1].",
    ),
    doc(
        "zones[].restricted",
        Allowed::Text("`true`, `false`"),
        "Staff-only area: presence is notable, loitering suspicious.",
    ),
    doc(
        "zones[].max_dwell_seconds",
        Allowed::Text("seconds in (0, `tools.history_seconds`], or absent"),
        "Dwell limit of this zone (absent: `tools.loiter_seconds`).",
    ),
    doc(
        "cameras",
        Allowed::Text("a list of `[[cameras]]` tables (below)"),
        "The cameras `surveil run` serves, each with its own decode and detect/track stream \
         and one shared model; none: the `--source` given, else the sample clip.",
    ),
    doc(
        "cameras[].name",
        Allowed::Text("1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_`, `-`, unique among cameras"),
        "Camera name: in events and summaries, an MQTT topic level, part of alert frame names.",
    ),
    doc(
        "cameras[].source",
        Allowed::Text("a video file, rtsp:// or http(s):// URL, image folder or image"),
        "What the camera reads.",
    ),
    doc(
        "cameras[].fps",
        Allowed::Text("a number > 0, or absent"),
        "Resample to this frame rate (ffmpeg sources; absent: every frame at its own time).",
    ),
    doc(
        "cameras[].width",
        Allowed::Text("an integer > 0, or absent"),
        "Scale frames to this width, pixels (ffmpeg sources; alone, the aspect is kept).",
    ),
    doc(
        "cameras[].height",
        Allowed::Text("an integer > 0, or absent"),
        "Scale frames to this height, pixels (ffmpeg sources; alone, the aspect is kept).",
    ),
    doc(
        "cameras[].zones",
        Allowed::Text(
            "a list of `[[cameras.zones]]` tables, each a `[[zones]]` table without `camera`; \
             names unique among all zones",
        ),
        "Zones of this camera alone, besides the top-level zones that apply to it.",
    ),
    doc(
        "cameras[].opening_hours",
        Allowed::Text("absent, or `{ open = \"HH:MM\", close = \"HH:MM\" }`, open ≠ close"),
        "Opening hours of this camera, overriding `decision.opening_hours`.",
    ),
];

/// The configuration with nothing but built-in defaults, validated with the home directory
/// written `~`, as `surveil config show` lists it (keys as written beside resolved ones).
fn default_config() -> Result<serde_json::Value, ConfigError> {
    let raw = RawConfig::default();
    let config: SystemConfig =
        raw.clone()
            .validate_with_home(DEFAULT_PROFILE, std::path::Path::new("~"), |_| {
                "default".to_string()
            })?;
    Ok(shown_json(&raw, &config))
}

/// A default as a profile file would write it: `"auto"`, `0.5`, `["a", "b"]`; `(absent)` for
/// a key without a value.
fn render_value(v: &Json) -> String {
    match v {
        Json::Null => "(absent)".to_string(),
        Json::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(render_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// Every key of `config` serialized (`section.field`, or the name of a top-level value that is
/// not a section) with its value, in serialization order.
fn leaf_keys(config: &Json) -> Vec<(String, Json)> {
    let mut out = Vec::new();
    if let Json::Object(top) = config {
        for (name, value) in top {
            match value {
                Json::Object(fields) => {
                    for (field, v) in fields {
                        out.push((format!("{name}.{field}"), v.clone()));
                    }
                }
                other => out.push((name.clone(), other.clone())),
            }
        }
    }
    out
}

/// The fields of a `[[zones]]` table, in the order of the description table (which follows
/// the schema).
fn zone_fields() -> Vec<String> {
    let zone = crate::ZoneConfig {
        name: String::new(),
        camera: None,
        polygon: Vec::new(),
        coordinates: ZoneCoordinates::default(),
        restricted: false,
        max_dwell_seconds: None,
    };
    match serde_json::to_value(zone) {
        Ok(Json::Object(fields)) => {
            let mut keys: Vec<String> = fields.keys().map(|f| format!("zones[].{f}")).collect();
            keys.sort_by_key(|key| KEY_DOCS.iter().position(|d| d.key == key));
            keys
        }
        _ => Vec::new(),
    }
}

/// The fields of a `[[cameras]]` table, in the order of the description table.
fn camera_fields() -> Vec<String> {
    let camera = crate::CameraConfig {
        name: String::new(),
        source: String::new(),
        fps: None,
        width: None,
        height: None,
        zones: Vec::new(),
        opening_hours: None,
    };
    match serde_json::to_value(camera) {
        Ok(Json::Object(fields)) => {
            let mut keys: Vec<String> = fields.keys().map(|f| format!("cameras[].{f}")).collect();
            keys.sort_by_key(|key| KEY_DOCS.iter().position(|d| d.key == key));
            keys
        }
        _ => Vec::new(),
    }
}

/// The default column of a `[[cameras]]` field.
fn camera_default(key: &str) -> &'static str {
    match key {
        "cameras[].name" | "cameras[].source" => "(required)",
        "cameras[].zones" => "[]",
        _ => "(absent)",
    }
}

/// The default column of a `[[zones]]` field.
fn zone_default(key: &str) -> &'static str {
    match key {
        "zones[].name" | "zones[].polygon" => "(required)",
        "zones[].coordinates" => "\"pixel\"",
        "zones[].restricted" => "false",
        _ => "(absent)",
    }
}

/// The table of the fields of a list of tables (`[[zones]]`, `[[cameras]]`), after `intro`.
fn push_fields(
    out: &mut String,
    intro: &str,
    fields: &[String],
    default: fn(&str) -> &'static str,
) -> Result<(), ConfigError> {
    out.push_str(&format!("\n{intro}\n\n{HEADER}\n"));
    for key in fields {
        let doc = key_doc(key).ok_or_else(|| {
            ConfigError::Invalid(format!("{key} has no entry in the configuration reference"))
        })?;
        out.push_str(&row(&[
            format!("`{key}`"),
            format!("`{}`", default(key)),
            "—".to_string(),
            doc.allowed.render(),
            doc.meaning.to_string(),
        ]));
        out.push('\n');
    }
    Ok(())
}

fn key_doc(key: &str) -> Option<&'static KeyDoc> {
    KEY_DOCS.iter().find(|d| d.key == key)
}

/// One table row; `|` inside cells is escaped.
fn row(cells: &[String]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |", cells.join(" | "))
}

/// How the log level is chosen: after the `[output]` table.
const LOGGING: &str = "
### Logging

Logs go to stderr. Their level is taken from the first of these that is set:

1. `SURVEIL_LOG`: a full [tracing filter](https://docs.rs/tracing-subscriber/latest/tracing_subscriber/filter/struct.EnvFilter.html) \
(`debug`, `warn,surveil_vision=trace`, …), used as written for every crate; flags and the \
configuration are then ignored. An empty value counts as unset; an invalid one is ignored with a \
warning.
2. the flags `-q` (`error`), `-v` (`info`), `-vv` (`debug`), `-vvv` (`trace`);
3. the configuration: `output.log_level` as resolved above (built-in default, profile, \
`LOG_LEVEL` or `SURVEIL_OUTPUT__LOG_LEVEL`, `--set output.log_level=…`), raised to `debug` when \
`output.debug` is true and `log_level` is `error`, `warn` or `info`, unless `log_level` comes \
from a later layer than `debug`: `LOG_LEVEL=error` over a profile with `debug = true` logs \
errors only, `DEBUG=1` over a profile with `log_level = \"warn\"` logs at `debug`;
4. `warn`.

The levels of 2 to 4 apply to surveil's own crates (log targets `surveil` and `surveil_*`); \
other crates (candle, tokenizers, …) log at `warn`, or `error` when that is the level. Only \
`SURVEIL_LOG` shows their debug output. Commands that read no configuration (`memory`, \
`models synth`, `verdict parse`) go from 2 to 4; the others switch to the configured level once \
the configuration is loaded, so `surveil run` with the `development` or `testing*` profiles \
logs surveil's debug lines unless `-q`, `-v` or `SURVEIL_LOG` says otherwise.
";

const HEADER: &str =
    "| Key | Default | Environment | Allowed values | Meaning |\n|---|---|---|---|---|";

/// `docs/configuration.md`: every key of [`SystemConfig`] and of a `[[zones]]` table, its
/// built-in default, the environment variables that set it, its allowed values and meaning;
/// the models; what each built-in profile sets. Errors only when the built-in defaults do not
/// validate, or a key has no entry in the description table (both broken invariants that the
/// tests of this module catch).
pub fn reference_markdown() -> Result<String, ConfigError> {
    let json = default_config()?;
    let defaults: Dict = match Value::serialize(RawConfig::default()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Generated from the schema by `reference_markdown()` in \
         crates/surveil-config/src/reference.rs. Do not edit by hand: change the schema, then run\n\
         `SURVEIL_UPDATE_DOCS=1 cargo test -p surveil-config --lib reference`. -->\n\n\
         A configuration is built from four layers, each overriding the one before:\n\n\
         1. the built-in defaults (the **Default** column below);\n\
         2. a profile, `profiles/<name>.toml`: `--profile NAME`, else `$ENV`, else `development` \
         (see [Built-in profiles](#built-in-profiles));\n\
         3. environment variables: the short variables of the original system (`VLM_MODEL`, \
         `VLM_DEVICE`, …) and `SURVEIL_<SECTION>__<FIELD>` for any key (the **Environment** \
         column);\n\
         4. command-line flags: `--set KEY=VALUE` for any key, and the flags of each command.\n\n\
         `surveil config show` prints the result and where each value came from. Unknown keys \
         and bad values are errors (exit code 2) that name the key, the value, its origin and \
         what is allowed.\n\n\
         Values as users type them are accepted: booleans as `true`/`false`, `1`/`0`, \
         `yes`/`no` in any case; choice values (device, quant, mode, log level, classes, \
         detector, zone coordinates) in any case; models by their id or their Hugging Face \
         repo id in any case. The stored value is the canonical one shown here. Lists are \
         written in variables and flags as `a,b,c` or as a JSON list.\n\n\
         Some values are resolved when the configuration is validated: `vlm.storage` (read \
         only) from `vlm.load_in_4bit` and `vlm.quant`, and each `[paths]` key from the \
         environment, else its default under the home directory (`~` below). Every command \
         takes them from the configuration, so `surveil config show` tells where each came \
         from.\n",
    );

    out.push_str("\n## Models\n\n| Model id | Hugging Face repo id |\n|---|---|\n");
    for m in KNOWN_MODELS {
        out.push_str(&format!("| `{}` | `{}` |\n", m.id, m.hf_repo));
    }

    // In the order of the description table, which follows the schema.
    let mut keys = leaf_keys(&json);
    keys.sort_by_key(|(key, _)| KEY_DOCS.iter().position(|d| d.key == key));
    let mut section = "";
    for (key, value) in &keys {
        let doc = key_doc(key).ok_or_else(|| {
            ConfigError::Invalid(format!("{key} has no entry in the configuration reference"))
        })?;
        let this_section = key.split_once('.').map_or(key.as_str(), |(s, _)| s);
        if this_section != section {
            section = this_section;
            let title = match section {
                "profile" => "General".to_string(),
                "zones" => "Zones".to_string(),
                "cameras" => "Cameras".to_string(),
                other => format!("`[{other}]`"),
            };
            out.push_str(&format!("\n## {title}\n\n{HEADER}\n"));
        }
        let vars = variables_for(&defaults, key);
        let env = if vars.is_empty() {
            "—".to_string()
        } else {
            vars.iter()
                .map(|v| match v.split_once(' ') {
                    Some((name, note)) => format!("`{name}` {note}"),
                    None => format!("`{v}`"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&row(&[
            format!("`{key}`"),
            format!("`{}`", render_value(value)),
            env,
            doc.allowed.render(),
            doc.meaning.to_string(),
        ]));
        out.push('\n');
        match key.as_str() {
            "output.debug" => out.push_str(LOGGING),
            "zones" => push_fields(
                &mut out,
                "Each zone is a `[[zones]]` table of a profile file. A person is in the zone when \
                 the bottom centre of its box lies inside the polygon.",
                &zone_fields(),
                zone_default,
            )?,
            "cameras" => push_fields(
                &mut out,
                "Each camera is a `[[cameras]]` table of a profile file; its zones are \
                 `[[cameras.zones]]` tables below it. `surveil run` serves every camera (or \
                 those `--camera NAME` picks) with its own decode and detect/track stream and \
                 one shared model; when cameras are configured, the `camera` of a top-level \
                 zone must name one of them.",
                &camera_fields(),
                camera_default,
            )?,
            _ => {}
        }
    }

    out.push_str("\n## Built-in profiles\n\nWhat each profile sets over the defaults:\n\n");
    for (name, text) in BUILTIN_PROFILES {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            ConfigError::Invalid(format!("built-in profile {name}: {}", e.message()))
        })?;
        let mut settings = Vec::new();
        for (section, fields) in &table {
            match fields.as_table() {
                Some(fields) => {
                    for (field, v) in fields {
                        settings.push(format!("`{section}.{field} = {v}`"));
                    }
                }
                None => settings.push(format!("`{section} = {fields}`")),
            }
        }
        out.push_str(&format!("- **{name}**: {}\n", settings.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::sync::OnceLock;

    fn doc_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md")
    }

    /// The document as committed; with `SURVEIL_UPDATE_DOCS=1`, first rewritten from the
    /// schema.
    fn committed_doc() -> String {
        static DOC: OnceLock<String> = OnceLock::new();
        DOC.get_or_init(|| {
            let path = doc_path();
            if std::env::var("SURVEIL_UPDATE_DOCS").is_ok_and(|v| v == "1") {
                std::fs::write(&path, reference_markdown().unwrap()).unwrap();
            }
            std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; write it with SURVEIL_UPDATE_DOCS=1 cargo test -p surveil-config \
                     --lib reference",
                    path.display()
                )
            })
        })
        .clone()
    }

    /// The cells of the table row of `key`, if the document has one.
    fn row_of(doc: &str, key: &str) -> Option<Vec<String>> {
        let start = format!("| `{key}` |");
        doc.lines().find(|l| l.starts_with(&start)).map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
    }

    #[test]
    fn every_key_is_documented_with_its_default() {
        let doc = committed_doc();
        let json = serde_json::to_value(default_config().unwrap()).unwrap();
        let keys = leaf_keys(&json);
        assert!(keys.len() > 40, "the walk found only {} keys", keys.len());
        for (key, value) in keys {
            let cells = row_of(&doc, &key)
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
            assert_eq!(
                cells[1],
                format!("`{}`", render_value(&value)),
                "documented default of `{key}`"
            );
        }
        for key in zone_fields().into_iter().chain(camera_fields()) {
            assert!(row_of(&doc, &key).is_some(), "no row for `{key}`");
        }
    }

    #[test]
    fn the_document_is_what_the_schema_generates() {
        let doc = committed_doc();
        assert!(
            doc == reference_markdown().unwrap(),
            "docs/configuration.md is stale; regenerate it with \
             SURVEIL_UPDATE_DOCS=1 cargo test -p surveil-config --lib reference"
        );
    }

    #[test]
    fn descriptions_match_the_keys() {
        let json = serde_json::to_value(default_config().unwrap()).unwrap();
        let mut keys: Vec<String> = leaf_keys(&json).into_iter().map(|(k, _)| k).collect();
        keys.extend(zone_fields());
        keys.extend(camera_fields());
        for d in KEY_DOCS {
            assert!(keys.iter().any(|k| k == d.key), "stale entry `{}`", d.key);
        }
        for k in &keys {
            assert!(key_doc(k).is_some(), "`{k}` has no description");
        }
    }

    #[test]
    fn rows_carry_env_variables_and_allowed_values() {
        let doc = reference_markdown().unwrap();
        let device = row_of(&doc, "vlm.device").unwrap();
        assert_eq!(device[1], "`\"auto\"`");
        assert_eq!(device[2], "`VLM_DEVICE`, `SURVEIL_VLM__DEVICE`");
        assert!(device[3].contains("`cuda:N`"), "{device:?}");
        let monitoring = row_of(&doc, "monitoring.enabled").unwrap();
        assert_eq!(
            monitoring[2],
            "`DISABLE_MONITORING` (negated), `SURVEIL_MONITORING__ENABLED`"
        );
        let quant = row_of(&doc, "vlm.quant").unwrap();
        assert_eq!(
            quant[3],
            "`q4k`, `q4_0`, `q8_0`, `f16`, `bf16`, `f32` (any case)"
        );
        let classes = row_of(&doc, "detection.classes").unwrap();
        assert_eq!(
            classes[1],
            "`[\"person\", \"handbag\", \"backpack\", \"suitcase\"]`"
        );
        let hours = row_of(&doc, "decision.opening_hours").unwrap();
        assert_eq!(hours[1], "`(absent)`");
        assert_eq!(hours[2], "—", "a table is set in profile files only");
        assert!(doc.contains("| `git-base-coco` | `microsoft/git-base-coco` |"));
    }
}
