use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16);
    Down2 = conv2d(in: 16, out: 32, stride: 2);
    OfSubm = inverse3d(of: Stem, in: 16, out: 4);
    OfInverse = inverse2d(of: OfDown, in: 16, out: 32);
    OfDown = inverse2d(of: Down2, in: 32, out: 16);
    WrongDims = inverse3d(of: Down2, in: 32, out: 16);
    NoPartner = inverse3d(in: 32, out: 16);
    WithKernel = inverse2d(of: Down2, in: 32, out: 16, kernel: 3);
}

fn main() {}
