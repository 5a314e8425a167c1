//! Small IR-building helpers shared by the two kernel shapes: memory flags, counted loops,
//! and the fused epilogue (bias, activation, one store per vector).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Signature, Value};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};

use crate::spec::Activation;

/// Flags of loads from buffers the kernel never writes (input, weights, table, bias).
pub(super) fn read_only() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

/// Flags of stores to (and loads from) buffers the kernel writes.
pub(super) fn writable() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// A System V signature of `n` 64-bit parameters and no results.
pub(super) fn signature_i64(n: usize) -> Signature {
    let mut sig = Signature::new(CallConv::SystemV);
    sig.params.extend((0..n).map(|_| AbiParam::new(I64)));
    sig
}

/// A pointer plus a constant byte offset (no instruction when the offset is 0).
pub(super) fn offset(b: &mut FunctionBuilder<'_>, ptr: Value, bytes: usize) -> Value {
    if bytes == 0 {
        ptr
    } else {
        b.ins().iadd_imm_s(ptr, bytes as i64)
    }
}

/// A counted loop `for var in 0..count` (count an i64 value, possibly 0). Calls `body` in the
/// loop block with the induction value; returns with the builder in the exit block.
pub(super) fn counted_loop(
    b: &mut FunctionBuilder<'_>,
    count: Value,
    mut body: impl FnMut(&mut FunctionBuilder<'_>, Value),
) {
    let header = b.create_block();
    let exit = b.create_block();
    let var = b.declare_var(I64);
    let zero = b.ins().iconst(I64, 0);
    b.def_var(var, zero);
    let empty = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, count, 0);
    b.ins().brif(empty, exit, &[], header, &[]);
    b.switch_to_block(header);
    let i = b.use_var(var);
    body(b, i);
    let i = b.use_var(var);
    let next = b.ins().iadd_imm_s(i, 1);
    b.def_var(var, next);
    let more = b.ins().icmp(IntCC::SignedLessThan, next, count);
    b.ins().brif(more, header, &[], exit, &[]);
    b.seal_block(header);
    b.switch_to_block(exit);
    b.seal_block(exit);
}

/// Declares `n` f32x4 accumulator variables set to +0.
pub(super) fn zero_accumulators(b: &mut FunctionBuilder<'_>, n: usize) -> Vec<Variable> {
    let zero = b.ins().f32const(0.0f32);
    let zero = b.ins().splat(F32X4, zero);
    (0..n)
        .map(|_| {
            let v = b.declare_var(F32X4);
            b.def_var(v, zero);
            v
        })
        .collect()
}

/// Applies the activation to a vector exactly as [`Activation::apply`] does lane by lane:
/// comparisons select, so NaN passes through every activation.
pub(super) fn activate(b: &mut FunctionBuilder<'_>, x: Value, activation: Activation) -> Value {
    let splat = |b: &mut FunctionBuilder<'_>, v: f32| {
        let s = b.ins().f32const(v);
        b.ins().splat(F32X4, s)
    };
    let mask = |b: &mut FunctionBuilder<'_>, cc: FloatCC, x: Value, y: Value| {
        let m = b.ins().fcmp(cc, x, y);
        b.ins().bitcast(F32X4, MemFlagsData::new(), m)
    };
    match activation {
        Activation::Identity => x,
        Activation::Relu => {
            let zero = splat(b, 0.0);
            let neg = mask(b, FloatCC::LessThan, x, zero);
            b.ins().bitselect(neg, zero, x)
        }
        Activation::Relu6 => {
            let zero = splat(b, 0.0);
            let six = splat(b, 6.0);
            let over = mask(b, FloatCC::GreaterThan, x, six);
            let capped = b.ins().bitselect(over, six, x);
            let neg = mask(b, FloatCC::LessThan, x, zero);
            b.ins().bitselect(neg, zero, capped)
        }
        Activation::LeakyRelu {
            negative_slope_bits,
        } => {
            let zero = splat(b, 0.0);
            let slope = splat(b, f32::from_bits(negative_slope_bits));
            let scaled = b.ins().fmul(x, slope);
            let neg = mask(b, FloatCC::LessThan, x, zero);
            b.ins().bitselect(neg, scaled, x)
        }
    }
}

/// The fused epilogue of one accumulator vector: `+ bias` (when the layer has one), the
/// activation, and one store of its `valid` lanes (4 = a vector store, fewer = lane stores
/// so a row never writes past its channels).
#[allow(clippy::too_many_arguments)]
pub(super) fn epilogue_store(
    b: &mut FunctionBuilder<'_>,
    acc: Value,
    bias: Option<(Value, usize)>,
    activation: Activation,
    out: Value,
    out_byte: usize,
    valid: usize,
) {
    let mut v = acc;
    if let Some((bias_ptr, bias_byte)) = bias {
        let bv = b.ins().load(F32X4, read_only(), bias_ptr, bias_byte as i32);
        v = b.ins().fadd(v, bv);
    }
    let v = activate(b, v, activation);
    if valid >= 4 {
        b.ins().store(writable(), v, out, out_byte as i32);
    } else {
        for lane in 0..valid {
            let s = b.ins().extractlane(v, lane as u8);
            b.ins()
                .store(writable(), s, out, (out_byte + lane * 4) as i32);
        }
    }
}
