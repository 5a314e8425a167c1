//! The parameter lists of the generated kernels: the one contract between the emitter (which
//! writes the C signature from these lists) and the runtime's typed launchers (which push
//! arguments in this order, and test that they do).

use std::fmt;

/// The element a pointer parameter points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// The layer's storage type (`float` for f32, 16-bit patterns for f16/bf16).
    Storage,
    /// `float`.
    F32,
    /// `int`.
    I32,
}

/// The C type of one kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `const T* __restrict__`.
    In(Elem),
    /// `T* __restrict__`.
    Out(Elem),
    /// `int` by value.
    I32,
}

/// One kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelParam {
    /// Its name in the generated source.
    pub name: &'static str,
    /// Its C type.
    pub ty: ParamType,
}

const fn param(name: &'static str, ty: ParamType) -> KernelParam {
    KernelParam { name, ty }
}

/// Parameters of every output-stationary conv kernel, in order.
///
/// - `x`: input features `[N_in, Cin]`.
/// - `w`: weights packed for the kernel's tile kind (see [`super::WeightLayout`]).
/// - `bias`: `[Cout]` f32 (read only when the layer has a bias; pass any buffer otherwise).
/// - `nbr`: the rulebook's `[N_out, K]` neighbour table (input row or −1).
/// - `order`: the `N_out` output rows in tile order (sorted by offset mask).
/// - `tile_offset_start`: `[tiles + 1]`, where each tile's offsets begin in `tile_offsets`.
/// - `tile_offsets`: per tile, the offsets any of its rows needs, ascending.
/// - `y`: output features `[N_out, Cout]`, each element written exactly once.
/// - `n_out`: `N_out`.
pub const CONV_PARAMS: [KernelParam; 9] = [
    param("x", ParamType::In(Elem::Storage)),
    param("w", ParamType::In(Elem::Storage)),
    param("bias", ParamType::In(Elem::F32)),
    param("nbr", ParamType::In(Elem::I32)),
    param("order", ParamType::In(Elem::I32)),
    param("tile_offset_start", ParamType::In(Elem::I32)),
    param("tile_offsets", ParamType::In(Elem::I32)),
    param("y", ParamType::Out(Elem::Storage)),
    param("n_out", ParamType::I32),
];

/// A parameter rendered as C (storage pointers use the `sg_t` typedef of
/// [`super::syntax::dtype_prelude`]).
#[derive(Debug, Clone, Copy)]
pub struct CParam(pub KernelParam);

impl fmt::Display for CParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elem = |e: Elem| match e {
            Elem::Storage => "sg_t",
            Elem::F32 => "float",
            Elem::I32 => "int",
        };
        let name = self.0.name;
        match self.0.ty {
            ParamType::In(e) => write!(f, "const {}* __restrict__ {name}", elem(e)),
            ParamType::Out(e) => write!(f, "{}* __restrict__ {name}", elem(e)),
            ParamType::I32 => write!(f, "int {name}"),
        }
    }
}

/// Parameters of the gather-GEMM-scatter kernel, in order: one launch per offset `k`, over
/// that offset's pairs (`pair_in[j]` feeds `pair_out[j]`; each output row at most once per
/// offset), adding into the f32 accumulator `acc` `[N_out, Cout]`. Launches of successive
/// offsets are stream-ordered, so the sums are deterministic without atomics.
pub const GATHER_PARAMS: [KernelParam; 7] = [
    param("x", ParamType::In(Elem::Storage)),
    param("w", ParamType::In(Elem::Storage)),
    param("pair_in", ParamType::In(Elem::I32)),
    param("pair_out", ParamType::In(Elem::I32)),
    param("n_pairs", ParamType::I32),
    param("k", ParamType::I32),
    param("acc", ParamType::Out(Elem::F32)),
];

/// Parameters of the gather-GEMM-scatter epilogue: `y = act(acc + bias)` in storage type.
pub const EPILOGUE_PARAMS: [KernelParam; 4] = [
    param("acc", ParamType::In(Elem::F32)),
    param("bias", ParamType::In(Elem::F32)),
    param("y", ParamType::Out(Elem::Storage)),
    param("n_out", ParamType::I32),
];
