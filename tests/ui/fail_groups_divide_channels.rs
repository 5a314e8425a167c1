use sparsegen::prelude::*;

sparse_layer! {
    In = subm3d(in: 6, out: 16, groups: 4);
    Out = subm3d(in: 8, out: 6, groups: 4);
}

fn main() {}
