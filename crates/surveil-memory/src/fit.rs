//! Will it fit? Compares an [`Estimate`] with the memory a device has free right now, and when
//! it does not fit says what to change: "needs 9.1 GiB, 6.0 GiB available on cpu; try
//! load_in_4bit=true, a smaller model (qwen2-vl-2b-instruct), or device=cuda".
//!
//! Free memory on the CPU is [`HostMemory::effective_available_bytes`] (`MemAvailable`, or the
//! cgroup's room when lower); on CUDA it is the driver's free bytes
//! ([`crate::gpu::device_free_bytes`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::estimate::Estimate;
use crate::system::HostMemory;
use crate::units::format_size;
use crate::MemoryError;

/// Where a model is loaded: the configuration's device (`vlm.device`), re-exported. Memory is
/// measured on a concrete device, `cpu` or `cuda:N`; `auto` is decided by the loader first.
pub use surveil_config::Device;

/// Bytes a new allocation can use on `device` right now.
///
/// Errors: [`MemoryError::Unavailable`] when the driver cannot tell (CUDA without the `cuda`
/// feature, no such device), or for `auto`, which is not a device until the loader picks one.
pub fn available_bytes(device: Device) -> Result<u64, MemoryError> {
    match device {
        Device::Cpu => Ok(HostMemory::read()?.effective_available_bytes()),
        Device::Cuda(ordinal) => crate::gpu::device_free_bytes(ordinal)
            .map(|(free, _total)| free)
            .map_err(|reason| MemoryError::Unavailable {
                what: format!("free memory on {device}"),
                reason,
            }),
        Device::Auto => Err(MemoryError::Unavailable {
            what: "free memory on auto".to_string(),
            reason: "`auto` names no device; check cpu or cuda:N".to_string(),
        }),
    }
}

/// The answer of a fit check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fit", rename_all = "snake_case")]
pub enum Fit {
    /// There is room.
    Fits {
        /// The device checked.
        device: Device,
        /// [`Estimate::required_bytes`].
        required_bytes: u64,
        /// Free bytes on the device.
        available_bytes: u64,
    },
    /// There is not; `message` says by how much and what to try.
    DoesNotFit {
        /// The device checked.
        device: Device,
        /// [`Estimate::required_bytes`].
        required_bytes: u64,
        /// Free bytes on the device.
        available_bytes: u64,
        /// "needs 9.1 GiB, 6.0 GiB available on cpu; try ...".
        message: String,
    },
    /// Free memory on the device could not be measured.
    Unknown {
        /// The device checked.
        device: Device,
        /// Why not.
        reason: String,
    },
}

impl Fit {
    /// True only for [`Fit::Fits`].
    pub fn fits(&self) -> bool {
        matches!(self, Fit::Fits { .. })
    }

    /// One line for logs and errors.
    pub fn message(&self) -> String {
        match self {
            Fit::Fits {
                device,
                required_bytes,
                available_bytes,
            } => format!(
                "fits: needs {}, {} available on {device}",
                format_size(*required_bytes),
                format_size(*available_bytes)
            ),
            Fit::DoesNotFit { message, .. } => message.clone(),
            Fit::Unknown { device, reason } => {
                format!("cannot tell whether it fits on {device}: {reason}")
            }
        }
    }
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// What the caller knows that the suggestions of a failed fit check can use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FitHints {
    /// A smaller model to suggest (e.g. the first fallback that is smaller).
    pub smaller_model: Option<String>,
    /// Another device known to have room for the estimate.
    pub other_device: Option<Device>,
}

/// Checks `estimate` against the free memory of `device` now. When it does not fit, the
/// suggestions include `load_in_4bit=true` (if the estimate is not quantized) and the other
/// device kind if it has room (checking CUDA creates and releases a context, once).
pub fn fits(estimate: &Estimate, device: Device) -> Fit {
    fits_with_hints(estimate, device, FitHints::default())
}

/// [`fits`] with caller-provided hints; a missing `other_device` hint is filled in by checking
/// the other device kind (`cuda:0` for `cpu`, `cpu` for CUDA) when the estimate does not fit.
pub fn fits_with_hints(estimate: &Estimate, device: Device, mut hints: FitHints) -> Fit {
    let available = match available_bytes(device) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Fit::Unknown {
                device,
                reason: e.to_string(),
            }
        }
    };
    let required = estimate.required_bytes();
    if required > available && hints.other_device.is_none() {
        let other = match device {
            Device::Cpu => Some(Device::Cuda(0)),
            Device::Cuda(_) => Some(Device::Cpu),
            Device::Auto => None,
        };
        if let Some(other) = other {
            match available_bytes(other) {
                Ok(room) if room >= required => hints.other_device = Some(other),
                Ok(_) => {}
                Err(e) => tracing::debug!("not suggesting {other}: {e}"),
            }
        }
    }
    let fit = check_fit(estimate, device, available, &hints);
    tracing::debug!(%device, "{}", fit.message());
    fit
}

/// The pure comparison behind [`fits`]: `estimate` against `available` bytes on `device`.
pub fn check_fit(estimate: &Estimate, device: Device, available: u64, hints: &FitHints) -> Fit {
    let required = estimate.required_bytes();
    if required <= available {
        return Fit::Fits {
            device,
            required_bytes: required,
            available_bytes: available,
        };
    }
    let mut suggestions = Vec::new();
    if !estimate.policy.linear.is_quantized() {
        suggestions.push("load_in_4bit=true".to_string());
    }
    if let Some(model) = &hints.smaller_model {
        suggestions.push(format!("a smaller model ({model})"));
    }
    if let Some(other) = hints.other_device.filter(|d| *d != device) {
        suggestions.push(format!("device={}", other.config_value()));
    }
    let advice = match suggestions.as_slice() {
        [] => "free memory or choose a smaller model".to_string(),
        [one] => format!("try {one}"),
        [first @ .., last] => format!("try {}, or {last}", first.join(", ")),
    };
    Fit::DoesNotFit {
        device,
        required_bytes: required,
        available_bytes: available,
        message: format!(
            "needs {}, {} available on {device}; {advice}",
            format_size(required),
            format_size(available)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::estimate_tensors;
    use crate::quant::{QuantPolicy, StorageDtype};
    use crate::units::GIB;

    fn estimate_of(bytes_f16: u64, policy: QuantPolicy) -> Estimate {
        // One token embedding table (kept in the policy float type, f16 here) of the wanted size.
        let rows = (bytes_f16 / 2 / 1024) as usize;
        let shape = [rows, 1024];
        estimate_tensors([("model.embed_tokens.weight", &shape[..])], &policy)
    }

    #[test]
    fn message_lists_every_suggestion() {
        let est = estimate_of(
            9 * GIB + GIB / 10 + 1024 * 2,
            QuantPolicy::unquantized(StorageDtype::F16),
        );
        let hints = FitHints {
            smaller_model: Some("qwen2-vl-2b-instruct".into()),
            other_device: Some(Device::Cuda(0)),
        };
        let fit = check_fit(&est, Device::Cpu, 6 * GIB, &hints);
        assert!(!fit.fits());
        assert_eq!(
            fit.message(),
            "needs 9.1 GiB, 6.0 GiB available on cpu; try load_in_4bit=true, \
             a smaller model (qwen2-vl-2b-instruct), or device=cuda"
        );
    }

    #[test]
    fn quantized_estimate_does_not_suggest_4bit() {
        let est = estimate_of(3 * GIB, QuantPolicy::four_bit(StorageDtype::F16));
        let fit = check_fit(
            &est,
            Device::Cuda(1),
            2 * GIB,
            &FitHints {
                smaller_model: None,
                other_device: Some(Device::Cpu),
            },
        );
        assert_eq!(
            fit.message(),
            "needs 3.0 GiB, 2.0 GiB available on cuda:1; try device=cpu"
        );
        let bare = check_fit(&est, Device::Cpu, GIB, &FitHints::default());
        assert_eq!(
            bare.message(),
            "needs 3.0 GiB, 1.0 GiB available on cpu; free memory or choose a smaller model"
        );
    }

    #[test]
    fn fits_when_required_le_available() {
        let est = estimate_of(GIB, QuantPolicy::unquantized(StorageDtype::F16));
        let fit = check_fit(&est, Device::Cpu, GIB, &FitHints::default());
        assert!(fit.fits());
        assert_eq!(
            fit.message(),
            "fits: needs 1.0 GiB, 1.0 GiB available on cpu"
        );
    }

    #[test]
    fn device_parsing() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("CUDA".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:2".parse::<Device>(), Ok(Device::Cuda(2)));
        assert!("tpu"
            .parse::<Device>()
            .unwrap_err()
            .contains("allowed: cpu, cuda, cuda:N"));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(Device::Cuda(0).config_value(), "cuda");
    }

    #[test]
    fn auto_is_not_a_device_to_measure() {
        let est = estimate_of(1 << 20, QuantPolicy::unquantized(StorageDtype::F16));
        let fit = fits(&est, Device::Auto);
        assert!(matches!(fit, Fit::Unknown { .. }), "{fit}");
        assert!(fit.message().contains("check cpu or cuda:N"), "{fit}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn real_cpu_check_against_machine_memory() {
        let tiny = estimate_of(1 << 20, QuantPolicy::unquantized(StorageDtype::F16));
        assert!(fits(&tiny, Device::Cpu).fits());
        // 1 PiB does not fit anywhere.
        let huge = Estimate {
            total_bytes: 1 << 50,
            ..tiny
        };
        let fit = fits(&huge, Device::Cpu);
        assert!(matches!(fit, Fit::DoesNotFit { .. }), "{fit}");
        assert!(fit.message().starts_with("needs 1048576.0 GiB"), "{fit}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_unknown_not_a_panic() {
        let est = estimate_of(1 << 20, QuantPolicy::unquantized(StorageDtype::F16));
        let fit = fits(&est, Device::Cuda(0));
        assert!(matches!(fit, Fit::Unknown { .. }));
        assert!(fit.message().contains("cuda"), "{fit}");
    }
}
