use sparsegen::prelude::*;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16);
    Down = conv3d(in: 32, out: 64, stride: 2);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::reference();
    let x = Features::<4>::new(SparseTensor::new(vec![0, 1, 1, 1], vec![1.0; 4], 4, &[4, 4, 4], 1)?)?;
    let y = Stem::new().forward(&engine, &x)?;
    // Stem gives 16 channels but Down takes 32: a type error.
    let _z = Down::new().forward(&engine, &y)?;
    Ok(())
}
