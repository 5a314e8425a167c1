use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(out: 16, kernel: 3);
}

fn main() {}
