//! Command-line syntax (clap). Every command documents itself with examples in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Intelligent video surveillance: person detection, tracking and vision-language judgement,
/// with every byte of model memory accounted for.
#[derive(Debug, Parser)]
#[command(name = "surveil", version, propagate_version = true)]
#[command(after_help = "Examples:
  surveil doctor
  surveil config show --profile testing_kimi --json
  ENV=testing surveil config show

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
Logs go to stderr. Their level: SURVEIL_LOG (a tracing filter, every crate) if set, else -q/-v,
else the configuration's output.log_level (LOG_LEVEL; debug at least with output.debug/DEBUG),
else warn. Except with SURVEIL_LOG, the level is surveil's own; other crates stay at warn.")]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); wins over output.log_level.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; wins over -v and output.log_level.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Directory with profile TOML files (default: $SURVEIL_PROFILES_DIR, ./profiles, built-in).
    #[arg(long, global = true, value_name = "DIR")]
    pub profiles_dir: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the resolved configuration.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The surveillance pipeline: frames → detection and tracking → behaviour tools → VLM
    /// verdicts → alerts, recorded in an output folder.
    #[command(
        after_help = "Writes into --output (default: output.directory/run-<start time>):
  events.jsonl   one JSON object per analysed frame and per VLM analysis, flushed as written
  summary.json   frames, detections, tracks, VLM calls and skips, alerts, latency, memory;
                 per camera under `cameras`
  alerts/        an annotated PNG per alert (boxes, track ids, zones, the level)
--no-vlm loads no model: detection, tracking, behaviour tools and rules only (sizing, NVR use).
Ctrl-C (or SIGTERM) stops reading, abandons the analysis in flight, writes the summary and exits 0.
--metrics-addr (or monitoring.metrics_addr) serves Prometheus metrics at /metrics until the run
ends: frames, fps, stage latencies, VLM calls and skips, events by level, process and GPU memory.

Cameras: without --source, every camera of the profile's [[cameras]] runs (or those --camera
picks), each with its own decode and detect/track stream, all served by one model.

Examples:
  surveil run --profile testing --weights dummy --max-frames 200     # the sample clip
  ENV=testing_qwen surveil run --source rtsp://user:pass@camera/stream --weights dummy
  surveil run --profile testing_kimi --source frames/ --output runs/kimi --json
  surveil run --profile testing --weights dummy --set mqtt.enabled=true --set mqtt.host=broker.lan
  surveil run --profile shop --camera entrance --camera till          # two configured cameras
  surveil run --source rtsp://camera/stream --metrics-addr 127.0.0.1:9464

With mqtt.enabled, events also go to an MQTT broker (surveil/<camera>/events, .../alerts,
surveil/node/<node>/stats, .../available); see docs/mqtt.md."
    )]
    Run(RunArgs),
    /// Load one model, report its memory before load, after load and after unload, unload it.
    #[command(visible_alias = "test-model")]
    #[command(
        after_help = "Weights: `auto` looks in the Hugging Face cache (paths.hub_cache: $HF_HUB_CACHE, else
$HF_HOME/hub) and paths.model_dir/<id> ($SURVEIL_MODEL_DIR); `dummy` generates random weights
with the real shapes (for capacity planning without the checkpoint); a directory loads
config.json + safetensors from it. `surveil config show` prints the paths and their origins.

Examples:
  surveil test-single-model --kimi --memory-stats
  surveil test-model --qwen --weights dummy --memory-stats --json
  surveil test-model --git-base --weights dummy --set vlm.quant=q8_0 --set vlm.load_in_4bit=false"
    )]
    TestSingleModel(TestModelArgs),
    /// Detect and track people in a video, stream, image folder or image; write tracks as JSONL.
    #[command(after_help = "Each output line is one tracked object in one frame:
  {\"frame\":12,\"timestamp\":1.2,\"track_id\":3,\"class\":\"person\",\"x1\":..,\"y1\":..,\"x2\":..,\"y2\":..,\"score\":0.87}
Ctrl-C stops after the current frame; everything analysed so far is written.
Outputs (--output, --snapshot) are written as FILE.XXXXXX.partial beside FILE and renamed over
FILE when the run ends (end of source, --max-frames, Ctrl-C). A failed run leaves FILE as it was
and keeps the partial file, named in the error. Options are checked before anything is written.

Examples:
  surveil detect --source ~/.cache/surveil/assets/video/vtest.avi --output tracks.jsonl
  surveil detect --source rtsp://user:pass@camera/stream --output live.jsonl --fps 5
  surveil detect --source frames/ --output t.jsonl --snapshot 100:frame100.png --json")]
    Detect(DetectArgs),
    /// The model registry: what exists, what is in the cache, how big it is at each quantization.
    Models {
        /// What to do.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Report the environment: CPU, memory, CUDA, ffmpeg, model and asset caches.
    #[command(
        after_help = "The caches are the configuration's paths.hub_cache, paths.model_dir and paths.assets,
each with its origin (see `surveil config show`).

Examples:
  surveil doctor
  surveil doctor --json | jq .memory"
    )]
    Doctor(DoctorArgs),
    /// System RAM (cgroup-aware), swap, the memory of every running surveil process and GPU
    /// memory; once, or one line every --watch seconds.
    #[command(
        after_help = "RAM `available` is MemAvailable, or what the tightest cgroup limit leaves when that is
lower; `used` is MemTotal - MemAvailable. surveil processes are found by executable name; only
their program and first argument are shown (the rest of a command line can hold credentials).
--watch prints a header, then one line per interval until Ctrl-C or SIGTERM (exit 0); with
--json, one JSON object per line (JSONL), each with an RFC 3339 UTC `time`.

Examples:
  surveil memory
  surveil memory --watch 1
  surveil memory --watch 0.5 --json | jq -c '{time, avail: .ram.available_bytes, surveil: .surveil.rss_bytes}'"
    )]
    Memory(MemoryArgs),
    /// Read VLM verdict replies the way the pipeline does.
    Verdict {
        /// What to do.
        #[command(subcommand)]
        command: VerdictCommand,
    },
}

/// `surveil config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration a command would run with, and where each value came from.
    #[command(
        after_help = "Precedence: built-in defaults < profiles/<name>.toml < environment < flags.
The profile is --profile, else $ENV, else `development`.

Environment: VLM_MODEL, VLM_DEVICE, LOAD_IN_4BIT (or VLM_4BIT), ENABLE_FALLBACK,
DISABLE_MONITORING, MAX_CONCURRENT_TOOLS, ORCHESTRATION_MODE, LOG_LEVEL, DEBUG, HF_HUB_CACHE
(else HF_HOME/hub), SURVEIL_MODEL_DIR, SURVEIL_ASSETS, and any key as SURVEIL_<SECTION>__<FIELD>
(e.g. SURVEIL_TRACKER__TRACK_BUFFER=45).

Resolved values are listed with the keys they come from: vlm.storage (the storage type of
linear weights, from vlm.load_in_4bit and vlm.quant) and paths.* (the Hugging Face cache, the
model directory and the asset cache, else their defaults under $HOME).

Examples:
  surveil config show --profile testing_kimi --json
  VLM_MODEL=qwen2-vl-2b-instruct surveil config show
  surveil config show --set vlm.device=cpu --set detection.confidence=0.4"
    )]
    Show(ConfigShowArgs),
}

/// Selecting and overriding the configuration; shared by every command that runs something.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// Profile name (testing, testing_kimi, testing_qwen, development, production, or a file
    /// in the profiles directory).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Override one key, e.g. `--set vlm.device=cpu` (repeatable; beats the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `surveil config show`
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    /// Profile and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Machine-readable output: the configuration as JSON (origins under `_origins`).
    #[arg(long)]
    pub json: bool,
}

/// `surveil run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Video file, rtsp:// or http(s):// URL, image folder, or image: one camera (default: the
    /// configured cameras, else the sample clip of the asset cache).
    ///
    /// An image folder's png/jpg/jpeg files are read in natural name order (frame2 before
    /// frame10); unreadable images are skipped with a warning and counted in the summary.
    #[arg(long, value_name = "PATH|URL")]
    pub source: Option<String>,
    /// Camera name. With --source (or without configured cameras): the name of the one camera,
    /// recorded in events (default: `camera-1`); a configured camera of that name lends it its
    /// zones, opening hours, fps and size. Without --source: a configured camera (`[[cameras]]`)
    /// to run, repeatable (default: every configured camera).
    #[arg(long, value_name = "NAME")]
    pub camera: Vec<String>,
    /// Stop after this many frames (per camera).
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
    /// Run folder to create (must not hold a previous run's events).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Weights: auto (the Hugging Face cache, then paths.model_dir), dummy (random, real shapes),
    /// or a checkpoint directory.
    #[arg(long, value_name = "auto|dummy|DIR")]
    pub weights: Option<String>,
    /// Directory with yolov3-tiny.cfg/.weights and coco.names (default: the asset cache,
    /// paths.assets).
    #[arg(long, value_name = "DIR")]
    pub detector_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics while the run lasts (port 0 picks a
    /// free port; the address is printed on stderr). Default: monitoring.metrics_addr, else no
    /// endpoint.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<String>,
    /// Load no model: detection, tracking, the behaviour tools and the rule-based decisions
    /// only. The scenes the trigger would send to the VLM are counted as skipped (`no_model`).
    #[arg(long, conflicts_with = "weights")]
    pub no_vlm: bool,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Profile and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `surveil detect`
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Video file, rtsp:// or http(s):// URL, image folder, or image.
    ///
    /// An image folder's png/jpg/jpeg files are read in natural name order (frame2 before
    /// frame10); unreadable images are skipped with a warning and counted in the summary.
    #[arg(long, value_name = "PATH|URL")]
    pub source: String,
    /// JSONL file to write (replaced only when the run succeeds).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Frames per detector pass (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = crate::cmd::detect::parse_batch)]
    pub batch: usize,
    /// Stop after this many frames (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_frames: Option<u64>,
    /// Scale frames to this width (ffmpeg sources).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub width: Option<u32>,
    /// Scale frames to this height (ffmpeg sources).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub height: Option<u32>,
    /// Resample to this frame rate (ffmpeg sources; above 0).
    #[arg(long, value_parser = crate::cmd::detect::parse_fps)]
    pub fps: Option<f64>,
    /// Render boxes and track ids of frame N into a PNG: `N:PATH.png` (repeatable).
    #[arg(long, value_name = "N:PNG", value_parser = crate::cmd::detect::parse_snapshot)]
    pub snapshot: Vec<surveil_vision::pipeline::SnapshotRequest>,
    /// Directory with yolov3-tiny.cfg/.weights and coco.names (default: the asset cache,
    /// paths.assets).
    #[arg(long, value_name = "DIR")]
    pub detector_dir: Option<PathBuf>,
    /// Print the run summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Profile and overrides (detection.*, tracker.*).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `surveil models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the registry with cache presence and the expected resident size per quantization.
    #[command(after_help = "Examples:
  surveil models list
  surveil models list --json | jq '.models[] | {id, present}'")]
    List(ModelsListArgs),
    /// Write a dummy checkpoint (config.json + model.safetensors with random weights of the real
    /// shapes), to measure loading from disk without the real weights.
    #[command(
        after_help = "A directory that already holds checkpoint files (config.json, *.safetensors, an index,
tokenizer files) is refused (exit 2) unless --force is given. Files are written under a temporary
name and renamed into place: a symbolic link (as in a Hugging Face cache snapshot) is replaced
by a regular file, never written through.

Examples:
  surveil models synth qwen2-vl-2b-instruct --out /tmp/qwen2-vl-2b-dummy
  surveil test-model --qwen --weights /tmp/qwen2-vl-2b-dummy --memory-stats"
    )]
    Synth(ModelsSynthArgs),
}

/// `surveil models list`
#[derive(Debug, Args)]
pub struct ModelsListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Profile and overrides (the Hugging Face cache is `paths.hub_cache`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `surveil models synth`
#[derive(Debug, Args)]
pub struct ModelsSynthArgs {
    /// Model id.
    pub id: String,
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace config.json and model.safetensors in a directory that already holds a
    /// checkpoint (other files are left as they are).
    #[arg(long)]
    pub force: bool,
    /// Stored dtype: bf16 (like the published checkpoints), f16 or f32.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f16", "f32"])]
    pub dtype: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `surveil test-single-model`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").args(["kimi", "qwen", "git_base", "model"])))]
pub struct TestModelArgs {
    /// Kimi-VL-A3B-Thinking (profile testing_kimi).
    #[arg(long)]
    pub kimi: bool,
    /// Qwen2-VL-2B-Instruct (profile testing_qwen).
    #[arg(long)]
    pub qwen: bool,
    /// git-base-coco (profile testing).
    #[arg(long)]
    pub git_base: bool,
    /// Any registry id or Hugging Face repo id, any case (see `surveil models list`).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// `auto`, `dummy`, or a checkpoint directory.
    #[arg(long, value_name = "auto|dummy|DIR")]
    pub weights: Option<String>,
    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`, any case.
    #[arg(long, value_name = "auto|cpu|cuda|cuda:N")]
    pub device: Option<String>,
    /// Print the memory blocks (before load, after load, after unload) and the peak RSS.
    #[arg(long)]
    pub memory_stats: bool,
    /// After loading, generate a short description of a built-in test image and report memory
    /// after that first inference too.
    #[arg(long)]
    pub infer: bool,
    /// Token limit of the test inference, at least 1 (the prefill of the prompt yields the
    /// first token; with 0 nothing would run).
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub infer_tokens: usize,
    /// Run the test inference this many times (the memory "after first inference" is taken
    /// after the first; `--json` lists every run under `inference_runs`, later runs are warm).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub infer_runs: u64,
    /// Benchmarks: never stop at an end-of-sequence token, so every run decodes exactly
    /// `--infer-tokens` tokens (as `llama-bench -n N` does).
    #[arg(long)]
    pub ignore_eos: bool,
    /// The test inference's image (PNG or JPEG) instead of the built-in 768x576 scene; read
    /// and checked against the model's image limits before the model loads.
    #[arg(long, value_name = "FILE", requires = "infer")]
    pub infer_image: Option<PathBuf>,
    /// The test inference's question instead of the built-in ~60-token one (captioners
    /// ignore it).
    #[arg(long, value_name = "TEXT", requires = "infer")]
    pub infer_prompt: Option<String>,
    /// Benchmarks: after the test inferences, time the decoder's prefill of a text-only prompt
    /// of N tokens, chat template included (as `llama-bench -p N`); `--json` reports it under
    /// `text_prefill`. Instruction and thinking models only.
    #[arg(long, value_name = "N", requires = "infer", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub prefill_tokens: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Profile and overrides (the profile defaults to the model's testing profile).
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl TestModelArgs {
    /// The model id asked for (`--kimi` when nothing is given). A `--model` given as a
    /// Hugging Face repo id or in another case is returned as our id; an unknown name is
    /// returned as written (loading it reports the error).
    pub fn model_id(&self) -> &str {
        if let Some(m) = &self.model {
            surveil_config::canonical_model_id(m).unwrap_or(m)
        } else if self.qwen {
            "qwen2-vl-2b-instruct"
        } else if self.git_base {
            "git-base-coco"
        } else {
            "kimi-vl-a3b-thinking"
        }
    }

    /// The profile used when `--profile` is not given.
    pub fn default_profile(&self) -> &'static str {
        match self.model_id() {
            "git-base-coco" => "testing",
            id if id.starts_with("qwen2-vl") => "testing_qwen",
            _ => "testing_kimi",
        }
    }
}

/// `surveil doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Profile and overrides (the caches are the `paths` section).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `surveil memory`
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Print one line every SECONDS (fractions allowed, above 0) until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECONDS", value_parser = crate::cmd::memory::parse_watch_interval)]
    pub watch: Option<std::time::Duration>,
    /// Machine-readable output: one JSON object (one per line with --watch).
    #[arg(long)]
    pub json: bool,
}

/// `surveil verdict ...`
#[derive(Debug, Subcommand)]
pub enum VerdictCommand {
    /// Parse a VLM reply into a verdict with the lenient parser and print it as JSON, with its
    /// `status`: `parsed` (a strict JSON verdict), `repaired` (with the list of `repairs`) or
    /// `parse_failed` (with the `reason` and the `raw` reply).
    #[command(
        after_help = "The reply is read from stdin, or from --file. Reasoning spans (<think>…</think>,
◁think▷…◁/think▷), code fences and prose around the JSON are skipped; single quotes, unquoted
keys, trailing commas, French level words, free action wording and percentages are repaired.

Exit codes: 0 every reply gave a verdict, 1 some reply could not be parsed (its parse_failed
JSON is still printed), 2 usage error (e.g. the file cannot be read).

Examples:
  echo '{\"suspicion_level\":\"high\",\"action_type\":\"theft\",\"confidence\":\"85%\"}' | surveil verdict parse
  surveil verdict parse --file reply.txt
  surveil verdict parse --lines --file replies.txt | jq -r .status | sort | uniq -c"
    )]
    Parse(VerdictParseArgs),
}

/// `surveil verdict parse`
#[derive(Debug, Args)]
pub struct VerdictParseArgs {
    /// Read the reply from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// One reply per line; prints one JSON verdict per line (blank lines are skipped).
    #[arg(long)]
    pub lines: bool,
}
