//! Runs the generated CUDA kernels on the CPU: the exact generated source, compiled by the
//! host C++ compiler inside a small harness that plays the GPU (one OS thread per CUDA thread,
//! `__syncthreads` as a barrier, `__shared__` as block-shared statics, blocks one after the
//! other), with the host plan, packed weights and storage encoding the backend uses. Only the
//! inline-PTX helpers are swapped: half conversions for plain C++, and `mma.sync` for a
//! warp-collective emulation of its PTX ISA fragment layout.
//!
//! This checks the kernels' indexing, tiling, offset skipping, shared-memory staging,
//! synchronisation pattern and epilogue against the reference executor without a GPU. It does
//! not check the hardware's own semantics (that is `cuda_conv.rs`'s job on a GPU). Skips,
//! saying why, where no `g++` is installed.
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)] // a failed unwrap is a failed test

mod cuda_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cuda_common::conformance::{conformance_layer, conformance_root};
use cuda_common::{
    Case, cases, layer, reference_output, relative_error, rulebook_and_input, tolerance,
};
use sparsegen::codegen::cuda::{
    CWriter, ConvKernel, ConvTile, GatherKernels, RADIX_BITS, RADIX_TILE, RULEBOOK_THREADS,
    RulebookKernels, SmVersion, conv_candidates, conv_kernel, cp_async_prelude, dtype_prelude,
    gather_kernels, mma_prelude, pack_weights, radix_key_bits, rulebook_kernels, tf32_candidates,
    tf32_prelude,
};
use sparsegen::codegen::{ConvKind, DType, LayerSpec};
use sparsegen_runtime::cuda::plan::conv_grid;
use sparsegen_runtime::cuda::{TilePlan, bf16_bits, bf16_value, f16_bits, f16_value};
use sparsegen_runtime::{ConvBackend, Rulebook, SparseConv};

const HARNESS_HEAD: &str = r#"
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
struct sg_dim3 { unsigned x, y, z; };
static thread_local sg_dim3 threadIdx, blockIdx, blockDim;
static std::barrier<>* sg_bar;
static inline void __syncthreads() { sg_bar->arrive_and_wait(); }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(n)
#define __shared__ static
static unsigned sg_frag_a[32][32][4];
static unsigned sg_frag_b[32][32][2];
"#;

/// File input of every harness (prepended to each `main`).
const HARNESS_IO: &str = r#"
template <class T> static std::vector<T> sg_read(const std::string& path) {
    std::vector<T> v;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) { std::perror(path.c_str()); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    long n = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    v.resize(n / sizeof(T));
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) std::exit(3);
    std::fclose(f);
    return v;
}
"#;

const F16_HOST: &str = r#"typedef unsigned short sg_t;
static inline float sg_load(sg_t h) {
    unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { float v = std::ldexp((float)m, -24); return sign ? -v : v; }
    if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}
static inline sg_t sg_store(float v) {
    unsigned x = __float_as_uint(v), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (sg_t)(sign | 0x7e00u);
    if (x >= 0x477ff000u) return (sg_t)(sign | 0x7c00u);
    if (x < 0x38800000u) return (sg_t)(sign | (unsigned)std::nearbyint(__uint_as_float(x) * 16777216.0f));
    unsigned m = x & 0x7fffffu, h = (((x >> 23) - 112) << 10) | (m >> 13), rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;
    return (sg_t)(sign | h);
}
"#;

const MMA_HOST: &str = r#"// Host emulation of mma.sync.m16n8k16.row.col: every thread of the block calls it in
// lockstep, so fragments are exchanged through statics between two block barriers.
static void sg_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) sg_frag_a[warp][lane][i] = a[i];
    for (int i = 0; i < 2; ++i) sg_frag_b[warp][lane][i] = b[i];
    __syncthreads();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, q = l & 3;
        auto lo = [](unsigned v) { return sg_load((sg_t)(v & 0xffffu)); };
        auto hi = [](unsigned v) { return sg_load((sg_t)(v >> 16)); };
        const unsigned* fa = sg_frag_a[warp][l];
        const unsigned* fb = sg_frag_b[warp][l];
        A[g][2 * q] = lo(fa[0]); A[g][2 * q + 1] = hi(fa[0]);
        A[g + 8][2 * q] = lo(fa[1]); A[g + 8][2 * q + 1] = hi(fa[1]);
        A[g][2 * q + 8] = lo(fa[2]); A[g][2 * q + 9] = hi(fa[2]);
        A[g + 8][2 * q + 8] = lo(fa[3]); A[g + 8][2 * q + 9] = hi(fa[3]);
        B[2 * q][g] = lo(fb[0]); B[2 * q + 1][g] = hi(fb[0]);
        B[2 * q + 8][g] = lo(fb[1]); B[2 * q + 9][g] = hi(fb[1]);
    }
    const int g = lane >> 2, q = lane & 3;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[e] += s;
    }
    __syncthreads();
}
"#;

const CP_ASYNC_HOST: &str = r#"// Host cp.async: a synchronous copy (or zero fill); groups complete at once.
static inline void sg_cp_async16(void* smem, const void* gmem, bool valid) {
    if (valid) std::memcpy(smem, gmem, 16); else std::memset(smem, 0, 16);
}
static inline void sg_cp_commit() {}
static inline void sg_cp_wait_one() {}
"#;

const TF32_HOST: &str = r#"// Host emulation of cvt.rna.tf32.f32 and mma.sync.m16n8k8 (TF32), fragments exchanged
// through statics between two block barriers like the f16 emulation.
static inline unsigned sg_tf32(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
    return u & 0xffffe000u;
}
static void sg_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) sg_frag_a[warp][lane][i] = a[i];
    for (int i = 0; i < 2; ++i) sg_frag_b[warp][lane][i] = b[i];
    __syncthreads();
    float A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, q = l & 3;
        const unsigned* fa = sg_frag_a[warp][l];
        const unsigned* fb = sg_frag_b[warp][l];
        A[g][q] = __uint_as_float(fa[0]);
        A[g + 8][q] = __uint_as_float(fa[1]);
        A[g][q + 4] = __uint_as_float(fa[2]);
        A[g + 8][q + 4] = __uint_as_float(fa[3]);
        B[q][g] = __uint_as_float(fb[0]);
        B[q + 4][g] = __uint_as_float(fb[1]);
    }
    const int g = lane >> 2, q = lane & 3;
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += A[row][k] * B[k][col];
        d[e] += s;
    }
    __syncthreads();
}
"#;

fn harness_main(entry: &str) -> String {
    format!(
        r#"{HARNESS_IO}
int main(int argc, char** argv) {{
    if (argc != 8) return 4;
    const std::string dir = argv[1];
    const int n_out = std::atoi(argv[2]);
    const unsigned gx = std::atoi(argv[3]), gy = std::atoi(argv[4]), gz = std::atoi(argv[5]);
    const unsigned threads = std::atoi(argv[6]);
    const size_t y_len = std::atoll(argv[7]);
    auto x = sg_read<sg_t>(dir + "/x.bin");
    auto w = sg_read<sg_t>(dir + "/w.bin");
    auto bias = sg_read<float>(dir + "/bias.bin");
    auto nbr = sg_read<int>(dir + "/nbr.bin");
    auto order = sg_read<int>(dir + "/order.bin");
    auto starts = sg_read<int>(dir + "/starts.bin");
    auto offsets = sg_read<int>(dir + "/offsets.bin");
    std::vector<sg_t> y(y_len);
    std::memset(y.data(), 0xff, y_len * sizeof(sg_t));  // NaN: unwritten outputs show
    std::barrier<> bar(threads);
    sg_bar = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {{
        pool.emplace_back([&, t] {{
            threadIdx = {{t, 0, 0}};
            for (unsigned bz = 0; bz < gz; ++bz)
                for (unsigned by = 0; by < gy; ++by)
                    for (unsigned bx = 0; bx < gx; ++bx) {{
                        blockIdx = {{bx, by, bz}};
                        {entry}(x.data(), w.data(), bias.data(), nbr.data(), order.data(),
                                starts.data(), offsets.data(), y.data(), n_out);
                        bar.arrive_and_wait();
                    }}
        }});
    }}
    for (auto& th : pool) th.join();
    FILE* f = std::fopen((dir + "/y.bin").c_str(), "wb");
    if (!f || std::fwrite(y.data(), sizeof(sg_t), y_len, f) != y_len) return 5;
    std::fclose(f);
    return 0;
}}
"#
    )
}

/// The generated source with its inline-PTX helpers swapped for host versions.
fn host_source(kernel: &ConvKernel) -> String {
    let dtype = kernel.spec.dtype;
    let mut source = kernel.source.clone();
    if dtype == DType::F16 {
        let mut w = CWriter::new();
        dtype_prelude(&mut w, dtype);
        let device = w.finish();
        assert!(source.contains(&device));
        source = source.replace(&device, F16_HOST);
    }
    if matches!(kernel.tile, ConvTile::Mma { .. }) {
        let mut w = CWriter::new();
        mma_prelude(&mut w, dtype);
        let device = w.finish();
        assert!(source.contains(&device));
        source = source.replace(&device, MMA_HOST);
        let mut w = CWriter::new();
        cp_async_prelude(&mut w);
        let device = w.finish();
        assert!(source.contains(&device));
        source = source.replace(&device, CP_ASYNC_HOST);
    }
    if matches!(kernel.tile, ConvTile::MmaTf32 { .. }) {
        let mut w = CWriter::new();
        tf32_prelude(&mut w);
        let device = w.finish();
        assert!(source.contains(&device));
        source = source.replace(&device, TF32_HOST);
    }
    format!("{HARNESS_HEAD}{source}{}", harness_main(&kernel.entry))
}

fn write<T: Copy>(path: &Path, values: &[T]) {
    // SAFETY: T is a plain number type (f32, i32, u16); its bytes are its value.
    let bytes = unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    };
    std::fs::write(path, bytes).expect("write test data");
}

fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16_bits(v).to_le_bytes())
            .collect(),
        DType::Bf16 => values
            .iter()
            .flat_map(|&v| bf16_bits(v).to_le_bytes())
            .collect(),
    }
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_value(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16_value(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
    }
}

/// Runs `kernel` in the harness; returns the `[N_out, Cout]` output.
fn emulate(
    kernel: &ConvKernel,
    layer: &SparseConv,
    rulebook: &Rulebook,
    input: &[f32],
    dir: &Path,
) -> Vec<f32> {
    let spec = layer.spec();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temp dir");
    let plan = TilePlan::build(rulebook, kernel.tile.block_rows() as usize, layer.name()).unwrap();
    let grid = conv_grid(
        plan.tiles(),
        spec.out_per_group(),
        kernel.tile.block_cols(),
        spec.groups,
        layer.name(),
    )
    .unwrap();
    let packed = pack_weights(spec, kernel.weight_layout, layer.weight()).unwrap();
    std::fs::write(dir.join("x.bin"), encode(spec.dtype, input)).unwrap();
    std::fs::write(dir.join("w.bin"), encode(spec.dtype, &packed)).unwrap();
    write(&dir.join("bias.bin"), layer.bias().unwrap_or(&[0.0]));
    write(&dir.join("nbr.bin"), rulebook.neighbors());
    write(&dir.join("order.bin"), &plan.order);
    write(&dir.join("starts.bin"), &plan.tile_offset_start);
    write(&dir.join("offsets.bin"), &plan.tile_offsets);
    let exe = build_harness(dir, "kernel", &host_source(kernel), &kernel.entry);
    let y_len = rulebook.n_out() * spec.out_channels as usize;
    let ran = Command::new(&exe)
        .arg(dir)
        .args(
            [
                rulebook.n_out(),
                grid.0 as usize,
                grid.1 as usize,
                grid.2 as usize,
                kernel.threads as usize,
                y_len,
            ]
            .map(|v| v.to_string()),
        )
        .output()
        .expect("run the harness");
    assert!(
        ran.status.success(),
        "{}: harness failed: {:?}",
        kernel.entry,
        ran.status
    );
    decode(spec.dtype, &std::fs::read(dir.join("y.bin")).unwrap())
}

/// Writes `source` to `dir/<name>.cpp` and builds it with g++ into `dir/<name>` (the
/// harness's flags); `what` names the kernel in a build failure.
fn build_harness(dir: &Path, name: &str, source: &str, what: &str) -> PathBuf {
    let cpp = dir.join(format!("{name}.cpp"));
    std::fs::write(&cpp, source).unwrap();
    let exe = dir.join(name);
    let built = Command::new("g++")
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-o"])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .expect("run g++");
    assert!(
        built.status.success(),
        "{what}: g++ failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    exe
}

fn gxx_or_skip(test: &str) -> bool {
    let ok = Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping {test}: no g++ to build the emulation harness");
    }
    ok
}

fn check_dtype(dtype: DType, all_tiles: bool) {
    let root = std::env::temp_dir().join(format!(
        "sparsegen-emu-{}-{}",
        dtype.name(),
        std::process::id()
    ));
    let sm = SmVersion(90);
    let mut checked = 0;
    for (i, case) in cases(dtype).iter().enumerate() {
        let layer = layer(case, 7 + i as u64);
        let (rulebook, input) = rulebook_and_input(case, 11 + i as u64);
        let want = reference_output(&layer, &rulebook, &input);
        let mut tiles = conv_candidates(&case.spec, sm);
        if !all_tiles {
            // The default tile, and the first SIMT tile where the default is MMA.
            let simt = tiles
                .iter()
                .copied()
                .find(|t| matches!(t, ConvTile::Simt { .. }));
            tiles.truncate(1);
            tiles.extend(simt.filter(|s| *s != tiles[0]));
        }
        for tile in tiles {
            let kernel = conv_kernel(&case.spec, &tile, sm).unwrap();
            let got = emulate(
                &kernel,
                &layer,
                &rulebook,
                &input,
                &root.join(&kernel.entry),
            );
            let err = relative_error(&got, &want);
            eprintln!("{:>10.3e}  {}", err, kernel.entry);
            assert!(
                err <= tolerance(dtype),
                "{}: relative error {err}",
                kernel.entry
            );
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(checked >= cases(dtype).len());
}

#[test]
fn cuda_simt_f32_kernels_match_reference_in_cpu_emulation() {
    if gxx_or_skip("cuda_simt_f32_kernels_match_reference_in_cpu_emulation") {
        check_dtype(DType::F32, true);
    }
}

#[test]
fn cuda_f16_kernels_match_reference_in_cpu_emulation() {
    if gxx_or_skip("cuda_f16_kernels_match_reference_in_cpu_emulation") {
        // Every tensor-core tile in f16 (bf16 shares their code but for the conversions).
        check_dtype(DType::F16, true);
    }
}

#[test]
fn cuda_bf16_kernels_match_reference_in_cpu_emulation() {
    if gxx_or_skip("cuda_bf16_kernels_match_reference_in_cpu_emulation") {
        check_dtype(DType::Bf16, false);
    }
}

/// The emulated kernels as a backend: the default tile of each layer on sm_90.
#[derive(Debug)]
struct Emulated {
    root: std::path::PathBuf,
}

impl ConvBackend for Emulated {
    fn name(&self) -> &'static str {
        "cuda-emulated"
    }

    fn conv(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> sparsegen_runtime::Result<Vec<f32>> {
        let sm = SmVersion(90);
        let tile = conv_candidates(layer.spec(), sm)[0];
        let kernel = conv_kernel(layer.spec(), &tile, sm).unwrap();
        Ok(emulate(
            &kernel,
            layer,
            rulebook,
            input,
            &self.root.join(&kernel.entry),
        ))
    }
}

#[test]
fn cuda_kernels_match_spconv_dumps_in_cpu_emulation() {
    let test = "cuda_kernels_match_spconv_dumps_in_cpu_emulation";
    let Some(root) = conformance_root() else {
        eprintln!("skipping {test}: no conformance dumps");
        return;
    };
    if !gxx_or_skip(test) {
        return;
    }
    let backend = Emulated {
        root: std::env::temp_dir().join(format!("sparsegen-emu-conf-{}", std::process::id())),
    };
    for name in [
        "subm3_c16",
        "subm5_c32",
        "spconv3_s2_c32_64",
        "invconv3_c64_32",
    ] {
        for dtype in [DType::F32, DType::F16] {
            let err = conformance_layer(&backend, &root.join("lidar_4000"), name, dtype);
            eprintln!("{err:>10.3e}  lidar_4000 {name} {}", dtype.name());
            assert!(err <= tolerance(dtype), "{name} {}: {err}", dtype.name());
        }
    }
    let _ = std::fs::remove_dir_all(&backend.root);
}

const RULEBOOK_HEAD: &str = r#"
#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
struct sg_dim3 { unsigned x, y, z; };
static thread_local sg_dim3 threadIdx, blockIdx, blockDim;
static sg_dim3 gridDim;
static std::barrier<>* sg_bar;
static inline void __syncthreads() { sg_bar->arrive_and_wait(); }
static inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
// Warp collectives for kernels that every thread of the block calls in lockstep: values are
// exchanged through statics between two block barriers (a warp barrier is a block barrier).
static int sg_match_values[1024];
static inline unsigned __match_any_sync(unsigned, int v) {
    sg_match_values[threadIdx.x] = v;
    __syncthreads();
    const unsigned warp = threadIdx.x / 32 * 32;
    unsigned peers = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (sg_match_values[warp + l] == v) peers |= 1u << l;
    __syncthreads();
    return peers;
}
static inline void __syncwarp(unsigned = 0xffffffffu) { __syncthreads(); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(n)
#define __shared__ static
"#;

/// The host side of the rulebook harness: launchers, and the sort, scan and fill sequences
/// exactly as `runtime/src/cuda/rulebook_gpu.rs` launches them.
fn rulebook_launchers(kernels: &RulebookKernels) -> String {
    let p = &kernels.prefix;
    let threads = RULEBOOK_THREADS;
    let radix_bits = RADIX_BITS;
    format!(
        r#"{HARNESS_IO}
template <class T> static void sg_write(const std::string& path, const std::vector<T>& v) {{
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) std::exit(5);
    std::fclose(f);
}}
// A device allocation the runtime leaves uninitialised: garbage, so reads before writes show.
template <class T> static std::vector<T> sg_uninit(size_t n) {{
    std::vector<T> v(std::max<size_t>(n, 1));
    std::memset(v.data(), 0xa5, v.size() * sizeof(T));
    return v;
}}
// Barrier-free kernels: blocks and threads one after another.
template <class F> static void sg_launch(long long threads, F f) {{
    long long blocks = (threads + {threads} - 1) / {threads};
    if (blocks == 0) blocks = 1;
    gridDim = {{(unsigned)blocks, 1, 1}};
    blockDim = {{{threads}, 1, 1}};
    for (long long b = 0; b < blocks; ++b)
        for (unsigned t = 0; t < {threads}; ++t) {{
            blockIdx = {{(unsigned)b, 0, 0}};
            threadIdx = {{t, 0, 0}};
            f();
        }}
}}
// Kernels with barriers: one OS thread per CUDA thread, blocks one after another.
template <class F> static void sg_launch_blocks(long long blocks, F f) {{
    gridDim = {{(unsigned)blocks, 1, 1}};
    std::barrier<> bar({threads});
    sg_bar = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < {threads}; ++t)
        pool.emplace_back([&, t] {{
            threadIdx = {{t, 0, 0}};
            blockDim = {{{threads}, 1, 1}};
            for (long long b = 0; b < blocks; ++b) {{
                blockIdx = {{(unsigned)b, 0, 0}};
                f();
                bar.arrive_and_wait();
            }}
        }});
    for (auto& th : pool) th.join();
}}
// CudaBackend::empty_keys.
static std::vector<sg_key> sg_empty_keys(size_t n) {{
    std::vector<sg_key> keys = sg_uninit<sg_key>(n);
    sg_launch((long long)n, [&] {{ {p}_fill_keys(keys.data(), (long long)n); }});
    return keys;
}}
// CudaBackend::scan.
static void sg_scan(std::vector<int>& values, int n) {{
    sg_launch_blocks(1, [&] {{ {p}_scan(values.data(), n); }});
}}
// CudaBackend::radix_sort: keys[0..n) by bits [shift, shift + bits), ping-ponging buffers.
static void sg_radix_sort(std::vector<sg_key>& keys, long long n, int shift, int bits) {{
    if (n <= 1 || bits <= 0) return;
    const long long blocks = std::max<long long>((n + SG_RADIX_TILE - 1) / SG_RADIX_TILE, 1);
    std::vector<sg_key> alt = sg_uninit<sg_key>(n);
    std::vector<int> counts = sg_uninit<int>(SG_RADIX_DIGITS * blocks + 1);
    const int end = std::min(shift + bits, 64);
    for (int s = shift; s < end; s += {radix_bits}) {{
        const int b = std::min({radix_bits}, end - s);
        sg_launch_blocks(blocks, [&] {{ {p}_radix_histogram(keys.data(), (int)n, s, b, counts.data()); }});
        sg_scan(counts, (int)(SG_RADIX_DIGITS * blocks));
        sg_launch_blocks(blocks, [&] {{ {p}_radix_scatter(keys.data(), (int)n, s, b, counts.data(), alt.data()); }});
        std::swap(keys, alt);
    }}
}}
"#
    )
}

fn rulebook_main(kernels: &RulebookKernels) -> String {
    let p = &kernels.prefix;
    let fan_out = kernels
        .geometry
        .max_outputs_per_input()
        .clamp(1, kernels.geometry.kernel_volume());
    let outputs = if kernels.makes_outputs() {
        format!(
            r#"
    // CudaBackend::build_rulebook, strided and transposed: expand, dedup, read the count back,
    // sort, unpack.
    const size_t candidates = (size_t)n_in * SG_K;
    std::vector<sg_key> cand = sg_uninit<sg_key>(candidates);
    sg_launch((long long)candidates, [&] {{ {p}_expand(in.data(), n_in, cand.data(), o[0], o[1], o[2], o[3]); }});
    // At most n_in · fan-out distinct outputs (Geometry::max_outputs_per_input).
    const size_t max_outputs = (size_t)n_in * {fan_out};
    size_t set_cap = 1;
    while (set_cap < 2 * std::max<size_t>(max_outputs, 1)) set_cap <<= 1;
    std::vector<sg_key> set = sg_empty_keys(set_cap);
    sg_launch((long long)candidates, [&] {{ {p}_insert_keys(cand.data(), (long long)candidates, set.data(), set_cap - 1); }});
    std::vector<sg_key> unique = sg_uninit<sg_key>(max_outputs);
    int count = 0;
    sg_launch((long long)set_cap, [&] {{ {p}_compact(set.data(), (long long)set_cap, unique.data(), (long long)max_outputs, &count); }});
    if ((size_t)count > max_outputs) {{ std::fprintf(stderr, "more outputs than the fan-out bound\n"); return 4; }}
    sg_radix_sort(unique, count, 0, key_bits);
    out = sg_uninit<int>((size_t)count * (SG_DIMS + 1));
    sg_launch(count, [&] {{ {p}_unpack(unique.data(), count, out.data(), o[0], o[1], o[2], o[3]); }});
    out.resize((size_t)count * (SG_DIMS + 1));
"#
        )
    } else {
        "    out = has_out_sites ? sg_read<int>(dir + \"/out_sites.bin\") : in;\n".to_string()
    };
    format!(
        r#"{launchers}
int main(int argc, char** argv) {{
    if (argc != 13) return 4;
    const std::string dir = argv[1];
    const int n_in = std::atoi(argv[2]);
    const int s[4] = {{std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6])}};
    const int o[4] = {{std::atoi(argv[7]), std::atoi(argv[8]), std::atoi(argv[9]), std::atoi(argv[10])}};
    const bool has_out_sites = std::atoi(argv[11]) != 0;
    const int key_bits = std::atoi(argv[12]);
    (void)o;
    (void)has_out_sites;
    (void)key_bits;
    std::vector<int> in = sg_read<int>(dir + "/in_coords.bin");
    std::vector<int> out;
{outputs}
    const int n_out = (int)(out.size() / (SG_DIMS + 1));
    size_t cap = 1;
    while (cap < 2 * (size_t)std::max(n_in, 1)) cap <<= 1;
    std::vector<sg_key> table = sg_empty_keys(cap);
    std::vector<int> values = sg_uninit<int>(cap);
    sg_launch(n_in, [&] {{ {p}_insert(in.data(), n_in, table.data(), values.data(), cap - 1, s[0], s[1], s[2], s[3]); }});
    std::vector<int> nbr = sg_uninit<int>((size_t)n_out * SG_K);
    std::vector<unsigned> masks = sg_uninit<unsigned>((size_t)n_out * SG_MASK_WORDS);
    sg_launch(n_out, [&] {{ {p}_neighbors(out.data(), n_out, table.data(), values.data(), cap - 1, s[0], s[1], s[2], s[3], nbr.data(), masks.data()); }});
    nbr.resize((size_t)n_out * SG_K);
    masks.resize((size_t)n_out * SG_MASK_WORDS);
    sg_write(dir + "/out_coords.bin", out);
    sg_write(dir + "/nbr.bin", nbr);
    sg_write(dir + "/masks.bin", masks);
    // CudaBackend::plan_on_device in tiles of 64 rows: no host step between the launches.
    const int block_rows = 64;
    std::vector<sg_key> pkeys = sg_uninit<sg_key>(n_out);
    sg_launch(n_out, [&] {{ {p}_mask_keys(masks.data(), n_out, pkeys.data()); }});
    sg_radix_sort(pkeys, n_out, 32, std::min(SG_K, 32));
    const int tiles = (n_out + block_rows - 1) / block_rows;
    std::vector<int> order = sg_uninit<int>(n_out);
    std::vector<unsigned> tile_union = sg_uninit<unsigned>((size_t)tiles * SG_MASK_WORDS);
    std::vector<int> starts = sg_uninit<int>((size_t)tiles + 1);
    sg_launch(tiles, [&] {{ {p}_tile_masks(pkeys.data(), n_out, masks.data(), block_rows, tiles, order.data(), tile_union.data(), starts.data()); }});
    sg_scan(starts, tiles);
    std::vector<int> offsets = sg_uninit<int>((size_t)tiles * SG_K);
    sg_launch(tiles, [&] {{ {p}_tile_offsets(tile_union.data(), starts.data(), tiles, offsets.data()); }});
    // What the conv kernels read: n_out rows, tiles + 1 starts, starts[tiles] offsets.
    order.resize(n_out);
    starts.resize((size_t)tiles + 1);
    offsets.resize(starts[tiles]);
    sg_write(dir + "/order.bin", order);
    sg_write(dir + "/starts.bin", starts);
    sg_write(dir + "/offsets.bin", offsets);
    return 0;
}}
"#,
        launchers = rulebook_launchers(kernels)
    )
}

/// A driver of the radix sort alone: sorts `keys.bin` by bits [shift, shift + bits) into
/// `sorted.bin` through `sg_radix_sort`, the runtime's launch sequence.
fn radix_main(kernels: &RulebookKernels) -> String {
    format!(
        r#"{launchers}
int main(int argc, char** argv) {{
    if (argc != 4) return 4;
    const std::string dir = argv[1];
    const int shift = std::atoi(argv[2]), bits = std::atoi(argv[3]);
    std::vector<sg_key> keys = sg_read<sg_key>(dir + "/keys.bin");
    const long long n = (long long)keys.size();
    sg_radix_sort(keys, n, shift, bits);
    keys.resize(n);
    sg_write(dir + "/sorted.bin", keys);
    return 0;
}}
"#,
        launchers = rulebook_launchers(kernels)
    )
}

/// Compiles a rulebook harness with the host C++ compiler; panics with its log on failure.
fn build_rulebook_harness(
    kernels: &RulebookKernels,
    main: &str,
    dir: &Path,
    name: &str,
) -> PathBuf {
    build_harness(
        dir,
        name,
        &format!("{RULEBOOK_HEAD}{}{main}", kernels.source),
        &kernels.prefix,
    )
}

fn read_vec<T: Copy + Default>(path: &Path) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = vec![T::default(); n];
    // SAFETY: `out` has room for exactly `n` values of the plain number type T, whose bytes
    // are its value; the copy covers `n · size_of::<T>()` bytes of `bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<T>(),
        );
    }
    out
}

#[test]
fn cuda_rulebook_kernels_match_host_rulebook_in_cpu_emulation() {
    let test = "cuda_rulebook_kernels_match_host_rulebook_in_cpu_emulation";
    if !gxx_or_skip(test) {
        return;
    }
    let root = std::env::temp_dir().join(format!("sparsegen-emu-rb-{}", std::process::id()));
    // The layer cases, and two of 30k sites whose sorts span many radix blocks.
    let mut all = cases(DType::F32);
    for spec in [
        LayerSpec::builder(ConvKind::Submanifold, 3),
        LayerSpec::builder(ConvKind::Strided, 3)
            .stride(2)
            .padding(1),
    ] {
        all.push(Case {
            spec: spec.channels(16, 16).build().unwrap(),
            sites: 30_000,
            shape: vec![64, 64, 64],
        });
    }
    for (i, case) in all.iter().enumerate() {
        let (rulebook, _) = rulebook_and_input(case, 11 + i as u64);
        let geometry = case.spec.geometry();
        let kernels = rulebook_kernels(&geometry);
        let dir = root.join(format!("{}-{i}", kernels.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join("in_coords.bin"), rulebook.input().coords());
        let inverse = case.spec.kind == ConvKind::Inverse;
        if inverse {
            write(&dir.join("out_sites.bin"), rulebook.output().coords());
        }
        let shape4 = |shape: &[u32]| {
            let mut s = [1u32; 4];
            s[..shape.len()].copy_from_slice(shape);
            s
        };
        let in_shape = shape4(rulebook.input().spatial_shape());
        let out_shape = shape4(rulebook.output().spatial_shape());
        let exe = build_rulebook_harness(&kernels, &rulebook_main(&kernels), &dir, "rulebook");
        let mut args = vec![rulebook.n_in().to_string()];
        args.extend(in_shape.iter().chain(&out_shape).map(u32::to_string));
        args.push(u8::from(inverse).to_string());
        // Output keys lie below batch · cells of the output grid (the runtime's bound).
        let cells = out_shape.iter().map(|&s| u128::from(s)).product::<u128>()
            * u128::from(rulebook.input().batch_size());
        args.push(radix_key_bits(cells).to_string());
        let ran = Command::new(&exe).arg(&dir).args(&args).output().unwrap();
        assert!(ran.status.success(), "{}: {:?}", kernels.prefix, ran.status);
        let coords: Vec<i32> = read_vec(&dir.join("out_coords.bin"));
        let nbr: Vec<i32> = read_vec(&dir.join("nbr.bin"));
        let masks: Vec<u32> = read_vec(&dir.join("masks.bin"));
        assert_eq!(
            coords,
            rulebook.output().coords(),
            "{}: output sites",
            kernels.prefix
        );
        assert_eq!(
            nbr,
            rulebook.neighbors(),
            "{}: neighbour table",
            kernels.prefix
        );
        let words = rulebook.kernel_volume().div_ceil(32);
        for o in 0..rulebook.n_out() {
            for (k, &i) in rulebook.neighbors_of(o).iter().enumerate() {
                let bit = masks[o * words + k / 32] >> (k % 32) & 1;
                assert_eq!(
                    bit == 1,
                    i >= 0,
                    "{}: mask of row {o} offset {k}",
                    kernels.prefix
                );
            }
        }
        // The launch plan built from the device masks.
        let order: Vec<i32> = read_vec(&dir.join("order.bin"));
        let starts: Vec<i32> = read_vec(&dir.join("starts.bin"));
        let offsets: Vec<i32> = read_vec(&dir.join("offsets.bin"));
        let host = TilePlan::build(&rulebook, 64, "host").unwrap();
        // Host and device planners share the plan key: the same plan for every K.
        assert_eq!(order, host.order, "{}: plan order", kernels.prefix);
        assert_eq!(
            starts, host.tile_offset_start,
            "{}: plan starts",
            kernels.prefix
        );
        assert_eq!(
            offsets, host.tile_offsets,
            "{}: plan offsets",
            kernels.prefix
        );
        eprintln!(
            "{}: {} outputs, {} pairs match",
            kernels.prefix,
            rulebook.n_out(),
            rulebook.n_pairs()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn cuda_radix_sort_is_a_stable_sort_in_cpu_emulation() {
    let test = "cuda_radix_sort_is_a_stable_sort_in_cpu_emulation";
    if !gxx_or_skip(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sparsegen-emu-radix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let geometry = cases(DType::F32)[0].spec.geometry();
    let kernels = rulebook_kernels(&geometry);
    let exe = build_rulebook_harness(&kernels, &radix_main(&kernels), &dir, "radix");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // splitmix64: a fixed stream, so a failure reproduces.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let tile = RADIX_TILE as usize;
    // (keys, field shift, field bits, distinct field values): the field is the sort key; the
    // bits below it hold the input position (so equal fields must keep ascending positions)
    // and the bits above it are noise the sort must ignore.
    let shapes = [
        (0, 20, 11, 5),
        (1, 20, 11, 5),
        (2, 20, 11, 2),
        (255, 20, 9, 3),
        (tile - 1, 20, 11, 7),
        (tile, 20, 11, 7),
        (tile + 1, 20, 17, 1000),
        (3 * tile + 77, 24, 27, 9),
        (5000, 32, 32, 4),
    ];
    for (n, shift, bits, distinct) in shapes {
        let keys: Vec<u64> = (0..n as u64)
            .map(|i| {
                let field = (next() % distinct) << shift;
                let above = match shift + bits {
                    64 => 0,
                    end => next() << end,
                };
                above | field | i
            })
            .collect();
        write(&dir.join("keys.bin"), &keys);
        let ran = Command::new(&exe)
            .arg(&dir)
            .args([shift.to_string(), bits.to_string()])
            .output()
            .unwrap();
        assert!(ran.status.success(), "n = {n}: {:?}", ran.status);
        let mut sorted: Vec<u64> = read_vec(&dir.join("sorted.bin"));
        sorted.truncate(n);
        let field = |k: u64| (k >> shift) & ((1u64 << bits) - 1);
        let mut want = keys.clone();
        want.sort_by_key(|&k| field(k)); // stable
        assert_eq!(sorted.len(), n, "n = {n}: length");
        assert!(
            sorted.windows(2).all(|w| field(w[0]) <= field(w[1])),
            "n = {n}, bits {shift}..{}: not sorted",
            shift + bits
        );
        assert!(
            sorted
                .windows(2)
                .all(|w| field(w[0]) != field(w[1]) || (w[0] & 0xfffff) < (w[1] & 0xfffff)),
            "n = {n}: equal keys out of input order"
        );
        assert_eq!(sorted, want, "n = {n}: not the stable sort of the input");
        eprintln!(
            "radix sort of {n} keys by bits {shift}..{}: ok",
            shift + bits
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn gather_main(kernels: &GatherKernels) -> String {
    let gemm = &kernels.gemm_entry;
    let epilogue = &kernels.epilogue_entry;
    format!(
        r#"{HARNESS_IO}
// One launch: `threads` OS threads run every block in turn, with a barrier between blocks.
template <class F> static void sg_run_blocks(unsigned gx, unsigned gy, unsigned gz, unsigned threads, F f) {{
    std::barrier<> bar(threads);
    sg_bar = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {{
        pool.emplace_back([&, t] {{
            threadIdx = {{t, 0, 0}};
            blockDim = {{threads, 1, 1}};
            for (unsigned bz = 0; bz < gz; ++bz)
                for (unsigned by = 0; by < gy; ++by)
                    for (unsigned bx = 0; bx < gx; ++bx) {{
                        blockIdx = {{bx, by, bz}};
                        f();
                        bar.arrive_and_wait();
                    }}
        }});
    }}
    for (auto& th : pool) th.join();
}}
int main(int argc, char** argv) {{
    if (argc != 8) return 4;
    const std::string dir = argv[1];
    const int n_out = std::atoi(argv[2]);
    const unsigned gy = std::atoi(argv[3]), gz = std::atoi(argv[4]), threads = std::atoi(argv[5]);
    const size_t y_len = std::atoll(argv[6]);
    const int bm = std::atoi(argv[7]);
    auto x = sg_read<sg_t>(dir + "/x.bin");
    auto w = sg_read<sg_t>(dir + "/w.bin");
    auto bias = sg_read<float>(dir + "/bias.bin");
    auto pair_in = sg_read<int>(dir + "/pair_in.bin");
    auto pair_out = sg_read<int>(dir + "/pair_out.bin");
    auto starts = sg_read<int>(dir + "/starts.bin");
    std::vector<float> acc(y_len, 0.0f);
    std::vector<sg_t> y(y_len);
    std::memset(y.data(), 0xff, y_len * sizeof(sg_t));
    for (size_t k = 0; k + 1 < starts.size(); ++k) {{
        const int n = starts[k + 1] - starts[k];
        if (n == 0) continue;
        const unsigned gx = (n + bm - 1) / bm;
        sg_run_blocks(gx, gy, gz, threads, [&] {{
            {gemm}(x.data(), w.data(), pair_in.data() + starts[k], pair_out.data() + starts[k], n, (int)k, acc.data());
        }});
    }}
    const unsigned blocks = (unsigned)((y_len + 255) / 256);
    for (unsigned b = 0; b < blocks; ++b)
        for (unsigned t = 0; t < 256; ++t) {{
            blockIdx = {{b, 0, 0}};
            threadIdx = {{t, 0, 0}};
            blockDim = {{256, 1, 1}};
            {epilogue}(acc.data(), bias.data(), y.data(), n_out);
        }}
    FILE* f = std::fopen((dir + "/y.bin").c_str(), "wb");
    if (!f || std::fwrite(y.data(), sizeof(sg_t), y_len, f) != y_len) return 5;
    std::fclose(f);
    return 0;
}}
"#
    )
}

fn emulate_gather(
    kernels: &GatherKernels,
    layer: &SparseConv,
    rulebook: &Rulebook,
    input: &[f32],
    dir: &Path,
) -> Vec<f32> {
    let spec = layer.spec();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut starts = vec![0i32];
    let (mut pin, mut pout) = (Vec::new(), Vec::new());
    for (ins, outs) in rulebook.pair_lists() {
        pin.extend(ins.iter().map(|&i| i as i32));
        pout.extend(outs.iter().map(|&o| o as i32));
        starts.push(pin.len() as i32);
    }
    let packed = pack_weights(spec, kernels.weight_layout, layer.weight()).unwrap();
    std::fs::write(dir.join("x.bin"), encode(spec.dtype, input)).unwrap();
    std::fs::write(dir.join("w.bin"), encode(spec.dtype, &packed)).unwrap();
    write(&dir.join("bias.bin"), layer.bias().unwrap_or(&[0.0]));
    write(&dir.join("pair_in.bin"), &pin);
    write(&dir.join("pair_out.bin"), &pout);
    write(&dir.join("starts.bin"), &starts);
    let mut source = kernels.source.clone();
    if spec.dtype == DType::F16 {
        let mut w = CWriter::new();
        dtype_prelude(&mut w, spec.dtype);
        source = source.replace(&w.finish(), F16_HOST);
    }
    let exe = build_harness(
        dir,
        "gather",
        &format!("{HARNESS_HEAD}{source}{}", gather_main(kernels)),
        &kernels.gemm_entry,
    );
    let y_len = rulebook.n_out() * spec.out_channels as usize;
    let gy = spec.out_per_group().div_ceil(kernels.tile.block_cols());
    let ran = Command::new(&exe)
        .arg(dir)
        .args(
            [
                rulebook.n_out(),
                gy as usize,
                spec.groups as usize,
                kernels.threads as usize,
                y_len,
                kernels.tile.block_rows() as usize,
            ]
            .map(|v| v.to_string()),
        )
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}: {:?}",
        kernels.gemm_entry,
        ran.status
    );
    decode(spec.dtype, &std::fs::read(dir.join("y.bin")).unwrap())
}

#[test]
fn cuda_gather_scatter_kernels_match_reference_in_cpu_emulation() {
    let test = "cuda_gather_scatter_kernels_match_reference_in_cpu_emulation";
    if !gxx_or_skip(test) {
        return;
    }
    let root = std::env::temp_dir().join(format!("sparsegen-emu-gather-{}", std::process::id()));
    let sm = SmVersion(90);
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        for (i, case) in cases(dtype).iter().enumerate() {
            let layer = layer(case, 7 + i as u64);
            let (rulebook, input) = rulebook_and_input(case, 11 + i as u64);
            let want = reference_output(&layer, &rulebook, &input);
            let tile = conv_candidates(&case.spec, sm)
                .into_iter()
                .find(|t| matches!(t, ConvTile::Simt { .. }))
                .unwrap();
            let kernels = gather_kernels(&case.spec, &tile, sm).unwrap();
            let got = emulate_gather(
                &kernels,
                &layer,
                &rulebook,
                &input,
                &root.join(&kernels.gemm_entry),
            );
            let err = relative_error(&got, &want);
            eprintln!("{err:>10.3e}  {}", kernels.gemm_entry);
            assert!(
                err <= tolerance(dtype),
                "{}: relative error {err}",
                kernels.gemm_entry
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn cuda_tf32_kernels_match_reference_in_cpu_emulation() {
    let test = "cuda_tf32_kernels_match_reference_in_cpu_emulation";
    if !gxx_or_skip(test) {
        return;
    }
    let root = std::env::temp_dir().join(format!("sparsegen-emu-tf32-{}", std::process::id()));
    let sm = SmVersion(90);
    for (i, case) in cases(DType::F32).iter().enumerate() {
        let layer = layer(case, 7 + i as u64);
        let (rulebook, input) = rulebook_and_input(case, 11 + i as u64);
        let want = reference_output(&layer, &rulebook, &input);
        let tile = tf32_candidates(&case.spec, sm)[0];
        let kernel = conv_kernel(&case.spec, &tile, sm).unwrap();
        let got = emulate(
            &kernel,
            &layer,
            &rulebook,
            &input,
            &root.join(&kernel.entry),
        );
        let err = relative_error(&got, &want);
        eprintln!("{err:>10.3e}  {}", kernel.entry);
        // TF32 keeps 10 mantissa bits, like f16: the half-precision tolerance applies.
        assert!(
            err <= tolerance(DType::F16),
            "{}: relative error {err}",
            kernel.entry
        );
        assert!(err > 0.0, "{}: TF32 rounding should show", kernel.entry);
    }
    let _ = std::fs::remove_dir_all(&root);
}
