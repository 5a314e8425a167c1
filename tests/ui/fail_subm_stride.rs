use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, stride: 2);
    Aniso = subm3d(in: 4, out: 16, stride: [1, 1, 2]);
}

fn main() {}
