//! `SparseTensor` and the `CoordSet` it shares with the tensors computed from it.
//!
//! A coordinate set (`[N, 1 + D]` int32 rows, batch first, spconv's order) is validated and
//! indexed once, when it is created, and then shared by `Arc` between every tensor on the
//! same sites: a submanifold layer's output reuses its input's set, an inverse layer's output
//! reuses its partner's input set. Each set has a process-unique [`CoordSetId`], which is
//! what the rulebook cache keys on.
//!
//! Features are row-major `[N, C]` f32. NaN and infinities in features are not errors: they
//! propagate through every layer as IEEE arithmetic says (a NaN input row makes NaN every
//! output row it feeds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::coord_index::{CoordIndex, KeyPacking};
use crate::error::TensorError;
use sparsegen_codegen::MAX_DIMS;

/// Process-unique identity of a [`CoordSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoordSetId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl CoordSetId {
    /// A new identity (also used for coordinate sets in device memory).
    pub(crate) fn fresh() -> Self {
        CoordSetId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// A validated, indexed set of unique sites.
#[derive(Debug)]
pub struct CoordSet {
    id: CoordSetId,
    coords: Vec<i32>,
    spatial_shape: Vec<u32>,
    batch_size: u32,
    index: CoordIndex,
}

impl CoordSet {
    /// Validates and indexes coordinates `[N, 1 + dims]` (batch, then spatial axes).
    pub fn new(
        coords: Vec<i32>,
        spatial_shape: &[u32],
        batch_size: u32,
    ) -> Result<Self, TensorError> {
        let dims = spatial_shape.len();
        if dims == 0 || dims > MAX_DIMS {
            return Err(TensorError::Dims(dims));
        }
        if spatial_shape.contains(&0) {
            return Err(TensorError::Shape {
                shape: spatial_shape.to_vec(),
                dims,
            });
        }
        let width = dims + 1;
        if !coords.len().is_multiple_of(width) {
            return Err(TensorError::CoordsLen {
                len: coords.len(),
                width,
            });
        }
        let n = coords.len() / width;
        if n > i32::MAX as usize {
            return Err(TensorError::TooManyRows(n));
        }
        let bad = coords.par_chunks_exact(width).position_first(|c| {
            c[0] < 0
                || c[0] as u32 >= batch_size
                || c[1..]
                    .iter()
                    .zip(spatial_shape)
                    .any(|(&v, &s)| v < 0 || v as u32 >= s)
        });
        if let Some(row) = bad {
            let coord = coords[row * width..(row + 1) * width].to_vec();
            return Err(if coord.iter().any(|&v| v < 0) {
                TensorError::Negative { row, coord }
            } else if coord[0] as u32 >= batch_size {
                TensorError::Batch {
                    row,
                    batch: coord[0],
                    batch_size,
                }
            } else {
                TensorError::OutOfBounds {
                    row,
                    coord,
                    shape: spatial_shape.to_vec(),
                }
            });
        }
        let packing = KeyPacking::new(spatial_shape, batch_size)?;
        let index = CoordIndex::build(&coords, packing)?;
        Ok(CoordSet {
            id: CoordSetId::fresh(),
            coords,
            spatial_shape: spatial_shape.to_vec(),
            batch_size,
            index,
        })
    }

    /// The set's identity.
    pub fn id(&self) -> CoordSetId {
        self.id
    }

    /// Coordinates, row-major `[N, 1 + dims]`.
    pub fn coords(&self) -> &[i32] {
        &self.coords
    }

    /// One row's coordinate (batch first).
    pub fn coord(&self, row: usize) -> &[i32] {
        let w = self.width();
        &self.coords[row * w..(row + 1) * w]
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.coords.len() / self.width()
    }

    /// Whether the set has no sites.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// Spatial dims.
    pub fn dims(&self) -> usize {
        self.spatial_shape.len()
    }

    /// Values per coordinate row (`1 + dims`).
    pub fn width(&self) -> usize {
        self.spatial_shape.len() + 1
    }

    /// The spatial shape.
    pub fn spatial_shape(&self) -> &[u32] {
        &self.spatial_shape
    }

    /// The batch size.
    pub fn batch_size(&self) -> u32 {
        self.batch_size
    }

    /// The coordinate index.
    pub fn index(&self) -> &CoordIndex {
        &self.index
    }
}

/// Sparse features on a coordinate set: `[N, C]` row-major f32 plus the sites they live on.
#[derive(Debug, Clone)]
pub struct SparseTensor {
    coords: Arc<CoordSet>,
    features: Vec<f32>,
    channels: usize,
    tensor_stride: Vec<u32>,
}

impl SparseTensor {
    /// A tensor from coordinates `[N, 1 + dims]` (batch first), features `[N, channels]`, the
    /// spatial shape and the batch size. Rejects every malformed input with a
    /// [`TensorError`]; an empty tensor (N = 0) is valid.
    ///
    /// ```
    /// use sparsegen_runtime::SparseTensor;
    /// let t = SparseTensor::new(vec![0, 1, 2, 0, 3, 3], vec![1.0, 2.0], 1, &[4, 4], 1)?;
    /// assert_eq!(t.len(), 2);
    /// assert!(SparseTensor::new(vec![0, 1, 2, 0, 1, 2], vec![1.0, 2.0], 1, &[4, 4], 1).is_err());
    /// # Ok::<(), sparsegen_runtime::TensorError>(())
    /// ```
    pub fn new(
        coords: Vec<i32>,
        features: Vec<f32>,
        channels: usize,
        spatial_shape: &[u32],
        batch_size: u32,
    ) -> Result<Self, TensorError> {
        let set = CoordSet::new(coords, spatial_shape, batch_size)?;
        Self::on(Arc::new(set), features, channels)
    }

    /// Features on an existing coordinate set.
    pub fn on(
        coords: Arc<CoordSet>,
        features: Vec<f32>,
        channels: usize,
    ) -> Result<Self, TensorError> {
        let rows = coords.len();
        if features.len() != rows * channels || (channels == 0 && rows > 0 && !features.is_empty())
        {
            return Err(TensorError::FeatureRows {
                rows,
                channels,
                feats: features.len(),
            });
        }
        let dims = coords.dims();
        Ok(SparseTensor {
            coords,
            features,
            channels,
            tensor_stride: vec![1; dims],
        })
    }

    /// The same sites with a tensor stride (how many input voxels one site spans per axis).
    pub fn with_tensor_stride(mut self, stride: Vec<u32>) -> Self {
        self.tensor_stride = stride;
        self
    }

    /// The coordinate set.
    pub fn coord_set(&self) -> &Arc<CoordSet> {
        &self.coords
    }

    /// Coordinates `[N, 1 + dims]`.
    pub fn coords(&self) -> &[i32] {
        self.coords.coords()
    }

    /// One row's coordinates (batch, then spatial axes).
    pub fn coord(&self, row: usize) -> &[i32] {
        self.coords.coord(row)
    }

    /// Features `[N, C]`.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Takes the features out.
    pub fn into_features(self) -> Vec<f32> {
        self.features
    }

    /// One row's features.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.features[row * self.channels..(row + 1) * self.channels]
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.coords.len()
    }

    /// Whether the tensor has no sites.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// Spatial dims.
    pub fn dims(&self) -> usize {
        self.coords.dims()
    }

    /// The spatial shape.
    pub fn spatial_shape(&self) -> &[u32] {
        self.coords.spatial_shape()
    }

    /// The batch size.
    pub fn batch_size(&self) -> u32 {
        self.coords.batch_size()
    }

    /// The tensor stride.
    pub fn tensor_stride(&self) -> &[u32] {
        &self.tensor_stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(coords: Vec<i32>, feats: usize, shape: &[u32], batch: u32) -> TensorError {
        SparseTensor::new(coords, vec![0.0; feats], 1, shape, batch).unwrap_err()
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            err(vec![0, 1, 1, 0, 1, 1], 2, &[4, 4], 1),
            TensorError::Duplicate { .. }
        ));
        assert!(matches!(
            err(vec![0, 4, 1], 1, &[4, 4], 1),
            TensorError::OutOfBounds { row: 0, .. }
        ));
        assert!(matches!(
            err(vec![0, 1, 1, 0, -1, 1], 2, &[4, 4], 1),
            TensorError::Negative { row: 1, .. }
        ));
        assert!(matches!(
            err(vec![1, 1, 1], 1, &[4, 4], 1),
            TensorError::Batch { batch: 1, .. }
        ));
        assert!(matches!(
            err(vec![0, 1, 1], 2, &[4, 4], 1),
            TensorError::FeatureRows { .. }
        ));
        assert!(matches!(
            err(vec![0, 1], 1, &[4, 4], 1),
            TensorError::CoordsLen { .. }
        ));
        assert!(matches!(
            err(vec![0, 1, 1], 1, &[4, 0], 1),
            TensorError::Shape { .. }
        ));
        assert!(matches!(
            err(vec![0, 1, 1, 1, 1, 1], 1, &[1, 1, 1, 1, 1], 1),
            TensorError::Dims(5)
        ));
    }

    #[test]
    fn empty_tensor_is_valid() {
        let t = SparseTensor::new(vec![], vec![], 8, &[4, 4, 4], 1).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.channels(), 8);
    }

    #[test]
    fn coordinate_sets_have_unique_ids() {
        let a = SparseTensor::new(vec![0, 1], vec![1.0], 1, &[4], 1).unwrap();
        let b = SparseTensor::new(vec![0, 1], vec![1.0], 1, &[4], 1).unwrap();
        assert_ne!(a.coord_set().id(), b.coord_set().id());
    }
}
