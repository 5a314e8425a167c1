//! The runtime's typed errors. Every failure a user can cause (bad input, a layer that does
//! not fit its input, a file in the wrong format) or meet (no GPU, a JIT or NVRTC failure)
//! is a variant here with the context needed to act on it; nothing on these paths panics.

use std::path::PathBuf;

use sparsegen_codegen::{GeometryError, SpecError};

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid layer description.
    #[error("invalid layer: {0}")]
    Spec(#[from] SpecError),
    /// A layer's geometry cannot be applied to its input's spatial shape.
    #[error("layer {layer}: {source}")]
    Geometry {
        /// The layer's kernel name.
        layer: String,
        /// What does not fit.
        source: GeometryError,
    },
    /// A sparse tensor's data is not a valid sparse tensor.
    #[error("invalid sparse tensor: {0}")]
    Tensor(#[from] TensorError),
    /// The input's channels do not match the layer's.
    #[error("layer {layer} takes {expected} input channels but the tensor has {got}")]
    Channels {
        /// The layer's kernel name.
        layer: String,
        /// The layer's input channels.
        expected: usize,
        /// The tensor's channels.
        got: usize,
    },
    /// The input's dimensions do not match the layer's.
    #[error("layer {layer} is {expected}-dimensional but the tensor has {got} spatial dimensions")]
    Dims {
        /// The layer's kernel name.
        layer: String,
        /// The layer's dims.
        expected: usize,
        /// The tensor's dims.
        got: usize,
    },
    /// A weight or bias buffer has the wrong number of elements.
    #[error("layer {layer}: {what} has {got} elements but {expected} are needed (shape {shape:?})")]
    WeightShape {
        /// The layer's kernel name.
        layer: String,
        /// `weight` or `bias`.
        what: &'static str,
        /// Elements needed.
        expected: usize,
        /// Elements given.
        got: usize,
        /// The expected shape.
        shape: Vec<usize>,
    },
    /// An inverse convolution found no rulebook of its paired strided convolution.
    #[error(
        "inverse layer {layer}: no rulebook of a strided convolution with this geometry produced the input's coordinates; run the paired strided layer on the same engine first"
    )]
    NoPartner {
        /// The layer's kernel name.
        layer: String,
    },
    /// A network description does not fit itself (channels, tags) or its weights.
    #[error("network node {node}: {message}")]
    Network {
        /// The node's name (its checkpoint key, or a save tag).
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A network node failed; the source says how.
    #[error("network node {node}: {source}")]
    Node {
        /// The node's label (its name and what was folded into it).
        node: String,
        /// The layer's error.
        source: Box<Error>,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file has the wrong format, dtype or shape.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CUDA backend failed or is not available (no driver, no device, no NVRTC, a
    /// compiler failure, device memory exhausted, a size beyond its indexing).
    #[error("cuda backend: {0}")]
    Cuda(#[from] crate::cuda::CudaError),
    /// The CPU backend could not generate or JIT-compile a layer's kernel.
    #[error("cpu backend: layer {layer}: {message}")]
    Jit {
        /// The layer's kernel name.
        layer: String,
        /// What failed (the codegen or Cranelift error).
        message: String,
    },
    /// A voxelizer's settings or input cannot be used.
    #[error("voxelizer: {0}")]
    Voxelizer(String),
    /// A backend is not available here (no GPU, no driver, unsupported CPU) or failed.
    #[error("{backend} backend: {message}")]
    Backend {
        /// `cpu`, `cuda`, ...
        backend: &'static str,
        /// What happened.
        message: String,
    },
}

/// Why coordinates and features are not a valid sparse tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// `dims` outside 1..=4.
    #[error("a sparse tensor has 1 to 4 spatial dimensions, not {0}")]
    Dims(usize),
    /// The spatial shape has the wrong number of axes or a zero axis.
    #[error("spatial shape {shape:?} must have {dims} positive sizes")]
    Shape {
        /// The shape.
        shape: Vec<u32>,
        /// The tensor's dims.
        dims: usize,
    },
    /// The coordinate buffer is not a whole number of rows.
    #[error("{len} coordinate values are not a whole number of rows of {width} (batch + {dims} axes)", dims = width - 1)]
    CoordsLen {
        /// Values given.
        len: usize,
        /// Values per row.
        width: usize,
    },
    /// Feature rows ≠ coordinate rows.
    #[error("{feats} feature values are not {rows} rows of {channels} channels")]
    FeatureRows {
        /// Coordinate rows.
        rows: usize,
        /// Channels.
        channels: usize,
        /// Feature values given.
        feats: usize,
    },
    /// A coordinate is negative.
    #[error("row {row}: coordinate {coord:?} is negative")]
    Negative {
        /// The row.
        row: usize,
        /// Its coordinate (batch first).
        coord: Vec<i32>,
    },
    /// A coordinate is outside the spatial shape.
    #[error("row {row}: coordinate {coord:?} is outside the spatial shape {shape:?}")]
    OutOfBounds {
        /// The row.
        row: usize,
        /// Its coordinate (batch first).
        coord: Vec<i32>,
        /// The spatial shape.
        shape: Vec<u32>,
    },
    /// A batch index is ≥ the batch size.
    #[error("row {row}: batch index {batch} is not below the batch size {batch_size}")]
    Batch {
        /// The row.
        row: usize,
        /// Its batch index.
        batch: i32,
        /// The batch size.
        batch_size: u32,
    },
    /// Two rows have the same coordinate.
    #[error(
        "rows {first} and {second} have the same coordinate {coord:?}; sparse tensors need unique sites (merge or voxelize duplicates first)"
    )]
    Duplicate {
        /// The first row.
        first: usize,
        /// The second row.
        second: usize,
        /// The shared coordinate.
        coord: Vec<i32>,
    },
    /// Batch size times the grid volume does not fit into 64-bit keys.
    #[error(
        "batch size {batch_size} × spatial shape {shape:?} has more than 2^63 sites; shrink the grid"
    )]
    KeyOverflow {
        /// The batch size.
        batch_size: u32,
        /// The shape.
        shape: Vec<u32>,
    },
    /// A dense grid's shape is malformed, too large, or does not suit the operation.
    #[error("dense grid of shape {shape:?}: {reason}")]
    DenseShape {
        /// The shape (or, for a view that needs other axes, the spatial shape).
        shape: Vec<usize>,
        /// What is wrong.
        reason: String,
    },
    /// More rows than 32-bit row indices can address.
    #[error("{0} rows exceed the 2^31 − 1 rows a sparse tensor may have")]
    TooManyRows(usize),
}
