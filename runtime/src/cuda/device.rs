//! `CudaDevice`: one GPU's context and stream, opened through the dynamically loaded driver.
//! The absence of libcuda or of a device is a typed error, checked before the first driver
//! call (cudarc would panic otherwise).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use sparsegen_codegen::cuda::SmVersion;

use super::error::CudaError;

/// An open GPU: context, the stream every launch goes to, and its architecture.
#[derive(Debug, Clone)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    sm: SmVersion,
    name: String,
}

/// Whether libcuda can be loaded; [`CudaError::NoDriver`] if not.
pub fn driver_available() -> Result<(), CudaError> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library by its sonames.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoDriver)
    }
}

impl CudaDevice {
    /// Opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        driver_available()?;
        let no_device = |e: cudarc::driver::DriverError| CudaError::NoDevice {
            ordinal,
            message: e.to_string(),
        };
        let count = CudaContext::device_count().map_err(no_device)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                message: format!("the driver reports {count} device(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(no_device)?;
        let (major, minor) = ctx.compute_capability().map_err(no_device)?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            sm: SmVersion::from_capability(major.max(0) as u32, minor.max(0) as u32),
            name,
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream launches and copies go to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's architecture.
    pub fn sm(&self) -> SmVersion {
        self.sm
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }
}
