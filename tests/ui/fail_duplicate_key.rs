use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, kernel: 3, kernel: 5);
}

fn main() {}
