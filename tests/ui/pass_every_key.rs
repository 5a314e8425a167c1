// Per-axis sizes, groups, bias, every activation and every dtype; each spec equals the one the
// runtime builder makes from the same settings.
use sparsegen::prelude::*;

sparse_layer! {
    /// Anisotropic, dilated, grouped, fused ReLU.
    pub Wide = subm3d(in: 64, out: 64, kernel: [3, 1, 3], dilation: 2, groups: 4, activation: relu);
    pub Down = conv3d(in: 16, out: 32, kernel: [3, 3, 2], stride: [2, 2, 1], padding: [1, 1, 0], dilation: [1, 2, 1], bias: true);
    pub Up = deconv2d(in: 8, out: 4, kernel: 3, stride: 2, output_padding: [1, 0], activation: relu6);
    pub Leaky = subm2d(in: 4, out: 4, activation: leaky_relu(0.2), dtype: f16);
    pub LeakyDefault = subm2d(in: 4, out: 4, activation: leaky_relu, dtype: bf16);
    pub Plain = subm1d(in: 4, out: 4, activation: identity, dtype: f32, bias: false);
}

fn main() {
    let b = LayerSpec::builder;
    assert_eq!(
        Wide::SPEC,
        b(ConvKind::Submanifold, 3).channels(64, 64).kernel([3, 1, 3]).dilation(2).groups(4)
            .activation(Activation::Relu).build().unwrap()
    );
    assert_eq!(
        Down::SPEC,
        b(ConvKind::Strided, 3).channels(16, 32).kernel([3, 3, 2]).stride([2, 2, 1])
            .padding([1, 1, 0]).dilation([1, 2, 1]).bias(true).build().unwrap()
    );
    assert_eq!(
        Up::SPEC,
        b(ConvKind::Transposed, 2).channels(8, 4).kernel(3).stride(2).output_padding([1, 0])
            .activation(Activation::Relu6).build().unwrap()
    );
    assert_eq!(Leaky::SPEC.activation, Activation::leaky_relu(0.2));
    assert_eq!(Leaky::SPEC.dtype, DType::F16);
    assert_eq!(LeakyDefault::SPEC.activation, Activation::from_name("leaky_relu").unwrap());
    assert_eq!(LeakyDefault::SPEC.dtype, DType::Bf16);
    assert_eq!(Plain::SPEC.kernel_name(), "subm1_k3_c4x4_f32");
    // Weights in spconv's KRSC layout; a bias exactly when the spec has one.
    assert_eq!(Down::SPEC.weight_shape(), vec![32, 3, 3, 2, 16]);
    assert!(Down::from_weights(vec![0.5; Down::SPEC.weight_len()], Some(vec![0.0; 32])).is_ok());
    assert!(Down::from_weights(vec![0.5; Down::SPEC.weight_len()], None).is_err());
    assert!(Wide::from_weights(vec![0.5; 3], None).is_err());
    assert_eq!(Wide::new().conv().weight().len(), 64 * 9 * 16);
}
