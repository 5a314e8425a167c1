//! Voxelization against spconv 2.3.8's `PointToVoxel` (CPU) and OpenPCDet's `MeanVFE`, on the
//! synthetic cloud of `tests/fixtures/spconv_voxelize.safetensors` (written by
//! `scripts/spconv_voxelize_fixture.py`): the same voxels in the same order, the same kept
//! points, and means equal bit for bit.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use sparsegen::runtime::io::point_cloud::PointCloud;
use sparsegen::runtime::io::safetensors::Checkpoint;
use sparsegen::runtime::io::voxelizer::{PointToVoxel, Voxelizer};

#[path = "fixtures/locate.rs"]
mod locate;

struct Fixture {
    checkpoint: Checkpoint,
    cloud: PointCloud,
    grid: Voxelizer,
}

fn fixture() -> Fixture {
    let checkpoint = Checkpoint::read(locate::fixture("spconv_voxelize.safetensors")).unwrap();
    let meta =
        |key: &str| -> Vec<f32> { serde_json::from_str(&checkpoint.metadata()[key]).unwrap() };
    let (voxel_size, range) = (meta("voxel_size"), meta("range"));
    let grid = Voxelizer {
        voxel_size: voxel_size.try_into().unwrap(),
        range: range.try_into().unwrap(),
    };
    let cloud = PointCloud {
        values: checkpoint.float("points").unwrap().1.to_vec(),
        width: 4,
    };
    Fixture {
        checkpoint,
        cloud,
        grid,
    }
}

fn ints(fx: &Checkpoint, name: &str) -> Vec<i64> {
    fx.int(name).unwrap().1.to_vec()
}

#[test]
fn point_to_voxel_and_mean_vfe_match_spconv() {
    let fx = fixture();
    for (case, max_points, max_voxels) in [("capped", 5, 300), ("uncapped", 16, 100_000)] {
        let p2v = PointToVoxel {
            grid: fx.grid,
            max_points_per_voxel: max_points,
            max_voxels,
        };
        let voxels = p2v.voxels(&fx.cloud).unwrap();
        let coords: Vec<i64> = voxels.coords.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(
            coords,
            ints(&fx.checkpoint, &format!("{case}.coords_zyx")),
            "{case}: voxels"
        );
        let counts: Vec<i64> = voxels.num_points.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(
            counts,
            ints(&fx.checkpoint, &format!("{case}.num_points")),
            "{case}: counts"
        );
        if case == "capped" {
            assert_eq!(
                voxels.points,
                fx.checkpoint.float("capped.voxels").unwrap().1,
                "kept points"
            );
            assert_eq!(voxels.len(), max_voxels, "the voxel limit binds");
            assert!(counts.contains(&5), "the point limit binds");
        }
        let spconv_mean = fx.checkpoint.float(&format!("{case}.mean")).unwrap().1;
        let x = p2v.voxelize(&fx.cloud).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(x.features()), bits(spconv_mean), "{case}: MeanVFE");
        assert_eq!(x.spatial_shape(), &[8, 40, 32]);
        assert_eq!(x.coords().chunks_exact(4).map(|c| c[0]).max(), Some(0));
    }
}

#[test]
fn uncapped_point_to_voxel_has_the_voxelizers_sites() {
    let fx = fixture();
    let p2v = PointToVoxel {
        grid: fx.grid,
        max_points_per_voxel: 1000,
        max_voxels: usize::MAX,
    };
    let all = p2v.voxelize(&fx.cloud).unwrap();
    let sorted = fx.grid.voxelize(&fx.cloud).unwrap();
    let mut rows: Vec<(&[i32], &[f32])> = all
        .coords()
        .chunks_exact(4)
        .zip(all.features().chunks_exact(4))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(rows.len(), sorted.len());
    for (row, (coord, mean)) in rows.iter().enumerate() {
        assert_eq!(*coord, sorted.coord(row));
        // f32 sums in point order against f64 sums: a few ulps at most.
        for (a, b) in mean.iter().zip(sorted.row(row)) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "row {row}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn a_batch_is_each_cloud_in_turn() {
    let fx = fixture();
    let p2v = PointToVoxel {
        grid: fx.grid,
        max_points_per_voxel: 5,
        max_voxels: 300,
    };
    let half = PointCloud {
        values: fx.cloud.values[..fx.cloud.len() / 2 * 4].to_vec(),
        width: 4,
    };
    let batch = p2v
        .voxelize_batch(&[fx.cloud.clone(), half.clone()])
        .unwrap();
    let (a, b) = (
        p2v.voxelize(&fx.cloud).unwrap(),
        p2v.voxelize(&half).unwrap(),
    );
    assert_eq!(batch.batch_size(), 2);
    assert_eq!(batch.len(), a.len() + b.len());
    for (row, coord) in batch.coords().chunks_exact(4).enumerate() {
        let (src, r, tag) = if row < a.len() {
            (&a, row, 0)
        } else {
            (&b, row - a.len(), 1)
        };
        assert_eq!(coord[0], tag);
        assert_eq!(&coord[1..], &src.coord(r)[1..]);
        assert_eq!(batch.row(row), src.row(r));
    }
    let narrow = PointCloud {
        values: vec![0.5; 6],
        width: 3,
    };
    assert!(
        p2v.voxelize_batch(&[fx.cloud.clone(), narrow]).is_err(),
        "widths must agree"
    );
}
