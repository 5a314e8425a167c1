//! Test bodies shared by the CUDA tests: layer cases covering every kind, dtype, groups,
//! bias and activation; random clouds; rulebooks; and the tolerance check against the
//! reference executor (fp32: 1e-5 of max |ref|; f16/bf16: 1e-2).
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)] // a failed unwrap is a failed test
#![allow(dead_code)]

pub mod conformance;

use std::sync::Arc;

use sparsegen::codegen::{Activation, ConvKind, DType, LayerSpec};
use sparsegen_runtime::{Accumulate, CoordSet, Rulebook, SparseConv, reference};

/// A deterministic pseudo-random stream (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` distinct random sites in a `shape` grid, `batches` batches.
pub fn random_cloud(seed: u64, n: usize, shape: &[u32], batches: u32) -> Arc<CoordSet> {
    let mut rng = Rng::new(seed);
    let volume: u64 = shape.iter().map(|&s| u64::from(s)).product::<u64>() * u64::from(batches);
    assert!((n as u64) < volume / 2, "grid too small for {n} sites");
    let mut seen = std::collections::HashSet::new();
    let mut coords = Vec::new();
    while seen.len() < n {
        let mut c = vec![(rng.next_u64() % u64::from(batches)) as i32];
        for &s in shape {
            c.push((rng.next_u64() % u64::from(s)) as i32);
        }
        if seen.insert(c.clone()) {
            coords.extend(c);
        }
    }
    Arc::new(CoordSet::new(coords, shape, batches).expect("valid cloud"))
}

/// One test layer: spec, cloud size and grid.
#[derive(Debug, Clone)]
pub struct Case {
    pub spec: LayerSpec,
    pub sites: usize,
    pub shape: Vec<u32>,
}

fn spec(b: sparsegen::codegen::LayerSpecBuilder, dtype: DType) -> LayerSpec {
    b.dtype(dtype).build().expect("valid test layer")
}

/// Layers of every kind, with odd channels, groups, bias and activations, in `dtype`.
pub fn cases(dtype: DType) -> Vec<Case> {
    let b = LayerSpec::builder;
    let case = |spec, sites, shape: &[u32]| Case {
        spec,
        sites,
        shape: shape.to_vec(),
    };
    vec![
        case(
            spec(b(ConvKind::Submanifold, 3).channels(16, 16), dtype),
            600,
            &[12, 12, 12],
        ),
        case(
            spec(
                b(ConvKind::Submanifold, 3)
                    .channels(3, 5)
                    .bias(true)
                    .activation(Activation::leaky_relu(0.1)),
                dtype,
            ),
            400,
            &[10, 10, 10],
        ),
        case(
            spec(
                b(ConvKind::Submanifold, 3)
                    .channels(64, 48)
                    .groups(4)
                    .bias(true)
                    .activation(Activation::Relu),
                dtype,
            ),
            300,
            &[9, 9, 9],
        ),
        case(
            spec(
                b(ConvKind::Submanifold, 3).channels(32, 32).kernel(5),
                dtype,
            ),
            300,
            &[10, 10, 10],
        ),
        case(
            spec(
                b(ConvKind::Strided, 3)
                    .channels(32, 64)
                    .stride(2)
                    .padding(1),
                dtype,
            ),
            500,
            &[12, 13, 14],
        ),
        case(
            spec(b(ConvKind::Inverse, 3).channels(64, 32).stride(2), dtype),
            500,
            &[12, 12, 12],
        ),
        case(
            spec(
                b(ConvKind::Transposed, 2)
                    .channels(24, 36)
                    .groups(3)
                    .kernel([3, 2])
                    .stride(2)
                    .bias(true)
                    .activation(Activation::Relu6),
                dtype,
            ),
            200,
            &[20, 20],
        ),
        case(
            spec(b(ConvKind::Submanifold, 3).channels(128, 128), dtype),
            700,
            &[14, 14, 14],
        ),
    ]
}

/// The layer of a case with random weights (and bias).
pub fn layer(case: &Case, seed: u64) -> SparseConv {
    let mut rng = Rng::new(seed);
    let spec = case.spec;
    let weight = (0..spec.weight_len()).map(|_| rng.unit() * 0.5).collect();
    let bias = spec
        .bias
        .then(|| (0..spec.out_channels).map(|_| rng.unit()).collect());
    SparseConv::new(spec, weight, bias).expect("valid layer")
}

/// The rulebook of a case over a random cloud (an inverse layer's is its strided partner's,
/// transposed) and random input features for it.
pub fn rulebook_and_input(case: &Case, seed: u64) -> (Arc<Rulebook>, Vec<f32>) {
    let cloud = random_cloud(seed, case.sites, &case.shape, 2);
    let geometry = case.spec.geometry();
    let rulebook = match case.spec.kind {
        ConvKind::Inverse => Rulebook::build(&cloud, &geometry.as_strided(), "partner")
            .expect("rulebook")
            .inverse(),
        _ => Arc::new(Rulebook::build(&cloud, &geometry, "case").expect("rulebook")),
    };
    let mut rng = Rng::new(seed ^ 0xfeed);
    let input = (0..rulebook.n_in() * case.spec.in_channels as usize)
        .map(|_| rng.unit())
        .collect();
    (rulebook, input)
}

/// The tolerance of a dtype, relative to max |reference|.
pub fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 | DType::Bf16 => 1e-2,
    }
}

/// Max |got − want| / max |want| (0 when both are all zero).
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "output sizes differ");
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_nan() || w.is_nan() {
                f32::INFINITY
            } else {
                (g - w).abs()
            }
        })
        .fold(0f32, f32::max)
        / scale
}

/// The reference output of a case (f64 accumulation, the closest to exact).
pub fn reference_output(layer: &SparseConv, rulebook: &Rulebook, input: &[f32]) -> Vec<f32> {
    reference::conv(
        layer.spec(),
        rulebook,
        input,
        layer.weight(),
        layer.bias(),
        Accumulate::F64,
    )
}
