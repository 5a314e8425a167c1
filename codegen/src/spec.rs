//! `LayerSpec`: the one IR that describes a sparse convolution layer, and the one place
//! where its rules live.
//!
//! Every path that creates a layer (the `sparse_layer!` macro at compile time, the
//! [`LayerSpecBuilder`] at run time, the network loader) ends in [`LayerSpec::validate`], so
//! a rule is written once and its message is the same wherever a user meets it. This module
//! is plain data: it knows nothing about coordinates, devices or kernels.
//!
//! Axes beyond `dims` are *neutral* (kernel 1, stride 1, padding 0, dilation 1, output
//! padding 0), so two specs that describe the same layer compare and hash equal.

use std::fmt;

/// The largest number of spatial dimensions a layer may have.
pub const MAX_DIMS: usize = 4;

/// The largest kernel volume (product of the kernel sizes) a layer may have.
pub const MAX_KERNEL_VOLUME: u32 = 1 << 14;

/// What kind of sparse convolution a layer is; decides how its rulebook is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvKind {
    /// Submanifold convolution (spconv `SubMConv`): the output sites are the input sites and
    /// the kernel is centred on each of them. Needs stride 1 and odd kernels.
    Submanifold,
    /// Regular sparse convolution (spconv `SparseConv`): output sites are every site reached by
    /// an input through the kernel, usually with stride > 1 (downsampling).
    Strided,
    /// Inverse convolution (spconv `SparseInverseConv`): reuses the rulebook of a paired
    /// strided convolution with inputs and outputs swapped, restoring its input sites.
    /// Its geometry fields are those of the paired strided convolution.
    Inverse,
    /// Transposed sparse convolution (spconv `SparseConvTranspose`): an input at `p` feeds the
    /// output at `p·stride − padding + k·dilation` (upsampling to new sites).
    Transposed,
}

impl ConvKind {
    /// A short lowercase name used in kernel names and messages (`subm`, `conv`, `inverse`, `deconv`).
    pub const fn short_name(self) -> &'static str {
        match self {
            ConvKind::Submanifold => "subm",
            ConvKind::Strided => "conv",
            ConvKind::Inverse => "inverse",
            ConvKind::Transposed => "deconv",
        }
    }
}

/// An activation fused into the layer's epilogue (applied after the bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// No activation: the epilogue stores `acc + bias`.
    #[default]
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` if `x ≥ 0`, else `slope · x`. The slope is stored as its IEEE-754 bits so the spec
    /// stays `Eq + Hash`; build it with [`Activation::leaky_relu`].
    LeakyRelu {
        /// Bits of the negative slope (`f32::to_bits`).
        negative_slope_bits: u32,
    },
}

impl Activation {
    /// A leaky ReLU with the given negative slope.
    pub const fn leaky_relu(negative_slope: f32) -> Self {
        Activation::LeakyRelu {
            negative_slope_bits: negative_slope.to_bits(),
        }
    }

    /// Applies the activation to one value (the reference semantics every backend matches).
    /// NaN propagates through every activation except where the comparison decides otherwise
    /// (`Relu` of NaN is NaN: `f32::max` is not used on purpose).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            // `clamp` keeps NaN (and −0.0) as they are.
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::LeakyRelu {
                negative_slope_bits,
            } => {
                if x < 0.0 {
                    x * f32::from_bits(negative_slope_bits)
                } else {
                    x
                }
            }
        }
    }

    /// The name used in the DSL and in kernel names (`identity`, `relu`, `relu6`, `leaky_relu`).
    pub const fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu { .. } => "leaky_relu",
        }
    }

    /// The activation names the DSL accepts (those without parameters), for error messages.
    pub const NAMES: &'static [&'static str] = &["identity", "relu", "relu6", "leaky_relu"];

    /// Parses a parameterless activation name; `leaky_relu` gets PyTorch's default slope 0.01.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "identity" | "none" => Activation::Identity,
            "relu" => Activation::Relu,
            "relu6" => Activation::Relu6,
            "leaky_relu" => Activation::leaky_relu(0.01),
            _ => return None,
        })
    }
}

/// The element type a layer computes in (accumulation is always at least f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// IEEE single precision: exact fp32 results (the CPU's only type).
    #[default]
    F32,
    /// IEEE half precision storage, f32 accumulation (GPU tensor cores).
    F16,
    /// bfloat16 storage, f32 accumulation (GPU tensor cores).
    Bf16,
}

impl DType {
    /// The lowercase name used in kernel names and the DSL (`f32`, `f16`, `bf16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Parses `f32`, `f16` or `bf16`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
}

/// A field of a [`LayerSpec`]; names the culprit of a [`SpecError`] so the macro can point
/// at the right key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `dims`.
    Dims,
    /// `in`: input channels.
    InChannels,
    /// `out`: output channels.
    OutChannels,
    /// `groups`.
    Groups,
    /// `kernel`.
    Kernel,
    /// `stride`.
    Stride,
    /// `padding`.
    Padding,
    /// `dilation`.
    Dilation,
    /// `output_padding`.
    OutputPadding,
}

impl Field {
    /// The key that sets this field in the DSL and the builder.
    pub const fn key(self) -> &'static str {
        match self {
            Field::Dims => "dims",
            Field::InChannels => "in",
            Field::OutChannels => "out",
            Field::Groups => "groups",
            Field::Kernel => "kernel",
            Field::Stride => "stride",
            Field::Padding => "padding",
            Field::Dilation => "dilation",
            Field::OutputPadding => "output_padding",
        }
    }
}

/// Why a layer description is not a valid layer. Each message says what is wrong and how to
/// fix it; [`SpecError::field`] names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `dims` outside 1..=4.
    #[error("a layer has 1 to {MAX_DIMS} spatial dimensions, not {0}")]
    Dims(usize),
    /// A channel count or `groups` is zero.
    #[error("`{}` must be at least 1", .0.key())]
    Zero(Field),
    /// A per-axis size is zero.
    #[error("`{}` must be at least 1 on every axis, but axis {axis} is 0", field.key())]
    ZeroAxis {
        /// The field.
        field: Field,
        /// The axis (0 = the first spatial axis, z in 3-D).
        axis: usize,
    },
    /// A per-axis list has the wrong number of entries.
    #[error("`{}` has {got} values but the layer has {dims} spatial dimensions: give one value for all axes or exactly {dims}", field.key())]
    Arity {
        /// The field.
        field: Field,
        /// How many values were given.
        got: usize,
        /// The layer's dims.
        dims: usize,
    },
    /// Channels not divisible by groups.
    #[error("`{}` = {channels} is not divisible by `groups` = {groups}: use a group count that divides both channel counts", field.key())]
    Groups {
        /// `in` or `out`.
        field: Field,
        /// The channel count.
        channels: u32,
        /// The group count.
        groups: u32,
    },
    /// Submanifold with stride ≠ 1.
    #[error(
        "a submanifold convolution keeps its input sites, so its stride must be 1 (axis {axis} has {stride}); use a strided `conv` to downsample"
    )]
    SubmanifoldStride {
        /// The axis.
        axis: usize,
        /// The stride given.
        stride: u32,
    },
    /// Submanifold with an even kernel.
    #[error("a submanifold convolution centres its kernel on each site, so kernel sizes must be odd (axis {axis} has {size}); use {} or {}", size - 1, size + 1)]
    SubmanifoldEvenKernel {
        /// The axis.
        axis: usize,
        /// The even size.
        size: u32,
    },
    /// Submanifold with explicit padding.
    #[error(
        "a submanifold convolution is padded implicitly by its centred kernel; remove `padding`"
    )]
    SubmanifoldPadding,
    /// Output padding on a kind that has none.
    #[error("`output_padding` only applies to a transposed convolution")]
    OutputPaddingKind,
    /// Output padding not smaller than stride or dilation.
    #[error(
        "`output_padding` must be smaller than the stride or the dilation on each axis (axis {axis}: {value})"
    )]
    OutputPaddingTooLarge {
        /// The axis.
        axis: usize,
        /// The value given.
        value: u32,
    },
    /// Kernel volume above [`MAX_KERNEL_VOLUME`].
    #[error("kernel volume {0} is larger than the supported {MAX_KERNEL_VOLUME}")]
    KernelVolume(u64),
    /// A neutral axis beyond `dims` has a non-neutral value (only reachable by building the
    /// struct by hand).
    #[error("axis {axis} is beyond the layer's {dims} dimensions but `{}` is not neutral there", field.key())]
    UnusedAxis {
        /// The field.
        field: Field,
        /// The axis.
        axis: usize,
        /// The layer's dims.
        dims: usize,
    },
}

impl SpecError {
    /// The field at fault.
    pub fn field(&self) -> Field {
        match self {
            SpecError::Dims(_) => Field::Dims,
            SpecError::Zero(f) => *f,
            SpecError::ZeroAxis { field, .. }
            | SpecError::Arity { field, .. }
            | SpecError::Groups { field, .. }
            | SpecError::UnusedAxis { field, .. } => *field,
            SpecError::SubmanifoldStride { .. } => Field::Stride,
            SpecError::SubmanifoldEvenKernel { .. } | SpecError::KernelVolume(_) => Field::Kernel,
            SpecError::SubmanifoldPadding => Field::Padding,
            SpecError::OutputPaddingKind | SpecError::OutputPaddingTooLarge { .. } => {
                Field::OutputPadding
            }
        }
    }
}

/// The description of one sparse convolution layer. Plain data; see [`LayerSpec::validate`]
/// for the rules and [`LayerSpec::builder`] to make one with validation.
///
/// Weights of such a layer are laid out as spconv 2.x does (`[Cout, K0, .., K{dims-1},
/// Cin/groups]`, "KRSC"), and the kernel offset index is row-major over the kernel axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    /// Number of spatial dimensions, 1..=4.
    pub dims: u8,
    /// The kind of convolution.
    pub kind: ConvKind,
    /// Input feature channels.
    pub in_channels: u32,
    /// Output feature channels.
    pub out_channels: u32,
    /// Channel groups; both channel counts are divisible by it.
    pub groups: u32,
    /// Kernel size per axis (neutral 1 beyond `dims`).
    pub kernel: [u32; MAX_DIMS],
    /// Stride per axis (neutral 1 beyond `dims`).
    pub stride: [u32; MAX_DIMS],
    /// Padding per axis (neutral 0 beyond `dims`).
    pub padding: [u32; MAX_DIMS],
    /// Dilation per axis (neutral 1 beyond `dims`).
    pub dilation: [u32; MAX_DIMS],
    /// Output padding per axis, transposed convolution only (neutral 0).
    pub output_padding: [u32; MAX_DIMS],
    /// Whether the layer adds a bias per output channel.
    pub bias: bool,
    /// The activation fused into the epilogue.
    pub activation: Activation,
    /// The element type the layer computes in.
    pub dtype: DType,
}

impl LayerSpec {
    /// Starts a builder for a layer of `kind` over `dims` spatial dimensions.
    ///
    /// ```
    /// use sparsegen_codegen::{ConvKind, LayerSpec};
    /// let spec = LayerSpec::builder(ConvKind::Strided, 3)
    ///     .channels(16, 32)
    ///     .kernel(3)
    ///     .stride(2)
    ///     .padding(1)
    ///     .build()?;
    /// assert_eq!(spec.kernel_volume(), 27);
    /// assert_eq!(spec.kernel_name(), "conv3_k3x3x3_s2x2x2_p1x1x1_c16x32_f32");
    /// # Ok::<(), sparsegen_codegen::SpecError>(())
    /// ```
    pub fn builder(kind: ConvKind, dims: usize) -> LayerSpecBuilder {
        LayerSpecBuilder::new(kind, dims)
    }

    /// The spatial dimensions as a `usize`.
    pub const fn dims(&self) -> usize {
        self.dims as usize
    }

    /// Checks every rule a layer must satisfy. The only place these rules are written.
    pub fn validate(&self) -> Result<(), SpecError> {
        let dims = self.dims();
        if dims == 0 || dims > MAX_DIMS {
            return Err(SpecError::Dims(dims));
        }
        for (field, v) in [
            (Field::InChannels, self.in_channels),
            (Field::OutChannels, self.out_channels),
            (Field::Groups, self.groups),
        ] {
            if v == 0 {
                return Err(SpecError::Zero(field));
            }
        }
        for (field, channels) in [
            (Field::InChannels, self.in_channels),
            (Field::OutChannels, self.out_channels),
        ] {
            if channels % self.groups != 0 {
                return Err(SpecError::Groups {
                    field,
                    channels,
                    groups: self.groups,
                });
            }
        }
        for (field, values, neutral) in [
            (Field::Kernel, &self.kernel, 1),
            (Field::Stride, &self.stride, 1),
            (Field::Dilation, &self.dilation, 1),
            (Field::Padding, &self.padding, 0),
            (Field::OutputPadding, &self.output_padding, 0),
        ] {
            for (axis, &v) in values.iter().enumerate() {
                if axis >= dims {
                    if v != neutral {
                        return Err(SpecError::UnusedAxis { field, axis, dims });
                    }
                } else if neutral == 1 && v == 0 {
                    return Err(SpecError::ZeroAxis { field, axis });
                }
            }
        }
        let volume: u64 = self.kernel.iter().map(|&k| u64::from(k)).product();
        if volume > u64::from(MAX_KERNEL_VOLUME) {
            return Err(SpecError::KernelVolume(volume));
        }
        match self.kind {
            ConvKind::Submanifold => {
                for axis in 0..dims {
                    if self.stride[axis] != 1 {
                        return Err(SpecError::SubmanifoldStride {
                            axis,
                            stride: self.stride[axis],
                        });
                    }
                    if self.kernel[axis].is_multiple_of(2) {
                        return Err(SpecError::SubmanifoldEvenKernel {
                            axis,
                            size: self.kernel[axis],
                        });
                    }
                }
                if self.padding.iter().any(|&p| p != 0) {
                    return Err(SpecError::SubmanifoldPadding);
                }
            }
            ConvKind::Strided | ConvKind::Inverse => {}
            ConvKind::Transposed => {
                for axis in 0..dims {
                    let value = self.output_padding[axis];
                    if value != 0 && value >= self.stride[axis].max(self.dilation[axis]) {
                        return Err(SpecError::OutputPaddingTooLarge { axis, value });
                    }
                }
            }
        }
        if self.kind != ConvKind::Transposed && self.output_padding.iter().any(|&p| p != 0) {
            return Err(SpecError::OutputPaddingKind);
        }
        Ok(())
    }

    /// Number of kernel offsets (product of the kernel sizes).
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().map(|&k| k as usize).product()
    }

    /// Input channels per group.
    pub const fn in_per_group(&self) -> u32 {
        self.in_channels / self.groups
    }

    /// Output channels per group.
    pub const fn out_per_group(&self) -> u32 {
        self.out_channels / self.groups
    }

    /// Number of weight elements: `Cout · kernel volume · Cin/groups`.
    pub fn weight_len(&self) -> usize {
        self.out_channels as usize * self.kernel_volume() * self.in_per_group() as usize
    }

    /// The weight shape in spconv's KRSC layout: `[Cout, K0, .., K{dims-1}, Cin/groups]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.out_channels as usize];
        shape.extend(self.kernel[..self.dims()].iter().map(|&k| k as usize));
        shape.push(self.in_per_group() as usize);
        shape
    }

    /// The part of the spec that decides the rulebook.
    pub fn geometry(&self) -> crate::Geometry {
        crate::Geometry {
            dims: self.dims,
            kind: self.kind,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            output_padding: self.output_padding,
        }
    }

    /// A name that identifies the generated kernel, derived from the spec alone, e.g.
    /// `subm3_k3x3x3_c16x32_f32` or `conv3_k3x3x3_s2x2x2_c32x64_g2_relu_f16`. Only what is
    /// not neutral is named.
    pub fn kernel_name(&self) -> String {
        let mut name = self.geometry().name();
        name += &format!("_c{}x{}", self.in_channels, self.out_channels);
        if self.groups != 1 {
            name += &format!("_g{}", self.groups);
        }
        if self.bias {
            name += "_bias";
        }
        if self.activation != Activation::Identity {
            name += "_";
            name += self.activation.name();
        }
        name += "_";
        name += self.dtype.name();
        name
    }
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kernel_name())
    }
}

/// One value for every axis, or one value per axis; what the builder and the DSL accept for
/// `kernel`, `stride`, `padding`, `dilation` and `output_padding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extent {
    /// The same value on every axis.
    Uniform(u32),
    /// One value per axis; its length must equal the layer's dims.
    PerAxis(Vec<u32>),
}

impl From<u32> for Extent {
    fn from(v: u32) -> Self {
        Extent::Uniform(v)
    }
}

impl<const N: usize> From<[u32; N]> for Extent {
    fn from(v: [u32; N]) -> Self {
        Extent::PerAxis(v.to_vec())
    }
}

impl From<&[u32]> for Extent {
    fn from(v: &[u32]) -> Self {
        Extent::PerAxis(v.to_vec())
    }
}

impl From<Vec<u32>> for Extent {
    fn from(v: Vec<u32>) -> Self {
        Extent::PerAxis(v)
    }
}

impl Extent {
    fn resolve(
        &self,
        field: Field,
        dims: usize,
        neutral: u32,
    ) -> Result<[u32; MAX_DIMS], SpecError> {
        let mut out = [neutral; MAX_DIMS];
        match self {
            Extent::Uniform(v) => out[..dims.min(MAX_DIMS)].fill(*v),
            Extent::PerAxis(values) => {
                if values.len() != dims {
                    return Err(SpecError::Arity {
                        field,
                        got: values.len(),
                        dims,
                    });
                }
                out[..dims].copy_from_slice(values);
            }
        }
        Ok(out)
    }
}

/// Builds a [`LayerSpec`] at run time with the same rules and messages as the DSL.
/// Unset fields take the defaults: groups 1, kernel 3, stride 1, padding 0, dilation 1,
/// no bias, identity activation, f32.
#[derive(Debug, Clone)]
pub struct LayerSpecBuilder {
    kind: ConvKind,
    dims: usize,
    in_channels: u32,
    out_channels: u32,
    groups: u32,
    kernel: Extent,
    stride: Extent,
    padding: Extent,
    dilation: Extent,
    output_padding: Extent,
    bias: bool,
    activation: Activation,
    dtype: DType,
}

impl LayerSpecBuilder {
    /// A builder with the defaults above and zero channels (which `build` rejects until set).
    pub fn new(kind: ConvKind, dims: usize) -> Self {
        LayerSpecBuilder {
            kind,
            dims,
            in_channels: 0,
            out_channels: 0,
            groups: 1,
            kernel: Extent::Uniform(3),
            stride: Extent::Uniform(1),
            padding: Extent::Uniform(0),
            dilation: Extent::Uniform(1),
            output_padding: Extent::Uniform(0),
            bias: false,
            activation: Activation::Identity,
            dtype: DType::F32,
        }
    }

    /// Input and output channels.
    pub fn channels(mut self, in_channels: u32, out_channels: u32) -> Self {
        self.in_channels = in_channels;
        self.out_channels = out_channels;
        self
    }

    /// Input channels.
    pub fn in_channels(mut self, v: u32) -> Self {
        self.in_channels = v;
        self
    }

    /// Output channels.
    pub fn out_channels(mut self, v: u32) -> Self {
        self.out_channels = v;
        self
    }

    /// Channel groups.
    pub fn groups(mut self, v: u32) -> Self {
        self.groups = v;
        self
    }

    /// Kernel size: one value or one per axis.
    pub fn kernel(mut self, v: impl Into<Extent>) -> Self {
        self.kernel = v.into();
        self
    }

    /// Stride: one value or one per axis.
    pub fn stride(mut self, v: impl Into<Extent>) -> Self {
        self.stride = v.into();
        self
    }

    /// Padding: one value or one per axis.
    pub fn padding(mut self, v: impl Into<Extent>) -> Self {
        self.padding = v.into();
        self
    }

    /// Dilation: one value or one per axis.
    pub fn dilation(mut self, v: impl Into<Extent>) -> Self {
        self.dilation = v.into();
        self
    }

    /// Output padding (transposed convolution only): one value or one per axis.
    pub fn output_padding(mut self, v: impl Into<Extent>) -> Self {
        self.output_padding = v.into();
        self
    }

    /// Whether the layer has a bias.
    pub fn bias(mut self, v: bool) -> Self {
        self.bias = v;
        self
    }

    /// The fused activation.
    pub fn activation(mut self, v: Activation) -> Self {
        self.activation = v;
        self
    }

    /// The compute element type.
    pub fn dtype(mut self, v: DType) -> Self {
        self.dtype = v;
        self
    }

    /// Resolves per-axis values and validates.
    pub fn build(&self) -> Result<LayerSpec, SpecError> {
        let dims = self.dims;
        if dims == 0 || dims > MAX_DIMS {
            return Err(SpecError::Dims(dims));
        }
        let spec = LayerSpec {
            dims: dims as u8,
            kind: self.kind,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            groups: self.groups,
            kernel: self.kernel.resolve(Field::Kernel, dims, 1)?,
            stride: self.stride.resolve(Field::Stride, dims, 1)?,
            padding: self.padding.resolve(Field::Padding, dims, 0)?,
            dilation: self.dilation.resolve(Field::Dilation, dims, 1)?,
            output_padding: self.output_padding.resolve(Field::OutputPadding, dims, 0)?,
            bias: self.bias,
            activation: self.activation,
            dtype: self.dtype,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subm(cin: u32, cout: u32) -> LayerSpecBuilder {
        LayerSpec::builder(ConvKind::Submanifold, 3).channels(cin, cout)
    }

    #[test]
    fn builds_defaults_and_names() {
        let spec = subm(16, 32).build().unwrap();
        assert_eq!(spec.kernel, [3, 3, 3, 1]);
        assert_eq!(spec.kernel_name(), "subm3_k3x3x3_c16x32_f32");
        assert_eq!(spec.weight_shape(), vec![32, 3, 3, 3, 16]);
        let aniso = subm(64, 64)
            .kernel([3, 1, 3])
            .dilation(2)
            .groups(4)
            .activation(Activation::Relu);
        assert_eq!(
            aniso.build().unwrap().kernel_name(),
            "subm3_k3x1x3_d2x2x2_c64x64_g4_relu_f32"
        );
    }

    #[test]
    fn rejects_each_rule_with_its_field() {
        let cases: Vec<(LayerSpecBuilder, Field)> = vec![
            (
                LayerSpec::builder(ConvKind::Submanifold, 5).channels(1, 1),
                Field::Dims,
            ),
            (subm(0, 4), Field::InChannels),
            (subm(4, 0), Field::OutChannels),
            (subm(4, 4).groups(0), Field::Groups),
            (subm(6, 4).groups(4), Field::InChannels),
            (subm(4, 6).groups(4), Field::OutChannels),
            (subm(4, 4).stride(2), Field::Stride),
            (subm(4, 4).kernel(2), Field::Kernel),
            (subm(4, 4).kernel([3, 3]), Field::Kernel),
            (subm(4, 4).padding(1), Field::Padding),
            (subm(4, 4).dilation([1, 0, 1]), Field::Dilation),
            (subm(4, 4).output_padding(1), Field::OutputPadding),
            (subm(4, 4).kernel(41), Field::Kernel),
            (
                LayerSpec::builder(ConvKind::Transposed, 3)
                    .channels(4, 4)
                    .stride(2)
                    .output_padding(2),
                Field::OutputPadding,
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().expect_err("must be rejected");
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn messages_say_how_to_fix() {
        let err = subm(4, 4).kernel(4).build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "a submanifold convolution centres its kernel on each site, so kernel sizes must be odd (axis 0 has 4); use 3 or 5"
        );
    }

    #[test]
    fn neutral_axes_make_equal_specs() {
        let a = subm(4, 4).kernel(3).build().unwrap();
        let b = subm(4, 4).kernel([3, 3, 3]).build().unwrap();
        assert_eq!(a, b);
        let mut hand = a;
        hand.kernel[3] = 3;
        assert!(matches!(
            hand.validate(),
            Err(SpecError::UnusedAxis { axis: 3, .. })
        ));
    }

    #[test]
    fn activations_follow_reference_semantics() {
        assert_eq!(Activation::Relu.apply(-2.0), 0.0);
        assert!(Activation::Relu.apply(f32::NAN).is_nan());
        assert_eq!(Activation::Relu6.apply(7.0), 6.0);
        assert_eq!(Activation::leaky_relu(0.5).apply(-2.0), -1.0);
        assert_eq!(
            Activation::from_name("leaky_relu"),
            Some(Activation::leaky_relu(0.01))
        );
    }
}
