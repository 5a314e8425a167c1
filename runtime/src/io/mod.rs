//! Reading inputs: `.npy` arrays (spconv dumps, weights), safetensors checkpoints (spconv
//! models' weights), point clouds (KITTI `.bin`, ScanNet `.bin`, spconv `.npz` is read
//! through `.npy`), and voxelization.

pub mod npy;
pub mod point_cloud;
pub mod safetensors;
pub mod voxelizer;
