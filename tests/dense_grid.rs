//! Dense grids against spconv 2.3.8: `SparseConvTensor.dense()` in both layouts, OpenPCDet's
//! `HeightCompression` and `SparseConvTensor.from_dense`, on the small random tensors of
//! `tests/fixtures/spconv_dense.safetensors` (written by `scripts/spconv_dense_fixture.py`).
//! Every value must be equal: these are copies, not arithmetic.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use sparsegen::runtime::io::safetensors::Checkpoint;
use sparsegen::runtime::{DenseGrid, DenseLayout, SparseTensor};

#[path = "fixtures/locate.rs"]
mod locate;

fn fixture() -> Checkpoint {
    Checkpoint::read(locate::fixture("spconv_dense.safetensors")).unwrap()
}

fn ints(fx: &Checkpoint, name: &str) -> Vec<i32> {
    fx.int(name)
        .unwrap()
        .1
        .iter()
        .map(|&v| i32::try_from(v).unwrap())
        .collect()
}

fn shape_of(fx: &Checkpoint, key: &str) -> Vec<u32> {
    fx.metadata()[key]
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Equal values, NaN equal to NaN.
fn assert_same(ours: &[f32], spconv: &[f32], what: &str) {
    assert_eq!(ours.len(), spconv.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(spconv).enumerate() {
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "{what}[{i}]: ours {a}, spconv {b}"
        );
    }
}

#[test]
fn dense_and_bev_match_spconv() {
    let fx = fixture();
    for case in ["3d", "2d"] {
        let shape = shape_of(&fx, &format!("spatial_shape.{case}"));
        let x = SparseTensor::new(
            ints(&fx, &format!("{case}.coords")),
            fx.float(&format!("{case}.features")).unwrap().1.to_vec(),
            3,
            &shape,
            2,
        )
        .unwrap();
        for (layout, key) in [
            (DenseLayout::ChannelsFirst, "channels_first"),
            (DenseLayout::ChannelsLast, "channels_last"),
        ] {
            let (spconv_shape, spconv) = fx.float(&format!("{case}.{key}")).unwrap();
            let ours = x.to_dense(layout).unwrap();
            assert_eq!(ours.shape(), spconv_shape, "{case} {key}");
            assert_same(ours.data(), spconv, &format!("{case} {key}"));
        }
        if shape.len() == 3 {
            let (spconv_shape, spconv) = fx.float("3d.bev").unwrap();
            let bev = x.to_bev().unwrap();
            assert_eq!(bev.shape(), spconv_shape);
            assert_same(bev.data(), spconv, "bev");
        } else {
            assert!(x.to_bev().is_err(), "a 2D tensor has no bird's-eye view");
        }
    }
}

#[test]
fn from_dense_matches_spconv() {
    let fx = fixture();
    let (shape, values) = fx.float("from_dense.grid").unwrap();
    let last = DenseGrid::new(values.to_vec(), shape.to_vec(), DenseLayout::ChannelsLast).unwrap();
    let spconv_coords = ints(&fx, "from_dense.coords");
    let spconv_features = fx.float("from_dense.features").unwrap().1;
    let ours = SparseTensor::from_dense(&last).unwrap();
    assert_eq!(ours.coords(), spconv_coords);
    assert_same(ours.features(), spconv_features, "from_dense features");
    assert_eq!((ours.spatial_shape(), ours.batch_size()), (&[4, 5][..], 2));

    // The same grid channels first gives the same tensor, and back to dense gives the grid
    // (−0.0 and dropped sites read back as +0.0, which compares equal).
    let first =
        SparseTensor::from_dense(&ours.to_dense(DenseLayout::ChannelsFirst).unwrap()).unwrap();
    assert_eq!(first.coords(), spconv_coords);
    assert_same(first.features(), spconv_features, "from channels-first");
    assert_same(
        ours.to_dense(DenseLayout::ChannelsLast).unwrap().data(),
        values,
        "round trip",
    );
}
