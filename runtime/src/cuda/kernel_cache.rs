//! `KernelCache`: compiled kernels (PTX, and the CUBIN machine code of the target
//! architecture) in memory and on disk, keyed by a hash of the generated source, the target
//! architecture and the NVRTC version, so a warm start compiles nothing — neither NVRTC nor
//! the driver, which loads a CUBIN as it is.
//!
//! On disk each kernel is up to three files in the cache folder, named
//! `<entry>-<hash>-<arch>-nvrtc<v>`: `.ptx`, `.cubin` and the `.cu` it came from. A hit needs
//! the stored source to equal the new one byte for byte, so a hash collision can never load
//! the wrong kernel. Files are written to a temporary name and renamed, the `.ptx` last, so a
//! crash or a concurrent process never leaves half a kernel. The cache knows nothing about
//! devices: loading a kernel into a context is the backend's job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sparsegen_codegen::cuda::SmVersion;

use super::error::CudaError;
use super::nvrtc::Nvrtc;

/// A CUBIN is an ELF image.
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Where a kernel came from on this lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOrigin {
    /// NVRTC compiled it now.
    Compiled,
    /// Read from the disk cache.
    Disk,
    /// Already in memory.
    Memory,
}

/// A compiled kernel.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    /// Its entry point.
    pub entry: String,
    /// The architecture it was compiled for.
    pub arch: SmVersion,
    /// The PTX.
    pub ptx: Arc<str>,
    /// Machine code for exactly `arch`, if NVRTC made it.
    pub cubin: Option<Arc<[u8]>>,
    /// NVRTC time when this process compiled it.
    pub compile_time: Option<Duration>,
}

/// Lookup counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCacheStats {
    /// Kernels NVRTC compiled.
    pub compiled: usize,
    /// Kernels read from disk.
    pub disk_hits: usize,
    /// Kernels found in memory.
    pub memory_hits: usize,
    /// Compiled kernels that could not be written to the disk folder (read-only, full):
    /// they still run, a later process compiles them again.
    pub disk_write_failures: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemoryKey {
    arch: SmVersion,
    nvrtc: (u32, u32),
    source: Arc<str>,
}

/// Compiled PTX by (source, architecture, NVRTC version), in memory and optionally on disk.
#[derive(Debug)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<MemoryKey, CachedKernel>>,
    compiled: AtomicUsize,
    disk_hits: AtomicUsize,
    memory_hits: AtomicUsize,
    disk_write_failures: AtomicUsize,
}

/// FNV-1a, 64 bit: a stable hash (the standard library's may change between releases, and
/// file names must not).
pub fn source_hash(source: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in source.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl KernelCache {
    /// A cache that also persists to `dir` (created on first write) when given.
    pub fn new(dir: Option<PathBuf>) -> Self {
        KernelCache {
            dir,
            memory: Mutex::new(HashMap::new()),
            compiled: AtomicUsize::new(0),
            disk_hits: AtomicUsize::new(0),
            memory_hits: AtomicUsize::new(0),
            disk_write_failures: AtomicUsize::new(0),
        }
    }

    /// The disk folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Counters so far.
    pub fn stats(&self) -> KernelCacheStats {
        KernelCacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_write_failures: self.disk_write_failures.load(Ordering::Relaxed),
        }
    }

    /// Gets or compiles every `(entry, source)` unit for `arch`, NVRTC running on all cores
    /// at once (it compiles distinct programs concurrently); a unit whose source repeats an
    /// earlier one is looked up, not compiled twice. Returns where each unit came from, in
    /// order. A network's kernels compile in the time of its slowest few instead of their sum.
    pub fn get_or_compile_all(
        &self,
        nvrtc: &Nvrtc,
        units: &[(String, String)],
        arch: SmVersion,
    ) -> Result<Vec<CacheOrigin>, CudaError> {
        use rayon::prelude::*;
        let mut first: HashMap<&str, usize> = HashMap::new();
        let distinct: Vec<usize> = (0..units.len())
            .filter(|&i| first.insert(units[i].1.as_str(), i).is_none())
            .collect();
        let origins: Vec<(usize, CacheOrigin)> = distinct
            .par_iter()
            .map(|&i| {
                let (entry, source) = &units[i];
                self.get_or_compile(nvrtc, entry, source, arch)
                    .map(|(_, origin)| (i, origin))
            })
            .collect::<Result<_, _>>()?;
        let by_unit: HashMap<usize, CacheOrigin> = origins.into_iter().collect();
        // A repeated source is served from memory.
        Ok((0..units.len())
            .map(|i| by_unit.get(&i).copied().unwrap_or(CacheOrigin::Memory))
            .collect())
    }

    /// Every kernel in memory (compiled by this process, or read from disk), by entry name.
    pub fn kernels(&self) -> Vec<CachedKernel> {
        let mut all: Vec<CachedKernel> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.entry.cmp(&b.entry));
        all
    }

    /// The file stem a kernel is stored under.
    pub fn file_stem(entry: &str, source: &str, arch: SmVersion, nvrtc: &Nvrtc) -> String {
        format!(
            "{entry}-{:016x}-{arch}-nvrtc{}",
            source_hash(source),
            nvrtc.version_string()
        )
    }

    /// The kernel for `source` on `arch`: from memory, else from disk, else compiled by NVRTC
    /// (and then stored in both).
    pub fn get_or_compile(
        &self,
        nvrtc: &Nvrtc,
        entry: &str,
        source: &str,
        arch: SmVersion,
    ) -> Result<(CachedKernel, CacheOrigin), CudaError> {
        let key = MemoryKey {
            arch,
            nvrtc: nvrtc.version(),
            source: Arc::from(source),
        };
        if let Some(hit) = self.lock().get(&key) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((hit.clone(), CacheOrigin::Memory));
        }
        let stem = Self::file_stem(entry, source, arch, nvrtc);
        let (kernel, origin) = match self.read_disk(&stem, source) {
            Some((ptx, cubin)) => {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                let kernel = CachedKernel {
                    entry: entry.to_string(),
                    arch,
                    ptx: Arc::from(ptx),
                    cubin: cubin.map(Arc::from),
                    compile_time: None,
                };
                (kernel, CacheOrigin::Disk)
            }
            None => {
                let compiled = nvrtc.compile(source, entry, arch)?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                // The disk copy is a cache for later processes: failing to write it must
                // not fail the kernel that was just compiled.
                if self
                    .write_disk(&stem, source, &compiled.ptx, compiled.cubin.as_deref())
                    .is_err()
                {
                    self.disk_write_failures.fetch_add(1, Ordering::Relaxed);
                }
                let kernel = CachedKernel {
                    entry: entry.to_string(),
                    arch,
                    ptx: Arc::from(compiled.ptx),
                    cubin: compiled.cubin.map(Arc::from),
                    compile_time: Some(compiled.elapsed),
                };
                (kernel, CacheOrigin::Compiled)
            }
        };
        self.lock().insert(key, kernel.clone());
        Ok((kernel, origin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MemoryKey, CachedKernel>> {
        // A panic while holding the lock cannot leave the map inconsistent (inserts are
        // single calls), so a poisoned lock is still usable.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored PTX (and CUBIN, if stored) of `stem`, if its source is `source`.
    fn read_disk(&self, stem: &str, source: &str) -> Option<(String, Option<Vec<u8>>)> {
        let dir = self.dir.as_ref()?;
        let stored = std::fs::read_to_string(dir.join(format!("{stem}.cu"))).ok()?;
        if stored != source {
            return None;
        }
        let ptx = std::fs::read_to_string(dir.join(format!("{stem}.ptx"))).ok()?;
        if ptx.is_empty() || ptx.contains('\0') {
            return None;
        }
        let cubin = std::fs::read(dir.join(format!("{stem}.cubin")))
            .ok()
            .filter(|c| c.starts_with(ELF_MAGIC));
        Some((ptx, cubin))
    }

    fn write_disk(
        &self,
        stem: &str,
        source: &str,
        ptx: &str,
        cubin: Option<&[u8]>,
    ) -> Result<(), CudaError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CudaError::CacheIo { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // The .ptx is renamed into place last: a reader that finds it also finds its .cu (and
        // its .cubin, when there is one).
        let files = [
            ("cu", Some(source.as_bytes())),
            ("cubin", cubin),
            ("ptx", Some(ptx.as_bytes())),
        ];
        for (ext, bytes) in files {
            let Some(bytes) = bytes else { continue };
            let path = dir.join(format!("{stem}.{ext}"));
            // Unique per process and per write: threads of one process may write at once.
            static WRITES: AtomicUsize = AtomicUsize::new(0);
            let nonce = WRITES.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!("{stem}.{ext}.{}-{nonce}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // FNV-1a test vectors.
        assert_eq!(source_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(source_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
