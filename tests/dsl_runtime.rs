//! `sparse_layer!` layers against the same layers built at run time: equal specs, equal
//! forward results (coordinates and every feature bit) through the reference executor, the
//! same validation messages, and typed errors where channels only meet at run time.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what we want

use std::path::Path;

use sparsegen::prelude::*;
use sparsegen::runtime::io::point_cloud::read_kitti_bin;

sparse_layer! {
    /// Lifts (x, y, z, reflectance) to 8 features.
    pub Stem = subm3d(in: 4, out: 8, bias: true, activation: relu);
    pub Down1 = conv3d(in: 8, out: 16, kernel: 3, stride: 2, padding: 1, bias: true, activation: leaky_relu(0.1));
    pub Mid = subm3d(in: 16, out: 16, kernel: [3, 1, 3], dilation: 2, groups: 2, activation: relu6);
    pub Up1 = inverse3d(of: Down1, in: 16, out: 8, bias: true, activation: relu);
    pub Head = subm3d(in: 8, out: 2, kernel: 1, bias: true);
}

/// The same five layers, through the runtime builder (as a config-file loader would).
fn runtime_specs() -> [LayerSpec; 5] {
    let b = LayerSpec::builder;
    let down = b(ConvKind::Strided, 3)
        .channels(8, 16)
        .kernel(3)
        .stride(2)
        .padding(1)
        .bias(true)
        .activation(Activation::leaky_relu(0.1))
        .build()
        .unwrap();
    [
        b(ConvKind::Submanifold, 3)
            .channels(4, 8)
            .bias(true)
            .activation(Activation::Relu)
            .build()
            .unwrap(),
        down,
        b(ConvKind::Submanifold, 3)
            .channels(16, 16)
            .kernel([3, 1, 3])
            .dilation(2)
            .groups(2)
            .activation(Activation::Relu6)
            .build()
            .unwrap(),
        b(ConvKind::Inverse, 3)
            .channels(16, 8)
            .kernel(Extent::PerAxis(down.kernel[..3].to_vec()))
            .stride(Extent::PerAxis(down.stride[..3].to_vec()))
            .padding(Extent::PerAxis(down.padding[..3].to_vec()))
            .bias(true)
            .activation(Activation::Relu)
            .build()
            .unwrap(),
        b(ConvKind::Submanifold, 3)
            .channels(8, 2)
            .kernel(1)
            .bias(true)
            .build()
            .unwrap(),
    ]
}

/// Deterministic weights in [-0.5, 0.5), so both networks get the same ones.
fn weights(seed: u64, n: usize) -> Vec<f32> {
    sparsegen::runtime::init::uniform(seed, n, 0.5)
}

fn weights_of(spec: &LayerSpec, seed: u64) -> (Vec<f32>, Option<Vec<f32>>) {
    let w = weights(seed, spec.weight_len());
    let b = spec
        .bias
        .then(|| weights(seed + 1000, spec.out_channels as usize));
    (w, b)
}

/// A scan: `n` pseudo-random unique sites in a 24 × 48 × 48 grid, 4 features each.
fn synthesised_scan(n: usize) -> SparseTensor {
    let shape = [24u32, 48, 48];
    let volume = (shape[0] * shape[1] * shape[2]) as u64;
    let mut keys: Vec<u64> = weights(7, 4 * n)
        .iter()
        .map(|&v| ((v + 0.5) * volume as f32) as u64 % volume)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.truncate(n);
    let mut coords = Vec::new();
    for k in &keys {
        let k = *k as u32;
        coords.extend([
            0,
            (k / (shape[1] * shape[2])) as i32,
            (k / shape[2] % shape[1]) as i32,
            (k % shape[2]) as i32,
        ]);
    }
    let feats = weights(11, keys.len() * 4);
    SparseTensor::new(coords, feats, 4, &shape, 1).unwrap()
}

struct Typed {
    stem: Stem,
    down: Down1,
    mid: Mid,
    up: Up1,
    head: Head,
}

fn typed_network() -> Typed {
    let w = |spec: &LayerSpec, seed| weights_of(spec, seed);
    let (sw, sb) = w(&Stem::SPEC, 1);
    let (dw, db) = w(&Down1::SPEC, 2);
    let (mw, mb) = w(&Mid::SPEC, 3);
    let (uw, ub) = w(&Up1::SPEC, 4);
    let (hw, hb) = w(&Head::SPEC, 5);
    Typed {
        stem: Stem::from_weights(sw, sb).unwrap(),
        down: Down1::from_weights(dw, db).unwrap(),
        mid: Mid::from_weights(mw, mb).unwrap(),
        up: Up1::from_weights(uw, ub).unwrap(),
        head: Head::from_weights(hw, hb).unwrap(),
    }
}

fn run_typed(net: &Typed, x: &SparseTensor) -> SparseTensor {
    let engine = Engine::reference();
    let x = Features::<4>::new(x.clone()).unwrap();
    let s = net.stem.forward(&engine, &x).unwrap();
    let d = net.down.forward(&engine, &s).unwrap();
    let m = net.mid.forward(&engine, &d).unwrap();
    let u = net.up.forward(&engine, &m).unwrap();
    net.head.forward(&engine, &u).unwrap().into_tensor()
}

fn run_runtime(x: &SparseTensor) -> SparseTensor {
    let engine = Engine::reference();
    let mut t = x.clone();
    for (i, spec) in runtime_specs().iter().enumerate() {
        let (w, b) = weights_of(spec, i as u64 + 1);
        t = SparseConv::new(*spec, w, b)
            .unwrap()
            .forward(&engine, &t)
            .unwrap();
    }
    t
}

fn assert_same(a: &SparseTensor, b: &SparseTensor) {
    assert_eq!(a.coords(), b.coords());
    assert_eq!(a.channels(), b.channels());
    let bits = |t: &SparseTensor| t.features().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(bits(a) == bits(b), "features differ");
}

#[test]
fn macro_specs_equal_builder_specs() {
    let [stem, down, mid, up, head] = runtime_specs();
    assert_eq!(Stem::SPEC, stem);
    assert_eq!(Down1::SPEC, down);
    assert_eq!(Mid::SPEC, mid);
    assert_eq!(Up1::SPEC, up);
    assert_eq!(Head::SPEC, head);
}

#[test]
fn forward_equals_runtime_built_layers_on_a_synthesised_scan() {
    let x = synthesised_scan(3000);
    let typed = run_typed(&typed_network(), &x);
    let untyped = run_runtime(&x);
    assert_same(&typed, &untyped);
    // The inverse layer restored the stem's sites, and the output is not trivially zero.
    assert_eq!(typed.coords(), x.coords());
    assert!(typed.features().iter().any(|&v| v != 0.0));
}

#[test]
fn forward_equals_runtime_built_layers_on_a_real_scan() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kitti/000000.bin");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let cloud = read_kitti_bin(&path).unwrap();
    // A coarser grid than KITTI's keeps the test quick; the example runs the full grid.
    let grid = Voxelizer {
        voxel_size: [0.2, 0.2, 0.2],
        range: [0.0, -20.0, -3.0, 40.0, 20.0, 1.0],
    };
    let x = grid.voxelize(&cloud).unwrap();
    assert!(x.len() > 1000, "{} sites", x.len());
    let typed = run_typed(&typed_network(), &x);
    assert_same(&typed, &run_runtime(&x));
    assert!(typed.features().iter().any(|&v| v != 0.0));
    eprintln!("{}: {} sites, outputs equal", path.display(), x.len());
}

#[test]
fn runtime_layers_convert_into_macro_types_with_typed_errors() {
    let [stem, ..] = runtime_specs();
    let (w, b) = weights_of(&stem, 1);
    let conv = SparseConv::new(stem, w, b).unwrap();
    let typed = Stem::try_from(conv.clone()).unwrap();
    assert_eq!(typed.conv().weight(), conv.weight());
    let back: SparseConv = typed.into();
    assert_eq!(back.spec(), &stem);

    let err = Down1::try_from(conv.clone()).unwrap_err();
    assert!(matches!(err, TypedError::Spec { layer: "Down1", .. }));
    assert_eq!(
        err.to_string(),
        "layer `Down1` is conv3_k3x3x3_s2x2x2_p1x1x1_c8x16_bias_leaky_relu_f32 but the given layer is subm3_k3x3x3_c4x8_bias_relu_f32 (4 → 8 channels instead of 8 → 16): build it from `Down1::SPEC`"
    );
    // Same channels, other geometry: still the wrong layer.
    let other = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(4, 8)
        .kernel(5)
        .bias(true)
        .activation(Activation::Relu)
        .build()
        .unwrap();
    assert!(Stem::try_from(SparseConv::zeros(other).unwrap()).is_err());

    assert!(TypedConv::<4, 8>::new(conv.clone()).is_ok());
    let err = TypedConv::<8, 16>::new(SparseConv::zeros(stem).unwrap()).unwrap_err();
    assert_eq!(
        err,
        TypedError::LayerChannels {
            layer: stem.kernel_name(),
            expected: (8, 16),
            got: (4, 8)
        }
    );
}

#[test]
fn a_runtime_built_layer_runs_between_macro_layers() {
    let x = Features::<4>::new(synthesised_scan(200)).unwrap();
    let engine = Engine::reference();
    let net = typed_network();
    let s = net.stem.forward(&engine, &x).unwrap();
    // Mid's spec from a "config file", typed by a channel check.
    let spec = runtime_specs()[2];
    let (_, b) = weights_of(&spec, 3);
    let from_config = SparseConv::new(
        LayerSpec {
            in_channels: 8,
            groups: 1,
            ..spec
        },
        vec![0.25; 16 * 9 * 8],
        b,
    )
    .unwrap();
    let mid = TypedConv::<8, 16>::new(from_config).unwrap();
    let m: Features<16> = mid.forward(&engine, &s).unwrap();
    assert_eq!(m.channels(), 16);
    // Channels that only meet at run time: a typed error, not a panic.
    let err = Features::<16>::new(s.into_tensor()).unwrap_err();
    assert_eq!(
        err,
        TypedError::TensorChannels {
            expected: 16,
            got: 8
        }
    );
}

#[test]
fn builder_errors_are_the_messages_the_macro_shows() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let read = |name: &str| std::fs::read_to_string(ui.join(name)).unwrap();
    let b = |kind| LayerSpec::builder(kind, 3).channels(4, 16);
    let cases = [
        (
            "fail_subm_stride.stderr",
            b(ConvKind::Submanifold).stride(2).build(),
        ),
        (
            "fail_subm_even_kernel.stderr",
            b(ConvKind::Submanifold).kernel(2).build(),
        ),
        (
            "fail_zero_size.stderr",
            b(ConvKind::Strided).kernel([3, 0, 3]).build(),
        ),
        (
            "fail_kernel_arity.stderr",
            b(ConvKind::Submanifold).kernel([3, 3]).build(),
        ),
        (
            "fail_groups_divide_channels.stderr",
            LayerSpec::builder(ConvKind::Submanifold, 3)
                .channels(6, 16)
                .groups(4)
                .build(),
        ),
        (
            "fail_kind_rules.stderr",
            b(ConvKind::Submanifold).padding(1).build(),
        ),
    ];
    for (file, result) in cases {
        let message = result.unwrap_err().to_string();
        assert!(
            read(file).contains(&format!("error: {message}")),
            "{file} lacks `{message}`"
        );
    }
}
