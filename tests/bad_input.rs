//! Bad input gets a clear, typed error — never a panic or a wrong answer.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::path::PathBuf;

use sparsegen::prelude::*;
use sparsegen::runtime::io::npy;

fn subm(cin: u32, cout: u32) -> SparseConv {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(cin, cout)
        .build()
        .unwrap();
    SparseConv::zeros(spec).unwrap()
}

fn tensor(
    coords: Vec<i32>,
    channels: usize,
    shape: &[u32],
    batch: u32,
) -> Result<SparseTensor, TensorError> {
    let n = coords.len() / (shape.len() + 1);
    SparseTensor::new(coords, vec![1.0; n * channels], channels, shape, batch)
}

#[test]
fn duplicate_coordinates() {
    let err = tensor(vec![0, 1, 2, 3, 0, 0, 0, 0, 0, 1, 2, 3], 2, &[4, 4, 4], 1).unwrap_err();
    assert_eq!(
        err,
        TensorError::Duplicate {
            first: 0,
            second: 2,
            coord: vec![0, 1, 2, 3]
        }
    );
    assert!(
        err.to_string()
            .contains("rows 0 and 2 have the same coordinate [0, 1, 2, 3]")
    );
}

#[test]
fn coordinates_outside_the_shape_or_negative() {
    assert!(matches!(
        tensor(vec![0, 1, 4, 0], 1, &[4, 4, 4], 1),
        Err(TensorError::OutOfBounds { row: 0, .. })
    ));
    assert!(matches!(
        tensor(vec![0, 1, 1, 1, 0, 1, -1, 0], 1, &[4, 4, 4], 1),
        Err(TensorError::Negative { row: 1, .. })
    ));
    assert!(matches!(
        tensor(vec![-1, 1, 1, 1], 1, &[4, 4, 4], 1),
        Err(TensorError::Negative { row: 0, .. })
    ));
}

#[test]
fn batch_index_not_below_batch_size() {
    let err = tensor(vec![0, 1, 1, 1, 2, 1, 1, 1], 1, &[4, 4, 4], 2).unwrap_err();
    assert_eq!(
        err,
        TensorError::Batch {
            row: 1,
            batch: 2,
            batch_size: 2
        }
    );
}

#[test]
fn feature_rows_differ_from_coordinate_rows() {
    let err = SparseTensor::new(vec![0, 1, 1, 1, 0, 2, 2, 2], vec![1.0; 3], 2, &[4, 4, 4], 1)
        .unwrap_err();
    assert_eq!(
        err,
        TensorError::FeatureRows {
            rows: 2,
            channels: 2,
            feats: 3
        }
    );
}

#[test]
fn channel_and_dims_mismatch_with_the_layer() {
    let engine = Engine::reference();
    let x = tensor(vec![0, 1, 1, 1], 3, &[4, 4, 4], 1).unwrap();
    let err = subm(4, 8).forward(&engine, &x).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    let x2 = tensor(vec![0, 1, 1], 4, &[4, 4], 1).unwrap();
    assert!(matches!(
        subm(4, 8).forward(&engine, &x2),
        Err(Error::Dims {
            expected: 3,
            got: 2,
            ..
        })
    ));
}

#[test]
fn weight_and_bias_sizes() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(4, 8)
        .bias(true)
        .build()
        .unwrap();
    let err = SparseConv::new(spec, vec![0.0; 10], Some(vec![0.0; 8])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WeightShape {
                what: "weight",
                expected: 864,
                got: 10,
                ..
            }
        ),
        "{err}"
    );
    let err = SparseConv::new(spec, vec![0.0; 864], None).unwrap_err();
    assert!(
        matches!(err, Error::WeightShape { what: "bias", .. }),
        "{err}"
    );
}

#[test]
fn empty_tensors_work_for_every_kind() {
    let engine = Engine::reference();
    for kind in [
        ConvKind::Submanifold,
        ConvKind::Strided,
        ConvKind::Transposed,
    ] {
        let b = LayerSpec::builder(kind, 3).channels(2, 3);
        let spec = if kind == ConvKind::Submanifold {
            b
        } else {
            b.stride(2)
        }
        .build()
        .unwrap();
        let x = tensor(vec![], 2, &[8, 8, 8], 1).unwrap();
        let y = SparseConv::zeros(spec)
            .unwrap()
            .forward(&engine, &x)
            .unwrap();
        assert!(y.is_empty(), "{kind:?}");
        assert_eq!(y.channels(), 3);
        if kind == ConvKind::Strided {
            let inv = LayerSpec::builder(ConvKind::Inverse, 3)
                .channels(3, 2)
                .stride(2)
                .build()
                .unwrap();
            let z = SparseConv::zeros(inv)
                .unwrap()
                .forward(&engine, &y)
                .unwrap();
            assert!(z.is_empty());
            assert_eq!(z.spatial_shape(), &[8, 8, 8]);
        }
    }
}

#[test]
fn kernel_larger_than_the_spatial_extent() {
    let spec = LayerSpec::builder(ConvKind::Strided, 3)
        .channels(1, 1)
        .kernel(5)
        .build()
        .unwrap();
    let x = tensor(vec![0, 1, 1, 1], 1, &[3, 8, 8], 1).unwrap();
    let err = SparseConv::zeros(spec)
        .unwrap()
        .forward(&Engine::reference(), &x)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("larger than the padded input extent"),
        "{err}"
    );
}

#[test]
fn inverse_without_its_strided_partner() {
    let spec = LayerSpec::builder(ConvKind::Inverse, 3)
        .channels(1, 1)
        .stride(2)
        .build()
        .unwrap();
    let x = tensor(vec![0, 1, 1, 1], 1, &[4, 4, 4], 1).unwrap();
    let err = SparseConv::zeros(spec)
        .unwrap()
        .forward(&Engine::reference(), &x)
        .unwrap_err();
    assert!(matches!(err, Error::NoPartner { .. }), "{err}");
}

#[test]
fn nan_propagates_to_exactly_the_rows_it_feeds() {
    // Sites on a line x = 0, 1, 2, 5; a NaN at x = 0 reaches the outputs at x = 0 and 1 only.
    let coords = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5];
    let x = SparseTensor::new(coords, vec![f32::NAN, 1.0, 1.0, 1.0], 1, &[1, 1, 8], 1).unwrap();
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(1, 1)
        .kernel([1, 1, 3])
        .build()
        .unwrap();
    let conv = SparseConv::new(spec, vec![1.0; 3], None).unwrap();
    let y = conv.forward(&Engine::reference(), &x).unwrap();
    let f = y.features();
    assert!(f[0].is_nan() && f[1].is_nan());
    assert_eq!(&f[2..], &[2.0, 1.0]);
}

fn npy_file(name: &str, descr: &str, shape: &str, payload: &[u8]) -> PathBuf {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(payload);
    let dir = std::env::temp_dir().join(format!("sparsegen-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn npy_of_the_wrong_dtype_or_shape() {
    let ok = npy_file("ok.npy", "<f4", "(2, 3)", &[0u8; 24]);
    let a = npy::read_f32(&ok).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    let err = a.expect_shape(&ok, &[None, Some(4)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected shape [*, 4], found [2, 3]"),
        "{err}"
    );

    let f8 = npy_file("f8.npy", "<f8", "(2, 3)", &[0u8; 48]);
    let err = npy::read_f32(&f8).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected float32 (<f4), found dtype <f8"),
        "{err}"
    );
    let err = npy::read_i32(&ok).unwrap_err();
    assert!(err.to_string().contains("expected int32"), "{err}");

    let truncated = npy_file("short.npy", "<f4", "(2, 3)", &[0u8; 7]);
    assert!(matches!(
        npy::read_f32(&truncated),
        Err(Error::Format { .. })
    ));
    let garbage = npy_file("garbage.npy", "<f4", "(2, 3)", &[]);
    std::fs::write(&garbage, b"not numpy").unwrap();
    assert!(matches!(npy::read_f32(&garbage), Err(Error::Format { .. })));
    assert!(matches!(
        npy::read_f32("/nonexistent/x.npy"),
        Err(Error::Io { .. })
    ));
}

#[test]
fn grids_beyond_32_bits_work() {
    // A 2^40-site grid: int32 flat indices would overflow; packed 64-bit keys do not.
    let shape = [1 << 14, 1 << 13, 1 << 13];
    let coords = vec![
        0, 16000, 8000, 8000, 0, 16000, 8000, 8001, 0, 16001, 8000, 8002,
    ];
    let x = SparseTensor::new(coords, vec![1.0, 2.0, 3.0], 1, &shape, 1).unwrap();
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(1, 1)
        .build()
        .unwrap();
    let y = SparseConv::new(spec, vec![1.0; 27], None)
        .unwrap()
        .forward(&Engine::reference(), &x)
        .unwrap();
    // Row 0 sees row 1; row 1 sees both; row 2 sees row 1 only.
    assert_eq!(y.features(), &[3.0, 6.0, 5.0]);
}
