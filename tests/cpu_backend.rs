//! The CPU backend against the reference executor: every kind, dims, kernel, groups, bias
//! and activation (proptest), every kernel variant bitwise equal to every other and to the
//! scalar path, thread-count independence, and typed errors.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use proptest::prelude::*;
use sparsegen::codegen::cpu::CpuTile;
use sparsegen::prelude::*;
use sparsegen::runtime::cpu::{CpuBackend, CpuOptions, HostIsa, StrategyChoice};
use sparsegen::runtime::reference;

/// A small deterministic generator (xorshift64*), so a proptest case is one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn float(&mut self) -> f32 {
        (self.below(2001) as f32 - 1000.0) / 500.0
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.float()).collect()
    }
}

/// Unique random coordinates (batch 0..batch) in a box of `shape`.
fn random_coords(rng: &mut Rng, n: usize, shape: &[u32], batch: u32) -> Vec<i32> {
    let mut seen = std::collections::HashSet::new();
    let mut coords = Vec::new();
    for _ in 0..n * 4 {
        let mut c = vec![rng.below(u64::from(batch)) as i32];
        c.extend(shape.iter().map(|&s| rng.below(u64::from(s)) as i32));
        if seen.insert(c.clone()) {
            coords.extend(c);
        }
        if seen.len() == n {
            break;
        }
    }
    coords
}

fn backend(strategy: StrategyChoice) -> CpuBackend {
    CpuBackend::with_options(CpuOptions {
        strategy,
        tune_rows: 64,
        ..CpuOptions::default()
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `got` matches the f64 reference to 1e-5 relative to max |ref| (NaN where it has NaN).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1.0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(
                g.is_nan(),
                "{what}: element {i}: {g} but the reference is NaN"
            );
            continue;
        }
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}: element {i}: {g} vs reference {w} (scale {scale})"
        );
    }
}

/// Runs `spec` on random data through every CPU variant and the reference; checks them.
fn check_layer(spec: LayerSpec, seed: u64, n: usize, extent: u32) {
    let mut rng = Rng(seed | 1);
    let dims = spec.dims();
    let shape = vec![extent; dims];
    let coords = random_coords(&mut rng, n, &shape, 2);
    let set = Arc::new(CoordSet::new(coords, &shape, 2).expect("valid coords"));
    let cache = RulebookCache::new();
    let name = spec.kernel_name();
    let rulebook = match spec.kind {
        ConvKind::Inverse => {
            let strided = spec.geometry().as_strided();
            let forward = match cache.get_or_build(&set, &strided, &name) {
                Ok(rb) => rb,
                Err(_) => return, // kernel larger than the grid: nothing to test
            };
            cache
                .get_or_build(forward.output(), &spec.geometry(), &name)
                .expect("inverse rulebook")
        }
        _ => match cache.get_or_build(&set, &spec.geometry(), &name) {
            Ok(rb) => rb,
            Err(_) => return,
        },
    };
    let cin = spec.in_channels as usize;
    let input = rng.floats(rulebook.n_in() * cin);
    let weight = rng.floats(spec.weight_len());
    let bias = spec.bias.then(|| rng.floats(spec.out_channels as usize));
    let layer = SparseConv::new(spec, weight, bias).expect("layer");
    let want = reference::conv(
        &spec,
        &rulebook,
        &input,
        layer.weight(),
        layer.bias(),
        Accumulate::F64,
    );
    let scalar = backend(StrategyChoice::Scalar)
        .conv(&layer, &rulebook, &input)
        .expect("scalar");
    assert_close(&scalar, &want, &format!("{name} scalar"));
    for strategy in [
        StrategyChoice::Direct,
        StrategyChoice::Gemm,
        StrategyChoice::Auto,
    ] {
        let got = backend(strategy)
            .conv(&layer, &rulebook, &input)
            .expect("cpu conv");
        assert_eq!(
            bits(&got),
            bits(&scalar),
            "{name}: {strategy:?} is not bitwise equal to the scalar path"
        );
    }
    let pairs = CpuBackend::with_options(CpuOptions {
        strategy: StrategyChoice::Direct,
        tile: CpuTile {
            rows: 2,
            max_vectors: 6,
            ..CpuTile::default()
        },
        ..CpuOptions::default()
    });
    let got = pairs.conv(&layer, &rulebook, &input).expect("cpu conv");
    assert_eq!(bits(&got), bits(&scalar), "{name}: two-row direct kernel");
    // The `gemm` crate callee rounds differently: close to the reference, not bitwise.
    let crate_gemm = backend(StrategyChoice::GemmCrate)
        .conv(&layer, &rulebook, &input)
        .expect("gemm crate");
    assert_close(&crate_gemm, &want, &format!("{name} gemm crate"));
}

fn activation(i: u8) -> Activation {
    match i % 4 {
        0 => Activation::Identity,
        1 => Activation::Relu,
        2 => Activation::Relu6,
        _ => Activation::leaky_relu(0.125),
    }
}

prop_compose! {
    fn layer_spec()(
        dims in 1usize..=4,
        kind in 0u8..4,
        k in prop::sample::select(vec![1u32, 2, 3, 5]),
        stride in 1u32..=2,
        padding in 0u32..=1,
        dilation in 1u32..=2,
        cin_g in 1u32..=9,
        cout_g in 1u32..=9,
        groups in 1u32..=3,
        bias in any::<bool>(),
        act in 0u8..4,
    ) -> Option<LayerSpec> {
        let kind = [ConvKind::Submanifold, ConvKind::Strided, ConvKind::Inverse, ConvKind::Transposed][kind as usize];
        let mut b = LayerSpec::builder(kind, dims)
            .channels(cin_g * groups, cout_g * groups)
            .groups(groups)
            .kernel(if kind == ConvKind::Submanifold && k % 2 == 0 { k + 1 } else { k })
            .dilation(dilation)
            .bias(bias)
            .activation(activation(act));
        if kind != ConvKind::Submanifold {
            b = b.stride(stride).padding(padding);
        }
        b.build().ok()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_layer_matches_the_reference(spec in layer_spec(), seed in any::<u64>(), n in 1usize..80, extent in 3u32..9) {
        if let Some(spec) = spec {
            check_layer(spec, seed, n, extent);
        }
    }
}

#[test]
fn wide_and_odd_channel_layers_match_the_reference() {
    let subm = |cin, cout| LayerSpec::builder(ConvKind::Submanifold, 3).channels(cin, cout);
    let specs = [
        subm(16, 16).build().unwrap(),
        subm(64, 64).activation(Activation::Relu).build().unwrap(),
        subm(128, 128).bias(true).build().unwrap(),
        subm(37, 70).build().unwrap(),
        subm(33, 33).kernel(5).build().unwrap(),
        subm(64, 64).groups(8).bias(true).build().unwrap(),
        LayerSpec::builder(ConvKind::Strided, 3)
            .channels(32, 64)
            .stride(2)
            .padding(1)
            .build()
            .unwrap(),
        LayerSpec::builder(ConvKind::Inverse, 3)
            .channels(64, 32)
            .stride(2)
            .padding(1)
            .build()
            .unwrap(),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        check_layer(spec, 1000 + i as u64, 700, 12);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(32, 64)
        .activation(Activation::Relu)
        .build()
        .unwrap();
    let mut rng = Rng(7);
    let shape = [24, 24, 24];
    let set = Arc::new(CoordSet::new(random_coords(&mut rng, 5000, &shape, 1), &shape, 1).unwrap());
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "t")
        .unwrap();
    let input = rng.floats(rulebook.n_in() * 32);
    let layer = SparseConv::new(spec, rng.floats(spec.weight_len()), None).unwrap();
    let all = rayon::current_num_threads().max(2);
    for strategy in [
        StrategyChoice::Direct,
        StrategyChoice::Gemm,
        StrategyChoice::Auto,
    ] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| backend(strategy).conv(&layer, &rulebook, &input).unwrap())
        };
        let one = run(1);
        assert_eq!(
            bits(&one),
            bits(&run(all)),
            "{strategy:?}: 1 vs {all} threads"
        );
        assert_eq!(bits(&one), bits(&run(all)), "{strategy:?}: run to run");
    }
}

#[test]
fn nan_propagates_like_the_reference() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 2)
        .channels(4, 5)
        .activation(Activation::Relu)
        .build()
        .unwrap();
    let coords = vec![0, 1, 1, 0, 1, 2, 0, 3, 3];
    let set = Arc::new(CoordSet::new(coords, &[5, 5], 1).unwrap());
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "nan")
        .unwrap();
    let mut input = vec![0.5f32; 12];
    input[1] = f32::NAN;
    let layer = SparseConv::new(spec, vec![-1.0; spec.weight_len()], None).unwrap();
    let want = reference::conv(
        &spec,
        &rulebook,
        &input,
        layer.weight(),
        None,
        Accumulate::F32,
    );
    for strategy in [
        StrategyChoice::Direct,
        StrategyChoice::Gemm,
        StrategyChoice::Scalar,
    ] {
        let got = backend(strategy).conv(&layer, &rulebook, &input).unwrap();
        assert!(
            got[..10].iter().all(|v| v.is_nan()),
            "{strategy:?}: {got:?}"
        );
        assert_eq!(
            &got[10..],
            &want[10..],
            "{strategy:?}: the isolated site is ReLU(-2) = 0"
        );
    }
}

#[test]
fn unsupported_hosts_fall_back_to_the_scalar_path_with_the_same_results() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(8, 12)
        .bias(true)
        .build()
        .unwrap();
    let mut rng = Rng(11);
    let shape = [10, 10, 10];
    let set = Arc::new(CoordSet::new(random_coords(&mut rng, 300, &shape, 1), &shape, 1).unwrap());
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "f")
        .unwrap();
    let input = rng.floats(rulebook.n_in() * 8);
    let layer = SparseConv::new(spec, rng.floats(spec.weight_len()), Some(rng.floats(12))).unwrap();
    let no_jit = CpuBackend::with_isa(CpuOptions::default(), HostIsa::disabled("test: no JIT"));
    assert!(no_jit.jit_status().is_err());
    let fallback = no_jit.conv(&layer, &rulebook, &input).unwrap();
    let jit = CpuBackend::new();
    if jit.jit_status().is_ok() {
        assert_eq!(
            bits(&fallback),
            bits(&jit.conv(&layer, &rulebook, &input).unwrap())
        );
        assert!(!jit.kernel_cache().is_empty());
    }
    assert!(no_jit.kernel_cache().is_empty());
}

#[test]
fn bad_layers_are_typed_errors_naming_the_layer() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(4, 4)
        .dtype(DType::F16)
        .build()
        .unwrap();
    let set = Arc::new(CoordSet::new(vec![0, 1, 1, 1], &[3, 3, 3], 1).unwrap());
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "e")
        .unwrap();
    let layer = SparseConv::zeros(spec).unwrap();
    let err = CpuBackend::new()
        .conv(&layer, &rulebook, &[0.0; 4])
        .unwrap_err();
    assert!(matches!(err, Error::Jit { .. }), "{err}");
    assert!(err.to_string().contains("subm3_k3x3x3_c4x4_f16"), "{err}");
    let f32_layer = SparseConv::zeros(LayerSpec {
        dtype: DType::F32,
        ..spec
    })
    .unwrap();
    let err = CpuBackend::new()
        .conv(&f32_layer, &rulebook, &[0.0; 3])
        .unwrap_err();
    assert!(
        matches!(err, Error::Backend { backend: "cpu", .. }),
        "{err}"
    );
}

#[test]
fn kernels_are_cached_by_ir_and_compile_fast() {
    let backend = backend(StrategyChoice::Direct);
    let mut rng = Rng(5);
    let shape = [8, 8, 8];
    let set = Arc::new(CoordSet::new(random_coords(&mut rng, 100, &shape, 1), &shape, 1).unwrap());
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(16, 16)
        .build()
        .unwrap();
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "c")
        .unwrap();
    let input = rng.floats(rulebook.n_in() * 16);
    let a = SparseConv::new(spec, rng.floats(spec.weight_len()), None).unwrap();
    let b = SparseConv::new(spec, rng.floats(spec.weight_len()), None).unwrap();
    if backend.jit_status().is_err() {
        eprintln!("skipped: no JIT on this host");
        return;
    }
    let ya = backend.conv(&a, &rulebook, &input).unwrap();
    let yb = backend.conv(&b, &rulebook, &input).unwrap();
    // Packed weights are cached per layer: the same layer again gives the same bits, and a
    // layer of the same shape with other weights never sees the first one's packing.
    let scalar = backend_scalar(&b, &rulebook, &input);
    assert_eq!(bits(&yb), bits(&scalar));
    assert_ne!(bits(&ya), bits(&yb));
    assert_eq!(
        bits(&ya),
        bits(&backend.conv(&a, &rulebook, &input).unwrap())
    );
    assert_eq!(
        bits(&yb),
        bits(&backend.conv(&b, &rulebook, &input).unwrap())
    );
    assert_eq!(
        backend.kernel_cache().len(),
        1,
        "same layer shape, one kernel"
    );
    assert!(backend.kernel_cache().hits() >= 1);
    for record in backend.kernel_cache().records() {
        eprintln!(
            "{}: codegen {:?}, jit {:?}",
            record.name, record.codegen_time, record.jit_time
        );
        assert!(record.jit_time.as_millis() < 1000, "{record:?}");
    }
}

fn backend_scalar(layer: &SparseConv, rulebook: &Rulebook, input: &[f32]) -> Vec<f32> {
    backend(StrategyChoice::Scalar)
        .conv(layer, rulebook, input)
        .unwrap()
}

/// The autotuner's choices persist in a tuning file: a second backend (a new process, in
/// effect) reads the choice instead of timing, gets the same bits, and a stale or foreign
/// line is ignored.
#[test]
fn tuning_choices_persist_across_backends() {
    let dir = std::env::temp_dir().join(format!("sparsegen-cpu-tune-{}", std::process::id()));
    let path = dir.join("autotune.tsv");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(16, 32)
        .build()
        .unwrap();
    let mut rng = Rng(11);
    let shape = [16, 16, 16];
    let set = Arc::new(CoordSet::new(random_coords(&mut rng, 800, &shape, 1), &shape, 1).unwrap());
    let rulebook = RulebookCache::new()
        .get_or_build(&set, &spec.geometry(), "t")
        .unwrap();
    let input = rng.floats(rulebook.n_in() * 16);
    let layer = SparseConv::new(spec, rng.floats(spec.weight_len()), None).unwrap();
    let tuned = |file: &std::path::Path| {
        let cpu = backend(StrategyChoice::Auto)
            .with_tuning_file(file)
            .unwrap();
        let out = cpu.conv(&layer, &rulebook, &input).unwrap();
        let record = cpu.tuning().into_iter().next().expect("one decision");
        (bits(&out), record)
    };
    let (first, timed) = tuned(&path);
    assert!(!timed.from_file && timed.timings_ms.len() > 1, "{timed:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{text}"
    );
    let (second, read) = tuned(&path);
    assert!(read.from_file && read.timings_ms.is_empty(), "{read:?}");
    assert_eq!(read.chosen, timed.chosen);
    assert_eq!(first, second);
    // A label that is no candidate (an older version's, say) is timed again.
    let stale: String = text
        .lines()
        .map(|l| match l.split_once('\t') {
            Some((k, _)) => format!("{k}\tdirect_v99\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, stale).unwrap();
    let (third, retimed) = tuned(&path);
    assert!(!retimed.from_file, "{retimed:?}");
    assert_eq!(first, third);
    // A file that cannot be read is an error naming it.
    let e = backend(StrategyChoice::Auto)
        .with_tuning_file(&dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sparsegen-cpu-tune"), "{e}");
    // One that cannot be written is refused when the backend is made, not in a forward pass.
    #[cfg(target_os = "linux")]
    {
        let e = backend(StrategyChoice::Auto)
            .with_tuning_file("/proc/sparsegen-tuning/autotune.tsv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/proc/sparsegen-tuning/autotune.tsv"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
