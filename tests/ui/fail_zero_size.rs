use sparsegen::prelude::*;

sparse_layer! {
    NoIn = subm3d(in: 0, out: 16);
    NoOut = conv3d(in: 4, out: 0);
    NoKernel = conv3d(in: 4, out: 16, kernel: [3, 0, 3]);
    NoStride = conv3d(in: 4, out: 16, stride: 0);
    NoDilation = subm3d(in: 4, out: 16, dilation: [1, 1, 0]);
    NoGroups = subm3d(in: 4, out: 16, groups: 0);
}

fn main() {}
