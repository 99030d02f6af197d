//! GPU memory: the CUDA driver's view of each device, plus the bytes our own model tensors
//! occupy there.
//!
//! Two different figures, deliberately kept apart:
//! - **reserved** (driver view): `total − free` from `cuMemGetInfo`, i.e. everything in use on
//!   the device: our CUDA context, caching-allocator pools, our tensors, *and other processes*.
//! - **allocated** (our tensors): what the model loader registered with [`GpuAllocation`]. The
//!   driver cannot tell us this; the loader knows it exactly.
//!
//! The driver is reached through `cudarc` with dynamic loading (feature `cuda`), so the crate
//! builds and runs on machines without CUDA. Before anything calls into cudarc, `libcuda.so.1`
//! is probed with `dlopen` and cudarc's own library load is guarded, because cudarc panics when
//! the library or one of its symbols is missing. Without the feature, without a driver or
//! without a device, [`GpuMemory::query`] returns [`GpuMemory::Unavailable`] with the reason;
//! it never panics.
//!
//! [`GpuMemory::query`] is cheap and never creates a CUDA context: on a device where this
//! process has no context yet, the free figure is `None` (a context costs hundreds of MB of
//! device memory and ~100 ms, which a per-frame probe must not spend). The fit check, which
//! runs once before a load, uses [`device_free_bytes`], which does create (and release) the
//! device's primary context when needed.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The memory of one CUDA device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDeviceMemory {
    /// CUDA device ordinal (as in `cuda:0`).
    pub ordinal: usize,
    /// Device name as the driver reports it.
    pub name: String,
    /// Total device memory.
    pub total_bytes: u64,
    /// Free device memory (driver view), `None` when this process has no CUDA context on the
    /// device yet.
    pub free_bytes: Option<u64>,
    /// `total − free`: memory in use on the device by anyone (driver view), `None` when the
    /// free figure is unknown.
    pub reserved_bytes: Option<u64>,
    /// Bytes of our own tensors on this device, as registered with [`GpuAllocation`].
    pub allocated_bytes: u64,
    /// The framework's pool: bytes the device's default memory pool, from which the tensor
    /// backend allocates (stream-ordered `cuMemAllocAsync`), holds from the driver
    /// (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`); `None` when this process has no CUDA context
    /// on the device or the driver has no pools.
    #[serde(default)]
    pub pool_reserved_bytes: Option<u64>,
}

/// GPU memory of this process's view of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum GpuMemory {
    /// The driver answered; one entry per visible device.
    Available(Vec<GpuDeviceMemory>),
    /// No GPU figures: the reason (feature off, no driver library, no device, driver error).
    Unavailable(String),
}

impl GpuMemory {
    /// Asks the driver about every visible device. Never creates a CUDA context and never
    /// panics; see the module docs.
    pub fn query() -> GpuMemory {
        match driver::devices() {
            Ok(devices) if devices.is_empty() => {
                GpuMemory::Unavailable("the CUDA driver reports no devices".to_string())
            }
            Ok(devices) => GpuMemory::Available(devices),
            Err(reason) => GpuMemory::Unavailable(reason),
        }
    }

    /// Whether the driver answered.
    pub fn is_available(&self) -> bool {
        matches!(self, GpuMemory::Available(_))
    }

    /// The devices, empty when unavailable.
    pub fn devices(&self) -> &[GpuDeviceMemory] {
        match self {
            GpuMemory::Available(devices) => devices,
            GpuMemory::Unavailable(_) => &[],
        }
    }

    /// One device by ordinal.
    pub fn device(&self, ordinal: usize) -> Option<&GpuDeviceMemory> {
        self.devices().iter().find(|d| d.ordinal == ordinal)
    }

    /// Sum of our registered tensor bytes over all devices; `None` when unavailable.
    pub fn allocated_bytes(&self) -> Option<u64> {
        match self {
            GpuMemory::Available(devices) => Some(devices.iter().map(|d| d.allocated_bytes).sum()),
            GpuMemory::Unavailable(_) => None,
        }
    }

    /// Sum of the driver's `total − free` over the devices where it is known (devices without
    /// a context in this process are skipped); `None` when unavailable or known on no device.
    pub fn reserved_bytes(&self) -> Option<u64> {
        sum_known(self.devices().iter().map(|d| d.reserved_bytes))
    }

    /// Sum of the driver's free figure over the devices where it is known; `None` when
    /// unavailable or known on no device.
    pub fn free_bytes(&self) -> Option<u64> {
        sum_known(self.devices().iter().map(|d| d.free_bytes))
    }

    /// Sum of [`GpuDeviceMemory::pool_reserved_bytes`] over the devices where it is known;
    /// `None` when unavailable or known on no device.
    pub fn pool_reserved_bytes(&self) -> Option<u64> {
        sum_known(self.devices().iter().map(|d| d.pool_reserved_bytes))
    }

    /// Why there are no figures, when there are none.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match self {
            GpuMemory::Available(_) => None,
            GpuMemory::Unavailable(reason) => Some(reason),
        }
    }
}

/// The sum of the known figures, `None` when none is known.
fn sum_known(figures: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    figures
        .flatten()
        .fold(None, |sum, b| Some(sum.unwrap_or(0) + b))
}

/// Free and total bytes of one device, creating (and afterwards releasing) the device's primary
/// CUDA context if this process has none. For the one-off fit check before a load; too slow for
/// per-frame use (see [`GpuMemory::query`]).
///
/// Returns `(free, total)`, or the reason the device cannot be asked.
pub fn device_free_bytes(ordinal: usize) -> Result<(u64, u64), String> {
    driver::free_and_total(ordinal)
}

/// Whether a CUDA device can be opened by this build: the driver loads and initialises, and the
/// libraries the tensor backend loads at run time (cuBLAS, cuBLASLt, cuRAND) are on the library
/// path. Cheap after the first call; creates no context.
///
/// Returns the reason when it cannot (built without `cuda`, no driver, a library missing, with
/// the names searched), so callers refuse or fall back to the CPU instead of letting the
/// backend's loader panic.
pub fn cuda_usable() -> Result<(), String> {
    driver::usable()
}

/// What [`gpu_synchronize_and_trim`] did on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTrim {
    /// Device ordinal.
    pub ordinal: usize,
    /// `None` on success, else what failed.
    pub error: Option<String>,
}

/// Waits for all work on every device where this process has a context, then returns the
/// unused memory of the device's default stream-ordered pool to the driver
/// (`cuMemPoolTrimTo(pool, 0)`). Devices without a context are left alone (nothing of ours is
/// there). `Err` with the reason when the driver cannot be used at all.
pub fn gpu_synchronize_and_trim() -> Result<Vec<GpuTrim>, String> {
    driver::synchronize_and_trim()
}

/// Bytes of our tensors registered on each device, indexed by ordinal.
static ALLOCATED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn with_allocated<T>(f: impl FnOnce(&mut Vec<u64>) -> T) -> T {
    // A panic while holding this lock cannot leave the counters half-updated (each update is
    // one assignment), so a poisoned lock is still consistent.
    let mut guard = ALLOCATED.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// Bytes of our tensors currently registered on device `ordinal`.
pub fn gpu_allocated_bytes(ordinal: usize) -> u64 {
    with_allocated(|a| a.get(ordinal).copied().unwrap_or(0))
}

/// A registration of our own tensor bytes on a GPU, counted in
/// [`GpuDeviceMemory::allocated_bytes`] for as long as it lives.
///
/// The loader creates one per loaded model (or per tensor) and keeps it next to the tensors,
/// so dropping the model drops the registration: the figure cannot outlive the memory.
#[derive(Debug)]
#[must_use = "the bytes are only counted while the registration is alive"]
pub struct GpuAllocation {
    ordinal: usize,
    bytes: u64,
}

impl GpuAllocation {
    /// Registers `bytes` on device `ordinal`.
    pub fn new(ordinal: usize, bytes: u64) -> GpuAllocation {
        with_allocated(|a| {
            if a.len() <= ordinal {
                a.resize(ordinal + 1, 0);
            }
            a[ordinal] = a[ordinal].saturating_add(bytes);
        });
        GpuAllocation { ordinal, bytes }
    }

    /// Adds `bytes` to this registration (e.g. one more tensor loaded).
    pub fn grow(&mut self, bytes: u64) {
        with_allocated(|a| {
            if let Some(slot) = a.get_mut(self.ordinal) {
                *slot = slot.saturating_add(bytes);
            }
        });
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// The registered bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

impl Drop for GpuAllocation {
    fn drop(&mut self) {
        with_allocated(|a| {
            if let Some(slot) = a.get_mut(self.ordinal) {
                *slot = slot.saturating_sub(self.bytes);
            }
        });
    }
}

#[cfg(not(feature = "cuda"))]
mod driver {
    use super::{GpuDeviceMemory, GpuTrim};

    const REASON: &str = "built without the `cuda` feature";

    pub(super) fn devices() -> Result<Vec<GpuDeviceMemory>, String> {
        Err(REASON.to_string())
    }

    pub(super) fn free_and_total(_ordinal: usize) -> Result<(u64, u64), String> {
        Err(REASON.to_string())
    }

    pub(super) fn synchronize_and_trim() -> Result<Vec<GpuTrim>, String> {
        Err(REASON.to_string())
    }

    pub(super) fn usable() -> Result<(), String> {
        Err(REASON.to_string())
    }
}

#[cfg(feature = "cuda")]
mod driver {
    use std::ffi::c_int;
    use std::sync::OnceLock;

    use cudarc::driver::result::{self, DriverError};
    use cudarc::driver::sys;

    use super::{gpu_allocated_bytes, GpuDeviceMemory, GpuTrim};

    /// The outcome of loading and initialising the driver, decided once per process.
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();

    fn ensure_driver() -> Result<(), String> {
        DRIVER.get_or_init(load_driver).clone()
    }

    fn load_driver() -> Result<(), String> {
        probe_library()?;
        // cudarc resolves every driver symbol it knows when it first loads the library and
        // panics when one is missing (a driver older than the CUDA version cudarc was built
        // for). Contain that here instead of letting it take the process down.
        // SAFETY: loading libcuda has no preconditions; cudarc keeps the handle for the
        // process lifetime.
        let loaded = std::panic::catch_unwind(|| unsafe {
            let _ = sys::culib();
        });
        if loaded.is_err() {
            return Err(
                "cudarc could not load the CUDA driver library (a symbol is missing: the driver \
                 is older than the CUDA version this build targets)"
                    .to_string(),
            );
        }
        result::init().map_err(|e| format!("cuInit failed: {}", describe(e)))?;
        tracing::debug!("CUDA driver initialised");
        Ok(())
    }

    /// Checks with `dlopen` that the driver library exists before cudarc is allowed near it.
    fn probe_library() -> Result<(), String> {
        dlopen_any(&["libcuda.so.1", "libcuda.so"])
            .map_err(|e| format!("no CUDA driver: libcuda.so.1 could not be loaded ({e})"))
    }

    /// The libraries candle's CUDA backend opens when it creates a device (a CUDA build from
    /// `scripts/build-cuda.sh` loads them at run time, and cudarc panics when one is missing),
    /// each with the file names tried: unversioned, then the CUDA 13 and 12 sonames (cuRAND's
    /// soname has its own numbering).
    const RUNTIME_LIBRARIES: [(&str, &[&str]); 3] = [
        (
            "cuBLAS",
            &["libcublas.so", "libcublas.so.13", "libcublas.so.12"],
        ),
        (
            "cuBLASLt",
            &["libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"],
        ),
        ("cuRAND", &["libcurand.so", "libcurand.so.10"]),
    ];

    static LIBRARIES: OnceLock<Result<(), String>> = OnceLock::new();

    pub(super) fn usable() -> Result<(), String> {
        ensure_driver()?;
        LIBRARIES
            .get_or_init(|| {
                let missing: Vec<String> = RUNTIME_LIBRARIES
                    .iter()
                    .filter(|(_, names)| dlopen_any(names).is_err())
                    .map(|(lib, names)| format!("{lib} ({})", names.join(", ")))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "CUDA libraries not found on the library path: {}; install the CUDA 13 \
                         libraries (e.g. the nvidia-cublas and nvidia-curand Python packages) \
                         and add their folder to LD_LIBRARY_PATH",
                        missing.join(", ")
                    ))
                }
            })
            .clone()
    }

    /// `dlopen`s the first of `names` that loads and closes it again; the first loader error
    /// when none does.
    #[cfg(unix)]
    fn dlopen_any(names: &[&str]) -> Result<(), String> {
        let mut first_error = None;
        for name in names {
            let Ok(c_name) = std::ffi::CString::new(*name) else {
                continue;
            };
            // SAFETY: `c_name` is a valid NUL-terminated string; the handle is closed below and
            // no symbol from it is used.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !handle.is_null() {
                // SAFETY: `handle` came from a successful `dlopen`.
                unsafe { libc::dlclose(handle) };
                return Ok(());
            }
            // SAFETY: `dlerror` returns NULL or a valid C string owned by libc.
            let err = unsafe { libc::dlerror() };
            if !err.is_null() && first_error.is_none() {
                // SAFETY: non-null, NUL-terminated, valid until the next dl* call.
                first_error = Some(
                    unsafe { std::ffi::CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Err(first_error.unwrap_or_else(|| "no reason given".to_string()))
    }

    #[cfg(not(unix))]
    fn dlopen_any(_names: &[&str]) -> Result<(), String> {
        Ok(())
    }

    fn describe(e: DriverError) -> String {
        match e.error_name() {
            Ok(name) => name.to_string_lossy().into_owned(),
            Err(_) => format!("{:?}", e.0),
        }
    }

    fn device(ordinal: usize) -> Result<sys::CUdevice, String> {
        let raw = c_int::try_from(ordinal).map_err(|_| format!("no CUDA device {ordinal}"))?;
        result::device::get(raw).map_err(|e| format!("cuda:{ordinal}: {}", describe(e)))
    }

    fn primary_context_active(dev: sys::CUdevice) -> Result<bool, DriverError> {
        let mut flags: std::ffi::c_uint = 0;
        let mut active: c_int = 0;
        // SAFETY: `dev` came from `cuDeviceGet`; both out-pointers are valid.
        unsafe { sys::cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) }.result()?;
        Ok(active != 0)
    }

    /// Runs `f` with the device's primary context current on this thread, restoring the
    /// thread's previous context afterwards. Retaining an inactive primary context creates it;
    /// the matching release destroys it again when nobody else holds it.
    fn with_primary_context<T>(
        dev: sys::CUdevice,
        f: impl FnOnce() -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        // SAFETY: `dev` came from `cuDeviceGet`.
        let ctx = unsafe { result::primary_ctx::retain(dev) }?;
        // SAFETY: `ctx` is a live, retained context.
        let out = match unsafe { sys::cuCtxPushCurrent_v2(ctx) }.result() {
            Ok(()) => {
                let out = f();
                let mut popped: sys::CUcontext = std::ptr::null_mut();
                // SAFETY: we pushed a context onto this thread's stack just above.
                if let Err(e) = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }.result() {
                    tracing::warn!("cuCtxPopCurrent failed: {}", describe(e));
                }
                out
            }
            Err(e) => Err(e),
        };
        // SAFETY: balances the retain above.
        if let Err(e) = unsafe { result::primary_ctx::release(dev) } {
            tracing::warn!("cuDevicePrimaryCtxRelease failed: {}", describe(e));
        }
        out
    }

    pub(super) fn devices() -> Result<Vec<GpuDeviceMemory>, String> {
        ensure_driver()?;
        let count = result::device::get_count()
            .map_err(|e| format!("cuDeviceGetCount: {}", describe(e)))?;
        let count = usize::try_from(count).unwrap_or(0);
        let mut out = Vec::with_capacity(count);
        for ordinal in 0..count {
            let dev = device(ordinal)?;
            let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown".to_string());
            // SAFETY: `dev` came from `cuDeviceGet`.
            let total = unsafe { result::device::total_mem(dev) }
                .map_err(|e| format!("cuda:{ordinal}: cuDeviceTotalMem: {}", describe(e)))?
                as u64;
            let active = primary_context_active(dev).map_err(|e| {
                format!(
                    "cuda:{ordinal}: cuDevicePrimaryCtxGetState: {}",
                    describe(e)
                )
            })?;
            let (free, pool) = if active {
                let (free, pool) = with_primary_context(dev, || {
                    let (free, _) = result::mem_get_info()?;
                    Ok((free, pool_reserved(dev).ok()))
                })
                .map_err(|e| format!("cuda:{ordinal}: cuMemGetInfo: {}", describe(e)))?;
                (Some(free as u64), pool)
            } else {
                (None, None)
            };
            out.push(GpuDeviceMemory {
                ordinal,
                name,
                total_bytes: total,
                free_bytes: free,
                reserved_bytes: free.map(|f| total.saturating_sub(f)),
                allocated_bytes: gpu_allocated_bytes(ordinal),
                pool_reserved_bytes: pool,
            });
        }
        Ok(out)
    }

    /// Bytes the device's default memory pool holds from the driver.
    fn pool_reserved(dev: sys::CUdevice) -> Result<u64, DriverError> {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `dev` came from `cuDeviceGet`; `pool` is a valid out-pointer.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, dev) }.result()?;
        let mut bytes: u64 = 0;
        // SAFETY: `pool` is the device's default pool, owned by the driver; this attribute is a
        // `cuuint64_t`, which `bytes` is.
        unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                (&mut bytes as *mut u64).cast(),
            )
        }
        .result()?;
        Ok(bytes)
    }

    pub(super) fn free_and_total(ordinal: usize) -> Result<(u64, u64), String> {
        ensure_driver()?;
        let dev = device(ordinal)?;
        let (free, total) = with_primary_context(dev, result::mem_get_info)
            .map_err(|e| format!("cuda:{ordinal}: cuMemGetInfo: {}", describe(e)))?;
        Ok((free as u64, total as u64))
    }

    pub(super) fn synchronize_and_trim() -> Result<Vec<GpuTrim>, String> {
        ensure_driver()?;
        let count = result::device::get_count()
            .map_err(|e| format!("cuDeviceGetCount: {}", describe(e)))?;
        let mut out = Vec::new();
        for ordinal in 0..usize::try_from(count).unwrap_or(0) {
            let dev = device(ordinal)?;
            match primary_context_active(dev) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    out.push(GpuTrim {
                        ordinal,
                        error: Some(describe(e)),
                    });
                    continue;
                }
            }
            let outcome = with_primary_context(dev, || {
                result::ctx::synchronize()?;
                let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
                // SAFETY: `dev` is valid and `pool` is a valid out-pointer.
                unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, dev) }.result()?;
                // SAFETY: `pool` is the device's default pool, owned by the driver.
                unsafe { sys::cuMemPoolTrimTo(pool, 0) }.result()
            });
            out.push(GpuTrim {
                ordinal,
                error: outcome.err().map(describe),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_registration_counts_while_alive() {
        // A high ordinal that no other test uses.
        let ordinal = 57;
        assert_eq!(gpu_allocated_bytes(ordinal), 0);
        let mut a = GpuAllocation::new(ordinal, 1000);
        let b = GpuAllocation::new(ordinal, 24);
        assert_eq!(gpu_allocated_bytes(ordinal), 1024);
        a.grow(976);
        assert_eq!(a.bytes(), 1976);
        assert_eq!(gpu_allocated_bytes(ordinal), 2000);
        drop(a);
        assert_eq!(gpu_allocated_bytes(ordinal), 24);
        drop(b);
        assert_eq!(gpu_allocated_bytes(ordinal), 0);
    }

    #[test]
    fn sums_over_devices() {
        let dev = |ordinal, free: Option<u64>, allocated| GpuDeviceMemory {
            ordinal,
            name: "test".into(),
            total_bytes: 100,
            free_bytes: free,
            reserved_bytes: free.map(|f| 100 - f),
            allocated_bytes: allocated,
            pool_reserved_bytes: None,
        };
        let mut gpu = GpuMemory::Available(vec![dev(0, Some(30), 50), dev(1, None, 0)]);
        assert_eq!(gpu.allocated_bytes(), Some(50));
        assert_eq!(gpu.reserved_bytes(), Some(70));
        assert_eq!(gpu.free_bytes(), Some(30));
        assert_eq!(gpu.pool_reserved_bytes(), None);
        if let GpuMemory::Available(devices) = &mut gpu {
            devices[0].pool_reserved_bytes = Some(0);
            devices[1].pool_reserved_bytes = Some(12);
        }
        assert_eq!(gpu.pool_reserved_bytes(), Some(12));
        assert_eq!(gpu.device(1).map(|d| d.free_bytes), Some(None));
        let none = GpuMemory::Available(vec![dev(0, None, 0)]);
        assert_eq!(none.reserved_bytes(), None);
        let off = GpuMemory::Unavailable("no driver".into());
        assert_eq!(off.allocated_bytes(), None);
        assert_eq!(off.reserved_bytes(), None);
        assert_eq!(off.free_bytes(), None);
        assert_eq!(off.unavailable_reason(), Some("no driver"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_feature_cuda_is_not_usable() {
        assert_eq!(
            cuda_usable(),
            Err("built without the `cuda` feature".to_string())
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_feature_is_unavailable_with_reason() {
        let gpu = GpuMemory::query();
        assert_eq!(
            gpu.unavailable_reason(),
            Some("built without the `cuda` feature")
        );
        assert!(device_free_bytes(0).is_err());
        assert!(gpu_synchronize_and_trim().is_err());
    }

    /// With the feature on a machine without a driver, the probe must answer (not panic).
    #[cfg(feature = "cuda")]
    #[test]
    fn with_feature_answers_without_panicking() {
        match GpuMemory::query() {
            GpuMemory::Available(devices) => {
                for d in devices {
                    assert!(d.total_bytes > 0);
                    if let Some(free) = d.free_bytes {
                        assert!(free <= d.total_bytes);
                    }
                }
            }
            GpuMemory::Unavailable(reason) => assert!(!reason.is_empty()),
        }
    }
}
