use sparsegen::prelude::*;

sparse_layer! {
    Padded = subm3d(in: 4, out: 16, padding: 1);
    OutPad = conv3d(in: 4, out: 16, stride: 2, output_padding: 1);
    TooMuch = deconv3d(in: 4, out: 16, stride: 2, output_padding: 2);
}

fn main() {}
