//! `DeviceRulebook`: a layer's neighbour table and offset masks built in device memory by the
//! generated rulebook kernels (see `sparsegen_codegen::cuda::rulebook_kernels`): no host round
//! trip of coordinates. Same table and same output order as the host
//! [`Rulebook`](crate::Rulebook), which the GPU tests check entry by entry.

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use sparsegen_codegen::cuda::{EMPTY_KEY, RULEBOOK_THREADS, RulebookKernels, rulebook_kernels};
use sparsegen_codegen::{ConvKind, Geometry};

use std::sync::Arc;

use crate::coord_index::KeyPacking;
use crate::tensor::CoordSet;

use super::backend::CudaBackend;
use super::error::CudaError;
use super::plan_cache::DeviceTiles;
use super::tensor::DeviceCoords;

/// A rulebook in device memory.
#[derive(Debug)]
pub struct DeviceRulebook {
    /// The geometry it was built for.
    pub geometry: Geometry,
    /// Number of input sites.
    pub n_in: usize,
    /// Number of output sites.
    pub n_out: usize,
    /// Kernel offsets.
    pub kernel_volume: usize,
    /// Mask words per output row.
    pub mask_words: usize,
    /// The input sites.
    pub input: Arc<DeviceCoords>,
    /// The output sites (for submanifold: the input's; for inverse: the given sites; for
    /// strided and transposed: made on the device, sorted `(b, z, y, x)`).
    pub output: Arc<DeviceCoords>,
    /// `[n_out, K]` input row per offset, or −1 (shared with the launch plans made from it).
    pub neighbors: Arc<CudaSlice<i32>>,
    /// `[n_out, mask_words]` offset masks.
    pub masks: CudaSlice<u32>,
}

/// The host copies of a [`DeviceRulebook`] (coordinates, table, masks).
pub type HostRulebookParts = (Vec<i32>, Vec<i32>, Vec<u32>);

fn shape4(shape: &[u32]) -> [i32; 4] {
    let mut out = [1i32; 4];
    for (o, &s) in out.iter_mut().zip(shape) {
        *o = s as i32;
    }
    out
}

fn table_capacity(keys: usize) -> usize {
    (2 * keys.max(1)).next_power_of_two()
}

impl CudaBackend {
    /// Copies a validated coordinate set to the device.
    pub fn upload_coords(&self, set: &CoordSet) -> Result<Arc<DeviceCoords>, CudaError> {
        super::tensor::check_host_coords(set)?;
        let coords = self
            .device()
            .stream()
            .clone_htod(set.coords())
            .map_err(CudaError::driver(
                "cuMemcpyHtoD",
                "coordinates",
                std::mem::size_of_val(set.coords()),
            ))?;
        Ok(Arc::new(DeviceCoords::from_parts(
            coords,
            set.len(),
            set.spatial_shape().to_vec(),
            set.batch_size(),
        )))
    }

    /// [`Self::build_rulebook`] from host coordinate sets (uploaded first).
    pub fn build_rulebook_from_host(
        &self,
        input: &CoordSet,
        geometry: &Geometry,
        output: Option<&CoordSet>,
    ) -> Result<DeviceRulebook, CudaError> {
        let input = self.upload_coords(input)?;
        let output = output.map(|o| self.upload_coords(o)).transpose()?;
        self.build_rulebook(&input, geometry, output.as_ref())
    }

    /// Builds the rulebook of `geometry` over `input` on the device. An inverse geometry needs
    /// `output`: the input sites of its paired strided convolution (the sites it restores).
    /// Nothing but the strided output count crosses to the host.
    pub fn build_rulebook(
        &self,
        input: &Arc<DeviceCoords>,
        geometry: &Geometry,
        output: Option<&Arc<DeviceCoords>>,
    ) -> Result<DeviceRulebook, CudaError> {
        let kernels = rulebook_kernels(geometry);
        let name = kernels.prefix.clone();
        let too_large = |what, value: usize, limit: u64| CudaError::TooLarge {
            layer: name.clone(),
            what,
            value: value as u64,
            limit,
        };
        let k = geometry.kernel_volume();
        let n_in = input.len();
        let int_limit = i32::MAX as u64;
        if n_in as u64 > int_limit {
            return Err(too_large("the number of input sites", n_in, int_limit));
        }
        let function = |kernel: &str| self.rulebook_function(&kernels, kernel);
        let stream = self.device().stream().clone();
        let driver = |call: &'static str, what: &'static str, bytes: usize| {
            CudaError::driver(call, what, bytes)
        };
        let alloc_i32 = |len: usize, what| {
            stream
                .alloc_zeros::<i32>(len.max(1))
                .map_err(driver("cuMemAlloc", what, len * 4))
        };
        if input.dims() != geometry.dims() {
            return Err(CudaError::Shape {
                layer: name.clone(),
                message: format!(
                    "the sites have {} spatial axes but the layer {}",
                    input.dims(),
                    geometry.dims()
                ),
            });
        }
        let in_shape = shape4(input.spatial_shape());
        let in_coords = input.buffer();

        let output = match geometry.kind {
            ConvKind::Submanifold => input.clone(),
            ConvKind::Inverse => {
                let sites = output.ok_or_else(|| CudaError::Shape {
                    layer: name.clone(),
                    message:
                        "an inverse rulebook needs the sites its paired strided convolution read"
                            .into(),
                })?;
                if sites.dims() != geometry.dims() {
                    return Err(CudaError::Shape {
                        layer: name.clone(),
                        message: "the restored sites have another number of axes".into(),
                    });
                }
                sites.clone()
            }
            ConvKind::Strided | ConvKind::Transposed => {
                let out_shape_u =
                    geometry
                        .output_shape(input.spatial_shape())
                        .map_err(|e| CudaError::Shape {
                            layer: name.clone(),
                            message: e.to_string(),
                        })?;
                KeyPacking::new(&out_shape_u, input.batch_size()).map_err(|_| {
                    too_large(
                        "the number of sites of the output grid",
                        usize::MAX,
                        1 << 63,
                    )
                })?;
                let out_shape = shape4(&out_shape_u);
                let candidates = n_in * k;
                if !grid_fits(candidates as u64) {
                    return Err(too_large(
                        "input sites × kernel offsets",
                        candidates,
                        int_limit * 256,
                    ));
                }
                let mut cand = stream
                    .alloc_zeros::<u64>(candidates.max(1))
                    .map_err(driver(
                        "cuMemAlloc",
                        "candidate output keys",
                        candidates * 8,
                    ))?;
                let expand = function("expand")?;
                let n_in_i = n_in as i32;
                let mut b = stream.launch_builder(&expand);
                b.arg(in_coords).arg(&n_in_i).arg(&mut cand);
                for s in &out_shape {
                    b.arg(s);
                }
                // SAFETY: argument order and types follow the generated `expand` signature
                // (in_coords, n_in, out_keys, o0..o3); `cand` holds n_in·K keys, one per thread.
                unsafe { b.launch(grid_1d(candidates as u64)) }.map_err(launch_error)?;

                let capacity = table_capacity(candidates);
                let mut set = stream
                    .clone_htod(&vec![EMPTY_KEY; capacity])
                    .map_err(driver("cuMemcpyHtoD", "output key set", capacity * 8))?;
                let insert_keys = function("insert_keys")?;
                let (n_cand, mask) = (candidates as i64, (capacity - 1) as u64);
                let mut b = stream.launch_builder(&insert_keys);
                b.arg(&cand).arg(&n_cand).arg(&mut set).arg(&mask);
                // SAFETY: (keys, n, table, mask) as generated; the set has 2× more slots than
                // candidates, so probing always finds a free slot.
                unsafe { b.launch(grid_1d(candidates as u64)) }.map_err(launch_error)?;

                let mut unique = stream
                    .clone_htod(&vec![EMPTY_KEY; capacity])
                    .map_err(driver("cuMemcpyHtoD", "unique output keys", capacity * 8))?;
                let mut count = alloc_i32(1, "output site count")?;
                let compact = function("compact")?;
                let cap = capacity as i64;
                let mut b = stream.launch_builder(&compact);
                b.arg(&set).arg(&cap).arg(&mut unique).arg(&mut count);
                // SAFETY: (table, capacity, out, count) as generated; `unique` has `capacity`
                // slots, at least the number of keys in the set.
                unsafe { b.launch(grid_1d(capacity as u64)) }.map_err(launch_error)?;
                let n_unique = stream.clone_dtoh(&count).map_err(driver(
                    "cuMemcpyDtoH",
                    "output site count",
                    4,
                ))?[0]
                    .max(0) as usize;

                // Sort the first next_pow2(n) keys; the rest of `unique` is SG_EMPTY already.
                let n_sort = n_unique.max(1).next_power_of_two();
                let bitonic = function("bitonic_step")?;
                let n_sort_i = n_sort as i64;
                let mut size = 2i64;
                while size <= n_sort_i {
                    let mut j = size / 2;
                    while j > 0 {
                        let mut b = stream.launch_builder(&bitonic);
                        b.arg(&mut unique).arg(&n_sort_i).arg(&j).arg(&size);
                        // SAFETY: (keys, n, j, k) as generated; n ≤ capacity = unique.len().
                        unsafe { b.launch(grid_1d(n_sort as u64)) }.map_err(launch_error)?;
                        j /= 2;
                    }
                    size *= 2;
                }
                if n_unique as u64 > int_limit {
                    return Err(too_large("the number of output sites", n_unique, int_limit));
                }
                let width = geometry.dims() + 1;
                let mut coords = alloc_i32(n_unique * width, "output coordinates")?;
                let unpack = function("unpack")?;
                let n_u = n_unique as i32;
                let mut b = stream.launch_builder(&unpack);
                b.arg(&unique).arg(&n_u).arg(&mut coords);
                for s in &out_shape {
                    b.arg(s);
                }
                // SAFETY: (keys, n, coords, o0..o3) as generated; coords holds n rows.
                unsafe { b.launch(grid_1d(n_unique as u64)) }.map_err(launch_error)?;
                Arc::new(DeviceCoords::from_parts(
                    coords,
                    n_unique,
                    out_shape_u,
                    input.batch_size(),
                ))
            }
        };
        let n_out = output.len();

        let capacity = table_capacity(n_in);
        let mut table = stream
            .clone_htod(&vec![EMPTY_KEY; capacity])
            .map_err(driver(
                "cuMemcpyHtoD",
                "coordinate hash table",
                capacity * 8,
            ))?;
        let mut values = alloc_i32(capacity, "coordinate hash values")?;
        let insert = function("insert")?;
        let (n_in_i, mask) = (n_in as i32, (capacity - 1) as u64);
        let mut b = stream.launch_builder(&insert);
        b.arg(in_coords)
            .arg(&n_in_i)
            .arg(&mut table)
            .arg(&mut values)
            .arg(&mask);
        for s in &in_shape {
            b.arg(s);
        }
        // SAFETY: (coords, n, table, values, mask, s0..s3) as generated; the table has at least
        // twice as many slots as sites.
        unsafe { b.launch(grid_1d(n_in as u64)) }.map_err(launch_error)?;

        let words = kernels.mask_words();
        let mut neighbors = alloc_i32(n_out * k, "neighbour table")?;
        let mut masks = stream
            .alloc_zeros::<u32>((n_out * words).max(1))
            .map_err(driver("cuMemAlloc", "offset masks", n_out * words * 4))?;
        let probe = function("neighbors")?;
        let n_out_i = n_out as i32;
        let mut b = stream.launch_builder(&probe);
        b.arg(output.buffer())
            .arg(&n_out_i)
            .arg(&table)
            .arg(&values)
            .arg(&mask);
        for s in &in_shape {
            b.arg(s);
        }
        b.arg(&mut neighbors).arg(&mut masks);
        // SAFETY: (out_coords, n_out, table, values, mask, s0..s3, nbr, masks) as generated;
        // nbr holds n_out·K entries and masks n_out·words.
        unsafe { b.launch(grid_1d(n_out as u64)) }.map_err(launch_error)?;
        Ok(DeviceRulebook {
            geometry: *geometry,
            n_in,
            n_out,
            kernel_volume: k,
            mask_words: words,
            input: input.clone(),
            output,
            neighbors: Arc::new(neighbors),
            masks,
        })
    }

    /// The output-stationary launch plan of `rulebook` in tiles of `block_rows`, built on the
    /// device from its masks (the generated `mask_keys`, `bitonic_step`, `tile_masks` and
    /// `tile_offsets` kernels). Only the per-tile offset counts cross to the host, for the scan.
    /// The plan's `efficiency` is not computed (NaN).
    pub fn plan_on_device(
        &self,
        rulebook: &DeviceRulebook,
        block_rows: usize,
    ) -> Result<DeviceTiles, CudaError> {
        let kernels = rulebook_kernels(&rulebook.geometry);
        let name = kernels.prefix.clone();
        let function = |kernel: &str| self.rulebook_function(&kernels, kernel);
        let stream = self.device().stream().clone();
        let n_out = rulebook.n_out;
        let block_rows = block_rows.max(1);
        let tiles = n_out.div_ceil(block_rows);
        let n_sort = n_out.max(1).next_power_of_two();
        if n_sort as u64 > i32::MAX as u64 || !grid_fits(n_sort as u64) {
            return Err(CudaError::TooLarge {
                layer: name,
                what: "the number of output rows",
                value: n_out as u64,
                limit: 1 << 30,
            });
        }
        let driver = |call: &'static str, what: &'static str, bytes: usize| {
            CudaError::driver(call, what, bytes)
        };
        let mut keys = stream.clone_htod(&vec![EMPTY_KEY; n_sort]).map_err(driver(
            "cuMemcpyHtoD",
            "plan keys",
            n_sort * 8,
        ))?;
        let mask_keys = function("mask_keys")?;
        let n_out_i = n_out as i32;
        let mut b = stream.launch_builder(&mask_keys);
        b.arg(&rulebook.masks).arg(&n_out_i).arg(&mut keys);
        // SAFETY: (masks, n_out, keys) as generated; masks holds n_out·words, keys n_sort ≥ n_out.
        unsafe { b.launch(grid_1d(n_out as u64)) }.map_err(launch_error)?;
        let bitonic = function("bitonic_step")?;
        let n_sort_i = n_sort as i64;
        let mut size = 2i64;
        while size <= n_sort_i {
            let mut j = size / 2;
            while j > 0 {
                let mut b = stream.launch_builder(&bitonic);
                b.arg(&mut keys).arg(&n_sort_i).arg(&j).arg(&size);
                // SAFETY: (keys, n, j, k) as generated; n = keys.len().
                unsafe { b.launch(grid_1d(n_sort as u64)) }.map_err(launch_error)?;
                j /= 2;
            }
            size *= 2;
        }
        let alloc_i32 = |len: usize, what| {
            stream
                .alloc_zeros::<i32>(len.max(1))
                .map_err(driver("cuMemAlloc", what, len * 4))
        };
        let mut order = alloc_i32(n_out, "tile row order")?;
        let mut counts = alloc_i32(tiles, "tile offset counts")?;
        let mut unions = stream
            .alloc_zeros::<u32>((tiles * rulebook.mask_words).max(1))
            .map_err(driver(
                "cuMemAlloc",
                "tile masks",
                tiles * rulebook.mask_words * 4,
            ))?;
        let tile_masks = function("tile_masks")?;
        let (block_rows_i, tiles_i) = (block_rows as i32, tiles as i32);
        let mut b = stream.launch_builder(&tile_masks);
        b.arg(&keys)
            .arg(&n_out_i)
            .arg(&rulebook.masks)
            .arg(&block_rows_i)
            .arg(&tiles_i)
            .arg(&mut order)
            .arg(&mut unions)
            .arg(&mut counts);
        // SAFETY: (keys, n_out, masks, block_rows, tiles, order, tile_union, tile_count) as
        // generated; order holds n_out rows, unions tiles·words, counts tiles.
        unsafe { b.launch(grid_1d(tiles as u64)) }.map_err(launch_error)?;
        let counts = stream.clone_dtoh(&counts).map_err(driver(
            "cuMemcpyDtoH",
            "tile offset counts",
            tiles * 4,
        ))?;
        let mut starts = Vec::with_capacity(tiles + 1);
        let mut total = 0i64;
        starts.push(0i32);
        for &c in counts.iter().take(tiles) {
            total += i64::from(c);
            if total > i64::from(i32::MAX) {
                return Err(CudaError::TooLarge {
                    layer: name,
                    what: "the number of (tile, offset) pairs",
                    value: total as u64,
                    limit: i32::MAX as u64,
                });
            }
            starts.push(total as i32);
        }
        let starts_d = stream.clone_htod(&starts).map_err(driver(
            "cuMemcpyHtoD",
            "tile offset starts",
            starts.len() * 4,
        ))?;
        let mut offsets = alloc_i32(total as usize, "tile offsets")?;
        let tile_offsets = function("tile_offsets")?;
        let mut b = stream.launch_builder(&tile_offsets);
        b.arg(&unions)
            .arg(&starts_d)
            .arg(&tiles_i)
            .arg(&mut offsets);
        // SAFETY: (tile_union, starts, tiles, offsets) as generated; offsets holds the scan's
        // total, and each tile writes exactly its count from its start.
        unsafe { b.launch(grid_1d(tiles as u64)) }.map_err(launch_error)?;
        Ok(DeviceTiles {
            tiles,
            efficiency: f64::NAN,
            nbr: rulebook.neighbors.clone(),
            order,
            starts: starts_d,
            offsets,
        })
    }

    fn rulebook_function(
        &self,
        kernels: &RulebookKernels,
        kernel: &str,
    ) -> Result<CudaFunction, CudaError> {
        self.load_function(&kernels.prefix, &kernels.source, &kernels.entry(kernel))
    }
}

impl DeviceRulebook {
    /// Copies coordinates, table and masks to the host.
    pub fn to_host(
        &self,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<HostRulebookParts, CudaError> {
        let copy = |source| CudaError::Driver {
            call: "cuMemcpyDtoH",
            source,
        };
        let width = self.output.width();
        let mut coords = stream.clone_dtoh(self.output.buffer()).map_err(copy)?;
        coords.truncate(self.n_out * width);
        let mut nbr = stream.clone_dtoh(self.neighbors.as_ref()).map_err(copy)?;
        nbr.truncate(self.n_out * self.kernel_volume);
        let mut masks = stream.clone_dtoh(&self.masks).map_err(copy)?;
        masks.truncate(self.n_out * self.mask_words);
        Ok((coords, nbr, masks))
    }
}

fn grid_1d(threads: u64) -> LaunchConfig {
    // Callers bound `threads` by n·K with n < 2^31 and K ≤ 2^14 (checked by `grid_fits`).
    let blocks = threads.div_ceil(u64::from(RULEBOOK_THREADS)).max(1);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (RULEBOOK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether `threads` fit one 1-D launch.
fn grid_fits(threads: u64) -> bool {
    threads.div_ceil(u64::from(RULEBOOK_THREADS)) <= i32::MAX as u64
}

fn launch_error(source: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver {
        call: "cuLaunchKernel",
        source,
    }
}
