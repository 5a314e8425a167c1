//! `KernelCache`: JIT-compiled CPU kernels keyed by a hash of their generated IR.
//!
//! Two layers that lower to the same CLIF text (same kind of loop, kernel volume, channels,
//! groups, bias, activation and tile) share one compiled kernel. The cache records how long
//! each compilation took so the JIT cost can be reported; it never evicts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hashbrown::HashMap;
use sparsegen_codegen::LayerSpec;
use sparsegen_codegen::cpu::{self, CpuStrategy, CpuTile};

use super::jit::{CompiledKernel, HostIsa};
use crate::error::{Error, Result};

/// One compilation the cache performed.
#[derive(Debug, Clone)]
pub struct JitRecord {
    /// The kernel's name.
    pub name: String,
    /// The IR hash it is cached under.
    pub ir_hash: u64,
    /// Time spent emitting and verifying the IR.
    pub codegen_time: Duration,
    /// Time Cranelift spent compiling it.
    pub jit_time: Duration,
}

#[derive(Debug, Default)]
struct Entries {
    by_spec: HashMap<(LayerSpec, CpuStrategy, CpuTile), Arc<CompiledKernel>>,
    kernels: HashMap<u64, Arc<CompiledKernel>>,
    records: Vec<JitRecord>,
    hits: usize,
}

/// A thread-safe cache of compiled kernels.
#[derive(Debug)]
pub struct KernelCache {
    isa: HostIsa,
    entries: Mutex<Entries>,
}

impl KernelCache {
    /// An empty cache compiling for `isa`.
    pub fn new(isa: HostIsa) -> Self {
        KernelCache {
            isa,
            entries: Mutex::default(),
        }
    }

    /// The host ISA.
    pub fn isa(&self) -> &HostIsa {
        &self.isa
    }

    /// The compiled kernel of `spec` with `strategy` and `tile`, generated and compiled on
    /// first use. Codegen and JIT failures are [`Error::Jit`] naming the layer.
    pub fn get_or_compile(
        &self,
        spec: &LayerSpec,
        strategy: CpuStrategy,
        tile: &CpuTile,
    ) -> Result<Arc<CompiledKernel>> {
        let spec_key = (*spec, strategy, *tile);
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = entries.by_spec.get(&spec_key) {
                let found = found.clone();
                entries.hits += 1;
                return Ok(found);
            }
        }
        let layer = spec.kernel_name();
        let start = std::time::Instant::now();
        let kernel = cpu::lower(spec, strategy, tile).map_err(|e| Error::Jit {
            layer: layer.clone(),
            message: e.to_string(),
        })?;
        let hash = kernel.ir_hash();
        let codegen_time = start.elapsed();
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = entries.kernels.get(&hash) {
                let found = found.clone();
                entries.hits += 1;
                entries.by_spec.insert(spec_key, found.clone());
                return Ok(found);
            }
        }
        let compiled = Arc::new(self.isa.compile(&kernel, hash, &layer)?);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = entries.kernels.get(&hash) {
            let found = found.clone();
            entries.by_spec.insert(spec_key, found.clone());
            return Ok(found);
        }
        entries.by_spec.insert(spec_key, compiled.clone());
        entries.records.push(JitRecord {
            name: kernel.name.clone(),
            ir_hash: hash,
            codegen_time,
            jit_time: compiled.jit_time(),
        });
        entries.kernels.insert(hash, compiled.clone());
        Ok(compiled)
    }

    /// Every compilation so far, in order.
    pub fn records(&self) -> Vec<JitRecord> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.records.clone()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hits
    }

    /// Kernels held.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kernels
            .len()
    }

    /// Whether no kernel is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
