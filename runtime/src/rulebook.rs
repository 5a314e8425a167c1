//! `Rulebook`: which input row feeds which output row through which kernel offset.
//!
//! The rulebook of a layer is its `[N_out, K]` neighbour table: entry `(o, k)` is the input
//! row that reaches output row `o` through kernel offset `k`, or −1. Every dataflow derives
//! what it needs from it (per-offset pair lists for gather-GEMM-scatter, per-row offset
//! masks for tile skipping), and the inverse convolution's rulebook is its transpose.
//!
//! Construction follows spconv 2.3.8's semantics (see [`sparsegen_codegen::geometry`]) and
//! is parallel and deterministic: the output coordinate set of a strided or transposed
//! convolution is sorted lexicographically by `(b, c0, .., c{D-1})` — a documented canonical
//! order, where spconv's CPU order follows its hash table — and every table entry is
//! computed independently of thread scheduling. Submanifold and inverse outputs keep the row
//! order of the sites they reuse.
//!
//! The table is filled output-stationary: outputs are visited in sorted order, and for each
//! output *line* (all axes but the last) the input lines of every leading-axis offset are
//! looked up once in the [`CoordIndex`](crate::CoordIndex); the last-axis offsets are then a
//! sorted search in those short lines.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use sparsegen_codegen::{ConvKind, Geometry, MAX_DIMS};

use crate::coord_index::{KeyPacking, Line};
use crate::error::{Error, Result};
use crate::tensor::CoordSet;

/// Outputs per parallel work item when filling a table.
const CHUNK: usize = 512;

/// The kernel map of one layer geometry over one input coordinate set.
#[derive(Debug)]
pub struct Rulebook {
    geometry: Geometry,
    input: Arc<CoordSet>,
    output: Arc<CoordSet>,
    kernel_volume: usize,
    neighbors: Vec<i32>,
    inverse: OnceLock<Arc<Rulebook>>,
}

impl Drop for Rulebook {
    fn drop(&mut self) {
        crate::table_pool::give(std::mem::take(&mut self.neighbors));
    }
}

/// How an input position is found from an output position and a kernel position on one axis.
#[derive(Debug, Clone, Copy)]
enum Relation {
    /// `p = o·scale − shift + k·d` (strided; submanifold with scale 1, shift ⌊K/2⌋·d).
    Forward {
        scale: i64,
        shift: i64,
        dilation: i64,
    },
    /// `p = (o + pad − k·d) / s` when divisible (transposed and inverse).
    Backward {
        stride: i64,
        pad: i64,
        dilation: i64,
    },
}

impl Relation {
    #[inline]
    fn input(self, o: i64, k: i64, size: i64) -> Option<i64> {
        let p = match self {
            Relation::Forward {
                scale,
                shift,
                dilation,
            } => o * scale - shift + k * dilation,
            Relation::Backward {
                stride,
                pad,
                dilation,
            } => {
                let num = o + pad - k * dilation;
                if num < 0 || num % stride != 0 {
                    return None;
                }
                num / stride
            }
        };
        (0..size).contains(&p).then_some(p)
    }

    /// A lower bound of every input position any of the `kernel` offsets reaches from `o`,
    /// before range clipping; unlike the first valid position, it never decreases as `o`
    /// grows, so a merge can carry its start from one output to the next.
    #[inline]
    fn lower_bound(self, o: i64, kernel: i64) -> i64 {
        match self {
            Relation::Forward { scale, shift, .. } => o * scale - shift,
            Relation::Backward {
                stride,
                pad,
                dilation,
            } => {
                let num = o + pad - (kernel - 1) * dilation;
                -(-num).div_euclid(stride)
            }
        }
    }
}

fn relations(geometry: &Geometry) -> [Relation; MAX_DIMS] {
    let mut out = [Relation::Forward {
        scale: 1,
        shift: 0,
        dilation: 1,
    }; MAX_DIMS];
    for (axis, rel) in out.iter_mut().enumerate().take(geometry.dims()) {
        let k = i64::from(geometry.kernel[axis]);
        let s = i64::from(geometry.stride[axis]);
        let p = i64::from(geometry.padding[axis]);
        let d = i64::from(geometry.dilation[axis]);
        *rel = match geometry.kind {
            ConvKind::Submanifold => Relation::Forward {
                scale: 1,
                shift: (k / 2) * d,
                dilation: d,
            },
            ConvKind::Strided => Relation::Forward {
                scale: s,
                shift: p,
                dilation: d,
            },
            ConvKind::Transposed | ConvKind::Inverse => Relation::Backward {
                stride: s,
                pad: p,
                dilation: d,
            },
        };
    }
    out
}

impl Rulebook {
    /// Builds the rulebook of a submanifold, strided or transposed geometry over `input`.
    /// An inverse geometry has no rulebook of its own: take [`Rulebook::inverse`] of its
    /// partner's (the [`RulebookCache`](crate::RulebookCache) does this).
    pub fn build(input: &Arc<CoordSet>, geometry: &Geometry, layer: &str) -> Result<Rulebook> {
        if geometry.dims() != input.dims() {
            return Err(Error::Dims {
                layer: layer.into(),
                expected: geometry.dims(),
                got: input.dims(),
            });
        }
        let geometry_error = |source| Error::Geometry {
            layer: layer.into(),
            source,
        };
        let output = match geometry.kind {
            ConvKind::Submanifold => input.clone(),
            ConvKind::Strided | ConvKind::Transposed => {
                let out_shape = geometry
                    .output_shape(input.spatial_shape())
                    .map_err(geometry_error)?;
                Arc::new(output_sites(input, geometry, &out_shape)?)
            }
            ConvKind::Inverse => {
                return Err(geometry_error(sparsegen_codegen::GeometryError::Inverse));
            }
        };
        let neighbors = gather_table(input, &output, geometry);
        Ok(Rulebook {
            geometry: *geometry,
            input: input.clone(),
            kernel_volume: geometry.kernel_volume(),
            output,
            neighbors,
            inverse: OnceLock::new(),
        })
    }

    /// The rulebook of the inverse convolution paired with this strided one: inputs are this
    /// rulebook's output sites, outputs its input sites, same offsets. Built once, on first use.
    pub fn inverse(&self) -> Arc<Rulebook> {
        self.inverse
            .get_or_init(|| {
                let geometry = Geometry {
                    kind: ConvKind::Inverse,
                    ..self.geometry
                };
                let k = self.kernel_volume;
                // Slot (i, offset) is written by the one output that input i feeds through
                // that offset, so parallel stores never collide and the result is exact.
                let mut neighbors = filled_table(self.input.len() * k);
                let table = as_atomic(&mut neighbors);
                self.neighbors
                    .par_chunks_exact(k.max(1))
                    .enumerate()
                    .for_each(|(o, row)| {
                        for (offset, &i) in row.iter().enumerate() {
                            if i >= 0 {
                                table[i as usize * k + offset].store(o as i32, Ordering::Relaxed);
                            }
                        }
                    });
                Arc::new(Rulebook {
                    geometry,
                    input: self.output.clone(),
                    output: self.input.clone(),
                    kernel_volume: k,
                    neighbors,
                    inverse: OnceLock::new(),
                })
            })
            .clone()
    }

    /// The geometry this rulebook was built for.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The input sites.
    pub fn input(&self) -> &Arc<CoordSet> {
        &self.input
    }

    /// The output sites.
    pub fn output(&self) -> &Arc<CoordSet> {
        &self.output
    }

    /// Number of kernel offsets `K`.
    pub fn kernel_volume(&self) -> usize {
        self.kernel_volume
    }

    /// Number of input rows.
    pub fn n_in(&self) -> usize {
        self.input.len()
    }

    /// Number of output rows.
    pub fn n_out(&self) -> usize {
        self.output.len()
    }

    /// The `[N_out, K]` neighbour table (input row or −1).
    pub fn neighbors(&self) -> &[i32] {
        &self.neighbors
    }

    /// One output row's neighbours, one per offset.
    pub fn neighbors_of(&self, out_row: usize) -> &[i32] {
        &self.neighbors[out_row * self.kernel_volume..(out_row + 1) * self.kernel_volume]
    }

    /// Number of (input, output) pairs per offset.
    pub fn pair_counts(&self) -> Vec<usize> {
        let k = self.kernel_volume;
        let mut counts = vec![0; k];
        for row in self.neighbors.chunks_exact(k.max(1)) {
            for (c, &i) in counts.iter_mut().zip(row) {
                *c += usize::from(i >= 0);
            }
        }
        counts
    }

    /// Total number of pairs.
    pub fn n_pairs(&self) -> usize {
        self.neighbors.iter().filter(|&&i| i >= 0).count()
    }

    /// Per offset, the pairs as `(input rows, output rows)`, in output row order: the lists
    /// a gather-GEMM-scatter dataflow runs over.
    pub fn pair_lists(&self) -> Vec<(Vec<u32>, Vec<u32>)> {
        let k = self.kernel_volume;
        (0..k)
            .into_par_iter()
            .map(|offset| {
                let mut ins = Vec::new();
                let mut outs = Vec::new();
                for (o, row) in self.neighbors.chunks_exact(k).enumerate() {
                    if row[offset] >= 0 {
                        ins.push(row[offset] as u32);
                        outs.push(o as u32);
                    }
                }
                (ins, outs)
            })
            .collect()
    }
}

/// The output sites of a strided or transposed convolution, sorted.
fn output_sites(input: &CoordSet, geometry: &Geometry, out_shape: &[u32]) -> Result<CoordSet> {
    let dims = geometry.dims();
    let width = dims + 1;
    let packing = KeyPacking::new(out_shape, input.batch_size())?;
    let chunk_keys: Vec<Vec<u64>> = input
        .coords()
        .par_chunks(width * CHUNK)
        .map(|chunk| {
            let mut keys = Vec::with_capacity(chunk.len() / width * 2);
            // Neighbouring inputs reach the same outputs: a small direct-mapped filter of
            // recent keys drops most repeats before the global sort.
            let mut recent = [u64::MAX; 1024];
            let mut per_axis: [Vec<i64>; MAX_DIMS] = Default::default();
            for coord in chunk.chunks_exact(width) {
                for axis in 0..dims {
                    let list = &mut per_axis[axis];
                    list.clear();
                    let p = i64::from(coord[axis + 1]);
                    let size = i64::from(out_shape[axis]);
                    let s = i64::from(geometry.stride[axis]);
                    let pad = i64::from(geometry.padding[axis]);
                    let d = i64::from(geometry.dilation[axis]);
                    let kernel = i64::from(geometry.kernel[axis]);
                    if geometry.kind == ConvKind::Transposed {
                        for k in 0..kernel {
                            let o = p * s - pad + k * d;
                            if (0..size).contains(&o) {
                                list.push(o);
                            }
                        }
                    } else if d == 1 {
                        // p + pad − k ≡ 0 (mod s): k runs k0, k0 + s, .. and o falls by one
                        // each step — one division instead of one per kernel position.
                        let num = p + pad;
                        let k0 = num.rem_euclid(s);
                        let mut o = (num - k0).div_euclid(s);
                        let mut k = k0;
                        while k < kernel && o >= 0 {
                            if o < size {
                                list.push(o);
                            }
                            k += s;
                            o -= 1;
                        }
                    } else {
                        for k in 0..kernel {
                            let num = p + pad - k * d;
                            if num >= 0 && num % s == 0 && num / s < size {
                                list.push(num / s);
                            }
                        }
                    }
                }
                let from = keys.len();
                push_products(&per_axis[..dims], coord[0], &packing, &mut keys);
                let mut kept = from;
                for i in from..keys.len() {
                    let key = keys[i];
                    let slot =
                        &mut recent[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize];
                    if *slot != key {
                        *slot = key;
                        keys[kept] = key;
                        kept += 1;
                    }
                }
                keys.truncate(kept);
            }
            keys
        })
        .collect();
    let mut keys: Vec<u64> = chunk_keys.concat();
    crate::radix_sort::sort_u64(&mut keys);
    keys.dedup();
    let mut coords = vec![0i32; keys.len() * width];
    coords
        .par_chunks_exact_mut(width)
        .zip(keys.par_iter())
        .for_each(|(c, &key)| packing.unpack(key, c));
    Ok(CoordSet::new(coords, out_shape, input.batch_size())?)
}

/// Pushes the keys of every combination of per-axis output positions.
fn push_products(per_axis: &[Vec<i64>], batch: i32, packing: &KeyPacking, keys: &mut Vec<u64>) {
    if per_axis.iter().any(Vec::is_empty) {
        return;
    }
    let dims = per_axis.len();
    let mut idx = [0usize; MAX_DIMS];
    let mut coord = [0i32; MAX_DIMS + 1];
    coord[0] = batch;
    loop {
        for axis in 0..dims {
            coord[axis + 1] = per_axis[axis][idx[axis]] as i32;
        }
        keys.push(packing.key(&coord[..dims + 1]));
        let mut axis = dims;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < per_axis[axis].len() {
                break;
            }
            idx[axis] = 0;
        }
    }
}

/// Fills the `[N_out, K]` table, in output row order.
///
/// Outputs are visited in sorted order. Each per-axis relation is strictly increasing in the
/// output coordinate where it is defined, so for a fixed leading-axis offset the input line
/// it queries only moves forward: one forward-only cursor per offset finds every input line
/// ([`CoordIndex::seek_line`](crate::CoordIndex::seek_line)), and within a line the
/// last-axis matches are a merge whose start carries over from one output to the next.
///
/// A submanifold table is symmetric — `nbr[o][k] = i` exactly when `nbr[i][K−1−k] = o` —
/// so only the offsets before the centre are searched; each hit also fills its mirror slot,
/// and the centre is the site itself. Mirror slots belong to other work items' rows, so the
/// table is first initialised in parallel and then filled through atomic stores (plain
/// stores on x86; every slot is written at most once, so the result is deterministic).
fn gather_table(input: &CoordSet, output: &CoordSet, geometry: &Geometry) -> Vec<i32> {
    let dims = geometry.dims();
    let k_total = geometry.kernel_volume();
    let k_last = geometry.kernel[dims - 1] as usize;
    let k_lead = k_total / k_last;
    let rel = relations(geometry);
    // Backward relations decrease along the kernel: visit those offsets in reverse so the
    // input positions ascend.
    let reverse_last = matches!(rel[dims - 1], Relation::Backward { .. });
    let symmetric = geometry.kind == ConvKind::Submanifold;
    let centre = k_total / 2;
    let (centre_lead, centre_last) = (centre / k_last, centre % k_last);
    let in_index = input.index();
    let in_packing = in_index.packing();
    let last = in_index.sorted_last();
    let in_shape = input.spatial_shape();
    let size_last = i64::from(in_shape[dims - 1]);
    let out_index = output.index();
    let out_packing = out_index.packing();
    let n_out = output.len();
    let len = n_out * k_total;

    let mut sorted = filled_table(len);
    let table = as_atomic(&mut sorted);
    let set = |pos: usize, k: usize, row: u32| {
        table[pos * k_total + k].store(row as i32, Ordering::Relaxed)
    };
    let n_chunks = n_out.div_ceil(CHUNK);
    let lead_limit = if symmetric { centre_lead + 1 } else { k_lead };

    (0..n_chunks).into_par_iter().for_each(|chunk| {
        let first = chunk * CHUNK;
        let mut current_line = u64::MAX;
        let mut cursors = vec![0usize; k_lead];
        let mut lines: Vec<Option<Line>> = vec![None; k_lead];
        let mut starts = vec![0usize; k_lead];
        let mut lead_coord = [0i32; MAX_DIMS + 1];
        let mut plan = ForwardLeads::new(geometry, &rel, in_shape);
        for out_pos in first..(first + CHUNK).min(n_out) {
            let out_row = out_index.row_at(out_pos);
            let oc = output.coord(out_row as usize);
            let line_key = out_packing.line_key(oc);
            if line_key != current_line {
                current_line = line_key;
                lead_coord[0] = oc[0];
                if let Some(plan) = &mut plan {
                    plan.begin_line(oc);
                }
                for lead in 0..lead_limit {
                    let query = match &plan {
                        Some(plan) => plan.query(lead),
                        None => lead_line(lead, geometry, &rel, oc, in_shape, &mut lead_coord)
                            .map(|c| in_packing.line_key(&c[..dims + 1])),
                    };
                    lines[lead] = query.and_then(|key| in_index.seek_line(&mut cursors[lead], key));
                    if let Some(line) = lines[lead] {
                        starts[lead] = line.start as usize;
                    }
                }
            }
            if symmetric {
                set(out_pos, centre, out_row);
            }
            let o_last = i64::from(oc[dims]);
            for lead in 0..lead_limit {
                let Some(line) = lines[lead] else { continue };
                let end = line.end as usize;
                let mut pos = starts[lead];
                let bound = rel[dims - 1].lower_bound(o_last, k_last as i64);
                while pos < end && i64::from(last[pos]) < bound {
                    pos += 1;
                }
                // The next output's inputs all lie at or after this one's bound.
                starts[lead] = pos;
                if let Relation::Forward { dilation, .. } = rel[dims - 1] {
                    // The inputs form the window [bound, bound + (K − 1)·d]: walk the sites
                    // in it (usually zero to three) instead of every offset. A symmetric
                    // table stops the centre line's window before the centre.
                    let span = if symmetric && lead == centre_lead {
                        centre_last
                    } else {
                        k_last
                    };
                    let top = bound + (span as i64 - 1) * dilation;
                    while pos < end && i64::from(last[pos]) <= top {
                        let delta = i64::from(last[pos]) - bound;
                        if dilation == 1 || delta % dilation == 0 {
                            let k = lead * k_last + (delta / dilation) as usize;
                            let in_row = in_index.row_at(pos);
                            set(out_pos, k, in_row);
                            if symmetric {
                                // Same index on both sides: `pos` is the input's output position.
                                set(pos, k_total - 1 - k, out_row);
                            }
                        }
                        pos += 1;
                    }
                    continue;
                }
                for step in 0..k_last {
                    let kx = if reverse_last {
                        k_last - 1 - step
                    } else {
                        step
                    };
                    let Some(p) = rel[dims - 1].input(o_last, kx as i64, size_last) else {
                        continue;
                    };
                    let p = p as i32;
                    while pos < end && last[pos] < p {
                        pos += 1;
                    }
                    if pos < end && last[pos] == p {
                        set(out_pos, lead * k_last + kx, in_index.row_at(pos));
                    }
                }
            }
        }
    });
    if out_index.is_sorted() {
        return sorted;
    }
    let mut position = vec![0u32; n_out];
    for (pos, &row) in out_index.sorted_rows().iter().enumerate() {
        position[row as usize] = pos as u32;
    }
    let mut table = vec![-1i32; len];
    table
        .par_chunks_exact_mut(k_total)
        .zip(position.par_iter())
        .for_each(|(row, &pos)| {
            let pos = pos as usize;
            row.copy_from_slice(&sorted[pos * k_total..(pos + 1) * k_total]);
        });
    table
}

/// A table of `len` entries of −1 (memory from the table pool), initialised in parallel so
/// its pages are first touched by all cores.
fn filled_table(len: usize) -> Vec<i32> {
    let mut table = crate::table_pool::take(len);
    table.spare_capacity_mut()[..len]
        .par_chunks_mut(1 << 16)
        .for_each(|chunk| {
            for v in chunk {
                v.write(-1);
            }
        });
    // SAFETY: the loop above initialised all `len` elements (its chunks cover the range).
    unsafe { table.set_len(len) };
    table
}

const _: () = assert!(std::mem::align_of::<AtomicI32>() == std::mem::align_of::<i32>());

/// An atomic view of a table, for parallel fills in which each slot is written at most once.
fn as_atomic(table: &mut [i32]) -> &[AtomicI32] {
    // SAFETY: `AtomicI32` has the size and bit validity of `i32` and, as asserted above, its
    // alignment; the exclusive borrow keeps every other access out while the view lives.
    unsafe { &*(table as *mut [i32] as *const [AtomicI32]) }
}

/// Input line keys of the leading-axis offsets for forward relations (submanifold and
/// strided), without per-offset decoding: the key of offset `lead` from an output line is
/// that line's base key plus a constant per offset, and an offset is valid when each of its
/// per-axis kernel positions lies in an interval computed once per output line.
#[derive(Debug, Clone)]
struct ForwardLeads {
    lead_axes: usize,
    /// Per offset, its per-axis kernel positions (leading axes only).
    positions: Vec<[i64; MAX_DIMS]>,
    /// Per offset, the key delta `Σ k_a·d_a·W_a`.
    deltas: Vec<i64>,
    /// Per leading axis: scale, shift, dilation, input size, key weight `W_a`.
    axes: [(i64, i64, i64, i64, i64); MAX_DIMS],
    /// Batch weight: the product of the leading input sizes.
    batch_weight: i64,
    /// The current output line: base key and valid kernel interval per axis.
    base: i64,
    valid: [(i64, i64); MAX_DIMS],
}

impl ForwardLeads {
    fn new(geometry: &Geometry, rel: &[Relation; MAX_DIMS], in_shape: &[u32]) -> Option<Self> {
        let dims = geometry.dims();
        let lead_axes = dims - 1;
        let mut axes = [(0, 0, 0, 0, 0); MAX_DIMS];
        let mut weight = 1i64;
        for axis in (0..lead_axes).rev() {
            let Relation::Forward {
                scale,
                shift,
                dilation,
            } = rel[axis]
            else {
                return None;
            };
            axes[axis] = (scale, shift, dilation, i64::from(in_shape[axis]), weight);
            weight *= i64::from(in_shape[axis]);
        }
        let k_lead: usize = geometry.kernel[..lead_axes]
            .iter()
            .map(|&k| k as usize)
            .product();
        let mut positions = Vec::with_capacity(k_lead);
        let mut deltas = Vec::with_capacity(k_lead);
        for lead in 0..k_lead {
            let mut pos = [0i64; MAX_DIMS];
            let mut rest = lead;
            let mut delta = 0;
            for axis in (0..lead_axes).rev() {
                let size = geometry.kernel[axis] as usize;
                pos[axis] = (rest % size) as i64;
                rest /= size;
                delta += pos[axis] * axes[axis].2 * axes[axis].4;
            }
            positions.push(pos);
            deltas.push(delta);
        }
        Some(ForwardLeads {
            lead_axes,
            positions,
            deltas,
            axes,
            batch_weight: weight,
            base: 0,
            valid: [(0, -1); MAX_DIMS],
        })
    }

    /// Prepares the queries of the output line of `oc`.
    #[inline]
    fn begin_line(&mut self, oc: &[i32]) {
        let mut base = i64::from(oc[0]) * self.batch_weight;
        for axis in 0..self.lead_axes {
            let (scale, shift, dilation, size, weight) = self.axes[axis];
            let p0 = i64::from(oc[axis + 1]) * scale - shift;
            base += p0 * weight;
            // p0 + k·d ∈ [0, size)  ⇔  k ∈ [⌈−p0/d⌉, ⌊(size − 1 − p0)/d⌋].
            let (lo, hi) = if dilation == 1 {
                ((-p0).max(0), size - 1 - p0)
            } else {
                let lo = if p0 >= 0 {
                    0
                } else {
                    (-p0 + dilation - 1) / dilation
                };
                (lo, (size - 1 - p0).div_euclid(dilation))
            };
            self.valid[axis] = (lo, hi);
        }
        self.base = base;
    }

    /// The input line key of offset `lead`, if inside the grid.
    #[inline]
    fn query(&self, lead: usize) -> Option<u64> {
        let pos = &self.positions[lead];
        let inside = pos[..self.lead_axes]
            .iter()
            .zip(&self.valid)
            .all(|(&k, &(lo, hi))| (lo..=hi).contains(&k));
        if !inside {
            return None;
        }
        Some((self.base + self.deltas[lead]) as u64)
    }
}

/// The input coordinate (batch, leading axes, last axis 0) of leading-axis offset `lead`
/// from output coordinate `oc`, if it is inside the input grid.
fn lead_line(
    lead: usize,
    geometry: &Geometry,
    rel: &[Relation; MAX_DIMS],
    oc: &[i32],
    in_shape: &[u32],
    coord: &mut [i32; MAX_DIMS + 1],
) -> Option<[i32; MAX_DIMS + 1]> {
    let dims = geometry.dims();
    let mut rest = lead;
    for axis in (0..dims - 1).rev() {
        let size = geometry.kernel[axis] as usize;
        let k = (rest % size) as i64;
        rest /= size;
        let p = rel[axis].input(i64::from(oc[axis + 1]), k, i64::from(in_shape[axis]))?;
        coord[axis + 1] = p as i32;
    }
    coord[dims] = 0;
    Some(*coord)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsegen_codegen::LayerSpec;

    fn set(coords: &[i32], shape: &[u32]) -> Arc<CoordSet> {
        Arc::new(CoordSet::new(coords.to_vec(), shape, 1).unwrap())
    }

    #[test]
    fn submanifold_1d_neighbours() {
        let input = set(&[0, 0, 0, 1, 0, 3], &[5]);
        let g = LayerSpec::builder(ConvKind::Submanifold, 1)
            .channels(1, 1)
            .build()
            .unwrap()
            .geometry();
        let rb = Rulebook::build(&input, &g, "t").unwrap();
        assert_eq!(rb.neighbors(), &[-1, 0, 1, 0, 1, -1, -1, 2, -1]);
        assert_eq!(rb.pair_counts(), vec![1, 3, 1]);
    }

    #[test]
    fn strided_outputs_are_sorted_and_inverse_transposes() {
        let input = set(&[0, 3, 0, 0, 0, 2, 0, 1, 1], &[4, 4]);
        let g = LayerSpec::builder(ConvKind::Strided, 2)
            .channels(1, 1)
            .kernel(2)
            .stride(2)
            .build()
            .unwrap()
            .geometry();
        let rb = Rulebook::build(&input, &g, "t").unwrap();
        assert_eq!(rb.output().coords(), &[0, 0, 0, 0, 0, 1, 0, 1, 0]);
        // (0,0) <- (1,1) via k3; (0,1) <- (0,2) via k0; (1,0) <- (3,0) via k2.
        assert_eq!(
            rb.neighbors(),
            &[-1, -1, -1, 2, 1, -1, -1, -1, -1, -1, 0, -1]
        );
        let inv = rb.inverse();
        assert_eq!(inv.n_out(), 3);
        assert_eq!(inv.neighbors_of(0), &[-1, -1, 2, -1]);
        assert_eq!(inv.neighbors_of(1), &[1, -1, -1, -1]);
        assert_eq!(inv.neighbors_of(2), &[-1, -1, -1, 0]);
    }
}
