//! Sparse tensors that live in device memory: [`DeviceCoords`] (the device twin of a
//! [`CoordSet`]) and [`DeviceTensor`] (coordinates plus features in the layer's storage dtype).
//!
//! A network keeps its activations here between layers: coordinates go up once, every
//! rulebook, plan and feature buffer after that is made on the device, and only the result
//! comes back. Identities are process-unique, like [`CoordSet`]'s, so device rulebooks can be
//! cached per coordinate set (see [`DeviceRulebookCache`](super::DeviceRulebookCache)).

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use sparsegen_codegen::DType;

use crate::tensor::{CoordSet, CoordSetId};

use super::error::CudaError;

/// Process-unique identity of a [`DeviceCoords`]: drawn from the same counter as
/// [`CoordSetId`], so no host and device set ever share one.
pub type DeviceCoordsId = CoordSetId;

/// Unique sites `[N, 1 + dims]` (batch, then spatial axes) in device memory.
///
/// Made by uploading a validated [`CoordSet`]
/// ([`CudaBackend::upload_coords`](super::CudaBackend::upload_coords)) or by a strided or
/// transposed rulebook build, whose output sites are made on the device (sorted
/// `(b, z, y, x)`, like the host's).
#[derive(Debug)]
pub struct DeviceCoords {
    id: DeviceCoordsId,
    coords: CudaSlice<i32>,
    len: usize,
    spatial_shape: Vec<u32>,
    batch_size: u32,
}

impl DeviceCoords {
    /// Wraps `coords`, which must hold `len · (1 + spatial_shape.len())` valid, unique sites
    /// (the caller made them: an upload of a [`CoordSet`] or a rulebook kernel).
    pub(crate) fn from_parts(
        coords: CudaSlice<i32>,
        len: usize,
        spatial_shape: Vec<u32>,
        batch_size: u32,
    ) -> Self {
        DeviceCoords {
            id: CoordSetId::fresh(),
            coords,
            len,
            spatial_shape,
            batch_size,
        }
    }

    /// The identity of this set.
    pub fn id(&self) -> DeviceCoordsId {
        self.id
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Spatial axes.
    pub fn dims(&self) -> usize {
        self.spatial_shape.len()
    }

    /// Values per site (`1 + dims`).
    pub fn width(&self) -> usize {
        1 + self.dims()
    }

    /// Extent of each spatial axis.
    pub fn spatial_shape(&self) -> &[u32] {
        &self.spatial_shape
    }

    /// Number of batch entries.
    pub fn batch_size(&self) -> u32 {
        self.batch_size
    }

    /// The device buffer (at least `len · width` values; may be longer).
    pub fn buffer(&self) -> &CudaSlice<i32> {
        &self.coords
    }
}

/// Features in device memory, in a layer's storage dtype: f32, or the 16-bit patterns of
/// f16/bf16 values.
#[derive(Debug)]
pub enum DeviceFeatures {
    /// fp32 storage.
    F32(CudaSlice<f32>),
    /// f16 bit patterns.
    F16(CudaSlice<u16>),
    /// bf16 bit patterns.
    Bf16(CudaSlice<u16>),
}

impl DeviceFeatures {
    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            DeviceFeatures::F32(_) => DType::F32,
            DeviceFeatures::F16(_) => DType::F16,
            DeviceFeatures::Bf16(_) => DType::Bf16,
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            DeviceFeatures::F32(s) => s.len(),
            DeviceFeatures::F16(s) | DeviceFeatures::Bf16(s) => s.len(),
        }
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<Self, CudaError> {
        let bytes = self.len() * self.dtype().size_bytes();
        let err = CudaError::driver("cuMemcpyDtoD", "features", bytes);
        Ok(match self {
            DeviceFeatures::F32(s) => DeviceFeatures::F32(s.try_clone().map_err(err)?),
            DeviceFeatures::F16(s) => DeviceFeatures::F16(s.try_clone().map_err(err)?),
            DeviceFeatures::Bf16(s) => DeviceFeatures::Bf16(s.try_clone().map_err(err)?),
        })
    }
}

/// A sparse tensor in device memory: sites, and `[N, channels]` features in a storage dtype.
#[derive(Debug)]
pub struct DeviceTensor {
    coords: Arc<DeviceCoords>,
    features: DeviceFeatures,
    channels: usize,
}

impl DeviceTensor {
    /// Features `[coords.len(), channels]` on `coords`.
    pub fn new(
        coords: Arc<DeviceCoords>,
        features: DeviceFeatures,
        channels: usize,
    ) -> Result<Self, CudaError> {
        let want = coords.len() * channels;
        if features.len() < want {
            return Err(CudaError::Shape {
                layer: "device tensor".into(),
                message: format!(
                    "{} feature values for {} sites × {channels} channels",
                    features.len(),
                    coords.len()
                ),
            });
        }
        Ok(DeviceTensor {
            coords,
            features,
            channels,
        })
    }

    /// The sites.
    pub fn coords(&self) -> &Arc<DeviceCoords> {
        &self.coords
    }

    /// The features.
    pub fn features(&self) -> &DeviceFeatures {
        &self.features
    }

    /// Channels per site.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.coords.len()
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        self.features.dtype()
    }
}

/// Checks that a host coordinate set can be described to the device kernels (int32 rows).
pub(crate) fn check_host_coords(set: &CoordSet) -> Result<(), CudaError> {
    if set.len() as u64 > i32::MAX as u64 {
        return Err(CudaError::TooLarge {
            layer: "coordinate upload".into(),
            what: "the number of sites",
            value: set.len() as u64,
            limit: i32::MAX as u64,
        });
    }
    Ok(())
}
