//! Tile shapes of the conv kernels, the architectures they need, and the candidate list the
//! autotuner times.
//!
//! A tile is a generation-time constant: each distinct tile is a distinct kernel. This module
//! decides which tiles are legal for a layer on an architecture; it does not emit code.

use std::fmt;

use crate::spec::{DType, LayerSpec};

/// A CUDA compute capability as one number (`sm_90` is `SmVersion(90)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SmVersion(pub u32);

impl SmVersion {
    /// From a `(major, minor)` compute capability.
    pub const fn from_capability(major: u32, minor: u32) -> Self {
        SmVersion(major * 10 + minor)
    }

    /// Whether `mma.sync.m16n8k16` with f16 and bf16 inputs exists (sm_80 and newer).
    pub const fn has_mma_m16n8k16(self) -> bool {
        self.0 >= 80
    }

    /// The NVRTC `--gpu-architecture` value, e.g. `sm_90`.
    pub fn arch_flag(self) -> String {
        format!("sm_{}", self.0)
    }
}

impl fmt::Display for SmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}", self.0)
    }
}

/// How the generated conv kernel multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvTile {
    /// Scalar fp32 FMAs, each thread a `thread_rows × thread_cols` register block. Exact fp32
    /// for f32 layers; also the f16/bf16 path where tensor cores are missing (sm_75).
    Simt {
        /// Output rows per block (BM).
        block_rows: u32,
        /// Output channels per block (BN).
        block_cols: u32,
        /// Input channels per shared-memory stage (BK).
        depth: u32,
        /// Rows per thread (TM).
        thread_rows: u32,
        /// Channels per thread (TN).
        thread_cols: u32,
    },
    /// Tensor-core `mma.sync.m16n8k16` (f16 or bf16 inputs, f32 accumulation); each warp a
    /// `block_rows / warps_m × block_cols / warps_n` tile.
    Mma {
        /// Output rows per block (BM), a multiple of `16 · warps_m`.
        block_rows: u32,
        /// Output channels per block (BN), a multiple of `8 · warps_n`.
        block_cols: u32,
        /// Input channels per shared-memory stage (BK), a multiple of 16.
        depth: u32,
        /// Warps along the rows.
        warps_m: u32,
        /// Warps along the channels.
        warps_n: u32,
    },
    /// Tensor-core `mma.sync.m16n8k8` on TF32 (f32 storage, inputs rounded to TF32's 10-bit
    /// mantissa, f32 accumulation): faster than SIMT for f32 layers but not exact fp32, so
    /// only used when the caller opts in.
    MmaTf32 {
        /// Output rows per block (BM), a multiple of `16 · warps_m`.
        block_rows: u32,
        /// Output channels per block (BN), a multiple of `8 · warps_n`.
        block_cols: u32,
        /// Input channels per shared-memory stage (BK), a multiple of 8.
        depth: u32,
        /// Warps along the rows.
        warps_m: u32,
        /// Warps along the channels.
        warps_n: u32,
    },
}

/// Why a tile cannot be generated for a layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    /// The tile's own numbers do not fit together.
    #[error("tile {tile}: {reason}")]
    Shape {
        /// The tile.
        tile: String,
        /// What does not fit.
        reason: &'static str,
    },
    /// Half tensor-core tiles take f16 or bf16 layers, TF32 tiles f32 layers.
    #[error("tile {tile} does not compute in {dtype}")]
    MmaDType {
        /// The tile.
        tile: String,
        /// The layer's dtype name.
        dtype: &'static str,
    },
    /// The architecture lacks the instruction the tile uses.
    #[error("tile {tile} needs sm_80 or newer, not {sm}")]
    Arch {
        /// The tile.
        tile: String,
        /// The architecture.
        sm: SmVersion,
    },
}

/// Static shared memory available to one block without opting in.
const STATIC_SHARED_LIMIT: u32 = 48 * 1024;

impl ConvTile {
    /// Threads per block.
    pub const fn threads(&self) -> u32 {
        match *self {
            ConvTile::Simt {
                block_rows,
                block_cols,
                thread_rows,
                thread_cols,
                ..
            } => (block_rows / thread_rows) * (block_cols / thread_cols),
            ConvTile::Mma {
                warps_m, warps_n, ..
            }
            | ConvTile::MmaTf32 {
                warps_m, warps_n, ..
            } => 32 * warps_m * warps_n,
        }
    }

    /// Output rows per block.
    pub const fn block_rows(&self) -> u32 {
        match *self {
            ConvTile::Simt { block_rows, .. }
            | ConvTile::Mma { block_rows, .. }
            | ConvTile::MmaTf32 { block_rows, .. } => block_rows,
        }
    }

    /// Output channels per block.
    pub const fn block_cols(&self) -> u32 {
        match *self {
            ConvTile::Simt { block_cols, .. }
            | ConvTile::Mma { block_cols, .. }
            | ConvTile::MmaTf32 { block_cols, .. } => block_cols,
        }
    }

    /// Input channels per stage.
    pub const fn depth(&self) -> u32 {
        match *self {
            ConvTile::Simt { depth, .. }
            | ConvTile::Mma { depth, .. }
            | ConvTile::MmaTf32 { depth, .. } => depth,
        }
    }

    /// Static shared memory the generated kernel declares, in bytes (at most).
    pub const fn shared_bytes(&self) -> u32 {
        let rows_index = 2 * 4 * self.block_rows();
        match *self {
            ConvTile::Simt {
                block_rows,
                block_cols,
                depth,
                ..
            } => 4 * depth * (block_rows + 1 + block_cols) + rows_index,
            ConvTile::Mma {
                block_rows,
                block_cols,
                depth,
                ..
                // Two stages (the cp.async pipeline of aligned layers).
            } => 2 * 2 * (depth + MMA_ROW_PAD) * (block_rows + block_cols) + rows_index,
            ConvTile::MmaTf32 {
                block_rows,
                block_cols,
                depth,
                ..
            } => 4 * (depth + TF32_ROW_PAD) * (block_rows + block_cols) + rows_index,
        }
    }

    /// A short name used in kernel entry names, e.g. `simt_m64n16k16_t2x4`, `mma_m64n32k32_w4x1`.
    pub fn suffix(&self) -> String {
        match *self {
            ConvTile::Simt {
                block_rows,
                block_cols,
                depth,
                thread_rows,
                thread_cols,
            } => format!("simt_m{block_rows}n{block_cols}k{depth}_t{thread_rows}x{thread_cols}"),
            ConvTile::Mma {
                block_rows,
                block_cols,
                depth,
                warps_m,
                warps_n,
            } => format!("mma_m{block_rows}n{block_cols}k{depth}_w{warps_m}x{warps_n}"),
            ConvTile::MmaTf32 {
                block_rows,
                block_cols,
                depth,
                warps_m,
                warps_n,
            } => format!("tf32_m{block_rows}n{block_cols}k{depth}_w{warps_m}x{warps_n}"),
        }
    }

    /// Checks the tile's own arithmetic and that `spec` and `sm` can use it.
    pub fn check(&self, spec: &LayerSpec, sm: SmVersion) -> Result<(), TileError> {
        let shape = |reason| TileError::Shape {
            tile: self.suffix(),
            reason,
        };
        if self.block_rows() == 0 || self.block_cols() == 0 || self.depth() == 0 {
            return Err(shape("block sizes must be positive"));
        }
        match *self {
            ConvTile::Simt {
                block_rows,
                block_cols,
                thread_rows,
                thread_cols,
                ..
            } => {
                if thread_rows == 0
                    || thread_cols == 0
                    || block_rows % thread_rows != 0
                    || block_cols % thread_cols != 0
                {
                    return Err(shape("the thread block must divide the block"));
                }
            }
            ConvTile::Mma {
                block_rows,
                block_cols,
                depth,
                warps_m,
                warps_n,
            }
            | ConvTile::MmaTf32 {
                block_rows,
                block_cols,
                depth,
                warps_m,
                warps_n,
            } => {
                // f16/bf16 tiles multiply m16n8k16, TF32 tiles (f32 layers only) m16n8k8.
                let tf32 = matches!(self, ConvTile::MmaTf32 { .. });
                if (spec.dtype == DType::F32) != tf32 {
                    return Err(TileError::MmaDType {
                        tile: self.suffix(),
                        dtype: spec.dtype.name(),
                    });
                }
                if !sm.has_mma_m16n8k16() {
                    return Err(TileError::Arch {
                        tile: self.suffix(),
                        sm,
                    });
                }
                let k_step = if tf32 { 8 } else { 16 };
                if warps_m == 0
                    || warps_n == 0
                    || block_rows % (16 * warps_m) != 0
                    || block_cols % (8 * warps_n) != 0
                    || depth % k_step != 0
                {
                    return Err(shape(if tf32 {
                        "rows per warp must be a multiple of 16, channels per warp of 8, depth of 8"
                    } else {
                        "rows per warp must be a multiple of 16, channels per warp of 8, depth of 16"
                    }));
                }
            }
        }
        let threads = self.threads();
        if threads == 0 || threads > 1024 || !threads.is_multiple_of(32) {
            return Err(shape(
                "threads per block must be a multiple of 32 up to 1024",
            ));
        }
        if self.shared_bytes() > STATIC_SHARED_LIMIT {
            return Err(shape("more than 48 KiB of static shared memory"));
        }
        Ok(())
    }
}

/// Padding (in f32 elements) added to each shared-memory row of a TF32 tile so the fragment
/// loads of a warp hit distinct banks.
pub const TF32_ROW_PAD: u32 = 4;

/// Padding (in 16-bit elements) added to each shared-memory row of an MMA tile so the
/// fragment loads of a warp hit distinct banks.
pub const MMA_ROW_PAD: u32 = 8;

impl fmt::Display for ConvTile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.suffix())
    }
}

/// The tiles worth timing for `spec` on `sm`, best guess first (the default without autotuning).
/// Every tile returned passes [`ConvTile::check`].
///
/// f32 layers get SIMT tiles (exact fp32) of 64, 128 and 32 rows; f16/bf16 layers get
/// tensor-core tiles of 64, 128 and 32 rows (and 128 × 128 for wide layers) on sm_80+ plus one
/// SIMT tile, and SIMT tiles only on sm_75, where bf16 has no tensor cores and `m16n8k16` does
/// not exist. Small tiles skip more offsets in thin clouds; large ones reuse weights more.
pub fn conv_candidates(spec: &LayerSpec, sm: SmVersion) -> Vec<ConvTile> {
    let cin_g = spec.in_per_group();
    let cout_g = spec.out_per_group();
    let mut out = Vec::new();
    if spec.dtype != DType::F32 && sm.has_mma_m16n8k16() {
        let block_cols = cout_g.next_power_of_two().clamp(8, 64);
        let depth = if cin_g > 16 { 32 } else { 16 };
        let (warps_m, warps_n) = if block_cols >= 64 { (2, 2) } else { (4, 1) };
        for block_rows in [64, 128] {
            out.push(ConvTile::Mma {
                block_rows,
                block_cols,
                depth,
                warps_m,
                warps_n,
            });
        }
        // Thin clouds (lidar): 32-row tiles skip more offsets (a 20k-site scan's SubM k=3
        // plan does 71% useful products at 32 rows, 62% at 64; k=5: 31% vs 26%).
        out.push(ConvTile::Mma {
            block_rows: 32,
            block_cols,
            depth,
            warps_m: 2,
            warps_n: if block_cols >= 64 { 2 } else { 1 },
        });
        if cout_g >= 128 {
            // Wide layers: all 128 output channels of a row block in one block, so each
            // gathered input row is read once instead of once per 64 channels (8 warps of
            // 64 × 32; 40 KiB of double-buffered shared memory).
            out.push(ConvTile::Mma {
                block_rows: 128,
                block_cols: 128,
                depth,
                warps_m: 2,
                warps_n: 4,
            });
        }
    }
    let block_cols = cout_g.next_power_of_two().clamp(4, 64);
    let thread_cols = block_cols.min(4);
    let threads_n = block_cols / thread_cols;
    let depth = cin_g.next_power_of_two().min(16);
    out.retain(|t| t.check(spec, sm).is_ok());
    // Where tensor cores run the layer, one SIMT tile stays (gather-GEMM-scatter's, and a
    // fallback): timing more would only cost the autotuner NVRTC time.
    let simt_shapes: &[(u32, u32)] = if out.is_empty() {
        &[(64, 128), (128, 256), (32, 64)]
    } else {
        &[(64, 128)]
    };
    for &(block_rows, threads) in simt_shapes {
        // About `threads` threads per block, at most 32 accumulators each (register pressure
        // and NVRTC time grow with the register block).
        let thread_rows = (block_rows * threads_n / threads).max(1);
        out.push(ConvTile::Simt {
            block_rows,
            block_cols,
            depth,
            thread_rows,
            thread_cols,
        });
    }
    out.retain(|t| t.check(spec, sm).is_ok());
    out
}

/// TF32 tensor-core tiles for an f32 `spec` on `sm` (none before sm_80 or for half layers).
/// Not among [`conv_candidates`]: TF32 rounds the inputs, so callers opt in.
pub fn tf32_candidates(spec: &LayerSpec, sm: SmVersion) -> Vec<ConvTile> {
    let block_cols = spec.out_per_group().next_power_of_two().clamp(8, 64);
    let depth = if spec.in_per_group() > 8 { 16 } else { 8 };
    let (warps_m, warps_n) = if block_cols >= 64 { (2, 2) } else { (4, 1) };
    let mut out: Vec<ConvTile> = [64, 128]
        .into_iter()
        .map(|block_rows| ConvTile::MmaTf32 {
            block_rows,
            block_cols,
            depth,
            warps_m,
            warps_n,
        })
        .collect();
    out.retain(|t| t.check(spec, sm).is_ok());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ConvKind;

    fn spec(cin: u32, cout: u32, groups: u32, dtype: DType) -> LayerSpec {
        LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(cin, cout)
            .groups(groups)
            .dtype(dtype)
            .build()
            .unwrap()
    }

    #[test]
    fn every_layer_gets_a_tile_on_every_arch() {
        for (cin, cout, groups) in [
            (1, 1, 1),
            (3, 5, 1),
            (16, 16, 1),
            (128, 128, 1),
            (64, 64, 4),
        ] {
            for dtype in [DType::F32, DType::F16, DType::Bf16] {
                for sm in [75, 80, 86, 90] {
                    let s = spec(cin, cout, groups, dtype);
                    let tiles = conv_candidates(&s, SmVersion(sm));
                    assert!(tiles.len() >= 2, "{s} on sm_{sm}");
                    let mma = tiles.iter().any(|t| matches!(t, ConvTile::Mma { .. }));
                    assert_eq!(mma, dtype != DType::F32 && sm >= 80, "{s} on sm_{sm}");
                }
            }
        }
    }

    #[test]
    fn bad_tiles_are_rejected_with_reasons() {
        let f16 = spec(16, 16, 1, DType::F16);
        let mma = ConvTile::Mma {
            block_rows: 64,
            block_cols: 16,
            depth: 16,
            warps_m: 4,
            warps_n: 1,
        };
        assert!(mma.check(&f16, SmVersion(90)).is_ok());
        assert!(matches!(
            mma.check(&f16, SmVersion(75)),
            Err(TileError::Arch { .. })
        ));
        assert!(matches!(
            mma.check(&spec(16, 16, 1, DType::F32), SmVersion(90)),
            Err(TileError::MmaDType { .. })
        ));
        let odd = ConvTile::Simt {
            block_rows: 64,
            block_cols: 16,
            depth: 16,
            thread_rows: 3,
            thread_cols: 4,
        };
        assert!(matches!(
            odd.check(&f16, SmVersion(90)),
            Err(TileError::Shape { .. })
        ));
    }
}
