//! Point clouds from files: headerless little-endian f32 records (KITTI velodyne `.bin`,
//! 4 values per point; mmdet3d's ScanNet `.bin`, 6 values per point).

use std::path::Path;

use crate::error::{Error, Result};

/// Points as rows of `width` f32 values (x, y, z, then attributes).
#[derive(Debug, Clone, PartialEq)]
pub struct PointCloud {
    /// Row-major values.
    pub values: Vec<f32>,
    /// Values per point.
    pub width: usize,
}

impl PointCloud {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.values.len() / self.width
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// One point's values.
    pub fn point(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

/// Reads a headerless f32 file of `width` values per point (4 for KITTI, 6 for ScanNet).
pub fn read_f32_records(path: impl AsRef<Path>, width: usize) -> Result<PointCloud> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    if width < 3 || bytes.len() % (4 * width) != 0 {
        return Err(Error::Format {
            path: path.into(),
            message: format!(
                "{} bytes are not whole records of {width} f32 values",
                bytes.len()
            ),
        });
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(PointCloud { values, width })
}

/// Reads a KITTI velodyne scan (x, y, z, reflectance).
pub fn read_kitti_bin(path: impl AsRef<Path>) -> Result<PointCloud> {
    read_f32_records(path, 4)
}
