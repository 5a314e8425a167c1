// Every kind in every number of dimensions, with the builder's defaults.
use sparsegen::prelude::*;

sparse_layer! {
    S1 = subm1d(in: 2, out: 4);
    S2 = subm2d(in: 2, out: 4);
    S3 = subm3d(in: 2, out: 4);
    S4 = subm4d(in: 2, out: 4, kernel: 1);
    C1 = conv1d(in: 2, out: 4, stride: 2);
    C2 = conv2d(in: 2, out: 4, stride: 2);
    C3 = conv3d(in: 2, out: 4, stride: 2);
    C4 = conv4d(in: 2, out: 4, kernel: 2, stride: 2);
    I1 = inverse1d(of: C1, in: 4, out: 2);
    I2 = inverse2d(of: C2, in: 4, out: 2);
    I3 = inverse3d(of: C3, in: 4, out: 2);
    I4 = inverse4d(of: C4, in: 4, out: 2);
    D1 = deconv1d(in: 4, out: 2, kernel: 2, stride: 2);
    D2 = deconv2d(in: 4, out: 2, kernel: 2, stride: 2);
    D3 = deconv3d(in: 4, out: 2, kernel: 2, stride: 2);
    D4 = deconv4d(in: 4, out: 2, kernel: 2, stride: 2);
}

fn check<L: Layer>(kind: ConvKind, dims: usize, in_channels: usize, out_channels: usize) {
    assert_eq!(L::SPEC.kind, kind, "{}", L::NAME);
    assert_eq!(L::SPEC.dims(), dims, "{}", L::NAME);
    assert_eq!((L::IN, L::OUT), (in_channels, out_channels), "{}", L::NAME);
    assert_eq!(L::SPEC.validate(), Ok(()));
}

fn main() {
    use ConvKind::*;
    check::<S1>(Submanifold, 1, 2, 4);
    check::<S2>(Submanifold, 2, 2, 4);
    check::<S3>(Submanifold, 3, 2, 4);
    check::<S4>(Submanifold, 4, 2, 4);
    check::<C1>(Strided, 1, 2, 4);
    check::<C2>(Strided, 2, 2, 4);
    check::<C3>(Strided, 3, 2, 4);
    check::<C4>(Strided, 4, 2, 4);
    check::<I1>(Inverse, 1, 4, 2);
    check::<I2>(Inverse, 2, 4, 2);
    check::<I3>(Inverse, 3, 4, 2);
    check::<I4>(Inverse, 4, 4, 2);
    check::<D1>(Transposed, 1, 4, 2);
    check::<D2>(Transposed, 2, 4, 2);
    check::<D3>(Transposed, 3, 4, 2);
    check::<D4>(Transposed, 4, 4, 2);
    // Defaults are the builder's: kernel 3, stride 1, no bias, identity, f32.
    let built = LayerSpec::builder(ConvKind::Submanifold, 3).channels(2, 4).build().unwrap();
    assert_eq!(S3::SPEC, built);
    assert_eq!(I3::SPEC.stride, C3::SPEC.stride);
    assert_eq!(I4::SPEC.kernel, [2, 2, 2, 2]);
}
