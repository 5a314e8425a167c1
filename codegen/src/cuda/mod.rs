//! CUDA C emission: per layer and tile, a header-free translation unit for NVRTC.
//!
//! The model: a [`LayerSpec`] plus a [`ConvTile`] (a generation-time constant) and the target
//! [`SmVersion`] give one [`ConvKernel`], whose source bakes in every number of the layer
//! (kernel volume, channels, groups, tile sizes, bias, activation, dtype), so NVRTC compiles a
//! kernel specialised for exactly that layer — any channel pair, any kernel, any group count.
//!
//! The kernels:
//! - output-stationary implicit GEMM over the `[N_out, K]` neighbour table ([`conv_kernel`]),
//!   rows ordered by offset mask so a tile skips offsets none of its rows needs; math per
//!   [`ConvTile`]: SIMT fp32 (exact, any dtype, any architecture), `mma.sync.m16n8k16` for
//!   f16/bf16 with fp32 accumulation (sm_80+, a two-stage `cp.async` pipeline when channels
//!   are 8-aligned), `mma.sync.m16n8k8` TF32 for f32 layers that opt in ([`tf32_candidates`]);
//! - gather-GEMM-scatter for very sparse layers ([`gather_kernels`]): one launch per offset,
//!   stream-ordered, no atomics;
//! - rulebook and launch-plan kernels ([`rulebook_kernels`]): device hash table, neighbour
//!   table, offset masks, output sites of strided/transposed layers by sort + unique, and
//!   the mask-sorted tile plan; sorting is a stable LSD radix sort and prefix sums a
//!   single-block scan ([`radix_passes`]), a fixed handful of launches per sort.
//!
//! Every kernel fuses bias and activation into its epilogue, writes each output element once
//! (gather-GEMM-scatter: once per offset, in order), and uses atomics only to build hash
//! tables, so results are bitwise repeatable.
//!
//! What lives here and what does not:
//! - here: the emitters, the tile rules and candidate lists ([`conv_candidates`]), the kernel
//!   parameter contracts ([`CONV_PARAMS`], [`GATHER_PARAMS`]) and the weight layouts the
//!   kernels read ([`pack_weights`]). All pure functions; the same arguments give
//!   byte-identical source (snapshot-tested under `snapshots/`).
//! - not here: NVRTC, devices, caches, launches — the runtime crate's `cuda` module owns them.
//!
//! Generated code declares everything it uses (no `cuda_fp16.h`): half types are 16-bit
//! patterns converted with inline PTX; `mma.sync`, `cp.async` and TF32 rounding are inline PTX.

mod conv;
mod gather;
mod params;
mod radix;
mod rulebook;
mod syntax;
mod tile;
mod weights;

pub use conv::{ConvKernel, EmitError, conv_kernel};
pub use gather::{EPILOGUE_THREADS, GatherKernels, gather_kernels};
pub use params::{
    CONV_PARAMS, CParam, EPILOGUE_PARAMS, Elem, GATHER_PARAMS, KernelParam, ParamType,
};
pub use radix::{
    RADIX_BITS, RADIX_DIGITS, RADIX_ITEMS, RADIX_TILE, RadixPass, radix_blocks, radix_counts,
    radix_key_bits, radix_launches, radix_passes,
};
pub use rulebook::{
    EMPTY_KEY, RULEBOOK_THREADS, RulebookKernels, plan_key, plan_key_group, rulebook_kernels,
};
pub use syntax::{
    CWriter, FloatLit, StorageType, cp_async_prelude, dtype_prelude, mma_prelude, tf32_prelude,
};
pub use tile::{
    ConvTile, MMA_ROW_PAD, SmVersion, TF32_ROW_PAD, TileError, conv_candidates, tf32_candidates,
};
pub use weights::{WeightLayout, pack_weights};

use crate::spec::{Activation, ConvKind, DType, LayerSpec};

/// The architectures every generated variant is checked to compile for (CI runs NVRTC on all
/// of them): Turing (no bf16 tensor cores, no `m16n8k16`), Ampere and Hopper.
pub const CHECKED_ARCHS: [SmVersion; 3] = [SmVersion(75), SmVersion(80), SmVersion(90)];

/// A representative set of layers: the benchmark layers of spconv's comparison in every
/// dtype, plus odd shapes (channels not a multiple of 8, groups, 2-D, bias and each
/// activation). Snapshot tests and the NVRTC compile-all test run over these.
pub fn representative_layers() -> Vec<LayerSpec> {
    let mut out = Vec::new();
    let build = |b: crate::LayerSpecBuilder| match b.build() {
        Ok(spec) => spec,
        // The builders below are fixed and valid; a failure is a bug in this list.
        Err(e) => panic!("representative layer is invalid: {e}"),
    };
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        for c in [16, 32, 64, 128] {
            out.push(build(
                LayerSpec::builder(ConvKind::Submanifold, 3)
                    .channels(c, c)
                    .dtype(dtype),
            ));
        }
        out.push(build(
            LayerSpec::builder(ConvKind::Strided, 3)
                .channels(32, 64)
                .stride(2)
                .dtype(dtype),
        ));
        out.push(build(
            LayerSpec::builder(ConvKind::Inverse, 3)
                .channels(64, 32)
                .stride(2)
                .dtype(dtype),
        ));
        out.push(build(
            LayerSpec::builder(ConvKind::Submanifold, 3)
                .channels(32, 32)
                .kernel(5)
                .dtype(dtype),
        ));
        out.push(build(
            LayerSpec::builder(ConvKind::Submanifold, 3)
                .channels(3, 5)
                .bias(true)
                .activation(Activation::leaky_relu(0.1))
                .dtype(dtype),
        ));
        out.push(build(
            LayerSpec::builder(ConvKind::Transposed, 2)
                .channels(24, 36)
                .groups(3)
                .kernel([3, 2])
                .stride(2)
                .bias(true)
                .activation(Activation::Relu6)
                .dtype(dtype),
        ));
        out.push(build(
            LayerSpec::builder(ConvKind::Submanifold, 3)
                .channels(64, 64)
                .groups(4)
                .bias(true)
                .activation(Activation::Relu)
                .dtype(dtype),
        ));
    }
    out
}

/// The geometries of [`representative_layers`], deduplicated: what the rulebook kernels are
/// snapshot- and NVRTC-tested over.
pub fn representative_geometries() -> Vec<crate::Geometry> {
    let mut out: Vec<crate::Geometry> = Vec::new();
    for spec in representative_layers() {
        let g = spec.geometry();
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;
