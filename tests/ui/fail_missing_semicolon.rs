use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16)
    Down = conv3d(in: 16, out: 32, stride: 2);
}

fn main() {}
