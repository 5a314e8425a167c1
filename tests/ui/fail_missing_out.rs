use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, kernel: 3);
}

fn main() {}
