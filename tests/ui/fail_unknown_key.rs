use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, strides: 1);
    Head = subm3d(in: 16, out: 2, colour: 3);
}

fn main() {}
