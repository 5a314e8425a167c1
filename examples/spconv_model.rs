//! A model trained in spconv, run without Python: its state dict (exported with
//! `safetensors.torch.save_file`) is loaded into a `Network` — batch norms folded into the
//! convolutions, ReLUs fused — and run on the CPU (the JITed backend) and, when one is
//! usable, on the GPU; the output is checked against the one spconv 2.3.8 computed.
//!
//! ```text
//! cargo run --release --example spconv_model [-- path/to/checkpoint.safetensors]
//! cargo run --release --example spconv_model -- --scan scan.bin --export-input in.safetensors [--openpcdet]
//! ```
//! The second form voxelizes a KITTI scan (with `--openpcdet`, as OpenPCDet's data processor
//! does: `PointToVoxel::OPENPCDET_KITTI`) and writes it as `io.*` tensors, for
//! `scripts/spconv_network_fixture.py --input in.safetensors --out ckpt.safetensors --time 21`
//! to run spconv on (and time it); the first form then checks and times this side.
//! The default checkpoint is `tests/fixtures/spconv_backbone.safetensors`, written by
//! `scripts/spconv_network_fixture.py` (a small backbone with a residual block, a strided
//! conv, a dilated conv, an inverse conv, a U-Net concatenation and a 1×1 head). Another
//! checkpoint must hold the same model and its `io.*` tensors.

use std::sync::Arc;
use std::time::Instant;

use sparsegen::prelude::*;
use sparsegen::runtime::io::point_cloud::read_kitti_bin;
use sparsegen::runtime::io::safetensors::Checkpoint;

#[path = "../tests/fixtures/spconv_backbone.rs"]
mod fixture;
#[path = "../tests/fixtures/locate.rs"]
mod locate;
use fixture::backbone;

/// Voxelizes a KITTI scan on SECOND's grid and writes it as the model's `io.*` input: every
/// point averaged ([`Voxelizer::KITTI`]) or, with `openpcdet`, as OpenPCDet's test-time data
/// processor and `MeanVFE` do ([`PointToVoxel::OPENPCDET_KITTI`]: 5 points per voxel, 40,000
/// voxels, in order of first point). Prints the voxelization's median time.
fn export_input(scan: &str, out: &str, openpcdet: bool) -> Result<(), Box<dyn std::error::Error>> {
    let cloud = read_kitti_bin(scan)?;
    let voxelize = || {
        if openpcdet {
            PointToVoxel::OPENPCDET_KITTI.voxelize(&cloud)
        } else {
            Voxelizer::KITTI.voxelize(&cloud)
        }
    };
    let mut times = Vec::new();
    let mut x = voxelize()?;
    for _ in 0..REPEATS {
        let t = Instant::now();
        x = voxelize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mut file = Checkpoint::new();
    file.insert_sparse_tensor("io", &x)?;
    file.write(out)?;
    println!(
        "{out}: {} sites × {} channels from {} points of {scan} ({}), voxelized in {:.2} ms (median)",
        x.len(),
        x.channels(),
        cloud.len(),
        if openpcdet {
            "OpenPCDet's PointToVoxel + MeanVFE"
        } else {
            "all points averaged"
        },
        times[REPEATS / 2]
    );
    Ok(())
}

/// FNV-1a over the output's bits: equal digests across runs and thread counts show the
/// result is bitwise repeatable.
fn digest(values: &[f32]) -> u64 {
    values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Timed calls after the first.
const REPEATS: usize = 21;

/// `max |ours − spconv| / max |spconv|`.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let worst = got.iter().zip(want).fold(0f64, |m, (&g, &w)| {
        m.max((f64::from(g) - f64::from(w)).abs())
    });
    worst / scale.max(f64::MIN_POSITIVE)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, scan, export, out, rest @ ..] = &args[..]
        && flag == "--scan"
        && export == "--export-input"
    {
        let openpcdet = match rest {
            [] => false,
            [o] if o == "--openpcdet" => true,
            _ => {
                return Err(
                    format!("unexpected arguments {rest:?} (see the example's doc)").into(),
                );
            }
        };
        return export_input(scan, out, openpcdet);
    }
    let path = args.first().cloned().unwrap_or_else(|| {
        let fixture = locate::fixture("spconv_backbone.safetensors");
        fixture.display().to_string()
    });
    let checkpoint = Checkpoint::read(&path)?;
    let t = Instant::now();
    let net = backbone()?.load(&checkpoint)?;
    println!(
        "{path}: {} convolutions after folding, loaded in {:.2} ms",
        net.convs().count(),
        t.elapsed().as_secs_f64() * 1e3
    );
    for (label, conv) in net.convs() {
        println!("  {label:<24} {}", conv.spec());
    }

    let x = checkpoint.sparse_tensor("io")?;
    let want = checkpoint.float("io.output")?.1;

    let mut backends: Vec<(&str, Arc<dyn ConvBackend>)> =
        vec![("cpu", Arc::new(CpuBackend::persistent()?))];
    match CudaBackend::new(CudaOptions::default()) {
        Ok(gpu) => backends.push(("cuda", Arc::new(gpu))),
        Err(e) => println!("no usable GPU ({e}): CPU only"),
    }
    for (name, backend) in backends {
        let t = Instant::now();
        let first = net.forward(&Engine::with_backend(backend.clone()), &x)?;
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        // As spconv's forward does, every timed call builds its rulebooks anew (a fresh
        // engine); the compiled kernels stay in the backend.
        let mut times = Vec::new();
        let mut y = first.clone();
        for _ in 0..REPEATS {
            let t = Instant::now();
            y = net.forward(&Engine::with_backend(backend.clone()), &x)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let err = relative_error(y.features(), want);
        println!(
            "{name}: {} sites × {} channels, first call {first_ms:.1} ms (kernels compiled), \
             then median {:.2} ms over {REPEATS} calls (rulebooks included); \
             max |ours − spconv| / max |spconv| = {err:.1e}; output bits digest {:016x}",
            y.len(),
            y.channels(),
            times[REPEATS / 2],
            digest(y.features())
        );
        if first.features() != y.features() {
            return Err(format!("{name}: two calls differ").into());
        }
        if err > 1e-5 {
            return Err(format!("{name}: differs from spconv by {err:.1e}").into());
        }
    }
    Ok(())
}
