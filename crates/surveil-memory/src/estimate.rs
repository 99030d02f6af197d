//! How many bytes a model will take on a device, known before a single weight is loaded.
//!
//! The weights part comes from the checkpoint's safetensors headers alone (read by
//! [`crate::checkpoint`], the reader the loader uses too) or from an in-memory list of
//! `(name, shape)` (dummy weights, an architecture's layout), a [`QuantPolicy`], and the roles
//! of the tensors ([`TensorRules`]: an architecture's own rules, which the loader checks every
//! tensor against, or [`GuessedRoles`] when the architecture is unknown). Every resident entry
//! is sized with `policy.storage_for(role, shape).bytes_for(shape)`, the very functions the
//! loader uses to allocate, so the estimate is exact for the weights.
//!
//! The runtime part ([`RuntimeAllowance`]) is an allowance, not an exact figure: the KV cache
//! for a context length, and the working set of one prefill step. Its formula is documented on
//! [`ModelDims::runtime_allowance`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointHeader;
use crate::quant::{QuantPolicy, StorageDtype, TensorRole};
use crate::roles::{GuessedRoles, TensorRules};
use crate::MemoryError;

/// How one tensor will be stored once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorPlan {
    /// The role it is kept in.
    pub role: TensorRole,
    /// The storage type the policy picks for it.
    pub storage: StorageDtype,
    /// Exact bytes in that storage type.
    pub bytes: u64,
}

impl TensorPlan {
    /// The plan for one tensor under `policy`, its role guessed from its name
    /// ([`TensorRole::guess`]).
    pub fn for_tensor(name: &str, shape: &[usize], policy: &QuantPolicy) -> TensorPlan {
        Self::with_role(TensorRole::guess(name, shape), shape, policy)
    }

    /// The plan for a tensor whose role the caller knows (an architecture's own layout).
    pub fn with_role(role: TensorRole, shape: &[usize], policy: &QuantPolicy) -> TensorPlan {
        let storage = policy.storage_for(role, shape);
        TensorPlan {
            role,
            storage,
            bytes: storage.bytes_for(shape),
        }
    }
}

/// Count and bytes of the tensors stored in one [`StorageDtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DtypeTotals {
    /// Number of tensors.
    pub tensors: usize,
    /// Their bytes once loaded.
    pub bytes: u64,
}

/// A linear weight the policy wanted quantized but had to keep in float, because its row
/// length does not divide into quantization blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatFallback {
    /// Tensor name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The float type it is kept in.
    pub storage: StorageDtype,
}

/// What a model will take on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    /// The policy the estimate was made for.
    pub policy: QuantPolicy,
    /// Bytes of all weights once loaded under `policy`.
    pub total_bytes: u64,
    /// Bytes of the weights in the checkpoint files (`None` for an in-memory tensor list).
    pub stored_bytes: Option<u64>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Number of entries kept as linear weights (role [`TensorRole::Linear`]).
    pub linear_count: usize,
    /// Count and bytes per storage type (types with no tensor are absent).
    pub by_dtype: BTreeMap<StorageDtype, DtypeTotals>,
    /// Linear weights that fell back to float, in name order.
    pub float_fallbacks: Vec<FloatFallback>,
    /// KV cache and activation allowance, when one was added with [`Self::with_runtime`].
    pub runtime: Option<RuntimeAllowance>,
}

impl Estimate {
    /// Adds the runtime allowance (replacing any earlier one).
    pub fn with_runtime(mut self, runtime: RuntimeAllowance) -> Estimate {
        self.runtime = Some(runtime);
        self
    }

    /// Weights plus the runtime allowance: what the fit check compares with free memory.
    pub fn required_bytes(&self) -> u64 {
        self.total_bytes
            .saturating_add(self.runtime.map_or(0, |r| r.total_bytes))
    }

    /// Bytes stored as `dtype` (0 when none).
    pub fn bytes_in(&self, dtype: StorageDtype) -> u64 {
        self.by_dtype.get(&dtype).map_or(0, |t| t.bytes)
    }
}

/// Estimates a checkpoint from its headers ([`CheckpointHeader::read`]): a `.safetensors` file,
/// a `model.safetensors.index.json`, or a directory holding either, with roles guessed from the
/// tensor names ([`GuessedRoles`]). Reads no tensor data.
///
/// Errors: those of [`CheckpointHeader::read`], naming the file and the tensor or `weight_map`
/// key at fault.
///
/// ```no_run
/// use std::path::Path;
/// use surveil_memory::{estimate_checkpoint, fits, Device, QuantPolicy, StorageDtype};
///
/// let dir = Path::new("/models/Qwen2-VL-2B-Instruct");
/// let estimate = estimate_checkpoint(dir, &QuantPolicy::four_bit(StorageDtype::Bf16))?;
/// println!("{} bytes once loaded in 4 bits", estimate.total_bytes);
/// let fit = fits(&estimate, Device::Cpu);
/// if !fit.fits() {
///     eprintln!("{fit}"); // "needs 1.2 GiB, 0.8 GiB available on cpu; try ..."
/// }
/// # Ok::<(), surveil_memory::MemoryError>(())
/// ```
pub fn estimate_checkpoint(path: &Path, policy: &QuantPolicy) -> Result<Estimate, MemoryError> {
    let header = CheckpointHeader::read(path)?;
    Ok(estimate_header(&header, policy))
}

/// Estimates already-read checkpoint headers.
pub fn estimate_header(header: &CheckpointHeader, policy: &QuantPolicy) -> Estimate {
    let mut estimate = estimate_tensors(
        header
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice())),
        policy,
    );
    estimate.stored_bytes = Some(header.stored_bytes());
    estimate
}

/// Estimates an in-memory list of `(name, shape)`, e.g. the tensors of dummy weights, with roles
/// guessed from the names ([`GuessedRoles`]).
pub fn estimate_tensors<'a, I>(tensors: I, policy: &QuantPolicy) -> Estimate
where
    I: IntoIterator<Item = (&'a str, &'a [usize])>,
{
    estimate_with_rules(tensors, &GuessedRoles, policy)
}

/// Estimates an in-memory list of `(name, shape)` under an architecture's `rules`: every tensor
/// once per role the rules give it (a tied table that is also the output head twice).
pub fn estimate_with_rules<'a, I>(
    tensors: I,
    rules: &dyn TensorRules,
    policy: &QuantPolicy,
) -> Estimate
where
    I: IntoIterator<Item = (&'a str, &'a [usize])>,
{
    estimate_with_roles(
        tensors.into_iter().flat_map(|(name, shape)| {
            rules
                .roles(name, shape)
                .iter()
                .map(move |role| (name, shape, *role))
        }),
        policy,
    )
}

/// Estimates `(name, shape, role)` triples: what an architecture declares it will make
/// resident, roles included (e.g. a tied token table stored once as a quantized matrix).
pub fn estimate_with_roles<'a, I>(tensors: I, policy: &QuantPolicy) -> Estimate
where
    I: IntoIterator<Item = (&'a str, &'a [usize], TensorRole)>,
{
    let mut estimate = Estimate {
        policy: *policy,
        total_bytes: 0,
        stored_bytes: None,
        tensor_count: 0,
        linear_count: 0,
        by_dtype: BTreeMap::new(),
        float_fallbacks: Vec::new(),
        runtime: None,
    };
    for (name, shape, role) in tensors {
        let plan = TensorPlan::with_role(role, shape, policy);
        estimate.tensor_count += 1;
        estimate.total_bytes = estimate.total_bytes.saturating_add(plan.bytes);
        let totals = estimate.by_dtype.entry(plan.storage).or_default();
        totals.tensors += 1;
        totals.bytes = totals.bytes.saturating_add(plan.bytes);
        if plan.role == TensorRole::Linear {
            estimate.linear_count += 1;
            if policy.linear.is_quantized() && !plan.storage.is_quantized() {
                estimate.float_fallbacks.push(FloatFallback {
                    name: name.to_string(),
                    shape: shape.to_vec(),
                    storage: plan.storage,
                });
            }
        }
    }
    estimate.float_fallbacks.sort_by(|a, b| a.name.cmp(&b.name));
    estimate
}

/// The few dimensions of a decoder that size its KV cache and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads (fewer than attention heads with grouped-query attention).
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Hidden size.
    pub hidden: usize,
}

/// Memory for running the model, on top of its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeAllowance {
    /// The context length (prompt + image tokens + generated tokens) it was computed for.
    pub context_len: usize,
    /// KV cache for the whole context.
    pub kv_cache_bytes: u64,
    /// Hidden-state working set of one prefill layer.
    pub activation_bytes: u64,
    /// Attention score matrices of one prefill layer.
    pub attention_scores_bytes: u64,
    /// Sum of the three.
    pub total_bytes: u64,
}

/// Hidden-size-wide f32 vectors per token alive at once in one prefill layer (see
/// [`ModelDims::runtime_allowance`]).
pub const ACTIVATION_WIDTHS: u64 = 16;

impl ModelDims {
    /// Attention heads, taken as `hidden / head_dim` (true for the supported decoders).
    pub fn attention_heads(&self) -> usize {
        self.hidden.checked_div(self.head_dim).unwrap_or(0)
    }

    /// The allowance for a context of `context_len` tokens with the KV cache kept in
    /// `kv_dtype` (normally the model's float type). With `T = context_len`:
    ///
    /// - KV cache: `2 (K and V) × layers × kv_heads × head_dim × T` elements of `kv_dtype`
    ///   (sized with [`StorageDtype::bytes_for`]).
    /// - Activations: `ACTIVATION_WIDTHS (16) × T × hidden × 4` bytes: the f32 working set of
    ///   one layer during prefill, counted as hidden state, residual, norm output, q, k, v and
    ///   attention output (7 widths, k and v at most one each) plus the MLP's gate, up and their
    ///   product at about three widths each (9). Layers run one after the other, so one layer's
    ///   set is alive at a time.
    /// - Attention scores: `2 × heads × T² × 4` bytes with `heads = hidden / head_dim`: the
    ///   f32 score matrix and its softmax, which non-fused attention materialises for one layer.
    ///
    /// Decoding one token at a time needs far less than prefill, so this is the peak. Vision
    /// encoder activations are not included: count image tokens in `context_len`.
    pub fn runtime_allowance(
        &self,
        context_len: usize,
        kv_dtype: StorageDtype,
    ) -> RuntimeAllowance {
        let t = context_len as u64;
        let kv_cache_bytes =
            kv_dtype.bytes_for(&[2, self.layers, self.kv_heads, context_len, self.head_dim]);
        let activation_bytes = ACTIVATION_WIDTHS
            .saturating_mul(t)
            .saturating_mul(self.hidden as u64)
            .saturating_mul(4);
        let attention_scores_bytes = 2u64
            .saturating_mul(self.attention_heads() as u64)
            .saturating_mul(t)
            .saturating_mul(t)
            .saturating_mul(4);
        RuntimeAllowance {
            context_len,
            kv_cache_bytes,
            activation_bytes,
            attention_scores_bytes,
            total_bytes: kv_cache_bytes
                .saturating_add(activation_bytes)
                .saturating_add(attention_scores_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_list_counts_and_fallbacks() {
        let policy = QuantPolicy::four_bit(StorageDtype::F16);
        let tensors: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![1000, 64]),
            ("model.layers.0.mlp.up_proj.weight".into(), vec![256, 512]),
            (
                "model.layers.0.self_attn.o_proj.weight".into(),
                vec![64, 96],
            ),
            ("model.layers.0.odd.weight".into(), vec![64, 100]),
            ("model.layers.0.input_layernorm.weight".into(), vec![64]),
        ];
        let est = estimate_tensors(
            tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            &policy,
        );
        // Independent arithmetic: f16 = 2 B/elem, q4k = 144 B/256, q4_0 = 18 B/32, f32 = 4.
        let embed = 1000 * 64 * 2;
        let up = 256 * 512 / 256 * 144;
        let o = 64 * 96 / 32 * 18;
        let odd = 64 * 100 * 2;
        let norm = 64 * 4;
        assert_eq!(est.total_bytes, embed + up + o + odd + norm);
        assert_eq!(est.tensor_count, 5);
        assert_eq!(est.linear_count, 3);
        assert_eq!(est.bytes_in(StorageDtype::Q4K), up);
        assert_eq!(est.bytes_in(StorageDtype::Q4_0), o);
        assert_eq!(est.bytes_in(StorageDtype::F16), embed + odd);
        assert_eq!(est.by_dtype[&StorageDtype::F16].tensors, 2);
        assert_eq!(est.bytes_in(StorageDtype::F32), norm);
        assert_eq!(est.stored_bytes, None);
        assert_eq!(
            est.float_fallbacks,
            vec![FloatFallback {
                name: "model.layers.0.odd.weight".into(),
                shape: vec![64, 100],
                storage: StorageDtype::F16,
            }]
        );
    }

    #[test]
    fn unquantized_policy_has_no_fallbacks() {
        let est = estimate_tensors(
            [("a.weight", &[64usize, 100][..])],
            &QuantPolicy::unquantized(StorageDtype::Bf16),
        );
        assert!(est.float_fallbacks.is_empty());
        assert_eq!(est.total_bytes, 64 * 100 * 2);
    }

    #[test]
    fn runtime_allowance_formula() {
        // Qwen2-VL-2B decoder: 28 layers, 2 KV heads of 128, hidden 1536 (12 heads).
        let dims = ModelDims {
            layers: 28,
            kv_heads: 2,
            head_dim: 128,
            hidden: 1536,
        };
        let r = dims.runtime_allowance(4096, StorageDtype::F16);
        assert_eq!(r.kv_cache_bytes, 2 * 28 * 2 * 128 * 4096 * 2);
        assert_eq!(r.kv_cache_bytes, 112 << 20);
        assert_eq!(r.activation_bytes, 16 * 4096 * 1536 * 4);
        assert_eq!(r.attention_scores_bytes, 2 * 12 * 4096 * 4096 * 4);
        assert_eq!(
            r.total_bytes,
            r.kv_cache_bytes + r.activation_bytes + r.attention_scores_bytes
        );
        let est = estimate_tensors(
            [("x.weight", &[256usize, 256][..])],
            &QuantPolicy::four_bit(StorageDtype::F16),
        )
        .with_runtime(r);
        // 256 rows of one Q4K block (144 bytes) each.
        assert_eq!(est.required_bytes(), 256 * 144 + r.total_bytes);
    }
}
