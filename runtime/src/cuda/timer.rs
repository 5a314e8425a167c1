//! `GpuTimer`: elapsed device time between two points of a stream, with CUDA events created
//! with timing enabled (cudarc's default flags disable it).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use super::error::CudaError;

/// A start event recorded on a stream; [`GpuTimer::stop`] records the end and waits for it.
#[derive(Debug)]
pub struct GpuTimer {
    stream: Arc<CudaStream>,
    start: CudaEvent,
}

impl GpuTimer {
    /// Records the start on `stream`.
    pub fn start(stream: &Arc<CudaStream>) -> Result<Self, CudaError> {
        let start = stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|source| CudaError::Driver {
                call: "cuEventCreate",
                source,
            })?;
        start.record(stream).map_err(|source| CudaError::Driver {
            call: "cuEventRecord",
            source,
        })?;
        Ok(GpuTimer {
            stream: stream.clone(),
            start,
        })
    }

    /// Records the end, waits for it, and returns the milliseconds in between.
    pub fn stop(self) -> Result<f32, CudaError> {
        let driver = |call| move |source| CudaError::Driver { call, source };
        let end = self
            .stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventCreate"))?;
        end.record(&self.stream).map_err(driver("cuEventRecord"))?;
        self.start
            .elapsed_ms(&end)
            .map_err(driver("cuEventElapsedTime"))
    }
}
