//! Layers on device-resident tensors: the path a network takes on a GPU.
//!
//! [`CudaBackend::prepare`] uploads a layer's weights once ([`DeviceConv`]);
//! [`CudaBackend::forward`] runs it on a [`DeviceTensor`] and gives a [`DeviceTensor`]. The
//! rulebook and the launch plan are built on the device and kept in a [`DeviceRulebookCache`],
//! so the layers of a network that share coordinates share them, and an inverse conv finds
//! the strided conv it undoes. Nothing crosses to the host but a strided conv's output count;
//! nothing waits for the device unless the caller does ([`CudaBackend::synchronize`],
//! [`CudaBackend::download_features`]).
//!
//! Only output-stationary tiles run here (gather-GEMM-scatter needs per-offset pair lists,
//! which only the host rulebook makes). Tile choice: the tuning table's stored choice for
//! the layer and size class; else, with [`CudaOptions::autotune`](super::CudaOptions), the
//! fastest candidate after timing each once (persisted); else the first candidate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, ValidAsZeroBits};
use rayon::prelude::*;
use sparsegen_codegen::cuda::{ConvKernel, ConvTile, WeightLayout};
use sparsegen_codegen::{ConvKind, DType, Geometry};

use crate::sparse_conv::SparseConv;
use crate::tensor::SparseTensor;

use super::autotune::{TuningKey, Variant, fastest, variants};
use super::backend::{
    CudaBackend, bf16_bits, bf16_value, bias_or_zero, f16_bits, f16_value, packed_weights,
};
use super::error::CudaError;
use super::launch::{ConvArgs, launch_conv};
use super::plan::conv_grid;
use super::plan_cache::DeviceTiles;
use super::rulebook_gpu::DeviceRulebook;
use super::tensor::{DeviceCoords, DeviceCoordsId, DeviceFeatures, DeviceTensor};
use super::timer::GpuTimer;

/// Timed launches per candidate tile when autotuning a resident layer (after one warm-up).
const TUNING_RUNS: usize = 3;

/// A layer whose weights live on the device, packed per weight layout on first use.
#[derive(Debug)]
pub struct DeviceConv {
    layer: SparseConv,
    bias: CudaSlice<f32>,
    weights: Mutex<HashMap<WeightLayout, Arc<DeviceFeatures>>>,
    /// Generated and loaded kernels by tile: a call neither regenerates nor rehashes source.
    kernels: Mutex<HashMap<ConvTile, Arc<(ConvKernel, CudaFunction)>>>,
}

impl DeviceConv {
    /// The layer.
    pub fn layer(&self) -> &SparseConv {
        &self.layer
    }
}

/// Device rulebooks and launch plans by coordinate set and geometry.
///
/// One cache per network pass (or per coordinate stream): entries live as long as the cache,
/// so a new scan wants a new cache (or [`Self::clear`]).
#[derive(Debug, Default)]
pub struct DeviceRulebookCache {
    rulebooks: Mutex<Vec<Arc<DeviceRulebook>>>,
    plans: Mutex<HashMap<PlanId, Arc<DeviceTiles>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanId {
    input: DeviceCoordsId,
    output: DeviceCoordsId,
    geometry: Geometry,
    block_rows: usize,
}

impl DeviceRulebookCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rulebook of `geometry` over `input`, built on a miss. An inverse geometry is the
    /// transpose of the strided conv whose output `input` is: that rulebook must be in this
    /// cache (the strided layer ran through it), and its input sites become the output.
    pub fn rulebook(
        &self,
        backend: &CudaBackend,
        input: &Arc<DeviceCoords>,
        geometry: &Geometry,
        layer: &str,
    ) -> Result<Arc<DeviceRulebook>, CudaError> {
        let found = |rbs: &[Arc<DeviceRulebook>]| {
            rbs.iter()
                .find(|rb| rb.input.id() == input.id() && rb.geometry == *geometry)
                .cloned()
        };
        let restores = {
            let rbs = self.rulebooks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(rb) = found(&rbs) {
                return Ok(rb);
            }
            if geometry.kind == ConvKind::Inverse {
                let strided = geometry.as_strided();
                let partner = rbs
                    .iter()
                    .find(|rb| rb.output.id() == input.id() && rb.geometry == strided)
                    .ok_or_else(|| CudaError::Shape {
                        layer: layer.to_string(),
                        message: "an inverse conv needs the rulebook of the strided conv it \
                                  undoes in the same DeviceRulebookCache (run that layer \
                                  through this cache first)"
                            .into(),
                    })?;
                Some(partner.input.clone())
            } else {
                None
            }
        };
        let built = Arc::new(backend.build_rulebook(input, geometry, restores.as_ref())?);
        let mut rbs = self.rulebooks.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have built it meanwhile: keep the first, so ids stay stable.
        if let Some(rb) = found(&rbs) {
            return Ok(rb);
        }
        rbs.push(built.clone());
        Ok(built)
    }

    /// The output-stationary plan of `rulebook` in tiles of `block_rows`, built on a miss.
    pub fn plan(
        &self,
        backend: &CudaBackend,
        rulebook: &DeviceRulebook,
        block_rows: usize,
    ) -> Result<Arc<DeviceTiles>, CudaError> {
        let id = PlanId {
            input: rulebook.input.id(),
            output: rulebook.output.id(),
            geometry: rulebook.geometry,
            block_rows,
        };
        if let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(plan.clone());
        }
        let plan = Arc::new(backend.plan_on_device(rulebook, block_rows)?);
        Ok(self
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(plan)
            .clone())
    }

    /// Number of cached rulebooks.
    pub fn len(&self) -> usize {
        self.rulebooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no rulebook is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every rulebook and plan.
    pub fn clear(&self) {
        self.rulebooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// One resident conv launch.
#[derive(Debug)]
pub struct ResidentRun {
    /// The output tensor (on the rulebook's output sites).
    pub output: DeviceTensor,
    /// The tile that ran.
    pub tile: ConvTile,
    /// Device time of the conv kernel, in milliseconds (`None` unless timed).
    pub kernel_ms: Option<f32>,
}

impl CudaBackend {
    /// Uploads `layer`'s bias now and its weights on first use (packed for the tile's layout,
    /// stored in the layer's dtype).
    pub fn prepare(&self, layer: &SparseConv) -> Result<DeviceConv, CudaError> {
        let bias_host = bias_or_zero(layer);
        let bias = self
            .device()
            .stream()
            .clone_htod(&bias_host)
            .map_err(CudaError::driver(
                "cuMemcpyHtoD",
                "bias",
                bias_host.len() * 4,
            ))?;
        Ok(DeviceConv {
            layer: layer.clone(),
            bias,
            weights: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
        })
    }

    /// Uploads `values` (f32, `[coords.len(), channels]`) as features stored in `dtype`.
    pub fn upload_features(
        &self,
        coords: Arc<DeviceCoords>,
        values: &[f32],
        channels: usize,
        dtype: DType,
    ) -> Result<DeviceTensor, CudaError> {
        if values.len() != coords.len() * channels {
            return Err(CudaError::Shape {
                layer: "feature upload".into(),
                message: format!(
                    "{} values for {} sites × {channels} channels",
                    values.len(),
                    coords.len()
                ),
            });
        }
        let features = self.encode_upload(values, dtype, "features")?;
        DeviceTensor::new(coords, features, channels)
    }

    /// Uploads a host tensor (coordinates and features) with features stored in `dtype`.
    pub fn upload_tensor(
        &self,
        tensor: &SparseTensor,
        dtype: DType,
    ) -> Result<DeviceTensor, CudaError> {
        let coords = self.upload_coords(tensor.coord_set())?;
        self.upload_features(coords, tensor.features(), tensor.channels(), dtype)
    }

    /// The features of `tensor` as f32 (waits for the device).
    pub fn download_features(&self, tensor: &DeviceTensor) -> Result<Vec<f32>, CudaError> {
        let n = tensor.len() * tensor.channels();
        match tensor.features() {
            DeviceFeatures::F32(s) => self.download_decoded(s, n, |v| v),
            DeviceFeatures::F16(s) => self.download_decoded(s, n, f16_value),
            DeviceFeatures::Bf16(s) => self.download_decoded(s, n, bf16_value),
        }
    }

    /// The sites of `coords`, `[N, 1 + dims]` (waits for the device).
    pub fn download_coords(&self, coords: &DeviceCoords) -> Result<Vec<i32>, CudaError> {
        self.download_decoded(coords.buffer(), coords.len() * coords.width(), |v| v)
    }

    /// Waits until every launch queued so far has finished.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.device()
            .stream()
            .synchronize()
            .map_err(|source| CudaError::Driver {
                call: "cuStreamSynchronize",
                source,
            })
    }

    /// Runs `conv` on `x` with the tuned (or heuristic) tile; see the module docs.
    pub fn forward(
        &self,
        conv: &DeviceConv,
        x: &DeviceTensor,
        cache: &DeviceRulebookCache,
    ) -> Result<DeviceTensor, CudaError> {
        Ok(self.forward_with(conv, x, cache, None, false)?.output)
    }

    /// [`Self::forward`] with a given tile (`None`: the tuned one), timing the conv kernel with
    /// CUDA events when `timed` (which waits for the device).
    pub fn forward_with(
        &self,
        conv: &DeviceConv,
        x: &DeviceTensor,
        cache: &DeviceRulebookCache,
        tile: Option<ConvTile>,
        timed: bool,
    ) -> Result<ResidentRun, CudaError> {
        let layer = &conv.layer;
        let spec = layer.spec();
        let shape = |message: String| CudaError::Shape {
            layer: layer.name().to_string(),
            message,
        };
        if x.dtype() != spec.dtype {
            return Err(shape(format!(
                "the input is stored as {:?} but the layer computes in {:?}",
                x.dtype(),
                spec.dtype
            )));
        }
        if x.channels() != spec.in_channels as usize || x.coords().dims() != spec.dims() {
            return Err(shape(format!(
                "the input has {} channels on {} axes; the layer takes {} on {}",
                x.channels(),
                x.coords().dims(),
                spec.in_channels,
                spec.dims()
            )));
        }
        let rulebook = cache.rulebook(self, x.coords(), &spec.geometry(), layer.name())?;
        let tile = match tile {
            Some(t) => t,
            None => self.resident_tile(conv, &rulebook, x, cache)?,
        };
        let plan = cache.plan(self, &rulebook, tile.block_rows() as usize)?;
        let (features, kernel_ms) =
            self.launch_resident(conv, &rulebook, &plan, x, &tile, timed)?;
        Ok(ResidentRun {
            output: DeviceTensor::new(
                rulebook.output.clone(),
                features,
                spec.out_channels as usize,
            )?,
            tile,
            kernel_ms,
        })
    }

    /// The tile a resident layer runs with: the stored choice, else (autotuning) the fastest
    /// candidate timed once on this input, else the first candidate.
    fn resident_tile(
        &self,
        conv: &DeviceConv,
        rulebook: &DeviceRulebook,
        x: &DeviceTensor,
        cache: &DeviceRulebookCache,
    ) -> Result<ConvTile, CudaError> {
        let layer = &conv.layer;
        let candidates: Vec<Variant> =
            variants(layer.spec(), self.target(), self.options().allow_tf32)
                .into_iter()
                .filter(|v| matches!(v, Variant::Stationary(_)))
                .collect();
        let tile_of = |v: &Variant| match v {
            Variant::Stationary(t) | Variant::GatherScatter(t) => *t,
        };
        let Some(first) = candidates.first().map(tile_of) else {
            return Err(CudaError::Shape {
                layer: layer.name().to_string(),
                message: format!("no tile fits this layer on {}", self.target()),
            });
        };
        if rulebook.n_out == 0 {
            return Ok(first);
        }
        let key = TuningKey::resident(self.target(), layer.spec(), rulebook.n_out);
        if let Some(v) = self.tuning_choice(&key, &candidates) {
            return Ok(tile_of(&v));
        }
        if !self.options().autotune || candidates.len() == 1 {
            return Ok(first);
        }
        self.precompile(layer.spec(), &candidates)?;
        let mut timings = Vec::with_capacity(candidates.len());
        for variant in &candidates {
            let tile = tile_of(variant);
            let plan = cache.plan(self, rulebook, tile.block_rows() as usize)?;
            let mut best = f32::INFINITY;
            for _ in 0..=TUNING_RUNS {
                let (_, ms) = self.launch_resident(conv, rulebook, &plan, x, &tile, true)?;
                best = best.min(ms.unwrap_or(f32::INFINITY));
            }
            timings.push((*variant, best));
        }
        match fastest(&timings) {
            Some((variant, ms)) => {
                self.tuning_record(key, &variant, ms);
                Ok(tile_of(&variant))
            }
            None => Ok(first),
        }
    }

    fn launch_resident(
        &self,
        conv: &DeviceConv,
        rulebook: &DeviceRulebook,
        plan: &DeviceTiles,
        x: &DeviceTensor,
        tile: &ConvTile,
        timed: bool,
    ) -> Result<(DeviceFeatures, Option<f32>), CudaError> {
        let loaded = self.resident_kernel(conv, tile)?;
        let (kernel, function) = (&loaded.0, &loaded.1);
        let weights = self.resident_weights(conv, kernel)?;
        match (x.features(), weights.as_ref()) {
            (DeviceFeatures::F32(xs), DeviceFeatures::F32(ws)) => self
                .launch_typed(conv, rulebook, plan, xs, ws, kernel, function, timed)
                .map(|(y, ms)| (DeviceFeatures::F32(y), ms)),
            (DeviceFeatures::F16(xs), DeviceFeatures::F16(ws)) => self
                .launch_typed(conv, rulebook, plan, xs, ws, kernel, function, timed)
                .map(|(y, ms)| (DeviceFeatures::F16(y), ms)),
            (DeviceFeatures::Bf16(xs), DeviceFeatures::Bf16(ws)) => self
                .launch_typed(conv, rulebook, plan, xs, ws, kernel, function, timed)
                .map(|(y, ms)| (DeviceFeatures::Bf16(y), ms)),
            _ => Err(CudaError::Shape {
                layer: conv.layer.name().to_string(),
                message: "the input and the weights are stored in different dtypes".into(),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_typed<S: DeviceRepr + ValidAsZeroBits>(
        &self,
        conv: &DeviceConv,
        rulebook: &DeviceRulebook,
        plan: &DeviceTiles,
        x: &CudaSlice<S>,
        w: &CudaSlice<S>,
        kernel: &ConvKernel,
        function: &CudaFunction,
        timed: bool,
    ) -> Result<(CudaSlice<S>, Option<f32>), CudaError> {
        let spec = conv.layer.spec();
        let name = conv.layer.name();
        let n_out = rulebook.n_out;
        let len = n_out * spec.out_channels as usize;
        let stream = self.device().stream();
        if n_out == 0 {
            let y = stream.alloc_zeros::<S>(1).map_err(CudaError::driver(
                "cuMemAlloc",
                "output features",
                0,
            ))?;
            return Ok((y, timed.then_some(0.0)));
        }
        if n_out as u64 > i32::MAX as u64 {
            return Err(CudaError::TooLarge {
                layer: name.to_string(),
                what: "the number of output rows",
                value: n_out as u64,
                limit: i32::MAX as u64,
            });
        }
        let grid = conv_grid(
            plan.tiles,
            spec.out_per_group(),
            kernel.tile.block_cols(),
            spec.groups,
            name,
        )?;
        // SAFETY: the output-stationary kernel writes every `(row, channel)` of `[n_out, Cout]`:
        // the grid covers every tile of rows, every channel block and group, and each tile
        // stores all its rows' channels (bias and zeros included) — nothing is read unwritten.
        let mut y = unsafe { stream.alloc::<S>(len) }.map_err(CudaError::driver(
            "cuMemAlloc",
            "output features",
            len * std::mem::size_of::<S>(),
        ))?;
        let timer = if timed {
            Some(GpuTimer::start(stream)?)
        } else {
            None
        };
        launch_conv(
            stream,
            function,
            kernel,
            grid,
            ConvArgs {
                x: x.as_view(),
                w: w.as_view(),
                bias: conv.bias.as_view(),
                nbr: plan.nbr.as_view(),
                order: plan.order.as_view(),
                tile_offset_start: plan.starts.as_view(),
                tile_offsets: plan.offsets.as_view(),
                y: y.as_view_mut(),
                n_out: n_out as i32,
            },
        )?;
        let ms = timer.map(GpuTimer::stop).transpose()?;
        Ok((y, ms))
    }

    /// `conv`'s kernel for `tile`, generated and loaded on first use.
    fn resident_kernel(
        &self,
        conv: &DeviceConv,
        tile: &ConvTile,
    ) -> Result<Arc<(ConvKernel, CudaFunction)>, CudaError> {
        let mut kernels = conv.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kernels.get(tile) {
            return Ok(k.clone());
        }
        let kernel = self.kernel(&conv.layer, tile)?;
        let function = self.function(&kernel)?;
        let loaded = Arc::new((kernel, function));
        kernels.insert(*tile, loaded.clone());
        Ok(loaded)
    }

    /// `conv`'s weights packed for `kernel`'s layout, uploaded on first use.
    fn resident_weights(
        &self,
        conv: &DeviceConv,
        kernel: &ConvKernel,
    ) -> Result<Arc<DeviceFeatures>, CudaError> {
        let mut weights = conv.weights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = weights.get(&kernel.weight_layout) {
            return Ok(w.clone());
        }
        let packed = packed_weights(&conv.layer, kernel.weight_layout)?;
        let w = Arc::new(self.encode_upload(&packed, conv.layer.spec().dtype, "weights")?);
        weights.insert(kernel.weight_layout, w.clone());
        Ok(w)
    }

    fn encode_upload(
        &self,
        values: &[f32],
        dtype: DType,
        what: &'static str,
    ) -> Result<DeviceFeatures, CudaError> {
        let stream = self.device().stream();
        let bytes = values.len() * dtype.size_bytes();
        let err = CudaError::driver("cuMemcpyHtoD", what, bytes);
        Ok(match dtype {
            DType::F32 => DeviceFeatures::F32(stream.clone_htod(values).map_err(err)?),
            DType::F16 => {
                let bits: Vec<u16> = values.par_iter().map(|&v| f16_bits(v)).collect();
                DeviceFeatures::F16(stream.clone_htod(&bits).map_err(err)?)
            }
            DType::Bf16 => {
                let bits: Vec<u16> = values.par_iter().map(|&v| bf16_bits(v)).collect();
                DeviceFeatures::Bf16(stream.clone_htod(&bits).map_err(err)?)
            }
        })
    }

    fn download_decoded<S: DeviceRepr + Copy + Default + Send, T: Send>(
        &self,
        buffer: &CudaSlice<S>,
        len: usize,
        decode: fn(S) -> T,
    ) -> Result<Vec<T>, CudaError> {
        let stream = self.device().stream();
        let mut host = vec![S::default(); len];
        if len > 0 {
            stream
                .memcpy_dtoh(&buffer.slice(0..len), &mut host)
                .map_err(CudaError::driver(
                    "cuMemcpyDtoH",
                    "device tensor",
                    len * std::mem::size_of::<S>(),
                ))?;
        }
        self.synchronize()?;
        Ok(host.into_par_iter().map(decode).collect())
    }
}

// Resident layers and caches are shared across threads (one per network, many callers).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DeviceConv>();
    send_sync::<DeviceRulebookCache>();
    send_sync::<DeviceTensor>();
};
