//! `PlanCache`: launch plans kept in device memory between calls, so running a layer again
//! over the same rulebook (every layer of a network that shares its coordinates, every
//! benchmark repeat) neither re-sorts rows on the host nor re-uploads the neighbour table.
//!
//! Keys name the rulebook by its input and output coordinate sets (process-unique ids) and
//! its geometry, which together decide its table; the tile rows or the dataflow complete
//! the key. The cache keeps the most recently used entries up to a fixed count.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use sparsegen_codegen::Geometry;

use crate::rulebook::Rulebook;
use crate::tensor::CoordSetId;

use super::error::CudaError;

/// Which plan of a rulebook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// Output-stationary tiles of this many rows.
    Tiles(usize),
    /// Per-offset pair lists (gather-GEMM-scatter).
    Pairs,
}

/// A plan's cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanKey {
    input: CoordSetId,
    output: CoordSetId,
    geometry: Geometry,
    kind: PlanKind,
}

impl PlanKey {
    /// The key of `kind` over `rulebook`.
    pub fn new(rulebook: &Rulebook, kind: PlanKind) -> Self {
        PlanKey {
            input: rulebook.input().id(),
            output: rulebook.output().id(),
            geometry: *rulebook.geometry(),
            kind,
        }
    }
}

/// An output-stationary plan in device memory.
#[derive(Debug)]
pub struct DeviceTiles {
    /// Number of tiles.
    pub tiles: usize,
    /// Useful products per product (see `TilePlan::efficiency`).
    pub efficiency: f64,
    /// `[N_out, K]` neighbour table (shared with the device rulebook it came from).
    pub nbr: Arc<CudaSlice<i32>>,
    /// Rows in tile order.
    pub order: CudaSlice<i32>,
    /// Tile offset list starts.
    pub starts: CudaSlice<i32>,
    /// Tile offset lists.
    pub offsets: CudaSlice<i32>,
}

/// Per-offset pair lists in device memory.
#[derive(Debug)]
pub struct DevicePairs {
    /// `[K + 1]` starts of each offset's pairs.
    pub starts: Vec<usize>,
    /// Input rows of all pairs, by offset.
    pub pair_in: CudaSlice<i32>,
    /// Output rows of all pairs, by offset.
    pub pair_out: CudaSlice<i32>,
}

/// A cached plan.
#[derive(Debug, Clone)]
pub enum DevicePlan {
    /// Output-stationary tiles.
    Tiles(Arc<DeviceTiles>),
    /// Pair lists.
    Pairs(Arc<DevicePairs>),
}

/// The most recently used plans.
#[derive(Debug)]
pub struct PlanCache {
    capacity: usize,
    entries: Mutex<VecDeque<(PlanKey, DevicePlan)>>,
}

impl PlanCache {
    /// A cache of at most `capacity` plans.
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            capacity: capacity.max(1),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// The plan for `key`, built by `build` on a miss.
    pub fn get_or_build(
        &self,
        key: PlanKey,
        build: impl FnOnce() -> Result<DevicePlan, CudaError>,
    ) -> Result<DevicePlan, CudaError> {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = entries.iter().position(|(k, _)| *k == key) {
                // Move to the front: most recently used.
                if let Some(entry) = entries.remove(at) {
                    let plan = entry.1.clone();
                    entries.push_front(entry);
                    return Ok(plan);
                }
            }
        }
        let plan = build()?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.push_front((key, plan.clone()));
        entries.truncate(self.capacity);
        Ok(plan)
    }

    /// Number of cached plans.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no plan is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every plan (frees their device memory once no launch holds them).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
