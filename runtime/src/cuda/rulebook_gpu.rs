//! `DeviceRulebook`: a layer's neighbour table and offset masks built in device memory by the
//! generated rulebook kernels (see `sparsegen_codegen::cuda::rulebook_kernels`), and its
//! output-stationary launch plan made from them: no host round trip of coordinates, tables
//! or plans. Same table and same output order as the host [`Rulebook`](crate::Rulebook), which
//! the GPU tests check entry by entry.
//!
//! Every buffer is emptied or filled on the device (no host vector is uploaded) and every
//! sort is the generated radix sort: three launches per 8-bit digit, whatever the size. The
//! only device→host copy is a strided or transposed layer's output count, which sizes its
//! output buffers. This module launches; it does not generate (codegen does) and does not
//! cache (the backend's plan cache does).

use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use sparsegen_codegen::cuda::{
    RADIX_TILE, RULEBOOK_THREADS, RulebookKernels, radix_blocks, radix_counts, radix_key_bits,
    radix_passes, rulebook_kernels,
};
use sparsegen_codegen::{ConvKind, Geometry};

use std::collections::HashMap;
use std::sync::Arc;

use crate::coord_index::KeyPacking;
use crate::tensor::CoordSet;

use super::backend::CudaBackend;
use super::error::CudaError;
use super::launch::launch_error;
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

/// A geometry's rulebook kernels and their loaded entry points.
#[derive(Debug)]
pub(crate) struct RulebookModule {
    kernels: RulebookKernels,
    functions: HashMap<&'static str, CudaFunction>,
}

impl RulebookModule {
    fn function(&self, kernel: &str) -> Result<CudaFunction, CudaError> {
        self.functions
            .get(kernel)
            .cloned()
            .ok_or_else(|| CudaError::Shape {
                layer: self.kernels.prefix.clone(),
                message: format!("the rulebook kernels have no `{kernel}` kernel"),
            })
    }
}

/// The host copies of a [`DeviceRulebook`] (coordinates, table, masks).
pub type HostRulebookParts = (Vec<i32>, Vec<i32>, Vec<u32>);

/// The `int` spatial shape arguments of the rulebook kernels (unused axes 1), or the first
/// extent an `int` cannot hold (a `CoordSet` allows any `u32` extent).
fn shape4(shape: &[u32]) -> Result<[i32; 4], u32> {
    let mut out = [1i32; 4];
    for (o, &s) in out.iter_mut().zip(shape) {
        *o = i32::try_from(s).map_err(|_| s)?;
    }
    Ok(out)
}

fn table_capacity(keys: usize) -> usize {
    (2 * keys.max(1)).next_power_of_two()
}

/// Allocates `len.max(1)` elements of `T` without initialising them.
///
/// # Safety
/// The caller writes every element on the stream (a kernel or a copy) before anything reads
/// it, or reads only elements it wrote.
unsafe fn alloc_uninit<T: DeviceRepr>(
    stream: &Arc<cudarc::driver::CudaStream>,
    len: usize,
    what: &'static str,
) -> Result<CudaSlice<T>, CudaError> {
    // SAFETY: forwarded to the caller (see above).
    unsafe { stream.alloc::<T>(len.max(1)) }.map_err(CudaError::driver(
        "cuMemAlloc",
        what,
        len * std::mem::size_of::<T>(),
    ))
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
    /// Nothing but the strided output count crosses to the host. Launches, in order (see
    /// `sparsegen_codegen::cuda::rulebook_kernels`): for strided and transposed layers
    /// `expand`, `fill_keys`, `insert_keys`, `compact`, the count read back, the radix sort
    /// (three launches per 8 key bits, see [`radix_passes`]) and `unpack`; then for every
    /// layer `fill_keys`, `insert` and `neighbors`.
    pub fn build_rulebook(
        &self,
        input: &Arc<DeviceCoords>,
        geometry: &Geometry,
        output: Option<&Arc<DeviceCoords>>,
    ) -> Result<DeviceRulebook, CudaError> {
        let module = self.rulebook_module(geometry)?;
        let kernels = &module.kernels;
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
        let function = |kernel: &str| module.function(kernel);
        let stream = self.device().stream().clone();
        let driver = |call: &'static str, what: &'static str, bytes: usize| {
            CudaError::driver(call, what, bytes)
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
        let in_shape = shape4(input.spatial_shape()).map_err(|extent| {
            too_large("a spatial extent of the input", extent as usize, int_limit)
        })?;
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
                let out_shape = shape4(&out_shape_u).map_err(|extent| {
                    too_large("a spatial extent of the output", extent as usize, int_limit)
                })?;
                let candidates = n_in * k;
                if !grid_fits(candidates as u64) {
                    return Err(too_large(
                        "input sites × kernel offsets",
                        candidates,
                        int_limit * 256,
                    ));
                }
                // SAFETY: `expand` writes all n_in·K candidates before `insert_keys` reads them.
                let mut cand =
                    unsafe { alloc_uninit::<u64>(&stream, candidates, "candidate output keys") }?;
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

                // At most n_in · fan-out distinct outputs (8 per input for a stride-2 3³ conv,
                // not 27): the set and `unique` are sized by that bound, 2× for the set.
                let max_outputs = n_in * geometry.max_outputs_per_input().clamp(1, k);
                let capacity = table_capacity(max_outputs);
                if !grid_fits(capacity as u64) {
                    return Err(too_large(
                        "the slots of the output key set",
                        capacity,
                        int_limit * u64::from(RULEBOOK_THREADS),
                    ));
                }
                let mut set = self.empty_keys(kernels, capacity, "output key set")?;
                let insert_keys = function("insert_keys")?;
                let (n_cand, mask) = (candidates as i64, (capacity - 1) as u64);
                let mut b = stream.launch_builder(&insert_keys);
                b.arg(&cand).arg(&n_cand).arg(&mut set).arg(&mask);
                // SAFETY: (keys, n, table, mask) as generated; the set has at least 2× more
                // slots than distinct valid candidates (`max_outputs`), so probing always
                // finds a free slot.
                unsafe { b.launch(grid_1d(candidates as u64)) }.map_err(launch_error)?;

                // SAFETY: `compact` writes unique[0..count) and only those are read.
                let mut unique =
                    unsafe { alloc_uninit::<u64>(&stream, max_outputs, "unique output keys") }?;
                let mut count = stream.alloc_zeros::<i32>(1).map_err(driver(
                    "cuMemAlloc",
                    "output site count",
                    4,
                ))?;
                let compact = function("compact")?;
                let (cap, out_len) = (capacity as i64, max_outputs as i64);
                let mut b = stream.launch_builder(&compact);
                b.arg(&set)
                    .arg(&cap)
                    .arg(&mut unique)
                    .arg(&out_len)
                    .arg(&mut count);
                // SAFETY: (table, capacity, out, out_len, count) as generated; `unique` has
                // out_len = max_outputs slots and the kernel writes no slot at or past it.
                unsafe { b.launch(grid_1d(capacity as u64)) }.map_err(launch_error)?;
                drop(set);
                // The one read back of a build: the output count sizes the output buffers.
                let n_unique = stream.clone_dtoh(&count).map_err(driver(
                    "cuMemcpyDtoH",
                    "output site count",
                    4,
                ))?[0]
                    .max(0) as usize;
                if n_unique as u64 > int_limit {
                    return Err(too_large("the number of output sites", n_unique, int_limit));
                }
                // `Geometry::max_outputs_per_input` is a proven bound (and tested against brute
                // force); were it ever wrong, `compact` kept to `unique` and this fails loudly.
                if n_unique > max_outputs {
                    return Err(too_large(
                        "distinct output sites (above the geometry's fan-out bound: a bug)",
                        n_unique,
                        max_outputs as u64,
                    ));
                }

                // Key order is coordinate order; keys lie below batch · cells.
                let cells = out_shape_u.iter().map(|&s| u128::from(s)).product::<u128>()
                    * u128::from(input.batch_size());
                let unique =
                    self.radix_sort(kernels, unique, n_unique, 0, radix_key_bits(cells))?;
                let width = geometry.dims() + 1;
                // SAFETY: `unpack` writes all n_unique rows.
                let mut coords = unsafe {
                    alloc_uninit::<i32>(&stream, n_unique * width, "output coordinates")
                }?;
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
        let mut table = self.empty_keys(kernels, capacity, "coordinate hash table")?;
        // SAFETY: `insert` writes the value of every slot it fills, and `neighbors` reads
        // values only of filled slots.
        let mut values =
            unsafe { alloc_uninit::<i32>(&stream, capacity, "coordinate hash values") }?;
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
        // SAFETY: `neighbors` writes every entry of both: K per row, and every mask word of a
        // row (word k / 32 after offset k % 32 == 31 and after the last offset).
        let mut neighbors = unsafe { alloc_uninit::<i32>(&stream, n_out * k, "neighbour table") }?;
        // SAFETY: see above.
        let mut masks = unsafe { alloc_uninit::<u32>(&stream, n_out * words, "offset masks") }?;
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
    /// device from its masks, stream-ordered with no host copy and no host sync: the generated
    /// `mask_keys`, a radix sort of rows by mask, `tile_masks`, a `scan` of the per-tile offset
    /// counts into the `[tiles + 1]` starts, and `tile_offsets`. Offsets are allocated for the
    /// worst case (`tiles · K`); only the first `starts[tiles]` are written. For `K ≤ 32` the
    /// plan is the host [`TilePlan`](super::TilePlan)'s. Its `efficiency` is not computed (NaN).
    pub fn plan_on_device(
        &self,
        rulebook: &DeviceRulebook,
        block_rows: usize,
    ) -> Result<DeviceTiles, CudaError> {
        let module = self.rulebook_module(&rulebook.geometry)?;
        let kernels = &module.kernels;
        let name = kernels.prefix.clone();
        let function = |kernel: &str| module.function(kernel);
        let stream = self.device().stream().clone();
        let n_out = rulebook.n_out;
        let k = rulebook.kernel_volume;
        let words = rulebook.mask_words;
        let block_rows = block_rows.max(1);
        let tiles = n_out.div_ceil(block_rows);
        let int_limit = i32::MAX as u64;
        let too_large = |what, value: usize| CudaError::TooLarge {
            layer: name.clone(),
            what,
            value: value as u64,
            limit: int_limit,
        };
        if n_out as u64 > int_limit {
            return Err(too_large("the number of output rows", n_out));
        }
        // Every (tile, offset) pair of the worst case must be addressable by the int32 starts.
        let worst = tiles.saturating_mul(k);
        if worst as u64 > int_limit {
            return Err(too_large("the number of (tile, offset) pairs", worst));
        }

        // SAFETY: `mask_keys` writes all n_out keys.
        let mut keys = unsafe { alloc_uninit::<u64>(&stream, n_out, "plan keys") }?;
        let mask_keys = function("mask_keys")?;
        let n_out_i = n_out as i32;
        let mut b = stream.launch_builder(&mask_keys);
        b.arg(&rulebook.masks).arg(&n_out_i).arg(&mut keys);
        // SAFETY: (masks, n_out, keys) as generated; masks holds n_out·words, keys n_out.
        unsafe { b.launch(grid_1d(n_out as u64)) }.map_err(launch_error)?;
        // Rows are in order in the low half; a stable sort by the fold above them orders rows
        // by (mask, row) for K ≤ 32, where the fold is the mask.
        let keys = self.radix_sort(kernels, keys, n_out, 32, k.min(32) as u32)?;

        // SAFETY: `tile_masks` writes all n_out rows of `order`, all tiles·words unions and
        // tile counts 0..tiles; `scan` then writes starts 0..=tiles over the counts.
        let mut order = unsafe { alloc_uninit::<i32>(&stream, n_out, "tile row order") }?;
        // SAFETY: see above.
        let mut unions = unsafe { alloc_uninit::<u32>(&stream, tiles * words, "tile masks") }?;
        // SAFETY: see above.
        let mut starts = unsafe { alloc_uninit::<i32>(&stream, tiles + 1, "tile offset starts") }?;
        let tile_masks = function("tile_masks")?;
        let (block_rows_i, tiles_i) = (block_rows.min(i32::MAX as usize) as i32, tiles as i32);
        let mut b = stream.launch_builder(&tile_masks);
        b.arg(&keys)
            .arg(&n_out_i)
            .arg(&rulebook.masks)
            .arg(&block_rows_i)
            .arg(&tiles_i)
            .arg(&mut order)
            .arg(&mut unions)
            .arg(&mut starts);
        // SAFETY: (keys, n_out, masks, block_rows, tiles, order, tile_union, tile_count) as
        // generated; keys and order hold n_out rows, unions tiles·words, starts tiles + 1.
        unsafe { b.launch(grid_1d(tiles as u64)) }.map_err(launch_error)?;
        self.scan(kernels, &mut starts, tiles)?;

        // SAFETY: `tile_offsets` writes offsets[0..starts[tiles]); the conv kernels read tile t's
        // offsets starts[t]..starts[t + 1] only.
        let mut offsets = unsafe { alloc_uninit::<i32>(&stream, worst, "tile offsets") }?;
        let tile_offsets = function("tile_offsets")?;
        let mut b = stream.launch_builder(&tile_offsets);
        b.arg(&unions).arg(&starts).arg(&tiles_i).arg(&mut offsets);
        // SAFETY: (tile_union, starts, tiles, offsets) as generated; each tile writes its count
        // (at most K) from its start, so offsets of tiles·K entries hold them all.
        unsafe { b.launch(grid_1d(tiles as u64)) }.map_err(launch_error)?;
        Ok(DeviceTiles {
            tiles,
            efficiency: f64::NAN,
            nbr: rulebook.neighbors.clone(),
            order,
            starts,
            offsets,
        })
    }

    /// `len` keys set to the empty key on the device (the generated `fill_keys`).
    fn empty_keys(
        &self,
        kernels: &RulebookKernels,
        len: usize,
        what: &'static str,
    ) -> Result<CudaSlice<u64>, CudaError> {
        let stream = self.device().stream();
        // SAFETY: `fill_keys` writes all `len` keys before the caller's kernels read them.
        let mut keys = unsafe { alloc_uninit::<u64>(stream, len, what) }?;
        let fill = self.rulebook_function(kernels, "fill_keys")?;
        let n = len as i64;
        let mut b = stream.launch_builder(&fill);
        b.arg(&mut keys).arg(&n);
        // SAFETY: (keys, n) as generated; keys holds n (callers bound n by a launchable grid).
        unsafe { b.launch(grid_1d(len as u64)) }.map_err(launch_error)?;
        Ok(keys)
    }

    /// Exclusive scan of `values[0..n)` in place on the device, `values[n]` = the total (the
    /// generated single-block `scan`). `values` holds at least n + 1 entries and the total
    /// fits an `i32` (callers check).
    fn scan(
        &self,
        kernels: &RulebookKernels,
        values: &mut CudaSlice<i32>,
        n: usize,
    ) -> Result<(), CudaError> {
        debug_assert!(values.len() > n && n <= i32::MAX as usize);
        let stream = self.device().stream();
        let scan = self.rulebook_function(kernels, "scan")?;
        let n_i = n as i32;
        let mut b = stream.launch_builder(&scan);
        b.arg(values).arg(&n_i);
        // SAFETY: (values, n) as generated; one block of RULEBOOK_THREADS threads, which the
        // kernel assumes; values holds n + 1 entries.
        unsafe { b.launch(grid_blocks(1)) }.map_err(launch_error)?;
        Ok(())
    }

    /// Sorts `keys[0..n)` stably by key bits `[shift, shift + bits)` with the generated radix
    /// sort (per 8-bit digit: `radix_histogram`, `scan`, `radix_scatter`), ping-ponging with
    /// a scratch buffer; returns whichever of the two holds the result. `n` fits an `i32`.
    fn radix_sort(
        &self,
        kernels: &RulebookKernels,
        mut keys: CudaSlice<u64>,
        n: usize,
        shift: u32,
        bits: u32,
    ) -> Result<CudaSlice<u64>, CudaError> {
        let passes = radix_passes(shift, bits);
        if n <= 1 || passes.is_empty() {
            return Ok(keys);
        }
        if n as u64 > i32::MAX as u64 {
            return Err(CudaError::TooLarge {
                layer: kernels.prefix.clone(),
                what: "the number of keys to sort",
                value: n as u64,
                limit: i32::MAX as u64,
            });
        }
        debug_assert!(keys.len() >= n);
        let stream = self.device().stream();
        let blocks = radix_blocks(n);
        // n < 2^31 keys in tiles of RADIX_TILE: fewer than 2^20 blocks, 2^28 counts.
        debug_assert!(blocks <= (i32::MAX as usize).div_ceil(RADIX_TILE as usize));
        // SAFETY: every pass's scatter writes all n keys of `alt` before they are read;
        // `radix_histogram` writes all 256·blocks counts and `scan` the total after them.
        let mut alt = unsafe { alloc_uninit::<u64>(stream, n, "sort scratch keys") }?;
        // SAFETY: see above.
        let mut counts = unsafe { alloc_uninit::<i32>(stream, radix_counts(n), "digit counts") }?;
        let histogram = self.rulebook_function(kernels, "radix_histogram")?;
        let scatter = self.rulebook_function(kernels, "radix_scatter")?;
        let n_i = n as i32;
        for pass in passes {
            let (shift_i, bits_i) = (pass.shift as i32, pass.bits as i32);
            let mut b = stream.launch_builder(&histogram);
            b.arg(&keys)
                .arg(&n_i)
                .arg(&shift_i)
                .arg(&bits_i)
                .arg(&mut counts);
            // SAFETY: (keys, n, shift, bits, counts) as generated; one block per RADIX_TILE
            // keys of RULEBOOK_THREADS threads (one per digit), counts holds 256·blocks + 1.
            unsafe { b.launch(grid_blocks(blocks)) }.map_err(launch_error)?;
            self.scan(kernels, &mut counts, radix_counts(n) - 1)?;
            let mut b = stream.launch_builder(&scatter);
            b.arg(&keys)
                .arg(&n_i)
                .arg(&shift_i)
                .arg(&bits_i)
                .arg(&counts)
                .arg(&mut alt);
            // SAFETY: (keys, n, shift, bits, starts, out) as generated; the same blocks as the
            // histogram, whose scanned counts place each key once in out[0..n).
            unsafe { b.launch(grid_blocks(blocks)) }.map_err(launch_error)?;
            std::mem::swap(&mut keys, &mut alt);
        }
        Ok(keys)
    }

    fn rulebook_function(
        &self,
        kernels: &RulebookKernels,
        kernel: &str,
    ) -> Result<CudaFunction, CudaError> {
        self.rulebook_module(&kernels.geometry)?.function(kernel)
    }

    /// The rulebook kernels of `geometry`, generated and loaded once per backend: a build or
    /// plan neither regenerates nor rehashes their source.
    pub(crate) fn rulebook_module(
        &self,
        geometry: &Geometry,
    ) -> Result<Arc<RulebookModule>, CudaError> {
        let mut modules = self
            .rulebook_modules()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(geometry) {
            return Ok(m.clone());
        }
        let kernels = rulebook_kernels(geometry);
        let functions = kernels
            .kernel_names()
            .into_iter()
            .map(|name| {
                self.load_function(&kernels.prefix, &kernels.source, &kernels.entry(name))
                    .map(|f| (name, f))
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let module = Arc::new(RulebookModule { kernels, functions });
        modules.insert(*geometry, module.clone());
        Ok(module)
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

fn grid_blocks(blocks: usize) -> LaunchConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_shapes_are_ints_or_refused() {
        assert_eq!(shape4(&[5, 7]), Ok([5, 7, 1, 1]));
        assert_eq!(shape4(&[i32::MAX as u32; 4]), Ok([i32::MAX; 4]));
        // Wrapping to a negative `int` made every neighbour look out of bounds.
        assert_eq!(shape4(&[4, 1 << 31]), Err(1 << 31));
    }
}
