//! Rulebook kernels: build a layer's `[N_out, K]` neighbour table and per-row offset masks
//! in device memory, with the same semantics and the same canonical output order as the
//! runtime's host [`Rulebook`](../../sparsegen_runtime/rulebook/index.html) builder, and the
//! layer's output-stationary launch plan from those masks.
//!
//! One translation unit per [`Geometry`] (the kernel, stride, padding and dilation are baked
//! in; spatial shapes are arguments). Its kernels, in the order the runtime launches them:
//!
//! 1. `expand` (strided and transposed only): for each (input site, offset) the output key it
//!    reaches, or `SG_EMPTY`.
//! 2. `fill_keys`, `insert_keys`, `compact`: deduplicate those keys in an open-addressing set
//!    (emptied on the device), then gather them (in slot order). The runtime reads the count
//!    back: it sizes the output buffers.
//! 3. `radix_histogram`, `scan`, `radix_scatter`, once per 8-bit digit (see [`radix_passes`]):
//!    a stable LSD radix sort of the unique keys by their `ceil(log2(batch · cells))` low bits.
//!    Keys are mixed-radix `(b, c0, .., c{D-1})`, so key order is the lexicographic coordinate
//!    order — the host builder's canonical order — and the result does not depend on
//!    scheduling.
//! 4. `unpack`: keys back to coordinate rows.
//! 5. `fill_keys`, `insert`: the input sites into an open-addressing table `key → row`
//!    (linear probing, 64-bit `atomicCAS`). The runtime sizes it to at least twice the sites,
//!    a power of two, for every build: it grows with its input and never overflows.
//! 6. `neighbors`: one thread per output row probes every offset and writes its table row and
//!    its mask words (`ceil(K/32)` `unsigned`s, bit `k % 32` of word `k / 32`).
//!
//! and for a launch plan in tiles of `block_rows` rows, with no host round trip:
//!
//! 7. `mask_keys`: a key per row, `(plan key << 32) | row` ([`plan_key`]: the offset mask
//!    itself for `K ≤ 32`, else coarsened to 32 bits, one per group of `⌈K/32⌉` offsets).
//! 8. the radix sort of step 3 by the plan key's `min(K, 32)` bits: rows in input order sorted
//!    stably by plan key — the host `TilePlan` order `(plan key, row)` for every `K`.
//! 9. `tile_masks`: each tile's rows, mask union and offset count; `scan` turns the counts, in
//!    place, into the `[tiles + 1]` starts; `tile_offsets` writes each tile's offsets there.
//!
//! Atomics are used only to build the tables and to count digits; every value written to the
//! outputs is determined by the coordinates alone.
//!
//! [`radix_passes`]: super::radix_passes

use crate::geometry::Geometry;
use crate::spec::ConvKind;

use super::radix::emit_sort_kernels;
use super::syntax::CWriter;

/// Offsets per bit of a row's plan key: 1 for `K ≤ 32` (the key is the offset mask itself),
/// else `⌈K / 32⌉` (bit `g` of the key says the row has a neighbour at some offset of group
/// `g`: offsets `g·G .. (g+1)·G`).
pub const fn plan_key_group(kernel_volume: usize) -> usize {
    if kernel_volume <= 32 {
        1
    } else {
        kernel_volume.div_ceil(32)
    }
}

/// The plan key of a row: its offset mask coarsened to 32 bits (see [`plan_key_group`]).
/// Launch plans sort rows by `(plan key, row)`, so rows with the same neighbourhood pattern
/// share tiles and tiles skip the offsets none of their rows needs; host and device planners
/// both use this key, so they make the same plan for every kernel size.
pub fn plan_key(kernel_volume: usize, has_neighbor: impl Fn(usize) -> bool) -> u32 {
    let group = plan_key_group(kernel_volume);
    (0..kernel_volume)
        .filter(|&k| has_neighbor(k))
        .fold(0u32, |key, k| key | 1 << (k / group))
}

/// The generated rulebook kernels of one geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulebookKernels {
    /// The geometry.
    pub geometry: Geometry,
    /// Prefix of every entry point (e.g. `rb_subm3_k3x3x3`).
    pub prefix: String,
    /// The translation unit.
    pub source: String,
}

/// Threads per block of every rulebook kernel (1-D launches).
pub const RULEBOOK_THREADS: u32 = 256;

/// The key marking an empty slot or an invalid candidate (sorts after every real key).
pub const EMPTY_KEY: u64 = u64::MAX;

impl RulebookKernels {
    /// The entry point of one of the kernels (see [`Self::kernel_names`]).
    pub fn entry(&self, kernel: &str) -> String {
        format!("{}_{kernel}", self.prefix)
    }

    /// The kernels of this translation unit, by the name [`Self::entry`] takes.
    pub fn kernel_names(&self) -> Vec<&'static str> {
        let mut names = vec![
            "fill_keys",
            "scan",
            "radix_histogram",
            "radix_scatter",
            "insert",
            "neighbors",
            "mask_keys",
            "tile_masks",
            "tile_offsets",
        ];
        if self.makes_outputs() {
            names.extend(["expand", "insert_keys", "compact", "unpack"]);
        }
        names
    }

    /// Whether the geometry creates new output sites (strided, transposed): then the
    /// `expand`…`unpack` kernels exist.
    pub fn makes_outputs(&self) -> bool {
        matches!(self.geometry.kind, ConvKind::Strided | ConvKind::Transposed)
    }

    /// Mask words per output row.
    pub fn mask_words(&self) -> usize {
        self.geometry.kernel_volume().div_ceil(32)
    }
}

/// Generates the rulebook kernels of `geometry`.
pub fn rulebook_kernels(geometry: &Geometry) -> RulebookKernels {
    let prefix = format!("rb_{}", geometry.name());
    let dims = geometry.dims();
    let k_total = geometry.kernel_volume();
    let group = plan_key_group(geometry.kernel_volume());
    let mut w = CWriter::new();
    w.line("// Generated by sparsegen-codegen. Do not edit.");
    w.line(format_args!(
        "// rulebook kernels of {} (dims {dims}, {k_total} offsets)",
        geometry.name()
    ));
    w.line("typedef unsigned long long sg_key;");
    w.line("#define SG_EMPTY 0xffffffffffffffffull");
    w.line(format_args!("#define SG_DIMS {dims}"));
    w.line(format_args!("#define SG_K {k_total}"));
    w.line(format_args!(
        "#define SG_MASK_WORDS {}",
        k_total.div_ceil(32)
    ));
    w.line(format_args!(
        "__device__ const int sg_kernel[4] = {{{}}};",
        join(&geometry.kernel)
    ));
    w.line(format_args!(
        "__device__ const int sg_stride[4] = {{{}}};",
        join(&geometry.stride)
    ));
    w.line(format_args!(
        "__device__ const int sg_padding[4] = {{{}}};",
        join(&geometry.padding)
    ));
    w.line(format_args!(
        "__device__ const int sg_dilation[4] = {{{}}};",
        join(&geometry.dilation)
    ));
    w.lines(HELPERS);
    emit_sort_kernels(&mut w, &prefix);
    let idx = "const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;";

    w.line("");
    w.line("// keys[0..n) = SG_EMPTY: empties a hash table or key set on the device.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_fill_keys(sg_key* keys, long long n)"
    ));
    w.open("");
    w.line(idx);
    w.line("if (t < n) keys[t] = SG_EMPTY;");
    w.close("");

    // expand: (input site, offset) -> output key.
    if matches!(geometry.kind, ConvKind::Strided | ConvKind::Transposed) {
        let transposed = geometry.kind == ConvKind::Transposed;
        w.line("");
        w.line("// out_keys[i * K + k]: the output site input i reaches through offset k, or SG_EMPTY.");
        w.line(format_args!(
            "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_expand("
        ));
        w.line("    const int* __restrict__ in_coords, int n_in, sg_key* __restrict__ out_keys,");
        w.line("    int o0, int o1, int o2, int o3)");
        w.open("");
        w.line(idx);
        w.line("if (t >= (long long)n_in * SG_K) return;");
        w.line("const long long i = t / SG_K;");
        w.line("const int k = (int)(t % SG_K);");
        w.line("const int out_shape[4] = {o0, o1, o2, o3};");
        w.line("const int* c = in_coords + i * (SG_DIMS + 1);");
        w.line("int pos[4];");
        w.line("sg_offset_position(k, pos);");
        w.line("int o[4];");
        w.open("for (int a = 0; a < SG_DIMS; ++a)");
        if transposed {
            w.line("const long long v = (long long)c[a + 1] * sg_stride[a] - sg_padding[a] + (long long)pos[a] * sg_dilation[a];");
        } else {
            w.line("const long long num = (long long)c[a + 1] + sg_padding[a] - (long long)pos[a] * sg_dilation[a];");
            w.line("if (num < 0 || num % sg_stride[a] != 0) { out_keys[t] = SG_EMPTY; return; }");
            w.line("const long long v = num / sg_stride[a];");
        }
        w.line("if (v < 0 || v >= out_shape[a]) { out_keys[t] = SG_EMPTY; return; }");
        w.line("o[a] = (int)v;");
        w.close("");
        w.line("out_keys[t] = sg_pack(c[0], o, out_shape);");
        w.close("");

        w.line("");
        w.line("// Inserts the non-empty keys into an open-addressing set of capacity mask + 1.");
        w.line(format_args!(
            "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_insert_keys("
        ));
        w.line("    const sg_key* __restrict__ keys, long long n, sg_key* table, unsigned long long mask)");
        w.open("");
        w.line(idx);
        w.line("if (t >= n) return;");
        w.line("const sg_key key = keys[t];");
        w.line("if (key != SG_EMPTY) sg_insert(table, mask, key);");
        w.close("");

        w.line("");
        w.line("// Gathers the set's keys into out[0..*count) (slot order; sorted afterwards).");
        w.line(format_args!(
            "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_compact("
        ));
        w.line("    const sg_key* __restrict__ table, long long capacity, sg_key* __restrict__ out, long long out_len,");
        w.line("    int* count)");
        w.open("");
        w.line(idx);
        w.line("if (t >= capacity) return;");
        w.line("const sg_key key = table[t];");
        w.line("// Every key is counted; only out_len fit (the caller checks count <= out_len).");
        w.open("if (key != SG_EMPTY)");
        w.line("const int at = atomicAdd(count, 1);");
        w.line("if (at < out_len) out[at] = key;");
        w.close("");
        w.close("");

        w.line("");
        w.line("// Sorted keys back to coordinate rows (batch first).");
        w.line(format_args!(
            "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_unpack("
        ));
        w.line("    const sg_key* __restrict__ keys, int n, int* __restrict__ coords, int o0, int o1, int o2, int o3)");
        w.open("");
        w.line(idx);
        w.line("if (t >= n) return;");
        w.line("const int shape[4] = {o0, o1, o2, o3};");
        w.line("sg_key key = keys[t];");
        w.line("int* c = coords + t * (SG_DIMS + 1);");
        w.open("for (int a = SG_DIMS - 1; a >= 0; --a)");
        w.line("c[a + 1] = (int)(key % (sg_key)shape[a]);");
        w.line("key /= (sg_key)shape[a];");
        w.close("");
        w.line("c[0] = (int)key;");
        w.close("");
    }

    w.line("");
    w.line("// Inserts input site i as key -> i into the table of capacity mask + 1.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_insert("
    ));
    w.line("    const int* __restrict__ coords, int n, sg_key* table, int* values, unsigned long long mask,");
    w.line("    int s0, int s1, int s2, int s3)");
    w.open("");
    w.line(idx);
    w.line("if (t >= n) return;");
    w.line("const int shape[4] = {s0, s1, s2, s3};");
    w.line("const int* c = coords + t * (SG_DIMS + 1);");
    w.line("values[sg_insert(table, mask, sg_pack(c[0], c + 1, shape))] = (int)t;");
    w.close("");

    w.line("");
    w.line("// Output row o: its input row per offset (or -1) and its offset mask words.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_neighbors("
    ));
    w.line("    const int* __restrict__ out_coords, int n_out, const sg_key* __restrict__ table,");
    w.line("    const int* __restrict__ values, unsigned long long mask, int s0, int s1, int s2, int s3,");
    w.line("    int* __restrict__ nbr, unsigned* __restrict__ masks)");
    w.open("");
    w.line(idx);
    w.line("if (t >= n_out) return;");
    w.line("const int in_shape[4] = {s0, s1, s2, s3};");
    w.line("const int* oc = out_coords + t * (SG_DIMS + 1);");
    w.line("unsigned word = 0;");
    w.open("for (int k = 0; k < SG_K; ++k)");
    w.line("int pos[4];");
    w.line("sg_offset_position(k, pos);");
    w.line("int p[4];");
    w.line("bool inside = true;");
    w.open("for (int a = 0; a < SG_DIMS && inside; ++a)");
    match geometry.kind {
        ConvKind::Submanifold => {
            w.line("const long long v = (long long)oc[a + 1] + (long long)(pos[a] - sg_kernel[a] / 2) * sg_dilation[a];");
        }
        ConvKind::Strided => {
            w.line("const long long v = (long long)oc[a + 1] * sg_stride[a] - sg_padding[a] + (long long)pos[a] * sg_dilation[a];");
        }
        ConvKind::Transposed | ConvKind::Inverse => {
            w.line("const long long num = (long long)oc[a + 1] + sg_padding[a] - (long long)pos[a] * sg_dilation[a];");
            w.line("if (num < 0 || num % sg_stride[a] != 0) { inside = false; break; }");
            w.line("const long long v = num / sg_stride[a];");
        }
    }
    w.line("inside = v >= 0 && v < in_shape[a];");
    w.line("p[a] = (int)v;");
    w.close("");
    w.line("const int row = inside ? sg_lookup(table, values, mask, sg_pack(oc[0], p, in_shape)) : -1;");
    w.line("nbr[t * SG_K + k] = row;");
    w.line("if (row >= 0) word |= 1u << (k % 32);");
    w.open("if (k % 32 == 31 || k == SG_K - 1)");
    w.line("masks[t * SG_MASK_WORDS + k / 32] = word;");
    w.line("word = 0;");
    w.close("");
    w.close("");
    w.close("");

    w.line("");
    w.line(
        "// Plan keys: (plan key << 32) | row, the plan key being the offset mask coarsened to 32",
    );
    w.line("// bits (bit k / G for offset k; G = 1 for K <= 32): sorted stably, the host planner's order.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_mask_keys("
    ));
    w.line("    const unsigned* __restrict__ masks, int n_out, sg_key* __restrict__ keys)");
    w.open("");
    w.line(idx);
    w.line("if (t >= n_out) return;");
    w.line("unsigned key = 0;");
    w.open("for (int k = 0; k < SG_K; ++k)");
    w.line(format_args!(
        "if ((masks[t * SG_MASK_WORDS + k / 32] >> (k % 32)) & 1u) key |= 1u << (k / {group});"
    ));
    w.close("");
    w.line("keys[t] = ((sg_key)key << 32) | (sg_key)t;");
    w.close("");

    w.line("");
    w.line("// Tile t of block_rows sorted rows: its rows (order), the union of their masks and");
    w.line("// how many offsets that union has.");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_tile_masks("
    ));
    w.line("    const sg_key* __restrict__ keys, int n_out, const unsigned* __restrict__ masks, int block_rows,");
    w.line("    int tiles, int* __restrict__ order, unsigned* __restrict__ tile_union, int* __restrict__ tile_count)");
    w.open("");
    w.line(idx);
    w.line("if (t >= tiles) return;");
    w.line("unsigned u[SG_MASK_WORDS];");
    w.line("for (int q = 0; q < SG_MASK_WORDS; ++q) u[q] = 0;");
    w.line("const long long end = (t + 1) * (long long)block_rows < n_out ? (t + 1) * (long long)block_rows : n_out;");
    w.open("for (long long p = t * (long long)block_rows; p < end; ++p)");
    w.line("const int row = (int)(keys[p] & 0xffffffffull);");
    w.line("order[p] = row;");
    w.line("for (int q = 0; q < SG_MASK_WORDS; ++q) u[q] |= masks[(long long)row * SG_MASK_WORDS + q];");
    w.close("");
    w.line("int count = 0;");
    w.open("for (int q = 0; q < SG_MASK_WORDS; ++q)");
    w.line("tile_union[t * SG_MASK_WORDS + q] = u[q];");
    w.line("count += __popc(u[q]);");
    w.close("");
    w.line("tile_count[t] = count;");
    w.close("");

    w.line("");
    w.line("// Tile t's offsets, ascending, at starts[t] (the exclusive scan of tile_count).");
    w.line(format_args!(
        "extern \"C\" __global__ void __launch_bounds__({RULEBOOK_THREADS}) {prefix}_tile_offsets("
    ));
    w.line("    const unsigned* __restrict__ tile_union, const int* __restrict__ starts, int tiles, int* __restrict__ offsets)");
    w.open("");
    w.line(idx);
    w.line("if (t >= tiles) return;");
    w.line("int at = starts[t];");
    w.open("for (int k = 0; k < SG_K; ++k)");
    w.line("if ((tile_union[t * SG_MASK_WORDS + k / 32] >> (k % 32)) & 1u) offsets[at++] = k;");
    w.close("");
    w.close("");

    RulebookKernels {
        geometry: *geometry,
        prefix,
        source: w.finish(),
    }
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

const HELPERS: &str = r#"// Mixed-radix key of (b, c0, .., c{D-1}) over a spatial shape: key order is coordinate order.
__device__ __forceinline__ sg_key sg_pack(int b, const int* c, const int* shape) {
    sg_key key = (sg_key)b;
    for (int a = 0; a < SG_DIMS; ++a) key = key * (sg_key)shape[a] + (sg_key)c[a];
    return key;
}
// Kernel position per axis of offset k (row-major over the axes, spconv's order).
__device__ __forceinline__ void sg_offset_position(int k, int* pos) {
    for (int a = SG_DIMS - 1; a >= 0; --a) {
        pos[a] = k % sg_kernel[a];
        k /= sg_kernel[a];
    }
}
__device__ __forceinline__ unsigned long long sg_hash(sg_key k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}
// Linear probing; the table has more slots than keys, so a free slot always exists.
__device__ __forceinline__ unsigned long long sg_insert(sg_key* table, unsigned long long mask, sg_key key) {
    unsigned long long slot = sg_hash(key) & mask;
    while (true) {
        const sg_key prev = atomicCAS(&table[slot], SG_EMPTY, key);
        if (prev == SG_EMPTY || prev == key) return slot;
        slot = (slot + 1) & mask;
    }
}
__device__ __forceinline__ int sg_lookup(const sg_key* table, const int* values, unsigned long long mask, sg_key key) {
    unsigned long long slot = sg_hash(key) & mask;
    while (true) {
        const sg_key k = table[slot];
        if (k == key) return values[slot];
        if (k == SG_EMPTY) return -1;
        slot = (slot + 1) & mask;
    }
}"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::LayerSpec;

    fn geometry(kind: ConvKind) -> Geometry {
        let b = LayerSpec::builder(kind, 3).channels(1, 1);
        let b = match kind {
            ConvKind::Submanifold => b,
            _ => b.stride(2).padding(1),
        };
        b.build().unwrap().geometry()
    }

    #[test]
    fn snapshot_rulebook_kernels_strided() {
        let k = rulebook_kernels(&geometry(ConvKind::Strided));
        assert_eq!(k.prefix, "rb_conv3_k3x3x3_s2x2x2_p1x1x1");
        assert!(k.makes_outputs());
        insta::assert_snapshot!("rulebook_conv3_s2_p1", k.source);
    }

    #[test]
    fn submanifold_has_no_output_kernels() {
        let k = rulebook_kernels(&geometry(ConvKind::Submanifold));
        assert!(!k.makes_outputs());
        assert!(!k.source.contains(&k.entry("expand")));
        assert!(k.source.contains(&k.entry("neighbors")));
        assert_eq!(k.mask_words(), 1);
        assert_eq!(rulebook_kernels(&geometry(ConvKind::Submanifold)), k);
    }

    #[test]
    fn every_named_kernel_is_defined_once() {
        for kind in [
            ConvKind::Submanifold,
            ConvKind::Strided,
            ConvKind::Transposed,
            ConvKind::Inverse,
        ] {
            let k = rulebook_kernels(&geometry(kind));
            let defined = k.source.matches("__global__").count();
            assert_eq!(defined, k.kernel_names().len(), "{}", k.prefix);
            for name in k.kernel_names() {
                let head = format!(" {}(", k.entry(name));
                assert_eq!(k.source.matches(&head).count(), 1, "{} {name}", k.prefix);
            }
        }
    }
}
