//! Small pieces that make emission read like the CUDA C it writes: an indenting line writer,
//! float literals that round-trip, and the storage types of each [`DType`].
//!
//! Nothing here knows about convolutions; the kernel emitters compose these pieces.

use std::fmt::{self, Display, Write as _};

use crate::spec::DType;

/// An `f32` written as a CUDA literal that parses back to the same bits: the shortest decimal
/// that round-trips (Rust's `Debug` formatting) with an `f` suffix; non-finite values are
/// written through their bit pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatLit(pub f32);

impl Display for FloatLit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_finite() {
            // `{:?}` always has a `.` or an exponent (`1.0`, `1e-7`), so `f` makes it a float.
            write!(f, "{:?}f", self.0)
        } else {
            write!(f, "__int_as_float(0x{:08x})", self.0.to_bits())
        }
    }
}

/// The C type a buffer of `dtype` elements has in generated code. Half types are raw 16-bit
/// patterns: the generated code is header-free (no `cuda_fp16.h`) and converts with inline PTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageType(pub DType);

impl Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            DType::F32 => "float",
            DType::F16 | DType::Bf16 => "unsigned short",
        })
    }
}

/// Writes indented lines of C. `open` ends a line with `{` and indents; `close` dedents and
/// writes `}`. Writing into a `String` cannot fail, so the methods return nothing.
#[derive(Debug, Default)]
pub struct CWriter {
    out: String,
    depth: usize,
}

impl CWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// One line at the current indentation (an empty line stays empty).
    pub fn line(&mut self, text: impl Display) -> &mut Self {
        let text = text.to_string();
        if !text.is_empty() {
            for _ in 0..self.depth {
                self.out.push_str("    ");
            }
        }
        // Writing to a String is infallible.
        let _ = writeln!(self.out, "{text}");
        self
    }

    /// Several lines, each at the current indentation.
    pub fn lines(&mut self, text: &str) -> &mut Self {
        for l in text.lines() {
            self.line(l);
        }
        self
    }

    /// `head {` and one level deeper.
    pub fn open(&mut self, head: impl Display) -> &mut Self {
        let head = head.to_string();
        if head.is_empty() {
            self.line("{");
        } else {
            self.line(format_args!("{head} {{"));
        }
        self.depth += 1;
        self
    }

    /// One level shallower and `}` (plus `tail`, e.g. `;`).
    pub fn close(&mut self, tail: &str) -> &mut Self {
        self.depth = self.depth.saturating_sub(1);
        self.line(format_args!("}}{tail}"));
        self
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The device helpers every kernel of `dtype` uses: the storage typedef `sg_t` and the
/// conversions `sg_load` (storage → f32) and `sg_store` (f32 → storage, round to nearest even).
/// Written with inline PTX and bit arithmetic so no CUDA header is needed.
pub fn dtype_prelude(w: &mut CWriter, dtype: DType) {
    w.line(format_args!("typedef {} sg_t;", StorageType(dtype)));
    match dtype {
        DType::F32 => {
            w.line("__device__ __forceinline__ float sg_load(sg_t v) { return v; }");
            w.line("__device__ __forceinline__ sg_t sg_store(float v) { return v; }");
        }
        DType::F16 => {
            w.open("__device__ __forceinline__ float sg_load(sg_t v)");
            w.line("float f;");
            w.line("asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(v));");
            w.line("return f;");
            w.close("");
            w.open("__device__ __forceinline__ sg_t sg_store(float v)");
            w.line("unsigned short h;");
            w.line("asm(\"cvt.rn.f16.f32 %0, %1;\" : \"=h\"(h) : \"f\"(v));");
            w.line("return h;");
            w.close("");
        }
        DType::Bf16 => {
            w.line(
                "__device__ __forceinline__ float sg_load(sg_t v) { return __uint_as_float(((unsigned)v) << 16); }",
            );
            // cvt.rn.bf16.f32 needs sm_80; this rounding is the same (RNE, NaN stays NaN)
            // and works on every architecture.
            w.open("__device__ __forceinline__ sg_t sg_store(float v)");
            w.line("unsigned u = __float_as_uint(v);");
            w.line("if ((u & 0x7fffffffu) > 0x7f800000u) return (sg_t)((u >> 16) | 0x40u);");
            w.line("u += 0x7fffu + ((u >> 16) & 1u);");
            w.line("return (sg_t)(u >> 16);");
            w.close("");
        }
    }
}

/// The tensor-core helper `sg_mma(d, a, b)`: one `mma.sync.aligned.m16n8k16` with f16 or
/// bf16 inputs (by `dtype`) and f32 accumulators, in inline PTX. Fragments follow the PTX
/// ISA layout for `.row.col` (see the MMA kernel's comments).
pub fn mma_prelude(w: &mut CWriter, dtype: DType) {
    let ty = match dtype {
        DType::Bf16 => "bf16",
        DType::F16 | DType::F32 => "f16",
    };
    w.line("// d += a (16x16, row) * b (16x8, col): fp32 accumulators, PTX ISA fragment layout.");
    w.open("__device__ __forceinline__ void sg_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2])");
    w.line("asm volatile(");
    w.line(format_args!(
        "    \"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{%0, %1, %2, %3}}, {{%4, %5, %6, %7}}, {{%8, %9}}, {{%0, %1, %2, %3}};\""
    ));
    w.line("    : \"+f\"(d[0]), \"+f\"(d[1]), \"+f\"(d[2]), \"+f\"(d[3])");
    w.line("    : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"r\"(b[0]), \"r\"(b[1]));");
    w.close("");
}

/// The `cp.async` helpers (sm_80+): `sg_cp_async16(smem, gmem, valid)` copies 16 bytes from
/// global to shared memory without passing through registers, or writes 16 zero bytes when
/// `valid` is false (`src-size` 0); `sg_cp_commit()` closes a group of copies;
/// `sg_cp_wait_one()` waits until at most one group is still in flight.
pub fn cp_async_prelude(w: &mut CWriter) {
    w.open(
        "__device__ __forceinline__ void sg_cp_async16(void* smem, const void* gmem, bool valid)",
    );
    w.line("unsigned s;");
    w.line("asm(\"{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }\" : \"=r\"(s) : \"l\"(smem));");
    w.line("asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16, %2;\" :: \"r\"(s), \"l\"(gmem), \"r\"(valid ? 16 : 0));");
    w.close("");
    w.line("__device__ __forceinline__ void sg_cp_commit() { asm volatile(\"cp.async.commit_group;\" ::); }");
    w.line("__device__ __forceinline__ void sg_cp_wait_one() { asm volatile(\"cp.async.wait_group 1;\" ::: \"memory\"); }");
}

/// The TF32 tensor-core helpers: `sg_tf32(v)` (f32 → TF32 bits, round to nearest, ties
/// away, as `cvt.rna.tf32.f32`) and `sg_mma(d, a, b)`, one `mma.sync.aligned.m16n8k8` with
/// TF32 inputs and f32 accumulators. Fragments: a0 (row g, col t), a1 (g + 8, t),
/// a2 (g, t + 4), a3 (g + 8, t + 4); b0 (row t, col g), b1 (t + 4, g); `g = lane / 4`,
/// `t = lane % 4`.
pub fn tf32_prelude(w: &mut CWriter) {
    w.open("__device__ __forceinline__ unsigned sg_tf32(float v)");
    w.line("unsigned r;");
    w.line("asm(\"cvt.rna.tf32.f32 %0, %1;\" : \"=r\"(r) : \"f\"(v));");
    w.line("return r;");
    w.close("");
    w.line("// d += a (16x8, row) * b (8x8, col): TF32 inputs, fp32 accumulators.");
    w.open("__device__ __forceinline__ void sg_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2])");
    w.line("asm volatile(");
    w.line("    \"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\"");
    w.line("    : \"+f\"(d[0]), \"+f\"(d[1]), \"+f\"(d[2]), \"+f\"(d[3])");
    w.line("    : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"r\"(b[0]), \"r\"(b[1]));");
    w.close("");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn float_literals_round_trip() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            6.0,
            0.01,
            1e-7,
            3.4028235e38,
            1.1754944e-38,
            0.1,
        ] {
            let text = FloatLit(v).to_string();
            let parsed: f32 = text.trim_end_matches('f').parse().unwrap();
            assert_eq!(parsed.to_bits(), v.to_bits(), "{text}");
            assert!(text.contains('.') || text.contains('e'), "{text}");
        }
        assert_eq!(
            FloatLit(f32::INFINITY).to_string(),
            "__int_as_float(0x7f800000)"
        );
    }

    #[test]
    fn writer_indents_blocks() {
        let mut w = CWriter::new();
        w.open("if (x)").line("y = 1;").line("").close("");
        assert_eq!(w.finish(), "if (x) {\n    y = 1;\n\n}\n");
    }
}
