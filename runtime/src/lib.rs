//! sparsegen-runtime: everything that runs.
//!
//! Sparse tensors ([`SparseTensor`] on a shared, indexed [`CoordSet`]), the coordinate index
//! ([`CoordIndex`]), rulebooks ([`Rulebook`], [`RulebookCache`]), layers ([`SparseConv`]),
//! the engine that runs them ([`Engine`], [`ConvBackend`]), the reference executors
//! ([`reference`](mod@reference), [`dense`]) that every backend is tested against, the
//! Cranelift-JITed CPU backend ([`cpu::CpuBackend`]), the NVRTC-compiled CUDA backend
//! ([`cuda::CudaBackend`]), networks with weights from spconv checkpoints ([`Network`]), and
//! input reading ([`io`]). The runtime owns every side effect;
//! the codegen crate stays pure.
#![deny(missing_docs)]

pub mod conformance;
pub mod coord_index;
pub mod cpu;
pub mod cuda;
pub mod dense;
pub mod dense_grid;
pub mod engine;
pub mod error;
pub mod init;
pub mod io;
pub mod models;
pub mod network;
pub mod radix_sort;
pub mod reference;
pub mod rulebook;
pub mod rulebook_cache;
pub mod sparse_conv;
mod table_pool;
pub mod tensor;

pub use coord_index::{CoordIndex, KeyPacking};
pub use dense_grid::{DenseGrid, DenseLayout};
pub use engine::{ConvBackend, Engine, ReferenceBackend};
pub use error::{Error, Result, TensorError};
pub use network::{Network, NetworkBuilder};
pub use reference::Accumulate;
pub use rulebook::Rulebook;
pub use rulebook_cache::{CacheStats, RulebookCache};
pub use sparse_conv::SparseConv;
pub use sparsegen_codegen as codegen;
pub use tensor::{CoordSet, CoordSetId, SparseTensor};

/// sparsegen's cache folder: `$XDG_CACHE_HOME/sparsegen`, else `$HOME/.cache/sparsegen`
/// (CUDA kernels and tuning under `cuda/`, CPU tuning under `cpu/`).
pub fn cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("sparsegen"))
}
