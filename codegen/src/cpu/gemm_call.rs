//! The GEMM-call kernel: a generated loop over the kernel offsets of a tile that calls a
//! Rust GEMM micro-kernel on each offset's gathered pairs, then the fused epilogue.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32X4, I32, I64};
use cranelift_codegen::ir::{Function, InstBuilder, UserFuncName};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::emit::{counted_loop, epilogue_store, read_only, signature_i64, writable};
use super::layout::{GemmLayout, LANES};
use super::{GEMM_CALLEE_PARAMS, frontend_config};
use crate::spec::LayerSpec;

pub(super) fn emit(spec: &LayerSpec, name: &str) -> Function {
    let layout = GemmLayout::new(spec);
    let mut func = Function::with_name_signature(UserFuncName::testcase(name), signature_i64(11));
    let callee = func.import_signature(signature_i64(GEMM_CALLEE_PARAMS));
    let mut ctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut ctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let p = b.block_params(entry).to_vec();
    let (counts, starts, in_rows, out_rows, rows) = (p[0], p[1], p[2], p[3], p[4]);
    let (input, weight, bias, acc, out, gemm) = (p[5], p[6], p[7], p[8], p[9], p[10]);
    let k_count = b.ins().iconst(I64, layout.kernel_volume as i64);
    counted_loop(&mut b, k_count, |b, k| {
        let k_byte = b.ins().ishl_imm_s(k, 2);
        let count_at = b.ins().iadd(counts, k_byte);
        let n = b.ins().load(I32, read_only(), count_at, 0);
        let empty = b.ins().icmp_imm_s(IntCC::Equal, n, 0);
        let body = b.create_block();
        let next = b.create_block();
        b.ins().brif(empty, next, &[], body, &[]);
        b.switch_to_block(body);
        b.seal_block(body);
        let start_at = b.ins().iadd(starts, k_byte);
        let start = b.ins().load(I32, read_only(), start_at, 0);
        let start = b.ins().uextend(I64, start);
        let start_byte = b.ins().ishl_imm_s(start, 2);
        let ins = b.ins().iadd(in_rows, start_byte);
        let outs = b.ins().iadd(out_rows, start_byte);
        let w_off = b.ins().imul_imm_s(k, (layout.offset_len() * 4) as i64);
        let w_k = b.ins().iadd(weight, w_off);
        let cin = b.ins().iconst(I64, layout.in_channels as i64);
        let cout_padded = b.ins().iconst(I64, layout.cout_padded as i64);
        let n = b.ins().uextend(I64, n);
        b.ins().call_indirect(
            callee,
            gemm,
            &[input, cin, w_k, cout_padded, ins, outs, n, acc],
        );
        b.ins().jump(next, &[]);
        b.switch_to_block(next);
        b.seal_block(next);
    });
    counted_loop(&mut b, rows, |b, r| {
        let acc_off = b.ins().imul_imm_s(r, (layout.cout_padded * 4) as i64);
        let acc_row = b.ins().iadd(acc, acc_off);
        let out_off = b.ins().imul_imm_s(r, (layout.out_channels * 4) as i64);
        let out_row = b.ins().iadd(out, out_off);
        for vector in 0..layout.out_channels.div_ceil(LANES) {
            let channel = vector * LANES;
            let v = b
                .ins()
                .load(F32X4, writable(), acc_row, (channel * 4) as i32);
            let valid = LANES.min(layout.out_channels - channel);
            let bias = spec.bias.then_some((bias, channel * 4));
            epilogue_store(b, v, bias, spec.activation, out_row, channel * 4, valid);
        }
    });
    b.ins().return_(&[]);
    b.finalize(frontend_config());
    func
}
