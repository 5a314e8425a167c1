//! The main demo: a SECOND-style sparse backbone stage on a real LiDAR scan.
//!
//! ```sh
//! cargo run --release --example demo                       # ../shared/data/kitti/000000.bin, or a synthetic scan
//! cargo run --release --example demo -- path/to/scan.bin   # any KITTI velodyne .bin
//! ```
//! Voxelizes the scan on SECOND's KITTI grid (0.05 × 0.05 × 0.1 m), then runs
//! SubM 4→16, SubM 16→16, a stride-2 conv 16→32, SubM 32→32 and the inverse conv 32→16 back
//! to the input sites, printing sites, pairs and time per layer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use sparsegen::prelude::*;
use sparsegen::runtime::io::point_cloud::{PointCloud, read_kitti_bin};

#[derive(Parser)]
#[command(about = "Run a sparse backbone stage on a LiDAR scan")]
struct Args {
    /// A KITTI velodyne .bin (x, y, z, reflectance as f32). Default: the shared KITTI frame,
    /// or a synthetic scan when that is absent.
    scan: Option<PathBuf>,
    /// Executor: `auto` (CUDA when a GPU is usable, else the JITed CPU backend), `cpu`,
    /// `cuda` or `reference`.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// A deterministic synthetic scan: ground rings, two walls and a box, inside the KITTI range.
fn synthetic_scan() -> PointCloud {
    let mut values = Vec::new();
    let mut push = |x: f32, y: f32, z: f32| values.extend([x, y, z, 0.5]);
    for ring in 0..40 {
        let r = 4.0 + ring as f32 * 1.5;
        for i in 0..2000 {
            let a = -1.5 + 3.0 * i as f32 / 2000.0;
            push(r * a.cos(), r * a.sin(), -1.7);
        }
    }
    for i in 0..30_000 {
        let t = i as f32 / 30_000.0;
        push(
            10.0 + 30.0 * t,
            12.0,
            -1.7 + 3.0 * ((i * 7919) % 1000) as f32 / 1000.0,
        );
        push(
            20.0 + 25.0 * t,
            -9.0,
            -1.7 + 3.0 * ((i * 104_729) % 1000) as f32 / 1000.0,
        );
    }
    PointCloud { values, width: 4 }
}

fn layer(
    kind: ConvKind,
    cin: u32,
    cout: u32,
    stride: u32,
    padding: u32,
    seed: u32,
) -> Result<SparseConv, Error> {
    let builder = LayerSpec::builder(kind, 3)
        .channels(cin, cout)
        .activation(Activation::Relu);
    let builder = if kind == ConvKind::Submanifold {
        builder
    } else {
        builder.stride(stride).padding(padding)
    };
    SparseConv::seeded(builder.build()?, u64::from(seed))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let default = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/kitti/000000.bin"
    ));
    let (cloud, source) = match args.scan {
        Some(path) => (read_kitti_bin(&path)?, path.display().to_string()),
        None if default.is_file() => (read_kitti_bin(&default)?, default.display().to_string()),
        None => (
            synthetic_scan(),
            "a synthetic scan (../shared/data not found)".to_string(),
        ),
    };
    let t = Instant::now();
    let x = Voxelizer::KITTI.voxelize(&cloud)?;
    let voxelize_ms = t.elapsed().as_secs_f64() * 1e3;
    let layers = [
        layer(ConvKind::Submanifold, 4, 16, 1, 0, 1)?,
        layer(ConvKind::Submanifold, 16, 16, 1, 0, 2)?,
        layer(ConvKind::Strided, 16, 32, 2, 1, 3)?,
        layer(ConvKind::Submanifold, 32, 32, 1, 0, 4)?,
        layer(ConvKind::Inverse, 32, 16, 2, 1, 5)?,
    ];
    let cuda = || CudaBackend::new(CudaOptions::default());
    let device = match args.device.as_str() {
        "auto" => match cuda().map(Box::new) {
            Ok(gpu) => Device::Cuda(gpu),
            Err(e) => {
                println!("no usable GPU ({e}); running on the CPU");
                Device::Host(Engine::with_backend(Arc::new(CpuBackend::new())))
            }
        },
        "cpu" => Device::Host(Engine::with_backend(Arc::new(CpuBackend::new()))),
        "cuda" => Device::Cuda(
            cuda()
                .map(Box::new)
                .map_err(|e| format!("--device cuda: {e}"))?,
        ),
        "reference" => Device::Host(Engine::reference()),
        other => {
            return Err(
                format!("unknown --device {other}: use auto, cpu, cuda or reference").into(),
            );
        }
    };
    println!(
        "{} points from {source} -> {} sites on grid {:?} ({voxelize_ms:.1} ms), backend {}",
        cloud.len(),
        x.len(),
        x.spatial_shape(),
        device.name()
    );
    match device {
        Device::Host(engine) => {
            let mut h = x;
            for conv in &layers {
                let t = Instant::now();
                let y = conv.forward(&engine, &h)?;
                report(conv, h.len(), y.len(), t, y.features());
                h = y;
            }
            let stats = engine.rulebooks().stats();
            println!("rulebooks built {}, reused {}", stats.built, stats.hits);
        }
        Device::Cuda(gpu) => run_on_gpu(&gpu, &layers, &x)?,
    }
    Ok(())
}

/// Where the layers run.
enum Device {
    /// A host engine (JITed CPU kernels or the reference executor).
    Host(Engine),
    /// The GPU, with every activation kept in device memory.
    Cuda(Box<CudaBackend>),
}

impl Device {
    fn name(&self) -> String {
        match self {
            Device::Host(engine) => engine.backend().name().to_string(),
            Device::Cuda(gpu) => format!("cuda on {} ({})", gpu.device().name(), gpu.target()),
        }
    }
}

fn report(conv: &SparseConv, n_in: usize, n_out: usize, t: Instant, features: &[f32]) {
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let active =
        features.iter().filter(|&&v| v > 0.0).count() as f64 / features.len().max(1) as f64;
    println!(
        "{:<40} {:>7} -> {:>7} sites  {:>8.2} ms  ({:.0}% of outputs > 0)",
        conv.name(),
        n_in,
        n_out,
        ms,
        active * 100.0
    );
}

/// The stage on the GPU: the scan goes up once, every rulebook, plan and activation stays on
/// the device, and the result is checked against the CPU backend. Every kernel is compiled
/// (or read from the disk cache) up front, in parallel; each layer is then timed twice: the
/// first pass loads kernels and tunes tiles, the second is what a deployed network sees per
/// scan.
fn run_on_gpu(
    gpu: &CudaBackend,
    layers: &[SparseConv],
    x: &SparseTensor,
) -> Result<(), Box<dyn std::error::Error>> {
    use sparsegen::runtime::cuda::DeviceRulebookCache;
    let warm = gpu.warm_up(&layers.iter().collect::<Vec<_>>())?;
    println!(
        "warm-up: {} kernels ({} compiled by NVRTC, {} from the disk cache) in {:.0} ms",
        warm.kernels,
        warm.compiled,
        warm.from_disk,
        warm.elapsed.as_secs_f64() * 1e3
    );
    let convs = layers
        .iter()
        .map(|l| gpu.prepare(l))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for pass in ["first pass (loads kernels, tunes tiles)", "second pass"] {
        println!("-- {pass}");
        let cache = DeviceRulebookCache::new();
        let t = Instant::now();
        let mut h = gpu.upload_tensor(x, DType::F32)?;
        gpu.synchronize()?;
        println!("upload {:>8.2} ms", t.elapsed().as_secs_f64() * 1e3);
        let stage = Instant::now();
        for conv in &convs {
            let t = Instant::now();
            let y = gpu.forward(conv, &h, &cache)?;
            gpu.synchronize()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "{:<40} {:>7} -> {:>7} sites  {:>8.2} ms",
                conv.layer().name(),
                h.len(),
                y.len(),
                ms
            );
            h = y;
        }
        println!(
            "stage {:>8.2} ms on the device",
            stage.elapsed().as_secs_f64() * 1e3
        );
        out = gpu.download_features(&h)?;
    }
    let engine = Engine::with_backend(Arc::new(CpuBackend::new()));
    let mut h = x.clone();
    for conv in layers {
        h = conv.forward(&engine, &h)?;
    }
    let scale = h
        .features()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-30);
    let err = out
        .iter()
        .zip(h.features())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    println!("GPU vs CPU backend: max |Δ| / max |y| = {err:.2e}");
    if out.len() != h.features().len() || err > 1e-4 {
        return Err(format!("the GPU result differs from the CPU backend's ({err:.2e})").into());
    }
    Ok(())
}
