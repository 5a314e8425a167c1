use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, kernel: 2);
    Aniso = subm2d(in: 4, out: 16, kernel: [3, 4]);
}

fn main() {}
