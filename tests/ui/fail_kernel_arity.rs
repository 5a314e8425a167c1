use sparsegen::prelude::*;

sparse_layer! {
    Short = subm3d(in: 4, out: 16, kernel: [3, 3]);
    Long = conv2d(in: 4, out: 16, stride: [2, 2, 2]);
}

fn main() {}
