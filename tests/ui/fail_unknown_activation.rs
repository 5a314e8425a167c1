use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, activation: gelu);
    Slope = subm3d(in: 4, out: 16, activation: leaky_relu(slope));
}

fn main() {}
