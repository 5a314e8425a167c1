// `of:` may name a layer defined in another invocation (here, another module); the inverse
// layer then reads its geometry from that layer's spec and restores its input sites.
mod encoder {
    sparsegen::prelude::sparse_layer! {
        pub Down = conv2d(in: 1, out: 2, kernel: 2, stride: 2);
    }
}

mod decoder {
    sparsegen::prelude::sparse_layer! {
        pub Up = inverse2d(of: crate::encoder::Down, in: 2, out: 1);
    }
}

use sparsegen::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(decoder::Up::SPEC.kernel, encoder::Down::SPEC.kernel);
    assert_eq!(decoder::Up::SPEC.stride, [2, 2, 1, 1]);
    let engine = Engine::reference();
    let x = Features::<1>::new(SparseTensor::new(
        vec![0, 0, 0, 0, 1, 1, 0, 3, 2],
        vec![1.0, 2.0, 3.0],
        1,
        &[4, 4],
        1,
    )?)?;
    let down = encoder::Down::from_weights(vec![1.0; 8], None)?;
    let up = decoder::Up::from_weights(vec![1.0; 8], None)?;
    let y = up.forward(&engine, &down.forward(&engine, &x)?)?;
    assert_eq!(y.coords(), x.coords());
    Ok(())
}
