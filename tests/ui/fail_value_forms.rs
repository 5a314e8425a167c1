use sparsegen::prelude::*;

sparse_layer! {
    Named = subm3d(in: CHANNELS, out: 16);
    Negative = conv3d(in: 4, out: 16, padding: -1);
    Tuple = subm3d(in: 4, out: 16, kernel: (3, 3, 3));
    Flag = subm3d(in: 4, out: 16, bias: 1);
    Huge = subm3d(in: 4294967296, out: 16);
    Of = conv3d(in: 4, out: 16, of: Stem);
}

fn main() {}
