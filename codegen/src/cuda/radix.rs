//! Device sort and scan kernels of the rulebook translation unit: a deterministic, stable LSD
//! radix sort of 64-bit keys by a range of their bits, and a single-block exclusive scan.
//!
//! The runtime sorts output keys (strided, transposed) and plan keys (rows by offset mask)
//! with these, in a fixed number of launches that does not depend on the data: per pass of
//! [`RADIX_BITS`] key bits (see [`radix_passes`]),
//!
//! 1. `radix_histogram`: block `b` counts the digits of its tile of [`RADIX_TILE`] keys into
//!    `counts[digit · blocks + b]` (digit-major, so the scan below orders digits first, then
//!    blocks);
//! 2. `scan`: one block turns those counts, in place, into exclusive starts;
//! 3. `radix_scatter`: block `b` writes each key of its tile to `starts[digit · blocks + b]`
//!    plus the key's rank among the tile's keys of its digit. Warp `w` owns a contiguous run
//!    of the tile and walks it 32 keys at a time; a key's rank is the count of its digit in
//!    earlier warps (a serial prefix over the per-warp counts), earlier rounds of its warp,
//!    and lower lanes of its round (`__match_any_sync`). Every term follows input order, so
//!    the sort is stable, and nothing depends on scheduling.
//!
//! The scan also serves the launch plan (per-tile offset counts into the `[tiles + 1]`
//! starts). Histogram counts use shared-memory atomics; a count does not depend on the order
//! of its increments, so every output is determined by the input alone.
//!
//! This module only emits source; it does not know what the keys mean (see `rulebook.rs`)
//! and launches nothing (the runtime's `rulebook_gpu.rs` does).

use super::rulebook::RULEBOOK_THREADS;
use super::syntax::CWriter;

/// Key bits one pass sorts: one digit per thread of a block.
pub const RADIX_BITS: u32 = 8;

/// Digits of a pass (`2^RADIX_BITS`).
pub const RADIX_DIGITS: u32 = 1 << RADIX_BITS;

/// Keys each thread of a histogram or scatter block handles.
pub const RADIX_ITEMS: u32 = 8;

/// Keys per histogram or scatter block.
pub const RADIX_TILE: u32 = RULEBOOK_THREADS * RADIX_ITEMS;

// The scatter gives thread `d` the warp prefix of digit `d`; the histogram zeroes and writes
// one digit per thread.
const _: () = assert!(RADIX_DIGITS == RULEBOOK_THREADS && RULEBOOK_THREADS.is_multiple_of(32));

/// One pass of a radix sort: it orders keys by bits `[shift, shift + bits)`, stably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RadixPass {
    /// The lowest key bit of the digit.
    pub shift: u32,
    /// Digit width, `1..=RADIX_BITS`.
    pub bits: u32,
}

/// The passes of a sort by key bits `[shift, shift + bits)`, least significant digit first:
/// `ceil(bits / RADIX_BITS)` of them (none for `bits == 0`). `shift + bits` must be at most 64.
///
/// ```
/// use sparsegen_codegen::cuda::{RadixPass, radix_passes};
/// let passes = radix_passes(32, 27);
/// assert_eq!(passes.len(), 4);
/// assert_eq!(passes[3], RadixPass { shift: 56, bits: 3 });
/// ```
pub fn radix_passes(shift: u32, bits: u32) -> Vec<RadixPass> {
    let end = (shift + bits).min(64);
    (shift..end)
        .step_by(RADIX_BITS as usize)
        .map(|s| RadixPass {
            shift: s,
            bits: RADIX_BITS.min(end - s),
        })
        .collect()
}

/// Key bits a sort of keys below `range` needs: `ceil(log2(range))`, none for `range ≤ 1`
/// (mixed-radix keys of `batch · cells` sites lie below `batch · cells`).
///
/// ```
/// use sparsegen_codegen::cuda::radix_key_bits;
/// assert_eq!(radix_key_bits(1), 0);
/// assert_eq!(radix_key_bits(256), 8);
/// assert_eq!(radix_key_bits(257), 9);
/// ```
pub fn radix_key_bits(range: u128) -> u32 {
    if range <= 1 {
        0
    } else {
        128 - (range - 1).leading_zeros()
    }
}

/// Blocks of a histogram or scatter launch over `n` keys (at least one).
pub fn radix_blocks(n: usize) -> usize {
    n.div_ceil(RADIX_TILE as usize).max(1)
}

/// Entries of a pass's count buffer over `n` keys: a count per (digit, block) and the total.
pub fn radix_counts(n: usize) -> usize {
    RADIX_DIGITS as usize * radix_blocks(n) + 1
}

/// The launches of a sort of `n` keys by `bits` key bits (three per pass; none without keys).
pub fn radix_launches(n: usize, bits: u32) -> usize {
    if n == 0 {
        0
    } else {
        3 * radix_passes(0, bits).len()
    }
}

/// Emits the constants, the scan kernel and the radix sort kernels (`{prefix}_scan`,
/// `{prefix}_radix_histogram`, `{prefix}_radix_scatter`); `sg_key` must be declared.
pub(super) fn emit_sort_kernels(w: &mut CWriter, prefix: &str) {
    let threads = RULEBOOK_THREADS;
    w.line("");
    w.line(format_args!("#define SG_RADIX_DIGITS {RADIX_DIGITS}"));
    w.line(format_args!("#define SG_RADIX_WARPS {}", threads / 32));
    w.line(format_args!("#define SG_RADIX_ITEMS {RADIX_ITEMS}"));
    w.line(format_args!("#define SG_RADIX_TILE {RADIX_TILE}"));

    w.line("");
    w.line("// Exclusive scan of values[0..n) in place, and values[n] = the total; one block.");
    w.line("// Thread t owns a contiguous run of ceil(n / blockDim) values: it sums the run, the");
    w.line("// block scans those sums, and the thread rewrites its run from its start. One block");
    w.line("// scan whatever n is (the runs are read through L1, a line serving 32 values).");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({threads}) {prefix}_scan(int* values, int n)"
    ));
    w.open("");
    w.line(format_args!("__shared__ int s_sums[{threads}];"));
    w.line("const int t = threadIdx.x;");
    w.line(format_args!(
        "const long long per = ((long long)n + {}) / {threads};",
        threads - 1
    ));
    w.line("const long long begin = t * per < n ? t * per : n;");
    w.line("const long long end = begin + per < n ? begin + per : n;");
    w.line("int sum = 0;");
    w.line("#pragma unroll 8");
    w.line("for (long long i = begin; i < end; ++i) sum += values[i];");
    w.line("s_sums[t] = sum;");
    w.line("__syncthreads();");
    w.open(format_args!(
        "for (int offset = 1; offset < {threads}; offset <<= 1)"
    ));
    w.line("const int v = t >= offset ? s_sums[t - offset] : 0;");
    w.line("__syncthreads();");
    w.line("s_sums[t] += v;");
    w.line("__syncthreads();");
    w.close("");
    w.line("int run = s_sums[t] - sum;");
    w.line("#pragma unroll 8");
    w.open("for (long long i = begin; i < end; ++i)");
    w.line("const int v = values[i];");
    w.line("values[i] = run;");
    w.line("run += v;");
    w.close("");
    w.line(format_args!(
        "if (t == {last}) values[n] = s_sums[{last}];",
        last = threads - 1
    ));
    w.close("");

    w.line("");
    w.line(
        "// Pass digit counts of block b's tile: counts[digit * gridDim.x + b], digit = key bits",
    );
    w.line("// [shift, shift + bits).");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({threads}) {prefix}_radix_histogram("
    ));
    w.line("    const sg_key* __restrict__ keys, int n, int shift, int bits, int* __restrict__ counts)");
    w.open("");
    w.line("__shared__ int s_hist[SG_RADIX_DIGITS];");
    w.line("s_hist[threadIdx.x] = 0;");
    w.line("__syncthreads();");
    w.line("const sg_key digit_mask = (1ull << bits) - 1;");
    w.line("const long long base = (long long)blockIdx.x * SG_RADIX_TILE;");
    w.open("for (int q = 0; q < SG_RADIX_ITEMS; ++q)");
    w.line(format_args!(
        "const long long i = base + q * {threads} + threadIdx.x;"
    ));
    w.line("if (i < n) atomicAdd(&s_hist[(keys[i] >> shift) & digit_mask], 1);");
    w.close("");
    w.line("__syncthreads();");
    w.line("counts[(long long)threadIdx.x * gridDim.x + blockIdx.x] = s_hist[threadIdx.x];");
    w.close("");

    w.line("");
    w.line(
        "// Stable scatter of block b's tile by digit: key -> out[starts[digit * gridDim.x + b]",
    );
    w.line("// + its rank among the tile's keys of that digit]. Warp w owns tile keys");
    w.line("// [w * 32 * SG_RADIX_ITEMS, (w + 1) * 32 * SG_RADIX_ITEMS), 32 a round.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({threads}) {prefix}_radix_scatter("
    ));
    w.line("    const sg_key* __restrict__ keys, int n, int shift, int bits, const int* __restrict__ starts,");
    w.line("    sg_key* __restrict__ out)");
    w.open("");
    w.line("// Per (digit, warp): the warp's count of the digit, then where its keys start.");
    w.line("__shared__ int s_warp[SG_RADIX_DIGITS * SG_RADIX_WARPS];");
    w.line("const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;");
    w.line(format_args!(
        "for (int j = threadIdx.x; j < SG_RADIX_DIGITS * SG_RADIX_WARPS; j += {threads}) s_warp[j] = 0;"
    ));
    w.line("__syncthreads();");
    w.line("const sg_key digit_mask = (1ull << bits) - 1;");
    w.line("const long long base = (long long)blockIdx.x * SG_RADIX_TILE + (long long)warp * 32 * SG_RADIX_ITEMS;");
    w.line("const unsigned lower = (1u << lane) - 1;");
    w.line("sg_key key[SG_RADIX_ITEMS];");
    w.line("int digit[SG_RADIX_ITEMS], rank[SG_RADIX_ITEMS];");
    w.open("for (int q = 0; q < SG_RADIX_ITEMS; ++q)");
    w.line("const long long i = base + q * 32 + lane;");
    w.line("const bool valid = i < n;");
    w.line("key[q] = valid ? keys[i] : 0;");
    w.line("// Lanes past the end share the digit SG_RADIX_DIGITS and are left out.");
    w.line("digit[q] = valid ? (int)((key[q] >> shift) & digit_mask) : SG_RADIX_DIGITS;");
    w.line("const unsigned peers = __match_any_sync(0xffffffffu, digit[q]);");
    w.line("const int slot = digit[q] * SG_RADIX_WARPS + warp;");
    w.line("rank[q] = valid ? s_warp[slot] + __popc(peers & lower) : 0;");
    w.line("__syncwarp();");
    w.line("if (valid && (peers & lower) == 0) s_warp[slot] += __popc(peers);");
    w.line("__syncwarp();");
    w.close("");
    w.line("__syncthreads();");
    w.open("");
    w.line("const int d = threadIdx.x;");
    w.line("int at = starts[(long long)d * gridDim.x + blockIdx.x];");
    w.open("for (int v = 0; v < SG_RADIX_WARPS; ++v)");
    w.line("const int c = s_warp[d * SG_RADIX_WARPS + v];");
    w.line("s_warp[d * SG_RADIX_WARPS + v] = at;");
    w.line("at += c;");
    w.close("");
    w.close("");
    w.line("__syncthreads();");
    w.open("for (int q = 0; q < SG_RADIX_ITEMS; ++q)");
    w.line("if (base + q * 32 + lane < n) out[s_warp[digit[q] * SG_RADIX_WARPS + warp] + rank[q]] = key[q];");
    w.close("");
    w.close("");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_the_bits_least_significant_first() {
        assert!(radix_passes(0, 0).is_empty());
        assert_eq!(radix_passes(0, 1), [RadixPass { shift: 0, bits: 1 }]);
        assert_eq!(
            radix_passes(0, 17),
            [
                RadixPass { shift: 0, bits: 8 },
                RadixPass { shift: 8, bits: 8 },
                RadixPass { shift: 16, bits: 1 }
            ]
        );
        assert_eq!(radix_passes(32, 32).len(), 4);
        assert_eq!(radix_passes(60, 10), [RadixPass { shift: 60, bits: 4 }]);
    }

    #[test]
    fn launches_and_buffers() {
        assert_eq!(radix_launches(0, 27), 0);
        assert_eq!(radix_launches(500_000, 27), 12);
        assert_eq!(radix_blocks(0), 1);
        assert_eq!(radix_blocks(RADIX_TILE as usize + 1), 2);
        assert_eq!(radix_counts(1), RADIX_DIGITS as usize + 1);
        assert_eq!(radix_key_bits(2), 1);
        assert_eq!(radix_key_bits(1 << 63), 63);
        assert_eq!(radix_key_bits((1 << 63) + 1), 64);
    }
}
