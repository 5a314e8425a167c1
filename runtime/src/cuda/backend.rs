//! `CudaBackend`: runs convolutions on a GPU through generated, NVRTC-compiled kernels.
//!
//! Per call: pick the tile (the persisted autotuning choice, or time the candidates once), get
//! the kernel (memory cache → disk cache → NVRTC), plan the tiles on the host from the
//! rulebook, upload through the device pool, launch, download. f16/bf16 layers take f32 in and
//! give f32 out; in between, storage is 16-bit (rounded to nearest even) and accumulation f32.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaModule, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use sparsegen_codegen::DType;
use sparsegen_codegen::cuda::{
    ConvKernel, ConvTile, SmVersion, conv_candidates, conv_kernel, pack_weights,
};

use crate::engine::ConvBackend;
use crate::rulebook::Rulebook;
use crate::sparse_conv::SparseConv;

use super::CudaOptions;
use super::autotune::{TuningKey, TuningTable, fastest};
use super::device::{CudaDevice, driver_available};
use super::error::CudaError;
use super::kernel_cache::{KernelCache, source_hash};
use super::launch::{ConvArgs, launch_conv};
use super::nvrtc::{Nvrtc, parse_arch};
use super::plan::{TilePlan, conv_grid};
use super::pool::DevicePool;
use super::timer::GpuTimer;

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

    /// The kernel cache (its stats tell whether a run compiled anything).
    pub fn kernel_cache(&self) -> &KernelCache {
        &self.kernels
    }

    /// The generated kernel of `layer` with `tile` for this device.
    pub fn kernel(&self, layer: &SparseConv, tile: &ConvTile) -> Result<ConvKernel, CudaError> {
        Ok(conv_kernel(layer.spec(), tile, self.target)?)
    }

    fn function(&self, kernel: &ConvKernel) -> Result<CudaFunction, CudaError> {
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
                let module = self
                    .device
                    .context()
                    .load_module(cudarc::nvrtc::Ptx::from_src(compiled.ptx.to_string()))
                    .map_err(driver("cuModuleLoadData"))?;
                modules.insert(key, module.clone());
                module
            }
        };
        module
            .load_function(entry)
            .map_err(driver("cuModuleGetFunction"))
    }

    /// The tile for `layer` over `rulebook`: the stored tuning choice, else (with
    /// `options.autotune`) the fastest candidate after timing each once, else the first
    /// candidate. Returns the output of the timing run when it had to time.
    fn choose_tile(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> Result<(ConvTile, Option<Vec<f32>>), CudaError> {
        let spec = layer.spec();
        let candidates = conv_candidates(spec, self.target);
        let Some(&first) = candidates.first() else {
            return Err(CudaError::Shape {
                layer: layer.name().to_string(),
                message: format!("no tile fits this layer on {}", self.target),
            });
        };
        if !self.options.autotune || candidates.len() == 1 {
            return Ok((first, None));
        }
        let key = TuningKey::new(self.target, spec, rulebook.n_out());
        if let Some(tile) = self
            .tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .choice(&key, &candidates)
        {
            return Ok((tile, None));
        }
        let mut timings = Vec::with_capacity(candidates.len());
        let mut outputs = Vec::with_capacity(candidates.len());
        for tile in &candidates {
            let mut best = f32::INFINITY;
            let mut out = Vec::new();
            for _ in 0..=TUNING_RUNS {
                let run = self.conv_with_tile(layer, rulebook, input, tile)?;
                best = best.min(run.kernel_ms);
                out = run.output;
            }
            timings.push((*tile, best));
            outputs.push(out);
        }
        let Some((tile, ms)) = fastest(&timings) else {
            return Ok((first, None));
        };
        self.tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(key, &tile, ms)?;
        let index = candidates.iter().position(|t| *t == tile).unwrap_or(0);
        Ok((tile, outputs.into_iter().nth(index)))
    }

    /// Runs `layer` with a given tile and times the kernel.
    pub fn conv_with_tile(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        tile: &ConvTile,
    ) -> Result<ConvRun, CudaError> {
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
        if rulebook.n_out() == 0 {
            return Ok(ConvRun {
                output: Vec::new(),
                kernel_ms: 0.0,
            });
        }
        let kernel = self.kernel(layer, tile)?;
        match spec.dtype {
            DType::F32 => self.run::<f32>(layer, rulebook, input, &kernel, |v| v, |v| v),
            DType::F16 => self.run::<u16>(layer, rulebook, input, &kernel, f16_bits, f16_value),
            DType::Bf16 => self.run::<u16>(layer, rulebook, input, &kernel, bf16_bits, bf16_value),
        }
    }

    fn run<S: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static>(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
        kernel: &ConvKernel,
        encode: fn(f32) -> S,
        decode: fn(S) -> f32,
    ) -> Result<ConvRun, CudaError> {
        let spec = layer.spec();
        let name = layer.name();
        let cout = spec.out_channels as usize;
        let function = self.function(kernel)?;
        let plan = TilePlan::build(rulebook, kernel.tile.block_rows() as usize, name)?;
        let grid = conv_grid(
            plan.tiles(),
            spec.out_per_group(),
            kernel.tile.block_cols(),
            spec.groups,
            name,
        )?;
        let packed = pack_weights(spec, kernel.weight_layout, layer.weight()).ok_or_else(|| {
            CudaError::Shape {
                layer: name.to_string(),
                message: "the weights do not have the layer's shape".into(),
            }
        })?;
        let x_host: Vec<S> = input.iter().map(|&v| encode(v)).collect();
        let w_host: Vec<S> = packed.iter().map(|&v| encode(v)).collect();
        let bias_host: Vec<f32> = layer.bias().map_or_else(|| vec![0.0], <[f32]>::to_vec);
        let pool = &self.pool;
        let x = pool.upload(&x_host, "input features")?;
        let w = pool.upload(&w_host, "weights")?;
        let bias = pool.upload(&bias_host, "bias")?;
        let nbr = pool.upload(rulebook.neighbors(), "neighbour table")?;
        let order = pool.upload(&plan.order, "tile row order")?;
        let starts = pool.upload(&plan.tile_offset_start, "tile offset starts")?;
        let offsets = pool.upload(&plan.tile_offsets, "tile offsets")?;
        let n_out = rulebook.n_out();
        let mut y = pool.take::<S>(n_out * cout, "output features")?;
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
                nbr: nbr.view(),
                order: order.view(),
                tile_offset_start: starts.view(),
                tile_offsets: offsets.view(),
                y: y.view_mut(),
                n_out: n_out as i32,
            },
        )?;
        let kernel_ms = timer.stop()?;
        let mut out_host = vec![S::default(); n_out * cout];
        stream
            .memcpy_dtoh(&y.view(), &mut out_host)
            .map_err(CudaError::driver(
                "cuMemcpyDtoH",
                "output features",
                std::mem::size_of_val(out_host.as_slice()),
            ))?;
        stream.synchronize().map_err(|source| CudaError::Driver {
            call: "cuStreamSynchronize",
            source,
        })?;
        Ok(ConvRun {
            output: out_host.into_iter().map(decode).collect(),
            kernel_ms,
        })
    }

    /// Runs `layer` over `rulebook` with the chosen tile (see the module docs).
    pub fn conv_f32(
        &self,
        layer: &SparseConv,
        rulebook: &Rulebook,
        input: &[f32],
    ) -> Result<Vec<f32>, CudaError> {
        let (tile, timed) = self.choose_tile(layer, rulebook, input)?;
        match timed {
            Some(output) => Ok(output),
            None => Ok(self.conv_with_tile(layer, rulebook, input, &tile)?.output),
        }
    }
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
