//! [`Weights`]: the prefix-scoped view architectures load through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use surveil_memory::{QuantPolicy, StorageDtype, TensorRole, TensorRules};

use super::TensorSource;
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
        Self {
            inner: Arc::new(Inner {
                source,
                device,
                policy,
                report: Mutex::new(LoadReport::default()),
                progress: None,
                total_tensors,
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
        Self {
            inner: Arc::new(Inner {
                source,
                device,
                policy,
                report: Mutex::new(LoadReport::default()),
                progress: Some(progress),
                total_tensors,
            }),
            prefix: String::new(),
            rules: None,
        }
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

    /// A matmul weight `[out, in]` stored as the policy says (quantized when rows allow).
    pub fn matmul_weight(&self, shape: &[usize], name: &str) -> Result<QMatMul> {
        let storage = self.inner.policy.storage_for(TensorRole::Linear, shape);
        let fell_back = self.inner.policy.linear.is_quantized() && !storage.is_quantized();
        let (full, t) = self.fetch(name, shape, TensorRole::Linear)?;
        let q = quantize_onto(&t, storage, &self.inner.device)?;
        drop(t);
        self.record(&full, storage, shape, fell_back);
        Ok(q)
    }
}

/// Convert one float tensor to `storage` on `device`.
pub(crate) fn quantize_onto(t: &Tensor, storage: StorageDtype, device: &Device) -> Result<QMatMul> {
    Ok(match storage {
        StorageDtype::F32 => QMatMul::Tensor(t.to_dtype(DType::F32)?.to_device(device)?),
        StorageDtype::F16 => QMatMul::TensorF16(t.to_dtype(DType::F16)?.to_device(device)?),
        StorageDtype::Bf16 => QMatMul::Tensor(t.to_dtype(DType::BF16)?.to_device(device)?),
        q => {
            let ggml = match q {
                StorageDtype::Q8_0 => GgmlDType::Q8_0,
                StorageDtype::Q4_0 => GgmlDType::Q4_0,
                _ => GgmlDType::Q4K,
            };
            let qt = if device.is_cpu() {
                quantize_rows_parallel(t, ggml)?
            } else {
                QTensor::quantize_onto(t, ggml, device)?
            };
            QMatMul::QTensor(Arc::new(qt))
        }
    })
}

/// Below this many weights a tensor is quantized on the calling thread only.
const PARALLEL_QUANTIZE_MIN: usize = 1 << 20;

/// Quantize a `[rows, cols]` tensor on the CPU with its rows split over candle's threads.
/// Quantization blocks never cross a row, so the blocks of consecutive row ranges, laid end to
/// end, are exactly the blocks of the whole tensor.
fn quantize_rows_parallel(t: &Tensor, ggml: GgmlDType) -> Result<QTensor> {
    let dims = t.dims().to_vec();
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let cols = dims.last().copied().unwrap_or(0);
    let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
    if threads == 1 || rows * cols < PARALLEL_QUANTIZE_MIN {
        return Ok(QTensor::quantize(t, ggml)?);
    }
    let flat = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = flat.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        return Ok(QTensor::quantize(t, ggml)?);
    };
    let Some((lo, hi)) = layout.contiguous_offsets() else {
        return Ok(QTensor::quantize(t, ggml)?);
    };
    let data = &data[lo..hi];
    let chunk = rows.div_ceil(threads) * cols;
    let parts: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = data
            .chunks(chunk)
            .map(|rows| {
                scope.spawn(move || {
                    let mut q = ggml.cpu_zeros(rows.len());
                    q.from_float(rows);
                    // SAFETY: `as_ptr` points at the `storage_size_in_bytes` bytes of `q`'s
                    // blocks, which live until `q` is dropped at the end of this closure.
                    unsafe { std::slice::from_raw_parts(q.as_ptr(), q.storage_size_in_bytes()) }
                        .to_vec()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    drop(storage);
    let expected = rows * cols / ggml.block_size() * ggml.type_size();
    let mut bytes = Vec::with_capacity(expected);
    for part in parts {
        bytes.extend_from_slice(&part);
    }
    if bytes.len() != expected {
        return Err(ModelError::InvalidInput(format!(
            "quantizing {dims:?} to {ggml:?}: {} bytes, expected {expected}",
            bytes.len()
        )));
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, ggml)?;
    Ok(QTensor::new(storage, dims)?)
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

    #[test]
    fn parallel_quantization_gives_the_same_blocks() {
        let t = Tensor::randn(0f32, 1.0, (1536, 1024), &Device::Cpu).unwrap();
        for ggml in [GgmlDType::Q4K, GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let serial = QTensor::quantize(&t, ggml).unwrap();
            let parallel = quantize_rows_parallel(&t, ggml).unwrap();
            assert_eq!(parallel.shape(), serial.shape());
            assert_eq!(
                parallel.data().unwrap().as_ref(),
                serial.data().unwrap().as_ref(),
                "{ggml:?}"
            );
        }
    }
}
