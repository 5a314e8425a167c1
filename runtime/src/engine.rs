//! `Engine`: what runs layers — a rulebook cache plus a backend that executes convolutions.
//!
//! A backend implements [`ConvBackend`]: given a layer and its rulebook, compute the output
//! features. The reference backend ([`ReferenceBackend`]) is always there; the CPU JIT and
//! CUDA backends plug in the same way, so one test body runs against every backend.

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::Result;
use crate::reference::{self, Accumulate};
use crate::rulebook::Rulebook;
use crate::rulebook_cache::RulebookCache;
use crate::sparse_conv::SparseConv;

/// Executes one convolution over a rulebook.
pub trait ConvBackend: Send + Sync + Debug {
    /// A short name (`reference`, `cpu`, `cuda`), used in errors and benchmark output.
    fn name(&self) -> &'static str;

    /// Computes `[N_out, Cout]` from `input` (`[N_in, Cin]`) for `layer` over `rulebook`.
    /// Shapes are checked by the caller.
    fn conv(&self, layer: &SparseConv, rulebook: &Rulebook, input: &[f32]) -> Result<Vec<f32>>;
}

/// The plain-Rust reference executor as a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend {
    /// Accumulation precision.
    pub accumulate: Accumulate,
}

impl ConvBackend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn conv(&self, layer: &SparseConv, rulebook: &Rulebook, input: &[f32]) -> Result<Vec<f32>> {
        Ok(reference::conv(
            layer.spec(),
            rulebook,
            input,
            layer.weight(),
            layer.bias(),
            self.accumulate,
        ))
    }
}

/// A rulebook cache and a backend.
#[derive(Debug)]
pub struct Engine {
    rulebooks: RulebookCache,
    backend: Arc<dyn ConvBackend>,
}

impl Engine {
    /// An engine on the reference backend (f32 accumulation).
    pub fn reference() -> Self {
        Self::with_backend(Arc::new(ReferenceBackend::default()))
    }

    /// An engine on the given backend.
    pub fn with_backend(backend: Arc<dyn ConvBackend>) -> Self {
        Engine {
            rulebooks: RulebookCache::new(),
            backend,
        }
    }

    /// The rulebook cache.
    pub fn rulebooks(&self) -> &RulebookCache {
        &self.rulebooks
    }

    /// The backend.
    pub fn backend(&self) -> &dyn ConvBackend {
        &*self.backend
    }
}
