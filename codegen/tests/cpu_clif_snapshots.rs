//! Snapshots of the CLIF text the CPU emitter generates for a representative set of layers.
//! The text is host-independent (System V, 64-bit pointers) and must stay byte-stable: a
//! change here is a change to every generated kernel and must be reviewed.
#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use sparsegen_codegen::cpu::{self, CpuStrategy, CpuTile};
use sparsegen_codegen::{Activation, ConvKind, LayerSpec};

fn clif(spec: &LayerSpec, strategy: CpuStrategy) -> String {
    let kernel = cpu::lower(spec, strategy, &CpuTile::default()).expect("lowers");
    let text = kernel.clif();
    // Byte-stable: lowering twice gives the same text and hash.
    let again = cpu::lower(spec, strategy, &CpuTile::default()).expect("lowers");
    assert_eq!(text, again.clif());
    assert_eq!(kernel.ir_hash(), again.ir_hash());
    text
}

fn subm(k: u32, cin: u32, cout: u32) -> sparsegen_codegen::LayerSpecBuilder {
    LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(cin, cout)
        .kernel(k)
}

#[test]
fn subm3_16_16_relu_direct() {
    let spec = subm(3, 16, 16)
        .activation(Activation::Relu)
        .build()
        .unwrap();
    insta::assert_snapshot!(clif(&spec, CpuStrategy::Direct));
}

#[test]
fn strided3_s2_32_64_direct() {
    let spec = LayerSpec::builder(ConvKind::Strided, 3)
        .channels(32, 64)
        .kernel(3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    insta::assert_snapshot!(clif(&spec, CpuStrategy::Direct));
}

#[test]
fn inverse3_64_32_gemm() {
    let spec = LayerSpec::builder(ConvKind::Inverse, 3)
        .channels(64, 32)
        .kernel(3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    insta::assert_snapshot!(clif(&spec, CpuStrategy::GemmCall));
}

#[test]
fn subm5_32_32_direct() {
    let spec = subm(5, 32, 32).build().unwrap();
    insta::assert_snapshot!(clif(&spec, CpuStrategy::Direct));
}

#[test]
fn subm3_grouped_bias_leaky_direct() {
    let spec = subm(3, 12, 6)
        .groups(3)
        .bias(true)
        .activation(Activation::leaky_relu(0.1))
        .build()
        .unwrap();
    insta::assert_snapshot!(clif(&spec, CpuStrategy::Direct));
}

#[test]
fn gemm_call_rejects_groups_with_a_typed_error() {
    let spec = subm(3, 8, 8).groups(2).build().unwrap();
    let err = cpu::lower(&spec, CpuStrategy::GemmCall, &CpuTile::default()).unwrap_err();
    assert!(
        err.to_string().contains("subm3_k3x3x3_c8x8_g2_f32"),
        "{err}"
    );
    let bad_tile = CpuTile {
        max_vectors: 0,
        ..CpuTile::default()
    };
    assert!(matches!(
        cpu::lower(&spec, CpuStrategy::Direct, &bad_tile),
        Err(cpu::CpuCodegenError::Tile { .. })
    ));
}

#[test]
fn subm3_16_16_relu_direct_two_rows() {
    let spec = subm(3, 16, 16)
        .activation(Activation::Relu)
        .build()
        .unwrap();
    let tile = CpuTile {
        rows: 2,
        max_vectors: 6,
        ..CpuTile::default()
    };
    let kernel = cpu::lower(&spec, CpuStrategy::Direct, &tile).expect("lowers");
    insta::assert_snapshot!(kernel.clif());
}
