//! Seeded, deterministic weight and feature values.
//!
//! The same seed gives the same values on every machine and thread count (SplitMix64, no
//! floating-point library calls), so examples, tests and benchmarks that need weights agree
//! with each other without files. [`SparseConv::seeded`](crate::SparseConv::seeded) uses
//! PyTorch's default initialisation bound for convolutions, `1/√(K·Cin/groups)`.

/// `n` values uniform in `[-bound, bound)` from `seed`.
pub fn uniform(seed: u64, n: usize, bound: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1), exact in f32
            (unit * 2.0 - 1.0) * bound
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let a = uniform(7, 1000, 0.5);
        assert_eq!(a, uniform(7, 1000, 0.5));
        assert_ne!(a, uniform(8, 1000, 0.5));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
    }
}
