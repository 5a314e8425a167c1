//! Drives compiled kernels (and the scalar fallback) over the rows of a neighbour table,
//! in parallel over output tiles with rayon.
//!
//! Every output row is computed by exactly one call, from its own neighbours, in a summation
//! order fixed by the layer (see [`sparsegen_codegen::cpu`]); tiles only decide which thread
//! computes which rows, so results are bitwise independent of the thread count. No atomics.
//!
//! Outputs are written into uninitialised memory: every path writes every element of every
//! row it is given exactly once (the epilogues store all `Cout` channels), which is what lets
//! the caller skip zeroing the output.

use std::mem::MaybeUninit;

use rayon::prelude::*;
use sparsegen_codegen::LayerSpec;
use sparsegen_codegen::cpu::{DirectLayout, GemmLayout};

use super::jit::{DirectFn, GemmCalleeFn, GemmDriverFn};

/// Output rows per direct-kernel call: a few tiles per thread, bounded for locality.
pub(crate) fn direct_tile_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows / (threads * 16)).clamp(16, 256)
}

/// Output rows per GEMM-call tile.
pub(crate) const GEMM_TILE_ROWS: usize = 256;

/// Weights (and bias) packed for one strategy.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

impl Packed {
    pub(crate) fn direct(layout: &DirectLayout, weight: &[f32], bias: Option<&[f32]>) -> Self {
        Packed {
            weight: layout.pack_weights(weight),
            bias: layout.pack_bias(bias),
        }
    }

    pub(crate) fn gemm(layout: &GemmLayout, weight: &[f32], bias: Option<&[f32]>) -> Self {
        Packed {
            weight: layout.pack_weights(weight),
            bias: layout.pack_bias(bias),
        }
    }
}

/// What the rows of a run read: the `[rows, K]` neighbour slice (entries −1 or valid rows of
/// `input`) and the whole `[N_in, Cin]` input.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub(crate) nbr: &'a [i32],
    pub(crate) kernel_volume: usize,
    pub(crate) input: &'a [f32],
}

/// The scalar path: the kernels' exact operation order in plain Rust (`mul_add`, offsets
/// ascending, channels ascending, then bias, then the activation), on KRSC weights.
pub(crate) fn run_scalar(
    spec: &LayerSpec,
    rows: Rows<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let cin = spec.in_channels as usize;
    let cout = spec.out_channels as usize;
    let cin_g = spec.in_per_group() as usize;
    let cout_g = spec.out_per_group() as usize;
    let k_vol = rows.kernel_volume;
    out.par_chunks_mut(cout).enumerate().for_each(|(r, y)| {
        let nbrs = &rows.nbr[r * k_vol..(r + 1) * k_vol];
        let mut acc = vec![0f32; cout];
        for (k, &i) in nbrs.iter().enumerate() {
            if i < 0 {
                continue;
            }
            let x = &rows.input[i as usize * cin..(i as usize + 1) * cin];
            for (co, a) in acc.iter_mut().enumerate() {
                let g = co / cout_g;
                let w = &weight[(co * k_vol + k) * cin_g..(co * k_vol + k + 1) * cin_g];
                for (&xv, &wv) in x[g * cin_g..(g + 1) * cin_g].iter().zip(w) {
                    *a = xv.mul_add(wv, *a);
                }
            }
        }
        for (co, (y, a)) in y.iter_mut().zip(acc).enumerate() {
            let v = match bias {
                Some(b) => a + b[co],
                None => a,
            };
            y.write(spec.activation.apply(v));
        }
    });
}

/// Runs a direct kernel (the entry point of a direct [`CompiledKernel`](super::CompiledKernel)) over `out.len() / Cout` rows.
pub(crate) fn run_direct(
    f: DirectFn,
    spec: &LayerSpec,
    rows: Rows<'_>,
    packed: &Packed,
    out: &mut [MaybeUninit<f32>],
) {
    let cout = spec.out_channels as usize;
    let n = out.len() / cout;
    let tile = direct_tile_rows(n);
    let k_vol = rows.kernel_volume;
    out.par_chunks_mut(tile * cout)
        .enumerate()
        .for_each(|(t, chunk)| {
            let n_rows = chunk.len() / cout;
            let nbr = &rows.nbr[t * tile * k_vol..(t * tile + n_rows) * k_vol];
            // SAFETY: the kernel reads `n_rows` rows of `nbr` (K entries each, all −1 or valid
            // input rows — the rulebook's invariant, checked by the backend), reads those
            // rows of `input` (Cin floats each), reads the packed weights and bias of exactly
            // the layout it was generated with, and writes `n_rows × Cout` floats of `chunk`.
            unsafe {
                f(
                    nbr.as_ptr(),
                    n_rows as i64,
                    rows.input.as_ptr(),
                    packed.weight.as_ptr(),
                    packed.bias.as_ptr(),
                    chunk.as_mut_ptr().cast::<f32>(),
                )
            };
        });
}

/// Per-thread buffers of the GEMM-call path.
struct GemmScratch {
    counts: Vec<u32>,
    starts: Vec<u32>,
    in_rows: Vec<u32>,
    out_rows: Vec<u32>,
    acc: Vec<f32>,
}

/// Runs a GEMM-call kernel over `out.len() / Cout` rows, tiles of [`GEMM_TILE_ROWS`].
pub(crate) fn run_gemm(
    f: GemmDriverFn,
    spec: &LayerSpec,
    rows: Rows<'_>,
    packed: &Packed,
    callee: GemmCalleeFn,
    out: &mut [MaybeUninit<f32>],
) {
    let layout = GemmLayout::new(spec);
    let cout = spec.out_channels as usize;
    let k_vol = rows.kernel_volume;
    let tile = GEMM_TILE_ROWS;
    out.par_chunks_mut(tile * cout).enumerate().for_each_init(
        || GemmScratch {
            counts: vec![0; k_vol],
            starts: (0..k_vol).map(|k| (k * tile) as u32).collect(),
            in_rows: vec![0; tile * k_vol],
            out_rows: vec![0; tile * k_vol],
            acc: vec![0.0; tile * layout.cout_padded],
        },
        |s, (t, chunk)| {
            let n_rows = chunk.len() / cout;
            let nbr = &rows.nbr[t * tile * k_vol..(t * tile + n_rows) * k_vol];
            // One branch-free pass: offset k's pairs go to slots k·tile.., each entry is
            // written to the next free slot and kept (count advanced) only if present. A row
            // has at most one pair per offset, so a segment never overflows into the next.
            s.counts.fill(0);
            for (r, row) in nbr.chunks_exact(k_vol).enumerate() {
                for (k, &i) in row.iter().enumerate() {
                    let at = k * tile + s.counts[k] as usize;
                    s.in_rows[at] = i as u32;
                    s.out_rows[at] = r as u32;
                    s.counts[k] += u32::from(i >= 0);
                }
            }
            s.acc[..n_rows * layout.cout_padded].fill(0.0);
            // SAFETY: counts/starts hold K entries describing disjoint ranges of the pair
            // lists (segment k starts at k·tile and holds counts[k] ≤ tile pairs); every in_rows entry is a valid input row (rulebook invariant), every
            // out_rows entry is < n_rows and distinct within an offset; acc holds n_rows rows
            // of cout_padded floats; the weights and bias have the GEMM layout the kernel was
            // generated for; the kernel writes n_rows × Cout floats of `chunk`; `callee`
            // satisfies the GEMM callee contract (see `gemm`).
            unsafe {
                f(
                    s.counts.as_ptr(),
                    s.starts.as_ptr(),
                    s.in_rows.as_ptr(),
                    s.out_rows.as_ptr(),
                    n_rows as i64,
                    rows.input.as_ptr(),
                    packed.weight.as_ptr(),
                    packed.bias.as_ptr(),
                    s.acc.as_mut_ptr(),
                    chunk.as_mut_ptr().cast::<f32>(),
                    callee,
                )
            };
        },
    );
}
