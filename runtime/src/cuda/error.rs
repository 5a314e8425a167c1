//! `CudaError`: everything the CUDA backend can meet, typed, with the context to act on it.
//! No path through the backend panics on a missing library, a missing device, a compiler
//! failure, device memory exhaustion or a layer too large for the kernels' indexing.

use std::fmt::Write as _;
use std::path::PathBuf;

use sparsegen_codegen::cuda::{EmitError, SmVersion};

/// A CUDA backend failure.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    #[error(
        "no NVIDIA driver: libcuda.so was not found on the library path (use the CPU backend, or install a driver)"
    )]
    NoDriver,
    /// libnvrtc could not be loaded.
    #[error(
        "NVRTC was not found: neither libnvrtc.so.13 nor libnvrtc.so.12 is on the library path (install the CUDA toolkit's NVRTC or `pip install nvidia-cuda-nvrtc==13.0.88` and add its lib folder to LD_LIBRARY_PATH)"
    )]
    NoNvrtc,
    /// The driver is there but the device is not usable.
    #[error("no usable CUDA device {ordinal}: {message}")]
    NoDevice {
        /// The device ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        message: String,
    },
    /// A driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        /// What was being done.
        call: &'static str,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// A device allocation failed for lack of memory.
    #[error("out of device memory: {bytes} bytes for {what}")]
    OutOfMemory {
        /// The buffer.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// NVRTC rejected a generated kernel. Carries the compiler log and the generated source.
    #[error("NVRTC could not compile {entry} for {arch}:\n{log}\n--- generated source ---\n{}", numbered(.source_code))]
    Compile {
        /// The kernel entry point.
        entry: String,
        /// The target architecture.
        arch: SmVersion,
        /// NVRTC's log.
        log: String,
        /// The generated CUDA C.
        source_code: String,
    },
    /// An NVRTC call other than compilation failed.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// The layer cannot be generated (invalid spec or tile).
    #[error(transparent)]
    Emit(#[from] EmitError),
    /// A size exceeds what the kernels or the launch can address.
    #[error("layer {layer}: {what} is {value}, more than the {limit} the CUDA backend supports")]
    TooLarge {
        /// The layer's kernel name.
        layer: String,
        /// The quantity.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// An architecture override is not `sm_XY`.
    #[error("architecture {0:?} is not of the form sm_XY (e.g. sm_90)")]
    BadArch(String),
    /// The installed NVRTC targets no architecture the device can run.
    #[error("NVRTC {nvrtc} cannot generate code for {device}: its oldest target is {oldest}")]
    UnsupportedArch {
        /// NVRTC's version.
        nvrtc: String,
        /// The device's architecture.
        device: SmVersion,
        /// NVRTC's oldest target.
        oldest: SmVersion,
    },
    /// The kernel cache or tuning table on disk could not be read or written.
    #[error("CUDA kernel cache {}: {source}", path.display())]
    CacheIo {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The caller's buffers do not match the layer.
    #[error("layer {layer}: {message}")]
    Shape {
        /// The layer's kernel name.
        layer: String,
        /// What does not match.
        message: String,
    },
}

impl CudaError {
    /// Maps a driver error, naming out-of-memory separately.
    pub(crate) fn driver(
        call: &'static str,
        what: &'static str,
        bytes: usize,
    ) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
        move |source| {
            if source.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                CudaError::OutOfMemory { what, bytes }
            } else {
                CudaError::Driver { call, source }
            }
        }
    }
}

/// The source with line numbers, as NVRTC's log refers to them.
fn numbered(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + source.len() / 8);
    for (i, line) in source.lines().enumerate() {
        let _ = writeln!(out, "{:4} | {line}", i + 1);
    }
    out
}
