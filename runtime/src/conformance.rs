//! Conformance with spconv: reads the dumps `spconv_bench.py --dump` writes, runs each layer
//! on an [`Engine`], and compares with spconv's outputs row by row.
//!
//! A dump is a folder per workload (`workload.json`, `coords.npy`) with a folder per layer
//! (`meta_*.json`, `in_feats.npy`, `weight_krsc.npy`, `in_coords.npy` for the inverse conv,
//! and one `out_coords_TAG.npy` / `out_feats_TAG.npy` pair per spconv run). Rows are matched
//! by coordinate, because spconv's output order for strided convolutions follows its hash
//! table while ours is sorted. The error of a layer is `max |ours − spconv| / max |spconv|`.
//!
//! An inverse layer's geometry is its partner's: the sibling folder whose meta has
//! `op: regular` (in spconv's harness, `spconv3_s2_c32_64`: k 3, stride 2, padding 1), or
//! that harness pairing when the dump holds no strided layer.

use std::path::{Path, PathBuf};

use sparsegen_codegen::{ConvKind, LayerSpec};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::sparse_conv::SparseConv;
use crate::tensor::{CoordSet, SparseTensor};
use std::sync::Arc;

/// One workload of a dump.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its folder.
    pub dir: PathBuf,
    /// Folder name (e.g. `lidar_4000`).
    pub name: String,
    /// The sites, validated and indexed once for all its layers.
    pub sites: Arc<CoordSet>,
}

/// The kind of a dumped layer, as spconv's harness names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Submanifold.
    Subm,
    /// Regular (strided).
    Regular,
    /// Inverse of the paired regular conv.
    Inverse,
}

/// One dumped layer.
#[derive(Debug, Clone)]
pub struct DumpLayer {
    /// Its folder.
    pub dir: PathBuf,
    /// Folder name (e.g. `subm3_c16`).
    pub name: String,
    /// Kind.
    pub op: Op,
    /// Kernel size (cubic).
    pub kernel: u32,
    /// Stride.
    pub stride: u32,
    /// Padding.
    pub padding: u32,
}

/// The comparison of one layer with one spconv output variant.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// Workload name.
    pub workload: String,
    /// Layer name.
    pub layer: String,
    /// The spconv variant (`cpu_native_float32`, ...).
    pub variant: String,
    /// Output rows.
    pub n_out: usize,
    /// Whether the output coordinate sets are equal.
    pub coords_match: bool,
    /// Max abs difference.
    pub max_abs_err: f64,
    /// Max |spconv|.
    pub max_ref: f64,
    /// `max_abs_err / max_ref`.
    pub rel_err: f64,
}

impl LayerReport {
    /// Whether the layer conforms within `tolerance` (relative).
    pub fn passes(&self, tolerance: f64) -> bool {
        self.coords_match && self.rel_err <= tolerance
    }
}

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.into(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| format_error(path, format!("invalid JSON: {e}")))
}

fn json_u32(v: &serde_json::Value, key: &str, path: &Path) -> Result<u32> {
    v.get(key)
        .and_then(serde_json::Value::as_u64)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| format_error(path, format!("missing or invalid `{key}`")))
}

/// The workload folders under `path`: `path` itself if it holds `workload.json`, else its
/// immediate subfolders that do (sorted by name). Fails if there are none.
pub fn find_workloads(path: &Path) -> Result<Vec<PathBuf>> {
    if path.join("workload.json").is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("workload.json").is_file())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(format_error(
            path,
            "no workload.json here or in any subfolder: not a spconv dump",
        ));
    }
    Ok(found)
}

impl Workload {
    /// Reads `workload.json` and `coords.npy`.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join("workload.json");
        let meta = read_json(&meta_path)?;
        let shape: Vec<u32> = meta
            .get("spatial_shape")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
                    .collect()
            })
            .ok_or_else(|| format_error(&meta_path, "missing `spatial_shape`"))?;
        let batch_size = json_u32(&meta, "batch_size", &meta_path).unwrap_or(1);
        let coords_path = dir.join("coords.npy");
        let coords = npy::read_i32(&coords_path)?
            .expect_shape(&coords_path, &[None, Some(shape.len() + 1)])?;
        Ok(Workload {
            dir: dir.into(),
            name: dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            sites: Arc::new(CoordSet::new(coords.data, &shape, batch_size)?),
        })
    }

    /// Spatial dims.
    pub fn dims(&self) -> usize {
        self.sites.dims()
    }

    /// The layers dumped for this workload, sorted by name.
    pub fn layers(&self) -> Result<Vec<DumpLayer>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut layers = Vec::new();
        for dir in dirs {
            let Some(meta_path) = first_match(&dir, "meta_", ".json")? else {
                continue;
            };
            let meta = read_json(&meta_path)?;
            let op = match meta.get("op").and_then(serde_json::Value::as_str) {
                Some("subm") => Op::Subm,
                Some("regular") => Op::Regular,
                Some("inverse") => Op::Inverse,
                other => return Err(format_error(&meta_path, format!("unknown op {other:?}"))),
            };
            layers.push(DumpLayer {
                name: dir
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                op,
                kernel: json_u32(&meta, "k", &meta_path)?,
                stride: json_u32(&meta, "stride", &meta_path)?,
                padding: json_u32(&meta, "padding", &meta_path)?,
                dir,
            });
        }
        if layers.is_empty() {
            return Err(format_error(&self.dir, "no layer folders with meta_*.json"));
        }
        Ok(layers)
    }
}

fn first_match(dir: &Path, prefix: &str, suffix: &str) -> Result<Option<PathBuf>> {
    Ok(matches(dir, prefix, suffix)?.into_iter().next())
}

fn matches(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Runs one dumped layer on `engine` and compares it with every spconv output variant in
/// its folder. `layers` are all layers of the workload (an inverse layer finds its partner
/// among them).
pub fn check_layer(
    engine: &Engine,
    workload: &Workload,
    layer: &DumpLayer,
    layers: &[DumpLayer],
) -> Result<Vec<LayerReport>> {
    let dims = workload.dims();
    let input_set = workload.sites.clone();
    let weight_path = layer.dir.join("weight_krsc.npy");
    let weight = npy::read_f32(&weight_path)?;
    let mut expected_shape = vec![None; dims + 2];
    expected_shape[1..=dims].fill(Some(layer.kernel as usize));
    let weight = weight.expect_shape(&weight_path, &expected_shape)?;
    let (cout, cin) = (weight.shape[0] as u32, weight.shape[dims + 1] as u32);
    let feats_path = layer.dir.join("in_feats.npy");
    let feats =
        npy::read_f32(&feats_path)?.expect_shape(&feats_path, &[None, Some(cin as usize)])?;

    let (kind, stride, padding) = match layer.op {
        Op::Subm => (ConvKind::Submanifold, 1, 0),
        Op::Regular => (ConvKind::Strided, layer.stride, layer.padding),
        Op::Inverse => {
            let partner = layers
                .iter()
                .find(|l| l.op == Op::Regular && l.kernel == layer.kernel);
            let (s, p) = partner.map_or((2, 1), |l| (l.stride, l.padding));
            (ConvKind::Inverse, s, p)
        }
    };
    let spec = LayerSpec::builder(kind, dims)
        .channels(cin, cout)
        .kernel(layer.kernel)
        .stride(stride)
        .padding(padding)
        .build()?;
    let conv = SparseConv::new(spec, weight.data, None)?;

    let input = if layer.op == Op::Inverse {
        // The partner's output sites, with in_feats given in spconv's row order.
        let strided = spec.geometry().as_strided();
        let rulebook = engine
            .rulebooks()
            .get_or_build(&input_set, &strided, &layer.name)?;
        let sites = rulebook.output().clone();
        let in_coords_path = layer.dir.join("in_coords.npy");
        let in_coords = npy::read_i32(&in_coords_path)?
            .expect_shape(&in_coords_path, &[Some(sites.len()), Some(dims + 1)])?;
        let mut ours = vec![0f32; feats.data.len()];
        let c = cin as usize;
        for (row, coord) in in_coords.data.chunks_exact(dims + 1).enumerate() {
            let at = sites.index().find(coord).ok_or_else(|| {
                format_error(
                    &in_coords_path,
                    format!("row {row} {coord:?} is not an output site of the paired strided conv"),
                )
            })? as usize;
            ours[at * c..(at + 1) * c].copy_from_slice(&feats.data[row * c..(row + 1) * c]);
        }
        SparseTensor::on(sites, ours, c)?
    } else {
        SparseTensor::on(input_set, feats.data, cin as usize)?
    };
    let output = conv.forward(engine, &input)?;

    let mut reports = Vec::new();
    for feats_path in matches(&layer.dir, "out_feats_", ".npy")? {
        let file = feats_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let variant = file["out_feats_".len()..file.len() - ".npy".len()].to_string();
        let coords_path = layer.dir.join(format!("out_coords_{variant}.npy"));
        let ref_coords =
            npy::read_i32(&coords_path)?.expect_shape(&coords_path, &[None, Some(dims + 1)])?;
        let n_ref = ref_coords.shape[0];
        let ref_feats = npy::read_f32(&feats_path)?
            .expect_shape(&feats_path, &[Some(n_ref), Some(cout as usize)])?;
        let mut report = LayerReport {
            workload: workload.name.clone(),
            layer: layer.name.clone(),
            variant,
            n_out: output.len(),
            coords_match: n_ref == output.len(),
            max_abs_err: 0.0,
            max_ref: 0.0,
            rel_err: 0.0,
        };
        let index = output.coord_set().index();
        let c = cout as usize;
        for (row, coord) in ref_coords.data.chunks_exact(dims + 1).enumerate() {
            let Some(ours) = index.find(coord) else {
                report.coords_match = false;
                break;
            };
            let theirs = &ref_feats.data[row * c..(row + 1) * c];
            for (&a, &b) in output.row(ours as usize).iter().zip(theirs) {
                let err = (f64::from(a) - f64::from(b)).abs();
                report.max_abs_err =
                    report
                        .max_abs_err
                        .max(if err.is_nan() { f64::INFINITY } else { err });
                report.max_ref = report.max_ref.max(f64::from(b).abs());
            }
        }
        report.rel_err = report.max_abs_err / report.max_ref.max(1e-30);
        reports.push(report);
    }
    if reports.is_empty() {
        return Err(format_error(
            &layer.dir,
            "no out_feats_*.npy to compare with",
        ));
    }
    Ok(reports)
}
