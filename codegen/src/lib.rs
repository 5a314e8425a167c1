//! sparsegen-codegen: the layer IR and the code generators of sparsegen.
//!
//! A sparse convolution layer is described once by a [`LayerSpec`], validated in one place
//! ([`LayerSpec::validate`]). From a spec (plus tile parameters) this crate generates the
//! code that runs it — CUDA C for NVRTC, Cranelift IR for the CPU JIT — as pure,
//! deterministic functions: the same spec gives byte-identical output. It never touches a
//! device, a file or a cache; the runtime crate owns those effects.
#![deny(missing_docs)]

pub mod cpu;
pub mod cuda;
pub mod geometry;
pub mod spec;

pub use geometry::{Geometry, GeometryError};
pub use spec::{
    Activation, ConvKind, DType, Extent, Field, LayerSpec, LayerSpecBuilder, MAX_DIMS,
    MAX_KERNEL_VOLUME, SpecError,
};
