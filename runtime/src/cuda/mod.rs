//! The CUDA backend: generated kernels compiled by NVRTC for the GPU that is present, cached
//! in memory and on disk, launched through typed launchers.
//!
//! What this module owns: loading the driver and NVRTC ([`device`], [`nvrtc`]; both loaded
//! with `dlopen`, so the same binary runs without CUDA and reports a typed [`CudaError`]),
//! the kernel cache ([`kernel_cache`]), the host-side launch plan ([`plan`]) and its device
//! copies ([`plan_cache`]), device buffers
//! ([`pool`]), launches ([`launch`]), rulebooks built on the device ([`rulebook_gpu`]), timing
//! ([`timer`]), tile autotuning ([`autotune`]), the [`CudaBackend`] that ties them into a
//! [`ConvBackend`](crate::ConvBackend) (host tensors in and out: a copy each way per call),
//! and the fast path: device-resident tensors ([`tensor`]) run layer after layer with
//! rulebooks and plans made and cached on the device ([`resident`]). What it
//! must not do: write CUDA C (the codegen crate's `cuda` module does) or decide semantics (the
//! rulebook and the reference executor do).
//!
//! Status (2026-11): everything here is built and tested without a GPU — the generated
//! kernels compile with NVRTC 13.0 for sm_75/80/90 (`tests/cuda_nvrtc.rs`) and run correctly
//! in a CPU emulation of the GPU (`tests/cuda_emulated.rs`, against the reference executor and
//! spconv's dumps) — but no launch through this module has run on a GPU yet. On a machine with
//! one, run the GPU tests first:
//!
//! ```text
//! SPARSEGEN_REQUIRE_GPU=1 cargo test --release cuda -- --nocapture
//! ```
//!
//! (`tests/cuda_conv.rs`: every kind/dtype/dataflow/tile against the reference with bitwise
//! repeatability, spconv's conformance dumps, the device rulebook against the host one, warm
//! start, tuning table, typed errors; kernel times are printed. `tests/cuda_resident.rs`: the
//! device-resident path, every kind and dtype, a U-net chain, typed errors.)
//!
//! ```
//! use sparsegen_runtime::cuda::{CudaBackend, CudaError, CudaOptions};
//! match CudaBackend::new(CudaOptions::default()) {
//!     Ok(backend) => println!("running on {}", backend.device().name()),
//!     Err(CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::NoNvrtc) => {
//!         println!("no GPU here: use the CPU backend")
//!     }
//!     Err(other) => return Err(other.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod autotune;
pub mod backend;
pub mod device;
pub mod error;
pub mod kernel_cache;
pub mod launch;
pub mod nvrtc;
pub mod plan;
pub mod plan_cache;
pub mod pool;
pub mod resident;
pub mod rulebook_gpu;
pub mod tensor;
pub mod timer;

use std::path::PathBuf;

pub use backend::{ConvRun, CudaBackend, WarmUp, bf16_bits, bf16_value, f16_bits, f16_value};
pub use device::{CudaDevice, driver_available};
pub use error::CudaError;
pub use kernel_cache::{CacheOrigin, KernelCache, KernelCacheStats};
pub use nvrtc::Nvrtc;
pub use plan::TilePlan;
pub use resident::{DeviceConv, DeviceRulebookCache, ResidentRun};
pub use rulebook_gpu::DeviceRulebook;
pub use tensor::{DeviceCoords, DeviceCoordsId, DeviceFeatures, DeviceTensor};

/// The one environment variable the CUDA backend reads: when set to a folder, every generated
/// kernel's CUDA C is written there as `<entry>.cu` before it is compiled.
pub const DUMP_ENV: &str = "SPARSEGEN_DUMP_CUDA";

/// Knobs of the CUDA backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Compile for this architecture (`sm_80`, ...) instead of the device's own.
    pub arch: Option<String>,
    /// Where compiled kernels and tuning choices persist; `None` keeps them in memory only.
    /// Default: `$XDG_CACHE_HOME/sparsegen/cuda`, else `$HOME/.cache/sparsegen/cuda`.
    pub cache_dir: Option<PathBuf>,
    /// Time the candidate tiles of each new (layer, size class) once and keep the fastest;
    /// otherwise use the first candidate. Default: on.
    pub autotune: bool,
    /// Write generated CUDA C here (default: the folder in [`DUMP_ENV`], if set).
    pub dump_dir: Option<PathBuf>,
    /// Let f32 layers use TF32 tensor cores (sm_80+): faster, but inputs are rounded to a
    /// 10-bit mantissa, so results are no longer exact fp32. Default: off.
    pub allow_tf32: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            arch: None,
            cache_dir: default_cache_dir(),
            autotune: true,
            dump_dir: std::env::var_os(DUMP_ENV).map(PathBuf::from),
            allow_tf32: false,
        }
    }
}

/// The default kernel cache folder (see [`CudaOptions::cache_dir`]).
pub fn default_cache_dir() -> Option<PathBuf> {
    crate::cache_dir().map(|d| d.join("cuda"))
}
