//! `Network`: a spconv backbone's checkpoint loaded and run here gives spconv's output, on
//! every backend of this machine; and every way a description can disagree with its
//! checkpoint is a typed error naming the node and the key.
//!
//! `tests/fixtures/spconv_backbone.safetensors` was written by
//! `scripts/spconv_network_fixture.py` with spconv 2.3.8 (CPU): weights as
//! `safetensors.torch.save_file` writes a state dict, a synthetic two-batch scan, and
//! spconv's output.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;

use sparsegen::prelude::*;
use sparsegen::runtime::io::safetensors::{Checkpoint, Values};

#[path = "fixtures/locate.rs"]
mod locate;
#[path = "fixtures/spconv_backbone.rs"]
mod spconv_backbone;

/// The fixture's backbone description.
fn backbone() -> NetworkBuilder {
    spconv_backbone::backbone().unwrap()
}

struct Fixture {
    checkpoint: Checkpoint,
    input: SparseTensor,
    output_coords: Vec<i32>,
    output: Vec<f32>,
}

fn fixture() -> Fixture {
    let checkpoint = Checkpoint::read(locate::fixture("spconv_backbone.safetensors")).unwrap();
    let ints = |k| -> Vec<i32> {
        let (_, v) = checkpoint.int(k).unwrap();
        v.iter().map(|&x| i32::try_from(x).unwrap()).collect()
    };
    let input = checkpoint.sparse_tensor("io").unwrap();
    Fixture {
        output_coords: ints("io.output_coords"),
        output: checkpoint.float("io.output").unwrap().1.to_vec(),
        input,
        checkpoint,
    }
}

/// fp32 conformance: ≤ 1e-5 relative to max |spconv| (DESIGN.md).
fn assert_matches_spconv(got: &SparseTensor, fx: &Fixture, what: &str) {
    assert_eq!(got.coords(), &fx.output_coords[..], "{what}: output sites");
    assert_eq!(got.features().len(), fx.output.len(), "{what}: output size");
    let scale = fx.output.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .features()
        .iter()
        .zip(&fx.output)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "{what}: max error {worst:e} exceeds 1e-5 × max |spconv| {scale}"
    );
}

#[test]
fn spconv_backbone_runs_as_in_spconv_on_every_cpu_backend() {
    let fx = fixture();
    let net = backbone().load(&fx.checkpoint).unwrap();
    assert_eq!((net.in_channels(), net.out_channels()), (4, 4));
    // Every batch norm that follows a conv is folded, every ReLU after one fused: the
    // residual block's second BN is folded too, and the ReLU after the add stays apart.
    let labels: Vec<&str> = net.convs().map(|(l, _)| l).collect();
    assert_eq!(
        labels,
        [
            "stem.0+stem.1+relu",
            "res_conv1+res_bn1+relu",
            "res_conv2+res_bn2",
            "down.0+down.1+relu",
            "mid.0+mid.1+relu",
            "up.0+up.1+relu",
            "head"
        ]
    );
    let reference = net.forward(&Engine::reference(), &fx.input).unwrap();
    assert_matches_spconv(&reference, &fx, "reference");
    let cpu = Engine::with_backend(Arc::new(CpuBackend::new()));
    let jit = net.forward(&cpu, &fx.input).unwrap();
    assert_matches_spconv(&jit, &fx, "cpu");
    // Deterministic: the same call again is bitwise the same, with the rulebooks cached.
    let again = net.forward(&cpu, &fx.input).unwrap();
    assert_eq!(
        jit.features()
            .iter()
            .map(|f| f.to_bits())
            .collect::<Vec<_>>(),
        again
            .features()
            .iter()
            .map(|f| f.to_bits())
            .collect::<Vec<_>>()
    );
    assert!(cpu.rulebooks().stats().hits > 0);
}

#[test]
fn the_fixture_survives_a_round_trip_through_the_writer() {
    let fx = fixture();
    let dir = std::env::temp_dir().join(format!("sparsegen-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("copy.safetensors");
    fx.checkpoint.write(&path).unwrap();
    let copy = Checkpoint::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for name in fx.checkpoint.names() {
        assert_eq!(
            copy.get(name).unwrap().values,
            fx.checkpoint.get(name).unwrap().values,
            "{name}"
        );
    }
    assert_eq!(copy.metadata(), fx.checkpoint.metadata());
}

/// The fixture's checkpoint with `edit` applied.
fn edited(edit: impl FnOnce(&mut Checkpoint)) -> Checkpoint {
    let mut c = fixture().checkpoint;
    edit(&mut c);
    c
}

fn float(c: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (s, v) = c.float(name).unwrap();
    (s.to_vec(), v.to_vec())
}

#[test]
fn checkpoints_that_do_not_fit_are_typed_errors() {
    let fx = fixture();
    let message = |r: Result<Network, Error>| match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };

    // A missing key names the key.
    let mut missing = Checkpoint::new();
    for name in fx
        .checkpoint
        .names()
        .filter(|n| *n != "model.mid.1.running_var")
    {
        let t = fx.checkpoint.get(name).unwrap().clone();
        missing.insert(name, t.shape, t.values).unwrap();
    }
    let m = message(backbone().load(&missing));
    assert!(m.contains("no tensor model.mid.1.running_var"), "{m}");

    // spconv 1.x's weight layout [K.., Cin, Cout] is refused with a hint.
    let m = message(backbone().load(&edited(|c| {
        let (_, v) = float(c, "model.res_conv1.weight");
        c.insert(
            "model.res_conv1.weight",
            vec![3, 3, 3, 8, 8],
            Values::Float(v),
        )
        .unwrap();
    })));
    assert!(
        m.contains("model.res_conv1.weight has shape [3, 3, 3, 8, 8]")
            && m.contains("[8, 3, 3, 3, 8]")
            && m.contains("[Cout, K.., Cin/groups]"),
        "{m}"
    );

    // A key that no node reads (a typo in the description, or a layer it forgot).
    let m = message(backbone().load(&edited(|c| {
        c.insert("model.extra.weight", vec![1], Values::Float(vec![0.0]))
            .unwrap();
    })));
    assert!(m.contains("no node reads: model.extra.weight"), "{m}");
    // Keys outside the prefix are not the network's business.
    assert!(backbone().load(&fx.checkpoint).is_ok());

    // Channels that do not chain are found when loading, naming the node.
    let m = message(
        NetworkBuilder::new(4)
            .prefix("model.")
            .conv(
                "res_conv1",
                LayerSpec::builder(ConvKind::Submanifold, 3)
                    .channels(8, 8)
                    .build()
                    .unwrap(),
            )
            .load(&fx.checkpoint),
    );
    assert!(
        m.contains("network node res_conv1: takes 8 input channels but the network carries 4"),
        "{m}"
    );

    // An add of a tag never saved, and an add whose channels differ.
    let subm = |cin, cout| {
        LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(cin, cout)
            .build()
            .unwrap()
    };
    let m = message(
        NetworkBuilder::new(4)
            .add_saved("nothing")
            .load(&Checkpoint::new()),
    );
    assert!(
        m.contains("network node nothing: add of a tag that is not saved"),
        "{m}"
    );
    let mut c = Checkpoint::new();
    c.insert(
        "c.weight",
        vec![2, 3, 3, 3, 4],
        Values::Float(vec![0.5; 216]),
    )
    .unwrap();
    let m = message(
        NetworkBuilder::new(4)
            .save("x")
            .conv("c", subm(4, 2))
            .add_saved("x")
            .load(&c),
    );
    assert!(m.contains("add of 4 saved channels to 2"), "{m}");

    // A negative running variance is refused, not turned into NaN weights.
    let m = message(backbone().load(&edited(|c| {
        let (s, mut v) = float(c, "model.stem.1.running_var");
        v[3] = -1.0;
        c.insert("model.stem.1.running_var", s, Values::Float(v))
            .unwrap();
    })));
    assert!(m.contains("network node stem.1: batch norm needs"), "{m}");
}

#[test]
fn forward_errors_name_the_node() {
    let fx = fixture();
    let net = backbone().load(&fx.checkpoint).unwrap();
    // The wrong number of input channels.
    let x = SparseTensor::on(
        fx.input.coord_set().clone(),
        vec![0.0; fx.input.len() * 3],
        3,
    )
    .unwrap();
    let e = net.forward(&Engine::reference(), &x).unwrap_err();
    assert!(matches!(e, Error::Channels { .. }), "{e}");
    // A 2-D input to a 3-D network fails at its first conv, which the error names.
    let net2 = NetworkBuilder::new(4)
        .prefix("model.")
        .conv(
            "stem.0",
            LayerSpec::builder(ConvKind::Submanifold, 3)
                .channels(4, 8)
                .build()
                .unwrap(),
        )
        .load(&{
            let (shape, v) = float(&fx.checkpoint, "model.stem.0.weight");
            let mut c = Checkpoint::new();
            c.insert("model.stem.0.weight", shape, Values::Float(v))
                .unwrap();
            c
        })
        .unwrap();
    let flat = SparseTensor::new(vec![0, 1, 1], vec![0.0; 4], 4, &[4, 4], 1).unwrap();
    let e = net2.forward(&Engine::reference(), &flat).unwrap_err();
    assert!(
        e.to_string().starts_with("network node stem.0: layer "),
        "{e}"
    );
}

#[test]
fn residual_adds_need_the_same_sites() {
    // A strided conv changes the sites; adding the pre-conv tensor to it is an error.
    let spec = LayerSpec::builder(ConvKind::Strided, 2)
        .channels(1, 1)
        .kernel(2)
        .stride(2)
        .build()
        .unwrap();
    let mut c = Checkpoint::new();
    c.insert("down.weight", vec![1, 2, 2, 1], Values::Float(vec![1.0; 4]))
        .unwrap();
    let net = NetworkBuilder::new(1)
        .save("x")
        .conv("down", spec)
        .add_saved("x")
        .load(&c)
        .unwrap();
    let x = SparseTensor::new(
        vec![0, 0, 0, 0, 0, 1, 0, 3, 3],
        vec![1.0, 2.0, 3.0],
        1,
        &[4, 4],
        1,
    )
    .unwrap();
    let e = net.forward(&Engine::reference(), &x).unwrap_err();
    assert!(
        e.to_string()
            .contains("network node x: the saved tensor has other sites (3 rows) than the current one (2 rows)"),
        "{e}"
    );
}

/// A standalone batch norm (not after a conv) and a concat with the saved tensor first,
/// against the same arithmetic written out by hand.
#[test]
fn standalone_batch_norm_and_concat_order() {
    let mut c = Checkpoint::new();
    for (k, v) in [
        ("weight", [2.0, 0.5]),
        ("bias", [1.0, -1.0]),
        ("running_mean", [0.5, 0.0]),
        ("running_var", [4.0, 0.25]),
    ] {
        c.insert(format!("bn.{k}"), vec![2], Values::Float(v.to_vec()))
            .unwrap();
    }
    c.insert("bn.num_batches_tracked", vec![], Values::Int(vec![7]))
        .unwrap();
    let net = NetworkBuilder::new(2)
        .save("in")
        .batch_norm("bn", 0.0)
        .activation(Activation::leaky_relu(0.5))
        .concat_saved_before("in")
        .load(&c)
        .unwrap();
    assert_eq!(net.convs().count(), 0);
    assert_eq!(net.out_channels(), 4);
    let x = SparseTensor::new(vec![0, 1, 0, 2], vec![3.0, 4.0, -1.5, -2.0], 2, &[4], 1).unwrap();
    let y = net.forward(&Engine::reference(), &x).unwrap();
    // bn: (x - mean) / sqrt(var) * gamma + beta; then leaky ReLU with slope 0.5.
    let bn = |x: f32, c: usize| {
        let v = [(x - 0.5) / 2.0 * 2.0 + 1.0, x / 0.5 * 0.5 - 1.0][c];
        if v >= 0.0 { v } else { 0.5 * v }
    };
    assert_eq!(
        y.features(),
        &[
            3.0,
            4.0,
            bn(3.0, 0),
            bn(4.0, 1),
            -1.5,
            -2.0,
            bn(-1.5, 0),
            bn(-2.0, 1)
        ]
    );
    assert!(Arc::ptr_eq(y.coord_set(), x.coord_set()));
}

/// The same backbone through the CUDA backend (the `Engine` route); skips without a GPU,
/// fails without one when `SPARSEGEN_REQUIRE_GPU=1`.
#[test]
fn cuda_spconv_backbone_runs_as_in_spconv() {
    let gpu = match CudaBackend::new(CudaOptions::default()) {
        Ok(gpu) => gpu,
        Err(e) if std::env::var("SPARSEGEN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("SPARSEGEN_REQUIRE_GPU=1 but: {e}")
        }
        Err(e) => {
            eprintln!("skipping cuda_spconv_backbone_runs_as_in_spconv: {e}");
            return;
        }
    };
    let fx = fixture();
    let net = backbone().load(&fx.checkpoint).unwrap();
    let engine = Engine::with_backend(Arc::new(gpu));
    let y = net.forward(&engine, &fx.input).unwrap();
    assert_matches_spconv(&y, &fx, "cuda");
    let again = net.forward(&engine, &fx.input).unwrap();
    assert_eq!(y.features(), again.features(), "cuda: run to run");
}

/// Sparse max pooling as spconv 2.3.8 computes it (`scripts/spconv_maxpool_fixture.py`):
/// the strided output sites, and per channel the maximum of the inputs and 0.
#[test]
fn max_pool_matches_spconv_including_its_zero_floor() {
    let fx = Checkpoint::read(locate::fixture("spconv_maxpool.safetensors")).unwrap();
    let ints = |k: &str| -> Vec<i32> {
        fx.int(k)
            .unwrap()
            .1
            .iter()
            .map(|&c| i32::try_from(c).unwrap())
            .collect()
    };
    let x = fx.sparse_tensor("io").unwrap();
    let cases: Vec<(Extent, Extent, Extent)> = vec![
        (3.into(), 2.into(), 1.into()),
        (2.into(), 2.into(), 0.into()),
        (
            vec![3, 1, 3].into(),
            vec![2, 1, 2].into(),
            vec![1, 0, 0].into(),
        ),
    ];
    let sorted = |coords: &[i32], features: &[f32]| {
        let mut rows: Vec<(Vec<i32>, Vec<f32>)> = coords
            .chunks_exact(4)
            .map(<[i32]>::to_vec)
            .zip(features.chunks_exact(5).map(<[f32]>::to_vec))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    for (n, (kernel, stride, padding)) in cases.into_iter().enumerate() {
        let net = NetworkBuilder::new(5)
            .max_pool(3, kernel, stride, padding)
            .load(&Checkpoint::new())
            .unwrap();
        let y = net.forward(&Engine::reference(), &x).unwrap();
        let want_coords = ints(&format!("case{n}.output_coords"));
        let want = fx.float(&format!("case{n}.output")).unwrap().1;
        assert!(
            want.contains(&0.0),
            "case {n}: the fixture has windows that pool to the zero floor"
        );
        // spconv's strided rows follow its hash table; ours are sorted. Max is exact.
        assert_eq!(
            sorted(y.coords(), y.features()),
            sorted(&want_coords, want),
            "case {n}"
        );
        assert_eq!(y.tensor_stride()[0], 2, "case {n}: tensor stride");
    }
}

/// An empty scan (no sites in range) runs through every node and gives an empty output.
#[test]
fn an_empty_input_gives_an_empty_output() {
    let fx = fixture();
    let net = backbone().load(&fx.checkpoint).unwrap();
    let shape = fx.input.spatial_shape().to_vec();
    let empty = SparseTensor::new(Vec::new(), Vec::new(), 4, &shape, 2).unwrap();
    for engine in [
        Engine::reference(),
        Engine::with_backend(Arc::new(CpuBackend::new())),
    ] {
        let (y, saved) = net.forward_all(&engine, &empty).unwrap();
        assert_eq!((y.len(), y.channels()), (0, 4));
        assert!(saved.values().all(|t| t.is_empty()));
    }
    let pooled = NetworkBuilder::new(4)
        .max_pool(3, 2, 2, 0)
        .load(&Checkpoint::new())
        .unwrap()
        .forward(&Engine::reference(), &empty)
        .unwrap();
    assert!(pooled.is_empty());
}
