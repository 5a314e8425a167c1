//! `TilePlan`: the host-side schedule of an output-stationary conv launch — output rows
//! ordered by their offset masks, cut into tiles of `BM` rows, each with the ascending list of
//! offsets any of its rows needs — and the launch grid. Pure host logic, tested without a GPU.
//!
//! Sorting rows by mask puts rows with the same neighbourhood pattern in the same tile, so
//! a tile's offset list is short where the cloud is thin (lidar) and the kernel skips whole
//! offsets instead of multiplying zeros. The order is deterministic (mask, then row), so the
//! tiles, and with them the bits of the result, do not depend on thread scheduling.

use rayon::prelude::*;

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
        let mut order: Vec<i32> = (0..n_out as i32).collect();
        order.par_sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            masks[a * words..(a + 1) * words]
                .cmp(&masks[b * words..(b + 1) * words])
                .then(a.cmp(&b))
        });
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
