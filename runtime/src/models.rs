//! Sparse backbones of published detectors, described by the names their checkpoints use,
//! so a trained model loads with one call.
//!
//! [`voxel_backbone_8x`] is OpenPCDet's `VoxelBackBone8x` (SECOND, PV-RCNN, Part-A², Voxel
//! R-CNN) and [`voxel_res_backbone_8x`] its `VoxelResBackBone8x` (CenterPoint, PV-RCNN++).
//! In a detector's checkpoint (`torch.load(ckpt)["model_state"]`, exported to safetensors)
//! their keys sit under `backbone_3d.`:
//!
//! ```no_run
//! use sparsegen_runtime::io::safetensors::Checkpoint;
//! use sparsegen_runtime::{Engine, models};
//!
//! let checkpoint = Checkpoint::read("second.safetensors")?;
//! let backbone = models::voxel_backbone_8x(4)?.prefix("backbone_3d.").load(&checkpoint)?;
//! # let voxels: sparsegen_runtime::SparseTensor = unimplemented!();
//! let (out, scales) = backbone.forward_all(&Engine::reference(), &voxels)?;
//! let x_conv4 = &scales["x_conv4"]; // the multi-scale features PV-RCNN's heads read
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The input's spatial shape must be OpenPCDet's `sparse_shape`, `grid_size[::-1] + [1, 0,
//! 0]` (`[41, 1600, 1408]` for KITTI's SECOND grid): the strided layers' output shapes
//! follow from it. Every batch norm is folded into the convolution before it, so the loaded
//! networks are 12 and 21 fused convolutions. `tests/models.rs` checks both against spconv
//! 2.3.8 running modules built with OpenPCDet's names.

use sparsegen_codegen::{ConvKind, LayerSpec, SpecError};

use crate::network::NetworkBuilder;

/// OpenPCDet's batch norms: `BatchNorm1d(eps=1e-3, momentum=0.01)`.
const BN_EPS: f32 = 1e-3;

fn subm(cin: u32, cout: u32, bias: bool) -> Result<LayerSpec, SpecError> {
    LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(cin, cout)
        .bias(bias)
        .build()
}

fn strided(cin: u32, cout: u32, padding: [u32; 3]) -> Result<LayerSpec, SpecError> {
    LayerSpec::builder(ConvKind::Strided, 3)
        .channels(cin, cout)
        .stride(2)
        .padding(padding.to_vec())
        .build()
}

/// `post_act_block`: `SparseSequential(conv, BatchNorm1d, ReLU)` named `{name}.0/1/2`.
fn post_act(b: NetworkBuilder, name: &str, conv: LayerSpec) -> NetworkBuilder {
    b.conv(format!("{name}.0"), conv)
        .batch_norm(format!("{name}.1"), BN_EPS)
        .relu()
}

/// `SparseBasicBlock`: SubM conv (with bias) → BN → ReLU → SubM conv → BN, plus the
/// block's input, → ReLU; named `{name}.conv1/bn1/conv2/bn2`.
fn basic_block(b: NetworkBuilder, name: &str, channels: u32) -> Result<NetworkBuilder, SpecError> {
    let tag = format!("{name}.identity");
    Ok(b.save(&tag)
        .conv(format!("{name}.conv1"), subm(channels, channels, true)?)
        .batch_norm(format!("{name}.bn1"), BN_EPS)
        .relu()
        .conv(format!("{name}.conv2"), subm(channels, channels, true)?)
        .batch_norm(format!("{name}.bn2"), BN_EPS)
        .add_saved(&tag)
        .relu())
}

/// The input stem shared by both backbones: `conv_input`, a SubM 3³ conv to 16 channels.
fn stem(input_channels: usize) -> Result<NetworkBuilder, SpecError> {
    let cin = u32::try_from(input_channels).unwrap_or(u32::MAX);
    Ok(NetworkBuilder::new(input_channels)
        .conv("conv_input.0", subm(cin, 16, false)?)
        .batch_norm("conv_input.1", BN_EPS)
        .relu())
}

/// `conv_out`: a (3, 1, 1) conv with stride (2, 1, 1) and no padding (OpenPCDet's default
/// `last_pad = 0`) to 128 channels.
fn conv_out(b: NetworkBuilder, cin: u32) -> Result<NetworkBuilder, SpecError> {
    let spec = LayerSpec::builder(ConvKind::Strided, 3)
        .channels(cin, 128)
        .kernel(vec![3, 1, 1])
        .stride(vec![2, 1, 1])
        .build()?;
    Ok(post_act(b, "conv_out", spec))
}

/// OpenPCDet's `VoxelBackBone8x` on `input_channels` voxel features: 16, 32, 64, 64
/// channels at strides 1, 2, 4, 8 (saved as `x_conv1`..`x_conv4`), then `conv_out` to 128.
/// Its keys are the module's own (`conv_input.0.weight`, `conv2.0.0.weight`, ...); add the
/// detector's prefix with [`NetworkBuilder::prefix`].
pub fn voxel_backbone_8x(input_channels: usize) -> Result<NetworkBuilder, SpecError> {
    let mut b = post_act(stem(input_channels)?, "conv1.0", subm(16, 16, false)?).save("x_conv1");
    let stages = [
        ("conv2", 16, 32, [1, 1, 1]),
        ("conv3", 32, 64, [1, 1, 1]),
        ("conv4", 64, 64, [0, 1, 1]),
    ];
    for (i, (name, cin, cout, padding)) in stages.into_iter().enumerate() {
        b = post_act(b, &format!("{name}.0"), strided(cin, cout, padding)?);
        b = post_act(b, &format!("{name}.1"), subm(cout, cout, false)?);
        b = post_act(b, &format!("{name}.2"), subm(cout, cout, false)?);
        b = b.save(format!("x_conv{}", i + 2));
    }
    conv_out(b, 64)
}

/// OpenPCDet's `VoxelResBackBone8x` (CenterPoint's backbone): like [`voxel_backbone_8x`]
/// with two residual `SparseBasicBlock`s per stage and 128 channels at stride 8.
pub fn voxel_res_backbone_8x(input_channels: usize) -> Result<NetworkBuilder, SpecError> {
    let mut b = stem(input_channels)?;
    b = basic_block(b, "conv1.0", 16)?;
    b = basic_block(b, "conv1.1", 16)?.save("x_conv1");
    let stages = [
        ("conv2", 16, 32, [1, 1, 1]),
        ("conv3", 32, 64, [1, 1, 1]),
        ("conv4", 64, 128, [0, 1, 1]),
    ];
    for (i, (name, cin, cout, padding)) in stages.into_iter().enumerate() {
        b = post_act(b, &format!("{name}.0"), strided(cin, cout, padding)?);
        b = basic_block(b, &format!("{name}.1"), cout)?;
        b = basic_block(b, &format!("{name}.2"), cout)?;
        b = b.save(format!("x_conv{}", i + 2));
    }
    conv_out(b, 128)
}
