//! `Voxelizer`: points to a sparse tensor, SECOND-style.
//!
//! A point `(x, y, z, ..)` inside the range falls into voxel
//! `⌊(p − min) / voxel_size⌋`; the tensor's coordinates are `(batch, z, y, x)` sorted
//! lexicographically, and each site's features are the mean of its points' values (all
//! `width` of them). Points outside the range or with non-finite coordinates are dropped.
//! Deterministic: the result depends only on the points, not on threads or hashing.

use crate::error::Result;
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

    /// Voxelizes one cloud as batch 0.
    pub fn voxelize(&self, cloud: &PointCloud) -> Result<SparseTensor> {
        let shape = self.spatial_shape();
        let mut cells: Vec<(u64, u32)> = Vec::with_capacity(cloud.len());
        for i in 0..cloud.len() {
            let p = cloud.point(i);
            let mut v = [0u32; 3];
            let mut inside = true;
            for a in 0..3 {
                let f = ((p[a] - self.range[a]) / self.voxel_size[a]).floor();
                if !(f >= 0.0 && f < shape[2 - a] as f32) {
                    inside = false;
                    break;
                }
                v[a] = f as u32;
            }
            if inside {
                let key = (u64::from(v[2]) * u64::from(shape[1]) + u64::from(v[1]))
                    * u64::from(shape[2])
                    + u64::from(v[0]);
                cells.push((key, i as u32));
            }
        }
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
