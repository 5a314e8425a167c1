//! `TilePlan`: the host-side schedule of an output-stationary conv launch — output rows
//! ordered by their offset masks, cut into tiles of `BM` rows, each with the ascending list of
//! offsets any of its rows needs — and the launch grid. Pure host logic, tested without a GPU.
//!
//! Sorting rows by their offset mask (coarsened to 32 bits for kernels of more than 32
//! offsets: [`plan_key`]) puts rows with the same neighbourhood pattern in the same tile, so a
//! tile's offset list is short where the cloud is thin (lidar) and the kernel skips whole
//! offsets instead of multiplying zeros. The order is deterministic (key, then row), so the
//! tiles, and with them the bits of the result, do not depend on thread scheduling; the
//! device planner (`CudaBackend::plan_on_device`) makes the same plan.

use rayon::prelude::*;
use sparsegen_codegen::cuda::plan_key;

use crate::rulebook::Rulebook;

use super::error::CudaError;

/// The most blocks along grid y and z.
const GRID_YZ_LIMIT: u64 = 65_535;
/// The most blocks along grid x, and the largest `int` the kernels index with.
const INT_LIMIT: u64 = i32::MAX as u64;

/// The schedule of one conv launch over one rulebook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    /// Rows per tile (the tile's BM).
    pub block_rows: usize,
    /// Output rows in tile order.
    pub order: Vec<i32>,
    /// `[tiles + 1]`: where each tile's offsets start in `tile_offsets`.
    pub tile_offset_start: Vec<i32>,
    /// Per tile, the offsets any of its rows needs, ascending.
    pub tile_offsets: Vec<i32>,
}

impl TilePlan {
    /// Plans `rulebook` in tiles of `block_rows` rows. `layer` names the layer in errors.
    pub fn build(rulebook: &Rulebook, block_rows: usize, layer: &str) -> Result<Self, CudaError> {
        let k = rulebook.kernel_volume();
        let n_out = rulebook.n_out();
        let too_large = |what, value: usize, limit| CudaError::TooLarge {
            layer: layer.to_string(),
            what,
            value: value as u64,
            limit,
        };
        if n_out as u64 > INT_LIMIT {
            return Err(too_large("the number of output rows", n_out, INT_LIMIT));
        }
        if rulebook.n_in() as u64 > INT_LIMIT {
            return Err(too_large(
                "the number of input rows",
                rulebook.n_in(),
                INT_LIMIT,
            ));
        }
        let block_rows = block_rows.max(1);
        let words = k.div_ceil(64).max(1);
        let mut masks = vec![0u64; n_out * words];
        masks
            .par_chunks_mut(words)
            .enumerate()
            .for_each(|(o, mask)| {
                for (offset, &i) in rulebook.neighbors_of(o).iter().enumerate() {
                    if i >= 0 {
                        mask[offset / 64] |= 1 << (offset % 64);
                    }
                }
            });
        // The device planner's key (`plan_key`): the mask itself for K <= 32, else coarsened to
        // 32 bits; ties keep row order. Host and device plans are the same for every K.
        let keys: Vec<u32> = (0..n_out)
            .into_par_iter()
            .map(|o| plan_key(k, |offset| rulebook.neighbors_of(o)[offset] >= 0))
            .collect();
        let mut order: Vec<i32> = (0..n_out as i32).collect();
        order.par_sort_unstable_by_key(|&o| (keys[o as usize], o));
        let tiles = n_out.div_ceil(block_rows);
        let per_tile: Vec<Vec<i32>> = order
            .par_chunks(block_rows)
            .map(|rows| {
                let mut union = vec![0u64; words];
                for &o in rows {
                    let o = o as usize;
                    for (u, m) in union.iter_mut().zip(&masks[o * words..(o + 1) * words]) {
                        *u |= m;
                    }
                }
                (0..k)
                    .filter(|&offset| union[offset / 64] >> (offset % 64) & 1 == 1)
                    .map(|offset| offset as i32)
                    .collect()
            })
            .collect();
        let total: usize = per_tile.iter().map(Vec::len).sum();
        if total as u64 > INT_LIMIT {
            return Err(too_large(
                "the number of (tile, offset) pairs",
                total,
                INT_LIMIT,
            ));
        }
        let mut tile_offset_start = Vec::with_capacity(tiles + 1);
        let mut tile_offsets = Vec::with_capacity(total);
        tile_offset_start.push(0);
        for list in per_tile {
            tile_offsets.extend_from_slice(&list);
            tile_offset_start.push(tile_offsets.len() as i32);
        }
        Ok(TilePlan {
            block_rows,
            order,
            tile_offset_start,
            tile_offsets,
        })
    }

    /// Number of tiles.
    pub fn tiles(&self) -> usize {
        self.tile_offset_start.len().saturating_sub(1)
    }

    /// The offsets tile `t` runs.
    pub fn offsets_of(&self, t: usize) -> &[i32] {
        let (a, b) = (self.tile_offset_start[t], self.tile_offset_start[t + 1]);
        &self.tile_offsets[a as usize..b as usize]
    }

    /// The fraction of (row, offset) products of the tiles that are real pairs (1 = no
    /// wasted work). The rest are rows multiplying zeros for offsets other rows in their
    /// tile need.
    pub fn efficiency(&self, rulebook: &Rulebook) -> f64 {
        let work: usize = (0..self.tiles())
            .map(|t| {
                let rows = (self.order.len() - t * self.block_rows).min(self.block_rows);
                rows * self.offsets_of(t).len()
            })
            .sum();
        if work == 0 {
            1.0
        } else {
            rulebook.n_pairs() as f64 / work as f64
        }
    }
}

/// The grid of a conv launch: `(tiles, ⌈Cout_g / BN⌉, groups)`, checked against the limits.
pub fn conv_grid(
    tiles: usize,
    out_per_group: u32,
    block_cols: u32,
    groups: u32,
    layer: &str,
) -> Result<(u32, u32, u32), CudaError> {
    let too_large = |what, value: u64, limit| CudaError::TooLarge {
        layer: layer.to_string(),
        what,
        value,
        limit,
    };
    let x = tiles as u64;
    let y = u64::from(out_per_group.div_ceil(block_cols.max(1)));
    let z = u64::from(groups);
    if x > INT_LIMIT {
        return Err(too_large("the number of row tiles", x, INT_LIMIT));
    }
    if y > GRID_YZ_LIMIT {
        return Err(too_large("the number of channel tiles", y, GRID_YZ_LIMIT));
    }
    if z > GRID_YZ_LIMIT {
        return Err(too_large("the number of groups", z, GRID_YZ_LIMIT));
    }
    Ok((x.max(1) as u32, y as u32, z as u32))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use sparsegen_codegen::{ConvKind, LayerSpec};

    use super::*;
    use crate::tensor::CoordSet;

    fn rulebook(kind: ConvKind, kernel: u32) -> Rulebook {
        // A deterministic scatter of sites in a 16³ grid.
        let mut coords = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut s = 12345u64;
        while seen.len() < 700 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = [
                0,
                (s >> 20) as i32 & 15,
                (s >> 30) as i32 & 15,
                (s >> 40) as i32 & 15,
            ];
            if seen.insert(c) {
                coords.extend(c);
            }
        }
        let set = Arc::new(CoordSet::new(coords, &[16, 16, 16], 1).unwrap());
        let b = LayerSpec::builder(kind, 3).channels(1, 1).kernel(kernel);
        let b = if kind == ConvKind::Strided {
            b.stride(2)
        } else {
            b
        };
        Rulebook::build(&set, &b.build().unwrap().geometry(), "t").unwrap()
    }

    #[test]
    fn every_pair_is_in_its_tile_and_every_row_once() {
        for (kind, kernel) in [
            (ConvKind::Submanifold, 3),
            (ConvKind::Submanifold, 5),
            (ConvKind::Strided, 3),
        ] {
            let rb = rulebook(kind, kernel);
            for block_rows in [1, 64, 128, 5000] {
                let plan = TilePlan::build(&rb, block_rows, "t").unwrap();
                let mut rows: Vec<i32> = plan.order.clone();
                rows.sort_unstable();
                assert_eq!(rows, (0..rb.n_out() as i32).collect::<Vec<_>>());
                assert_eq!(plan.tiles(), rb.n_out().div_ceil(block_rows));
                for t in 0..plan.tiles() {
                    let offsets = plan.offsets_of(t);
                    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "ascending");
                    let tile_rows =
                        &plan.order[t * block_rows..((t + 1) * block_rows).min(rb.n_out())];
                    for &o in tile_rows {
                        for (k, &i) in rb.neighbors_of(o as usize).iter().enumerate() {
                            if i >= 0 {
                                assert!(
                                    offsets.contains(&(k as i32)),
                                    "row {o} offset {k} skipped"
                                );
                            }
                        }
                    }
                    // No offset without a row needing it.
                    for &k in offsets {
                        assert!(
                            tile_rows
                                .iter()
                                .any(|&o| rb.neighbors_of(o as usize)[k as usize] >= 0)
                        );
                    }
                }
                let eff = plan.efficiency(&rb);
                assert!(eff > 0.0 && eff <= 1.0);
                if block_rows == 1 {
                    assert_eq!(eff, 1.0);
                }
            }
        }
    }

    #[test]
    fn sorting_by_mask_saves_work() {
        // K = 27 sorts by the mask itself; K = 125 by the mask coarsened to 32 bits.
        for kernel in [3, 5] {
            sorting_saves_work(&rulebook(ConvKind::Submanifold, kernel));
        }
    }

    fn sorting_saves_work(rb: &Rulebook) {
        let sorted = TilePlan::build(rb, 64, "t").unwrap();
        // The same tiles over rows in their natural order.
        let mut natural = sorted.clone();
        natural.order = (0..rb.n_out() as i32).collect();
        let mut starts = vec![0];
        let mut offsets = Vec::new();
        for rows in natural.order.chunks(64) {
            for k in 0..rb.kernel_volume() {
                if rows.iter().any(|&o| rb.neighbors_of(o as usize)[k] >= 0) {
                    offsets.push(k as i32);
                }
            }
            starts.push(offsets.len() as i32);
        }
        natural.tile_offset_start = starts;
        natural.tile_offsets = offsets;
        assert!(
            sorted.efficiency(rb) > natural.efficiency(rb),
            "K = {}: sorted {} vs natural {}",
            rb.kernel_volume(),
            sorted.efficiency(rb),
            natural.efficiency(rb)
        );
    }

    #[test]
    fn grids_beyond_launch_limits_are_typed_errors() {
        assert_eq!(conv_grid(10, 64, 32, 2, "t").unwrap(), (10, 2, 2));
        assert!(matches!(
            conv_grid(10, 64, 32, 70_000, "t"),
            Err(CudaError::TooLarge {
                what: "the number of groups",
                ..
            })
        ));
        assert!(matches!(
            conv_grid(1 << 31, 64, 32, 1, "t"),
            Err(CudaError::TooLarge { .. })
        ));
    }
}
