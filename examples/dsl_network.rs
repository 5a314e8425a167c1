//! A small U-shaped backbone written with `sparse_layer!`, run on a real KITTI scan through the
//! reference executor and compared, bit for bit, with the same layers built at run time
//! (as a program reading them from a config file would).
//!
//! ```text
//! cargo run --release --example dsl_network [path/to/scan.bin]
//! ```
//! Without an argument it reads `../shared/data/kitti/000000.bin` and, when that file is
//! absent, synthesises a scan. Debug builds work too; the reference executor is just slower.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sparsegen::prelude::*;
use sparsegen::runtime::io::point_cloud::{PointCloud, read_kitti_bin};

sparse_layer! {
    /// Lifts (x, y, z, reflectance) to 8 features.
    pub Stem = subm3d(in: 4, out: 8, bias: true, activation: relu);
    /// Halves the resolution.
    pub Down1 = conv3d(in: 8, out: 16, kernel: 3, stride: 2, padding: 1, bias: true, activation: relu);
    /// Wide receptive field, anisotropic and grouped.
    pub Mid = subm3d(in: 16, out: 16, kernel: [3, 1, 3], dilation: 2, groups: 2, activation: relu);
    /// Back to the stem's sites, through `Down1`'s rulebook.
    pub Up1 = inverse3d(of: Down1, in: 16, out: 8, bias: true, activation: relu);
    /// Two scores per site.
    pub Head = subm3d(in: 8, out: 2, kernel: 1, bias: true);
}

/// The same network from plain data, as a loader of a config file would build it.
fn runtime_layers() -> Result<Vec<LayerSpec>, SpecError> {
    let b = LayerSpec::builder;
    let down = b(ConvKind::Strided, 3)
        .channels(8, 16)
        .stride(2)
        .padding(1)
        .bias(true)
        .activation(Activation::Relu)
        .build()?;
    let axes = |v: [u32; 4]| Extent::PerAxis(v[..3].to_vec());
    Ok(vec![
        b(ConvKind::Submanifold, 3)
            .channels(4, 8)
            .bias(true)
            .activation(Activation::Relu)
            .build()?,
        down,
        b(ConvKind::Submanifold, 3)
            .channels(16, 16)
            .kernel([3, 1, 3])
            .dilation(2)
            .groups(2)
            .activation(Activation::Relu)
            .build()?,
        b(ConvKind::Inverse, 3)
            .channels(16, 8)
            .kernel(axes(down.kernel))
            .stride(axes(down.stride))
            .padding(axes(down.padding))
            .dilation(axes(down.dilation))
            .bias(true)
            .activation(Activation::Relu)
            .build()?,
        b(ConvKind::Submanifold, 3)
            .channels(8, 2)
            .kernel(1)
            .bias(true)
            .build()?,
    ])
}

/// Deterministic weights in [-0.5, 0.5) for layer `seed`.
fn weights(seed: u64, n: usize) -> Vec<f32> {
    sparsegen::runtime::init::uniform(seed, n, 0.5)
}

fn weights_of(spec: &LayerSpec, seed: u64) -> (Vec<f32>, Option<Vec<f32>>) {
    let bias = spec
        .bias
        .then(|| weights(seed + 100, spec.out_channels as usize));
    (weights(seed, spec.weight_len()), bias)
}

/// A synthetic street: a ground plane and a few boxes, in KITTI's frame.
fn synthesised_cloud() -> PointCloud {
    let mut values = Vec::new();
    for i in 0..60_000u32 {
        let (u, v) = ((i % 300) as f32 / 300.0, (i / 300) as f32 / 200.0);
        values.extend([5.0 + 60.0 * u, -30.0 + 60.0 * v, -1.7, 0.3]);
    }
    for (cx, cy) in [(12.0f32, -4.0f32), (25.0, 6.0), (40.0, -10.0)] {
        for i in 0..4_000u32 {
            let (u, v) = ((i % 80) as f32 / 80.0, (i / 80) as f32 / 50.0);
            values.extend([cx + 4.0 * u, cy, -1.7 + 1.5 * v, 0.8]);
        }
    }
    PointCloud { values, width: 4 }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kitti/000000.bin");
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or(default);
    let cloud = if path.exists() {
        let cloud = read_kitti_bin(&path)?;
        println!("scan: {} ({} points)", path.display(), cloud.len());
        cloud
    } else {
        let cloud = synthesised_cloud();
        println!(
            "scan: {} is absent, synthesised a street ({} points)",
            path.display(),
            cloud.len()
        );
        cloud
    };
    let voxels = Voxelizer::KITTI.voxelize(&cloud)?;
    println!(
        "voxelized on KITTI's grid {:?}: {} sites, {} features each",
        voxels.spatial_shape(),
        voxels.len(),
        voxels.channels()
    );

    // The network written with the DSL: channels are checked by the types.
    let stem = {
        let (w, b) = weights_of(&Stem::SPEC, 1);
        Stem::from_weights(w, b)?
    };
    let down = {
        let (w, b) = weights_of(&Down1::SPEC, 2);
        Down1::from_weights(w, b)?
    };
    let mid = {
        let (w, b) = weights_of(&Mid::SPEC, 3);
        Mid::from_weights(w, b)?
    };
    let up = {
        let (w, b) = weights_of(&Up1::SPEC, 4);
        Up1::from_weights(w, b)?
    };
    let head = {
        let (w, b) = weights_of(&Head::SPEC, 5);
        Head::from_weights(w, b)?
    };
    let engine = Engine::reference();
    let start = Instant::now();
    let x = Features::<4>::new(voxels.clone())?;
    let s = stem.forward(&engine, &x)?;
    let d = down.forward(&engine, &s)?;
    let m = mid.forward(&engine, &d)?;
    let u = up.forward(&engine, &m)?;
    let typed = head.forward(&engine, &u)?;
    println!("sparse_layer! network ({:.2?}):", start.elapsed());
    for (name, spec, sites) in [
        ("Stem", Stem::SPEC, s.len()),
        ("Down1", Down1::SPEC, d.len()),
        ("Mid", Mid::SPEC, m.len()),
        ("Up1", Up1::SPEC, u.len()),
        ("Head", Head::SPEC, typed.len()),
    ] {
        println!("  {name:<5} {:<52} → {sites} sites", spec.kernel_name());
    }

    // The same layers built at run time, untyped, on a fresh engine.
    let engine = Engine::reference();
    let start = Instant::now();
    let mut t = voxels;
    for (i, spec) in runtime_layers()?.into_iter().enumerate() {
        let (w, b) = weights_of(&spec, i as u64 + 1);
        t = SparseConv::new(spec, w, b)?.forward(&engine, &t)?;
    }
    println!("runtime-built network ({:.2?})", start.elapsed());

    let same_sites = t.coords() == typed.coords();
    let same_bits = t
        .features()
        .iter()
        .zip(typed.features())
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let max = typed.features().iter().fold(0f32, |m, v| m.max(v.abs()));
    println!(
        "outputs: {} sites × {} channels, max |y| = {max:.4}; identical to the runtime-built layers: {}",
        typed.len(),
        typed.channels(),
        same_sites && same_bits && t.features().len() == typed.features().len()
    );
    if !(same_sites && same_bits) {
        return Err("the sparse_layer! network and the runtime-built one differ".into());
    }
    Ok(())
}
