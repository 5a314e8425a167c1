//! Loading spconv's conformance dumps (`../shared/conformance`, or `SPARSEGEN_CONFORMANCE`)
//! and running one dumped layer on any backend, rows matched by coordinate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sparsegen::codegen::{ConvKind, DType, LayerSpec};
use sparsegen_runtime::io::npy;
use sparsegen_runtime::{ConvBackend, CoordSet, Rulebook, SparseConv};

use super::relative_error;

/// The conformance dumps (spconv 2.3.8, fp32, `--threads 1 --verify`).
pub fn conformance_root() -> Option<PathBuf> {
    let root = std::env::var_os("SPARSEGEN_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    root.is_dir().then_some(root)
}

fn coords_of(path: &Path) -> Vec<i32> {
    npy::read_i32(path).unwrap().data
}

/// Runs one dumped layer in `dtype` and compares with spconv's output, row by coordinate.
pub fn conformance_layer(
    backend: &dyn ConvBackend,
    workload: &Path,
    name: &str,
    dtype: DType,
) -> f32 {
    let dir = workload.join(name);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("meta_cpu_native_float32.json")).unwrap(),
    )
    .unwrap();
    let int = |k: &str| meta[k].as_u64().unwrap() as u32;
    let shape: Vec<u32> = meta["spatial_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let batch = int("batch_size");
    let (k, cin, cout) = (int("k"), int("cin"), int("cout"));
    let coords =
        Arc::new(CoordSet::new(coords_of(&workload.join("coords.npy")), &shape, batch).unwrap());
    let builder = |kind| {
        LayerSpec::builder(kind, 3)
            .channels(cin, cout)
            .kernel(k)
            .dtype(dtype)
    };
    let (spec, rulebook) = match meta["op"].as_str().unwrap() {
        "subm" => {
            let spec = builder(ConvKind::Submanifold).build().unwrap();
            let rb = Rulebook::build(&coords, &spec.geometry(), name).unwrap();
            (spec, Arc::new(rb))
        }
        "regular" => {
            let spec = builder(ConvKind::Strided)
                .stride(int("stride"))
                .padding(int("padding"))
                .build()
                .unwrap();
            let rb = Rulebook::build(&coords, &spec.geometry(), name).unwrap();
            (spec, Arc::new(rb))
        }
        "inverse" => {
            // The partner is spconv3_s2 (k3, stride 2, padding 1) over the same sites.
            let spec = builder(ConvKind::Inverse)
                .stride(2)
                .padding(1)
                .build()
                .unwrap();
            let rb = Rulebook::build(&coords, &spec.geometry().as_strided(), name).unwrap();
            (spec, rb.inverse())
        }
        op => panic!("unknown op {op}"),
    };
    // Input rows in our order: spconv's rows are keyed by their coordinates.
    let in_feats = npy::read_f32(dir.join("in_feats.npy")).unwrap().data;
    let in_coords = if dir.join("in_coords.npy").exists() {
        coords_of(&dir.join("in_coords.npy"))
    } else {
        coords_of(&workload.join("coords.npy"))
    };
    let row_of = |coords: &[i32]| -> HashMap<Vec<i32>, usize> {
        coords
            .chunks_exact(4)
            .enumerate()
            .map(|(i, c)| (c.to_vec(), i))
            .collect()
    };
    let dumped_in = row_of(&in_coords);
    let mut input = vec![0f32; rulebook.n_in() * cin as usize];
    for (row, c) in rulebook.input().coords().chunks_exact(4).enumerate() {
        let src = dumped_in[c];
        input[row * cin as usize..(row + 1) * cin as usize]
            .copy_from_slice(&in_feats[src * cin as usize..(src + 1) * cin as usize]);
    }
    let weight = npy::read_f32(dir.join("weight_krsc.npy")).unwrap().data;
    let layer = SparseConv::new(spec, weight, None).unwrap();
    let got = backend.conv(&layer, &rulebook, &input).unwrap();
    let out_coords = coords_of(&dir.join("out_coords_cpu_native_float32.npy"));
    let out_feats = npy::read_f32(dir.join("out_feats_cpu_native_float32.npy"))
        .unwrap()
        .data;
    assert_eq!(
        out_coords.len() / 4,
        rulebook.n_out(),
        "{name}: output site count"
    );
    let dumped_out = row_of(&out_coords);
    let mut want = vec![0f32; got.len()];
    for (row, c) in rulebook.output().coords().chunks_exact(4).enumerate() {
        let src = dumped_out[c];
        want[row * cout as usize..(row + 1) * cout as usize]
            .copy_from_slice(&out_feats[src * cout as usize..(src + 1) * cout as usize]);
    }
    relative_error(&got, &want)
}
