//! `DevicePool`: reuses device buffers between calls instead of allocating each time.
//!
//! Buffers are kept per element type in power-of-two capacity classes; a [`PooledBuffer`]
//! goes back to its class when dropped. Callers use the first `len` elements (a view), so a
//! buffer may be longer than asked. The pool never frees on its own; [`DevicePool::trim`]
//! releases everything it holds (e.g. after an out-of-memory error, before retrying).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};

use super::error::CudaError;

type Shelves = HashMap<(TypeId, usize), Vec<Box<dyn Any + Send>>>;

/// A pool of device buffers on one stream.
#[derive(Debug)]
pub struct DevicePool {
    stream: Arc<CudaStream>,
    shelves: Mutex<Shelves>,
}

/// A buffer of at least `len` elements, returned to the pool on drop.
#[derive(Debug)]
pub struct PooledBuffer<'p, T: DeviceRepr + 'static> {
    pool: &'p DevicePool,
    slice: Option<CudaSlice<T>>,
    len: usize,
}

impl DevicePool {
    /// An empty pool allocating on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Self {
        DevicePool {
            stream,
            shelves: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shelves> {
        // The map is only changed by single push/pop calls; a poisoned lock is still consistent.
        self.shelves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of at least `len` elements (contents unspecified), for `what` (named in errors).
    pub fn take<T: DeviceRepr + ValidAsZeroBits + Send + 'static>(
        &self,
        len: usize,
        what: &'static str,
    ) -> Result<PooledBuffer<'_, T>, CudaError> {
        let class = len.max(1).next_power_of_two();
        let key = (TypeId::of::<CudaSlice<T>>(), class);
        let reused = self
            .lock()
            .get_mut(&key)
            .and_then(Vec::pop)
            .and_then(|b| b.downcast::<CudaSlice<T>>().ok());
        let slice = match reused {
            Some(s) => *s,
            None => {
                let bytes = class * std::mem::size_of::<T>();
                self.stream
                    .alloc_zeros::<T>(class)
                    .map_err(CudaError::driver("cuMemAlloc", what, bytes))?
            }
        };
        Ok(PooledBuffer {
            pool: self,
            slice: Some(slice),
            len,
        })
    }

    /// A buffer holding a copy of `host`.
    pub fn upload<T: DeviceRepr + ValidAsZeroBits + Send + 'static>(
        &self,
        host: &[T],
        what: &'static str,
    ) -> Result<PooledBuffer<'_, T>, CudaError> {
        let mut buf = self.take::<T>(host.len(), what)?;
        if !host.is_empty() {
            let mut view = buf.view_mut();
            self.stream
                .memcpy_htod(host, &mut view)
                .map_err(CudaError::driver(
                    "cuMemcpyHtoD",
                    what,
                    std::mem::size_of_val(host),
                ))?;
        }
        Ok(buf)
    }

    /// Releases every buffer the pool holds.
    pub fn trim(&self) {
        self.lock().clear();
    }
}

impl<T: DeviceRepr + 'static> PooledBuffer<'_, T> {
    /// The number of elements asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` elements.
    pub fn view(&self) -> CudaView<'_, T> {
        match &self.slice {
            Some(s) => s.slice(0..self.len),
            // `slice` is only `None` inside `drop`.
            None => unreachable!("a pooled buffer is only emptied when dropped"),
        }
    }

    /// The first `len` elements, writable.
    pub fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        let len = self.len;
        match &mut self.slice {
            Some(s) => s.slice_mut(0..len),
            None => unreachable!("a pooled buffer is only emptied when dropped"),
        }
    }
}

impl<T: DeviceRepr + 'static> Drop for PooledBuffer<'_, T> {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            give_back_erased(self.pool, slice);
        }
    }
}

fn give_back_erased<T: DeviceRepr + 'static>(pool: &DevicePool, slice: CudaSlice<T>) {
    // CudaSlice<T> is Send for every T (cudarc implements it unconditionally).
    let key = (TypeId::of::<CudaSlice<T>>(), slice.len());
    pool.lock().entry(key).or_default().push(Box::new(slice));
}
