//! `Autotuner`: which CPU kernel variant runs a layer shape fastest on this machine.
//!
//! A shape is the layer spec plus the neighbour density of its rulebook (pairs per output
//! row, bucketed to halves), because the best dataflow depends on both: a thin lidar layer
//! with 5 neighbours per site and a wide room layer with 12 want different kernels. The
//! backend times every candidate once per shape on a sample of the real rows and remembers
//! the winner; the choice never changes results (all variants are bitwise identical).
//!
//! With a tuning file ([`Autotuner::with_file`], `CpuBackend::with_tuning_file`) the
//! winners also persist, keyed by the processor and GEMM micro-kernel as well, so a new
//! process on the same machine skips the timing runs. The file is a cache: unreadable lines
//! and choices no longer among the candidates are ignored, and the layer is timed again. A
//! file that cannot be written is an error when the tuner is made, never during a forward
//! pass (a later failure to save, a full disk say, only loses the cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// Whether the choice was read from the tuning file (no timings this run).
    pub from_file: bool,
}

/// Remembered decisions.
#[derive(Debug, Default)]
pub struct Autotuner {
    decisions: Mutex<HashMap<TuneKey, TuneRecord>>,
    file: Option<TuningFile>,
}

/// Decisions persisted as `<host> <layer> d<density×2>\t<variant label>` lines.
#[derive(Debug)]
struct TuningFile {
    path: PathBuf,
    /// What the host's choices are keyed by: processor and GEMM micro-kernel.
    host: String,
    stored: Mutex<BTreeMap<String, String>>,
}

const HEADER: &str =
    "# sparsegen CPU autotuning choices v1: <processor>/<gemm> <layer> d<density x2>\t<variant>";

impl TuningFile {
    /// Rewrites the file from `stored`, aside and renamed, so a reader never sees half a file.
    fn save(&self, stored: &BTreeMap<String, String>) -> std::io::Result<()> {
        let mut text = format!("{HEADER}\n");
        for (k, v) in stored {
            text.push_str(&format!("{k}\t{v}\n"));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    fn key(&self, key: &TuneKey) -> String {
        format!(
            "{} {} d{}",
            self.host,
            key.spec.kernel_name(),
            key.density_half
        )
    }
}

impl Autotuner {
    /// An empty tuner.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tuner that also reads and writes its choices at `path`, for a host described by
    /// `host` (processor and GEMM micro-kernel: choices do not carry over to another
    /// machine). A missing file is an empty table; one that cannot be read, or written back
    /// (tried now, so that it fails here and not in a forward pass), is an I/O error.
    pub fn with_file(path: &Path, host: &str) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let stored = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = TuningFile {
            path: path.to_path_buf(),
            host: host.replace(char::is_whitespace, "_"),
            stored: Mutex::new(BTreeMap::new()),
        };
        file.save(&stored)?;
        *file.stored.lock().unwrap_or_else(PoisonError::into_inner) = stored;
        Ok(Autotuner {
            decisions: Mutex::default(),
            file: Some(file),
        })
    }

    /// The tuning file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The choice the tuning file holds for `key`, if it is one of `candidates`.
    pub fn stored(&self, key: &TuneKey, candidates: &[Variant]) -> Option<Variant> {
        let file = self.file.as_ref()?;
        let stored = file.stored.lock().unwrap_or_else(PoisonError::into_inner);
        let label = stored.get(&file.key(key))?;
        candidates.iter().find(|v| &v.label() == label).copied()
    }

    /// The remembered decision for `key`.
    pub fn get(&self, key: &TuneKey) -> Option<Variant> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|r| r.chosen)
    }

    /// Remembers a decision; a timed one is also saved to the tuning file, if any.
    pub fn insert(&self, key: TuneKey, record: TuneRecord) {
        let label = record.chosen.label();
        let timed = !record.from_file;
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, record);
        if let Some(file) = self.file.as_ref().filter(|_| timed) {
            let mut stored = file.stored.lock().unwrap_or_else(PoisonError::into_inner);
            stored.insert(file.key(&key), label);
            // The file was writable when the tuner was made; a failure now (a full disk)
            // only loses the cache, and must not fail the forward pass that tuned.
            let _ = file.save(&stored);
        }
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
