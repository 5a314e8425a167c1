//! The direct (output-stationary) kernel: rows × groups × passes × offsets × channels, with
//! the pass's `f32x4` accumulators in registers and one fused epilogue store per vector.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{Function, InstBuilder, UserFuncName, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::emit::{
    counted_loop, epilogue_store, fma_row, offset, read_only, signature_i64, zero_accumulators,
};
use super::layout::{DirectLayout, LANES, Pass};
use super::{CpuTile, frontend_config};
use crate::spec::LayerSpec;

/// Pointers of one group of one output row.
struct GroupPointers {
    nbr_row: Value,
    input: Value,
    weight: Value,
    bias: Value,
    out: Value,
}

pub(super) fn emit(spec: &LayerSpec, tile: &CpuTile, name: &str) -> Function {
    let layout = DirectLayout::new(spec, usize::from(tile.max_vectors));
    let mut func = Function::with_name_signature(UserFuncName::testcase(name), signature_i64(6));
    let mut ctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut ctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let p = b.block_params(entry).to_vec();
    let (nbr, rows, input, weight, bias, out) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let k_vol = layout.kernel_volume;
    let cout = spec.out_channels as usize;
    counted_loop(&mut b, rows, |b, r| {
        let nbr_off = b.ins().imul_imm_s(r, (k_vol * 4) as i64);
        let nbr_row = b.ins().iadd(nbr, nbr_off);
        let out_off = b.ins().imul_imm_s(r, (cout * 4) as i64);
        let out_row = b.ins().iadd(out, out_off);
        if layout.groups == 1 {
            let ptrs = GroupPointers {
                nbr_row,
                input,
                weight,
                bias,
                out: out_row,
            };
            emit_group(b, spec, tile, &layout, &ptrs);
        } else {
            let groups = b.ins().iconst(I64, layout.groups as i64);
            counted_loop(b, groups, |b, g| {
                let at = |b: &mut FunctionBuilder<'_>, base: Value, bytes: usize| {
                    let off = b.ins().imul_imm_s(g, bytes as i64);
                    b.ins().iadd(base, off)
                };
                let ptrs = GroupPointers {
                    nbr_row,
                    input: at(b, input, layout.in_per_group * 4),
                    weight: at(b, weight, layout.group_len() * 4),
                    bias: at(b, bias, layout.vectors_per_group * LANES * 4),
                    out: at(b, out_row, layout.out_per_group * 4),
                };
                emit_group(b, spec, tile, &layout, &ptrs);
            });
        }
    });
    b.ins().return_(&[]);
    b.finalize(frontend_config());
    func
}

fn emit_group(
    b: &mut FunctionBuilder<'_>,
    spec: &LayerSpec,
    tile: &CpuTile,
    layout: &DirectLayout,
    ptrs: &GroupPointers,
) {
    for pass in &layout.passes {
        emit_pass(b, spec, tile, layout, ptrs, pass);
    }
}

fn emit_pass(
    b: &mut FunctionBuilder<'_>,
    spec: &LayerSpec,
    tile: &CpuTile,
    layout: &DirectLayout,
    ptrs: &GroupPointers,
    pass: &Pass,
) {
    let nvec = pass.vectors;
    let cin = spec.in_channels as usize;
    let cin_g = layout.in_per_group;
    let accs = zero_accumulators(b, nvec);
    let w_pass = offset(b, ptrs.weight, layout.pass_offset(pass) * 4);
    let k_count = b.ins().iconst(I64, layout.kernel_volume as i64);
    counted_loop(b, k_count, |b, k| {
        let k_byte = b.ins().ishl_imm_s(k, 2);
        let slot = b.ins().iadd(ptrs.nbr_row, k_byte);
        let i = b.ins().load(I32, read_only(), slot, 0);
        let absent = b.ins().icmp_imm_s(IntCC::SignedLessThan, i, 0);
        let body = b.create_block();
        let next = b.create_block();
        b.ins().brif(absent, next, &[], body, &[]);
        b.switch_to_block(body);
        b.seal_block(body);
        let i = b.ins().sextend(I64, i);
        let x_off = b.ins().imul_imm_s(i, (cin * 4) as i64);
        let x_row = b.ins().iadd(ptrs.input, x_off);
        let w_off = b.ins().imul_imm_s(k, (cin_g * nvec * 16) as i64);
        let w_k = b.ins().iadd(w_pass, w_off);
        channel_loop(b, tile, cin_g, nvec, &accs, x_row, w_k);
        b.ins().jump(next, &[]);
        b.switch_to_block(next);
        b.seal_block(next);
    });
    for (j, &acc) in accs.iter().enumerate() {
        let vector = pass.vector_start + j;
        let channel = vector * LANES;
        let valid = LANES.min(layout.out_per_group - channel);
        let acc = b.use_var(acc);
        let bias = spec.bias.then_some((ptrs.bias, vector * LANES * 4));
        epilogue_store(b, acc, bias, spec.activation, ptrs.out, channel * 4, valid);
    }
}

/// `acc += x[ci] · W_k[ci]` over the group's input channels: fully unrolled for narrow
/// groups, else a counted loop of `ci_unroll` channels plus an unrolled remainder.
fn channel_loop(
    b: &mut FunctionBuilder<'_>,
    tile: &CpuTile,
    cin_g: usize,
    nvec: usize,
    accs: &[cranelift_frontend::Variable],
    x_row: Value,
    w_k: Value,
) {
    let w_stride = nvec * 16;
    if cin_g <= usize::from(tile.ci_full_unroll) {
        for ci in 0..cin_g {
            fma_row(b, accs, x_row, ci * 4, w_k, ci * w_stride);
        }
        return;
    }
    let unroll = usize::from(tile.ci_unroll);
    let iters = cin_g / unroll;
    let count = b.ins().iconst(I64, iters as i64);
    counted_loop(b, count, |b, it| {
        let x_off = b.ins().imul_imm_s(it, (unroll * 4) as i64);
        let x = b.ins().iadd(x_row, x_off);
        let w_off = b.ins().imul_imm_s(it, (unroll * w_stride) as i64);
        let w = b.ins().iadd(w_k, w_off);
        for u in 0..unroll {
            fma_row(b, accs, x, u * 4, w, u * w_stride);
        }
    });
    for ci in iters * unroll..cin_g {
        fma_row(b, accs, x_row, ci * 4, w_k, ci * w_stride);
    }
}
