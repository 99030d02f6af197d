//! The configuration schema: sections, fields, defaults, and validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Model ids surveil knows (the model registry in `surveil-models` lists exactly these).
pub const KNOWN_MODEL_IDS: &[&str] = &[
    "git-base-coco",
    "qwen2-vl-2b-instruct",
    "qwen2-vl-7b-instruct",
    "kimi-vl-a3b-thinking",
    "kimi-vl-a3b-thinking-2506",
    "kimi-vl-a3b-instruct",
];

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when compiled in and the model fits, else CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// Always CUDA (an error when unavailable).
    Cuda,
}

/// Storage type of quantizable weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// 4-bit k-quants (256-weight blocks).
    #[default]
    Q4k,
    /// 4-bit, 32-weight blocks.
    Q4_0,
    /// 8-bit, 32-weight blocks.
    Q8_0,
    /// Half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Full precision.
    F32,
}

impl Quant {
    /// Lower-case name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4k => "q4k",
            Quant::Q4_0 => "q4_0",
            Quant::Q8_0 => "q8_0",
            Quant::F16 => "f16",
            Quant::Bf16 => "bf16",
            Quant::F32 => "f32",
        }
    }

    /// Whether this is a 4-bit type.
    pub fn is_four_bit(self) -> bool {
        matches!(self, Quant::Q4k | Quant::Q4_0)
    }
}

/// Where weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WeightsSpec {
    /// The Hugging Face cache, then `SURVEIL_MODEL_DIR`.
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
    /// `auto`, `dummy`, or a directory path.
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "auto" => WeightsSpec::Auto,
            "dummy" => WeightsSpec::Dummy,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation.
    #[default]
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

/// The vision-language model and how it is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VlmConfig {
    /// Model id from the registry.
    pub primary_model: String,
    /// Models tried in order when the primary fails to load (only with `enable_fallback`).
    pub fallback_models: Vec<String>,
    /// Whether fallback models are tried at all.
    pub enable_fallback: bool,
    /// Where the model runs.
    pub device: Device,
    /// Quantize linear weights to 4 bits while loading.
    pub load_in_4bit: bool,
    /// Storage type: the 4-bit kind when `load_in_4bit`, else the type used.
    pub quant: Quant,
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
}

impl Default for VlmConfig {
    fn default() -> Self {
        Self {
            primary_model: "kimi-vl-a3b-thinking".into(),
            fallback_models: Vec::new(),
            enable_fallback: false,
            device: Device::Auto,
            load_in_4bit: true,
            quant: Quant::Q4k,
            weights: WeightsSpec::Auto,
            max_new_tokens: 512,
            temperature: 0.1,
            top_p: 0.9,
            seed: None,
        }
    }
}

impl VlmConfig {
    /// The storage type linear weights get: `quant` when it is a 4-bit kind and
    /// `load_in_4bit` is on; Q4K when 4-bit is on but `quant` names a wider type; `quant`
    /// otherwise.
    pub fn effective_quant(&self) -> Quant {
        match (self.load_in_4bit, self.quant) {
            (true, q) if q.is_four_bit() => q,
            (true, _) => Quant::Q4k,
            (false, q) => q,
        }
    }
}

/// Person (and bag) detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Detector model.
    pub model: String,
    /// Minimum detection score.
    pub confidence: f64,
    /// IoU above which overlapping boxes of a class are suppressed.
    pub iou: f64,
    /// COCO class names kept.
    pub classes: Vec<String>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            model: "yolov3-tiny".into(),
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
    /// Nominal frame rate of the source.
    pub frame_rate: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            track_buffer: 30,
            match_threshold: 0.8,
            frame_rate: 30,
        }
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
    /// Time limit of one analysis, seconds.
    pub timeout_seconds: f64,
    /// Verdict confidence needed to act.
    pub confidence_threshold: f64,
    /// Minimum seconds between two VLM calls.
    pub vlm_cooldown_seconds: f64,
    /// Ask the VLM at least this often while people are present, seconds.
    pub vlm_periodic_seconds: f64,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        Self {
            mode: OrchestrationMode::Balanced,
            max_concurrent_tools: 4,
            timeout_seconds: 30.0,
            confidence_threshold: 0.7,
            vlm_cooldown_seconds: 5.0,
            vlm_periodic_seconds: 30.0,
        }
    }
}

/// Background memory monitoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Whether the sampler runs.
    pub enabled: bool,
    /// Seconds between samples.
    pub interval_seconds: f64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 1.0,
        }
    }
}

/// Where results and logs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Directory for events and summaries.
    pub directory: PathBuf,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Extra diagnostics (debug logs, intermediate files).
    pub debug: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("output"),
            log_level: LogLevel::Info,
            debug: false,
        }
    }
}

/// The configuration as merged, before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
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
}

/// A validated configuration. Only [`RawConfig::validate`] makes one.
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
}

/// COCO class names the detector can keep.
const DETECTION_CLASSES: &[&str] = &[
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
    /// Check every rule; `origin(key)` says where a key's value came from (for messages).
    pub fn validate(
        self,
        profile: &str,
        origin: impl Fn(&str) -> String,
    ) -> Result<SystemConfig, crate::ConfigError> {
        let rule = |key: &str, value: String, rule: String| crate::ConfigError::Rule {
            key: key.to_string(),
            value,
            origin: origin(key),
            rule,
        };
        let known = || KNOWN_MODEL_IDS.join(", ");
        let v = &self.vlm;
        if !KNOWN_MODEL_IDS.contains(&v.primary_model.as_str()) {
            return Err(rule(
                "vlm.primary_model",
                format!("{:?}", v.primary_model),
                format!("unknown model id; known ids: {}", known()),
            ));
        }
        for m in &v.fallback_models {
            if !KNOWN_MODEL_IDS.contains(&m.as_str()) {
                return Err(rule(
                    "vlm.fallback_models",
                    format!("{m:?}"),
                    format!("unknown model id; known ids: {}", known()),
                ));
            }
            if *m == v.primary_model {
                return Err(rule(
                    "vlm.fallback_models",
                    format!("{:?}", v.fallback_models),
                    format!("contains the primary model `{m}`; a fallback must be another model"),
                ));
            }
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
        let unit = |key: &str, x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(rule(key, x.to_string(), "must be within [0, 1]".into()))
            }
        };
        unit("vlm.top_p", v.top_p)?;
        unit("detection.confidence", self.detection.confidence)?;
        unit("detection.iou", self.detection.iou)?;
        unit("tracker.match_threshold", self.tracker.match_threshold)?;
        unit(
            "orchestration.confidence_threshold",
            self.orchestration.confidence_threshold,
        )?;
        for c in &self.detection.classes {
            if !DETECTION_CLASSES.contains(&c.as_str()) {
                return Err(rule(
                    "detection.classes",
                    format!("{c:?}"),
                    format!("unknown class; allowed: {}", DETECTION_CLASSES.join(", ")),
                ));
            }
        }
        if self.tracker.frame_rate == 0 {
            return Err(rule(
                "tracker.frame_rate",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        let o = &self.orchestration;
        if o.max_concurrent_tools < 1 {
            return Err(rule(
                "orchestration.max_concurrent_tools",
                o.max_concurrent_tools.to_string(),
                "must be at least 1".into(),
            ));
        }
        let positive = |key: &str, x: f64| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(rule(
                    key,
                    x.to_string(),
                    "must be a finite number > 0".into(),
                ))
            }
        };
        positive("orchestration.timeout_seconds", o.timeout_seconds)?;
        positive(
            "monitoring.interval_seconds",
            self.monitoring.interval_seconds,
        )?;
        if o.vlm_cooldown_seconds < 0.0 || !o.vlm_cooldown_seconds.is_finite() {
            return Err(rule(
                "orchestration.vlm_cooldown_seconds",
                o.vlm_cooldown_seconds.to_string(),
                "must be a finite number ≥ 0".into(),
            ));
        }
        positive("orchestration.vlm_periodic_seconds", o.vlm_periodic_seconds)?;
        Ok(SystemConfig {
            profile: profile.to_string(),
            vlm: self.vlm,
            detection: self.detection,
            tracker: self.tracker,
            orchestration: self.orchestration,
            monitoring: self.monitoring,
            output: self.output,
        })
    }
}
