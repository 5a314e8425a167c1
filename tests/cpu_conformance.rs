//! The CPU backend against spconv 2.3.8's own outputs: the dumps in
//! `../shared/conformance/{lidar,room}_4000/` (made with one thread and checked against a
//! float64 reference). Rows are matched by coordinate, since a strided conv's output order is
//! spconv's hash order there and sorted here. Set `SPARSEGEN_CONFORMANCE` to use another
//! folder; the test says why it skips when there is none.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sparsegen::prelude::*;
use sparsegen::runtime::cpu::{CpuBackend, CpuOptions, StrategyChoice};
use sparsegen::runtime::io::npy;

fn root() -> PathBuf {
    std::env::var_os("SPARSEGEN_CONFORMANCE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
        PathBuf::from,
    )
}

fn meta(dir: &Path) -> serde_json::Value {
    let path = dir.join("meta_cpu_native_float32.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("meta json")
}

fn coord_rows(coords: &[i32]) -> HashMap<[i32; 4], usize> {
    coords
        .chunks_exact(4)
        .enumerate()
        .map(|(i, c)| ([c[0], c[1], c[2], c[3]], i))
        .collect()
}

fn spec_of(m: &serde_json::Value, pair: Option<&serde_json::Value>) -> LayerSpec {
    let get = |v: &serde_json::Value, k: &str| v[k].as_u64().expect(k) as u32;
    let (cin, cout, k) = (get(m, "cin"), get(m, "cout"), get(m, "k"));
    let b = match m["op"].as_str().expect("op") {
        "subm" => LayerSpec::builder(ConvKind::Submanifold, 3).kernel(k),
        "regular" => LayerSpec::builder(ConvKind::Strided, 3)
            .kernel(k)
            .stride(get(m, "stride"))
            .padding(get(m, "padding")),
        "inverse" => {
            let p = pair.expect("inverse layers need their pair");
            LayerSpec::builder(ConvKind::Inverse, 3)
                .kernel(get(p, "k"))
                .stride(get(p, "stride"))
                .padding(get(p, "padding"))
        }
        other => panic!("unknown op {other}"),
    };
    b.channels(cin, cout).build().expect("spec")
}

fn check_workload(dir: &Path, backend: &CpuBackend) -> usize {
    let coords = npy::read_i32(dir.join("coords.npy")).expect("coords");
    let shape: Vec<u32> = meta(&dir.join("subm3_c16"))["spatial_shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as u32)
        .collect();
    let set = Arc::new(CoordSet::new(coords.data.clone(), &shape, 1).expect("coords"));
    let cache = RulebookCache::new();
    let pair_meta = meta(&dir.join("spconv3_s2_c32_64"));
    let mut checked = 0;
    for layer_name in [
        "subm3_c16",
        "subm3_c32",
        "subm3_c64",
        "subm3_c128",
        "subm5_c32",
        "spconv3_s2_c32_64",
        "invconv3_c64_32",
    ] {
        let ldir = dir.join(layer_name);
        let m = meta(&ldir);
        let spec = spec_of(&m, Some(&pair_meta));
        let weight = npy::read_f32(ldir.join("weight_krsc.npy"))
            .expect("weight")
            .data;
        let feats = npy::read_f32(ldir.join("in_feats.npy"))
            .expect("feats")
            .data;
        let want_coords = npy::read_i32(ldir.join("out_coords_cpu_native_float32.npy"))
            .unwrap()
            .data;
        let want = npy::read_f32(ldir.join("out_feats_cpu_native_float32.npy"))
            .unwrap()
            .data;
        let cin = spec.in_channels as usize;
        let cout = spec.out_channels as usize;
        let (rulebook, input) = if spec.kind == ConvKind::Inverse {
            let forward = cache
                .get_or_build(&set, &spec.geometry().as_strided(), layer_name)
                .expect("strided rulebook");
            // in_feats rows follow spconv's in_coords order; put them in our row order.
            let theirs = coord_rows(&npy::read_i32(ldir.join("in_coords.npy")).unwrap().data);
            let ours = forward.output();
            assert_eq!(theirs.len(), ours.len(), "{layer_name}: input site counts");
            let mut input = vec![0f32; ours.len() * cin];
            for (r, c) in ours.coords().chunks_exact(4).enumerate() {
                let t = theirs[&[c[0], c[1], c[2], c[3]]];
                input[r * cin..(r + 1) * cin].copy_from_slice(&feats[t * cin..(t + 1) * cin]);
            }
            let rb = cache
                .get_or_build(ours, &spec.geometry(), layer_name)
                .expect("inverse");
            (rb, input)
        } else {
            let rb = cache
                .get_or_build(&set, &spec.geometry(), layer_name)
                .expect("rulebook");
            (rb, feats)
        };
        let layer = SparseConv::new(spec, weight, None).expect("layer");
        let got = backend.conv(&layer, &rulebook, &input).expect("conv");
        let want_rows = coord_rows(&want_coords);
        assert_eq!(
            want_rows.len(),
            rulebook.n_out(),
            "{layer_name}: output site counts"
        );
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let mut worst = 0f32;
        for (r, c) in rulebook.output().coords().chunks_exact(4).enumerate() {
            let t = *want_rows
                .get(&[c[0], c[1], c[2], c[3]])
                .unwrap_or_else(|| panic!("{layer_name}: output site {c:?} is not spconv's"));
            for co in 0..cout {
                worst = worst.max((got[r * cout + co] - want[t * cout + co]).abs());
            }
        }
        assert!(
            worst <= 1e-5 * scale,
            "{}/{layer_name}: max |ours − spconv| = {worst} (max |spconv| = {scale})",
            dir.display()
        );
        eprintln!(
            "{}/{layer_name}: max abs diff {worst:.3e} (scale {scale:.3})",
            dir.display()
        );
        checked += 1;
    }
    checked
}

#[test]
fn matches_spconv_dumps() {
    let root = root();
    let dirs: Vec<PathBuf> = ["lidar_4000", "room_4000"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.join("coords.npy").exists())
        .collect();
    if dirs.is_empty() {
        eprintln!("skipped: no conformance dumps under {}", root.display());
        return;
    }
    for strategy in [
        StrategyChoice::Direct,
        StrategyChoice::Gemm,
        StrategyChoice::Auto,
    ] {
        let backend = CpuBackend::with_options(CpuOptions {
            strategy,
            ..CpuOptions::default()
        });
        let checked: usize = dirs.iter().map(|d| check_workload(d, &backend)).sum();
        assert_eq!(checked, 7 * dirs.len());
    }
}
