//! Points to a sparse tensor.
//!
//! A point `(x, y, z, ..)` inside the range falls into voxel `⌊(p − min) / voxel_size⌋`
//! (f32 arithmetic, as spconv computes it); points outside the range or with non-finite
//! coordinates are dropped. Two voxelizers:
//!
//! * [`Voxelizer`]: every point counts. The tensor's coordinates are `(batch, z, y, x)` sorted
//!   lexicographically, and each site's features are the mean of all its points' values
//!   (summed in f64).
//! * [`PointToVoxel`]: spconv's `PointToVoxel` on the CPU, the voxelization OpenPCDet's data
//!   processor runs, followed by OpenPCDet's `MeanVFE`: at most `max_points_per_voxel` points
//!   per voxel (the first ones in cloud order), at most `max_voxels` voxels (those whose first
//!   point comes first; the points of later voxels are dropped), voxels in order of their
//!   first point, means summed in f32 in point order as `MeanVFE` does. A model trained
//!   behind that pipeline sees the same input, value for value.
//!
//! Both are deterministic: the result depends only on the points, not on threads or hashing.

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::point_cloud::PointCloud;
use crate::tensor::SparseTensor;

/// A voxel grid over an axis-aligned range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Voxelizer {
    /// Voxel edge per axis (x, y, z), metres.
    pub voxel_size: [f32; 3],
    /// `[xmin, ymin, zmin, xmax, ymax, zmax]`.
    pub range: [f32; 6],
}

impl Voxelizer {
    /// SECOND / KITTI's grid: 0.05 × 0.05 × 0.1 m over `[0, −40, −3, 70.4, 40, 1]`.
    pub const KITTI: Voxelizer = Voxelizer {
        voxel_size: [0.05, 0.05, 0.1],
        range: [0.0, -40.0, -3.0, 70.4, 40.0, 1.0],
    };

    /// The grid size per axis, `(Z, Y, X)`.
    pub fn spatial_shape(&self) -> [u32; 3] {
        let n = |a: usize| {
            ((self.range[a + 3] - self.range[a]) / self.voxel_size[a])
                .round()
                .max(1.0) as u32
        };
        [n(2), n(1), n(0)]
    }

    /// The linear index `(z·Y + y)·X + x` of the voxel `point` falls into, if it is inside
    /// the grid of `shape` (this grid's [`spatial_shape`](Self::spatial_shape)).
    fn cell(&self, point: &[f32], shape: [u32; 3]) -> Option<u64> {
        let mut v = [0u64; 3];
        for a in 0..3 {
            // ⌊q⌋ ∈ [0, n) exactly when q ∈ [0, n), and for q ≥ 0 truncation is ⌊q⌋ (an
            // explicit floor is a libm call on baseline x86-64). NaN fails the test.
            let q = (point[a] - self.range[a]) / self.voxel_size[a];
            if !(q >= 0.0 && q < shape[2 - a] as f32) {
                return None;
            }
            v[a] = q as u64;
        }
        Some((v[2] * u64::from(shape[1]) + v[1]) * u64::from(shape[2]) + v[0])
    }

    /// Voxelizes one cloud as batch 0.
    pub fn voxelize(&self, cloud: &PointCloud) -> Result<SparseTensor> {
        check_cloud(cloud)?;
        let shape = self.spatial_shape();
        let mut cells: Vec<(u64, u32)> = (0..cloud.len())
            .filter_map(|i| Some((self.cell(cloud.point(i), shape)?, i as u32)))
            .collect();
        cells.sort_unstable();
        let width = cloud.width;
        let mut coords = Vec::new();
        let mut features = Vec::new();
        let mut start = 0;
        while start < cells.len() {
            let key = cells[start].0;
            let mut end = start;
            let mut sum = vec![0f64; width];
            while end < cells.len() && cells[end].0 == key {
                for (s, &v) in sum.iter_mut().zip(cloud.point(cells[end].1 as usize)) {
                    *s += f64::from(v);
                }
                end += 1;
            }
            let count = (end - start) as f64;
            features.extend(sum.iter().map(|s| (s / count) as f32));
            let x = key % u64::from(shape[2]);
            let y = key / u64::from(shape[2]) % u64::from(shape[1]);
            let z = key / u64::from(shape[2]) / u64::from(shape[1]);
            coords.extend([0, z as i32, y as i32, x as i32]);
            start = end;
        }
        Ok(SparseTensor::new(coords, features, width, &shape, 1)?)
    }
}

/// A cloud's points have x, y, z first and fill its values exactly.
fn check_cloud(cloud: &PointCloud) -> Result<()> {
    if cloud.width < 3 || !cloud.values.len().is_multiple_of(cloud.width) {
        return Err(Error::Voxelizer(format!(
            "{} values are not whole points of {} values with x, y, z first",
            cloud.values.len(),
            cloud.width
        )));
    }
    Ok(())
}

/// spconv's `PointToVoxel` (CPU) with OpenPCDet's `MeanVFE`: see the [module docs](self).
///
/// ```
/// use sparsegen_runtime::io::point_cloud::PointCloud;
/// use sparsegen_runtime::io::voxelizer::PointToVoxel;
///
/// // Three points in one voxel, one in another; at most 2 points per voxel.
/// let cloud = PointCloud {
///     values: vec![0.01, 0.0, -2.9, 1.0, 0.02, 0.0, -2.9, 3.0, 0.03, 0.0, -2.9, 9.0, 1.0, 0.0, -2.9, 5.0],
///     width: 4,
/// };
/// let p2v = PointToVoxel { max_points_per_voxel: 2, ..PointToVoxel::OPENPCDET_KITTI };
/// let voxels = p2v.voxels(&cloud)?;
/// assert_eq!(voxels.num_points, [2, 1]);
/// let x = voxels.mean()?;
/// assert_eq!(x.row(0)[3], 2.0); // the mean of the first two points' reflectance
/// # Ok::<(), sparsegen_runtime::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointToVoxel {
    /// The grid.
    pub grid: Voxelizer,
    /// Points kept per voxel, the first ones in cloud order (spconv's
    /// `max_num_points_per_voxel`).
    pub max_points_per_voxel: usize,
    /// Voxels kept, those whose first point comes first (spconv's `max_num_voxels`).
    pub max_voxels: usize,
}

impl PointToVoxel {
    /// OpenPCDet's KITTI configuration at test time (SECOND, PV-RCNN, Part-A², CenterPoint's
    /// KITTI models): the [`Voxelizer::KITTI`] grid, 5 points per voxel, 40,000 voxels.
    pub const OPENPCDET_KITTI: PointToVoxel = PointToVoxel {
        grid: Voxelizer::KITTI,
        max_points_per_voxel: 5,
        max_voxels: 40_000,
    };

    /// The voxels of one cloud: spconv's `PointToVoxel(...)(points)`. Each voxel takes
    /// `max_points_per_voxel × width` floats (the padded layout point-based encoders such as
    /// PointPillars' read), so that product must be addressable.
    pub fn voxels(&self, cloud: &PointCloud) -> Result<Voxels> {
        check_cloud(cloud)?;
        let shape = self.grid.spatial_shape();
        let (width, max_points) = (cloud.width, self.max_points_per_voxel);
        let per_voxel = max_points
            .checked_mul(width)
            .filter(|&n| n <= isize::MAX as usize / 4);
        if per_voxel.is_none() || max_points == 0 {
            return Err(Error::Voxelizer(format!(
                "{max_points} points per voxel of {width} values do not make a voxel buffer"
            )));
        }
        // Cells in parallel; voxel ids in point order (which decides what is kept).
        let cells: Vec<Option<u64>> = cloud
            .values
            .par_chunks_exact(width)
            .map(|point| self.grid.cell(point, shape))
            .collect();
        let mut id_of: HashMap<u64, u32> = HashMap::with_capacity(cloud.len().min(self.max_voxels));
        let mut out = Voxels {
            coords: Vec::new(),
            points: Vec::new(),
            num_points: Vec::new(),
            max_points_per_voxel: max_points,
            width,
            spatial_shape: shape,
        };
        for (point, cell) in cloud.values.chunks_exact(width).zip(cells) {
            let Some(key) = cell else {
                continue;
            };
            let voxel = match id_of.entry(key) {
                Entry::Occupied(e) => *e.get() as usize,
                Entry::Vacant(e) => {
                    if out.num_points.len() >= self.max_voxels {
                        continue;
                    }
                    let id = out.num_points.len();
                    e.insert(id as u32);
                    let (x, y) = (u64::from(shape[2]), u64::from(shape[1]));
                    out.coords.extend([
                        (key / x / y) as i32,
                        (key / x % y) as i32,
                        (key % x) as i32,
                    ]);
                    out.num_points.push(0);
                    out.points
                        .resize(out.points.len() + max_points * width, 0.0);
                    id
                }
            };
            let n = out.num_points[voxel] as usize;
            if n < max_points {
                let at = (voxel * max_points + n) * width;
                out.points[at..at + width].copy_from_slice(point);
                out.num_points[voxel] += 1;
            }
        }
        Ok(out)
    }

    /// One cloud's voxels as a tensor of their mean points (batch 0).
    pub fn voxelize(&self, cloud: &PointCloud) -> Result<SparseTensor> {
        self.voxels(cloud)?.mean()
    }

    /// A batch: each cloud voxelized on its own (its own voxel limit) and its rows tagged
    /// with its index, in order, as OpenPCDet's collate concatenates a batch.
    pub fn voxelize_batch(&self, clouds: &[PointCloud]) -> Result<SparseTensor> {
        let width = clouds.first().map_or(0, |c| c.width);
        let batch = u32::try_from(clouds.len().max(1))
            .map_err(|_| Error::Voxelizer(format!("{} clouds exceed a u32 batch", clouds.len())))?;
        let (mut coords, mut features) = (Vec::new(), Vec::new());
        for (b, cloud) in clouds.iter().enumerate() {
            if cloud.width != width {
                return Err(Error::Voxelizer(format!(
                    "cloud {b} has {} values per point, cloud 0 has {width}",
                    cloud.width
                )));
            }
            self.voxels(cloud)?
                .push_rows(b as i32, &mut coords, &mut features);
        }
        Ok(SparseTensor::new(
            coords,
            features,
            width,
            &self.grid.spatial_shape(),
            batch,
        )?)
    }
}

/// Voxels as spconv's `PointToVoxel` gives them: coordinates, the kept points zero-padded
/// to `max_points_per_voxel`, and how many were kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Voxels {
    /// `[V, 3]` coordinates `(z, y, x)`, voxels in order of their first point.
    pub coords: Vec<i32>,
    /// `[V, max_points_per_voxel, width]`: each voxel's first points, then zeros.
    pub points: Vec<f32>,
    /// `[V]`: points kept per voxel (1 to `max_points_per_voxel`).
    pub num_points: Vec<u32>,
    /// Rows of `points` per voxel.
    pub max_points_per_voxel: usize,
    /// Values per point.
    pub width: usize,
    /// The grid, `(Z, Y, X)`.
    pub spatial_shape: [u32; 3],
}

impl Voxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.num_points.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.num_points.is_empty()
    }

    /// `[V, width]`: each voxel's mean point as OpenPCDet's `MeanVFE` computes it: the
    /// padded points summed in f32 in order, divided by the count.
    pub fn mean_features(&self) -> Vec<f32> {
        let (w, p) = (self.width, self.max_points_per_voxel);
        let mut out = vec![0.0f32; self.len() * w];
        for (v, (mean, &n)) in out
            .chunks_exact_mut(w.max(1))
            .zip(&self.num_points)
            .enumerate()
        {
            for point in self.points[v * p * w..(v + 1) * p * w].chunks_exact(w) {
                for (m, &x) in mean.iter_mut().zip(point) {
                    *m += x;
                }
            }
            let count = n.max(1) as f32;
            for m in mean.iter_mut() {
                *m /= count;
            }
        }
        out
    }

    /// The voxels' mean points as a tensor (batch 0), rows in voxel order.
    pub fn mean(&self) -> Result<SparseTensor> {
        let (mut coords, mut features) = (Vec::new(), Vec::new());
        self.push_rows(0, &mut coords, &mut features);
        Ok(SparseTensor::new(
            coords,
            features,
            self.width,
            &self.spatial_shape,
            1,
        )?)
    }

    /// Appends one row per voxel: `(batch, z, y, x)` and its mean point.
    fn push_rows(&self, batch: i32, coords: &mut Vec<i32>, features: &mut Vec<f32>) {
        for zyx in self.coords.chunks_exact(3) {
            coords.extend([batch, zyx[0], zyx[1], zyx[2]]);
        }
        features.extend(self.mean_features());
    }
}
