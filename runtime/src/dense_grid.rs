//! Dense grids to and from sparse tensors: spconv's `SparseConvTensor.dense()` and
//! `SparseConvTensor.from_dense()`, and OpenPCDet's `HeightCompression` (the bird's-eye view a
//! 3D backbone hands to a 2D detection head).
//!
//! A [`DenseGrid`] is row-major f32 with an explicit [`DenseLayout`]: channels first
//! (`[B, C, d0, d1, ..]`, spconv's and PyTorch's default) or channels last
//! (`[B, d0, d1, .., C]`). Sites a sparse tensor does not have are zero.
//!
//! ```
//! use sparsegen_runtime::dense_grid::{DenseGrid, DenseLayout};
//! use sparsegen_runtime::SparseTensor;
//!
//! // Two sites of a 2-channel tensor on a 3×4 grid.
//! let x = SparseTensor::new(vec![0, 0, 1, 0, 2, 3], vec![1.0, 2.0, 3.0, 4.0], 2, &[3, 4], 1)?;
//! let grid = x.to_dense(DenseLayout::ChannelsFirst)?;
//! assert_eq!(grid.shape(), &[1, 2, 3, 4]);
//! assert_eq!(grid.data()[1], 1.0); // batch 0, channel 0, site (0, 1)
//! assert_eq!(grid.data()[12 + 11], 4.0); // channel 1, site (2, 3)
//! let back = SparseTensor::from_dense(&grid)?;
//! assert_eq!(back.coords(), x.coords());
//! assert_eq!(back.features(), x.features());
//! # Ok::<(), sparsegen_runtime::TensorError>(())
//! ```

use rayon::prelude::*;
use sparsegen_codegen::MAX_DIMS;

use crate::error::TensorError;
use crate::tensor::SparseTensor;

/// Where the channel axis of a [`DenseGrid`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DenseLayout {
    /// `[B, C, d0, d1, ..]`: spconv's `dense()` default and PyTorch's convolution layout.
    #[default]
    ChannelsFirst,
    /// `[B, d0, d1, .., C]`: the layout spconv's `from_dense` reads.
    ChannelsLast,
}

/// A dense, row-major f32 grid: batch, channels and spatial axes in the order its
/// [`DenseLayout`] says.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseGrid {
    data: Vec<f32>,
    shape: Vec<usize>,
    layout: DenseLayout,
}

impl DenseGrid {
    /// A grid of `shape` (batch, channels and 1 to 4 spatial axes, arranged as `layout` says)
    /// holding `data`. Every size must be positive except the channel count, and `data` must
    /// fill the shape exactly.
    pub fn new(
        data: Vec<f32>,
        shape: Vec<usize>,
        layout: DenseLayout,
    ) -> Result<Self, TensorError> {
        let dims = shape.len().saturating_sub(2);
        if !(1..=MAX_DIMS).contains(&dims) {
            return Err(TensorError::DenseShape {
                shape,
                reason: format!("needs batch, channels and 1 to {MAX_DIMS} spatial axes"),
            });
        }
        let grid = DenseGrid {
            data,
            shape,
            layout,
        };
        if grid.batch_size() == 0 || grid.spatial_shape().contains(&0) {
            return Err(TensorError::DenseShape {
                shape: grid.shape,
                reason: "batch and spatial sizes must be positive".into(),
            });
        }
        let Some(len) = element_count(&grid.shape) else {
            return Err(too_large(grid.shape));
        };
        if grid.data.len() != len {
            return Err(TensorError::DenseShape {
                reason: format!("{} values do not fill it ({len} needed)", grid.data.len()),
                shape: grid.shape,
            });
        }
        Ok(grid)
    }

    /// The shape, in [`layout`](Self::layout) order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Where the channel axis is.
    pub fn layout(&self) -> DenseLayout {
        self.layout
    }

    /// The values, row-major over [`shape`](Self::shape).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Takes the values out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.shape[0]
    }

    /// The channel count.
    pub fn channels(&self) -> usize {
        match self.layout {
            DenseLayout::ChannelsFirst => self.shape[1],
            DenseLayout::ChannelsLast => self.shape[self.shape.len() - 1],
        }
    }

    /// The spatial axes' sizes.
    pub fn spatial_shape(&self) -> &[usize] {
        match self.layout {
            DenseLayout::ChannelsFirst => &self.shape[2..],
            DenseLayout::ChannelsLast => &self.shape[1..self.shape.len() - 1],
        }
    }
}

impl SparseTensor {
    /// The tensor on its whole grid, zeros where it has no site: spconv's
    /// `SparseConvTensor.dense(channels_first)`. The grid has `batch_size × channels × the
    /// spatial volume` values, so mind big grids: a KITTI input grid (41 × 1600 × 1408) with
    /// 4 channels is 1.5 GB. Errors only if that count overflows the address space.
    pub fn to_dense(&self, layout: DenseLayout) -> Result<DenseGrid, TensorError> {
        let spatial: Vec<usize> = self.spatial_shape().iter().map(|&s| s as usize).collect();
        let (batch, channels) = (self.batch_size() as usize, self.channels());
        let shape: Vec<usize> = match layout {
            DenseLayout::ChannelsFirst => [batch, channels]
                .into_iter()
                .chain(spatial.iter().copied())
                .collect(),
            DenseLayout::ChannelsLast => std::iter::once(batch)
                .chain(spatial.iter().copied())
                .chain([channels])
                .collect(),
        };
        let Some(len) = element_count(&shape) else {
            return Err(too_large(shape));
        };
        let volume: usize = spatial.iter().product();
        let mut data = vec![0.0f32; len];
        if len == 0 || self.is_empty() {
            return Ok(DenseGrid {
                data,
                shape,
                layout,
            });
        }
        // Each row's batch and linear spatial index, then the rows of each batch.
        let width = 1 + spatial.len();
        let site: Vec<(usize, usize)> = self
            .coords()
            .par_chunks_exact(width)
            .map(|c| {
                let lin = c[1..]
                    .iter()
                    .zip(&spatial)
                    .fold(0usize, |acc, (&v, &s)| acc * s + v as usize);
                (c[0] as usize, lin)
            })
            .collect();
        let mut rows_of_batch: Vec<Vec<usize>> = vec![Vec::new(); batch];
        for (row, &(b, _)) in site.iter().enumerate() {
            rows_of_batch[b].push(row);
        }
        let features = self.features();
        match layout {
            // One (batch, channel) plane per task: each reads its batch's rows.
            DenseLayout::ChannelsFirst => {
                data.par_chunks_mut(volume)
                    .enumerate()
                    .for_each(|(plane_index, plane)| {
                        let (b, ch) = (plane_index / channels, plane_index % channels);
                        for &row in &rows_of_batch[b] {
                            plane[site[row].1] = features[row * channels + ch];
                        }
                    });
            }
            // One batch per task: each row's channels are contiguous on both sides.
            DenseLayout::ChannelsLast => {
                data.par_chunks_mut(volume * channels)
                    .enumerate()
                    .for_each(|(b, grid)| {
                        for &row in &rows_of_batch[b] {
                            let at = site[row].1 * channels;
                            grid[at..at + channels]
                                .copy_from_slice(&features[row * channels..(row + 1) * channels]);
                        }
                    });
            }
        }
        Ok(DenseGrid {
            data,
            shape,
            layout,
        })
    }

    /// The bird's-eye view of a 3D tensor on a `[D, H, W]` grid: the dense grid
    /// `[B, C, D, H, W]` read as `[B, C·D, H, W]`, channel `c·D + d` holding channel `c` at
    /// height `d`. This is OpenPCDet's `HeightCompression` (`dense().view(N, C * D, H, W)`),
    /// which feeds a detector's 2D backbone from SECOND's or CenterPoint's 3D backbone.
    pub fn to_bev(&self) -> Result<DenseGrid, TensorError> {
        if self.dims() != 3 {
            return Err(TensorError::DenseShape {
                shape: self.spatial_shape().iter().map(|&s| s as usize).collect(),
                reason: "a bird's-eye view needs 3 spatial axes (D, H, W)".into(),
            });
        }
        let grid = self.to_dense(DenseLayout::ChannelsFirst)?;
        let s = &grid.shape;
        let shape = vec![s[0], s[1] * s[2], s[3], s[4]];
        Ok(DenseGrid { shape, ..grid })
    }

    /// The sites of `grid` where some channel is not zero, in spconv's order (batch, then
    /// each spatial axis ascending), with their channels: spconv's
    /// `SparseConvTensor.from_dense` (which reads channels last; either layout works here).
    /// NaN counts as not zero; −0.0 is zero.
    pub fn from_dense(grid: &DenseGrid) -> Result<SparseTensor, TensorError> {
        let (channels, spatial) = (grid.channels(), grid.spatial_shape());
        let spatial_u32: Vec<u32> = spatial
            .iter()
            .map(|&s| u32::try_from(s).ok().filter(|&s| s <= i32::MAX as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| TensorError::DenseShape {
                shape: grid.shape.clone(),
                reason: "spatial sizes must fit 32-bit coordinates".into(),
            })?;
        let batch = u32::try_from(grid.batch_size()).map_err(|_| TensorError::DenseShape {
            shape: grid.shape.clone(),
            reason: "the batch size must fit 32 bits".into(),
        })?;
        // Slabs of (batch, first spatial index), scanned in parallel and joined in order.
        let (d0, slab) = (spatial[0], spatial[1..].iter().product::<usize>());
        let volume = d0 * slab;
        let value = |b: usize, ch: usize, lin: usize| match grid.layout {
            DenseLayout::ChannelsFirst => grid.data[(b * channels + ch) * volume + lin],
            DenseLayout::ChannelsLast => grid.data[(b * volume + lin) * channels + ch],
        };
        let slabs: Vec<(Vec<i32>, Vec<f32>)> = (0..grid.batch_size() * d0)
            .into_par_iter()
            .map(|index| {
                let (b, i0) = (index / d0, index % d0);
                let (mut coords, mut features) = (Vec::new(), Vec::new());
                for rest in 0..slab {
                    let lin = i0 * slab + rest;
                    if !(0..channels).any(|ch| value(b, ch, lin) != 0.0) {
                        continue;
                    }
                    coords.push(b as i32);
                    coords.push(i0 as i32);
                    let mut r = rest;
                    let first = coords.len();
                    for &s in spatial[1..].iter().rev() {
                        coords.push((r % s) as i32);
                        r /= s;
                    }
                    coords[first..].reverse();
                    features.extend((0..channels).map(|ch| value(b, ch, lin)));
                }
                (coords, features)
            })
            .collect();
        let (mut coords, mut features) = (Vec::new(), Vec::new());
        for (c, f) in slabs {
            coords.extend(c);
            features.extend(f);
        }
        SparseTensor::new(coords, features, channels, &spatial_u32, batch)
    }
}

/// The product of `shape`, if the grid's bytes fit the address space.
fn element_count(shape: &[usize]) -> Option<usize> {
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))?;
    (len <= isize::MAX as usize / size_of::<f32>()).then_some(len)
}

fn too_large(shape: Vec<usize>) -> TensorError {
    TensorError::DenseShape {
        shape,
        reason: "it has more values than this machine can address".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor() -> SparseTensor {
        // Batch 1 of 2 first: rows need not be in grid order.
        let coords = vec![1, 0, 2, 1, 0, 0, 0, 0, 1, 1, 2, 3, 0, 1, 0, 1];
        let features: Vec<f32> = (0..12).map(|v| v as f32 - 5.0).collect();
        SparseTensor::new(coords, features, 3, &[2, 3, 4], 2).expect("valid")
    }

    #[test]
    fn both_layouts_place_every_value_and_zero_the_rest() {
        let x = tensor();
        let first = x.to_dense(DenseLayout::ChannelsFirst).expect("dense");
        let last = x.to_dense(DenseLayout::ChannelsLast).expect("dense");
        assert_eq!(first.shape(), &[2, 3, 2, 3, 4]);
        assert_eq!(last.shape(), &[2, 2, 3, 4, 3]);
        let mut expected_first = vec![0.0; 2 * 3 * 24];
        let mut expected_last = vec![0.0; 2 * 24 * 3];
        for row in 0..x.len() {
            let c = x.coord(row);
            let (b, lin) = (c[0] as usize, (c[1] * 12 + c[2] * 4 + c[3]) as usize);
            for ch in 0..3 {
                expected_first[(b * 3 + ch) * 24 + lin] = x.row(row)[ch];
                expected_last[(b * 24 + lin) * 3 + ch] = x.row(row)[ch];
            }
        }
        assert_eq!(first.data(), expected_first);
        assert_eq!(last.data(), expected_last);
        assert_eq!(
            (first.channels(), first.spatial_shape()),
            (3, &[2, 3, 4][..])
        );
        assert_eq!((last.channels(), last.spatial_shape()), (3, &[2, 3, 4][..]));
    }

    #[test]
    fn from_dense_inverts_to_dense_in_spconv_order() {
        let x = tensor();
        for layout in [DenseLayout::ChannelsFirst, DenseLayout::ChannelsLast] {
            let back =
                SparseTensor::from_dense(&x.to_dense(layout).expect("dense")).expect("sparse");
            // Sorted by (batch, z, y, x). Row 1 has one zero channel (features are
            // -5..7), not all zero, so every row stays.
            let mut order: Vec<usize> = (0..x.len()).collect();
            order.sort_by_key(|&r| x.coord(r).to_vec());
            let coords: Vec<i32> = order.iter().flat_map(|&r| x.coord(r).to_vec()).collect();
            let features: Vec<f32> = order.iter().flat_map(|&r| x.row(r).to_vec()).collect();
            assert_eq!(back.coords(), coords);
            assert_eq!(back.features(), features);
        }
    }

    #[test]
    fn from_dense_drops_all_zero_sites_and_keeps_nan() {
        let mut data = vec![0.0f32; 2 * 5]; // batch 1, 2 channels, 5 sites
        data[1] = -0.0; // channel 0 of site 1 only: −0.0 is zero, the site is dropped
        data[5 + 3] = f32::NAN; // channel 1 of site 3
        data[4] = 2.0; // channel 0 of site 4
        let grid = DenseGrid::new(data, vec![1, 2, 5], DenseLayout::ChannelsFirst).expect("grid");
        let x = SparseTensor::from_dense(&grid).expect("sparse");
        assert_eq!(x.coords(), &[0, 3, 0, 4]);
        assert_eq!(x.features()[0], 0.0);
        assert!(x.features()[1].is_nan());
        assert_eq!(&x.features()[2..], &[2.0, 0.0]);
    }

    #[test]
    fn bev_stacks_heights_into_channels() {
        let x = tensor();
        let bev = x.to_bev().expect("bev");
        assert_eq!(bev.shape(), &[2, 6, 3, 4]);
        assert_eq!(bev.channels(), 6);
        // Same memory as channels-first dense: channel c·D + d is channel c at height d.
        assert_eq!(
            bev.data(),
            x.to_dense(DenseLayout::ChannelsFirst)
                .expect("dense")
                .data()
        );
        for row in 0..x.len() {
            let c: Vec<usize> = x.coord(row).iter().map(|&v| v as usize).collect();
            let (b, z, y, xx) = (c[0], c[1], c[2], c[3]);
            for ch in 0..3 {
                assert_eq!(
                    bev.data()[((b * 6 + ch * 2 + z) * 3 + y) * 4 + xx],
                    x.row(row)[ch]
                );
            }
        }
        let flat = SparseTensor::new(vec![0, 1, 1], vec![1.0], 1, &[2, 2], 1).expect("valid");
        assert!(matches!(flat.to_bev(), Err(TensorError::DenseShape { .. })));
    }

    #[test]
    fn malformed_grids_are_errors() {
        let bad = |data: usize, shape: Vec<usize>| {
            DenseGrid::new(vec![0.0; data], shape, DenseLayout::ChannelsLast).unwrap_err()
        };
        for e in [
            bad(4, vec![1, 4]),
            bad(0, vec![1, 2, 3, 4, 5, 6, 7]),
            bad(6, vec![1, 2, 4]),
            bad(0, vec![0, 2, 4]),
            bad(0, vec![1, 0, 4]),
            bad(0, vec![usize::MAX, 2, 4]),
        ] {
            assert!(matches!(e, TensorError::DenseShape { .. }), "{e}");
        }
        // Zero channels is a valid (empty) grid, and so is its sparse tensor.
        let g = DenseGrid::new(Vec::new(), vec![1, 3, 0], DenseLayout::ChannelsLast).expect("grid");
        assert!(SparseTensor::from_dense(&g).expect("sparse").is_empty());
    }

    #[test]
    fn empty_tensors_give_zero_grids() {
        let x = SparseTensor::new(Vec::new(), Vec::new(), 2, &[3, 3], 2).expect("valid");
        let g = x.to_dense(DenseLayout::ChannelsFirst).expect("dense");
        assert_eq!(g.shape(), &[2, 2, 3, 3]);
        assert!(g.data().iter().all(|&v| v == 0.0));
    }
}
