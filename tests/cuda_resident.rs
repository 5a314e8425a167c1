//! GPU tests of layers on device-resident tensors (`CudaBackend::forward`): every kind and
//! dtype of the shared cases against the reference executor, output sites against the host
//! rulebook, bitwise repeatability and agreement with the host-rulebook path, rulebook
//! sharing through `DeviceRulebookCache`, and typed errors. Without a GPU each test prints
//! why it skips; with `SPARSEGEN_REQUIRE_GPU=1` a missing GPU fails instead. (Every name
//! contains `cuda`: the GPU runner filters on it.)
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)] // a failed unwrap is a failed test

mod cuda_common;

use std::sync::Arc;

use cuda_common::{Rng, cases, layer, random_cloud, reference_output, relative_error, tolerance};
use sparsegen::codegen::{ConvKind, DType, LayerSpec};
use sparsegen_runtime::cuda::{
    CudaBackend, CudaError, CudaOptions, DeviceCoords, DeviceRulebookCache, DeviceTensor,
};
use sparsegen_runtime::{Rulebook, SparseConv};

fn backend(test: &str) -> Option<CudaBackend> {
    let options = CudaOptions {
        cache_dir: None,
        autotune: false,
        ..CudaOptions::default()
    };
    match CudaBackend::new(options) {
        Ok(backend) => Some(backend),
        Err(e) if std::env::var("SPARSEGEN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("{test}: SPARSEGEN_REQUIRE_GPU=1 but: {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

/// A case run on the device: the host rulebook (for the reference), the device input and the
/// cache holding its rulebooks (an inverse case's strided partner is built into it first).
struct DeviceCase {
    rulebook: Arc<Rulebook>,
    input: Vec<f32>,
    x: DeviceTensor,
    cache: DeviceRulebookCache,
}

fn device_case(
    cuda: &CudaBackend,
    spec: &LayerSpec,
    sites: usize,
    shape: &[u32],
    seed: u64,
) -> DeviceCase {
    let cloud = random_cloud(seed, sites, shape, 2);
    let coords = cuda.upload_coords(&cloud).unwrap();
    let cache = DeviceRulebookCache::new();
    let geometry = spec.geometry();
    let (rulebook, x_coords): (Arc<Rulebook>, Arc<DeviceCoords>) = match spec.kind {
        ConvKind::Inverse => {
            let strided = geometry.as_strided();
            let partner = cache.rulebook(cuda, &coords, &strided, "partner").unwrap();
            let host = Rulebook::build(&cloud, &strided, "partner")
                .unwrap()
                .inverse();
            (host, partner.output.clone())
        }
        _ => (
            Arc::new(Rulebook::build(&cloud, &geometry, "case").unwrap()),
            coords,
        ),
    };
    let mut rng = Rng::new(seed ^ 0xfeed);
    let input: Vec<f32> = (0..rulebook.n_in() * spec.in_channels as usize)
        .map(|_| rng.unit())
        .collect();
    let x = cuda
        .upload_features(x_coords, &input, spec.in_channels as usize, spec.dtype)
        .unwrap();
    DeviceCase {
        rulebook,
        input,
        x,
        cache,
    }
}

fn check_dtype(test: &str, dtype: DType) {
    let Some(cuda) = backend(test) else { return };
    for (i, case) in cases(dtype).iter().enumerate() {
        let layer = layer(case, 7 + i as u64);
        let dc = device_case(&cuda, &case.spec, case.sites, &case.shape, 11 + i as u64);
        let want = reference_output(&layer, &dc.rulebook, &dc.input);
        let conv = cuda.prepare(&layer).unwrap();
        let run = cuda
            .forward_with(&conv, &dc.x, &dc.cache, None, true)
            .unwrap();
        let got = cuda.download_features(&run.output).unwrap();
        let err = relative_error(&got, &want);
        eprintln!(
            "{err:>10.3e}  {:>8.3} ms  {} {}",
            run.kernel_ms.unwrap_or(f32::NAN),
            layer.name(),
            run.tile.suffix()
        );
        assert!(
            err <= tolerance(dtype),
            "{}: relative error {err}",
            layer.name()
        );
        assert_eq!(
            cuda.download_coords(run.output.coords()).unwrap(),
            dc.rulebook.output().coords(),
            "{}: output sites",
            layer.name()
        );
        // Bitwise repeatable, and (same tile, same plan) equal to the host path.
        let again = cuda.forward(&conv, &dc.x, &dc.cache).unwrap();
        let again = cuda.download_features(&again).unwrap();
        assert!(
            got.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: not bitwise repeatable",
            layer.name()
        );
        {
            let host = cuda
                .conv_with_tile(&layer, &dc.rulebook, &dc.input, &run.tile)
                .unwrap();
            assert!(
                got.iter()
                    .zip(&host.output)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: resident and host-rulebook paths differ",
                layer.name()
            );
        }
    }
}

#[test]
fn cuda_resident_f32_matches_reference() {
    check_dtype("cuda_resident_f32_matches_reference", DType::F32);
}

#[test]
fn cuda_resident_f16_matches_reference() {
    check_dtype("cuda_resident_f16_matches_reference", DType::F16);
}

#[test]
fn cuda_resident_bf16_matches_reference() {
    check_dtype("cuda_resident_bf16_matches_reference", DType::Bf16);
}

/// A small U-net step on the device: subm → strided → subm → inverse, every rulebook from one
/// cache, the subm rulebooks shared, against the same chain on the reference backend.
#[test]
fn cuda_resident_chain_shares_rulebooks_and_matches_reference() {
    let test = "cuda_resident_chain_shares_rulebooks_and_matches_reference";
    let Some(cuda) = backend(test) else { return };
    let b = LayerSpec::builder;
    let spec = |builder: sparsegen::codegen::LayerSpecBuilder| builder.build().unwrap();
    let layers = [
        SparseConv::seeded(spec(b(ConvKind::Submanifold, 3).channels(16, 16)), 1).unwrap(),
        SparseConv::seeded(spec(b(ConvKind::Submanifold, 3).channels(16, 16)), 2).unwrap(),
        SparseConv::seeded(
            spec(
                b(ConvKind::Strided, 3)
                    .channels(16, 32)
                    .stride(2)
                    .padding(1),
            ),
            3,
        )
        .unwrap(),
        SparseConv::seeded(
            spec(
                b(ConvKind::Inverse, 3)
                    .channels(32, 16)
                    .stride(2)
                    .padding(1),
            ),
            4,
        )
        .unwrap(),
    ];
    let cloud = random_cloud(5, 900, &[16, 16, 16], 1);
    let mut rng = Rng::new(6);
    let input: Vec<f32> = (0..cloud.len() * 16).map(|_| rng.unit()).collect();

    let engine = sparsegen_runtime::Engine::reference();
    let mut host = sparsegen_runtime::SparseTensor::on(cloud.clone(), input.clone(), 16).unwrap();
    for layer in &layers {
        host = layer.forward(&engine, &host).unwrap();
    }

    let cache = DeviceRulebookCache::new();
    let coords = cuda.upload_coords(&cloud).unwrap();
    let mut x = cuda
        .upload_features(coords, &input, 16, DType::F32)
        .unwrap();
    for layer in &layers {
        let conv = cuda.prepare(layer).unwrap();
        x = cuda.forward(&conv, &x, &cache).unwrap();
    }
    // subm (shared), strided, inverse: three rulebooks.
    assert_eq!(cache.len(), 3);
    let got = cuda.download_features(&x).unwrap();
    let err = relative_error(&got, host.features());
    assert!(err <= 1e-5, "chain: relative error {err}");
    assert_eq!(cuda.download_coords(x.coords()).unwrap(), cloud.coords());
}

#[test]
fn cuda_resident_typed_errors() {
    let test = "cuda_resident_typed_errors";
    let Some(cuda) = backend(test) else { return };
    let cloud = random_cloud(9, 200, &[8, 8, 8], 1);
    let coords = cuda.upload_coords(&cloud).unwrap();
    let cache = DeviceRulebookCache::new();
    let x = cuda
        .upload_features(coords.clone(), &vec![0.5; cloud.len() * 8], 8, DType::F32)
        .unwrap();
    // dtype mismatch
    let f16 = SparseConv::seeded(
        LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(8, 8)
            .dtype(DType::F16)
            .build()
            .unwrap(),
        1,
    )
    .unwrap();
    let conv = cuda.prepare(&f16).unwrap();
    assert!(matches!(
        cuda.forward(&conv, &x, &cache),
        Err(CudaError::Shape { .. })
    ));
    // an inverse conv whose strided partner never ran through this cache
    let inverse = SparseConv::seeded(
        LayerSpec::builder(ConvKind::Inverse, 3)
            .channels(8, 8)
            .stride(2)
            .build()
            .unwrap(),
        2,
    )
    .unwrap();
    let conv = cuda.prepare(&inverse).unwrap();
    assert!(matches!(
        cuda.forward(&conv, &x, &cache),
        Err(CudaError::Shape { .. })
    ));
    // wrong feature count
    assert!(matches!(
        cuda.upload_features(coords, &[0.0; 3], 8, DType::F32),
        Err(CudaError::Shape { .. })
    ));
}

sparsegen::sparse_layer! {
    TStem = subm3d(in: 4, out: 16, activation: relu);
    TDown = conv3d(in: 16, out: 32, stride: 2, padding: 1);
    TUp = inverse3d(of: TDown, in: 32, out: 16);
}

/// `sparse_layer!` layers on the GPU (`GpuLayer`, `GpuFeatures`): the same chain as on the
/// reference engine.
#[test]
fn cuda_resident_typed_layers_match_the_engine() {
    use sparsegen::prelude::{Features, GpuFeatures, GpuLayer, Layer};
    let test = "cuda_resident_typed_layers_match_the_engine";
    let Some(cuda) = backend(test) else { return };
    let seeded = |spec: LayerSpec, seed| SparseConv::seeded(spec, seed).unwrap();
    let stem = TStem::from_conv(seeded(TStem::SPEC, 1)).unwrap();
    let down = TDown::from_conv(seeded(TDown::SPEC, 2)).unwrap();
    let up = TUp::from_conv(seeded(TUp::SPEC, 3)).unwrap();
    let cloud = random_cloud(4, 700, &[14, 14, 14], 1);
    let mut rng = Rng::new(5);
    let values: Vec<f32> = (0..cloud.len() * 4).map(|_| rng.unit()).collect();
    let x =
        Features::<4>::new(sparsegen_runtime::SparseTensor::on(cloud.clone(), values, 4).unwrap())
            .unwrap();

    let engine = sparsegen_runtime::Engine::reference();
    let want = up
        .forward(
            &engine,
            &down
                .forward(&engine, &stem.forward(&engine, &x).unwrap())
                .unwrap(),
        )
        .unwrap();

    let maps = DeviceRulebookCache::new();
    let (g_stem, g_down, g_up) = (
        GpuLayer::new(&cuda, &stem).unwrap(),
        GpuLayer::new(&cuda, &down).unwrap(),
        GpuLayer::new(&cuda, &up).unwrap(),
    );
    let h = GpuFeatures::upload(&cuda, &x, DType::F32).unwrap();
    let y: GpuFeatures<16> = g_up
        .forward(
            &cuda,
            &g_down
                .forward(&cuda, &g_stem.forward(&cuda, &h, &maps).unwrap(), &maps)
                .unwrap(),
            &maps,
        )
        .unwrap();
    let got = y.download(&cuda).unwrap();
    let err = relative_error(&got, want.features());
    assert!(err <= 1e-5, "typed chain: relative error {err}");
}
