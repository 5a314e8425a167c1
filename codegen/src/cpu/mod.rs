//! Lowering of a [`LayerSpec`] to Cranelift IR for the CPU JIT.
//!
//! This module is pure: it builds a [`cranelift_codegen::ir::Function`] specialised for
//! exactly one layer (kind, kernel volume, channels, groups, bias, activation) and one
//! [`CpuTile`], verifies it, and prints it. It never compiles to machine code, never touches
//! a cache and never reads the host: the signature's calling convention is pinned to
//! System V and pointers are 64-bit, so the CLIF text of a spec is the same on every host
//! (the runtime's `KernelCache` keys on a hash of that text).
//!
//! Two kernel shapes ([`CpuStrategy`]) are generated:
//!
//! * [`CpuStrategy::Direct`] — the output-stationary micro-kernel. For each output row of
//!   a tile, for each pass (a block of at most [`CpuTile::max_vectors`] `f32x4` accumulators
//!   of one group, held in registers across every kernel offset), for each kernel offset
//!   whose neighbour is not −1: gather the neighbour row and accumulate `x · W_k` with one
//!   `fma` per accumulator and input channel; then the fused epilogue (bias, activation) and
//!   a single store. Signature:
//!   `fn(nbr: *const i32, rows: i64, input: *const f32, weight: *const f32, bias: *const f32, out: *mut f32)`
//!   where `nbr` and `out` point at the tile's first row of the `[N_out, K]` table and of the
//!   `[N_out, Cout]` output, `input` at the whole `[N_in, Cin]` input, `weight` and `bias`
//!   at the [`DirectLayout`] packing.
//! * [`CpuStrategy::GemmCall`] — for wide channels, where Cranelift's 128-bit vectors lose
//!   to a 512-bit GEMM: the generated loop walks the kernel offsets of a tile and, for each
//!   offset with pairs, calls a Rust GEMM micro-kernel through a function pointer on the
//!   gathered rows, which accumulates into an f32 tile `[rows][cout_padded]`; then the same
//!   fused epilogue writes the output rows once. Signature:
//!   `fn(counts: *const u32, starts: *const u32, in_rows: *const u32, out_rows: *const u32,
//!   rows: i64, input: *const f32, weight: *const f32, bias: *const f32, acc: *mut f32,
//!   out: *mut f32, gemm: fn ptr)`, and the callee's is
//!   `fn(input, cin: i64, w_k, cout_padded: i64, in_rows, out_rows, n: i64, acc)` ([`GEMM_CALLEE_PARAMS`]).
//!
//! Summation order is fixed by the spec alone: every output element is
//! `fma(x, w, acc)` over kernel offsets ascending, then input channels ascending, starting
//! from +0, then `+ bias`, then the activation. Both strategies (and the runtime's scalar
//! fallback and GEMM micro-kernels) follow it, so their results are bitwise identical and
//! independent of tiling and thread count.

pub mod layout;

mod direct;
mod emit;
mod gemm_call;

use cranelift_codegen::ir::Function;
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_codegen::settings;
use target_lexicon::PointerWidth;

use crate::spec::{DType, LayerSpec, SpecError};

pub use layout::{DirectLayout, GemmLayout, LANES, Pass};

/// Parameters in the GEMM callee's signature (all 64-bit): `input, cin, w_k, cout_padded,
/// in_rows, out_rows, n, acc`.
pub const GEMM_CALLEE_PARAMS: usize = 8;

/// Which kernel shape to generate. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuStrategy {
    /// Output-stationary JITed micro-kernel with `f32x4` FMA accumulators in registers.
    Direct,
    /// JITed offset loop calling a Rust GEMM micro-kernel on gathered rows (groups = 1).
    GemmCall,
}

impl CpuStrategy {
    /// A short name for reports (`direct`, `gemm`).
    pub const fn name(self) -> &'static str {
        match self {
            CpuStrategy::Direct => "direct",
            CpuStrategy::GemmCall => "gemm",
        }
    }
}

/// Generation-time tile parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuTile {
    /// Output rows a direct kernel step computes together (1 or 2): two rows share each
    /// weight load of an offset both have. Use at most 6 `max_vectors` with 2 rows.
    pub rows: u8,
    /// Most `f32x4` accumulators a direct pass holds in registers (1..=12; x86-64 has 16
    /// vector registers and the loop needs a few for the broadcast input and the weights).
    pub max_vectors: u8,
    /// Input channels per iteration of the channel loop when it is not fully unrolled.
    pub ci_unroll: u8,
    /// The channel loop is fully unrolled up to this many input channels per group.
    pub ci_full_unroll: u8,
}

impl Default for CpuTile {
    fn default() -> Self {
        CpuTile {
            rows: 1,
            max_vectors: 8,
            ci_unroll: 4,
            ci_full_unroll: 16,
        }
    }
}

/// Why a layer cannot be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuCodegenError {
    /// The spec is not a valid layer.
    #[error("invalid layer: {0}")]
    Spec(#[from] SpecError),
    /// The CPU backend computes in f32 only.
    #[error("layer {layer}: the CPU backend computes in f32, not {dtype}")]
    DType {
        /// The layer's kernel name.
        layer: String,
        /// The requested dtype name.
        dtype: &'static str,
    },
    /// A tile parameter is out of range.
    #[error("layer {layer}: tile parameter {what} = {value} is out of range ({range})")]
    Tile {
        /// The layer's kernel name.
        layer: String,
        /// The parameter.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The accepted range.
        range: &'static str,
    },
    /// The strategy does not apply to this layer.
    #[error("layer {layer}: the {strategy} strategy does not apply: {reason}")]
    Strategy {
        /// The layer's kernel name.
        layer: String,
        /// The strategy's name.
        strategy: &'static str,
        /// Why not.
        reason: &'static str,
    },
    /// The generated IR failed Cranelift's verifier (a bug in this emitter).
    #[error("layer {layer}: generated IR failed verification: {message}\n{clif}")]
    Verifier {
        /// The layer's kernel name.
        layer: String,
        /// The verifier's errors.
        message: String,
        /// The CLIF text.
        clif: String,
    },
}

/// One generated kernel: its IR, name and the weight layout its strides assume.
#[derive(Debug, Clone)]
pub struct CpuKernel {
    /// The kernel name: the spec's, plus the strategy and tile (`..._direct_v8`).
    pub name: String,
    /// The strategy.
    pub strategy: CpuStrategy,
    /// The tile parameters.
    pub tile: CpuTile,
    /// The IR (System V calling convention, 64-bit pointers).
    pub function: Function,
}

impl CpuKernel {
    /// The CLIF text of the function (byte-stable for a given spec, strategy and tile).
    pub fn clif(&self) -> String {
        self.function.display().to_string()
    }

    /// A 64-bit FNV-1a hash of the CLIF text: the key of the runtime's kernel cache.
    pub fn ir_hash(&self) -> u64 {
        fnv1a(self.clif().as_bytes())
    }
}

/// FNV-1a, 64-bit: a stable hash (unlike `DefaultHasher`, fixed across Rust versions).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The target description every kernel is built for: System V, 64-bit pointers.
pub fn frontend_config() -> TargetFrontendConfig {
    TargetFrontendConfig {
        default_call_conv: CallConv::SystemV,
        pointer_width: PointerWidth::U64,
        page_size_align_log2: 12,
    }
}

/// Lowers `spec` with `strategy` and `tile` to verified Cranelift IR.
///
/// ```
/// use sparsegen_codegen::{ConvKind, LayerSpec, cpu};
/// let spec = LayerSpec::builder(ConvKind::Submanifold, 3).channels(16, 16).build()?;
/// let kernel = cpu::lower(&spec, cpu::CpuStrategy::Direct, &cpu::CpuTile::default())?;
/// assert!(kernel.clif().contains(" = fma "));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn lower(
    spec: &LayerSpec,
    strategy: CpuStrategy,
    tile: &CpuTile,
) -> Result<CpuKernel, CpuCodegenError> {
    spec.validate()?;
    let layer = spec.kernel_name();
    if spec.dtype != DType::F32 {
        return Err(CpuCodegenError::DType {
            layer,
            dtype: spec.dtype.name(),
        });
    }
    let check = |what: &'static str, value: u8, lo: u8, hi: u8, range: &'static str| {
        if value < lo || value > hi {
            Err(CpuCodegenError::Tile {
                layer: layer.clone(),
                what,
                value: u32::from(value),
                range,
            })
        } else {
            Ok(())
        }
    };
    check("rows", tile.rows, 1, 2, "1..=2")?;
    check("max_vectors", tile.max_vectors, 1, 12, "1..=12")?;
    check("ci_unroll", tile.ci_unroll, 1, 16, "1..=16")?;
    check("ci_full_unroll", tile.ci_full_unroll, 0, 64, "0..=64")?;
    let name = match strategy {
        CpuStrategy::Direct if tile.rows == 1 => format!("{layer}_direct_v{}", tile.max_vectors),
        CpuStrategy::Direct => format!("{layer}_direct_r{}_v{}", tile.rows, tile.max_vectors),
        CpuStrategy::GemmCall => format!("{layer}_gemm"),
    };
    let function = match strategy {
        CpuStrategy::Direct => direct::emit(spec, tile, &name),
        CpuStrategy::GemmCall => {
            if spec.groups != 1 {
                return Err(CpuCodegenError::Strategy {
                    layer,
                    strategy: strategy.name(),
                    reason: "it multiplies dense Cin × Cout matrices, so groups must be 1",
                });
            }
            gemm_call::emit(spec, &name)
        }
    };
    // Shared flags only decide what the verifier accepts; ISA flags come from the host later.
    let flags = settings::Flags::new(settings::builder());
    if let Err(errors) = cranelift_codegen::verify_function(&function, &flags) {
        return Err(CpuCodegenError::Verifier {
            layer,
            message: errors.to_string(),
            clif: function.display().to_string(),
        });
    }
    Ok(CpuKernel {
        name,
        strategy,
        tile: *tile,
        function,
    })
}
