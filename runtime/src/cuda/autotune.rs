//! `TuningTable`: the tile the autotuner chose per (architecture, layer, size class),
//! persisted as a small text file next to the kernel cache so the timing runs happen once.
//!
//! The timing loop itself lives in the backend (it needs kernels and a device); this module
//! owns the key, the choice, and the file. A stored choice that is no longer among the
//! candidates (the candidate list changed) is ignored, and the layer is timed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sparsegen_codegen::LayerSpec;
use sparsegen_codegen::cuda::{ConvTile, SmVersion, conv_candidates, tf32_candidates};

use super::error::CudaError;

/// A way to run a layer: the dataflow and its tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Output-stationary implicit GEMM over the neighbour table.
    Stationary(ConvTile),
    /// Gather-GEMM-scatter, one launch per offset (SIMT tiles).
    GatherScatter(ConvTile),
}

impl Variant {
    /// The name stored in the tuning table (`<tile>` or `gather_<tile>`).
    pub fn name(&self) -> String {
        match self {
            Variant::Stationary(t) => t.suffix(),
            Variant::GatherScatter(t) => format!("gather_{}", t.suffix()),
        }
    }
}

/// The variants worth timing for `spec` on `sm`: with `allow_tf32`, the TF32 tensor-core tiles
/// of an f32 layer first; every output-stationary candidate tile; then gather-GEMM-scatter
/// with the first SIMT tile.
pub fn variants(spec: &LayerSpec, sm: SmVersion, allow_tf32: bool) -> Vec<Variant> {
    let mut tiles = if allow_tf32 {
        tf32_candidates(spec, sm)
    } else {
        Vec::new()
    };
    tiles.extend(conv_candidates(spec, sm));
    let gather = tiles
        .iter()
        .copied()
        .find(|t| matches!(t, ConvTile::Simt { .. }))
        .map(Variant::GatherScatter);
    tiles
        .into_iter()
        .map(Variant::Stationary)
        .chain(gather)
        .collect()
}

/// What a tuning choice is keyed by: architecture, the exact layer, and the output row count
/// rounded up to a power of two (tiles behave alike within a size class).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TuningKey(String);

impl TuningKey {
    /// The key of `spec` over `n_out` output rows on `sm`. The leaky-ReLU slope is part of
    /// the spec but not of its kernel name; it does not change timing, so it is left out.
    pub fn new(sm: SmVersion, spec: &LayerSpec, n_out: usize) -> Self {
        TuningKey(format!(
            "{sm} {} rows{}",
            spec.kernel_name(),
            n_out.max(1).next_power_of_two()
        ))
    }

    /// The key of the same layer run on device-resident tensors (output-stationary tiles
    /// only, plans made on the device): tuned apart from the host-rulebook path.
    pub fn resident(sm: SmVersion, spec: &LayerSpec, n_out: usize) -> Self {
        let TuningKey(key) = Self::new(sm, spec, n_out);
        TuningKey(format!("{key} resident"))
    }
}

/// Chosen tiles, by key, with the time that won.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TuningTable {
    path: Option<PathBuf>,
    choices: BTreeMap<TuningKey, (String, f32)>,
}

const HEADER: &str =
    "# sparsegen CUDA autotuning choices v1: <sm> <layer> rows<class>\t<tile>\t<ms>";

impl TuningTable {
    /// The table stored at `path` (empty when the file does not exist yet); `None` keeps it in
    /// memory only. Unreadable lines are skipped: the table is a cache, not a source of truth.
    pub fn load(path: Option<PathBuf>) -> Result<Self, CudaError> {
        let mut table = TuningTable {
            path,
            choices: BTreeMap::new(),
        };
        let Some(path) = &table.path else {
            return Ok(table);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(source) => {
                return Err(CudaError::CacheIo {
                    path: path.clone(),
                    source,
                });
            }
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split('\t');
            if let (Some(key), Some(tile), Some(ms)) = (fields.next(), fields.next(), fields.next())
                && let Ok(ms) = ms.parse::<f32>()
            {
                table
                    .choices
                    .insert(TuningKey(key.to_string()), (tile.to_string(), ms));
            }
        }
        Ok(table)
    }

    /// The file, if persisted.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The stored choice for `key`, if it is one of `candidates`.
    pub fn choice(&self, key: &TuningKey, candidates: &[Variant]) -> Option<Variant> {
        let (name, _) = self.choices.get(key)?;
        candidates.iter().find(|v| &v.name() == name).copied()
    }

    /// Records a choice and rewrites the file (an error says the file could not be written;
    /// the choice is recorded in memory either way).
    pub fn record(&mut self, key: TuningKey, variant: &Variant, ms: f32) -> Result<(), CudaError> {
        self.choices.insert(key, (variant.name(), ms));
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = String::from(HEADER);
        text.push('\n');
        for (key, (tile, ms)) in &self.choices {
            text.push_str(&format!("{}\t{tile}\t{ms}\n", key.0));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CudaError::CacheIo { path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }
}

/// Picks the fastest of `timings` (ties go to the earlier candidate, so the choice is stable).
pub fn fastest(timings: &[(Variant, f32)]) -> Option<(Variant, f32)> {
    timings
        .iter()
        .copied()
        .filter(|(_, ms)| ms.is_finite())
        .fold(None, |best, (tile, ms)| match best {
            Some((_, b)) if b <= ms => best,
            _ => Some((tile, ms)),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use sparsegen_codegen::cuda::ConvTile;
    use sparsegen_codegen::{ConvKind, DType};

    #[test]
    fn choices_persist_and_stale_ones_are_ignored() {
        let dir = std::env::temp_dir().join(format!("sparsegen-tune-{}", std::process::id()));
        let path = dir.join("autotune.tsv");
        let _ = std::fs::remove_file(&path);
        let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(32, 32)
            .dtype(DType::F16)
            .build()
            .unwrap();
        let sm = SmVersion(90);
        let tiles = variants(&spec, sm, false);
        assert!(matches!(tiles.last(), Some(Variant::GatherScatter(_))));
        let key = TuningKey::new(sm, &spec, 100_000);
        assert_eq!(key, TuningKey::new(sm, &spec, 131_072));
        let mut table = TuningTable::load(Some(path.clone())).unwrap();
        assert_eq!(table.choice(&key, &tiles), None);
        table.record(key.clone(), &tiles[1], 0.25).unwrap();
        let reloaded = TuningTable::load(Some(path.clone())).unwrap();
        assert_eq!(reloaded.choice(&key, &tiles), Some(tiles[1]));
        assert_eq!(reloaded.choice(&key, &tiles[..1]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fastest_prefers_earlier_on_ties_and_skips_nan() {
        let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(16, 16)
            .build()
            .unwrap();
        let t = variants(&spec, SmVersion(90), true);
        assert!(matches!(
            t[0],
            Variant::Stationary(ConvTile::MmaTf32 { .. })
        ));
        assert_eq!(fastest(&[(t[0], 1.0), (t[1], 1.0)]), Some((t[0], 1.0)));
        assert_eq!(fastest(&[(t[0], f32::NAN), (t[1], 2.0)]), Some((t[1], 2.0)));
        assert_eq!(fastest(&[]), None);
    }
}
