//! The JIT: turns a [`CpuKernel`]'s IR into machine code for the host with Cranelift, and
//! the typed function pointers the executors call.
//!
//! The host's ISA flags (SSE4.1, AVX, FMA, ...) are read once by `cranelift-native`. Without
//! hardware FMA, Cranelift would lower the kernels' vector `fma` to calls of `fmaf`; the
//! backend then does not JIT at all and runs its scalar path instead (same results), see
//! [`HostIsa::jit_supported`]. Each compiled kernel owns its `JITModule` and frees its code
//! when dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use sparsegen_codegen::cpu::{CpuKernel, CpuStrategy};

use crate::error::{Error, Result};

/// The direct kernel: `(nbr, rows, input, weight, bias, out)`.
pub(crate) type DirectFn =
    unsafe extern "C" fn(*const i32, i64, *const f32, *const f32, *const f32, *mut f32);

/// The GEMM callee: `(input, cin, w_k, cout_padded, in_rows, out_rows, n, acc)`.
pub(crate) type GemmCalleeFn =
    unsafe extern "C" fn(*const f32, i64, *const f32, i64, *const u32, *const u32, i64, *mut f32);

/// The GEMM-call kernel: `(counts, starts, in_rows, out_rows, rows, input, weight, bias, acc,
/// out, gemm)`.
pub(crate) type GemmDriverFn = unsafe extern "C" fn(
    *const u32,
    *const u32,
    *const u32,
    *const u32,
    i64,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    GemmCalleeFn,
);

/// The host's Cranelift ISA and what it can do.
#[derive(Clone)]
pub struct HostIsa {
    isa: Option<OwnedTargetIsa>,
    reason: Option<String>,
}

impl std::fmt::Debug for HostIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIsa")
            .field("jit", &self.isa.as_ref().map(|i| i.triple().to_string()))
            .field("reason", &self.reason)
            .finish()
    }
}

impl HostIsa {
    /// Detects the host. Never fails: an unsupported host is recorded with its reason and
    /// [`HostIsa::jit_supported`] is false.
    pub fn detect() -> Self {
        match Self::build() {
            Ok(isa) => HostIsa {
                isa: Some(isa),
                reason: None,
            },
            Err(reason) => HostIsa {
                isa: None,
                reason: Some(reason),
            },
        }
    }

    /// An ISA that never JITs (forces the scalar path), with the reason given.
    pub fn disabled(reason: &str) -> Self {
        HostIsa {
            isa: None,
            reason: Some(reason.into()),
        }
    }

    fn build() -> std::result::Result<OwnedTargetIsa, String> {
        if !cfg!(unix) {
            return Err("the JIT's System V kernels are only called on Unix hosts".into());
        }
        let mut flags = settings::builder();
        // The emitter already writes the loops it wants (loads folded into FMAs, one pass of
        // accumulators live at a time). Cranelift's e-graph optimiser (`speed`) would sink
        // every pure FMA to the end of its block, after all the loads, and spill most of the
        // registers (measured: 4-7x slower kernels); `none` keeps the emitted order.
        for (name, value) in [("opt_level", "none"), ("is_pic", "false")] {
            flags
                .set(name, value)
                .map_err(|e| format!("setting {name}: {e}"))?;
        }
        let builder = cranelift_native::builder_with_options(true)?;
        let isa = builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| format!("building the host ISA: {e}"))?;
        let has = |name: &str| {
            isa.isa_flags()
                .iter()
                .any(|v| v.name == name && v.as_bool() == Some(true))
        };
        if isa.triple().architecture == target_lexicon::Architecture::X86_64
            && !(has("has_fma") && has("has_sse41"))
        {
            return Err("the host has no FMA/SSE4.1; kernels would call fmaf".into());
        }
        Ok(isa)
    }

    /// Whether kernels can be JIT-compiled here.
    pub fn jit_supported(&self) -> bool {
        self.isa.is_some()
    }

    /// Why the JIT is not used, if it is not.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// JIT-compiles `kernel`. `layer` names the layer in errors.
    pub fn compile(&self, kernel: &CpuKernel, ir_hash: u64, layer: &str) -> Result<CompiledKernel> {
        let jit_error = |message: String| Error::Jit {
            layer: layer.into(),
            message,
        };
        let isa = self.isa.clone().ok_or_else(|| {
            jit_error(format!(
                "JIT not available: {}",
                self.reason.as_deref().unwrap_or("unknown")
            ))
        })?;
        let start = Instant::now();
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let compiled = (|| -> std::result::Result<*const u8, String> {
            let id = module
                .declare_function(&kernel.name, Linkage::Export, &kernel.function.signature)
                .map_err(|e| e.to_string())?;
            let mut ctx = module.make_context();
            ctx.func = kernel.function.clone();
            module
                .define_function(id, &mut ctx)
                .map_err(|e| format!("{e:?}"))?;
            module.finalize_definitions().map_err(|e| e.to_string())?;
            Ok(module.get_finalized_function(id))
        })();
        match compiled {
            Ok(code) => Ok(CompiledKernel {
                name: kernel.name.clone(),
                strategy: kernel.strategy,
                ir_hash,
                jit_time: start.elapsed(),
                code,
                module: Some(module),
            }),
            Err(message) => {
                // SAFETY: nothing from this module was handed out.
                unsafe { module.free_memory() };
                Err(jit_error(message))
            }
        }
    }
}

/// A JIT-compiled kernel: code pointer plus the module that owns the code.
pub struct CompiledKernel {
    name: String,
    strategy: CpuStrategy,
    ir_hash: u64,
    jit_time: Duration,
    code: *const u8,
    module: Option<JITModule>,
}

impl std::fmt::Debug for CompiledKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledKernel")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("ir_hash", &format_args!("{:016x}", self.ir_hash))
            .field("jit_time", &self.jit_time)
            .finish()
    }
}

// SAFETY: the code behind `code` is immutable, position-independent of the thread that calls
// it, and only freed in `Drop` (when no `&self` exists). The module is only touched at
// creation and in `Drop`.
unsafe impl Send for CompiledKernel {}
// SAFETY: as above; `&CompiledKernel` only exposes the immutable code pointer.
unsafe impl Sync for CompiledKernel {}

impl Drop for CompiledKernel {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: `self` is being dropped, so no function pointer derived from it is
            // still reachable through a `&CompiledKernel` (callers hold an `Arc`).
            unsafe { module.free_memory() };
        }
    }
}

impl CompiledKernel {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its strategy.
    pub fn strategy(&self) -> CpuStrategy {
        self.strategy
    }

    /// The hash of its IR.
    pub fn ir_hash(&self) -> u64 {
        self.ir_hash
    }

    /// How long Cranelift took to compile it.
    pub fn jit_time(&self) -> Duration {
        self.jit_time
    }

    /// The direct entry point, if this is a direct kernel.
    pub(crate) fn direct(&self) -> Option<DirectFn> {
        (self.strategy == CpuStrategy::Direct).then(|| {
            // SAFETY: a direct kernel's IR has exactly this System V signature (six i64
            // parameters, no result), which is `extern "C"` on the Unix hosts we JIT on.
            unsafe { std::mem::transmute::<*const u8, DirectFn>(self.code) }
        })
    }

    /// The GEMM-call entry point, if this is one.
    pub(crate) fn gemm_driver(&self) -> Option<GemmDriverFn> {
        (self.strategy == CpuStrategy::GemmCall).then(|| {
            // SAFETY: a GEMM-call kernel's IR has exactly this signature (eleven i64
            // parameters, no result).
            unsafe { std::mem::transmute::<*const u8, GemmDriverFn>(self.code) }
        })
    }
}

/// Shared handle to a compiled kernel.
pub type KernelHandle = Arc<CompiledKernel>;
