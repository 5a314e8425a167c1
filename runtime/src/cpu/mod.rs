//! The CPU backend: layers run as Cranelift-JITed kernels generated for exactly their shape.
//!
//! [`CpuBackend`] implements [`ConvBackend`]. For each layer it asks the codegen crate for the
//! Cranelift IR of a kernel variant ([`sparsegen_codegen::cpu`]), JIT-compiles it once through
//! the [`KernelCache`] (keyed by a hash of the IR), packs the layer's weights into the layout
//! the kernel was generated for (once per layer and layout, then cached), and runs it over the rulebook's output rows in parallel tiles
//! ([`rayon`], all threads of the current pool). Two variants exist: the direct
//! output-stationary `f32x4` FMA kernel, and the GEMM-call kernel whose generated loop calls a
//! 512-bit Rust GEMM micro-kernel on each offset's gathered rows (Cranelift has no vectors
//! wider than 128 bits). The [`Autotuner`] times them once per shape and remembers the winner.
//!
//! Results are deterministic: every variant, the scalar fallback and every thread count give
//! bitwise identical outputs (one FMA per product, offsets then channels ascending). Where
//! the host cannot run the kernels (no FMA, not Unix), the backend runs the scalar path —
//! same results, slower — and says why in [`CpuBackend::jit_status`]. Codegen and JIT
//! failures are [`Error::Jit`] naming the layer; nothing here panics on user input.
//!
//! This module must not build rulebooks (the [`Engine`](crate::Engine)'s cache does) and
//! must not emit IR by hand (the codegen crate does).

pub mod autotune;
mod executor;
pub mod gemm;
pub mod jit;
pub mod kernel_cache;
mod packed_weights;

use std::time::Instant;

use sparsegen_codegen::cpu::{CpuStrategy, CpuTile, DirectLayout, GemmLayout};
use sparsegen_codegen::{DType, LayerSpec};

pub use autotune::{Autotuner, TuneKey, TuneRecord, Variant};
pub use gemm::GemmKernel;
pub use jit::{CompiledKernel, HostIsa};
pub use kernel_cache::{JitRecord, KernelCache};

use crate::engine::ConvBackend;
use crate::error::{Error, Result};
use crate::rulebook::Rulebook;
use crate::sparse_conv::SparseConv;
use executor::{Packed, Rows};
use jit::GemmCalleeFn;
use packed_weights::PackedWeights;

/// Which kernel variant the backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StrategyChoice {
    /// Time the candidates once per shape and keep the fastest.
    #[default]
    Auto,
    /// Always the direct JIT kernel.
    Direct,
    /// Always the GEMM-call kernel (direct where groups > 1).
    Gemm,
    /// Never JIT: the scalar path.
    Scalar,
    /// The GEMM-call kernel with the `gemm` crate as its callee instead of the hand-written
    /// AVX-512 kernel: for measuring one against the other. Deterministic and thread-count
    /// independent, but not bitwise equal to the other variants (see
    /// the `cpu::gemm` module); never chosen by `Auto`.
    GemmCrate,
}

impl StrategyChoice {
    /// Parses `auto`, `direct`, `gemm`, `scalar` or `gemm-crate`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => StrategyChoice::Auto,
            "direct" => StrategyChoice::Direct,
            "gemm" => StrategyChoice::Gemm,
            "scalar" => StrategyChoice::Scalar,
            "gemm-crate" => StrategyChoice::GemmCrate,
            _ => return None,
        })
    }
}

/// Knobs of the CPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOptions {
    /// Which variant runs.
    pub strategy: StrategyChoice,
    /// Tile parameters of the direct kernel (the autotuner also tries 12 accumulators).
    pub tile: CpuTile,
    /// Rows the autotuner times each candidate on.
    pub tune_rows: usize,
    /// The GEMM micro-kernel of the GEMM-call variant.
    pub gemm_kernel: GemmKernel,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            strategy: StrategyChoice::Auto,
            tile: CpuTile::default(),
            tune_rows: 8192,
            gemm_kernel: GemmKernel::Best,
        }
    }
}

/// The CPU backend. See the module docs.
#[derive(Debug)]
pub struct CpuBackend {
    options: CpuOptions,
    kernels: KernelCache,
    tuner: Autotuner,
    packed: PackedWeights,
    callee: (GemmCalleeFn, &'static str),
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend with default options on the detected host.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sparsegen_runtime::cpu::CpuBackend;
    /// use sparsegen_runtime::codegen::{ConvKind, LayerSpec};
    /// use sparsegen_runtime::{Engine, SparseConv, SparseTensor};
    /// let spec = LayerSpec::builder(ConvKind::Submanifold, 3).channels(1, 2).build()?;
    /// let conv = SparseConv::new(spec, vec![1.0; spec.weight_len()], None)?;
    /// let x = SparseTensor::new(vec![0, 1, 1, 1, 0, 1, 1, 2], vec![1.0, 2.0], 1, &[4, 4, 4], 1)?;
    /// let engine = Engine::with_backend(Arc::new(CpuBackend::new()));
    /// assert_eq!(conv.forward(&engine, &x)?.features(), &[3.0, 3.0, 3.0, 3.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new() -> Self {
        Self::with_options(CpuOptions::default())
    }

    /// A backend with `options` on the detected host.
    pub fn with_options(options: CpuOptions) -> Self {
        Self::with_isa(options, HostIsa::detect())
    }

    /// A backend with `options` on a given ISA ([`HostIsa::disabled`] forces the scalar path).
    pub fn with_isa(options: CpuOptions, isa: HostIsa) -> Self {
        CpuBackend {
            options,
            kernels: KernelCache::new(isa),
            tuner: Autotuner::new(),
            packed: PackedWeights::default(),
            callee: gemm::callee(options.gemm_kernel),
        }
    }

    /// The kernel cache (JIT records, hits).
    pub fn kernel_cache(&self) -> &KernelCache {
        &self.kernels
    }

    /// The same backend with its autotuner's choices persisted at `path` (read and written
    /// back now, so an unwritable path is an error here; rewritten after each new timing),
    /// so that a new process on this machine skips the
    /// timing runs of the shapes it has seen. [`default_tuning_file`](Self::default_tuning_file)
    /// is the usual place.
    pub fn with_tuning_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        // Choices depend on the processor and the GEMM micro-kernel in use.
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let host = format!("{model}/{}", self.callee.1);
        self.tuner = Autotuner::with_file(path, &host).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Ok(self)
    }

    /// A backend with default options whose autotuning choices persist in
    /// [`default_tuning_file`](Self::default_tuning_file) (in memory only when there is no
    /// cache folder): what a deployed program wants, so that its later runs skip the timing.
    pub fn persistent() -> Result<Self> {
        match Self::default_tuning_file() {
            Some(file) => Self::new().with_tuning_file(file),
            None => Ok(Self::new()),
        }
    }

    /// `<cache>/cpu/autotune.tsv` under [`cache_dir`](crate::cache_dir), if there is one.
    pub fn default_tuning_file() -> Option<std::path::PathBuf> {
        crate::cache_dir().map(|d| d.join("cpu").join("autotune.tsv"))
    }

    /// The autotuner's decisions.
    pub fn tuning(&self) -> Vec<TuneRecord> {
        self.tuner.records()
    }

    /// `Ok(())` when kernels are JIT-compiled here, else why the scalar path runs.
    pub fn jit_status(&self) -> std::result::Result<(), String> {
        match self.kernels.isa().reason() {
            None => Ok(()),
            Some(r) => Err(r.into()),
        }
    }

    /// The GEMM micro-kernel the GEMM-call variant uses (`avx512`, `avx2` or `portable`).
    pub fn gemm_kernel(&self) -> &'static str {
        self.callee.1
    }

    fn candidates(&self, spec: &LayerSpec) -> Vec<Variant> {
        let base = self.options.tile;
        let mut out = vec![Variant {
            strategy: CpuStrategy::Direct,
            tile: base,
        }];
        let passes = |t: &CpuTile| DirectLayout::new(spec, usize::from(t.max_vectors)).passes;
        let wide = CpuTile {
            max_vectors: 12,
            ..base
        };
        if base.rows == 1 && passes(&wide) != passes(&base) {
            out.push(Variant {
                strategy: CpuStrategy::Direct,
                tile: wide,
            });
        }
        if base.rows == 1 {
            out.push(Variant {
                strategy: CpuStrategy::Direct,
                tile: CpuTile {
                    rows: 2,
                    max_vectors: 6,
                    ..base
                },
            });
        }
        if spec.groups == 1 {
            out.push(Variant {
                strategy: CpuStrategy::GemmCall,
                tile: base,
            });
        }
        out
    }

    fn run_variant(
        &self,
        variant: Variant,
        layer: &SparseConv,
        rows: Rows<'_>,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) -> Result<()> {
        let spec = layer.spec();
        let kernel = self
            .kernels
            .get_or_compile(spec, variant.strategy, &variant.tile)?;
        let mismatch = |k: &CompiledKernel| Error::Jit {
            layer: layer.name().into(),
            message: format!(
                "kernel {} is not a {} kernel",
                k.name(),
                variant.strategy.name()
            ),
        };
        match variant.strategy {
            CpuStrategy::Direct => {
                let layout = DirectLayout::new(spec, usize::from(variant.tile.max_vectors));
                let packed = self.packed.get_or_pack(
                    spec,
                    (variant.strategy, variant.tile.max_vectors),
                    layer.weight(),
                    layer.bias(),
                    || Packed::direct(&layout, layer.weight(), layer.bias()),
                );
                let f = kernel.direct().ok_or_else(|| mismatch(&kernel))?;
                executor::run_direct(f, spec, rows, &packed, out);
            }
            CpuStrategy::GemmCall => {
                let packed = self.packed.get_or_pack(
                    spec,
                    (variant.strategy, 0),
                    layer.weight(),
                    layer.bias(),
                    || Packed::gemm(&GemmLayout::new(spec), layer.weight(), layer.bias()),
                );
                let callee = if self.options.strategy == StrategyChoice::GemmCrate {
                    gemm::gemm_pairs_gemm_crate
                } else {
                    self.callee.0
                };
                let f = kernel.gemm_driver().ok_or_else(|| mismatch(&kernel))?;
                executor::run_gemm(f, spec, rows, &packed, callee, out);
            }
        }
        Ok(())
    }

    fn choose(&self, layer: &SparseConv, rows: Rows<'_>) -> Result<Variant> {
        let spec = layer.spec();
        let candidates = self.candidates(spec);
        let fallback = candidates[0];
        match self.options.strategy {
            StrategyChoice::Direct | StrategyChoice::Scalar => return Ok(fallback),
            StrategyChoice::Gemm | StrategyChoice::GemmCrate => {
                return Ok(candidates
                    .iter()
                    .copied()
                    .find(|v| v.strategy == CpuStrategy::GemmCall)
                    .unwrap_or(fallback));
            }
            StrategyChoice::Auto => {}
        }
        if candidates.len() == 1 {
            return Ok(fallback);
        }
        let k = rows.kernel_volume.max(1);
        let n = rows.nbr.len() / k;
        let sample_rows = n.min(self.options.tune_rows.max(1));
        // Eight blocks spread over the table, so the sample has the layer's density (sorted
        // sites make the first rows of a scan unlike the rest).
        let blocks = 8.min(sample_rows);
        let per_block = sample_rows / blocks;
        let sample_blocks: Vec<&[i32]> = (0..blocks)
            .map(|block| {
                let start = block * (n / blocks);
                &rows.nbr[start * k..(start + per_block) * k]
            })
            .collect();
        let key = TuneKey::new(spec, &sample_blocks);
        if let Some(v) = self.tuner.get(&key) {
            return Ok(v);
        }
        if let Some(v) = self.tuner.stored(&key, &candidates) {
            let record = TuneRecord {
                layer: spec.kernel_name(),
                density: f64::from(key.density_half) / 2.0,
                sample_rows: 0,
                timings_ms: Vec::new(),
                chosen: v,
                from_file: true,
            };
            self.tuner.insert(key, record);
            return Ok(v);
        }
        // A miss: copy the sample into one table and time every candidate on it.
        let sample_nbr = sample_blocks.concat();
        let sample_rows = per_block * blocks;
        let sample = Rows {
            nbr: &sample_nbr,
            ..rows
        };
        let cout = spec.out_channels as usize;
        let mut scratch = vec![std::mem::MaybeUninit::<f32>::uninit(); sample_rows * cout];
        let mut timings = Vec::new();
        let mut best = (f64::INFINITY, fallback);
        for &variant in &candidates {
            // One untimed run compiles and warms, then the best of three.
            self.run_variant(variant, layer, sample, &mut scratch)?;
            let mut t_best = f64::INFINITY;
            for _ in 0..3 {
                let t0 = Instant::now();
                self.run_variant(variant, layer, sample, &mut scratch)?;
                t_best = t_best.min(t0.elapsed().as_secs_f64() * 1e3);
            }
            timings.push((variant.label(), t_best));
            if t_best < best.0 {
                best = (t_best, variant);
            }
        }
        let pairs = sample.nbr.iter().filter(|&&i| i >= 0).count();
        self.tuner.insert(
            key,
            TuneRecord {
                layer: spec.kernel_name(),
                density: pairs as f64 / sample_rows.max(1) as f64,
                sample_rows,
                timings_ms: timings,
                chosen: best.1,
                from_file: false,
            },
        );
        Ok(best.1)
    }
}

impl ConvBackend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn conv(&self, layer: &SparseConv, rulebook: &Rulebook, input: &[f32]) -> Result<Vec<f32>> {
        let spec = layer.spec();
        let backend_error = |message: String| Error::Backend {
            backend: "cpu",
            message: format!("layer {}: {message}", layer.name()),
        };
        if spec.dtype != DType::F32 {
            return Err(Error::Jit {
                layer: layer.name().into(),
                message: format!("the CPU backend computes in f32, not {}", spec.dtype.name()),
            });
        }
        let cin = spec.in_channels as usize;
        let cout = spec.out_channels as usize;
        let k = spec.kernel_volume();
        if rulebook.kernel_volume() != k {
            return Err(backend_error(format!(
                "the rulebook has {} kernel offsets but the layer {k}",
                rulebook.kernel_volume()
            )));
        }
        if input.len() != rulebook.n_in() * cin {
            return Err(backend_error(format!(
                "the input has {} values but the rulebook's {} input rows × {cin} channels need {}",
                input.len(),
                rulebook.n_in(),
                rulebook.n_in() * cin
            )));
        }
        let rows = Rows {
            nbr: rulebook.neighbors(),
            kernel_volume: k,
            input,
        };
        debug_assert!(
            rows.nbr
                .iter()
                .all(|&i| i >= -1 && (i as i64) < rulebook.n_in() as i64)
        );
        let len = rulebook.n_out() * cout;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let spare = &mut out.spare_capacity_mut()[..len];
        if self.options.strategy == StrategyChoice::Scalar || self.jit_status().is_err() {
            executor::run_scalar(spec, rows, layer.weight(), layer.bias(), spare);
        } else {
            let variant = self.choose(layer, rows)?;
            self.run_variant(variant, layer, rows, spare)?;
        }
        // SAFETY: every executor writes every element of the `len` it is given (see
        // `executor`), and `len` ≤ capacity.
        unsafe { out.set_len(len) };
        Ok(out)
    }
}
