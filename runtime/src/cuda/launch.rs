//! Typed launchers: the only place kernel arguments are pushed, in the order of the codegen
//! crate's parameter contract ([`CONV_PARAMS`]); a unit test checks the two agree.

use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};
use sparsegen_codegen::cuda::{CONV_PARAMS, ConvKernel, EPILOGUE_THREADS, GatherKernels};

use super::error::CudaError;

/// The arguments of an output-stationary conv kernel; `S` is the storage element (`f32`, or
/// `u16` bit patterns for f16/bf16). Field order is the launch order.
#[derive(Debug)]
pub struct ConvArgs<'a, S> {
    /// Input features `[N_in, Cin]`.
    pub x: CudaView<'a, S>,
    /// Packed weights.
    pub w: CudaView<'a, S>,
    /// Bias `[Cout]` (any buffer when the layer has none).
    pub bias: CudaView<'a, f32>,
    /// Neighbour table `[N_out, K]`.
    pub nbr: CudaView<'a, i32>,
    /// Rows in tile order.
    pub order: CudaView<'a, i32>,
    /// Tile offset list starts.
    pub tile_offset_start: CudaView<'a, i32>,
    /// Tile offset lists.
    pub tile_offsets: CudaView<'a, i32>,
    /// Output `[N_out, Cout]`.
    pub y: CudaViewMut<'a, S>,
    /// `N_out`.
    pub n_out: i32,
}

/// The names [`launch_conv`] pushes, in order (checked against [`CONV_PARAMS`] by a test).
pub const CONV_ARG_ORDER: [&str; 9] = [
    "x",
    "w",
    "bias",
    "nbr",
    "order",
    "tile_offset_start",
    "tile_offsets",
    "y",
    "n_out",
];

/// A launch of `grid` blocks of `threads` threads, with static shared memory only.
fn config(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The typed error of a failed `cuLaunchKernel`.
pub(crate) fn launch_error(source: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver {
        call: "cuLaunchKernel",
        source,
    }
}

/// Launches `kernel` (loaded as `function`) on `stream` over `grid`.
pub fn launch_conv<S>(
    stream: &CudaStream,
    function: &CudaFunction,
    kernel: &ConvKernel,
    grid: (u32, u32, u32),
    mut args: ConvArgs<'_, S>,
) -> Result<(), CudaError> {
    debug_assert_eq!(CONV_ARG_ORDER.len(), CONV_PARAMS.len());
    let cfg = config(grid, kernel.threads);
    let mut launch = stream.launch_builder(function);
    launch
        .arg(&args.x)
        .arg(&args.w)
        .arg(&args.bias)
        .arg(&args.nbr)
        .arg(&args.order)
        .arg(&args.tile_offset_start)
        .arg(&args.tile_offsets)
        .arg(&mut args.y)
        .arg(&args.n_out);
    // SAFETY: the arguments are pushed in the order and with the types of CONV_PARAMS, from
    // which the kernel's signature was generated (`conv_args_follow_the_contract` checks
    // the order); every buffer is a live device view of the element type the signature names
    // (`S` matches the kernel's dtype, chosen by the backend); the plan's arrays bound every
    // index the kernel reads (rows < n_out, offsets < K, input rows < N_in).
    unsafe { launch.launch(cfg) }.map_err(launch_error)?;
    Ok(())
}

/// The arguments of one offset's gather-GEMM-scatter launch. Field order is launch order.
#[derive(Debug)]
pub struct GatherArgs<'a, S> {
    /// Input features.
    pub x: CudaView<'a, S>,
    /// Packed weights (all offsets).
    pub w: CudaView<'a, S>,
    /// This offset's input rows.
    pub pair_in: CudaView<'a, i32>,
    /// This offset's output rows (each at most once).
    pub pair_out: CudaView<'a, i32>,
    /// Number of pairs.
    pub n_pairs: i32,
    /// The offset.
    pub k: i32,
    /// f32 accumulator `[N_out, Cout]`.
    pub acc: CudaViewMut<'a, f32>,
}

/// The names [`launch_gather`] pushes, in order.
pub const GATHER_ARG_ORDER: [&str; 7] = ["x", "w", "pair_in", "pair_out", "n_pairs", "k", "acc"];

/// Launches one offset of a gather-GEMM-scatter layer.
pub fn launch_gather<S>(
    stream: &CudaStream,
    function: &CudaFunction,
    kernels: &GatherKernels,
    grid: (u32, u32, u32),
    mut args: GatherArgs<'_, S>,
) -> Result<(), CudaError> {
    let cfg = config(grid, kernels.threads);
    let mut launch = stream.launch_builder(function);
    launch
        .arg(&args.x)
        .arg(&args.w)
        .arg(&args.pair_in)
        .arg(&args.pair_out)
        .arg(&args.n_pairs)
        .arg(&args.k)
        .arg(&mut args.acc);
    // SAFETY: pushed in GATHER_PARAMS order with its types (checked by a test against
    // GATHER_ARG_ORDER); pair rows index rows of `x` and `acc` the rulebook produced; `k` is
    // below the kernel volume, so `w` is read inside its packed length.
    unsafe { launch.launch(cfg) }.map_err(launch_error)?;
    Ok(())
}

/// The arguments of the gather-GEMM-scatter epilogue. Field order is launch order.
#[derive(Debug)]
pub struct EpilogueArgs<'a, S> {
    /// f32 accumulator `[N_out, Cout]`.
    pub acc: CudaView<'a, f32>,
    /// Bias `[Cout]` (any buffer when the layer has none).
    pub bias: CudaView<'a, f32>,
    /// Output `[N_out, Cout]`.
    pub y: CudaViewMut<'a, S>,
    /// `N_out`.
    pub n_out: i32,
}

/// The names [`launch_epilogue`] pushes, in order.
pub const EPILOGUE_ARG_ORDER: [&str; 4] = ["acc", "bias", "y", "n_out"];

/// Launches the epilogue over `blocks` blocks of [`EPILOGUE_THREADS`].
pub fn launch_epilogue<S>(
    stream: &CudaStream,
    function: &CudaFunction,
    blocks: u32,
    mut args: EpilogueArgs<'_, S>,
) -> Result<(), CudaError> {
    let cfg = config((blocks, 1, 1), EPILOGUE_THREADS);
    let mut launch = stream.launch_builder(function);
    launch
        .arg(&args.acc)
        .arg(&args.bias)
        .arg(&mut args.y)
        .arg(&args.n_out);
    // SAFETY: pushed in EPILOGUE_PARAMS order with its types; the kernel guards its index by
    // n_out · Cout, the length of `acc` and `y`.
    unsafe { launch.launch(cfg) }.map_err(launch_error)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use sparsegen_codegen::cuda::{EPILOGUE_PARAMS, GATHER_PARAMS};

    #[test]
    fn conv_args_follow_the_contract() {
        let contract: Vec<&str> = CONV_PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(contract, CONV_ARG_ORDER);
        let contract: Vec<&str> = GATHER_PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(contract, GATHER_ARG_ORDER);
        let contract: Vec<&str> = EPILOGUE_PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(contract, EPILOGUE_ARG_ORDER);
    }
}
