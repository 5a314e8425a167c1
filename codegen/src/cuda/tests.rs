//! Snapshot and property tests of the CUDA emitters (no NVRTC here: the workspace's
//! `tests/cuda_nvrtc.rs` compiles every variant).

use super::*;

fn layer(name: &str) -> LayerSpec {
    match representative_layers()
        .into_iter()
        .find(|s| s.kernel_name() == name)
    {
        Some(spec) => spec,
        None => panic!("no representative layer {name}"),
    }
}

fn default_kernel(name: &str, sm: SmVersion) -> ConvKernel {
    let spec = layer(name);
    let tile = conv_candidates(&spec, sm)[0];
    conv_kernel(&spec, &tile, sm).unwrap()
}

#[test]
fn snapshot_simt_f32_subm3_c16() {
    let k = default_kernel("subm3_k3x3x3_c16x16_f32", SmVersion(90));
    assert_eq!(k.entry, "subm3_k3x3x3_c16x16_f32_simt_m64n16k16_t2x4");
    insta::assert_snapshot!("simt_f32_subm3_c16", k.source);
}

#[test]
fn snapshot_simt_f32_odd_channels_bias_leaky() {
    let k = default_kernel("subm3_k3x3x3_c3x5_bias_leaky_relu_f32", SmVersion(90));
    insta::assert_snapshot!("simt_f32_c3x5_bias_leaky", k.source);
}

#[test]
fn snapshot_mma_f16_subm3_c128() {
    let k = default_kernel("subm3_k3x3x3_c128x128_f16", SmVersion(90));
    assert!(matches!(k.tile, ConvTile::Mma { .. }));
    insta::assert_snapshot!("mma_f16_subm3_c128", k.source);
}

#[test]
fn snapshot_mma_bf16_grouped_relu() {
    let k = default_kernel("subm3_k3x3x3_c64x64_g4_bias_relu_bf16", SmVersion(80));
    insta::assert_snapshot!("mma_bf16_g4_bias_relu", k.source);
}

#[test]
fn snapshot_mma_f16_unaligned_transposed() {
    let k = default_kernel("deconv2_k3x2_s2x2_c24x36_g3_bias_relu6_f16", SmVersion(90));
    insta::assert_snapshot!("mma_f16_deconv2_g3_relu6", k.source);
}

#[test]
fn snapshot_simt_bf16_on_turing() {
    let k = default_kernel("conv3_k3x3x3_s2x2x2_c32x64_bf16", SmVersion(75));
    assert!(matches!(k.tile, ConvTile::Simt { .. }));
    insta::assert_snapshot!("simt_bf16_sm75_conv3_s2", k.source);
}

#[test]
fn every_candidate_of_every_layer_emits_deterministically() {
    let mut entries = std::collections::HashSet::new();
    for spec in representative_layers() {
        for sm in CHECKED_ARCHS {
            for tile in conv_candidates(&spec, sm) {
                let a = conv_kernel(&spec, &tile, sm).unwrap();
                let b = conv_kernel(&spec, &tile, sm).unwrap();
                assert_eq!(a, b);
                assert_eq!(a.threads, tile.threads());
                assert!(a.source.contains(&format!(
                    "void __launch_bounds__({}) {}(",
                    a.threads, a.entry
                )));
                for p in CONV_PARAMS {
                    assert!(
                        a.source.contains(&CParam(p).to_string()),
                        "{}: {}",
                        a.entry,
                        p.name
                    );
                }
                assert!(!a.source.contains("atomic"), "{}", a.entry);
                assert!(!a.source.contains("#include"), "{}", a.entry);
                entries.insert(a.entry);
            }
        }
    }
    assert!(entries.len() > 60, "{}", entries.len());
}

#[test]
fn signature_follows_the_parameter_contract() {
    let k = default_kernel("subm3_k3x3x3_c16x16_f16", SmVersion(90));
    let start = k.source.find(&k.entry).unwrap() + k.entry.len() + 1;
    let end = k.source[start..].find(')').unwrap() + start;
    let names: Vec<&str> = k.source[start..end]
        .split(',')
        .map(|p| p.split_whitespace().last().unwrap())
        .collect();
    let expected: Vec<&str> = CONV_PARAMS.iter().map(|p| p.name).collect();
    assert_eq!(names, expected);
}

#[test]
fn specialisation_is_visible_in_the_source() {
    let k = default_kernel("subm3_k5x5x5_c32x32_f32", SmVersion(90));
    assert!(k.source.contains("constexpr int K = 125;"));
    assert!(k.source.contains("constexpr int CIN = 32;"));
    let aligned = default_kernel("subm3_k3x3x3_c64x64_f16", SmVersion(90));
    assert!(aligned.source.contains("sg_cp_async16(&xs[b]"));
    let odd = default_kernel("subm3_k3x3x3_c3x5_bias_leaky_relu_f16", SmVersion(90));
    assert!(!odd.source.contains("sg_cp_async16(&xs[b]"));
    assert!(odd.source.contains("v = v < 0.0f ? v * 0.1f : v;"));
    assert!(odd.source.contains("+ bias[co]"));
}

#[test]
fn invalid_tiles_are_typed_errors() {
    let spec = layer("subm3_k3x3x3_c16x16_f32");
    let mma = ConvTile::Mma {
        block_rows: 64,
        block_cols: 16,
        depth: 16,
        warps_m: 4,
        warps_n: 1,
    };
    let err = conv_kernel(&spec, &mma, SmVersion(90)).unwrap_err();
    assert!(matches!(
        err,
        EmitError::Tile {
            source: TileError::MmaDType { .. },
            ..
        }
    ));
    assert!(
        err.to_string()
            .starts_with("layer subm3_k3x3x3_c16x16_f32: tile mma_m64n16k16_w4x1")
    );
}

#[test]
fn snapshot_tf32_subm3_c64() {
    let spec = layer("subm3_k3x3x3_c64x64_f32");
    let sm = SmVersion(90);
    let tile = tf32_candidates(&spec, sm)[0];
    let k = conv_kernel(&spec, &tile, sm).unwrap();
    assert!(
        k.source
            .contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")
    );
    insta::assert_snapshot!("tf32_subm3_c64", k.source);
    assert!(tf32_candidates(&spec, SmVersion(75)).is_empty());
    assert!(tf32_candidates(&layer("subm3_k3x3x3_c64x64_f16"), sm).is_empty());
}
