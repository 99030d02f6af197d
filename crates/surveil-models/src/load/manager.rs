//! The model lifecycle: resolve → estimate → fit check → load (weights, then the text side:
//! tokenizer and image processor behind [`Vlm`]) → (use) → unload, one model resident at a
//! time, with a memory snapshot at every step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use surveil_config::{Device, StorageDtype, SystemConfig, WeightsSpec};
use surveil_memory::{fits, CleanupReport, Estimate, Fit, MemoryReport, QuantPolicy};

use crate::arch::{ArchConfig, LoadedModel};
use crate::load::registry::{self, ModelSpec};
use crate::load::source::{resolve, ResolvedWeights};
use crate::load::weights::{DummySource, LoadReport, SafetensorsSource, TensorSource, Weights};
use crate::vlm::{build_vlm, Vlm};
use crate::{ModelError, Result};

/// Where the lifecycle stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    /// Nothing resident.
    Unloaded,
    /// A load is in progress.
    Loading {
        /// Model id.
        model: String,
    },
    /// A model is resident.
    Loaded {
        /// Model id.
        model: String,
        /// Device it is on (`cpu` or `cuda:N`).
        device: Device,
    },
    /// The last load failed; nothing is resident.
    Failed {
        /// Model id.
        model: String,
        /// Why.
        reason: String,
    },
}

/// Progress callback: `(tensors loaded, tensors in the checkpoint, bytes made resident)`.
pub type ProgressFn = Arc<dyn Fn(usize, usize, u64) + Send + Sync>;

/// How to load: from a [`SystemConfig`] ([`LoadOptions::from_config`]) or set by hand.
///
/// ```
/// use surveil_config::{Device, StorageDtype, WeightsSpec};
/// use surveil_models::LoadOptions;
///
/// let opts = LoadOptions {
///     weights: WeightsSpec::parse("dummy"), // `auto`, `dummy` or a checkpoint directory
///     device: Device::Cpu,
///     storage: StorageDtype::Q4K,
///     threads: None,
///     hub_cache: surveil_config::paths::from_environment().hub_cache,
///     model_dir: None,
///     assets: surveil_config::paths::assets_dir(),
///     progress: None,
///     dummy_seed: 0,
/// };
/// assert_eq!(opts.weights, WeightsSpec::Dummy);
/// ```
#[derive(Clone)]
pub struct LoadOptions {
    /// Where weights come from.
    pub weights: WeightsSpec,
    /// Device choice (`auto` is decided here, against the estimate).
    pub device: Device,
    /// Storage type of linear weights (`vlm.storage`, resolved by the configuration); the
    /// [`QuantPolicy`] is [`QuantPolicy::for_storage`] of it, and on the CPU its
    /// [`QuantPolicy::on_cpu`] (quantized weights in the kernels' tile layouts).
    pub storage: StorageDtype,
    /// Threads of the CPU kernels and of quantization at load (`vlm.threads`; `None`: one per
    /// physical core).
    pub threads: Option<usize>,
    /// The Hugging Face hub cache to search (`paths.hub_cache`).
    pub hub_cache: PathBuf,
    /// Extra directory searched for `<id>/` (`paths.model_dir`).
    pub model_dir: Option<PathBuf>,
    /// The asset cache, where tokenizers are looked for when the checkpoint has none
    /// (`paths.assets`).
    pub assets: PathBuf,
    /// Called after every tensor.
    pub progress: Option<ProgressFn>,
    /// Seed of dummy weights.
    pub dummy_seed: u64,
}

impl LoadOptions {
    /// Options from the `vlm` and `paths` sections of a configuration: every value as the
    /// configuration resolved it.
    pub fn from_config(config: &SystemConfig) -> Self {
        Self {
            weights: config.vlm.weights.clone(),
            device: config.vlm.device,
            storage: config.vlm.storage,
            threads: config.vlm.threads,
            hub_cache: config.paths.hub_cache.clone(),
            model_dir: config.paths.model_dir.clone(),
            assets: config.paths.assets.clone(),
            progress: None,
            dummy_seed: config.vlm.seed.unwrap_or(0),
        }
    }
}

/// What a successful load did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// Model id.
    pub model: String,
    /// Architecture name.
    pub architecture: &'static str,
    /// Device the model is on (`cpu`, `cuda:0`).
    pub device: Device,
    /// Why that device (for `auto`).
    pub device_reason: String,
    /// `dummy` or the checkpoint directory.
    pub weights: String,
    /// The directory of the resolved `config.json` (where the tokenizer is looked for first);
    /// `None` for dummy weights.
    pub checkpoint_dir: Option<PathBuf>,
    /// Storage policy.
    pub policy: QuantPolicy,
    /// The dtype the model computes in (`f32`, `f16`, `bf16`;
    /// [`crate::load::weights::default_activations`]).
    pub activations: &'static str,
    /// Wall time of the load.
    pub load_seconds: f64,
    /// What was made resident.
    pub report: LoadReport,
    /// What the estimate said before loading.
    pub estimate: Estimate,
    /// The fit check.
    pub fit: Fit,
}

struct Resident {
    /// The text side; shares the weights of `model`.
    vlm: Box<dyn Vlm>,
    model: LoadedModel,
    device: candle_core::Device,
    summary: LoadSummary,
    /// Our weight bytes registered as "GPU allocated" while the model lives on a GPU.
    _gpu_bytes: Option<surveil_memory::GpuAllocation>,
}

/// Holds at most one model. Every load first unloads; every unload releases memory and
/// records a snapshot.
///
/// The lifecycle is explicit ([`ModelState`]) and every step leaves a labelled snapshot in
/// [`ModelManager::memory`]: `before_load`, then `after_load` or `after_failed_load`, then
/// `after_unload` (plus whatever the caller adds with [`ModelManager::record_memory`]).
///
/// ```
/// use surveil_config::{Device, StorageDtype, WeightsSpec};
/// use surveil_models::{LoadOptions, ModelManager, ModelState};
///
/// let opts = LoadOptions {
///     weights: WeightsSpec::Dummy,
///     device: Device::Cpu,
///     storage: StorageDtype::Q4K,
///     threads: None,
///     hub_cache: surveil_config::paths::from_environment().hub_cache,
///     model_dir: None,
///     assets: surveil_config::paths::assets_dir(),
///     progress: None,
///     dummy_seed: 0,
/// };
/// let mut manager = ModelManager::new();
/// assert_eq!(manager.state(), &ModelState::Unloaded);
///
/// // A failed load leaves nothing resident, says why, and is recorded.
/// let err = manager.load("no-such-model", &opts).unwrap_err();
/// assert!(err.to_string().contains("known ids: git-base-coco"), "{err}");
/// assert!(matches!(manager.state(), ModelState::Failed { .. }));
/// assert!(manager.vlm().is_none());
/// assert!(manager.memory().get("after_failed_load").is_some());
/// ```
pub struct ModelManager {
    state: ModelState,
    resident: Option<Resident>,
    memory: MemoryReport,
}

impl Default for ModelManager {
    fn default() -> Self {
        Self::new()
    }
}

/// Check that CUDA device `ordinal` is one of the `present` devices the driver reports
/// (ordinals `0..present`). The error names the configured value and the count present, and
/// `driver_reason` (why the driver reported no devices) when there is one.
fn check_cuda_ordinal(ordinal: usize, present: usize, driver_reason: Option<&str>) -> Result<()> {
    if ordinal < present {
        return Ok(());
    }
    let devices = match present {
        0 => "no CUDA device is present".to_string(),
        1 => "1 CUDA device is present (cuda:0)".to_string(),
        n => format!("{n} CUDA devices are present (cuda:0 to cuda:{})", n - 1),
    };
    let reason = driver_reason.map_or(String::new(), |r| format!(" ({r})"));
    Err(ModelError::Unsupported(format!(
        "vlm.device = cuda:{ordinal}, but {devices}{reason}"
    )))
}

fn candle_device(
    choice: Device,
    estimates: &Estimates,
) -> Result<(candle_core::Device, String, Fit)> {
    let estimate = &estimates.gpu;
    let cpu_fit = || fits(&estimates.cpu, Device::Cpu);
    match choice {
        Device::Cpu => Ok((candle_core::Device::Cpu, "device=cpu".into(), cpu_fit())),
        Device::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                return Err(ModelError::Unsupported(format!(
                    "device=cuda:{ordinal}, but this build has no CUDA support (build one with \
                     scripts/build-cuda.sh)"
                )));
            }
            let gpus = surveil_memory::GpuMemory::query();
            check_cuda_ordinal(ordinal, gpus.devices().len(), gpus.unavailable_reason())?;
            let dev = open_cuda(ordinal)?;
            Ok((
                dev,
                format!("device=cuda:{ordinal}"),
                fits(estimate, Device::Cuda(ordinal)),
            ))
        }
        Device::Auto => {
            if cfg!(feature = "cuda") {
                match open_cuda(0) {
                    Ok(dev) => {
                        let fit = fits(estimate, Device::Cuda(0));
                        if fit.fits() {
                            return Ok((dev, "auto: CUDA device 0 has room".into(), fit));
                        }
                        let reason = format!("auto: CPU, because CUDA: {}", fit.message());
                        tracing::info!("{reason}");
                        return Ok((candle_core::Device::Cpu, reason, cpu_fit()));
                    }
                    Err(e) => {
                        let reason = format!("auto: CPU, because CUDA is unusable: {e}");
                        tracing::info!("{reason}");
                        return Ok((candle_core::Device::Cpu, reason, cpu_fit()));
                    }
                }
            }
            let reason = "auto: CPU (built without CUDA)".to_string();
            tracing::info!("{reason}");
            Ok((candle_core::Device::Cpu, reason, cpu_fit()))
        }
    }
}

/// Opens CUDA device `ordinal` in candle.
///
/// A CUDA build loads the driver and the CUDA libraries at run time, and candle's bindings
/// panic when one is missing; so the driver and the libraries are probed first
/// ([`surveil_memory::cuda_usable`]) and a panic that still escapes is turned into an error.
///
/// Errors: [`ModelError::Unsupported`] with the reason (no driver, a library missing, the
/// backend's own failure).
fn open_cuda(ordinal: usize) -> Result<candle_core::Device> {
    surveil_memory::cuda_usable().map_err(|reason| {
        ModelError::Unsupported(format!("cuda:{ordinal}: CUDA is unavailable: {reason}"))
    })?;
    match std::panic::catch_unwind(|| candle_core::Device::new_cuda(ordinal)) {
        Ok(dev) => Ok(dev?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(ModelError::Unsupported(format!(
                "cuda:{ordinal}: the CUDA backend failed while opening the device: {what}"
            )))
        }
    }
}

/// The estimate of one checkpoint under the policy each kind of device gets.
struct Estimates {
    /// [`QuantPolicy::on_cpu`]: quantized weights in the CPU tile layouts.
    cpu: Estimate,
    /// [`QuantPolicy::for_storage`]: candle's storage types.
    gpu: Estimate,
}

/// The configured device a candle device is: `cpu` or `cuda:N`, with the device's own
/// ordinal. [`candle_device`] makes no other kind; a Metal device is refused.
fn device_of(d: &candle_core::Device) -> Result<Device> {
    match d.location() {
        candle_core::DeviceLocation::Cpu => Ok(Device::Cpu),
        candle_core::DeviceLocation::Cuda { gpu_id } => Ok(Device::Cuda(gpu_id)),
        candle_core::DeviceLocation::Metal { gpu_id } => Err(ModelError::Unsupported(format!(
            "metal:{gpu_id}: models load on cpu or cuda:N"
        ))),
    }
}

/// The CUDA ordinal of `d`, if it is a CUDA device.
fn cuda_ordinal(d: &candle_core::Device) -> Option<usize> {
    match d.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
        _ => None,
    }
}

impl ModelManager {
    /// Nothing loaded.
    pub fn new() -> Self {
        Self {
            state: ModelState::Unloaded,
            resident: None,
            memory: MemoryReport::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &ModelState {
        &self.state
    }

    /// The resident model behind the model-agnostic interface, if any.
    pub fn vlm(&self) -> Option<&dyn Vlm> {
        self.resident.as_ref().map(|r| r.vlm.as_ref())
    }

    /// The resident model's architecture-specific handle, if any.
    pub fn model(&self) -> Option<&LoadedModel> {
        self.resident.as_ref().map(|r| &r.model)
    }

    /// The device the resident model is on.
    pub fn device(&self) -> Option<&candle_core::Device> {
        self.resident.as_ref().map(|r| &r.device)
    }

    /// What the current model's load did.
    pub fn summary(&self) -> Option<&LoadSummary> {
        self.resident.as_ref().map(|r| &r.summary)
    }

    /// Snapshots of the current (or last) load cycle.
    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Take a labelled snapshot into the memory report (e.g. after the first inference).
    pub fn record_memory(&mut self, label: &str) {
        self.memory.record(label);
    }

    /// Load `id`, unloading whatever is resident first: the weights, then the text side
    /// ([`build_vlm`]: tokenizer, image processor). On failure nothing is resident and the
    /// state is `Failed`.
    ///
    /// `id` is a registry id or another spelling of one (the Hub repository); the summary
    /// names the registry id.
    ///
    /// Errors: an unknown id ([`ModelError::InvalidInput`], listing the known ids); weights not
    /// found ([`ModelError::WeightsNotFound`]); an estimate that does not fit the device
    /// ([`ModelError::DoesNotFit`]); an unusable device ([`ModelError::Unsupported`]); a
    /// missing tokenizer ([`ModelError::Tokenizer`], naming the paths looked at and
    /// `scripts/setup.sh`); unreadable or mis-shaped checkpoint files ([`ModelError::Io`],
    /// [`ModelError::Config`], [`ModelError::MissingTensor`], [`ModelError::ShapeMismatch`]
    /// and the like).
    ///
    /// ```no_run
    /// # use surveil_config::{Device, StorageDtype, WeightsSpec};
    /// # use surveil_models::{LoadOptions, ModelManager};
    /// # fn main() -> Result<(), surveil_models::ModelError> {
    /// # let opts = LoadOptions {
    /// #     weights: WeightsSpec::Dummy,
    /// #     device: Device::Cpu,
    /// #     storage: StorageDtype::Q4K,
    /// #     threads: None,
    /// #     hub_cache: surveil_config::paths::from_environment().hub_cache,
    /// #     model_dir: None,
    /// #     assets: surveil_config::paths::assets_dir(),
    /// #     progress: None,
    /// #     dummy_seed: 0,
    /// # };
    /// let mut manager = ModelManager::new();
    /// let summary = manager.load("microsoft/git-base-coco", &opts)?;
    /// assert_eq!(summary.model, "git-base-coco");
    /// println!("{}", summary.fit.message()); // "fits: needs 132.6 MB, ..."
    /// for (dtype, bytes) in &summary.report.bytes_by_dtype {
    ///     println!("{dtype}: {bytes} bytes");
    /// }
    /// let delta = manager.memory().delta("before_load", "after_load");
    /// println!("RSS change: {:?} bytes", delta.and_then(|d| d.rss_bytes));
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(&mut self, id: &str, opts: &LoadOptions) -> Result<&LoadSummary> {
        // A repo id or another spelling is reported as our id.
        let id = registry::find(id).map_or(id, |spec| spec.id);
        self.unload();
        self.memory = MemoryReport::new();
        self.memory.record("before_load");
        self.state = ModelState::Loading {
            model: id.to_string(),
        };
        let loaded = load_model(id, opts).and_then(|(model, device, summary)| {
            let vlm = build_vlm(
                model.clone(),
                &device,
                id,
                summary.checkpoint_dir.as_deref(),
                &opts.assets,
            )?;
            Ok((vlm, model, device, summary))
        });
        match loaded {
            Ok((vlm, model, device, summary)) => {
                let gpu_bytes = cuda_ordinal(&device).map(|ordinal| {
                    surveil_memory::GpuAllocation::new(ordinal, summary.report.total_bytes())
                });
                self.memory.record("after_load");
                self.state = ModelState::Loaded {
                    model: id.to_string(),
                    device: summary.device,
                };
                let resident = self.resident.insert(Resident {
                    vlm,
                    model,
                    device,
                    summary,
                    _gpu_bytes: gpu_bytes,
                });
                Ok(&resident.summary)
            }
            Err(e) => {
                // Whatever the failed attempt allocated is dropped by now; give it back.
                surveil_memory::cleanup();
                self.memory.record("after_failed_load");
                self.state = ModelState::Failed {
                    model: id.to_string(),
                    reason: e.to_string(),
                };
                Err(e)
            }
        }
    }

    /// Drop the resident model and give its memory back. Returns what the cleanup released
    /// (`None` when nothing was loaded).
    pub fn unload(&mut self) -> Option<CleanupReport> {
        let resident = self.resident.take()?;
        let report = surveil_memory::release(resident);
        self.memory.record("after_unload");
        self.state = ModelState::Unloaded;
        tracing::info!(released_bytes = report.released_bytes, "model unloaded");
        Some(report)
    }

    /// Unload, then load `id`. If the new model fails, nothing is resident (no way back to the
    /// old one without loading it again).
    pub fn switch(&mut self, id: &str, opts: &LoadOptions) -> Result<&LoadSummary> {
        self.load(id, opts)
    }

    /// Load `primary`; when it fails and `enable_fallback` is on, try `fallbacks` in order,
    /// each only after the previous attempt's memory is released. Returns the summary and the
    /// errors of the attempts that failed.
    pub fn load_with_fallback(
        &mut self,
        primary: &str,
        fallbacks: &[String],
        enable_fallback: bool,
        opts: &LoadOptions,
    ) -> Result<(&LoadSummary, Vec<(String, String)>)> {
        let mut failures = Vec::new();
        let candidates: Vec<&str> = std::iter::once(primary)
            .chain(
                fallbacks
                    .iter()
                    .map(String::as_str)
                    .filter(|_| enable_fallback),
            )
            .collect();
        let mut last_err = None;
        for id in candidates {
            match self.load(id, opts) {
                Ok(_) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(model = id, error = %e, "load failed");
                    failures.push((id.to_string(), e.to_string()));
                    last_err = Some(e);
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        match self.resident.as_ref() {
            Some(r) => Ok((&r.summary, failures)),
            None => Err(ModelError::InvalidInput("no model id to load".into())),
        }
    }
}

/// Resolve, estimate, check the fit, and load `id` (no lifecycle bookkeeping).
pub fn load_model(
    id: &str,
    opts: &LoadOptions,
) -> Result<(LoadedModel, candle_core::Device, LoadSummary)> {
    let spec: &ModelSpec = registry::find(id).ok_or_else(|| {
        ModelError::InvalidInput(format!(
            "unknown model id `{id}`; known ids: {}",
            registry::ids().join(", ")
        ))
    })?;
    let resolved = resolve(
        spec,
        &opts.weights,
        &opts.hub_cache,
        opts.model_dir.as_deref(),
    )?;
    let checkpoint_dir = match &resolved {
        ResolvedWeights::Dummy => None,
        ResolvedWeights::Files(files) => files.config.parent().map(Path::to_path_buf),
    };
    let (cfg, source): (ArchConfig, Box<dyn TensorSource>) = match &resolved {
        ResolvedWeights::Dummy => {
            let cfg = ArchConfig::full_size(spec)?;
            let layout = cfg.tensor_layout()?;
            let src = DummySource::new(spec.id, layout, candle_core::DType::F32, opts.dummy_seed);
            (cfg, Box::new(src))
        }
        ResolvedWeights::Files(files) => {
            let cfg = ArchConfig::from_file(spec, &files.config)?;
            (
                cfg,
                Box::new(SafetensorsSource::open(&[&files.checkpoint])?),
            )
        }
    };
    let gpu_policy = QuantPolicy::for_storage(opts.storage);
    let cpu_policy = gpu_policy.on_cpu();
    let estimates = Estimates {
        cpu: cfg.estimate(&cpu_policy)?,
        gpu: cfg.estimate(&gpu_policy)?,
    };
    let (device, device_reason, fit) = candle_device(opts.device, &estimates)?;
    let (policy, estimate) = if device.is_cpu() {
        (cpu_policy, estimates.cpu)
    } else {
        (gpu_policy, estimates.gpu)
    };
    let placed = device_of(&device)?;
    if let Fit::DoesNotFit { message, .. } = &fit {
        return Err(ModelError::DoesNotFit(format!("{id}: {message}")));
    }
    tracing::info!(model = id, weights = %resolved.describe(), policy = %policy.describe(), "loading");
    let start = Instant::now();
    let weights = match &opts.progress {
        Some(p) => {
            let p = p.clone();
            Weights::with_progress(
                source,
                device.clone(),
                policy,
                Box::new(move |a, b, c| p(a, b, c)),
            )
        }
        None => Weights::new(source, device.clone(), policy),
    };
    let weights = match opts.threads {
        Some(n) => weights.with_threads(n),
        None => weights,
    };
    let activations = weights.activation_dtype().as_str();
    let model = LoadedModel::load(&cfg, &weights)?;
    let report = weights.report();
    drop(weights);
    let summary = LoadSummary {
        model: spec.id.to_string(),
        architecture: spec.architecture.name(),
        device: placed,
        device_reason,
        weights: resolved.describe(),
        checkpoint_dir,
        policy,
        activations,
        load_seconds: start.elapsed().as_secs_f64(),
        report,
        estimate,
        fit,
    };
    Ok((model, device, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_estimate() -> Estimates {
        let spec = registry::find("git-base-coco").unwrap();
        let cfg = ArchConfig::full_size(spec).unwrap();
        let policy = QuantPolicy::for_storage(StorageDtype::Q4K);
        Estimates {
            cpu: cfg.estimate(&policy.on_cpu()).unwrap(),
            gpu: cfg.estimate(&policy).unwrap(),
        }
    }

    #[test]
    fn cuda_ordinals_are_checked_against_the_devices_present() {
        assert!(check_cuda_ordinal(0, 1, None).is_ok());
        assert!(check_cuda_ordinal(3, 4, None).is_ok());
        let msg = check_cuda_ordinal(1, 1, None).unwrap_err().to_string();
        assert_eq!(
            msg,
            "vlm.device = cuda:1, but 1 CUDA device is present (cuda:0)"
        );
        let msg = check_cuda_ordinal(4, 2, None).unwrap_err().to_string();
        assert_eq!(
            msg,
            "vlm.device = cuda:4, but 2 CUDA devices are present (cuda:0 to cuda:1)"
        );
        let msg = check_cuda_ordinal(0, 0, None).unwrap_err().to_string();
        assert_eq!(msg, "vlm.device = cuda:0, but no CUDA device is present");
        let msg = check_cuda_ordinal(0, 0, Some("libcuda.so.1: cannot open shared object file"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "vlm.device = cuda:0, but no CUDA device is present (libcuda.so.1: cannot open \
             shared object file)"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_cuda_compiled_in_is_the_no_cuda_error() {
        for ordinal in [0, 2] {
            let err = candle_device(Device::Cuda(ordinal), &git_estimate()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("device=cuda:{ordinal}")) && msg.contains("no CUDA support"),
                "{msg}"
            );
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn an_ordinal_past_the_devices_present_is_refused() {
        let present = surveil_memory::GpuMemory::query().devices().len();
        let err = candle_device(Device::Cuda(present), &git_estimate()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("cuda:{present}")) && msg.contains("present"),
            "{msg}"
        );
    }

    #[test]
    fn cpu_and_auto_name_the_device_they_chose() {
        let (dev, reason, _) = candle_device(Device::Cpu, &git_estimate()).unwrap();
        assert!(dev.is_cpu());
        assert_eq!(reason, "device=cpu");
        assert_eq!(device_of(&dev).unwrap().to_string(), "cpu");
        assert_eq!(cuda_ordinal(&dev), None);
        if !cfg!(feature = "cuda") {
            let (dev, reason, _) = candle_device(Device::Auto, &git_estimate()).unwrap();
            assert!(dev.is_cpu());
            assert_eq!(reason, "auto: CPU (built without CUDA)");
        }
    }
}
