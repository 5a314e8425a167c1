use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, dtype: f64);
}

fn main() {}
