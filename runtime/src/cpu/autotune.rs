//! `Autotuner`: which CPU kernel variant runs a layer shape fastest on this machine.
//!
//! A shape is the layer spec plus the neighbour density of its rulebook (pairs per output
//! row, bucketed to halves), because the best dataflow depends on both: a thin lidar layer
//! with 5 neighbours per site and a wide room layer with 12 want different kernels. The
//! backend times every candidate once per shape on a sample of the real rows and remembers
//! the winner; the choice never changes results (all variants are bitwise identical).

use std::sync::{Mutex, PoisonError};

use hashbrown::HashMap;
use sparsegen_codegen::LayerSpec;
use sparsegen_codegen::cpu::{CpuStrategy, CpuTile};

/// A kernel variant the tuner can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The strategy.
    pub strategy: CpuStrategy,
    /// Its tile parameters.
    pub tile: CpuTile,
}

impl Variant {
    /// A short label (`direct_v8`, `direct_r2_v6`, `gemm`).
    pub fn label(&self) -> String {
        match self.strategy {
            CpuStrategy::Direct if self.tile.rows == 1 => {
                format!("direct_v{}", self.tile.max_vectors)
            }
            CpuStrategy::Direct => format!("direct_r{}_v{}", self.tile.rows, self.tile.max_vectors),
            CpuStrategy::GemmCall => "gemm".into(),
        }
    }
}

/// The key of a tuning decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TuneKey {
    /// The layer.
    pub spec: LayerSpec,
    /// Pairs per output row × 2, rounded.
    pub density_half: u32,
}

impl TuneKey {
    /// The key of `spec` over a sample of its neighbour table: blocks of `[rows, K]` rows.
    pub fn new(spec: &LayerSpec, sample_blocks: &[&[i32]]) -> Self {
        let k = spec.kernel_volume().max(1);
        let entries: usize = sample_blocks.iter().map(|b| b.len()).sum();
        let rows = (entries / k).max(1);
        let pairs: usize = sample_blocks
            .iter()
            .map(|b| b.iter().filter(|&&i| i >= 0).count())
            .sum();
        TuneKey {
            spec: *spec,
            density_half: ((pairs as f64 / rows as f64) * 2.0).round() as u32,
        }
    }
}

/// One tuning decision and the timings behind it.
#[derive(Debug, Clone)]
pub struct TuneRecord {
    /// The layer's kernel name.
    pub layer: String,
    /// Pairs per output row in the sample.
    pub density: f64,
    /// Rows in the sample.
    pub sample_rows: usize,
    /// Each candidate's best time on the sample, milliseconds.
    pub timings_ms: Vec<(String, f64)>,
    /// The winner.
    pub chosen: Variant,
}

/// Remembered decisions.
#[derive(Debug, Default)]
pub struct Autotuner {
    decisions: Mutex<HashMap<TuneKey, TuneRecord>>,
}

impl Autotuner {
    /// An empty tuner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The remembered decision for `key`.
    pub fn get(&self, key: &TuneKey) -> Option<Variant> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|r| r.chosen)
    }

    /// Remembers a decision.
    pub fn insert(&self, key: TuneKey, record: TuneRecord) {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, record);
    }

    /// Every decision made so far.
    pub fn records(&self) -> Vec<TuneRecord> {
        let mut all: Vec<TuneRecord> = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.layer.cmp(&b.layer).then(a.density.total_cmp(&b.density)));
        all
    }
}
