use sparsegen::prelude::*;
use sparsegen::runtime::cuda::DeviceRulebookCache;

sparse_layer! {
    Stem = subm3d(in: 4, out: 16, dtype: f16);
    Down = conv3d(in: 32, out: 64, stride: 2, dtype: f16);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = CudaBackend::new(CudaOptions::default())?;
    let (stem, down) = (GpuLayer::new(&gpu, &Stem::new())?, GpuLayer::new(&gpu, &Down::new())?);
    let x = Features::<4>::new(SparseTensor::new(vec![0, 1, 1, 1], vec![1.0; 4], 4, &[4, 4, 4], 1)?)?;
    let maps = DeviceRulebookCache::new();
    let h = stem.forward(&gpu, &GpuFeatures::upload(&gpu, &x, DType::F16)?, &maps)?;
    // Stem gives 16 channels but Down takes 32: a type error on the GPU path too.
    let _y = down.forward(&gpu, &h, &maps)?;
    Ok(())
}
