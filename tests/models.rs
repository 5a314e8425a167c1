//! OpenPCDet's `VoxelBackBone8x` and `VoxelResBackBone8x` (`sparsegen::runtime::models`)
//! against spconv 2.3.8: the checkpoint keys match the state dicts of the modules built
//! with OpenPCDet's names, loading is strict, and the outputs match spconv's.
//!
//! `tests/fixtures/openpcdet_backbones.safetensors` was written by
//! `scripts/openpcdet_backbones_fixture.py`: the state dicts' keys and shapes, an input and
//! spconv's outputs. The weights are not stored: both sides compute every parameter with
//! [`formula`] from its key and index.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;

use sparsegen::prelude::*;
use sparsegen::runtime::io::safetensors::{Checkpoint, Values};
use sparsegen::runtime::models;

#[path = "fixtures/locate.rs"]
mod locate;

fn fixture() -> Checkpoint {
    Checkpoint::read(locate::fixture("openpcdet_backbones.safetensors")).unwrap()
}

fn fnv1a32(name: &str) -> u64 {
    name.bytes().fold(0x811C_9DC5u64, |h, b| {
        ((h ^ u64::from(b)) * 0x0100_0193) % (1 << 32)
    })
}

/// The script's `formula`: a parameter as a function of its key and index, exact in f64
/// and rounded once to f32, so both sides hold the same bits.
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product();
    (0..n as u64)
        .map(|i| {
            let x = (fnv1a32(name) + i * 2_654_435_761) % (1 << 32);
            let u = x as f64 / 4_294_967_296.0;
            let v = if name.ends_with(".running_var")
                || (name.ends_with(".weight") && shape.len() == 1)
            {
                0.5 + u
            } else if name.ends_with(".weight") {
                (2.0 * u - 1.0) / (fan_in as f64).sqrt()
            } else {
                (2.0 * u - 1.0) * 0.1
            };
            v as f32
        })
        .collect()
}

/// A checkpoint with the keys and shapes the script's module has, under `prefix`.
fn checkpoint_of(fx: &Checkpoint, model: &str, prefix: &str) -> Checkpoint {
    let keys: Vec<(String, Vec<usize>)> =
        serde_json::from_str(&fx.metadata()[&format!("keys.{model}")]).unwrap();
    let mut c = Checkpoint::new();
    for (key, shape) in keys {
        let values = match key.ends_with(".num_batches_tracked") {
            true => Values::Int(vec![1000]),
            false => Values::Float(formula(&key, &shape)),
        };
        c.insert(format!("{prefix}{key}"), shape, values).unwrap();
    }
    c
}

/// Rows keyed by coordinate, sorted: spconv's strided outputs follow its hash table.
fn by_coordinate<'a>(
    coords: &[i32],
    features: &'a [f32],
    channels: usize,
) -> Vec<(Vec<i32>, &'a [f32])> {
    let mut rows: Vec<(Vec<i32>, &'a [f32])> = coords
        .chunks_exact(4)
        .map(<[i32]>::to_vec)
        .zip(features.chunks_exact(channels))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn check(model: &str, builder: NetworkBuilder) {
    let fx = fixture();
    let net = builder.load(&checkpoint_of(&fx, model, "")).unwrap();
    let convs = net.convs().count();
    assert!(
        net.convs().all(|(label, _)| label.contains("+")),
        "{model}: every batch norm is folded"
    );
    let x = fx.sparse_tensor("io").unwrap();
    let want_coords: Vec<i32> = fx
        .int(&format!("{model}.output_coords"))
        .unwrap()
        .1
        .iter()
        .map(|&c| c as i32)
        .collect();
    let want = fx.float(&format!("{model}.output")).unwrap().1;
    let want_rows = by_coordinate(&want_coords, want, 128);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{model}: spconv's output is not all zero");
    for (name, engine) in [
        ("reference", Engine::reference()),
        ("cpu", Engine::with_backend(Arc::new(CpuBackend::new()))),
    ] {
        let (y, scales) = net.forward_all(&engine, &x).unwrap();
        assert_eq!(y.channels(), 128);
        let got_rows = by_coordinate(y.coords(), y.features(), 128);
        assert_eq!(
            got_rows.iter().map(|r| &r.0).collect::<Vec<_>>(),
            want_rows.iter().map(|r| &r.0).collect::<Vec<_>>(),
            "{model} on {name}: output sites"
        );
        let worst = got_rows
            .iter()
            .zip(&want_rows)
            .flat_map(|(g, w)| g.1.iter().zip(w.1).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max);
        eprintln!(
            "{model} on {name}: {convs} fused convs, {} output sites, max |ours − spconv| = {:.1e} of max |spconv|",
            y.len(),
            worst / scale
        );
        assert!(
            worst <= 1e-5 * scale,
            "{model} on {name} ({convs} convs): max error {worst:e} > 1e-5 × {scale}"
        );
        let x2 = fx.int(&format!("{model}.x_conv2_rows")).unwrap().1[0];
        assert_eq!(scales["x_conv2"].len() as i64, x2, "{model}: x_conv2 sites");
        let strides: Vec<u32> = (1..=4)
            .map(|i| scales[&format!("x_conv{i}")].tensor_stride()[1])
            .collect();
        assert_eq!(strides, [1, 2, 4, 8], "{model}: multi-scale strides");
    }
}

#[test]
fn voxel_backbone_8x_matches_spconv() {
    check("voxel_backbone_8x", models::voxel_backbone_8x(4).unwrap());
    assert_eq!(
        models::voxel_backbone_8x(4)
            .unwrap()
            .load(&checkpoint_of(&fixture(), "voxel_backbone_8x", ""))
            .unwrap()
            .convs()
            .count(),
        12
    );
}

#[test]
fn voxel_res_backbone_8x_matches_spconv() {
    check(
        "voxel_res_backbone_8x",
        models::voxel_res_backbone_8x(4).unwrap(),
    );
}

/// A detector checkpoint: the backbone under `backbone_3d.` beside other modules' keys.
#[test]
fn a_backbone_loads_out_of_a_whole_detector_checkpoint() {
    let fx = fixture();
    let mut detector = checkpoint_of(&fx, "voxel_backbone_8x", "backbone_3d.");
    detector
        .insert(
            "dense_head.conv_cls.weight",
            vec![18, 512, 1, 1],
            Values::Float(vec![0.0; 18 * 512]),
        )
        .unwrap();
    let b = || models::voxel_backbone_8x(4).unwrap();
    assert!(b().prefix("backbone_3d.").load(&detector).is_ok());
    // Without the prefix nothing is found; with the other backbone's description the
    // first mismatch is named.
    let e = b().load(&detector).unwrap_err().to_string();
    assert!(e.contains("no tensor conv_input.0.weight"), "{e}");
    let e = models::voxel_res_backbone_8x(4)
        .unwrap()
        .prefix("backbone_3d.")
        .load(&detector)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no tensor backbone_3d.conv1.0.conv1.weight"),
        "{e}"
    );
}
