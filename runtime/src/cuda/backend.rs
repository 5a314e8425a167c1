//! `CudaBackend`: runs convolutions on a GPU through generated, NVRTC-compiled kernels.
//!
//! Per call: pick the tile (the persisted autotuning choice, or time the candidates once), get
//! the kernel (memory cache → disk cache → NVRTC), plan the tiles on the host from the
//! rulebook, upload through the device pool, launch, download. f16/bf16 layers take f32 in and
//! give f32 out; in between, storage is 16-bit (rounded to nearest even) and accumulation f32.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use rayon::prelude::*;
use sparsegen_codegen::cuda::{
    ConvKernel, ConvTile, EPILOGUE_THREADS, GatherKernels, SmVersion, WeightLayout, conv_kernel,
    gather_kernels, pack_weights,
};
use sparsegen_codegen::{DType, Geometry};

use crate::engine::ConvBackend;
use crate::rulebook::Rulebook;
use crate::sparse_conv::SparseConv;

use super::CudaOptions;
use super::autotune::{TuningKey, TuningTable, Variant, fastest, variants};
use super::device::{CudaDevice, driver_available};
use super::error::CudaError;
use super::kernel_cache::{CacheOrigin, KernelCache, source_hash};
use super::launch::{
    ConvArgs, EpilogueArgs, GatherArgs, launch_conv, launch_epilogue, launch_gather,
};
use super::nvrtc::{Nvrtc, parse_arch};
use super::plan::{TilePlan, conv_grid};
use super::plan_cache::{DevicePairs, DevicePlan, DeviceTiles, PlanCache, PlanKey, PlanKind};
use super::pool::{DevicePool, PooledBuffer};
use super::rulebook_gpu::{DeviceRulebook, RulebookModule};
use super::timer::GpuTimer;

/// Below this fraction of useful products in output-stationary tiles (see
/// [`TilePlan::efficiency`]), the untuned backend runs gather-GEMM-scatter instead.
pub const GATHER_BELOW_EFFICIENCY: f64 = 0.3;

/// Launch plans kept in device memory (see [`PlanCache`]).
pub const PLAN_CACHE_ENTRIES: usize = 64;

/// Timed launches per candidate when autotuning (after one warm-up launch).
const TUNING_RUNS: usize = 3;

/// The CUDA backend: one device, its kernel caches, buffer pool and tuning table.
#[derive(Debug)]
pub struct CudaBackend {
    device: CudaDevice,
    nvrtc: &'static Nvrtc,
    target: SmVersion,
    options: CudaOptions,
    kernels: KernelCache,
    modules: Mutex<HashMap<(u64, usize), Arc<CudaModule>>>,
    pool: DevicePool,
    tuning: Mutex<TuningTable>,
    plans: PlanCache,
    rulebook_modules: RulebookModules,
}

/// Loaded rulebook kernels by geometry.
pub(crate) type RulebookModules = Mutex<HashMap<Geometry, Arc<RulebookModule>>>;

/// What [`CudaBackend::warm_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmUp {
    /// Kernels the layers can use (candidate tiles × dataflows, rulebook kernels).
    pub kernels: usize,
    /// Of those, compiled by NVRTC now.
    pub compiled: usize,
    /// Of those, read from the disk cache.
    pub from_disk: usize,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

/// The result of one launch.
#[derive(Debug)]
pub struct ConvRun {
    /// `[N_out, Cout]` f32.
    pub output: Vec<f32>,
    /// Device time of the kernel alone, in milliseconds.
    pub kernel_ms: f32,
}

impl CudaBackend {
    /// Opens the device of `options`, loads NVRTC and the caches. Without a driver, a device
    /// or NVRTC this is a typed error ([`CudaError::NoDriver`], [`CudaError::NoDevice`],
    /// [`CudaError::NoNvrtc`]), never a panic.
    pub fn new(options: CudaOptions) -> Result<Self, CudaError> {
        driver_available()?;
        let nvrtc = Nvrtc::load()?;
        let device = CudaDevice::open(options.device)?;
        let wanted = match &options.arch {
            Some(arch) => parse_arch(arch)?,
            None => device.sm(),
        };
        let target = nvrtc.target_for(wanted)?;
        let kernels = KernelCache::new(options.cache_dir.clone());
        let tuning = TuningTable::load(
            options
                .cache_dir
                .as_ref()
                .map(|d| d.join("autotune-v1.tsv")),
        )?;
        let pool = DevicePool::new(device.stream().clone());
        Ok(CudaBackend {
            device,
            nvrtc,
            target,
            options,
            kernels,
            modules: Mutex::new(HashMap::new()),
            pool,
            tuning: Mutex::new(tuning),
            plans: PlanCache::new(PLAN_CACHE_ENTRIES),
            rulebook_modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The architecture kernels are compiled for.
    pub fn target(&self) -> SmVersion {
        self.target
    }

    /// The device buffer pool.
    pub fn pool(&self) -> &DevicePool {
        &self.pool
    }

    /// The kernel cache (its stats tell whether a run compiled anything).
    pub fn kernel_cache(&self) -> &KernelCache {
        &self.kernels
    }

    /// The generated kernel of `layer` with `tile` for this device.
    pub fn kernel(&self, layer: &SparseConv, tile: &ConvTile) -> Result<ConvKernel, CudaError> {
        Ok(conv_kernel(layer.spec(), tile, self.target)?)
    }

    /// Loaded rulebook kernels by geometry (see `rulebook_gpu`).
    pub(crate) fn rulebook_modules(&self) -> &RulebookModules {
        &self.rulebook_modules
    }

    /// Compiles (or finds in the caches) every kernel `layers` can run with on this device
    /// — each candidate tile of each dataflow, and the rulebook kernels of their geometries —
    /// with NVRTC on all cores at once. A network calls it once at start-up so that its first
    /// pass compiles nothing; autotuning then only times.
    pub fn warm_up(&self, layers: &[&SparseConv]) -> Result<WarmUp, CudaError> {
        let start = std::time::Instant::now();
        let mut units = Vec::new();
        for layer in layers {
            let spec = layer.spec();
            units.extend(
                self.variant_units(spec, &variants(spec, self.target, self.options.allow_tf32))?,
            );
            let geometry = spec.geometry();
            for g in [geometry, geometry.as_strided()] {
                let kernels = sparsegen_codegen::cuda::rulebook_kernels(&g);
                units.push((kernels.prefix.clone(), kernels.source));
            }
        }
        let origins = self
            .kernels
            .get_or_compile_all(self.nvrtc, &units, self.target)?;
        let count = |o| origins.iter().filter(|&&x| x == o).count();
        Ok(WarmUp {
            kernels: units.len(),
            compiled: count(CacheOrigin::Compiled),
            from_disk: count(CacheOrigin::Disk),
            elapsed: start.elapsed(),
        })
    }

    /// The `(name, source)` of every kernel `candidates` of `spec` need.
    fn variant_units(
        &self,
        spec: &sparsegen_codegen::LayerSpec,
        candidates: &[Variant],
    ) -> Result<Vec<(String, String)>, CudaError> {
        candidates
            .iter()
            .map(|variant| match variant {
                Variant::Stationary(tile) => {
                    let k = conv_kernel(spec, tile, self.target)?;
                    Ok((k.entry, k.source))
                }
                Variant::GatherScatter(tile) => {
                    let k = gather_kernels(spec, tile, self.target)?;
                    Ok((k.gemm_entry, k.source))
                }
            })
            .collect()
    }

    /// Compiles every kernel of `candidates` in parallel before the autotuner times them one
    /// by one.
    pub(crate) fn precompile(
        &self,
        spec: &sparsegen_codegen::LayerSpec,
        candidates: &[Variant],
    ) -> Result<(), CudaError> {
        let units = self.variant_units(spec, candidates)?;
        self.kernels
            .get_or_compile_all(self.nvrtc, &units, self.target)
            .map(|_| ())
    }

    /// The options the backend was opened with.
    pub fn options(&self) -> &CudaOptions {
        &self.options
    }

    /// The stored tuning choice for `key` among `candidates`.
    pub(crate) fn tuning_choice(&self, key: &TuningKey, candidates: &[Variant]) -> Option<Variant> {
        self.tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .choice(key, candidates)
    }

    /// Records (and persists) a tuning choice.
    /// Records a tuning choice. The file is a cache for later processes: failing to write
    /// it (a read-only or full disk) keeps the choice in memory and must not fail the
    /// forward pass that tuned.
    pub(crate) fn tuning_record(&self, key: TuningKey, variant: &Variant, ms: f32) {
        let _ = self
            .tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(key, variant, ms);
    }

    pub(crate) fn function(&self, kernel: &ConvKernel) -> Result<CudaFunction, CudaError> {
        self.load_function(&kernel.entry, &kernel.source, &kernel.entry)
    }

    /// Entry `entry` of the module compiled from `source` (named `name` in dumps and the disk
    /// cache): compiled or read from the kernel cache, loaded into the context once.
    pub(crate) fn load_function(
        &self,
        name: &str,
        source: &str,
        entry: &str,
    ) -> Result<CudaFunction, CudaError> {
        let driver = |call| move |source| CudaError::Driver { call, source };
        let key = (source_hash(source), source.len());
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let module = match modules.get(&key) {
            Some(m) => m.clone(),
            None => {
                if let Some(dir) = &self.options.dump_dir {
                    let path = dir.join(format!("{name}.cu"));
                    std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::write(&path, source))
                        .map_err(|source| CudaError::CacheIo { path, source })?;
                }
                let (compiled, _) =
                    self.kernels
                        .get_or_compile(self.nvrtc, name, source, self.target)?;
                let context = self.device.context();
                let from_ptx = || {
                    context
                        .load_module(cudarc::nvrtc::Ptx::from_src(compiled.ptx.to_string()))
                        .map_err(driver("cuModuleLoadData"))
                };
                // Machine code for this very GPU loads as it is; PTX (another target, or a
                // CUBIN the driver refuses) is compiled by the driver first.
                let module = match &compiled.cubin {
                    Some(cubin) if compiled.arch == self.device.sm() => context
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
                        .or_else(|_| from_ptx())?,
                    _ => from_ptx()?,
                };
                modules.insert(key, module.clone());
                module
            }
        };
        module
            .load_function(entry)
            .map_err(driver("cuModuleGetFunction"))
    }

    /// How to run `layer` over `rulebook`: the stored tuning choice; else, with
    /// `options.autotune`, the fastest variant after timing each once (persisted); else a
    /// heuristic: for SIMT layers, gather-GEMM-scatter when output-stationary tiles would do
    /// less than [`GATHER_BELOW_EFFICIENCY`] useful products per product; otherwise the first
    /// candidate.
    /// Returns the output of the timing run when it had to time.
    pub fn choose_variant(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> Result<(Variant, Option<Vec<f32>>), CudaError> {
        let spec = layer.spec();
        let candidates = variants(spec, self.target, self.options.allow_tf32);
        let Some(&first) = candidates.first() else {
            return Err(CudaError::Shape {
                layer: layer.name().to_string(),
                message: format!("no tile fits this layer on {}", self.target),
            });
        };
        if !self.options.autotune {
            // Only SIMT tiles compete with gather-GEMM-scatter (also SIMT) on wasted products;
            // tensor-core tiles are worth their zeros.
            let Variant::Stationary(tile @ ConvTile::Simt { .. }) = first else {
                return Ok((first, None));
            };
            let plan = self.tiles(rulebook, tile.block_rows() as usize, layer.name())?;
            let gather = candidates
                .iter()
                .find(|v| matches!(v, Variant::GatherScatter(_)));
            return Ok(match gather {
                Some(&g) if plan.efficiency < GATHER_BELOW_EFFICIENCY => (g, None),
                _ => (first, None),
            });
        }
        let key = TuningKey::new(self.target, spec, rulebook.n_out());
        if let Some(variant) = self
            .tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .choice(&key, &candidates)
        {
            return Ok((variant, None));
        }
        self.precompile(spec, &candidates)?;
        let mut timings = Vec::with_capacity(candidates.len());
        let mut outputs = Vec::with_capacity(candidates.len());
        for variant in &candidates {
            let mut best = f32::INFINITY;
            let mut out = Vec::new();
            for _ in 0..=TUNING_RUNS {
                let run = self.conv_with_variant(layer, rulebook, input, variant)?;
                best = best.min(run.kernel_ms);
                out = run.output;
            }
            timings.push((*variant, best));
            outputs.push(out);
        }
        let Some((variant, ms)) = fastest(&timings) else {
            return Ok((first, None));
        };
        self.tuning_record(key, &variant, ms);
        let index = candidates.iter().position(|v| *v == variant).unwrap_or(0);
        Ok((variant, outputs.into_iter().nth(index)))
    }

    /// Runs `layer` with a given variant and times its kernels.
    pub fn conv_with_variant(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        variant: &Variant,
    ) -> Result<ConvRun, CudaError> {
        match variant {
            Variant::Stationary(tile) => self.conv_with_tile(layer, rulebook, input, tile),
            Variant::GatherScatter(tile) => self.conv_gather(layer, rulebook, input, tile),
        }
    }

    /// Runs `layer` as gather-GEMM-scatter with a SIMT tile and times its kernels.
    pub fn conv_gather(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        tile: &ConvTile,
    ) -> Result<ConvRun, CudaError> {
        self.check_shapes(layer, rulebook, input)?;
        if rulebook.n_out() == 0 {
            return Ok(ConvRun {
                output: Vec::new(),
                kernel_ms: 0.0,
            });
        }
        let kernels = gather_kernels(layer.spec(), tile, self.target)?;
        match layer.spec().dtype {
            DType::F32 => self.run_gather::<f32>(layer, rulebook, input, &kernels, |v| v, |v| v),
            DType::F16 => {
                self.run_gather::<u16>(layer, rulebook, input, &kernels, f16_bits, f16_value)
            }
            DType::Bf16 => {
                self.run_gather::<u16>(layer, rulebook, input, &kernels, bf16_bits, bf16_value)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_gather<S: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static>(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        kernels: &GatherKernels,
        encode: fn(f32) -> S,
        decode: fn(S) -> f32,
    ) -> Result<ConvRun, CudaError> {
        let spec = layer.spec();
        let name = layer.name();
        let cout = spec.out_channels as usize;
        let n_out = rulebook.n_out();
        let gemm = self.load_function(&kernels.gemm_entry, &kernels.source, &kernels.gemm_entry)?;
        let epilogue = self.load_function(
            &kernels.gemm_entry,
            &kernels.source,
            &kernels.epilogue_entry,
        )?;
        let too_large = |what, value: usize| CudaError::TooLarge {
            layer: name.to_string(),
            what,
            value: value as u64,
            limit: i32::MAX as u64,
        };
        if n_out as u64 > i32::MAX as u64 {
            return Err(too_large("the number of output rows", n_out));
        }
        let epilogue_blocks = (n_out * cout).div_ceil(EPILOGUE_THREADS as usize);
        if epilogue_blocks as u64 > i32::MAX as u64 {
            return Err(too_large("output elements / 256", epilogue_blocks));
        }
        let pairs = self.pairs(rulebook)?;
        let Operands { x, w, bias } =
            self.upload_operands(layer, kernels.weight_layout, input, encode)?;
        let pool = &self.pool;
        let mut acc = pool.take::<f32>(n_out * cout, "f32 accumulator")?;
        let mut y = pool.take::<S>(n_out * cout, "output features")?;
        let stream = self.device.stream();
        stream
            .memset_zeros(&mut acc.view_mut())
            .map_err(CudaError::driver(
                "cuMemsetD8",
                "f32 accumulator",
                n_out * cout * 4,
            ))?;
        let tile = kernels.tile;
        let timer = GpuTimer::start(stream)?;
        for (k, range) in pairs.starts.windows(2).enumerate() {
            let n_pairs = range[1] - range[0];
            if n_pairs == 0 {
                continue;
            }
            let grid = conv_grid(
                n_pairs.div_ceil(tile.block_rows() as usize),
                spec.out_per_group(),
                tile.block_cols(),
                spec.groups,
                name,
            )?;
            launch_gather(
                stream,
                &gemm,
                kernels,
                grid,
                GatherArgs {
                    x: x.view(),
                    w: w.view(),
                    pair_in: pairs.pair_in.slice(range[0]..range[1]),
                    pair_out: pairs.pair_out.slice(range[0]..range[1]),
                    n_pairs: n_pairs as i32,
                    k: k as i32,
                    acc: acc.view_mut(),
                },
            )?;
        }
        launch_epilogue(
            stream,
            &epilogue,
            epilogue_blocks.max(1) as u32,
            EpilogueArgs {
                acc: acc.view(),
                bias: bias.view(),
                y: y.view_mut(),
                n_out: n_out as i32,
            },
        )?;
        let kernel_ms = timer.stop()?;
        let output = self.download(&y, decode)?;
        Ok(ConvRun { output, kernel_ms })
    }

    fn download<S: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + 'static>(
        &self,
        y: &PooledBuffer<'_, S>,
        decode: fn(S) -> f32,
    ) -> Result<Vec<f32>, CudaError> {
        let stream = self.device.stream();
        let mut host = vec![S::default(); y.len()];
        stream
            .memcpy_dtoh(&y.view(), &mut host)
            .map_err(CudaError::driver(
                "cuMemcpyDtoH",
                "output features",
                std::mem::size_of_val(host.as_slice()),
            ))?;
        stream.synchronize().map_err(|source| CudaError::Driver {
            call: "cuStreamSynchronize",
            source,
        })?;
        Ok(host.into_par_iter().map(decode).collect())
    }

    /// The output-stationary plan of `rulebook` in tiles of `block_rows`, from the plan cache
    /// or built (host sort by offset mask) and uploaded once.
    fn tiles(
        &self,
        rulebook: &Rulebook,
        block_rows: usize,
        name: &str,
    ) -> Result<Arc<DeviceTiles>, CudaError> {
        let key = PlanKey::new(rulebook, PlanKind::Tiles(block_rows));
        let plan = self.plans.get_or_build(key, || {
            let plan = TilePlan::build(rulebook, block_rows, name)?;
            let upload = |host: &[i32], what| self.upload_owned(host, what);
            Ok(DevicePlan::Tiles(Arc::new(DeviceTiles {
                tiles: plan.tiles(),
                efficiency: plan.efficiency(rulebook),
                nbr: Arc::new(upload(rulebook.neighbors(), "neighbour table")?),
                order: upload(&plan.order, "tile row order")?,
                starts: upload(&plan.tile_offset_start, "tile offset starts")?,
                offsets: upload(&plan.tile_offsets, "tile offsets")?,
            })))
        })?;
        match plan {
            DevicePlan::Tiles(tiles) => Ok(tiles),
            // A `Tiles` key only ever stores a `Tiles` plan.
            DevicePlan::Pairs(_) => unreachable!("plan cache keys decide the plan kind"),
        }
    }

    /// The per-offset pair lists of `rulebook`, from the plan cache or uploaded once.
    fn pairs(&self, rulebook: &Rulebook) -> Result<Arc<DevicePairs>, CudaError> {
        let key = PlanKey::new(rulebook, PlanKind::Pairs);
        let plan = self.plans.get_or_build(key, || {
            let lists = rulebook.pair_lists();
            let mut starts = Vec::with_capacity(lists.len() + 1);
            let mut pair_in = Vec::with_capacity(rulebook.n_pairs());
            let mut pair_out = Vec::with_capacity(rulebook.n_pairs());
            starts.push(0usize);
            for (ins, outs) in &lists {
                pair_in.extend(ins.iter().map(|&i| i as i32));
                pair_out.extend(outs.iter().map(|&o| o as i32));
                starts.push(pair_in.len());
            }
            let upload = |host: &[i32], what| self.upload_owned(host, what);
            Ok(DevicePlan::Pairs(Arc::new(DevicePairs {
                starts,
                pair_in: upload(&pair_in, "pair input rows")?,
                pair_out: upload(&pair_out, "pair output rows")?,
            })))
        })?;
        match plan {
            DevicePlan::Pairs(pairs) => Ok(pairs),
            // A `Pairs` key only ever stores a `Pairs` plan.
            DevicePlan::Tiles(_) => unreachable!("plan cache keys decide the plan kind"),
        }
    }

    /// A device copy of `host` outside the pool (for buffers the plan cache owns).
    fn upload_owned(&self, host: &[i32], what: &'static str) -> Result<CudaSlice<i32>, CudaError> {
        self.device
            .stream()
            .clone_htod(host)
            .map_err(CudaError::driver(
                "cuMemcpyHtoD",
                what,
                std::mem::size_of_val(host),
            ))
    }

    fn check_shapes(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> Result<(), CudaError> {
        let spec = layer.spec();
        let cin = spec.in_channels as usize;
        let shape = |message: String| CudaError::Shape {
            layer: layer.name().to_string(),
            message,
        };
        if input.len() != rulebook.n_in() * cin {
            return Err(shape(format!(
                "the input has {} values, not {} rows × {cin} channels",
                input.len(),
                rulebook.n_in()
            )));
        }
        if rulebook.kernel_volume() != spec.kernel_volume() {
            return Err(shape(format!(
                "the rulebook has {} offsets but the kernel has {}",
                rulebook.kernel_volume(),
                spec.kernel_volume()
            )));
        }
        Ok(())
    }

    /// Runs `layer` output-stationary with a given tile and times the kernel.
    pub fn conv_with_tile(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        tile: &ConvTile,
    ) -> Result<ConvRun, CudaError> {
        self.check_shapes(layer, rulebook, input)?;
        if rulebook.n_out() == 0 {
            return Ok(ConvRun {
                output: Vec::new(),
                kernel_ms: 0.0,
            });
        }
        let kernel = self.kernel(layer, tile)?;
        let plan = self.tiles(rulebook, tile.block_rows() as usize, layer.name())?;
        self.run_stationary(layer, rulebook.n_out(), &plan, input, &kernel)
    }

    /// Runs `layer` output-stationary with `tile` over a rulebook built on the device
    /// ([`Self::build_rulebook`]), planning the tiles on the device too: no coordinates, table
    /// or plan pass through the host. Times the conv kernel alone.
    pub fn conv_with_device_rulebook(
        &self,
        layer: &SparseConv,
        rulebook: &DeviceRulebook,
        input: &[f32],
        tile: &ConvTile,
    ) -> Result<ConvRun, CudaError> {
        let spec = layer.spec();
        if input.len() != rulebook.n_in * spec.in_channels as usize
            || rulebook.kernel_volume != spec.kernel_volume()
        {
            return Err(CudaError::Shape {
                layer: layer.name().to_string(),
                message: format!(
                    "the input has {} values and the rulebook {} rows × {} offsets; the layer takes {} channels and {} offsets",
                    input.len(),
                    rulebook.n_in,
                    rulebook.kernel_volume,
                    spec.in_channels,
                    spec.kernel_volume()
                ),
            });
        }
        if rulebook.n_out == 0 {
            return Ok(ConvRun {
                output: Vec::new(),
                kernel_ms: 0.0,
            });
        }
        let kernel = self.kernel(layer, tile)?;
        let plan = self.plan_on_device(rulebook, tile.block_rows() as usize)?;
        self.run_stationary(layer, rulebook.n_out, &plan, input, &kernel)
    }

    fn run_stationary(
        &self,
        layer: &SparseConv,
        n_out: usize,
        plan: &DeviceTiles,
        input: &[f32],
        kernel: &ConvKernel,
    ) -> Result<ConvRun, CudaError> {
        match layer.spec().dtype {
            DType::F32 => self.run::<f32>(layer, n_out, plan, input, kernel, |v| v, |v| v),
            DType::F16 => self.run::<u16>(layer, n_out, plan, input, kernel, f16_bits, f16_value),
            DType::Bf16 => {
                self.run::<u16>(layer, n_out, plan, input, kernel, bf16_bits, bf16_value)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run<S: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static>(
        &self,
        layer: &SparseConv,
        n_out: usize,
        plan: &DeviceTiles,
        input: &[f32],
        kernel: &ConvKernel,
        encode: fn(f32) -> S,
        decode: fn(S) -> f32,
    ) -> Result<ConvRun, CudaError> {
        let spec = layer.spec();
        let name = layer.name();
        let cout = spec.out_channels as usize;
        let function = self.function(kernel)?;
        let grid = conv_grid(
            plan.tiles,
            spec.out_per_group(),
            kernel.tile.block_cols(),
            spec.groups,
            name,
        )?;
        let Operands { x, w, bias } =
            self.upload_operands(layer, kernel.weight_layout, input, encode)?;
        let mut y = self.pool.take::<S>(n_out * cout, "output features")?;
        let stream = self.device.stream();
        let timer = GpuTimer::start(stream)?;
        launch_conv(
            stream,
            &function,
            kernel,
            grid,
            ConvArgs {
                x: x.view(),
                w: w.view(),
                bias: bias.view(),
                nbr: plan.nbr.as_view(),
                order: plan.order.as_view(),
                tile_offset_start: plan.starts.as_view(),
                tile_offsets: plan.offsets.as_view(),
                y: y.view_mut(),
                n_out: n_out as i32,
            },
        )?;
        let kernel_ms = timer.stop()?;
        let output = self.download(&y, decode)?;
        Ok(ConvRun { output, kernel_ms })
    }

    /// Runs `layer` over `rulebook` with the chosen variant (see [`Self::choose_variant`]).
    pub fn conv_f32(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> Result<Vec<f32>, CudaError> {
        let (variant, timed) = self.choose_variant(layer, rulebook, input)?;
        match timed {
            Some(output) => Ok(output),
            None => Ok(self
                .conv_with_variant(layer, rulebook, input, &variant)?
                .output),
        }
    }
}

/// A launch's inputs in the device pool: features and packed weights in the storage type,
/// bias in f32.
struct Operands<'p, S: DeviceRepr + 'static> {
    x: PooledBuffer<'p, S>,
    w: PooledBuffer<'p, S>,
    bias: PooledBuffer<'p, f32>,
}

impl CudaBackend {
    /// Encodes `input` and `layer`'s weights (packed for `layout`) with `encode` and uploads
    /// them with the bias.
    fn upload_operands<S: DeviceRepr + ValidAsZeroBits + Send + Sync + 'static>(
        &self,
        layer: &SparseConv,
        layout: WeightLayout,
        input: &[f32],
        encode: fn(f32) -> S,
    ) -> Result<Operands<'_, S>, CudaError> {
        let packed = packed_weights(layer, layout)?;
        let x_host: Vec<S> = input.par_iter().map(|&v| encode(v)).collect();
        let w_host: Vec<S> = packed.par_iter().map(|&v| encode(v)).collect();
        Ok(Operands {
            x: self.pool.upload(&x_host, "input features")?,
            w: self.pool.upload(&w_host, "weights")?,
            bias: self.pool.upload(&bias_or_zero(layer), "bias")?,
        })
    }
}

/// `layer`'s weights packed for `layout` (f32).
pub(crate) fn packed_weights(
    layer: &SparseConv,
    layout: WeightLayout,
) -> Result<Vec<f32>, CudaError> {
    pack_weights(layer.spec(), layout, layer.weight()).ok_or_else(|| CudaError::Shape {
        layer: layer.name().to_string(),
        message: "the weights do not have the layer's shape".into(),
    })
}

/// `layer`'s bias, or a single zero where it has none (kernels take a buffer either way).
pub(crate) fn bias_or_zero(layer: &SparseConv) -> Vec<f32> {
    layer.bias().map_or_else(|| vec![0.0], <[f32]>::to_vec)
}

/// The f16 bit pattern of `v` (round to nearest even): what f16 kernels read.
pub fn f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// The value of an f16 bit pattern.
pub fn f16_value(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// The bf16 bit pattern of `v` (round to nearest even): what bf16 kernels read.
pub fn bf16_bits(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// The value of a bf16 bit pattern.
pub fn bf16_value(bits: u16) -> f32 {
    bf16::from_bits(bits).to_f32()
}

impl ConvBackend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn conv(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> crate::error::Result<Vec<f32>> {
        Ok(self.conv_f32(layer, rulebook, input)?)
    }
}
