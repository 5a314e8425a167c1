use sparsegen::prelude::*;

sparse_layer! {
    Stem = submanifold3d(in: 4, out: 16);
    FiveD = subm5d(in: 4, out: 16);
}

fn main() {}
