//! GPU tests of the CUDA backend: every kind, dtype, dataflow and candidate tile against the reference
//! executor and spconv's conformance dumps, bitwise determinism, the warm kernel cache, the
//! tuning table, and typed errors. Without a GPU each test prints why it skips; with
//! `SPARSEGEN_REQUIRE_GPU=1` a missing GPU fails instead. (Every name contains `cuda`: the
//! GPU runner filters on it.)
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)] // a failed unwrap is a failed test

mod cuda_common;

use std::path::PathBuf;

use cuda_common::conformance::{conformance_layer, conformance_root};
use cuda_common::{cases, layer, reference_output, relative_error, rulebook_and_input, tolerance};
use sparsegen::codegen::DType;
use sparsegen::codegen::cuda::ConvTile;
use sparsegen_runtime::ConvBackend;
use sparsegen_runtime::cuda::autotune::{Variant, variants};
use sparsegen_runtime::cuda::{CudaBackend, CudaError, CudaOptions};

fn require_gpu() -> bool {
    std::env::var("SPARSEGEN_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparsegen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn backend_with(test: &str, options: CudaOptions) -> Option<CudaBackend> {
    match CudaBackend::new(options) {
        Ok(backend) => Some(backend),
        Err(e) if require_gpu() => panic!("{test}: SPARSEGEN_REQUIRE_GPU=1 but: {e}"),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

fn backend(test: &str) -> Option<CudaBackend> {
    backend_with(
        test,
        CudaOptions {
            cache_dir: Some(temp_dir(test)),
            autotune: false,
            ..CudaOptions::default()
        },
    )
}

fn check_cases(test: &str, dtype: DType) {
    let Some(cuda) = backend(test) else { return };
    eprintln!("{test}: {} ({})", cuda.device().name(), cuda.target());
    for (i, case) in cases(dtype).iter().enumerate() {
        let layer = layer(case, 7 + i as u64);
        let (rulebook, input) = rulebook_and_input(case, 11 + i as u64);
        let want = reference_output(&layer, &rulebook, &input);
        for variant in variants(layer.spec(), cuda.target(), true) {
            let tile = variant.name();
            let first = cuda
                .conv_with_variant(&layer, &rulebook, &input, &variant)
                .unwrap();
            let again = cuda
                .conv_with_variant(&layer, &rulebook, &input, &variant)
                .unwrap();
            let err = relative_error(&first.output, &want);
            eprintln!(
                "{err:>10.3e}  {:>8.3} ms  {} {tile}",
                first.kernel_ms,
                layer.name()
            );
            // TF32 keeps 10 mantissa bits, like f16: the half-precision tolerance applies.
            let tol = match variant {
                Variant::Stationary(ConvTile::MmaTf32 { .. }) => tolerance(DType::F16),
                _ => tolerance(dtype),
            };
            assert!(err <= tol, "{} {tile}: relative error {err}", layer.name());
            let same = first
                .output
                .iter()
                .zip(&again.output)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} {tile}: two runs differ in bits", layer.name());
        }
    }
}

#[test]
fn cuda_f32_matches_reference_and_is_deterministic() {
    check_cases("cuda_f32_matches_reference", DType::F32);
}

#[test]
fn cuda_f16_matches_reference_and_is_deterministic() {
    check_cases("cuda_f16_matches_reference", DType::F16);
}

#[test]
fn cuda_bf16_matches_reference_and_is_deterministic() {
    check_cases("cuda_bf16_matches_reference", DType::Bf16);
}

#[test]
fn cuda_backend_without_gpu_is_a_typed_error() {
    match CudaBackend::new(CudaOptions {
        cache_dir: None,
        ..CudaOptions::default()
    }) {
        Ok(cuda) => eprintln!("a GPU is present: {}", cuda.device().name()),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::NoNvrtc)) => {
            assert!(!require_gpu(), "SPARSEGEN_REQUIRE_GPU=1 but: {e}");
            let runtime_error = sparsegen_runtime::Error::from(e);
            eprintln!("typed error without a GPU: {runtime_error}");
            assert!(runtime_error.to_string().starts_with("cuda backend: "));
        }
        Err(other) => panic!("expected a 'not available' error, got: {other}"),
    }
}

#[test]
fn cuda_bad_arch_override_is_a_typed_error() {
    let result = CudaBackend::new(CudaOptions {
        arch: Some("hopper".into()),
        cache_dir: None,
        ..CudaOptions::default()
    });
    match result {
        Err(CudaError::BadArch(arch)) => assert_eq!(arch, "hopper"),
        Err(CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::NoNvrtc) => {
            assert!(!require_gpu());
            eprintln!("skipping cuda_bad_arch_override_is_a_typed_error: no GPU");
        }
        other => panic!("expected BadArch, got {other:?}"),
    }
}

#[test]
fn cuda_warm_start_compiles_nothing_and_tuning_persists() {
    let dir = temp_dir("cuda-warm");
    let options = CudaOptions {
        cache_dir: Some(dir.clone()),
        autotune: true,
        ..CudaOptions::default()
    };
    let Some(cold) = backend_with("cuda_warm_start_compiles_nothing", options.clone()) else {
        return;
    };
    let case = &cases(DType::F16)[0];
    let layer = layer(case, 1);
    let (rulebook, input) = rulebook_and_input(case, 2);
    let a = cold.conv(&layer, &rulebook, &input).unwrap();
    assert!(
        cold.kernel_cache().stats().compiled >= 2,
        "the autotuner compiles every candidate"
    );
    let table = std::fs::read_to_string(dir.join("autotune-v1.tsv")).unwrap();
    assert!(table.contains(&layer.spec().kernel_name()), "{table}");
    drop(cold);
    let warm = backend_with("cuda_warm_start_compiles_nothing", options).unwrap();
    let b = warm.conv(&layer, &rulebook, &input).unwrap();
    assert_eq!(warm.kernel_cache().stats().compiled, 0);
    assert_eq!(
        warm.kernel_cache().stats().disk_hits,
        1,
        "only the chosen tile is loaded"
    );
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cuda_out_of_memory_is_a_typed_error() {
    let Some(cuda) = backend("cuda_out_of_memory") else {
        return;
    };
    // 4 TiB: more than any GPU has.
    match cuda.pool().take::<f32>(1 << 40, "a test buffer") {
        Err(CudaError::OutOfMemory { what, bytes }) => {
            assert_eq!(what, "a test buffer");
            assert_eq!(bytes, 4 << 40);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // The backend still works afterwards.
    let case = &cases(DType::F32)[0];
    let layer = layer(case, 1);
    let (rulebook, input) = rulebook_and_input(case, 2);
    assert!(cuda.conv(&layer, &rulebook, &input).is_ok());
}

#[test]
fn cuda_wrong_input_size_is_a_typed_error() {
    let Some(cuda) = backend("cuda_wrong_input_size") else {
        return;
    };
    let case = &cases(DType::F32)[0];
    let layer = layer(case, 1);
    let (rulebook, input) = rulebook_and_input(case, 2);
    let err = cuda.conv(&layer, &rulebook, &input[1..]).unwrap_err();
    assert!(err.to_string().contains("the input has"), "{err}");
}

#[test]
fn cuda_matches_spconv_conformance_dumps() {
    let Some(root) = conformance_root() else {
        assert!(
            !require_gpu(),
            "SPARSEGEN_REQUIRE_GPU=1 but no conformance dumps (set SPARSEGEN_CONFORMANCE)"
        );
        eprintln!("skipping cuda_matches_spconv_conformance_dumps: no conformance dumps");
        return;
    };
    let Some(cuda) = backend("cuda_conformance") else {
        return;
    };
    let layers = [
        "subm3_c16",
        "subm3_c32",
        "subm3_c64",
        "subm3_c128",
        "subm5_c32",
        "spconv3_s2_c32_64",
        "invconv3_c64_32",
    ];
    for workload in ["lidar_4000", "room_4000"] {
        for name in layers {
            for dtype in [DType::F32, DType::F16, DType::Bf16] {
                let err = conformance_layer(&cuda, &root.join(workload), name, dtype);
                eprintln!("{err:>10.3e}  {workload} {name} {}", dtype.name());
                assert!(
                    err <= tolerance(dtype),
                    "{workload} {name} {}: {err}",
                    dtype.name()
                );
            }
        }
    }
}

/// The conformance harness itself (row matching by coordinate, layer specs from the dumps'
/// metadata, the inverse layer's partner), checked on the CPU with the reference backend so a
/// GPU failure of `cuda_matches_spconv_conformance_dumps` is the kernels', not the harness's.
#[test]
fn conformance_harness_agrees_with_reference_backend() {
    let Some(root) = conformance_root() else {
        eprintln!(
            "skipping conformance_harness_agrees_with_reference_backend: no conformance dumps"
        );
        return;
    };
    let reference = sparsegen_runtime::ReferenceBackend::default();
    for name in [
        "subm3_c16",
        "subm5_c32",
        "spconv3_s2_c32_64",
        "invconv3_c64_32",
    ] {
        let err = conformance_layer(&reference, &root.join("lidar_4000"), name, DType::F32);
        eprintln!("{err:>10.3e}  lidar_4000 {name} (reference backend)");
        assert!(err <= 1e-5, "{name}: {err}");
    }
}

/// Offset masks of a host table (what the device builder writes), `ceil(K/32)` words a row.
fn host_masks(rulebook: &sparsegen_runtime::Rulebook) -> Vec<u32> {
    let k = rulebook.kernel_volume();
    let words = k.div_ceil(32);
    let mut masks = vec![0u32; rulebook.n_out() * words];
    for o in 0..rulebook.n_out() {
        for (offset, &i) in rulebook.neighbors_of(o).iter().enumerate() {
            if i >= 0 {
                masks[o * words + offset / 32] |= 1 << (offset % 32);
            }
        }
    }
    masks
}

#[test]
fn cuda_device_rulebook_matches_host_rulebook() {
    let Some(cuda) = backend("cuda_device_rulebook") else {
        return;
    };
    for (i, case) in cases(DType::F32).iter().enumerate() {
        let (rulebook, _) = rulebook_and_input(case, 11 + i as u64);
        let geometry = case.spec.geometry();
        let output = (case.spec.kind == sparsegen::codegen::ConvKind::Inverse)
            .then(|| rulebook.output().as_ref());
        let device = cuda
            .build_rulebook_from_host(rulebook.input(), &geometry, output)
            .unwrap();
        let (coords, nbr, masks) = device.to_host(cuda.device().stream()).unwrap();
        assert_eq!(
            coords,
            rulebook.output().coords(),
            "{}: output sites",
            case.spec
        );
        assert_eq!(nbr, rulebook.neighbors(), "{}: neighbour table", case.spec);
        assert_eq!(masks, host_masks(&rulebook), "{}: masks", case.spec);
        eprintln!(
            "{}: {} outputs, {} pairs",
            case.spec,
            rulebook.n_out(),
            rulebook.n_pairs()
        );
    }
}

#[test]
fn cuda_device_rulebook_and_plan_run_the_conv() {
    let Some(cuda) = backend("cuda_device_rulebook_and_plan") else {
        return;
    };
    for dtype in [DType::F32, DType::F16] {
        for (i, case) in cases(dtype).iter().enumerate() {
            let layer = layer(case, 7 + i as u64);
            let (rulebook, input) = rulebook_and_input(case, 11 + i as u64);
            let want = reference_output(&layer, &rulebook, &input);
            let output = (case.spec.kind == sparsegen::codegen::ConvKind::Inverse)
                .then(|| rulebook.output().as_ref());
            let device = cuda
                .build_rulebook_from_host(rulebook.input(), &case.spec.geometry(), output)
                .unwrap();
            let tile = sparsegen::codegen::cuda::conv_candidates(&case.spec, cuda.target())[0];
            // The device plan is the host plan (the same plan key, for every K).
            {
                let plan = cuda
                    .plan_on_device(&device, tile.block_rows() as usize)
                    .unwrap();
                let host = sparsegen_runtime::cuda::TilePlan::build(
                    &rulebook,
                    tile.block_rows() as usize,
                    "host",
                )
                .unwrap();
                let stream = cuda.device().stream();
                assert_eq!(stream.clone_dtoh(&plan.order).unwrap(), host.order);
                let starts = stream.clone_dtoh(&plan.starts).unwrap();
                assert_eq!(starts, host.tile_offset_start);
                let mut offsets = stream.clone_dtoh(&plan.offsets).unwrap();
                offsets.truncate(host.tile_offsets.len());
                assert_eq!(offsets, host.tile_offsets);
            }
            let run = cuda
                .conv_with_device_rulebook(&layer, &device, &input, &tile)
                .unwrap();
            let err = relative_error(&run.output, &want);
            eprintln!(
                "{err:>10.3e}  {:>8.3} ms  {} (device rulebook)",
                run.kernel_ms,
                layer.name()
            );
            assert!(err <= tolerance(dtype), "{}: {err}", layer.name());
        }
    }
}

#[test]
fn cuda_device_rulebook_and_plan_match_host_over_many_radix_blocks() {
    let Some(cuda) = backend("cuda_device_rulebook_many_blocks") else {
        return;
    };
    // Tens of thousands of rows: the radix sorts span many blocks (the cases above fit one).
    let cloud = cuda_common::random_cloud(5, 30_000, &[64, 64, 64], 2);
    let stream = cuda.device().stream();
    for spec in [
        sparsegen::codegen::LayerSpec::builder(sparsegen::codegen::ConvKind::Submanifold, 3),
        sparsegen::codegen::LayerSpec::builder(sparsegen::codegen::ConvKind::Strided, 3)
            .stride(2)
            .padding(1),
    ] {
        let spec = spec.channels(16, 16).build().unwrap();
        let geometry = spec.geometry();
        let host = sparsegen_runtime::Rulebook::build(&cloud, &geometry, "host").unwrap();
        let device = cuda
            .build_rulebook_from_host(&cloud, &geometry, None)
            .unwrap();
        let (coords, nbr, masks) = device.to_host(stream).unwrap();
        assert_eq!(coords, host.output().coords(), "{spec}: output sites");
        assert_eq!(nbr, host.neighbors(), "{spec}: neighbour table");
        assert_eq!(masks, host_masks(&host), "{spec}: masks");
        for block_rows in [32, 64, 128] {
            let plan = cuda.plan_on_device(&device, block_rows).unwrap();
            let want = sparsegen_runtime::cuda::TilePlan::build(&host, block_rows, "host").unwrap();
            assert_eq!(plan.tiles, want.tiles(), "{spec}: tiles");
            assert_eq!(stream.clone_dtoh(&plan.order).unwrap(), want.order);
            assert_eq!(
                stream.clone_dtoh(&plan.starts).unwrap(),
                want.tile_offset_start
            );
            let mut offsets = stream.clone_dtoh(&plan.offsets).unwrap();
            offsets.truncate(want.tile_offsets.len());
            assert_eq!(offsets, want.tile_offsets, "{spec}: offsets");
        }
        eprintln!("{spec}: {} outputs, plan matches the host's", host.n_out());
    }
}
