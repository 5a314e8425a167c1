//! The GEMM micro-kernels the generated GEMM-call loop calls on each kernel offset's
//! gathered pairs: `acc[out_rows[p]] += input[in_rows[p]] @ W_k` for `p < n`.
//!
//! Cranelift only has 128-bit vectors; on a host with AVX-512 the 512-bit kernel here
//! register-blocks `MR` pairs × `NV` 16-lane vectors of output channels (24 of the 32 zmm
//! registers hold accumulators) and reads each weight vector once per `MR` rows. The
//! AVX2 kernel does the same with 8-lane vectors on hosts without AVX-512, and the portable
//! kernel is the same loop with `f32::mul_add`.
//!
//! Both accumulate every element as `acc = fma(x[ci], w[ci], acc)` with `ci` ascending,
//! starting from the value already in the tile, so the sum order is that of the direct JIT
//! kernel and the results are bitwise identical to it (FMA rounds once either way).
//!
//! Callers guarantee (this is the callee's contract, relied on in every `unsafe` below):
//! `input` holds every row `in_rows[p]` of `cin` floats; `w_k` holds `cin × cout_padded`
//! floats; `acc` holds every row `out_rows[p]` of `cout_padded` floats; `cout_padded` is a
//! multiple of 16; the `out_rows[p]` are distinct.

use super::jit::GemmCalleeFn;

/// Which GEMM micro-kernel the GEMM-call kernels call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmKernel {
    /// The widest this host supports: AVX-512, else AVX2 + FMA, else portable.
    #[default]
    Best,
    /// AVX2 + FMA (portable where the host lacks them): to measure a non-AVX-512 host here.
    Avx2,
    /// Plain Rust with `mul_add`.
    Portable,
}

impl GemmKernel {
    /// Parses `best`, `avx2` or `portable`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "best" => GemmKernel::Best,
            "avx2" => GemmKernel::Avx2,
            "portable" => GemmKernel::Portable,
            _ => return None,
        })
    }
}

/// The callee for `choice` on this host and its name (`avx512`, `avx2`, `portable`).
pub(crate) fn callee(choice: GemmKernel) -> (GemmCalleeFn, &'static str) {
    match choice {
        GemmKernel::Best => best_callee(),
        GemmKernel::Portable => (gemm_pairs_portable, "portable"),
        GemmKernel::Avx2 => {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return (gemm_pairs_avx2, "avx2");
                }
            }
            (gemm_pairs_portable, "portable")
        }
    }
}

/// The best GEMM callee for this host and its name.
pub(crate) fn best_callee() -> (GemmCalleeFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (gemm_pairs_avx512, "avx512");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return (gemm_pairs_avx2, "avx2");
        }
    }
    (gemm_pairs_portable, "portable")
}

/// The `gemm` crate (sarah-ek/gemm, its AVX-512 kernels with `x86-v4`) as a callee, kept to
/// measure the hand-written kernel against a well-kept Rust GEMM: gathers the pairs' input
/// rows into a contiguous `[n, cin]` tile, multiplies it by `W_k` into `[n, cout_padded]`, and
/// adds that to the accumulator rows. Deterministic, but it sums each product block before
/// adding it (a different rounding from the FMA chain), so it is not bitwise equal to the
/// other kernels and the autotuner does not pick it.
///
/// # Safety
/// See the module docs for the buffer contract.
pub(crate) unsafe extern "C" fn gemm_pairs_gemm_crate(
    input: *const f32,
    cin: i64,
    w_k: *const f32,
    cout_padded: i64,
    in_rows: *const u32,
    out_rows: *const u32,
    n: i64,
    acc: *mut f32,
) {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }
    let (cin, cout_padded, n) = (cin as usize, cout_padded as usize, n as usize);
    SCRATCH.with_borrow_mut(|(a, tmp)| {
        a.resize(n * cin, 0.0);
        tmp.resize(n * cout_padded, 0.0);
        for (p, row) in a.chunks_exact_mut(cin.max(1)).enumerate().take(n) {
            // SAFETY: pair p exists and its input row has cin floats (module contract).
            let x = unsafe {
                std::slice::from_raw_parts(input.add(*in_rows.add(p) as usize * cin), cin)
            };
            row.copy_from_slice(x);
        }
        // SAFETY: a is [n, cin] row-major, W_k is [cin, cout_padded] row-major (module
        // contract), tmp is [n, cout_padded]; strides are in elements.
        unsafe {
            gemm::gemm(
                n,
                cout_padded,
                cin,
                tmp.as_mut_ptr(),
                1,
                cout_padded as isize,
                false,
                a.as_ptr(),
                1,
                cin as isize,
                w_k,
                1,
                cout_padded as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        for (p, t) in tmp.chunks_exact(cout_padded).enumerate().take(n) {
            // SAFETY: pair p's output row of the tile has cout_padded floats (contract).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    acc.add(*out_rows.add(p) as usize * cout_padded),
                    cout_padded,
                )
            };
            for (d, &v) in dst.iter_mut().zip(t) {
                *d += v;
            }
        }
    });
}

/// Portable callee: the reference loop order with `mul_add`.
///
/// # Safety
/// See the module docs for the buffer contract.
pub(crate) unsafe extern "C" fn gemm_pairs_portable(
    input: *const f32,
    cin: i64,
    w_k: *const f32,
    cout_padded: i64,
    in_rows: *const u32,
    out_rows: *const u32,
    n: i64,
    acc: *mut f32,
) {
    let (cin, cout_padded, n) = (cin as usize, cout_padded as usize, n as usize);
    for p in 0..n {
        // SAFETY: p < n, and the pair lists hold n entries (module contract).
        let (i, o) = unsafe { (*in_rows.add(p) as usize, *out_rows.add(p) as usize) };
        // SAFETY: row i of the input and row o of the tile exist (module contract).
        let (x, a) = unsafe {
            (
                std::slice::from_raw_parts(input.add(i * cin), cin),
                std::slice::from_raw_parts_mut(acc.add(o * cout_padded), cout_padded),
            )
        };
        for (ci, &xv) in x.iter().enumerate() {
            // SAFETY: W_k has cin rows of cout_padded floats (module contract).
            let w = unsafe { std::slice::from_raw_parts(w_k.add(ci * cout_padded), cout_padded) };
            for (av, &wv) in a.iter_mut().zip(w) {
                *av = xv.mul_add(wv, *av);
            }
        }
    }
}

/// AVX-512 callee.
///
/// # Safety
/// See the module docs for the buffer contract; the host must support AVX-512F
/// ([`best_callee`] checks).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe extern "C" fn gemm_pairs_avx512(
    input: *const f32,
    cin: i64,
    w_k: *const f32,
    cout_padded: i64,
    in_rows: *const u32,
    out_rows: *const u32,
    n: i64,
    acc: *mut f32,
) {
    let args = Args {
        input,
        cin: cin as usize,
        w_k,
        cout_padded: cout_padded as usize,
        in_rows,
        out_rows,
        n: n as usize,
        acc,
    };
    // SAFETY: AVX-512F is present (only `best_callee` hands this function out, after
    // checking), and the buffer contract is the caller's.
    unsafe {
        if args.cout_padded.is_multiple_of(64) {
            avx512::columns::<4, 6>(&args);
        } else if args.cout_padded.is_multiple_of(32) {
            avx512::columns::<2, 12>(&args);
        } else {
            avx512::columns::<1, 12>(&args);
        }
    }
}

/// AVX2 + FMA callee (8-lane vectors), for hosts without AVX-512.
///
/// # Safety
/// See the module docs for the buffer contract; the host must support AVX2 and FMA
/// ([`best_callee`] checks).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe extern "C" fn gemm_pairs_avx2(
    input: *const f32,
    cin: i64,
    w_k: *const f32,
    cout_padded: i64,
    in_rows: *const u32,
    out_rows: *const u32,
    n: i64,
    acc: *mut f32,
) {
    let args = Args {
        input,
        cin: cin as usize,
        w_k,
        cout_padded: cout_padded as usize,
        in_rows,
        out_rows,
        n: n as usize,
        acc,
    };
    // SAFETY: AVX2 and FMA are present (only `best_callee` hands this function out, after
    // checking), and the buffer contract is the caller's. cout_padded is a multiple of 16.
    unsafe { avx2::columns::<2, 6>(&args) }
}

#[cfg(target_arch = "x86_64")]
struct Args {
    input: *const f32,
    cin: usize,
    w_k: *const f32,
    cout_padded: usize,
    in_rows: *const u32,
    out_rows: *const u32,
    n: usize,
    acc: *mut f32,
}

/// A register-tiled micro-kernel module for one x86 vector width: `$lanes`-lane `$vec`
/// vectors, the intrinsics that load, store, splat and FMA them, and the target features
/// that enable those. The AVX2 and AVX-512 kernels are this one loop nest at two widths.
#[cfg(target_arch = "x86_64")]
macro_rules! register_tiled_kernels {
    (
        $module:ident {
            features: $features:literal, lanes: $lanes:literal, vector: $vec:ident,
            zero: $zero:ident, load: $load:ident, store: $store:ident,
            splat: $splat:ident, fma: $fma:ident $(,)?
        }
    ) => {
        mod $module {
            use std::arch::x86_64::{$fma, $load, $splat, $store, $vec, $zero};

            use super::Args;

            #[doc = concat!("All column blocks of `NV` ", $lanes, "-lane vectors, rows in blocks of `MR` then one by one.")]
            ///
            /// # Safety
            #[doc = concat!("`", $features, "` present; the module's buffer contract; `", $lanes, "·NV` divides `cout_padded`.")]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn columns<const NV: usize, const MR: usize>(a: &Args) {
                let mut col = 0;
                while col < a.cout_padded {
                    let mut p = 0;
                    while p + MR <= a.n {
                        // SAFETY: rows p..p+MR exist; forwarded contract.
                        unsafe { block::<NV, MR>(a, p, col) };
                        p += MR;
                    }
                    while p < a.n {
                        // SAFETY: as above for one row.
                        unsafe { block::<NV, 1>(a, p, col) };
                        p += 1;
                    }
                    col += NV * $lanes;
                }
            }

            #[doc = concat!("`MR` pairs starting at `p`, output channels `col..col + ", $lanes, "·NV`.")]
            ///
            /// # Safety
            #[doc = concat!("`", $features, "` present; pairs `p..p+MR` exist; the module's buffer contract.")]
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::needless_range_loop)] // [row][vector] register tiles read best indexed.
            unsafe fn block<const NV: usize, const MR: usize>(a: &Args, p: usize, col: usize) {
                let mut acc: [[$vec; NV]; MR] = [[$zero(); NV]; MR];
                let mut x_rows = [std::ptr::null::<f32>(); MR];
                let mut acc_rows = [std::ptr::null_mut::<f32>(); MR];
                for m in 0..MR {
                    // SAFETY: pair p + m exists; its rows exist in the input and the tile,
                    // and col + lanes·NV ≤ cout_padded (col steps by lanes·NV over a
                    // multiple of it).
                    unsafe {
                        let i = *a.in_rows.add(p + m) as usize;
                        let o = *a.out_rows.add(p + m) as usize;
                        x_rows[m] = a.input.add(i * a.cin);
                        acc_rows[m] = a.acc.add(o * a.cout_padded + col);
                        for v in 0..NV {
                            acc[m][v] = $load(acc_rows[m].add($lanes * v));
                        }
                    }
                }
                for ci in 0..a.cin {
                    let mut w = [$zero(); NV];
                    for (v, wv) in w.iter_mut().enumerate() {
                        // SAFETY: W_k row ci has cout_padded floats, and
                        // col + lanes·(v + 1) ≤ cout_padded.
                        *wv = unsafe { $load(a.w_k.add(ci * a.cout_padded + col + $lanes * v)) };
                    }
                    for m in 0..MR {
                        // SAFETY: input rows have cin floats.
                        let x = $splat(unsafe { *x_rows[m].add(ci) });
                        for v in 0..NV {
                            acc[m][v] = $fma(x, w[v], acc[m][v]);
                        }
                    }
                }
                for m in 0..MR {
                    for v in 0..NV {
                        // SAFETY: the same tile elements that were loaded above.
                        unsafe { $store(acc_rows[m].add($lanes * v), acc[m][v]) };
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
register_tiled_kernels! {
    avx2 {
        features: "avx2,fma", lanes: 8, vector: __m256,
        zero: _mm256_setzero_ps, load: _mm256_loadu_ps, store: _mm256_storeu_ps,
        splat: _mm256_set1_ps, fma: _mm256_fmadd_ps,
    }
}

#[cfg(target_arch = "x86_64")]
register_tiled_kernels! {
    avx512 {
        features: "avx512f", lanes: 16, vector: __m512,
        zero: _mm512_setzero_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps,
        splat: _mm512_set1_ps, fma: _mm512_fmadd_ps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_callee_agrees_bitwise() {
        let (cin, cout_padded) = (37usize, 64usize);
        let n_in = 20;
        let input: Vec<f32> = (0..n_in * cin)
            .map(|v| ((v * 7 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..cin * cout_padded)
            .map(|v| ((v * 5 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let in_rows: Vec<u32> = (0..15).map(|p| (p * 3 % n_in) as u32).collect();
        let out_rows: Vec<u32> = (0..15).map(|p| (14 - p) as u32).collect();
        let run = |f: GemmCalleeFn| {
            let mut acc: Vec<f32> = (0..15 * cout_padded).map(|v| v as f32 * 0.01).collect();
            // SAFETY: the buffers satisfy the module contract by construction.
            unsafe {
                f(
                    input.as_ptr(),
                    cin as i64,
                    w.as_ptr(),
                    cout_padded as i64,
                    in_rows.as_ptr(),
                    out_rows.as_ptr(),
                    15,
                    acc.as_mut_ptr(),
                )
            };
            acc
        };
        let portable = run(gemm_pairs_portable);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (best, _) = best_callee();
        assert_eq!(bits(&portable), bits(&run(best)));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert_eq!(bits(&portable), bits(&run(gemm_pairs_avx2)));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert_eq!(bits(&portable), bits(&run(gemm_pairs_avx512)));
            }
        }
        assert!(portable.iter().any(|&v| v != 0.0));
    }
}
