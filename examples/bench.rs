//! Benchmark of sparsegen's layers on a workload written by `../shared/bench/workloads.py`,
//! with the layer names and timing definitions of the spconv harness (`spconv_bench.py`), so
//! the two can be read side by side.
//!
//! ```text
//! cargo run --release --example bench -- --device cpu|cuda|reference --workload DIR
//!     [--dtype float32|float16|bfloat16] [--layers subm3_c16,...] [--json OUT] [--threads N]
//!     [--warmup 3] [--repeats 10] [--cached-rulebook] [--strategy auto|direct|gemm|scalar]
//! ```
//!
//! Per layer, medians after warm-up (milliseconds):
//! * `map_ms` — the kernel map alone: on the CPU, indexing the input coordinates
//!   (`CoordSet::new`) plus building the rulebook; on CUDA, the device rulebook plus the
//!   launch plan (rows sorted by offset mask), from coordinates already on the device. `null`
//!   for the inverse conv, which reuses its partner's map.
//! * `conv_ms` — the convolution alone on a built map (CUDA: with features, weights, rulebook
//!   and plan on the device; `kernel_ms` is the same launch timed by CUDA events).
//! * `layer_ms` — the whole layer on fresh coordinates and a fresh rulebook cache: the map,
//!   the conv (and for the inverse conv, its map from the partner's), output tensor. On CUDA
//!   the inputs are on the device already, as in spconv's harness, and every timed call ends
//!   with a stream synchronisation (spconv's `torch.cuda.synchronize()`).
//!   With `--cached-rulebook` the rulebook cache is warm instead: the layer as it runs when an
//!   earlier layer of the network already built its map (spconv's shared `indice_key`).
//!
//! One JSON line per layer is appended to `--json` (and printed): `lib`, `workload`, `layer`,
//! `n_in`, `n_out`, `map_ms`, `conv_ms`, `layer_ms`, `device`, `dtype`, `threads`,
//! `rulebook` (`fresh` or `cached`), plus the kernel variant, JIT or tile details and the full
//! timing lists. `--dtype` other than float32 needs `--device cuda`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use sparsegen::prelude::*;
use sparsegen::runtime::cpu::{CpuBackend, CpuOptions, GemmKernel, StrategyChoice};
use sparsegen::runtime::cuda::{
    CudaBackend, CudaOptions, DeviceCoords, DeviceRulebookCache, DeviceTensor, TilePlan,
};
use sparsegen::runtime::io::npy;

const LAYERS: &[&str] = &[
    "subm3_c16",
    "subm3_c32",
    "subm3_c64",
    "subm3_c128",
    "spconv3_s2_c32_64",
    "invconv3_c64_32",
    "subm5_c32",
];

#[derive(Parser, Debug)]
#[command(about = "sparsegen layer benchmark (spconv harness layers and timings)")]
struct Args {
    /// cpu, cuda or reference.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Storage and compute dtype: float32, float16 or bfloat16 (f32/f16/bf16); half
    /// precisions run on CUDA only (f32 accumulation).
    #[arg(long, default_value = "float32")]
    dtype: String,
    /// Time `layer_ms` with a warm rulebook cache (the map built by an earlier layer).
    #[arg(long)]
    cached_rulebook: bool,
    /// A folder with coords.npy and workload.json from workloads.py.
    #[arg(long)]
    workload: PathBuf,
    /// Comma-separated layer names (default: all of the harness's).
    #[arg(long)]
    layers: Option<String>,
    /// Append one JSON line per layer to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Untimed calls before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed calls (the median is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// CPU kernel variant: auto (autotuned), direct, gemm, scalar, gemm-crate.
    #[arg(long, default_value = "auto")]
    strategy: String,
    /// GEMM micro-kernel of the GEMM-call variant: best, avx2, portable.
    #[arg(long, default_value = "best")]
    gemm_kernel: String,
    /// Seed of the features and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A workload: coordinates, spatial shape, batch size and its harness name (`lidar_20000`).
struct Workload {
    name: String,
    coords: Vec<i32>,
    shape: Vec<u32>,
    batch_size: u32,
}

fn load_workload(dir: &Path) -> AnyResult<Workload> {
    let coords = npy::read_i32(dir.join("coords.npy"))?
        .expect_shape(dir.join("coords.npy"), &[None, Some(4)])?;
    let meta_path = dir.join("workload.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .map_err(|e| format!("{}: {e}", meta_path.display()))?,
    )?;
    let shape = meta["spatial_shape"]
        .as_array()
        .ok_or_else(|| format!("{}: no spatial_shape", meta_path.display()))?
        .iter()
        .map(|v| {
            v.as_u64()
                .map(|v| v as u32)
                .ok_or("spatial_shape must hold integers")
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let n = coords.shape[0];
    let name = match (meta["kind"].as_str(), meta["n"].as_u64()) {
        (Some(kind), Some(n)) => format!("{kind}_{n}"),
        _ => dir.file_name().map_or_else(
            || format!("workload_{n}"),
            |f| f.to_string_lossy().into_owned(),
        ),
    };
    Ok(Workload {
        name,
        coords: coords.data,
        shape,
        batch_size: meta["batch_size"].as_u64().unwrap_or(1) as u32,
    })
}

/// The spec of a harness layer name.
fn layer_spec(name: &str, dtype: DType) -> AnyResult<LayerSpec> {
    let subm = |k: u32, c: u32| {
        LayerSpec::builder(ConvKind::Submanifold, 3)
            .kernel(k)
            .channels(c, c)
    };
    let strided = |kind| LayerSpec::builder(kind, 3).kernel(3).stride(2).padding(1);
    let builder = match name {
        "subm3_c16" => subm(3, 16),
        "subm3_c32" => subm(3, 32),
        "subm3_c64" => subm(3, 64),
        "subm3_c128" => subm(3, 128),
        "subm5_c32" => subm(5, 32),
        "spconv3_s2_c32_64" => strided(ConvKind::Strided).channels(32, 64),
        "invconv3_c64_32" => strided(ConvKind::Inverse).channels(64, 32),
        other => return Err(format!("unknown layer {other}; known: {}", LAYERS.join(", ")).into()),
    };
    Ok(builder.dtype(dtype).build()?)
}

/// A `--dtype` value: the harness's names (`float32`, ...) or ours (`f32`, ...).
fn parse_dtype(name: &str) -> AnyResult<DType> {
    match name {
        "float32" | "f32" => Ok(DType::F32),
        "float16" | "f16" => Ok(DType::F16),
        "bfloat16" | "bf16" => Ok(DType::Bf16),
        other => Err(format!("unknown --dtype {other}; use float32, float16 or bfloat16").into()),
    }
}

/// The harness's name of a dtype (spconv's JSON lines use these).
fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::Bf16 => "bfloat16",
    }
}

/// Deterministic uniform floats in [-1, 1).
fn floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Stats {
    all: Vec<f64>,
}

impl Stats {
    fn median(&self) -> f64 {
        let mut v = self.all.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    fn json(&self) -> serde_json::Value {
        let min = self.all.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.all.iter().copied().fold(0.0, f64::max);
        json!({"median": round(self.median()), "min": round(min), "max": round(max),
               "all": self.all.iter().map(|&v| round(v)).collect::<Vec<_>>()})
    }
}

fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Runs `f` `warmup` times untimed, then `repeats` times with `prepare` (untimed) before each.
fn time<P, T>(
    warmup: usize,
    repeats: usize,
    mut prepare: impl FnMut() -> AnyResult<P>,
    mut f: impl FnMut(P) -> AnyResult<T>,
) -> AnyResult<Stats> {
    for _ in 0..warmup {
        let p = prepare()?;
        f(p)?;
    }
    let mut all = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let p = prepare()?;
        let t0 = Instant::now();
        let out = f(p)?;
        all.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    Ok(Stats { all })
}

fn bench_layer(
    args: &Args,
    wl: &Workload,
    name: &str,
    backend: &Arc<dyn ConvBackend>,
    cpu: Option<&CpuBackend>,
    threads: usize,
) -> AnyResult<serde_json::Value> {
    let spec = layer_spec(name, DType::F32)?;
    let cin = spec.in_channels as usize;
    let (w, r) = (args.warmup, args.repeats);
    let base_set = Arc::new(CoordSet::new(wl.coords.clone(), &wl.shape, wl.batch_size)?);
    let weight = floats(args.seed ^ 0x5eed_0001, spec.weight_len());
    let layer = SparseConv::new(spec, weight, None)?;
    let new_set = || -> AnyResult<Arc<CoordSet>> {
        Ok(Arc::new(CoordSet::new(
            wl.coords.clone(),
            &wl.shape,
            wl.batch_size,
        )?))
    };
    let (map, conv, layer_stats, n_in, n_out, pairs);
    if spec.kind == ConvKind::Inverse {
        // The paired strided conv's map, built untimed; the inverse transposes it.
        let strided = spec.geometry().as_strided();
        let cache = RulebookCache::new();
        let forward = cache.get_or_build(&base_set, &strided, name)?;
        let inv = cache.get_or_build(forward.output(), &spec.geometry(), name)?;
        let input = floats(args.seed ^ 0x5eed_0002, inv.n_in() * cin);
        n_in = inv.n_in();
        n_out = inv.n_out();
        map = None;
        pairs = inv.n_pairs();
        conv = time(
            w,
            r,
            || Ok(()),
            |()| Ok(backend.conv(&layer, &inv, &input)?),
        )?;
        let with_partner = || -> AnyResult<(Engine, Arc<CoordSet>)> {
            let engine = Engine::with_backend(backend.clone());
            // The strided partner's map, built into this engine's cache untimed (spconv's
            // inverse layer reuses its partner's indice key too); its transpose is timed.
            let out_set = engine
                .rulebooks()
                .get_or_build(&base_set, &strided, name)?
                .output()
                .clone();
            Ok((engine, out_set))
        };
        layer_stats = if args.cached_rulebook {
            // Warm: the transpose too is in the cache after the first (warm-up) call.
            let (engine, out_set) = with_partner()?;
            time(
                w.max(1),
                r,
                || Ok(SparseTensor::on(out_set.clone(), input.clone(), cin)?),
                |t| Ok(layer.forward(&engine, &t)?),
            )?
        } else {
            time(
                w,
                r,
                || {
                    let (engine, out_set) = with_partner()?;
                    Ok((engine, SparseTensor::on(out_set, input.clone(), cin)?))
                },
                |(engine, t)| Ok(layer.forward(&engine, &t)?),
            )?
        };
    } else {
        let rb = RulebookCache::new().get_or_build(&base_set, &spec.geometry(), name)?;
        let input = floats(args.seed ^ 0x5eed_0002, rb.n_in() * cin);
        n_in = rb.n_in();
        n_out = rb.n_out();
        pairs = rb.n_pairs();
        map = Some(time(
            w,
            r,
            || Ok(()),
            |()| {
                let set = new_set()?;
                Ok(Rulebook::build(&set, &spec.geometry(), name)?)
            },
        )?);
        conv = time(w, r, || Ok(()), |()| Ok(backend.conv(&layer, &rb, &input)?))?;
        let warm = Engine::with_backend(backend.clone());
        layer_stats = if args.cached_rulebook {
            // The map an earlier layer built on the same coordinates: a warm rulebook cache.
            warm.rulebooks()
                .get_or_build(&base_set, &spec.geometry(), name)?;
            time(
                w,
                r,
                || Ok(SparseTensor::on(base_set.clone(), input.clone(), cin)?),
                |x| Ok(layer.forward(&warm, &x)?),
            )?
        } else {
            time(
                w,
                r,
                || {
                    Ok((
                        Engine::with_backend(backend.clone()),
                        wl.coords.clone(),
                        input.clone(),
                    ))
                },
                |(engine, coords, feats)| {
                    let x = SparseTensor::new(coords, feats, cin, &wl.shape, wl.batch_size)?;
                    Ok(layer.forward(&engine, &x)?)
                },
            )?
        };
    }
    let kernel_name = spec.kernel_name();
    let (variant, tune, jit) = match cpu {
        Some(cpu) => {
            let tune = cpu.tuning().into_iter().find(|t| t.layer == kernel_name);
            let jit: Vec<_> = cpu
                .kernel_cache()
                .records()
                .into_iter()
                .filter(|j| j.name.starts_with(&kernel_name))
                .map(|j| {
                    json!({"kernel": j.name, "ir_hash": format!("{:016x}", j.ir_hash),
                                "codegen_ms": round(j.codegen_time.as_secs_f64() * 1e3),
                                "jit_ms": round(j.jit_time.as_secs_f64() * 1e3)})
                })
                .collect();
            let variant = tune
                .as_ref()
                .map(|t| t.chosen.label())
                .unwrap_or_else(|| args.strategy.clone());
            let tune = tune.map(|t| json!({"density": round(t.density), "sample_rows": t.sample_rows,
                "timings_ms": t.timings_ms.iter().map(|(l, v)| json!({"variant": l, "ms": round(*v)})).collect::<Vec<_>>()}));
            (json!(variant), json!(tune), json!(jit))
        }
        None => (json!(null), json!(null), json!([])),
    };
    Ok(json!({
        "lib": "sparsegen",
        "workload": wl.name,
        "layer": name,
        "kernel": kernel_name,
        "n_in": n_in,
        "n_out": n_out,
        "n_pairs": pairs,
        "map_ms": map.as_ref().map(|m| round(m.median())),
        "conv_ms": round(conv.median()),
        "layer_ms": round(layer_stats.median()),
        "device": args.device,
        "backend": backend.name(),
        "dtype": "float32",
        "threads": threads,
        "rulebook": if args.cached_rulebook { "cached" } else { "fresh" },
        "variant": variant,
        "gemm_kernel": cpu.map(|c| c.gemm_kernel()),
        "autotune": tune,
        "jit": jit,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "map_stats": map.as_ref().map(Stats::json),
        "conv_stats": conv.json(),
        "layer_stats": layer_stats.json(),
    }))
}

/// `time` for device work: the stream is drained before the clock starts and after `f`.
fn time_cuda<P, T>(
    cuda: &CudaBackend,
    warmup: usize,
    repeats: usize,
    mut prepare: impl FnMut() -> AnyResult<P>,
    mut f: impl FnMut(P) -> AnyResult<T>,
) -> AnyResult<Stats> {
    time(
        warmup,
        repeats,
        || {
            let p = prepare()?;
            cuda.synchronize()?;
            Ok(p)
        },
        |p| {
            let out = f(p)?;
            cuda.synchronize()?;
            Ok(out)
        },
    )
}

/// One harness layer on the GPU, with inputs, weights (and for `conv_ms`, the map) resident
/// on the device before the clock starts.
fn bench_layer_cuda(
    args: &Args,
    wl: &Workload,
    name: &str,
    cuda: &CudaBackend,
    dtype: DType,
) -> AnyResult<serde_json::Value> {
    let spec = layer_spec(name, dtype)?;
    let cin = spec.in_channels as usize;
    let (w, r) = (args.warmup, args.repeats);
    let geometry = spec.geometry();
    let base_set = CoordSet::new(wl.coords.clone(), &wl.shape, wl.batch_size)?;
    let base = cuda.upload_coords(&base_set)?;
    let layer = SparseConv::new(
        spec,
        floats(args.seed ^ 0x5eed_0001, spec.weight_len()),
        None,
    )?;
    let conv = cuda.prepare(&layer)?;
    // A cache holding what the layer's input needs before the layer runs: nothing, or for the
    // inverse conv its strided partner's map (built untimed, as spconv reuses its indice key).
    let inverse = spec.kind == ConvKind::Inverse;
    let input_cache = || -> AnyResult<(DeviceRulebookCache, Arc<DeviceCoords>)> {
        let cache = DeviceRulebookCache::new();
        if inverse {
            let partner = cache.rulebook(cuda, &base, &geometry.as_strided(), name)?;
            let sites = partner.output.clone();
            Ok((cache, sites))
        } else {
            Ok((cache, base.clone()))
        }
    };
    let (warm, sites) = input_cache()?;
    let input = floats(args.seed ^ 0x5eed_0002, sites.len() * cin);
    let x = cuda.upload_features(sites, &input, cin, dtype)?;
    // Every kernel the layer can use, compiled (or read from disk) in parallel; then the first
    // call loads them, tunes the tile, builds map and plan.
    let warm_up = cuda.warm_up(&[&layer])?;
    let t0 = Instant::now();
    let first = cuda.forward_with(&conv, &x, &warm, None, true)?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tile = first.tile;
    let (n_in, n_out) = (x.len(), first.output.len());
    drop(first);
    // Pairs and the plan's useful-product share are computed on the host (not timed; the
    // device plan is the same plan).
    let (pairs, efficiency) = {
        let host = RulebookCache::new();
        let base_arc = Arc::new(base_set);
        let rb = if inverse {
            let partner = host.get_or_build(&base_arc, &geometry.as_strided(), name)?;
            host.get_or_build(partner.output(), &geometry, name)?
        } else {
            host.get_or_build(&base_arc, &geometry, name)?
        };
        let plan = TilePlan::build(&rb, tile.block_rows() as usize, name)?;
        (rb.n_pairs(), plan.efficiency(&rb))
    };

    let map = if inverse {
        None
    } else {
        Some(time_cuda(
            cuda,
            w,
            r,
            || Ok(DeviceRulebookCache::new()),
            |cache| {
                let rb = cache.rulebook(cuda, &base, &geometry, name)?;
                cache.plan(cuda, &rb, tile.block_rows() as usize)?;
                Ok(cache)
            },
        )?)
    };
    let forward = |cache: &DeviceRulebookCache, x: &DeviceTensor| -> AnyResult<DeviceTensor> {
        Ok(cuda
            .forward_with(&conv, x, cache, Some(tile), false)?
            .output)
    };
    let conv_stats = time_cuda(cuda, w, r, || Ok(()), |()| forward(&warm, &x))?;
    let mut kernel = Vec::with_capacity(r);
    for _ in 0..r {
        let run = cuda.forward_with(&conv, &x, &warm, Some(tile), true)?;
        kernel.push(f64::from(run.kernel_ms.unwrap_or(f32::NAN)));
    }
    let kernel = Stats { all: kernel };
    let layer_stats = if args.cached_rulebook {
        time_cuda(cuda, w, r, || Ok(()), |()| forward(&warm, &x))?
    } else {
        time_cuda(
            cuda,
            w,
            r,
            || {
                let (cache, sites) = input_cache()?;
                // Same sites, same features: only the (fresh) rulebook cache differs.
                let x = DeviceTensor::new(sites, x.features().try_clone()?, cin)?;
                Ok((cache, x))
            },
            |(cache, x)| forward(&cache, &x),
        )?
    };
    let cache_stats = cuda.kernel_cache().stats();
    let prefix = spec.kernel_name();
    let nvrtc: Vec<serde_json::Value> = cuda
        .kernel_cache()
        .kernels()
        .into_iter()
        .filter(|k| k.entry.starts_with(&prefix))
        .map(|k| {
            json!({"kernel": k.entry,
                   "compile_ms": k.compile_time.map(|t| round(t.as_secs_f64() * 1e3))})
        })
        .collect();
    Ok(json!({
        "lib": "sparsegen",
        "workload": wl.name,
        "layer": name,
        "kernel": spec.kernel_name(),
        "n_in": n_in,
        "n_out": n_out,
        "n_pairs": pairs,
        "map_ms": map.as_ref().map(|m| round(m.median())),
        "conv_ms": round(conv_stats.median()),
        "kernel_ms": round(kernel.median()),
        "layer_ms": round(layer_stats.median()),
        "device": "cuda",
        "gpu": cuda.device().name(),
        "arch": cuda.target().to_string(),
        "backend": "cuda",
        "dtype": dtype_name(dtype),
        "threads": rayon::current_num_threads(),
        "rulebook": if args.cached_rulebook { "cached" } else { "fresh" },
        "variant": tile.suffix(),
        "tile_efficiency": round(efficiency),
        "warm_up": {"kernels": warm_up.kernels, "compiled": warm_up.compiled,
                    "from_disk": warm_up.from_disk,
                    "ms": round(warm_up.elapsed.as_secs_f64() * 1e3)},
        "first_call_ms": round(first_ms),
        "nvrtc": nvrtc,
        "kernel_cache": {"compiled": cache_stats.compiled, "disk_hits": cache_stats.disk_hits,
                         "memory_hits": cache_stats.memory_hits},
        "warmup": args.warmup,
        "repeats": args.repeats,
        "map_stats": map.as_ref().map(Stats::json),
        "conv_stats": conv_stats.json(),
        "kernel_stats": kernel.json(),
        "layer_stats": layer_stats.json(),
    }))
}

/// What runs the layers.
enum Runner {
    /// A host backend (CPU JIT or reference), with the CPU backend for its JIT details.
    Host(Arc<dyn ConvBackend>, Option<Arc<CpuBackend>>),
    /// The GPU, on device-resident tensors.
    Cuda(Box<CudaBackend>, DType),
}

fn runner(args: &Args) -> AnyResult<Runner> {
    let dtype = parse_dtype(&args.dtype)?;
    if dtype != DType::F32 && args.device != "cuda" {
        return Err(format!(
            "--dtype {} runs on --device cuda only (the CPU backends compute in float32)",
            args.dtype
        )
        .into());
    }
    Ok(match args.device.as_str() {
        "cpu" => {
            let strategy = StrategyChoice::from_name(&args.strategy).ok_or_else(|| {
                format!(
                    "unknown --strategy {}; use auto, direct, gemm, scalar or gemm-crate",
                    args.strategy
                )
            })?;
            let gemm_kernel = GemmKernel::from_name(&args.gemm_kernel).ok_or_else(|| {
                format!(
                    "unknown --gemm-kernel {}; use best, avx2 or portable",
                    args.gemm_kernel
                )
            })?;
            let cpu = Arc::new(CpuBackend::with_options(CpuOptions {
                strategy,
                gemm_kernel,
                ..CpuOptions::default()
            }));
            if let Err(why) = cpu.jit_status() {
                eprintln!(
                    "note: the JIT is not used on this host ({why}); running the scalar path"
                );
            }
            Runner::Host(cpu.clone(), Some(cpu))
        }
        "reference" => Runner::Host(Arc::new(ReferenceBackend::default()), None),
        "cuda" => {
            let cuda = CudaBackend::new(CudaOptions::default())
                .map_err(|e| format!("--device cuda: {e}"))?;
            Runner::Cuda(Box::new(cuda), dtype)
        }
        other => {
            return Err(format!("unknown --device {other}; use cpu, cuda or reference").into());
        }
    })
}

fn run(args: &Args) -> AnyResult<()> {
    let runner = runner(args)?;
    let wl = load_workload(&args.workload)?;
    let names: Vec<String> = match &args.layers {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => LAYERS.iter().map(|s| s.to_string()).collect(),
    };
    for name in &names {
        layer_spec(name, DType::F32)?;
    }
    let threads = rayon::current_num_threads();
    let mut out = match &args.json {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let what = match &runner {
        Runner::Host(_, cpu) => format!(
            "{threads} threads, gemm kernel {}",
            cpu.as_ref().map_or("-", |c| c.gemm_kernel())
        ),
        Runner::Cuda(cuda, dtype) => format!(
            "{} ({}), {}",
            cuda.device().name(),
            cuda.target(),
            dtype_name(*dtype)
        ),
    };
    eprintln!(
        "workload {} ({} sites), device {}, {what}",
        wl.name,
        wl.coords.len() / 4,
        args.device,
    );
    for name in &names {
        let rec = match &runner {
            Runner::Host(backend, cpu) => {
                bench_layer(args, &wl, name, backend, cpu.as_deref(), threads)?
            }
            Runner::Cuda(cuda, dtype) => bench_layer_cuda(args, &wl, name, cuda, *dtype)?,
        };
        eprintln!(
            "{:>12} {:>18} map {:>9} ms  conv {:>9.3} ms  layer {:>9.3} ms  variant {}",
            wl.name,
            name,
            rec["map_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}")),
            rec["conv_ms"].as_f64().unwrap_or(f64::NAN),
            rec["layer_ms"].as_f64().unwrap_or(f64::NAN),
            rec["variant"]
        );
        let line = serde_json::to_string(&rec)?;
        println!("{line}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match args.threads {
        Some(n) => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
            Ok(pool) => pool.install(|| run(&args)),
            Err(e) => Err(e.into()),
        },
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
