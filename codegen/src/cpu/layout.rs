//! Packed weight layouts of the CPU kernels, defined once for the emitter (which bakes the
//! strides into the IR) and the runtime (which packs spconv's KRSC weights into them).
//!
//! Both layouts pad output channels with zeros so every accumulator is a whole `f32x4`
//! vector; padded lanes are computed and never stored.
//!
//! * [`DirectLayout`] (the output-stationary micro-kernel): per group, per *pass* (a block of
//!   at most [`CpuTile::max_vectors`](super::CpuTile::max_vectors) accumulator vectors), the
//!   weights `[K][Cin/groups][vectors·4]`, so one pass streams its weights contiguously while
//!   its accumulators stay in registers across all kernel offsets.
//! * [`GemmLayout`] (the GEMM-call path, groups = 1): `[K][Cin][Cout padded to 16]`, one
//!   row-major `Cin × Cout` matrix per kernel offset, the shape a GEMM micro-kernel with
//!   16-lane vectors wants.

use crate::spec::LayerSpec;

/// Lanes of an `f32x4` accumulator.
pub const LANES: usize = 4;

/// Column padding of the GEMM layout (one 512-bit vector of f32).
pub const GEMM_COLUMN_PAD: usize = 16;

/// One block of accumulator vectors of a group, processed with all its accumulators in
/// registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pass {
    /// First accumulator vector of the pass within its group (channel `4·vector_start`).
    pub vector_start: usize,
    /// Accumulator vectors in the pass.
    pub vectors: usize,
}

/// The packed layout of the direct (output-stationary) kernel. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectLayout {
    /// Channel groups.
    pub groups: usize,
    /// Kernel volume `K`.
    pub kernel_volume: usize,
    /// Input channels per group.
    pub in_per_group: usize,
    /// Output channels per group.
    pub out_per_group: usize,
    /// Accumulator vectors per group (`⌈Cout_g / 4⌉`).
    pub vectors_per_group: usize,
    /// The passes of one group (the same for every group).
    pub passes: Vec<Pass>,
}

impl DirectLayout {
    /// The layout of `spec` with at most `max_vectors` accumulators per pass (≥ 1).
    pub fn new(spec: &LayerSpec, max_vectors: usize) -> Self {
        let out_per_group = spec.out_per_group() as usize;
        let vectors_per_group = out_per_group.div_ceil(LANES);
        let max_vectors = max_vectors.max(1);
        // Balanced passes: 16 vectors with at most 12 per pass are 8 + 8, not 12 + 4.
        let n_passes = vectors_per_group.div_ceil(max_vectors).max(1);
        let per_pass = vectors_per_group.div_ceil(n_passes);
        let mut passes = Vec::with_capacity(n_passes);
        let mut start = 0;
        while start < vectors_per_group {
            let vectors = per_pass.min(vectors_per_group - start);
            passes.push(Pass {
                vector_start: start,
                vectors,
            });
            start += vectors;
        }
        DirectLayout {
            groups: spec.groups as usize,
            kernel_volume: spec.kernel_volume(),
            in_per_group: spec.in_per_group() as usize,
            out_per_group,
            vectors_per_group,
            passes,
        }
    }

    /// Floats of one group's packed weights.
    pub fn group_len(&self) -> usize {
        self.kernel_volume * self.in_per_group * self.vectors_per_group * LANES
    }

    /// Floats of the packed weights.
    pub fn weight_len(&self) -> usize {
        self.groups * self.group_len()
    }

    /// Floats of the packed bias (`[groups][vectors_per_group · 4]`).
    pub fn bias_len(&self) -> usize {
        self.groups * self.vectors_per_group * LANES
    }

    /// Offset (in floats) of a pass's weights within its group.
    pub fn pass_offset(&self, pass: &Pass) -> usize {
        self.kernel_volume * self.in_per_group * pass.vector_start * LANES
    }

    /// Packs KRSC weights `[Cout, K, Cin/groups]` into this layout.
    pub fn pack_weights(&self, krsc: &[f32]) -> Vec<f32> {
        let (k_vol, cin_g, cout_g) = (self.kernel_volume, self.in_per_group, self.out_per_group);
        let mut packed = vec![0f32; self.weight_len()];
        for g in 0..self.groups {
            let group_base = g * self.group_len();
            for pass in &self.passes {
                let base = group_base + self.pass_offset(pass);
                let width = pass.vectors * LANES;
                for k in 0..k_vol {
                    for ci in 0..cin_g {
                        for lane in 0..width {
                            let co = pass.vector_start * LANES + lane;
                            if co >= cout_g {
                                continue;
                            }
                            let co_global = g * cout_g + co;
                            packed[base + (k * cin_g + ci) * width + lane] =
                                krsc[(co_global * k_vol + k) * cin_g + ci];
                        }
                    }
                }
            }
        }
        packed
    }

    /// Packs a bias `[Cout]` (or zeros) into `[groups][vectors_per_group · 4]`.
    pub fn pack_bias(&self, bias: Option<&[f32]>) -> Vec<f32> {
        let mut packed = vec![0f32; self.bias_len()];
        if let Some(bias) = bias {
            for g in 0..self.groups {
                for co in 0..self.out_per_group {
                    packed[g * self.vectors_per_group * LANES + co] =
                        bias[g * self.out_per_group + co];
                }
            }
        }
        packed
    }
}

/// The packed layout of the GEMM-call path (groups = 1): `[K][Cin][cout_padded]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmLayout {
    /// Kernel volume `K`.
    pub kernel_volume: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Output channels rounded up to [`GEMM_COLUMN_PAD`]: the row stride of the packed
    /// weights and of the accumulator tile.
    pub cout_padded: usize,
}

impl GemmLayout {
    /// The layout of `spec` (whose groups must be 1; the emitter checks).
    pub fn new(spec: &LayerSpec) -> Self {
        let out_channels = spec.out_channels as usize;
        GemmLayout {
            kernel_volume: spec.kernel_volume(),
            in_channels: spec.in_channels as usize,
            out_channels,
            cout_padded: out_channels.div_ceil(GEMM_COLUMN_PAD) * GEMM_COLUMN_PAD,
        }
    }

    /// Floats of one kernel offset's matrix.
    pub fn offset_len(&self) -> usize {
        self.in_channels * self.cout_padded
    }

    /// Floats of the packed weights.
    pub fn weight_len(&self) -> usize {
        self.kernel_volume * self.offset_len()
    }

    /// Packs KRSC weights `[Cout, K, Cin]` into `[K][Cin][cout_padded]`.
    pub fn pack_weights(&self, krsc: &[f32]) -> Vec<f32> {
        let (k_vol, cin) = (self.kernel_volume, self.in_channels);
        let mut packed = vec![0f32; self.weight_len()];
        for co in 0..self.out_channels {
            for k in 0..k_vol {
                for ci in 0..cin {
                    packed[(k * cin + ci) * self.cout_padded + co] =
                        krsc[(co * k_vol + k) * cin + ci];
                }
            }
        }
        packed
    }

    /// Packs a bias `[Cout]` (or zeros) into `[cout_padded]`.
    pub fn pack_bias(&self, bias: Option<&[f32]>) -> Vec<f32> {
        let mut packed = vec![0f32; self.cout_padded];
        if let Some(bias) = bias {
            packed[..self.out_channels].copy_from_slice(bias);
        }
        packed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
mod tests {
    use super::*;
    use crate::{ConvKind, LayerSpec};

    #[test]
    fn passes_are_balanced_and_cover_every_vector() {
        let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(64, 64)
            .build()
            .unwrap();
        let layout = DirectLayout::new(&spec, 12);
        assert_eq!(layout.vectors_per_group, 16);
        assert_eq!(
            layout.passes,
            vec![
                Pass {
                    vector_start: 0,
                    vectors: 8
                },
                Pass {
                    vector_start: 8,
                    vectors: 8
                }
            ]
        );
        let odd = LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(6, 6)
            .groups(2)
            .build()
            .unwrap();
        let layout = DirectLayout::new(&odd, 8);
        assert_eq!(layout.vectors_per_group, 1);
        assert_eq!(layout.weight_len(), 2 * 27 * 3 * 4);
    }

    #[test]
    fn packing_puts_each_weight_where_the_kernel_reads_it() {
        let spec = LayerSpec::builder(ConvKind::Submanifold, 2)
            .channels(4, 6)
            .groups(2)
            .build()
            .unwrap();
        let krsc: Vec<f32> = (0..spec.weight_len()).map(|v| v as f32 + 1.0).collect();
        let layout = DirectLayout::new(&spec, 8);
        let packed = layout.pack_weights(&krsc);
        // group 1, output channel 2 of the group (global 5), offset 4, input channel 1.
        let (g, co, k, ci) = (1, 2, 4, 1);
        let width = layout.passes[0].vectors * LANES;
        let at = g * layout.group_len() + (k * layout.in_per_group + ci) * width + co;
        assert_eq!(packed[at], krsc[((g * 3 + co) * 9 + k) * 2 + ci]);
        // padded lane 3 of each group is zero.
        assert_eq!(packed[g * layout.group_len() + 3], 0.0);
        let gemm = GemmLayout::new(
            &LayerSpec::builder(ConvKind::Submanifold, 2)
                .channels(4, 6)
                .build()
                .unwrap(),
        );
        assert_eq!(gemm.cout_padded, 16);
    }
}
