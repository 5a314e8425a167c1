//! The gather-GEMM-scatter dataflow, for very sparse layers where output-stationary tiles
//! would multiply many zeros (few pairs per offset, e.g. a 5³ kernel over a lidar scan).
//!
//! Per offset `k` (one launch each, in ascending order): a block takes `BM` of the offset's
//! pairs and `BN` output channels, gathers the pairs' input rows and `W_k` into shared memory
//! and adds the product into the f32 accumulator rows of the pairs' outputs. An output row
//! appears at most once per offset, and offsets run one after another on the stream, so the
//! read-modify-write needs no atomics and the sums are repeatable bit for bit. A last kernel
//! applies bias and activation and converts to the storage type. Math is SIMT fp32 (half
//! types are converted on load); the tile is a [`ConvTile::Simt`].

use crate::spec::LayerSpec;

use super::conv::{EmitError, activation, constants, header, signature};
use super::params::{EPILOGUE_PARAMS, GATHER_PARAMS};
use super::syntax::{CWriter, dtype_prelude};
use super::tile::{ConvTile, SmVersion, TileError};
use super::weights::WeightLayout;

/// Threads per block of the epilogue kernel (1-D over `N_out · Cout`).
pub const EPILOGUE_THREADS: u32 = 256;

/// The generated gather-GEMM-scatter kernels of one layer and tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherKernels {
    /// The layer.
    pub spec: LayerSpec,
    /// The tile of the GEMM kernel.
    pub tile: ConvTile,
    /// The per-offset GEMM entry point (`<kernel_name>_gather_<tile>`).
    pub gemm_entry: String,
    /// The epilogue entry point.
    pub epilogue_entry: String,
    /// The translation unit holding both.
    pub source: String,
    /// Threads per block of the GEMM kernel (grid: `(⌈pairs / BM⌉, ⌈Cout_g / BN⌉, groups)`).
    pub threads: u32,
    /// The weight layout `w` must be in.
    pub weight_layout: WeightLayout,
}

/// Generates the gather-GEMM-scatter kernels of `spec` with a SIMT `tile`.
pub fn gather_kernels(
    spec: &LayerSpec,
    tile: &ConvTile,
    sm: SmVersion,
) -> Result<GatherKernels, EmitError> {
    spec.validate()?;
    let tile_error = |source| EmitError::Tile {
        layer: spec.kernel_name(),
        source,
    };
    if !matches!(tile, ConvTile::Simt { .. }) {
        return Err(tile_error(TileError::Shape {
            tile: tile.suffix(),
            reason: "gather-GEMM-scatter kernels use SIMT tiles",
        }));
    }
    tile.check(spec, sm).map_err(tile_error)?;
    let gemm_entry = format!("{}_gather_{}", spec.kernel_name(), tile.suffix());
    let epilogue_entry = format!("{}_gather_epilogue", spec.kernel_name());
    let mut w = CWriter::new();
    header(&mut w, spec, tile);
    w.line("// dataflow: gather-GEMM-scatter (one launch per offset, then the epilogue)");
    dtype_prelude(&mut w, spec.dtype);
    w.line("");
    signature(&mut w, &gemm_entry, tile.threads(), &GATHER_PARAMS);
    w.open("");
    constants(&mut w, spec, tile);
    w.lines(GEMM_BODY);
    w.close("");
    w.line("");
    signature(&mut w, &epilogue_entry, EPILOGUE_THREADS, &EPILOGUE_PARAMS);
    w.open("");
    w.line(format_args!("constexpr int COUT = {};", spec.out_channels));
    w.line("const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;");
    w.line("if (e >= (long long)n_out * COUT) return;");
    if spec.bias {
        w.line("float v = acc[e] + bias[e % COUT];");
    } else {
        w.line("float v = acc[e];");
    }
    activation(&mut w, spec.activation);
    w.line("y[e] = sg_store(v);");
    w.close("");
    Ok(GatherKernels {
        spec: *spec,
        tile: *tile,
        gemm_entry,
        epilogue_entry,
        source: w.finish(),
        threads: tile.threads(),
        weight_layout: WeightLayout::GroupOffsetInOut,
    })
}

const GEMM_BODY: &str = r#"__shared__ float xs[BK][BM + 1];
__shared__ float ws[BK][BN];
__shared__ int in_row[BM];
__shared__ int out_row[BM];
const int tid = threadIdx.x;
const long long p0 = (long long)blockIdx.x * BM;
const int n0 = blockIdx.y * BN;
const int group = blockIdx.z;
for (int r = tid; r < BM; r += THREADS) {
    const long long p = p0 + r;
    in_row[r] = p < n_pairs ? pair_in[p] : -1;
    out_row[r] = p < n_pairs ? pair_out[p] : -1;
}
const int tm = tid / THREADS_N;
const int tn = tid % THREADS_N;
float sum[TM][TN];
#pragma unroll
for (int i = 0; i < TM; ++i) {
    #pragma unroll
    for (int jn = 0; jn < TN; ++jn) sum[i][jn] = 0.0f;
}
for (int c0 = 0; c0 < CIN_G; c0 += BK) {
    __syncthreads();  // rows are visible; the previous stage is consumed
    for (int e = tid; e < BM * BK; e += THREADS) {
        const int r = e / BK;
        const int c = e % BK;
        const int i = in_row[r];
        float v = 0.0f;
        if (i >= 0 && c0 + c < CIN_G) v = sg_load(x[(long long)i * CIN + group * CIN_G + c0 + c]);
        xs[c][r] = v;
    }
    for (int e = tid; e < BK * BN; e += THREADS) {
        const int c = e / BN;
        const int n = e % BN;
        float v = 0.0f;
        if (c0 + c < CIN_G && n0 + n < COUT_G) v = sg_load(w[(((long long)group * K + k) * CIN_G + c0 + c) * COUT_G + n0 + n]);
        ws[c][n] = v;
    }
    __syncthreads();
    #pragma unroll
    for (int c = 0; c < BK; ++c) {
        float a[TM];
        float b[TN];
        #pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = xs[c][tm + i * THREADS_M];
        #pragma unroll
        for (int jn = 0; jn < TN; ++jn) b[jn] = ws[c][tn + jn * THREADS_N];
        #pragma unroll
        for (int i = 0; i < TM; ++i) {
            #pragma unroll
            for (int jn = 0; jn < TN; ++jn) sum[i][jn] = fmaf(a[i], b[jn], sum[i][jn]);
        }
    }
}
// Scatter: each output row appears once per offset, and offsets are stream-ordered.
#pragma unroll
for (int i = 0; i < TM; ++i) {
    const int o = out_row[tm + i * THREADS_M];
    if (o < 0) continue;
    #pragma unroll
    for (int jn = 0; jn < TN; ++jn) {
        const int n = n0 + tn + jn * THREADS_N;
        if (n < COUT_G) acc[(long long)o * COUT + group * COUT_G + n] += sum[i][jn];
    }
}"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::cuda::{GATHER_PARAMS, conv_candidates, representative_layers};

    #[test]
    fn snapshot_gather_f16_subm5() {
        let spec = representative_layers()
            .into_iter()
            .find(|s| s.kernel_name() == "subm3_k5x5x5_c32x32_f16")
            .unwrap();
        let sm = SmVersion(90);
        let tile = conv_candidates(&spec, sm)
            .into_iter()
            .find(|t| matches!(t, ConvTile::Simt { .. }))
            .unwrap();
        let k = gather_kernels(&spec, &tile, sm).unwrap();
        assert!(k.source.contains(&format!("{}(", k.epilogue_entry)));
        for p in GATHER_PARAMS {
            assert!(
                k.source.contains(&format!(" {},", p.name))
                    || k.source.contains(&format!(" {})", p.name))
            );
        }
        insta::assert_snapshot!("gather_f16_subm5_c32", k.source);
    }

    #[test]
    fn mma_tiles_are_refused() {
        let spec = representative_layers()
            .into_iter()
            .find(|s| s.kernel_name() == "subm3_k3x3x3_c16x16_f16")
            .unwrap();
        let mma = conv_candidates(&spec, SmVersion(90))[0];
        assert!(matches!(mma, ConvTile::Mma { .. }));
        assert!(gather_kernels(&spec, &mma, SmVersion(90)).is_err());
    }
}
