// Layers compose when their channels match, also in generic code; untyped layers and tensors
// convert in and out with typed errors. The macro needs no imports at the call site.
#![deny(missing_docs)]
//! A crate whose public layers are documented by the macro.

sparsegen::prelude::sparse_layer! {
    /// The stem.
    pub Stem = subm3d(in: 4, out: 16, bias: true);
    /// Downsampling.
    pub Down = conv3d(in: 16, out: 32, kernel: 2, stride: 2);
    /// Back up.
    pub Up = inverse3d(of: Down, in: 32, out: 16, activation: relu);
}

use sparsegen::prelude::*;

/// Two layers in a row, checked by the types.
fn chain<A: Layer, B: Layer<Input = A::Output>>(
    a: &A,
    b: &B,
    engine: &Engine,
    x: &A::Input,
) -> Result<B::Output, sparsegen::runtime::Error> {
    b.forward(engine, &a.forward(engine, x)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::reference();
    let coords = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1];
    let x: Features<4> = SparseTensor::new(coords, vec![1.0; 12], 4, &[4, 4, 4], 1)?.try_into()?;
    let stem = Stem::default();
    let down = Down::new();
    let mid: Features<32> = chain(&stem, &down, &engine, &x)?;
    let up = Up::new();
    let y: Features<16> = up.forward(&engine, &mid)?;
    assert_eq!(y.len(), x.len());

    // Out to the untyped world and back.
    let conv: SparseConv = stem.into_conv();
    let stem = Stem::try_from(conv.clone())?;
    assert_eq!(stem.conv().spec(), &Stem::SPEC);
    let err = Down::try_from(conv).unwrap_err();
    assert!(err.to_string().contains("4 → 16 channels instead of 16 → 32"), "{err}");
    let err = Features::<8>::new(y.into_tensor()).unwrap_err();
    assert!(err.to_string().contains("has 16 channels"), "{err}");
    Ok(())
}
