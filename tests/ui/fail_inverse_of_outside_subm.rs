mod encoder {
    sparsegen::prelude::sparse_layer! {
        pub Stem = subm3d(in: 4, out: 16);
        pub Down = conv2d(in: 16, out: 32, stride: 2);
    }
}

sparsegen::prelude::sparse_layer! {
    OfSubm = inverse3d(of: encoder::Stem, in: 16, out: 4);
    WrongDims = inverse3d(of: encoder::Down, in: 32, out: 16);
    NotALayer = inverse3d(of: String, in: 32, out: 16);
}

fn main() {}
