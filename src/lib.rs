//! sparsegen: a compiler for sparse convolution.
//!
//! A sparse convolution layer is described once — kind, kernel, stride, padding, dilation,
//! channels, groups, activation — and sparsegen generates the code that runs exactly that
//! layer: Cranelift-JITed loops for the CPU, CUDA C compiled by NVRTC for whatever NVIDIA
//! GPU is present. The runtime builds rulebooks (kernel maps) with spconv 2.3.8's semantics
//! and drives the kernels; weights use spconv's layout, so models trained there run here.
//!
//! `use sparsegen::prelude::*` is all a user needs:
//!
//! ```
//! use sparsegen::prelude::*;
//! let spec = LayerSpec::builder(ConvKind::Submanifold, 3).channels(1, 2).kernel(3).build()?;
//! let conv = SparseConv::new(spec, vec![1.0; spec.weight_len()], None)?;
//! let x = SparseTensor::new(vec![0, 1, 1, 1, 0, 1, 1, 2], vec![1.0, 2.0], 1, &[4, 4, 4], 1)?;
//! let y = conv.forward(&Engine::reference(), &x)?;
//! assert_eq!(y.features(), &[3.0, 3.0, 3.0, 3.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub use sparsegen_codegen as codegen;
pub use sparsegen_macros::sparse_layer;
pub use sparsegen_runtime as runtime;

pub mod typed;

/// Everything a user needs, in one import.
pub mod prelude {
    pub use sparsegen_codegen::{
        Activation, ConvKind, DType, Extent, Geometry, LayerSpec, LayerSpecBuilder, SpecError,
    };
    pub use sparsegen_runtime::cpu::{CpuBackend, CpuOptions};
    pub use sparsegen_runtime::cuda::{CudaBackend, CudaOptions};
    pub use sparsegen_runtime::io::voxelizer::{PointToVoxel, Voxelizer};
    pub use sparsegen_runtime::{
        Accumulate, ConvBackend, CoordSet, DenseGrid, DenseLayout, Engine, Error, Network,
        NetworkBuilder, ReferenceBackend, Rulebook, RulebookCache, SparseConv, SparseTensor,
        TensorError,
    };

    pub use crate::typed::{Features, GpuFeatures, GpuLayer, Layer, TypedConv, TypedError};
    pub use sparsegen_macros::sparse_layer;
}

/// The README's code blocks, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
