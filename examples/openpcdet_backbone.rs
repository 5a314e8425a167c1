//! OpenPCDet's SECOND and CenterPoint backbones (`models::voxel_backbone_8x`,
//! `models::voxel_res_backbone_8x`) loaded from a detector-style checkpoint, run on the CPU
//! (and on CUDA when usable), timed, and checked against spconv's outputs; then OpenPCDet's
//! `HeightCompression` (`SparseTensor::to_bev`), the dense view its 2D backbone reads.
//!
//! ```text
//! cargo run --release --example spconv_model -- --scan ../shared/data/kitti/000000.bin --export-input /tmp/in.safetensors
//! /tmp/spvenv/bin/python scripts/openpcdet_backbones_fixture.py --input /tmp/in.safetensors \
//!     --out /tmp/io.safetensors --checkpoint /tmp/ckpt.safetensors --time 11
//! cargo run --release --example openpcdet_backbone -- /tmp/ckpt.safetensors /tmp/io.safetensors
//! ```
//! `ckpt.safetensors` holds each backbone under `backbone_3d.<model>.`; `io.safetensors` the
//! input (with OpenPCDet's spatial shape) and spconv's outputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sparsegen::prelude::*;
use sparsegen::runtime::io::safetensors::Checkpoint;
use sparsegen::runtime::models;

/// Timed calls after the first.
const REPEATS: usize = 11;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ckpt, io] = &args[..] else {
        return Err("usage: openpcdet_backbone CHECKPOINT IO (see the example's doc)".into());
    };
    let (checkpoint, io) = (Checkpoint::read(ckpt)?, Checkpoint::read(io)?);
    let x = io.sparse_tensor("io")?;
    println!("input: {} sites on {:?}", x.len(), x.spatial_shape());

    let mut backends: Vec<(&str, Arc<dyn ConvBackend>)> =
        vec![("cpu", Arc::new(CpuBackend::persistent()?))];
    match CudaBackend::new(CudaOptions::default()) {
        Ok(gpu) => backends.push(("cuda", Arc::new(gpu))),
        Err(e) => println!("no usable GPU ({e}): CPU only"),
    }
    let describe = [
        ("voxel_backbone_8x", models::voxel_backbone_8x(4)?),
        ("voxel_res_backbone_8x", models::voxel_res_backbone_8x(4)?),
    ];
    for (model, builder) in describe {
        let net = builder
            .prefix(format!("backbone_3d.{model}."))
            .load(&checkpoint)?;
        let want: BTreeMap<Vec<i32>, &[f32]> = io
            .int(&format!("{model}.output_coords"))?
            .1
            .chunks_exact(4)
            .map(|c| c.iter().map(|&v| v as i32).collect())
            .zip(io.float(&format!("{model}.output"))?.1.chunks_exact(128))
            .collect();
        let scale = want
            .values()
            .flat_map(|r| r.iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        for (name, backend) in &backends {
            let t = Instant::now();
            let first = net.forward(&Engine::with_backend(backend.clone()), &x)?;
            let first_ms = t.elapsed().as_secs_f64() * 1e3;
            let mut times = Vec::new();
            for _ in 0..REPEATS {
                let t = Instant::now();
                let y = net.forward(&Engine::with_backend(backend.clone()), &x)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                if y.features() != first.features() {
                    return Err(format!("{model} on {name}: two calls differ").into());
                }
            }
            times.sort_by(f64::total_cmp);
            let mut worst = 0f32;
            for (row, coord) in first.coords().chunks_exact(4).enumerate() {
                let w = want
                    .get(coord)
                    .ok_or_else(|| format!("{model}: site {coord:?} is not in spconv's output"))?;
                let got = &first.features()[row * 128..(row + 1) * 128];
                worst = got
                    .iter()
                    .zip(w.iter())
                    .fold(worst, |m, (a, b)| m.max((a - b).abs()));
            }
            if first.len() != want.len() {
                return Err(
                    format!("{model}: {} sites, spconv has {}", first.len(), want.len()).into(),
                );
            }
            // OpenPCDet's HeightCompression: what the detector's 2D backbone reads.
            let mut bev_times = Vec::new();
            let mut bev = first.to_bev()?;
            for _ in 0..REPEATS {
                let t = Instant::now();
                bev = first.to_bev()?;
                bev_times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            bev_times.sort_by(f64::total_cmp);
            println!(
                "{model} on {name}: {} convs, {} → {} sites, first call {first_ms:.0} ms, \
                 median {:.1} ms over {REPEATS} calls (rulebooks included); \
                 max |ours − spconv| / max |spconv| = {:.1e}",
                net.convs().count(),
                x.len(),
                first.len(),
                times[REPEATS / 2],
                worst / scale
            );
            println!(
                "  bird's-eye view (HeightCompression): {:?}, median {:.1} ms",
                bev.shape(),
                bev_times[REPEATS / 2]
            );
        }
    }
    Ok(())
}
