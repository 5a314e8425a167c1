//! The reference executor: plain-Rust gather-GEMM over a rulebook, the oracle every backend
//! and every dataflow is tested against.
//!
//! For each output row `o`, each kernel offset `k` with input row `i = nbr[o, k]`, and each
//! group `g`: `y[o, g·Cout_g + co] += Σ_ci x[i, g·Cin_g + ci] · W[g·Cout_g + co, k, ci]`,
//! summed over `k` ascending then `ci` ascending, in f32 or f64; then bias and activation.
//! Weights are spconv's KRSC layout `[Cout, K, Cin/groups]`. Rows are independent, so the
//! result does not depend on the number of threads. It is written to be obviously right,
//! not fast.

use rayon::prelude::*;
use sparsegen_codegen::LayerSpec;

use crate::rulebook::Rulebook;

/// Accumulation precision of the reference executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accumulate {
    /// f32 sums (what an f32 backend computes, up to summation order).
    #[default]
    F32,
    /// f64 sums, rounded to f32 once at the end (the closest to exact).
    F64,
}

/// Runs `spec` over `rulebook`: `input` is `[N_in, Cin]`, returns `[N_out, Cout]`.
/// The caller has checked the shapes (the [`SparseConv`](crate::SparseConv) layer does).
pub fn conv(
    spec: &LayerSpec,
    rulebook: &Rulebook,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    accumulate: Accumulate,
) -> Vec<f32> {
    let cout = spec.out_channels as usize;
    let mut out = vec![0f32; rulebook.n_out() * cout];
    match accumulate {
        Accumulate::F32 => run::<f32>(spec, rulebook, input, weight, bias, &mut out),
        Accumulate::F64 => run::<f64>(spec, rulebook, input, weight, bias, &mut out),
    }
    out
}

trait Acc: Copy + Send + Sync + std::ops::AddAssign + std::ops::Mul<Output = Self> {
    const ZERO: Self;
    fn of(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    fn of(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    fn of(v: f32) -> Self {
        f64::from(v)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

fn run<A: Acc>(
    spec: &LayerSpec,
    rulebook: &Rulebook,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let cin = spec.in_channels as usize;
    let cout = spec.out_channels as usize;
    let cin_g = spec.in_per_group() as usize;
    let cout_g = spec.out_per_group() as usize;
    let kvol = rulebook.kernel_volume();
    if cout == 0 {
        return;
    }
    out.par_chunks_mut(cout).enumerate().for_each(|(o, y)| {
        let nbrs = rulebook.neighbors_of(o);
        let mut acc = vec![A::ZERO; cout];
        for (k, &i) in nbrs.iter().enumerate() {
            if i < 0 {
                continue;
            }
            let x = &input[i as usize * cin..(i as usize + 1) * cin];
            for (co, a) in acc.iter_mut().enumerate() {
                let g = co / cout_g;
                let w = &weight[(co * kvol + k) * cin_g..(co * kvol + k + 1) * cin_g];
                let xg = &x[g * cin_g..(g + 1) * cin_g];
                for (&xv, &wv) in xg.iter().zip(w) {
                    *a += A::of(xv) * A::of(wv);
                }
            }
        }
        for (co, (y, a)) in y.iter_mut().zip(acc).enumerate() {
            let b = bias.map_or(0.0, |b| b[co]);
            *y = spec.activation.apply(a.to_f32() + b);
        }
    });
}
