//! [`Weights`]: the prefix-scoped view architectures load through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use serde::Serialize;
use surveil_memory::{QuantPolicy, StorageDtype, TensorRole, TensorRules};

use super::TensorSource;
use super::{Bf16Weight, MatWeight, Packed, TiledWeight};
use crate::quant::{PackedQ4, PackedQ8, QuantInput, ThreadPool};
use crate::{ModelError, Result};

/// What a load made resident, tensor by tensor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Bytes resident per storage type.
    pub bytes_by_dtype: BTreeMap<StorageDtype, u64>,
    /// Tensor count per storage type.
    pub tensors_by_dtype: BTreeMap<StorageDtype, usize>,
    /// Linear weights the policy wanted quantized but whose rows do not divide into blocks.
    pub fallback_tensors: Vec<String>,
    /// Tensors loaded so far.
    pub tensors_loaded: usize,
    /// Parameters loaded so far.
    pub parameters: u64,
}

impl LoadReport {
    /// Total resident bytes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes_by_dtype.values().sum()
    }

    fn record(&mut self, name: &str, storage: StorageDtype, shape: &[usize], fell_back: bool) {
        *self.bytes_by_dtype.entry(storage).or_default() += storage.bytes_for(shape);
        *self.tensors_by_dtype.entry(storage).or_default() += 1;
        self.tensors_loaded += 1;
        self.parameters += shape.iter().map(|&d| d as u64).product::<u64>();
        if fell_back {
            self.fallback_tensors.push(name.to_string());
        }
    }
}

/// Progress callback: `(tensors loaded, tensors in the source, bytes made resident)`.
pub type LoadProgress = dyn Fn(usize, usize, u64) + Send + Sync;

struct Inner {
    source: Box<dyn TensorSource>,
    device: Device,
    policy: QuantPolicy,
    report: Mutex<LoadReport>,
    progress: Option<Box<LoadProgress>>,
    total_tensors: usize,
    /// Threads of the kernels' pool and of quantization at load.
    threads: usize,
    /// The dtype the model computes in ([`Weights::activation_dtype`]).
    activations: DType,
    /// The kernels' pool, started with the first tiled weight and shared by all of them.
    pool: OnceLock<Arc<ThreadPool>>,
}

/// A prefix-scoped view of a [`TensorSource`] that makes tensors resident on one device, in the
/// storage type the [`QuantPolicy`] picks, one at a time. Cloning is cheap.
///
/// The role of a tensor (float, table, linear weight) is chosen by the call: [`Self::get`],
/// [`Self::get_table`], [`Self::matmul_weight`]. A view given an architecture's rules
/// ([`Self::with_rules`]) checks every tensor it stores against them, so that the memory
/// estimate, which sizes the same rules, cannot disagree with the load.
#[derive(Clone)]
pub struct Weights {
    inner: Arc<Inner>,
    prefix: String,
    rules: Option<Arc<dyn TensorRules>>,
}

impl Weights {
    /// Load from `source` onto `device` following `policy`.
    pub fn new(source: Box<dyn TensorSource>, device: Device, policy: QuantPolicy) -> Self {
        let total_tensors = source.names().len();
        let activations = default_activations(&device, policy);
        Self {
            inner: Arc::new(Inner {
                source,
                device,
                policy,
                report: Mutex::new(LoadReport::default()),
                progress: None,
                total_tensors,
                threads: crate::quant::physical_cores(),
                activations,
                pool: OnceLock::new(),
            }),
            prefix: String::new(),
            rules: None,
        }
    }

    /// Same, reporting progress after every tensor.
    pub fn with_progress(
        source: Box<dyn TensorSource>,
        device: Device,
        policy: QuantPolicy,
        progress: Box<LoadProgress>,
    ) -> Self {
        let total_tensors = source.names().len();
        let activations = default_activations(&device, policy);
        Self {
            inner: Arc::new(Inner {
                source,
                device,
                policy,
                report: Mutex::new(LoadReport::default()),
                progress: Some(progress),
                total_tensors,
                threads: crate::quant::physical_cores(),
                activations,
                pool: OnceLock::new(),
            }),
            prefix: String::new(),
            rules: None,
        }
    }

    /// The same source with `threads` threads (at least 1) for the CPU kernels of the weights
    /// it loads (`vlm.threads`) and for quantizing them; the default is
    /// [`crate::quant::physical_cores`]. Call before loading anything: a view made with
    /// [`Self::pp`] or a clone keeps the count it was made with.
    pub fn with_threads(mut self, threads: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.threads = threads.max(1);
        }
        self
    }

    /// Threads of the kernels' pool.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// The same source with the models computing in `dtype` (f32, f16 or bf16) instead of
    /// [`default_activations`]' choice: activations, the KV cache and the attention scores are
    /// held in it (softmax and norms still reduce in f32). Call before loading anything, as
    /// [`Self::with_threads`].
    ///
    /// Errors: another dtype ([`ModelError::Unsupported`]).
    pub fn with_activations(mut self, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::Unsupported(format!(
                "activations in {dtype:?}: only f32, f16 and bf16 are supported"
            )));
        }
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.activations = dtype;
        }
        Ok(self)
    }

    /// The dtype the model computes in: its hidden states, KV cache and attention scores.
    /// [`default_activations`] unless [`Self::with_activations`] chose another.
    pub fn activation_dtype(&self) -> DType {
        self.inner.activations
    }

    /// A weight in candle's storage as the layers keep it: a 2-D bf16 weight on the CPU gets
    /// surveil's bf16 GEMV ([`Bf16Weight`]); anything else stays candle's.
    ///
    /// Errors: the kernels' pool cannot start.
    pub(crate) fn candle_or_bf16(&self, w: QMatMul) -> Result<MatWeight> {
        match w {
            QMatMul::Tensor(t)
                if t.dtype() == DType::BF16 && t.rank() == 2 && t.device().is_cpu() =>
            {
                Ok(MatWeight::Bf16(Bf16Weight::new(t, self.pool()?)?))
            }
            other => Ok(MatWeight::Candle(other)),
        }
    }

    /// The kernels' pool (started on first use).
    pub(crate) fn pool(&self) -> Result<Arc<ThreadPool>> {
        if let Some(p) = self.inner.pool.get() {
            return Ok(p.clone());
        }
        let pool = Arc::new(ThreadPool::new(self.inner.threads)?);
        Ok(self.inner.pool.get_or_init(|| pool).clone())
    }

    /// A view under `prefix.` (like candle's `VarBuilder::pp`).
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}.{prefix}", self.prefix)
        };
        Self {
            inner: self.inner.clone(),
            prefix,
            rules: self.rules.clone(),
        }
    }

    /// This view (and every view [`Self::pp`] makes from it), checking each tensor it stores
    /// against an architecture's `rules`: a tensor asked for in a role the rules do not give it
    /// is refused with [`ModelError::RoleMismatch`] naming it. The load report is shared.
    pub fn with_rules(&self, rules: Arc<dyn TensorRules>) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix: self.prefix.clone(),
            rules: Some(rules),
        }
    }

    /// Refuses `role` for `full` when the rules in force do not give it that role.
    fn check_role(&self, full: &str, shape: &[usize], role: TensorRole) -> Result<()> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let allowed = rules.roles(full, shape);
        if allowed.contains(&role) {
            Ok(())
        } else {
            Err(ModelError::RoleMismatch {
                name: full.to_string(),
                requested: role,
                allowed: allowed.to_vec(),
            })
        }
    }

    /// Full name of `name` under this view.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The device tensors are made resident on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The quantization policy in force.
    pub fn policy(&self) -> QuantPolicy {
        self.inner.policy
    }

    /// Whether the source has `name` under this view.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.source.meta(&self.path(name)).is_some()
    }

    /// A snapshot of what has been loaded so far.
    pub fn report(&self) -> LoadReport {
        match self.inner.report.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn record(&self, name: &str, storage: StorageDtype, shape: &[usize], fell_back: bool) {
        let (done, bytes) = {
            let mut r = match self.inner.report.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            r.record(name, storage, shape, fell_back);
            (r.tensors_loaded, r.total_bytes())
        };
        if let Some(progress) = &self.inner.progress {
            progress(done, self.inner.total_tensors, bytes);
        }
    }

    /// Check that `name` may be stored in `role`, read it, check its shape, and return it in
    /// the source dtype (on CPU, for conversion).
    fn fetch(&self, name: &str, shape: &[usize], role: TensorRole) -> Result<(String, Tensor)> {
        let full = self.path(name);
        self.check_role(&full, shape, role)?;
        let meta = self
            .inner
            .source
            .meta(&full)
            .ok_or_else(|| ModelError::MissingTensor {
                name: full.clone(),
                source_desc: self.inner.source.describe(),
            })?;
        if meta.shape != shape {
            return Err(ModelError::ShapeMismatch {
                name: full,
                expected: shape.to_vec(),
                found: meta.shape,
            });
        }
        if !matches!(meta.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::UnexpectedDtype {
                name: full,
                dtype: format!("{:?}", meta.dtype),
            });
        }
        let t = self.inner.source.load(&full, &Device::Cpu)?;
        Ok((full, t))
    }

    /// A float tensor in f32 on the target device (norms, biases, positions, convolutions).
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let (full, t) = self.fetch(name, shape, TensorRole::Float)?;
        let t = t.to_dtype(DType::F32)?.to_device(&self.inner.device)?;
        self.record(&full, StorageDtype::F32, shape, false);
        Ok(t)
    }

    /// A large float table (embeddings) in the policy's float storage type; callers convert
    /// the rows they gather to f32.
    pub fn get_table(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let storage = self.inner.policy.storage_for(TensorRole::Table, shape);
        let (full, t) = self.fetch(name, shape, TensorRole::Table)?;
        let t = t
            .to_dtype(float_dtype(storage))?
            .to_device(&self.inner.device)?;
        self.record(&full, storage, shape, false);
        Ok(t)
    }

    /// A matmul weight `[out, in]` stored as the policy says (quantized when rows allow; in a
    /// CPU tile layout when the policy names one).
    pub fn matmul_weight(&self, shape: &[usize], name: &str) -> Result<MatWeight> {
        let storage = self.inner.policy.storage_for(TensorRole::Linear, shape);
        let fell_back = self.inner.policy.linear.is_quantized() && !storage.is_quantized();
        let (full, t) = self.fetch(name, shape, TensorRole::Linear)?;
        let q = if storage.is_tiled() {
            let rows = shape.first().copied().unwrap_or(0);
            let cols: usize = shape[1..].iter().product();
            MatWeight::Tiled(self.pack(storage, &[(full.clone(), t, rows)], cols)?)
        } else {
            self.candle_or_bf16(quantize_onto(&t, storage, &self.inner.device)?)?
        };
        self.record(&full, storage, shape, fell_back);
        Ok(q)
    }

    /// [`Self::matmul_weight`] in candle's storage on the host, whatever the device: for
    /// weights the caller joins before they go to the device (the parts of a fused linear), so
    /// each byte crosses to a GPU once. Recorded in the load report as `matmul_weight` would.
    ///
    /// Errors: as [`Self::matmul_weight`]; a policy with a CPU tile layout
    /// ([`ModelError::Unsupported`]: those go through [`Self::matmul_weight_stacked`]).
    pub(crate) fn matmul_weight_host(&self, shape: &[usize], name: &str) -> Result<QMatMul> {
        let storage = self.inner.policy.storage_for(TensorRole::Linear, shape);
        if storage.is_tiled() {
            return Err(ModelError::Unsupported(format!(
                "`{}`: {storage} weights are packed by matmul_weight_stacked",
                self.path(name)
            )));
        }
        let fell_back = self.inner.policy.linear.is_quantized() && !storage.is_quantized();
        let (full, t) = self.fetch(name, shape, TensorRole::Linear)?;
        let q = quantize_onto(&t, storage, &Device::Cpu)?;
        self.record(&full, storage, shape, fell_back);
        Ok(q)
    }

    /// The linear weights `parts` (name under this view, rows), all `[rows_i, in_dim]`, stacked
    /// into one weight in the CPU tile layout the policy names: part `i` starts at row
    /// [`crate::quant::stacked_offsets`]`[i]`, each part is recorded as its own tensor, and the
    /// resident bytes are the sum of the parts' [`StorageDtype::bytes_for`]. `None` (nothing
    /// read) when the policy keeps these weights in candle's storage.
    ///
    /// Errors: as [`Self::matmul_weight`].
    pub fn matmul_weight_stacked(
        &self,
        parts: &[(&str, usize)],
        in_dim: usize,
    ) -> Result<Option<MatWeight>> {
        let storages: Vec<StorageDtype> = parts
            .iter()
            .map(|&(_, n)| {
                self.inner
                    .policy
                    .storage_for(TensorRole::Linear, &[n, in_dim])
            })
            .collect();
        let Some(&storage) = storages.first() else {
            return Ok(None);
        };
        if !storage.is_tiled() || storages.iter().any(|&s| s != storage) {
            return Ok(None);
        }
        let mut fetched = Vec::with_capacity(parts.len());
        for &(name, n) in parts {
            let (full, t) = self.fetch(name, &[n, in_dim], TensorRole::Linear)?;
            fetched.push((full, t, n));
        }
        let tiled = self.pack(storage, &fetched, in_dim)?;
        for (full, _, n) in &fetched {
            self.record(full, storage, &[*n, in_dim], false);
        }
        Ok(Some(MatWeight::Tiled(tiled)))
    }

    /// Quantize `parts` (name, tensor `[rows, cols]` in its source dtype on the CPU, rows)
    /// stacked into the tile layout `storage`, on this view's threads.
    fn pack(
        &self,
        storage: StorageDtype,
        parts: &[(String, Tensor, usize)],
        cols: usize,
    ) -> Result<TiledWeight> {
        if !self.inner.device.is_cpu() {
            return Err(ModelError::Unsupported(format!(
                "{storage} is a CPU layout; the weights are loaded onto {:?}",
                self.inner.device.location()
            )));
        }
        let dtype = parts.first().map_or(DType::F32, |(_, t, _)| t.dtype());
        let same = parts.iter().all(|(_, t, _)| t.dtype() == dtype);
        let tensors = parts
            .iter()
            .map(|(_, t, _)| {
                if same {
                    t.contiguous()
                } else {
                    t.to_dtype(DType::F32)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let rows: Vec<usize> = parts.iter().map(|(_, _, n)| *n).collect();
        let threads = self.inner.threads;
        let packed = match (same, dtype) {
            (true, DType::BF16) => {
                pack_slices(storage, &tensors, &rows, cols, threads, |s| match s {
                    CpuStorage::BF16(d) => Some(d.as_slice()),
                    _ => None,
                })
            }
            (true, DType::F16) => {
                pack_slices(storage, &tensors, &rows, cols, threads, |s| match s {
                    CpuStorage::F16(d) => Some(d.as_slice()),
                    _ => None,
                })
            }
            _ => pack_slices(storage, &tensors, &rows, cols, threads, |s| match s {
                CpuStorage::F32(d) => Some(d.as_slice()),
                _ => None,
            }),
        };
        let packed = packed.map_err(|e| match e {
            PackError::Quant { part, source } => ModelError::Quantize {
                name: parts
                    .get(part)
                    .map_or_else(String::new, |(name, _, _)| name.clone()),
                source,
            },
            PackError::Model(e) => e,
        })?;
        Ok(TiledWeight::new(packed, self.pool()?))
    }
}

/// Why [`pack_slices`] failed.
enum PackError {
    /// The quantizer refused part `part`.
    Quant {
        part: usize,
        source: crate::quant::QuantError,
    },
    /// The tensors are not what was asked for.
    Model(ModelError),
}

/// Quantize CPU tensors of one source type `T` (read through `slice`), stacked, into `storage`.
fn pack_slices<T: QuantInput>(
    storage: StorageDtype,
    tensors: &[Tensor],
    rows: &[usize],
    cols: usize,
    threads: usize,
    slice: impl Fn(&CpuStorage) -> Option<&[T]>,
) -> std::result::Result<Packed, PackError> {
    let held: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut parts: Vec<(&[T], usize)> = Vec::with_capacity(held.len());
    for ((guard, layout), &n) in held.iter().zip(rows) {
        let data = match &**guard {
            Storage::Cpu(cpu) => slice(cpu),
            _ => None,
        };
        let (Some(data), Some((lo, hi))) = (data, layout.contiguous_offsets()) else {
            return Err(PackError::Model(ModelError::InvalidInput(
                "a weight to quantize is not a contiguous CPU tensor of its source type".into(),
            )));
        };
        parts.push((&data[lo..hi], n));
    }
    // The failing part: quantize each alone to find it (only on the error path).
    let blame = |source: crate::quant::QuantError| {
        let part = parts
            .iter()
            .position(|&(w, n)| match storage {
                StorageDtype::Q8_0x16 => PackedQ8::quantize(w, n, cols).is_err(),
                _ => PackedQ4::quantize(w, n, cols).is_err(),
            })
            .unwrap_or(0);
        PackError::Quant { part, source }
    };
    match storage {
        StorageDtype::Q4Kx16 => PackedQ4::quantize_parts(&parts, cols, threads)
            .map(Packed::Q4)
            .map_err(blame),
        StorageDtype::Q8_0x16 => PackedQ8::quantize_parts(&parts, cols, threads)
            .map(Packed::Q8)
            .map_err(blame),
        other => Err(PackError::Model(ModelError::Unsupported(format!(
            "{other} is not a CPU tile layout"
        )))),
    }
}

/// Convert one float tensor to `storage` on `device`.
pub(crate) fn quantize_onto(t: &Tensor, storage: StorageDtype, device: &Device) -> Result<QMatMul> {
    Ok(match storage {
        StorageDtype::F32 => QMatMul::Tensor(t.to_dtype(DType::F32)?.to_device(device)?),
        StorageDtype::F16 => QMatMul::TensorF16(t.to_dtype(DType::F16)?.to_device(device)?),
        StorageDtype::Bf16 => QMatMul::Tensor(t.to_dtype(DType::BF16)?.to_device(device)?),
        StorageDtype::Q4Kx16 | StorageDtype::Q8_0x16 => {
            return Err(ModelError::Unsupported(format!(
                "{storage} is a CPU tile layout, not a candle storage type"
            )))
        }
        q => {
            let ggml = match q {
                StorageDtype::Q8_0 => GgmlDType::Q8_0,
                StorageDtype::Q4_0 => GgmlDType::Q4_0,
                _ => GgmlDType::Q4K,
            };
            QMatMul::QTensor(Arc::new(quantize_rows_parallel(t, ggml, device)?))
        }
    })
}

/// Below this many weights a tensor is quantized on the calling thread only.
const PARALLEL_QUANTIZE_MIN: usize = 1 << 20;

/// Quantize a `[rows, cols]` host tensor on the CPU with its rows split over candle's threads,
/// and place the blocks on `device`: a GPU gets each weight uploaded once, already quantized
/// (candle's own `QTensor::quantize_onto` quantizes on one host thread). Quantization blocks
/// never cross a row, so the blocks of consecutive row ranges, laid end to end, are exactly the
/// blocks of the whole tensor. Q4K blocks come from [`crate::quant::quantize_q4k`] (candle's
/// bytes, twelve times faster than candle's quantizer in the kernels bench); Q8_0 and Q4_0 from
/// candle's.
///
/// Errors: a row length that is not a whole number of blocks; candle's errors.
fn quantize_rows_parallel(t: &Tensor, ggml: GgmlDType, device: &Device) -> Result<QTensor> {
    let dims = t.dims().to_vec();
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let cols = dims.last().copied().unwrap_or(0);
    let (block_values, block_bytes) = (ggml.block_size(), ggml.type_size());
    if !cols.is_multiple_of(block_values) || rows == 0 {
        return Err(ModelError::InvalidInput(format!(
            "quantizing {dims:?} to {ggml:?}: rows of {cols} values are not whole blocks of \
             {block_values}"
        )));
    }
    let threads = if rows * cols < PARALLEL_QUANTIZE_MIN {
        1
    } else {
        candle_core::utils::get_num_threads().clamp(1, rows)
    };
    let flat = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = flat.storage_and_layout();
    let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((lo, hi))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(ModelError::InvalidInput(format!(
            "quantizing {dims:?}: not a contiguous f32 host tensor"
        )));
    };
    let data = &data[lo..hi];
    let row_bytes = cols / block_values * block_bytes;
    let mut bytes = vec![0u8; rows * row_bytes];
    let per = rows.div_ceil(threads);
    let quantize = |x: &[f32], out: &mut [u8]| -> Result<()> {
        if ggml == GgmlDType::Q4K {
            return Ok(crate::quant::quantize_q4k(x, out)?);
        }
        let mut q = ggml.cpu_zeros(x.len());
        q.from_float(x);
        // SAFETY: `as_ptr` points at the `storage_size_in_bytes` bytes of `q`'s blocks, which
        // live until `q` is dropped at the end of this closure.
        let blocks = unsafe { std::slice::from_raw_parts(q.as_ptr(), q.storage_size_in_bytes()) };
        if blocks.len() != out.len() {
            return Err(ModelError::InvalidInput(format!(
                "quantizing {dims:?} to {ggml:?}: {} bytes for {} rows, expected {}",
                blocks.len(),
                x.len() / cols,
                out.len()
            )));
        }
        out.copy_from_slice(blocks);
        Ok(())
    };
    let parts = data
        .chunks(per * cols)
        .zip(bytes.chunks_mut(per * row_bytes));
    if threads == 1 {
        for (x, out) in parts {
            quantize(x, out)?;
        }
    } else {
        let quantize = &quantize;
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .map(|(x, out)| scope.spawn(move || quantize(x, out)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ModelError::InvalidInput(
                            "a quantization thread panicked".into(),
                        ))
                    })
                })
                .collect::<Result<Vec<()>>>()
        })?;
    }
    drop(storage);
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), device, ggml)?;
    Ok(QTensor::new(storage, dims)?)
}

/// The dtype a model on `device` under `policy` computes in: the weights' own float type (f16
/// or bf16) on a GPU, where candle's kernels multiply in it (half the activation and KV-cache
/// bytes, tensor-core matmuls, no conversion per matmul); f32 everywhere else: on the CPU,
/// whose kernels take f32 activations (and widen bf16 weights in registers), and under
/// quantized policies, whose GGML kernels take f32 input on every device.
pub fn default_activations(device: &Device, policy: QuantPolicy) -> DType {
    match policy.linear {
        StorageDtype::F16 | StorageDtype::Bf16 if !device.is_cpu() => float_dtype(policy.linear),
        _ => DType::F32,
    }
}

fn float_dtype(storage: StorageDtype) -> DType {
    match storage {
        StorageDtype::F16 => DType::F16,
        StorageDtype::Bf16 => DType::BF16,
        _ => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surveil_memory::roles::{FLOAT, LINEAR, TABLE_AND_LINEAR};

    /// `router.weight` stays float, `head.weight` is a tied table, everything else linear.
    struct Rules;

    impl TensorRules for Rules {
        fn roles(&self, name: &str, _shape: &[usize]) -> &'static [TensorRole] {
            match name {
                "layer.router.weight" => FLOAT,
                "head.weight" => TABLE_AND_LINEAR,
                _ => LINEAR,
            }
        }
    }

    #[test]
    fn a_view_with_rules_refuses_a_role_they_do_not_give() {
        let layout = vec![
            ("layer.router.weight".to_string(), vec![8, 64]),
            ("layer.up.weight".to_string(), vec![64, 64]),
            ("head.weight".to_string(), vec![32, 64]),
        ];
        let source = crate::load::weights::DummySource::new("rules", layout, DType::F32, 1);
        let plain = Weights::new(
            Box::new(source),
            Device::Cpu,
            QuantPolicy::four_bit(StorageDtype::F16),
        );
        // Without rules the call site decides.
        assert!(plain
            .pp("layer")
            .matmul_weight(&[8, 64], "router.weight")
            .is_ok());
        let w = plain.with_rules(Arc::new(Rules));
        let layer = w.pp("layer");
        let err = layer
            .matmul_weight(&[8, 64], "router.weight")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`layer.router.weight`")
                && err.contains("Linear")
                && err.contains("Float"),
            "{err}"
        );
        assert!(layer.get(&[8, 64], "router.weight").is_ok());
        assert!(matches!(
            layer.get(&[64, 64], "up.weight"),
            Err(ModelError::RoleMismatch { .. })
        ));
        assert!(layer.matmul_weight(&[64, 64], "up.weight").is_ok());
        // A tied table may be read in both of its roles.
        assert!(w.get_table(&[32, 64], "head.weight").is_ok());
        assert!(w.matmul_weight(&[32, 64], "head.weight").is_ok());
        // Refused reads make nothing resident; the report is shared with the plain view.
        assert_eq!(plain.report().tensors_loaded, 5);
    }

    /// f32 on the CPU under every policy (its kernels take f32); a choice made with
    /// `with_activations` holds for every view of the source; only float dtypes are taken.
    #[test]
    fn activations_are_f32_on_the_cpu_unless_chosen() {
        for storage in [
            StorageDtype::Bf16,
            StorageDtype::F16,
            StorageDtype::F32,
            StorageDtype::Q4K,
            StorageDtype::Q8_0,
        ] {
            let policy = QuantPolicy::for_storage(storage);
            assert_eq!(default_activations(&Device::Cpu, policy), DType::F32);
            assert_eq!(
                default_activations(&Device::Cpu, policy.on_cpu()),
                DType::F32
            );
        }
        let source = || {
            let layout = vec![("w".to_string(), vec![4, 32])];
            Box::new(crate::load::weights::DummySource::new(
                "a",
                layout,
                DType::F32,
                1,
            ))
        };
        let policy = QuantPolicy::for_storage(StorageDtype::Bf16);
        let w = Weights::new(source(), Device::Cpu, policy);
        assert_eq!(w.activation_dtype(), DType::F32);
        let w = w.with_activations(DType::BF16).unwrap();
        assert_eq!(w.pp("x").activation_dtype(), DType::BF16);
        for bad in [DType::F64, DType::U32, DType::U8] {
            let err = Weights::new(source(), Device::Cpu, policy)
                .with_activations(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("only f32, f16 and bf16"), "{bad:?}: {err}");
        }
    }

    /// Rows split over threads (a large weight) or not (a small one), with our Q4K quantizer
    /// or candle's Q4_0 and Q8_0: the blocks candle's quantizer writes for the whole tensor.
    #[test]
    fn parallel_quantization_gives_the_same_blocks() {
        for shape in [(1536, 1024), (3, 512)] {
            let t = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
            for ggml in [GgmlDType::Q4K, GgmlDType::Q4_0, GgmlDType::Q8_0] {
                let serial = QTensor::quantize(&t, ggml).unwrap();
                let parallel = quantize_rows_parallel(&t, ggml, &Device::Cpu).unwrap();
                assert_eq!(parallel.shape(), serial.shape());
                assert_eq!(
                    parallel.data().unwrap().as_ref(),
                    serial.data().unwrap().as_ref(),
                    "{ggml:?} {shape:?}"
                );
            }
        }
        let t = Tensor::zeros((2, 300), DType::F32, &Device::Cpu).unwrap();
        let err = quantize_rows_parallel(&t, GgmlDType::Q4K, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not whole blocks of 256"), "{err}");
    }
}
