//! The configuration schema: sections, fields, defaults, and validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::{PathsConfig, RawPathsConfig};
use crate::StorageDtype;

/// One model surveil knows: our id and the Hugging Face repository it is published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KnownModel {
    /// Our id (`qwen2-vl-2b-instruct`): lower case, no `/`.
    pub id: &'static str,
    /// The Hugging Face repo id (`Qwen/Qwen2-VL-2B-Instruct`), accepted wherever an id is.
    pub hf_repo: &'static str,
}

/// Every model surveil knows, with its Hugging Face repo id. The model registry in
/// `surveil-models` describes exactly these (its tests check that the pairs agree).
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: "git-base-coco",
        hf_repo: "microsoft/git-base-coco",
    },
    KnownModel {
        id: "qwen2-vl-2b-instruct",
        hf_repo: "Qwen/Qwen2-VL-2B-Instruct",
    },
    KnownModel {
        id: "qwen2-vl-7b-instruct",
        hf_repo: "Qwen/Qwen2-VL-7B-Instruct",
    },
    KnownModel {
        id: "kimi-vl-a3b-thinking",
        hf_repo: "moonshotai/Kimi-VL-A3B-Thinking",
    },
    KnownModel {
        id: "kimi-vl-a3b-thinking-2506",
        hf_repo: "moonshotai/Kimi-VL-A3B-Thinking-2506",
    },
    KnownModel {
        id: "kimi-vl-a3b-instruct",
        hf_repo: "moonshotai/Kimi-VL-A3B-Instruct",
    },
];

/// The ids of [`KNOWN_MODELS`], in the same order.
const KNOWN_MODEL_ID_ARRAY: [&str; KNOWN_MODELS.len()] = {
    let mut ids = [""; KNOWN_MODELS.len()];
    let mut i = 0;
    while i < ids.len() {
        ids[i] = KNOWN_MODELS[i].id;
        i += 1;
    }
    ids
};

/// Model ids surveil knows: the ids of [`KNOWN_MODELS`].
pub const KNOWN_MODEL_IDS: &[&str] = &KNOWN_MODEL_ID_ARRAY;

/// The canonical id of the model `name` designates: our id or the Hugging Face repo id, in any
/// letter case, surrounding whitespace ignored (`microsoft/git-base-coco`, `Git-Base-Coco` →
/// `git-base-coco`). `None` for any other text.
pub fn canonical_model_id(name: &str) -> Option<&'static str> {
    let name = name.trim();
    KNOWN_MODELS
        .iter()
        .find(|m| m.id.eq_ignore_ascii_case(name) || m.hf_repo.eq_ignore_ascii_case(name))
        .map(|m| m.id)
}

/// A configuration value chosen from a fixed list of names. Names match in any letter case
/// (`CPU`, `Cpu`, `cpu`); the canonical name is lower case, and serialization writes it.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// Every value, in the order messages and docs list them.
    const ALL: &'static [Self];
    /// The canonical names of [`Choice::ALL`], in the same order.
    const NAMES: &'static [&'static str];
    /// Other spellings accepted (any case) and the value each stands for.
    const ALIASES: &'static [(&'static str, Self)] = &[];

    /// The value `text` names (any case, surrounding whitespace ignored), if any.
    fn parse_choice(text: &str) -> Option<Self> {
        let text = text.trim();
        Self::NAMES
            .iter()
            .zip(Self::ALL)
            .chain(Self::ALIASES.iter().map(|(name, value)| (name, value)))
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, value)| *value)
    }

    /// The canonical name of this value.
    fn choice_name(self) -> &'static str {
        Self::ALL
            .iter()
            .zip(Self::NAMES)
            .find(|(value, _)| **value == self)
            .map_or("", |(_, name)| name)
    }
}

/// Deserialize a [`Choice`] from its name in any case; an unknown name is an "unknown
/// variant" error listing [`Choice::NAMES`].
pub(crate) fn deserialize_choice<'de, T: Choice, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    T::parse_choice(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, T::NAMES))
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// CUDA device 0 when compiled in and the model fits, else CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// Always this CUDA device, by ordinal (an error when it is not present).
    Cuda(usize),
}

impl Device {
    /// The forms a device is written in, for messages: `cuda` means `cuda:0`.
    pub const ALLOWED: &'static [&'static str] = &["auto", "cpu", "cuda", "cuda:N"];

    /// Parse `auto`, `cpu`, `cuda` (device 0) or `cuda:N`, in any case, optionally prefixed
    /// by `DeviceType.` (as in `DeviceType.CPU`). `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        const PREFIX: &str = "devicetype.";
        let text = match text.get(..PREFIX.len()) {
            Some(head) if head.eq_ignore_ascii_case(PREFIX) => &text[PREFIX.len()..],
            _ => text,
        };
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            other => {
                let n = other.strip_prefix("cuda:")?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().map(Device::Cuda)
            }
        }
    }

    /// How a user would write this device in a configuration, shortest form: `auto`, `cpu`,
    /// `cuda` (for `cuda:0`), `cuda:1`.
    pub fn config_value(&self) -> String {
        match self {
            Device::Cuda(0) => "cuda".to_string(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Device {
    /// The canonical form: `auto`, `cpu`, `cuda:N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// What [`Device::parse`] accepts; the error lists the devices, then `auto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Device::parse(s).ok_or_else(|| {
            format!(
                "unknown device `{s}`; allowed: cpu, cuda, cuda:N, or auto (CUDA device 0 when \
                 it has room, else the CPU)"
            )
        })
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Device::parse(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, Self::ALLOWED))
    }
}

/// Where weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WeightsSpec {
    /// The Hugging Face cache (`paths.hub_cache`), then `paths.model_dir/<id>`.
    #[default]
    Auto,
    /// Deterministic random weights with the real shapes.
    Dummy,
    /// A local directory holding `config.json` and safetensors files.
    Dir(PathBuf),
}

impl Serialize for WeightsSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WeightsSpec::Auto => s.serialize_str("auto"),
            WeightsSpec::Dummy => s.serialize_str("dummy"),
            WeightsSpec::Dir(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for WeightsSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(WeightsSpec::parse(&s))
    }
}

impl WeightsSpec {
    /// `auto` or `dummy` (any case), else a directory path (write `./Dummy` for a directory
    /// of that name).
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            t if t.eq_ignore_ascii_case("auto") => WeightsSpec::Auto,
            t if t.eq_ignore_ascii_case("dummy") => WeightsSpec::Dummy,
            other => WeightsSpec::Dir(PathBuf::from(other)),
        }
    }
}

impl std::fmt::Display for WeightsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSpec::Auto => f.write_str("auto"),
            WeightsSpec::Dummy => f.write_str("dummy"),
            WeightsSpec::Dir(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How much analysis each frame gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OrchestrationMode {
    /// Few tools, short timeouts.
    Fast,
    /// The default trade-off.
    #[default]
    Balanced,
    /// Every tool, long timeouts.
    Thorough,
}

impl Choice for OrchestrationMode {
    const ALL: &'static [Self] = &[
        OrchestrationMode::Fast,
        OrchestrationMode::Balanced,
        OrchestrationMode::Thorough,
    ];
    const NAMES: &'static [&'static str] = &["fast", "balanced", "thorough"];
}

impl<'de> Deserialize<'de> for OrchestrationMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_choice(d)
    }
}

/// Log verbosity. Ordered from the quietest to the most verbose (`Error < Warn < ... <
/// Trace`), so `a.max(b)` is the more verbose of two levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors: the level of a command that reads no configuration.
    #[default]
    Warn,
    /// Normal operation.
    Info,
    /// Diagnostic detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Name usable as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl Choice for LogLevel {
    const ALL: &'static [Self] = &[
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];
    const NAMES: &'static [&'static str] = &["error", "warn", "info", "debug", "trace"];
    /// Python's `logging` spells it `WARNING`.
    const ALIASES: &'static [(&'static str, Self)] = &[("warning", LogLevel::Warn)];
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_choice(d)
    }
}

/// The `[vlm]` section as written: the keys users set, before validation. Validation turns it
/// into a [`VlmConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawVlmConfig {
    /// Model id or Hugging Face repo id, any case.
    pub primary_model: String,
    /// Models tried in order when the primary fails to load (only with `enable_fallback`).
    pub fallback_models: Vec<String>,
    /// Whether fallback models are tried at all.
    pub enable_fallback: bool,
    /// Where the model runs.
    pub device: Device,
    /// Quantize linear weights to 4 bits while loading.
    pub load_in_4bit: bool,
    /// Storage type of linear weights: the 4-bit kind when `load_in_4bit` (q4k when this names
    /// a wider type), else the type used (bf16 when this names a 4-bit type).
    pub quant: StorageDtype,
    /// Where weights come from.
    pub weights: WeightsSpec,
    /// Generation limit per answer.
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Seed for sampling (none: fixed default seed 0).
    pub seed: Option<u64>,
    /// Threads of the CPU matmul kernels and of quantization at load (none: the physical
    /// cores this process may use).
    pub threads: Option<usize>,
}

impl Default for RawVlmConfig {
    fn default() -> Self {
        Self {
            primary_model: "kimi-vl-a3b-thinking".into(),
            fallback_models: Vec::new(),
            enable_fallback: false,
            device: Device::Auto,
            load_in_4bit: true,
            quant: StorageDtype::Q4K,
            weights: WeightsSpec::Auto,
            max_new_tokens: 512,
            temperature: 0.1,
            top_p: 0.9,
            seed: None,
            threads: None,
        }
    }
}

impl RawVlmConfig {
    /// The keys that decide `vlm.storage` ([`StorageDtype::resolve`]): `vlm.load_in_4bit` alone
    /// when it overrides `quant` (a wider type with 4-bit on, a 4-bit type with 4-bit off),
    /// `vlm.quant` alone when 4-bit is off and it names a wider type, both when they agree on a
    /// 4-bit type.
    pub fn storage_keys(&self) -> &'static [&'static str] {
        match (self.load_in_4bit, self.quant.is_four_bit()) {
            (true, false) | (false, true) => &["vlm.load_in_4bit"],
            (false, false) => &["vlm.quant"],
            (true, true) => &["vlm.load_in_4bit", "vlm.quant"],
        }
    }
}

/// The vision-language model and how it is loaded, validated: canonical model ids and one
/// resolved storage type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VlmConfig {
    /// Model id from the registry (canonical: our id, lower case).
    pub primary_model: String,
    /// Models tried in order when the primary fails to load (only with `enable_fallback`);
    /// canonical ids, none of them the primary.
    pub fallback_models: Vec<String>,
    /// Whether fallback models are tried at all.
    pub enable_fallback: bool,
    /// Where the model runs (`auto` is decided when the model loads).
    pub device: Device,
    /// The storage type linear weights get, `load_in_4bit` and `quant` folded into one
    /// ([`StorageDtype::resolve`]).
    pub storage: StorageDtype,
    /// Where weights come from.
    pub weights: WeightsSpec,
    /// Generation limit per answer, tokens (at least 1).
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy), finite and ≥ 0.
    pub temperature: f64,
    /// Nucleus sampling mass, in [0, 1].
    pub top_p: f64,
    /// Seed for sampling (none: fixed default seed 0).
    pub seed: Option<u64>,
    /// Threads of the CPU matmul kernels and of quantization at load, at least 1 (none: the
    /// physical cores this process may use).
    pub threads: Option<usize>,
}

/// A person detector `detection.model` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum Detector {
    /// YOLOv3-tiny (Darknet `.cfg` and `.weights`, COCO class names), files in the asset
    /// cache's `yolov3-tiny/` folder.
    #[default]
    #[serde(rename = "yolov3-tiny")]
    Yolov3Tiny,
}

impl Detector {
    /// The asset cache folder holding this detector's files (`scripts/setup.sh` fills it).
    pub fn asset_folder(self) -> &'static str {
        match self {
            Detector::Yolov3Tiny => "yolov3-tiny",
        }
    }
}

impl Choice for Detector {
    const ALL: &'static [Self] = &[Detector::Yolov3Tiny];
    const NAMES: &'static [&'static str] = &["yolov3-tiny"];
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.choice_name())
    }
}

impl<'de> Deserialize<'de> for Detector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_choice(d)
    }
}

/// The `[detection]` section as written. Validation turns it into a [`DetectionConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDetectionConfig {
    /// Detector name, any case (checked by validation, which names the allowed detectors).
    pub model: String,
    /// Minimum detection score.
    pub confidence: f64,
    /// IoU above which overlapping boxes of a class are suppressed.
    pub iou: f64,
    /// COCO class names kept, any case.
    pub classes: Vec<String>,
}

impl Default for RawDetectionConfig {
    fn default() -> Self {
        let d = DetectionConfig::default();
        Self {
            model: d.model.choice_name().to_string(),
            confidence: d.confidence,
            iou: d.iou,
            classes: d.classes,
        }
    }
}

/// Person (and bag) detection, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionConfig {
    /// Detector model.
    pub model: Detector,
    /// Minimum detection score, in [0, 1].
    pub confidence: f64,
    /// IoU above which overlapping boxes of a class are suppressed, in [0, 1].
    pub iou: f64,
    /// COCO class names kept, lower case (names of [`DETECTION_CLASSES`]).
    pub classes: Vec<String>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            model: Detector::Yolov3Tiny,
            confidence: 0.5,
            iou: 0.45,
            classes: ["person", "handbag", "backpack", "suitcase"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Multi-object tracking (ByteTrack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Frames a lost track is kept before removal.
    pub track_buffer: u32,
    /// IoU matching threshold (as a cost: 1 − IoU ≤ threshold).
    pub match_threshold: f64,
    /// Frames per second the lost-track buffer is scaled by (`track_buffer * frame_rate / 30`
    /// frames); absent: the source's nominal rate, 30 when the source does not report one.
    /// Fractional rates (12.5, 29.97) are allowed.
    pub frame_rate: Option<f64>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            track_buffer: 30,
            match_threshold: 0.8,
            frame_rate: None,
        }
    }
}

impl TrackerConfig {
    /// The tracker's rules: `match_threshold` within [0, 1]; `frame_rate`, when given, a finite
    /// number > 0. [`RawConfig::validate`] checks the `tracker` section with this, and
    /// `surveil-vision` checks tracker parameters built by hand with it, so both refuse the same
    /// values in the same words.
    pub fn check(&self) -> Result<(), RuleBreach> {
        within_unit_interval("tracker.match_threshold", self.match_threshold)?;
        if let Some(rate) = self.frame_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(RuleBreach {
                    key: "tracker.frame_rate",
                    value: rate.to_string(),
                    rule: "must be a finite number > 0 (frames per second), or absent (from the \
                           source)"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// A value that breaks a rule of the configuration, before the error names its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleBreach {
    /// Dotted key, e.g. `tracker.frame_rate`.
    pub key: &'static str,
    /// The value as the rule read it.
    pub value: String,
    /// The rule it breaks, e.g. `must be within [0, 1]`.
    pub rule: String,
}

impl std::fmt::Display for RuleBreach {
    /// `key = value: rule`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.rule)
    }
}

/// The rule of every fraction and probability: `x` within [0, 1] (NaN is not).
pub fn within_unit_interval(key: &'static str, x: f64) -> Result<(), RuleBreach> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(RuleBreach {
            key,
            value: x.to_string(),
            rule: "must be within [0, 1]".into(),
        })
    }
}

/// The analysis pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestrationConfig {
    /// Analysis depth.
    pub mode: OrchestrationMode,
    /// Behaviour tools running at once.
    pub max_concurrent_tools: usize,
    /// Time limit of one behaviour tool on one frame, seconds; a tool still running after it
    /// is recorded as late and the frame goes on without it.
    pub timeout_seconds: f64,
    /// Time limit of one VLM analysis (prompt to verdict), seconds.
    pub vlm_timeout_seconds: f64,
    /// Verdict confidence needed to act.
    pub confidence_threshold: f64,
    /// Minimum seconds between two VLM calls.
    pub vlm_cooldown_seconds: f64,
    /// Ask the VLM at least this often while people are present, seconds.
    pub vlm_periodic_seconds: f64,
    /// Minimum seconds before the same tool cue (tool, kind, track) may trigger the VLM again.
    pub vlm_cue_cooldown_seconds: f64,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        Self {
            mode: OrchestrationMode::Balanced,
            max_concurrent_tools: 4,
            timeout_seconds: 30.0,
            confidence_threshold: 0.7,
            vlm_timeout_seconds: 120.0,
            vlm_cooldown_seconds: 5.0,
            vlm_periodic_seconds: 30.0,
            vlm_cue_cooldown_seconds: 60.0,
        }
    }
}

/// Settings of the behaviour tools (trajectory, zones, crowding, proximity). Lengths in
/// "body lengths" are multiples of the person's box height, so they mean the same near and far
/// from the camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// How far back the per-track history reaches, seconds. Dwell times and paths are measured
    /// over this window, so every dwell limit must be below it.
    pub history_seconds: f64,
    /// Default dwell limit of a zone (seconds inside it) before a person counts as loitering.
    pub loiter_seconds: f64,
    /// More people than this in one frame is a crowd.
    pub crowd_threshold: usize,
    /// A bag is near a person when the gap between their boxes is at most this fraction of the
    /// person's box height.
    pub proximity_margin: f64,
    /// Speed is measured over the last this many seconds of a track.
    pub speed_window_seconds: f64,
    /// Heading changes of at least this angle count as a direction change, degrees in (0, 180].
    pub turn_angle_degrees: f64,
    /// Headings are taken between path points at least this far apart, body lengths (filters
    /// box jitter).
    pub heading_step_body_lengths: f64,
    /// This many direction changes within the history make a path erratic.
    pub erratic_turns: usize,
    /// A person who stays within this radius is stationary, body lengths.
    pub stop_radius_body_lengths: f64,
    /// Shortest stationary spell that counts as a stop, seconds.
    pub stop_seconds: f64,
    /// A path ends "back at the start" within this radius of its first point, body lengths.
    pub return_radius_body_lengths: f64,
    /// ... after having gone at least this far away from it, body lengths.
    pub return_excursion_body_lengths: f64,
    /// A bag must have been near a person this long before its disappearance is a concealment
    /// cue, seconds.
    pub bag_association_seconds: f64,
    /// A bag must have been gone this long (longer than detector flicker) before its
    /// disappearance is reported, seconds.
    pub bag_gone_seconds: f64,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            history_seconds: 60.0,
            loiter_seconds: 30.0,
            crowd_threshold: 5,
            proximity_margin: 0.25,
            speed_window_seconds: 1.0,
            turn_angle_degrees: 120.0,
            heading_step_body_lengths: 0.5,
            erratic_turns: 3,
            stop_radius_body_lengths: 0.2,
            stop_seconds: 3.0,
            return_radius_body_lengths: 1.0,
            return_excursion_body_lengths: 3.0,
            bag_association_seconds: 1.0,
            bag_gone_seconds: 1.0,
        }
    }
}

/// How a zone's polygon coordinates are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZoneCoordinates {
    /// Pixels of the camera's frame.
    #[default]
    Pixel,
    /// Fractions of the frame width and height, each in [0, 1].
    Normalized,
}

impl Choice for ZoneCoordinates {
    const ALL: &'static [Self] = &[ZoneCoordinates::Pixel, ZoneCoordinates::Normalized];
    const NAMES: &'static [&'static str] = &["pixel", "normalized"];
}

impl<'de> Deserialize<'de> for ZoneCoordinates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_choice(d)
    }
}

/// A named area of a camera's view (`[[zones]]`). A person is in the zone when the bottom
/// centre of its box (the feet point) lies inside the polygon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Unique name.
    pub name: String,
    /// The camera it belongs to; `None`: every camera.
    #[serde(default)]
    pub camera: Option<String>,
    /// Corners `[x, y]` in order, at least three (the polygon closes itself).
    pub polygon: Vec<[f64; 2]>,
    /// Pixel or normalized coordinates.
    #[serde(default)]
    pub coordinates: ZoneCoordinates,
    /// Staff-only or otherwise restricted: presence is notable, loitering suspicious.
    #[serde(default)]
    pub restricted: bool,
    /// Dwell limit of this zone, seconds; `None`: `tools.loiter_seconds`.
    #[serde(default)]
    pub max_dwell_seconds: Option<f64>,
}

/// A local time of day, minute precision, written `"HH:MM"` (24-hour clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockTime {
    hour: u8,
    minute: u8,
}

impl ClockTime {
    /// 00:00.
    pub const MIDNIGHT: ClockTime = ClockTime { hour: 0, minute: 0 };

    /// `hour` in 0..24, `minute` in 0..60; `None` otherwise.
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }

    /// Parse `"HH:MM"` (one or two hour digits, two minute digits).
    pub fn parse(text: &str) -> Option<Self> {
        let (h, m) = text.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Self::new(h.parse().ok()?, m.parse().ok()?)
    }

    /// Hour, 0..24.
    pub fn hour(self) -> u8 {
        self.hour
    }

    /// Minute, 0..60.
    pub fn minute(self) -> u8 {
        self.minute
    }

    /// Minutes since midnight, 0..1440.
    pub fn minutes_since_midnight(self) -> u16 {
        u16::from(self.hour) * 60 + u16::from(self.minute)
    }
}

impl std::fmt::Display for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClockTime::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a time of day; expected \"HH:MM\" from 00:00 to 23:59"
            ))
        })
    }
}

/// When the premises are open (local time): from `open` (included) to `close` (excluded).
/// `close` earlier than `open` means the opening spans midnight (e.g. 18:00 to 02:00);
/// `close == open` means open around the clock (the configuration refuses it in
/// `decision.opening_hours`, where leaving the key out says the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningHours {
    /// Opening time (inclusive).
    pub open: ClockTime,
    /// Closing time (exclusive).
    pub close: ClockTime,
}

impl OpeningHours {
    /// Reads `OpeningHours::parse("08:00", "21:00")`.
    ///
    /// # Errors
    /// [`crate::ConfigError::Invalid`] naming which time (`open` or `close`) and the text when it is
    /// not `HH:MM` from 00:00 to 23:59.
    pub fn parse(open: &str, close: &str) -> Result<Self, crate::ConfigError> {
        let time = |which: &str, text: &str| {
            ClockTime::parse(text).ok_or_else(|| {
                crate::ConfigError::Invalid(format!(
                    "opening hours, {which}: `{text}` is not a time of day (expected HH:MM, \
                     00:00 to 23:59)"
                ))
            })
        };
        Ok(Self {
            open: time("open", open)?,
            close: time("close", close)?,
        })
    }

    /// Whether the premises are open at `t`: `open <= t < close`, wrapping past midnight
    /// when `close < open`; always when `close == open`.
    pub fn is_open(&self, t: ClockTime) -> bool {
        match self.open.cmp(&self.close) {
            std::cmp::Ordering::Less => self.open <= t && t < self.close,
            std::cmp::Ordering::Greater => t >= self.open || t < self.close,
            std::cmp::Ordering::Equal => true,
        }
    }
}

/// Settings of the decision engine (alert levels from verdicts and cues).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Opening hours; `None`: always open (no after-hours rule).
    pub opening_hours: Option<OpeningHours>,
    /// Raise the alert level of anything seen outside the opening hours.
    pub after_hours_escalation: bool,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            opening_hours: None,
            after_hours_escalation: true,
        }
    }
}

/// Longest camera name: it becomes an MQTT topic level and part of file names.
pub const CAMERA_NAME_MAX_LEN: usize = 64;

/// Whether `name` can name a camera: 1 to [`CAMERA_NAME_MAX_LEN`] characters, each an ASCII
/// letter, digit, `_` or `-` (safe as an MQTT topic level and in a file name).
pub fn is_valid_camera_name(name: &str) -> bool {
    (1..=CAMERA_NAME_MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One camera of `surveil run` (`[[cameras]]`): its name, its source and how that source is
/// decoded, and what applies to it alone (inline zones, opening hours). A run serves every
/// configured camera (or those `--camera` picks) with one decode + detect/track stream each and
/// one shared model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique name, 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_`, `-` ([`is_valid_camera_name`]):
    /// recorded in events and summaries, an MQTT topic level, part of alert frame file names.
    pub name: String,
    /// Video file, rtsp:// or http(s):// URL, image folder, or image (not empty).
    pub source: String,
    /// Resample to this frame rate, frames per second, > 0 (ffmpeg sources); `None`: every
    /// decoded frame at its own time.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Scale frames to this width, pixels, > 0 (ffmpeg sources); with only one of width and
    /// height the other keeps the aspect ratio.
    #[serde(default)]
    pub width: Option<u32>,
    /// Scale frames to this height, pixels, > 0 (ffmpeg sources).
    #[serde(default)]
    pub height: Option<u32>,
    /// Zones of this camera alone (`[[cameras.zones]]`), checked like `[[zones]]`; their
    /// `camera` is left out when written and set to this camera's name by validation. They
    /// apply together with the top-level zones of this camera and of every camera.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    /// Opening hours of this camera's premises, overriding `decision.opening_hours` for it;
    /// `None`: `decision.opening_hours`.
    #[serde(default)]
    pub opening_hours: Option<OpeningHours>,
}

/// Background memory monitoring and the Prometheus metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Whether the sampler runs.
    pub enabled: bool,
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// Where `surveil run` serves Prometheus metrics (`GET /metrics`), as `IP:PORT`
    /// (`127.0.0.1:9464`, `[::1]:9464`; port 0 picks a free port); `None`: no endpoint.
    /// Independent of `enabled`, which is about the memory sampler.
    #[serde(deserialize_with = "deserialize_socket_addr")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 1.0,
            metrics_addr: None,
        }
    }
}

/// An optional `IP:PORT` socket address written as text, with an error that shows the form
/// expected (host names are not resolved: the address is bound as written).
fn deserialize_socket_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| {
        t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{t}` is not an IP:PORT address (e.g. 127.0.0.1:9464, [::1]:9464, \
                 0.0.0.0:9464)"
            ))
        })
    })
    .transpose()
}

/// Where results and logs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Directory for events and summaries.
    pub directory: PathBuf,
    /// Log verbosity of surveil's own crates (see [`OutputConfig::effective_log_level`]).
    pub log_level: LogLevel,
    /// Extra diagnostics: surveil's own crates log at `debug` at least.
    pub debug: bool,
}

impl OutputConfig {
    /// The level surveil's own crates log at under this section: `log_level`, raised to
    /// [`LogLevel::Debug`] when `debug` is on and `log_level` is quieter. A loaded
    /// configuration also knows which layer set each key:
    /// [`LoadedConfig::log_level`](crate::LoadedConfig::log_level) lets a `log_level` set by a
    /// later layer than `debug` win. Command-line flags and `SURVEIL_LOG` override both; that
    /// choice belongs to the program, not to this crate.
    ///
    /// ```
    /// use surveil_config::{LogLevel, OutputConfig};
    ///
    /// let mut output = OutputConfig { log_level: LogLevel::Warn, ..OutputConfig::default() };
    /// assert_eq!(output.effective_log_level(), LogLevel::Warn);
    /// output.debug = true;
    /// assert_eq!(output.effective_log_level(), LogLevel::Debug);
    /// output.log_level = LogLevel::Trace;
    /// assert_eq!(output.effective_log_level(), LogLevel::Trace);
    /// ```
    pub fn effective_log_level(&self) -> LogLevel {
        if self.debug {
            self.log_level.max(LogLevel::Debug)
        } else {
            self.log_level
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("output"),
            log_level: LogLevel::default(),
            debug: false,
        }
    }
}

/// Publishing to an MQTT broker (`[mqtt]`): every event, alerts (retained), periodic health
/// and the process's availability. Credentials are never stored here: `password_env` and
/// `password_file` say where the password is, and it is read when the connection is set up,
/// so `surveil config show`, errors and summaries can never print it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Whether `surveil run` publishes to the broker.
    pub enabled: bool,
    /// Broker host name or IP address.
    pub host: String,
    /// Broker TCP port (1883 plain, 8883 the usual TLS port).
    pub port: u16,
    /// MQTT client id; absent: `surveil-<hostname>-<pid>`, unique per process.
    pub client_id: Option<String>,
    /// First level(s) of every topic (`surveil`, or `site-a/surveil`).
    pub topic_prefix: String,
    /// This process's name in the node topics (`<prefix>/node/<node_id>/stats` and
    /// `.../available`); absent: the host name. Give each process its own when several run on
    /// one host.
    pub node_id: Option<String>,
    /// User name; absent: anonymous.
    pub username: Option<String>,
    /// Name of the environment variable holding the password (needs `username`).
    pub password_env: Option<String>,
    /// File holding the password, its first line (needs `username`).
    pub password_file: Option<PathBuf>,
    /// Connect with TLS (rustls).
    pub tls: bool,
    /// PEM file of the certificate authorities that sign the broker's certificate (needs
    /// `tls`); absent: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Seconds between keep-alive pings when nothing else is sent (MQTT keep alive).
    pub keep_alive_seconds: u16,
    /// Messages held in memory while the broker is slow or unreachable; beyond that, new
    /// messages are dropped and counted.
    pub buffer_messages: usize,
    /// QoS of `<prefix>/<camera>/events` messages: 0 (at most once), 1 (at least once) or 2
    /// (exactly once). Alerts are always QoS 1.
    pub events_qos: u8,
    /// Seconds between two messages on `<prefix>/node/<node_id>/stats`.
    pub stats_interval_seconds: f64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "localhost".into(),
            port: 1883,
            client_id: None,
            topic_prefix: "surveil".into(),
            node_id: None,
            username: None,
            password_env: None,
            password_file: None,
            tls: false,
            ca_file: None,
            keep_alive_seconds: 30,
            buffer_messages: 10_000,
            events_qos: 0,
            stats_interval_seconds: 10.0,
        }
    }
}

/// Whether `level` can be one level of an MQTT topic name: not empty, no `/`, no wildcard
/// (`+`, `#`), no NUL.
fn is_topic_level(level: &str) -> bool {
    !level.is_empty() && !level.contains(['/', '+', '#', '\0'])
}

impl MqttConfig {
    /// Largest `buffer_messages`.
    pub const MAX_BUFFER_MESSAGES: usize = 1_000_000;

    /// Range and consistency checks; `rule(key, value, rule)` builds the error.
    fn validate(
        &self,
        rule: &impl Fn(&str, String, String) -> crate::ConfigError,
    ) -> Result<(), crate::ConfigError> {
        let text = |s: &str| format!("{s:?}");
        if self.host.trim().is_empty() || self.host.contains(char::is_whitespace) {
            return Err(rule(
                "mqtt.host",
                text(&self.host),
                "must be a host name or IP address, without spaces".into(),
            ));
        }
        if self.port == 0 {
            return Err(rule(
                "mqtt.port",
                "0".into(),
                "must be a TCP port in [1, 65535]".into(),
            ));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(rule(
                    "mqtt.client_id",
                    text(id),
                    "must be 1 to 256 bytes without control characters, or absent \
                     (surveil-<hostname>-<pid>)"
                        .into(),
                ));
            }
        }
        let prefix = &self.topic_prefix;
        if !prefix.split('/').all(is_topic_level) {
            return Err(rule(
                "mqtt.topic_prefix",
                text(prefix),
                "must be one or more topic levels separated by `/` (`surveil`, \
                 `site-a/surveil`): no empty level, no leading or trailing `/`, no `+` or `#`"
                    .into(),
            ));
        }
        if let Some(node) = &self.node_id {
            if !is_topic_level(node) {
                return Err(rule(
                    "mqtt.node_id",
                    text(node),
                    "must be one topic level: not empty, no `/`, `+` or `#` (or absent: the \
                     host name)"
                        .into(),
                ));
            }
        }
        if let Some(user) = &self.username {
            if user.is_empty() {
                return Err(rule(
                    "mqtt.username",
                    text(user),
                    "must not be empty (leave it out to connect anonymously)".into(),
                ));
            }
        }
        if let (Some(_), Some(_)) = (&self.password_env, &self.password_file) {
            return Err(rule(
                "mqtt.password_file",
                text(&self.password_file_text()),
                "give the password in one place: mqtt.password_env or mqtt.password_file, not \
                 both"
                    .into(),
            ));
        }
        if let Some(var) = &self.password_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                return Err(rule(
                    "mqtt.password_env",
                    text(var),
                    "must be the name of an environment variable".into(),
                ));
            }
        }
        for (key, set) in [
            ("mqtt.password_env", self.password_env.is_some()),
            ("mqtt.password_file", self.password_file.is_some()),
        ] {
            if set && self.username.is_none() {
                let value = if key == "mqtt.password_env" {
                    text(self.password_env.as_deref().unwrap_or_default())
                } else {
                    text(&self.password_file_text())
                };
                return Err(rule(
                    key,
                    value,
                    "a password needs mqtt.username (MQTT sends no password without a user \
                     name)"
                        .into(),
                ));
            }
        }
        if let Some(ca) = &self.ca_file {
            if !self.tls {
                return Err(rule(
                    "mqtt.ca_file",
                    text(&ca.to_string_lossy()),
                    "needs mqtt.tls = true".into(),
                ));
            }
        }
        if self.keep_alive_seconds == 0 {
            return Err(rule(
                "mqtt.keep_alive_seconds",
                "0".into(),
                "must be within [1, 65535] seconds".into(),
            ));
        }
        if !(1..=Self::MAX_BUFFER_MESSAGES).contains(&self.buffer_messages) {
            return Err(rule(
                "mqtt.buffer_messages",
                self.buffer_messages.to_string(),
                format!("must be within [1, {}]", Self::MAX_BUFFER_MESSAGES),
            ));
        }
        if self.events_qos > 2 {
            return Err(rule(
                "mqtt.events_qos",
                self.events_qos.to_string(),
                "must be 0, 1 or 2".into(),
            ));
        }
        let interval = self.stats_interval_seconds;
        if !(interval > 0.0 && std::time::Duration::try_from_secs_f64(interval).is_ok()) {
            return Err(rule(
                "mqtt.stats_interval_seconds",
                interval.to_string(),
                "must be a finite number > 0 of seconds, at most 1.8e19".into(),
            ));
        }
        Ok(())
    }

    fn password_file_text(&self) -> String {
        self.password_file
            .as_deref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The configuration as merged, before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// VLM section.
    pub vlm: RawVlmConfig,
    /// Detection section.
    pub detection: RawDetectionConfig,
    /// Tracker section.
    pub tracker: TrackerConfig,
    /// Orchestration section.
    pub orchestration: OrchestrationConfig,
    /// Monitoring section.
    pub monitoring: MonitoringConfig,
    /// Output section.
    pub output: OutputConfig,
    /// Paths section (absent paths: their defaults under the home directory).
    pub paths: RawPathsConfig,
    /// Behaviour tools section.
    pub tools: ToolsConfig,
    /// Decision engine section.
    pub decision: DecisionConfig,
    /// Zones (`[[zones]]`), in the order written.
    pub zones: Vec<ZoneConfig>,
    /// MQTT section.
    pub mqtt: MqttConfig,
    /// Cameras (`[[cameras]]`), in the order written; none by default.
    pub cameras: Vec<CameraConfig>,
}

/// A validated configuration: values resolved once (canonical names, one storage type, enums,
/// paths), so code holding one never re-checks, combines keys or reads the environment. Only
/// [`RawConfig::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemConfig {
    /// Name of the profile it was built from.
    pub profile: String,
    /// VLM section.
    pub vlm: VlmConfig,
    /// Detection section.
    pub detection: DetectionConfig,
    /// Tracker section.
    pub tracker: TrackerConfig,
    /// Orchestration section.
    pub orchestration: OrchestrationConfig,
    /// Monitoring section.
    pub monitoring: MonitoringConfig,
    /// Output section.
    pub output: OutputConfig,
    /// Where the Hugging Face cache, local checkpoints and the asset cache are.
    pub paths: PathsConfig,
    /// Behaviour tools section.
    pub tools: ToolsConfig,
    /// Decision engine section.
    pub decision: DecisionConfig,
    /// Zones, names unique, polygons checked (coordinates still as written: normalized ones
    /// are scaled by the frame size where the frame is known). When cameras are configured,
    /// each zone's `camera` names one of them (or is absent: every camera).
    pub zones: Vec<ZoneConfig>,
    /// MQTT section.
    pub mqtt: MqttConfig,
    /// Cameras, in the order written: names unique and valid, sources not empty, inline zones
    /// checked and tagged with their camera's name, opening hours checked.
    pub cameras: Vec<CameraConfig>,
}

impl SystemConfig {
    /// The configured camera named `name`, if any.
    pub fn camera(&self, name: &str) -> Option<&CameraConfig> {
        self.cameras.iter().find(|c| c.name == name)
    }
}

/// The entry of `names` equal to `text` in any letter case (surrounding whitespace ignored).
fn canonical_name(names: &[&'static str], text: &str) -> Option<&'static str> {
    let text = text.trim();
    names
        .iter()
        .find(|name| name.eq_ignore_ascii_case(text))
        .copied()
}

/// COCO class names the detector can keep.
pub const DETECTION_CLASSES: &[&str] = &[
    "person",
    "bicycle",
    "car",
    "motorbike",
    "bus",
    "truck",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "bottle",
    "cell phone",
    "laptop",
    "book",
    "knife",
    "scissors",
];

impl RawConfig {
    /// Check every rule and resolve every value; `origin(key)` says where a key's value came
    /// from (for messages). Absent paths get their defaults under `$HOME` of this process
    /// ([`RawConfig::validate_with_home`] takes the home directory from elsewhere).
    ///
    /// Errors: [`crate::ConfigError::Rule`] naming the key, the value, its origin and the rule.
    pub fn validate(
        self,
        profile: &str,
        origin: impl Fn(&str) -> String,
    ) -> Result<SystemConfig, crate::ConfigError> {
        let home = crate::paths::home_dir(|name| std::env::var(name).ok());
        self.validate_with_home(profile, &home, origin)
    }

    /// [`RawConfig::validate`] with absent paths resolved under `home` (the loader passes the
    /// `HOME` of the variables it reads).
    pub fn validate_with_home(
        mut self,
        profile: &str,
        home: &Path,
        origin: impl Fn(&str) -> String,
    ) -> Result<SystemConfig, crate::ConfigError> {
        let rule = |key: &str, value: String, rule: String| crate::ConfigError::Rule {
            key: key.to_string(),
            value,
            origin: origin(key),
            rule,
        };
        let unknown_model = || {
            let known: Vec<String> = KNOWN_MODELS
                .iter()
                .map(|m| format!("{} ({})", m.id, m.hf_repo))
                .collect();
            format!(
                "unknown model id; known ids (or their Hugging Face repo ids, any case): {}",
                known.join(", ")
            )
        };
        // Ids are stored canonical: code after validation compares them as written here.
        self.vlm.primary_model = canonical_model_id(&self.vlm.primary_model)
            .ok_or_else(|| {
                rule(
                    "vlm.primary_model",
                    format!("{:?}", self.vlm.primary_model),
                    unknown_model(),
                )
            })?
            .to_string();
        let mut fallbacks = Vec::with_capacity(self.vlm.fallback_models.len());
        for m in &self.vlm.fallback_models {
            let id = canonical_model_id(m)
                .ok_or_else(|| rule("vlm.fallback_models", format!("{m:?}"), unknown_model()))?;
            if id == self.vlm.primary_model {
                return Err(rule(
                    "vlm.fallback_models",
                    format!("{:?}", self.vlm.fallback_models),
                    format!("contains the primary model `{id}`; a fallback must be another model"),
                ));
            }
            fallbacks.push(id.to_string());
        }
        self.vlm.fallback_models = fallbacks;
        let v = &self.vlm;
        let storage = StorageDtype::resolve(v.load_in_4bit, v.quant);
        if v.threads == Some(0) {
            return Err(rule(
                "vlm.threads",
                "0".into(),
                "must be at least 1 (leave it out for one thread per physical core)".into(),
            ));
        }
        if v.max_new_tokens == 0 {
            return Err(rule(
                "vlm.max_new_tokens",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        if !(v.temperature >= 0.0 && v.temperature.is_finite()) {
            return Err(rule(
                "vlm.temperature",
                v.temperature.to_string(),
                "must be a finite number ≥ 0".into(),
            ));
        }
        let breach = |b: RuleBreach| rule(b.key, b.value, b.rule);
        let unit = |key: &'static str, x: f64| within_unit_interval(key, x).map_err(breach);
        unit("vlm.top_p", v.top_p)?;
        unit("detection.confidence", self.detection.confidence)?;
        unit("detection.iou", self.detection.iou)?;
        unit(
            "orchestration.confidence_threshold",
            self.orchestration.confidence_threshold,
        )?;
        let mut classes = Vec::with_capacity(self.detection.classes.len());
        for c in &self.detection.classes {
            let class = canonical_name(DETECTION_CLASSES, c).ok_or_else(|| {
                rule(
                    "detection.classes",
                    format!("{c:?}"),
                    format!("unknown class; allowed: {}", DETECTION_CLASSES.join(", ")),
                )
            })?;
            classes.push(class.to_string());
        }
        let model = Detector::parse_choice(&self.detection.model).ok_or_else(|| {
            rule(
                "detection.model",
                format!("{:?}", self.detection.model),
                format!("unknown detector; allowed: {}", Detector::NAMES.join(", ")),
            )
        })?;
        let detection = DetectionConfig {
            model,
            confidence: self.detection.confidence,
            iou: self.detection.iou,
            classes,
        };
        self.tracker.check().map_err(breach)?;
        let o = &self.orchestration;
        if o.max_concurrent_tools < 1 {
            return Err(rule(
                "orchestration.max_concurrent_tools",
                o.max_concurrent_tools.to_string(),
                "must be at least 1".into(),
            ));
        }
        // Seconds must also fit a `Duration` (at most about 1.8e19 s): the pipeline converts
        // them without re-checking.
        let seconds = |x: f64| std::time::Duration::try_from_secs_f64(x).is_ok();
        let positive = |key: &str, x: f64| {
            if x > 0.0 && seconds(x) {
                Ok(())
            } else {
                Err(rule(
                    key,
                    x.to_string(),
                    "must be a finite number > 0 of seconds, at most 1.8e19".into(),
                ))
            }
        };
        positive("orchestration.timeout_seconds", o.timeout_seconds)?;
        positive(
            "monitoring.interval_seconds",
            self.monitoring.interval_seconds,
        )?;
        if !seconds(o.vlm_cooldown_seconds) {
            return Err(rule(
                "orchestration.vlm_cooldown_seconds",
                o.vlm_cooldown_seconds.to_string(),
                "must be a finite number ≥ 0 of seconds, at most 1.8e19".into(),
            ));
        }
        positive("orchestration.vlm_periodic_seconds", o.vlm_periodic_seconds)?;
        positive("orchestration.vlm_timeout_seconds", o.vlm_timeout_seconds)?;
        if !seconds(o.vlm_cue_cooldown_seconds) {
            return Err(rule(
                "orchestration.vlm_cue_cooldown_seconds",
                o.vlm_cue_cooldown_seconds.to_string(),
                "must be a finite number ≥ 0 of seconds, at most 1.8e19".into(),
            ));
        }
        self.tools.validate(&rule)?;
        if let Some(h) = &self.decision.opening_hours {
            if h.open == h.close {
                return Err(rule(
                    "decision.opening_hours",
                    format!("{{ open = \"{}\", close = \"{}\" }}", h.open, h.close),
                    "open and close must differ (leave opening_hours out for always open)".into(),
                ));
            }
        }
        validate_zones(&self.zones, &self.tools, &origin("zones"))?;
        self.mqtt.validate(&rule)?;
        validate_cameras(
            &mut self.cameras,
            &self.zones,
            &self.tools,
            &origin("cameras"),
            &origin("zones"),
        )?;
        let paths = self.paths.resolve(home, &rule)?;
        let v = self.vlm;
        Ok(SystemConfig {
            profile: profile.to_string(),
            vlm: VlmConfig {
                primary_model: v.primary_model,
                fallback_models: v.fallback_models,
                enable_fallback: v.enable_fallback,
                device: v.device,
                storage,
                weights: v.weights,
                max_new_tokens: v.max_new_tokens,
                temperature: v.temperature,
                top_p: v.top_p,
                seed: v.seed,
                threads: v.threads,
            },
            detection,
            tracker: self.tracker,
            orchestration: self.orchestration,
            monitoring: self.monitoring,
            output: self.output,
            paths,
            tools: self.tools,
            decision: self.decision,
            zones: self.zones,
            mqtt: self.mqtt,
            cameras: self.cameras,
        })
    }
}

impl ToolsConfig {
    /// Range checks of every field; `rule(key, value, rule)` builds the error.
    fn validate(
        &self,
        rule: &impl Fn(&str, String, String) -> crate::ConfigError,
    ) -> Result<(), crate::ConfigError> {
        let history = self.history_seconds;
        let in_range = |field: &str, x: f64, lo: f64, lo_open: bool, hi: f64| {
            let above = if lo_open { x > lo } else { x >= lo };
            if x.is_finite() && above && x <= hi {
                Ok(())
            } else {
                let bracket = if lo_open { '(' } else { '[' };
                let mut text = format!("must be within {bracket}{lo}, {hi}]");
                if hi == history && field != "history_seconds" {
                    text.push_str(
                        " (at most tools.history_seconds: it is measured over the history)",
                    );
                }
                if field == "return_excursion_body_lengths" {
                    text.push_str(" (more than tools.return_radius_body_lengths)");
                }
                Err(rule(&format!("tools.{field}"), x.to_string(), text))
            }
        };
        in_range("history_seconds", self.history_seconds, 0.0, true, 3600.0)?;
        in_range(
            "loiter_seconds",
            self.loiter_seconds,
            0.0,
            true,
            self.history_seconds,
        )?;
        in_range("proximity_margin", self.proximity_margin, 0.0, false, 5.0)?;
        in_range(
            "speed_window_seconds",
            self.speed_window_seconds,
            0.0,
            true,
            self.history_seconds,
        )?;
        in_range(
            "turn_angle_degrees",
            self.turn_angle_degrees,
            0.0,
            true,
            180.0,
        )?;
        in_range(
            "heading_step_body_lengths",
            self.heading_step_body_lengths,
            0.0,
            true,
            10.0,
        )?;
        in_range(
            "stop_radius_body_lengths",
            self.stop_radius_body_lengths,
            0.0,
            true,
            10.0,
        )?;
        in_range(
            "stop_seconds",
            self.stop_seconds,
            0.0,
            true,
            self.history_seconds,
        )?;
        in_range(
            "return_radius_body_lengths",
            self.return_radius_body_lengths,
            0.0,
            true,
            100.0,
        )?;
        in_range(
            "return_excursion_body_lengths",
            self.return_excursion_body_lengths,
            self.return_radius_body_lengths,
            true,
            1000.0,
        )?;
        in_range(
            "bag_association_seconds",
            self.bag_association_seconds,
            0.0,
            false,
            self.history_seconds,
        )?;
        in_range(
            "bag_gone_seconds",
            self.bag_gone_seconds,
            0.0,
            false,
            self.history_seconds,
        )?;
        let at_least_one = |field: &str, n: usize| {
            if n >= 1 {
                Ok(())
            } else {
                Err(rule(
                    &format!("tools.{field}"),
                    n.to_string(),
                    "must be at least 1".into(),
                ))
            }
        };
        at_least_one("crowd_threshold", self.crowd_threshold)?;
        at_least_one("erratic_turns", self.erratic_turns)?;
        Ok(())
    }
}

/// Twice the signed area of a polygon (shoelace formula); 0 for a degenerate one.
fn doubled_area(polygon: &[[f64; 2]]) -> f64 {
    let n = polygon.len();
    (0..n)
        .map(|i| {
            let [x0, y0] = polygon[i];
            let [x1, y1] = polygon[(i + 1) % n];
            x0 * y1 - x1 * y0
        })
        .sum()
}

/// Check the `[[zones]]` list: unique non-empty names, polygons of at least three finite
/// corners with a non-zero area, normalized corners in [0, 1], dwell limits in
/// (0, `tools.history_seconds`].
fn validate_zones(
    zones: &[ZoneConfig],
    tools: &ToolsConfig,
    origin: &str,
) -> Result<(), crate::ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    check_zone_list(zones, "zones", tools, origin, &mut names)
}

/// The rules of a list of zones whose keys read `<prefix>[i].<field>`; `names` holds the zone
/// names already taken (each zone's name is added).
fn check_zone_list<'z>(
    zones: &'z [ZoneConfig],
    prefix: &str,
    tools: &ToolsConfig,
    origin: &str,
    names: &mut std::collections::BTreeSet<&'z str>,
) -> Result<(), crate::ConfigError> {
    let rule = |key: String, value: String, rule: String| crate::ConfigError::Rule {
        key,
        value,
        origin: origin.to_string(),
        rule,
    };
    for (i, z) in zones.iter().enumerate() {
        let key = |field: &str| format!("{prefix}[{i}].{field}");
        let what = format!("zone `{}`", z.name);
        if z.name.trim().is_empty() {
            return Err(rule(
                key("name"),
                format!("{:?}", z.name),
                "must not be empty".into(),
            ));
        }
        if !names.insert(z.name.as_str()) {
            return Err(rule(
                key("name"),
                format!("{:?}", z.name),
                "zone names must be unique; this one is used twice".into(),
            ));
        }
        if let Some(c) = &z.camera {
            if c.trim().is_empty() {
                return Err(rule(
                    key("camera"),
                    format!("{c:?}"),
                    format!("{what}: leave camera out to apply the zone to every camera"),
                ));
            }
        }
        let shown = || format!("{:?}", z.polygon);
        if z.polygon.len() < 3 {
            return Err(rule(
                key("polygon"),
                shown(),
                format!("{what}: needs at least 3 points [x, y]"),
            ));
        }
        if z.polygon.iter().flatten().any(|v| !v.is_finite()) {
            return Err(rule(
                key("polygon"),
                shown(),
                format!("{what}: every coordinate must be a finite number"),
            ));
        }
        if z.coordinates == ZoneCoordinates::Normalized
            && z.polygon.iter().flatten().any(|v| !(0.0..=1.0).contains(v))
        {
            return Err(rule(
                key("polygon"),
                shown(),
                format!("{what}: normalized coordinates must be within [0, 1]"),
            ));
        }
        if doubled_area(&z.polygon).abs() <= f64::EPSILON {
            return Err(rule(
                key("polygon"),
                shown(),
                format!("{what}: the polygon has no area (its points lie on one line)"),
            ));
        }
        if let Some(d) = z.max_dwell_seconds {
            if !(d > 0.0 && d <= tools.history_seconds) {
                return Err(rule(
                    key("max_dwell_seconds"),
                    d.to_string(),
                    format!(
                        "{what}: must be within (0, {}] (dwell is measured over \
                         tools.history_seconds)",
                        tools.history_seconds
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Check the `[[cameras]]` list: names valid and unique, sources not empty, frame rate and
/// size > 0, inline zones by the zone rules (names unique among the top-level zones and the
/// camera's own, no other camera), opening hours whose open and close differ; and, when
/// cameras are configured, that every top-level zone's `camera` names one of them. Inline zones
/// get their camera's name.
fn validate_cameras(
    cameras: &mut [CameraConfig],
    zones: &[ZoneConfig],
    tools: &ToolsConfig,
    origin: &str,
    zones_origin: &str,
) -> Result<(), crate::ConfigError> {
    let rule = |key: String, value: String, rule: String| crate::ConfigError::Rule {
        key,
        value,
        origin: origin.to_string(),
        rule,
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in cameras.iter().enumerate() {
        let key = |field: &str| format!("cameras[{i}].{field}");
        if !is_valid_camera_name(&c.name) {
            return Err(rule(
                key("name"),
                format!("{:?}", c.name),
                format!(
                    "must be 1 to {CAMERA_NAME_MAX_LEN} characters of A-Z, a-z, 0-9, `_`, `-` \
                     (it becomes an MQTT topic level and part of file names)"
                ),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(rule(
                key("name"),
                format!("{:?}", c.name),
                "camera names must be unique; this one is used twice".into(),
            ));
        }
        let what = format!("camera `{}`", c.name);
        if c.source.trim().is_empty() {
            return Err(rule(
                key("source"),
                format!("{:?}", c.source),
                format!("{what}: must not be empty (a video file, URL, image folder or image)"),
            ));
        }
        if let Some(fps) = c.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(rule(
                    key("fps"),
                    fps.to_string(),
                    format!("{what}: must be a finite number > 0 (frames per second), or absent"),
                ));
            }
        }
        for (field, value) in [("width", c.width), ("height", c.height)] {
            if value == Some(0) {
                return Err(rule(
                    key(field),
                    "0".into(),
                    format!("{what}: must be > 0 (pixels), or absent"),
                ));
            }
        }
        if let Some(h) = &c.opening_hours {
            if h.open == h.close {
                return Err(rule(
                    key("opening_hours"),
                    format!("{{ open = \"{}\", close = \"{}\" }}", h.open, h.close),
                    "open and close must differ (leave opening_hours out for \
                     decision.opening_hours)"
                        .into(),
                ));
            }
        }
        let mut zone_names: std::collections::BTreeSet<&str> =
            zones.iter().map(|z| z.name.as_str()).collect();
        let prefix = format!("cameras[{i}].zones");
        for (j, z) in c.zones.iter().enumerate() {
            if z.camera.as_ref().is_some_and(|other| *other != c.name) {
                return Err(rule(
                    format!("{prefix}[{j}].camera"),
                    format!("{:?}", z.camera.as_deref().unwrap_or_default()),
                    format!(
                        "{what}: a zone of a camera belongs to that camera; leave camera out \
                         (or move the zone to [[zones]])"
                    ),
                ));
            }
        }
        check_zone_list(&c.zones, &prefix, tools, origin, &mut zone_names)?;
    }
    if !cameras.is_empty() {
        for (i, z) in zones.iter().enumerate() {
            if let Some(camera) = &z.camera {
                if !names.contains(camera.as_str()) {
                    let configured: Vec<&str> = cameras.iter().map(|c| c.name.as_str()).collect();
                    return Err(crate::ConfigError::Rule {
                        key: format!("zones[{i}].camera"),
                        value: format!("{camera:?}"),
                        origin: zones_origin.to_string(),
                        rule: format!(
                            "zone `{}`: names no configured camera; cameras: {}",
                            z.name,
                            configured.join(", ")
                        ),
                    });
                }
            }
        }
    }
    for c in cameras.iter_mut() {
        for z in &mut c.zones {
            z.camera = Some(c.name.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: RawConfig) -> Result<SystemConfig, crate::ConfigError> {
        raw.validate("test", |_| "test".to_string())
    }

    #[test]
    fn the_model_table_lists_each_id_once_in_canonical_form() {
        assert_eq!(KNOWN_MODEL_IDS.len(), KNOWN_MODELS.len());
        for (id, m) in KNOWN_MODEL_IDS.iter().zip(KNOWN_MODELS) {
            assert_eq!(*id, m.id);
            assert_eq!(m.id, m.id.to_ascii_lowercase(), "ids are lower case");
            assert!(!m.id.contains('/'), "{}", m.id);
            assert_eq!(m.hf_repo.matches('/').count(), 1, "{}", m.hf_repo);
            // Each name designates its own model and no other.
            assert_eq!(canonical_model_id(m.id), Some(m.id));
            assert_eq!(canonical_model_id(m.hf_repo), Some(m.id));
        }
    }

    #[test]
    fn model_names_in_any_case() {
        for (name, id) in [
            ("microsoft/git-base-coco", "git-base-coco"),
            ("MICROSOFT/GIT-BASE-COCO", "git-base-coco"),
            (" Git-Base-Coco\n", "git-base-coco"),
            ("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b-instruct"),
            ("moonshotai/Kimi-VL-A3B-Thinking", "kimi-vl-a3b-thinking"),
            (
                "MOONSHOTAI/KIMI-VL-A3B-THINKING-2506",
                "kimi-vl-a3b-thinking-2506",
            ),
        ] {
            assert_eq!(canonical_model_id(name), Some(id), "{name:?}");
        }
        for other in [
            "",
            "git",
            "microsoft/git-large",
            "Qwen/git-base-coco",
            "git-base-coco/",
        ] {
            assert_eq!(canonical_model_id(other), None, "{other:?}");
        }
    }

    #[test]
    fn choices_parse_in_any_case_and_name_themselves_canonically() {
        assert_eq!(StorageDtype::parse_choice("Q8_0"), Some(StorageDtype::Q8_0));
        assert_eq!(
            StorageDtype::parse_choice(" bf16 "),
            Some(StorageDtype::Bf16)
        );
        assert_eq!(StorageDtype::parse_choice("q5k"), None);
        assert_eq!(
            OrchestrationMode::parse_choice("FAST"),
            Some(OrchestrationMode::Fast)
        );
        assert_eq!(LogLevel::parse_choice("WARNING"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse_choice("Debug"), Some(LogLevel::Debug));
        assert_eq!(
            ZoneCoordinates::parse_choice("Normalized"),
            Some(ZoneCoordinates::Normalized)
        );
        assert_eq!(LogLevel::Warn.choice_name(), "warn");
        assert_eq!(StorageDtype::Q4_0.choice_name(), "q4_0");
        // Every value has a name, and the names are what serialization writes.
        fn names_round_trip<T: Choice + Serialize + std::fmt::Debug>() {
            assert_eq!(T::ALL.len(), T::NAMES.len());
            for (value, name) in T::ALL.iter().zip(T::NAMES) {
                assert_eq!(value.choice_name(), *name);
                assert_eq!(T::parse_choice(&name.to_ascii_uppercase()), Some(*value));
                assert_eq!(serde_json::to_value(value).unwrap(), *name);
            }
        }
        names_round_trip::<StorageDtype>();
        names_round_trip::<OrchestrationMode>();
        names_round_trip::<LogLevel>();
        names_round_trip::<ZoneCoordinates>();
    }

    #[test]
    fn devices_parse_with_ordinals_and_the_device_type_prefix() {
        for (text, device) in [
            ("auto", Device::Auto),
            ("AUTO", Device::Auto),
            ("cpu", Device::Cpu),
            ("CPU", Device::Cpu),
            ("DeviceType.CPU", Device::Cpu),
            ("devicetype.cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("DeviceType.CUDA", Device::Cuda(0)),
            ("cuda:0", Device::Cuda(0)),
            ("CUDA:7", Device::Cuda(7)),
            (" cuda:12 ", Device::Cuda(12)),
        ] {
            assert_eq!(Device::parse(text), Some(device), "{text:?}");
        }
        for bad in [
            "",
            "gpu",
            "cuda:",
            "cuda:x",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "cuda0",
            "DeviceType.",
            "DeviceType.GPU",
            "DeviceType.DeviceType.CPU",
            "cuda:99999999999999999999999",
        ] {
            assert_eq!(Device::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!(serde_json::to_value(Device::Cuda(0)).unwrap(), "cuda:0");
        assert_eq!(serde_json::to_value(Device::Cpu).unwrap(), "cpu");
        let back: Device = serde_json::from_value(serde_json::json!("Cuda:2")).unwrap();
        assert_eq!(back, Device::Cuda(2));
        let err = serde_json::from_value::<Device>(serde_json::json!("gpu")).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `gpu`, expected one of `auto`, `cpu`, `cuda`, `cuda:N`"),
            "{err}"
        );
    }

    #[test]
    fn profile_files_take_choice_values_in_any_case() {
        let raw: RawConfig = toml::from_str(
            "[vlm]\ndevice = \"DeviceType.CPU\"\nquant = \"Q4_0\"\nweights = \"Dummy\"\n\
             [orchestration]\nmode = \"Thorough\"\n[output]\nlog_level = \"WARNING\"\n",
        )
        .unwrap();
        assert_eq!(raw.vlm.device, Device::Cpu);
        assert_eq!(raw.vlm.quant, StorageDtype::Q4_0);
        assert_eq!(raw.vlm.weights, WeightsSpec::Dummy);
        assert_eq!(raw.orchestration.mode, OrchestrationMode::Thorough);
        assert_eq!(raw.output.log_level, LogLevel::Warn);
        let err = toml::from_str::<RawConfig>("[orchestration]\nmode = \"quick\"\n").unwrap_err();
        assert!(
            err.to_string().contains(
                "unknown variant `quick`, expected one of `fast`, `balanced`, `thorough`"
            ),
            "{err}"
        );
    }

    #[test]
    fn validation_stores_canonical_models_classes_and_detector() {
        let mut raw = RawConfig::default();
        raw.vlm.primary_model = "Qwen/Qwen2-VL-2B-Instruct".into();
        raw.vlm.fallback_models = vec![
            "MICROSOFT/git-base-coco".into(),
            "Kimi-VL-A3B-Instruct".into(),
        ];
        raw.detection.classes = vec!["Person".into(), "CELL PHONE".into()];
        raw.detection.model = "YOLOv3-Tiny".into();
        let config = validate(raw).unwrap();
        assert_eq!(config.vlm.primary_model, "qwen2-vl-2b-instruct");
        assert_eq!(
            config.vlm.fallback_models,
            ["git-base-coco", "kimi-vl-a3b-instruct"]
        );
        assert_eq!(config.detection.classes, ["person", "cell phone"]);
        assert_eq!(config.detection.model.choice_name(), "yolov3-tiny");
    }

    #[test]
    fn validation_refuses_unknown_names_listing_what_is_allowed() {
        let mut raw = RawConfig::default();
        raw.vlm.primary_model = "microsoft/git-large".into();
        let msg = validate(raw).unwrap_err().to_string();
        assert!(
            msg.starts_with("vlm.primary_model = \"microsoft/git-large\""),
            "{msg}"
        );
        assert!(
            msg.contains("git-base-coco (microsoft/git-base-coco)"),
            "{msg}"
        );

        let mut raw = RawConfig::default();
        raw.vlm.primary_model = "git-base-coco".into();
        raw.vlm.fallback_models = vec!["Microsoft/Git-Base-Coco".into()];
        let msg = validate(raw).unwrap_err().to_string();
        assert!(
            msg.contains("contains the primary model `git-base-coco`"),
            "{msg}"
        );

        let mut raw = RawConfig::default();
        raw.detection.model = "yolov8n".into();
        let msg = validate(raw).unwrap_err().to_string();
        assert!(
            msg.contains("detection.model") && msg.contains("yolov3-tiny"),
            "{msg}"
        );

        let mut raw = RawConfig::default();
        raw.detection.classes = vec!["people".into()];
        let msg = validate(raw).unwrap_err().to_string();
        assert!(msg.contains("unknown class; allowed: person"), "{msg}");
    }

    #[test]
    fn mqtt_defaults_are_valid_and_off() {
        let config = validate(RawConfig::default()).unwrap();
        let m = &config.mqtt;
        assert!(!m.enabled);
        assert_eq!((m.host.as_str(), m.port), ("localhost", 1883));
        assert_eq!(m.topic_prefix, "surveil");
        assert_eq!(m.client_id, None);
        assert_eq!(m.events_qos, 0);
    }

    #[test]
    fn mqtt_rules_name_the_key() {
        type Breach = Box<dyn Fn(&mut MqttConfig)>;
        let cases: Vec<(&str, Breach, &str)> = vec![
            ("mqtt.host", Box::new(|m| m.host = " ".into()), "host name"),
            ("mqtt.port", Box::new(|m| m.port = 0), "[1, 65535]"),
            (
                "mqtt.client_id",
                Box::new(|m| m.client_id = Some(String::new())),
                "1 to 256 bytes",
            ),
            (
                "mqtt.topic_prefix",
                Box::new(|m| m.topic_prefix = "surveil/".into()),
                "no empty level",
            ),
            (
                "mqtt.topic_prefix",
                Box::new(|m| m.topic_prefix = "a/+/b".into()),
                "no `+` or `#`",
            ),
            (
                "mqtt.node_id",
                Box::new(|m| m.node_id = Some("a/b".into())),
                "one topic level",
            ),
            (
                "mqtt.username",
                Box::new(|m| m.username = Some(String::new())),
                "must not be empty",
            ),
            (
                "mqtt.password_env",
                Box::new(|m| m.password_env = Some("MQTT_PASSWORD".into())),
                "needs mqtt.username",
            ),
            (
                "mqtt.password_file",
                Box::new(|m| {
                    m.username = Some("u".into());
                    m.password_env = Some("P".into());
                    m.password_file = Some("/run/secrets/mqtt".into());
                }),
                "not both",
            ),
            (
                "mqtt.password_env",
                Box::new(|m| {
                    m.username = Some("u".into());
                    m.password_env = Some("A=B".into());
                }),
                "environment variable",
            ),
            (
                "mqtt.ca_file",
                Box::new(|m| m.ca_file = Some("/etc/ca.pem".into())),
                "needs mqtt.tls = true",
            ),
            (
                "mqtt.keep_alive_seconds",
                Box::new(|m| m.keep_alive_seconds = 0),
                "[1, 65535]",
            ),
            (
                "mqtt.buffer_messages",
                Box::new(|m| m.buffer_messages = 0),
                "[1, 1000000]",
            ),
            (
                "mqtt.events_qos",
                Box::new(|m| m.events_qos = 3),
                "0, 1 or 2",
            ),
            (
                "mqtt.stats_interval_seconds",
                Box::new(|m| m.stats_interval_seconds = f64::NAN),
                "> 0 of seconds",
            ),
        ];
        for (key, breach, rule) in cases {
            let mut raw = RawConfig::default();
            breach(&mut raw.mqtt);
            let msg = validate(raw).unwrap_err().to_string();
            assert!(msg.starts_with(&format!("{key} = ")), "{key}: {msg}");
            assert!(msg.contains(rule), "{key}: {msg}");
        }
        // Good values of the same keys pass.
        let mut raw = RawConfig::default();
        raw.mqtt.topic_prefix = "site-a/surveil".into();
        raw.mqtt.username = Some("surveil".into());
        raw.mqtt.password_file = Some("/run/secrets/mqtt".into());
        raw.mqtt.tls = true;
        raw.mqtt.ca_file = Some("/etc/ca.pem".into());
        raw.mqtt.events_qos = 2;
        validate(raw).unwrap();
    }

    #[test]
    fn mqtt_keys_are_checked_in_profile_files() {
        let err = toml::from_str::<RawConfig>("[mqtt]\nbroker = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `broker`"), "{err}");
        let err = toml::from_str::<RawConfig>("[mqtt]\nport = 70000\n").unwrap_err();
        assert!(err.to_string().contains("u16"), "{err}");
    }
}
