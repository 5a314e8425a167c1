//! The direct (output-stationary) kernel: rows × groups × passes × offsets × channels, with
//! the pass's `f32x4` accumulators in registers and one fused epilogue store per vector.
//!
//! With [`CpuTile::rows`] = 2 the rows are taken in pairs: a kernel offset present in both
//! rows loads each weight vector once for both (twice the independent FMA chains, half the
//! weight traffic); an offset present in one row runs that row alone. Each output element
//! still sums offsets then channels ascending, so the result is the same bit for bit.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I32, I64};
use cranelift_codegen::ir::{Function, InstBuilder, UserFuncName, Value};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};

use super::emit::{
    counted_loop, epilogue_store, offset, read_only, signature_i64, zero_accumulators,
};
use super::layout::{DirectLayout, LANES, Pass};
use super::{CpuTile, frontend_config};
use crate::spec::LayerSpec;

/// Pointers of one output row within one group.
#[derive(Clone, Copy)]
struct RowPointers {
    nbr_row: Value,
    out: Value,
}

/// Pointers shared by the rows of one group.
#[derive(Clone, Copy)]
struct GroupPointers {
    input: Value,
    weight: Value,
    bias: Value,
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
    let row_at = |b: &mut FunctionBuilder<'_>, r: Value| {
        let nbr_off = b.ins().imul_imm_s(r, (k_vol * 4) as i64);
        let nbr_row = b.ins().iadd(nbr, nbr_off);
        let out_off = b.ins().imul_imm_s(r, (cout * 4) as i64);
        let out_row = b.ins().iadd(out, out_off);
        RowPointers {
            nbr_row,
            out: out_row,
        }
    };
    let shared = GroupPointers {
        input,
        weight,
        bias,
    };
    let single_start = if tile.rows >= 2 {
        // Pairs of rows, then the odd last row alone.
        let pairs = b.ins().sshr_imm_s(rows, 1);
        counted_loop(&mut b, pairs, |b, pair| {
            let r0 = b.ins().ishl_imm_s(pair, 1);
            let r1 = b.ins().iadd_imm_s(r0, 1);
            let rows = [row_at(b, r0), row_at(b, r1)];
            emit_groups(b, spec, tile, &layout, shared, &rows);
        });
        b.ins().band_imm_s(rows, !1)
    } else {
        b.ins().iconst(I64, 0)
    };
    let remaining = b.ins().isub(rows, single_start);
    counted_loop(&mut b, remaining, |b, i| {
        let r = b.ins().iadd(single_start, i);
        let row = [row_at(b, r)];
        emit_groups(b, spec, tile, &layout, shared, &row);
    });
    b.ins().return_(&[]);
    b.finalize(frontend_config());
    func
}

/// Every group and pass of `rows` (1 or 2 rows).
fn emit_groups(
    b: &mut FunctionBuilder<'_>,
    spec: &LayerSpec,
    tile: &CpuTile,
    layout: &DirectLayout,
    shared: GroupPointers,
    rows: &[RowPointers],
) {
    if layout.groups == 1 {
        for pass in &layout.passes {
            emit_pass(b, spec, tile, layout, shared, rows, pass);
        }
        return;
    }
    let groups = b.ins().iconst(I64, layout.groups as i64);
    counted_loop(b, groups, |b, g| {
        let at = |b: &mut FunctionBuilder<'_>, base: Value, bytes: usize| {
            let off = b.ins().imul_imm_s(g, bytes as i64);
            b.ins().iadd(base, off)
        };
        let group = GroupPointers {
            input: at(b, shared.input, layout.in_per_group * 4),
            weight: at(b, shared.weight, layout.group_len() * 4),
            bias: at(b, shared.bias, layout.vectors_per_group * LANES * 4),
        };
        let rows: Vec<RowPointers> = rows
            .iter()
            .map(|r| RowPointers {
                nbr_row: r.nbr_row,
                out: at(b, r.out, layout.out_per_group * 4),
            })
            .collect();
        for pass in &layout.passes {
            emit_pass(b, spec, tile, layout, group, &rows, pass);
        }
    });
}

fn emit_pass(
    b: &mut FunctionBuilder<'_>,
    spec: &LayerSpec,
    tile: &CpuTile,
    layout: &DirectLayout,
    group: GroupPointers,
    rows: &[RowPointers],
    pass: &Pass,
) {
    let nvec = pass.vectors;
    let cin = spec.in_channels as usize;
    let cin_g = layout.in_per_group;
    let accs: Vec<Vec<Variable>> = rows.iter().map(|_| zero_accumulators(b, nvec)).collect();
    let w_pass = offset(b, group.weight, layout.pass_offset(pass) * 4);
    let k_count = b.ins().iconst(I64, layout.kernel_volume as i64);
    counted_loop(b, k_count, |b, k| {
        let k_byte = b.ins().ishl_imm_s(k, 2);
        let nbrs: Vec<Value> = rows
            .iter()
            .map(|r| {
                let slot = b.ins().iadd(r.nbr_row, k_byte);
                b.ins().load(I32, read_only(), slot, 0)
            })
            .collect();
        let w_off = b.ins().imul_imm_s(k, (cin_g * nvec * 16) as i64);
        let w_k = b.ins().iadd(w_pass, w_off);
        let row_ptr = |b: &mut FunctionBuilder<'_>, i: Value| {
            let i = b.ins().sextend(I64, i);
            let x_off = b.ins().imul_imm_s(i, (cin * 4) as i64);
            b.ins().iadd(group.input, x_off)
        };
        let next = b.create_block();
        // One body per subset of present rows: gather their rows, accumulate, next offset.
        let fill = |b: &mut FunctionBuilder<'_>, block, present: &[usize]| {
            b.switch_to_block(block);
            b.seal_block(block);
            let sets: Vec<(&[Variable], Value)> = present
                .iter()
                .map(|&r| (accs[r].as_slice(), row_ptr(b, nbrs[r])))
                .collect();
            channel_loop(b, tile, cin_g, nvec, &sets, w_k);
            b.ins().jump(next, &[]);
        };
        if rows.len() == 1 {
            let only = b.create_block();
            let absent = b.ins().icmp_imm_s(IntCC::SignedLessThan, nbrs[0], 0);
            b.ins().brif(absent, next, &[], only, &[]);
            fill(b, only, &[0]);
        } else {
            let a_present = b.create_block();
            let a_absent = b.create_block();
            let both = b.create_block();
            let first = b.create_block();
            let second = b.create_block();
            let a_ok = b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, nbrs[0], 0);
            let b_ok = b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, nbrs[1], 0);
            b.ins().brif(a_ok, a_present, &[], a_absent, &[]);
            b.switch_to_block(a_present);
            b.seal_block(a_present);
            b.ins().brif(b_ok, both, &[], first, &[]);
            b.switch_to_block(a_absent);
            b.seal_block(a_absent);
            b.ins().brif(b_ok, second, &[], next, &[]);
            fill(b, both, &[0, 1]);
            fill(b, first, &[0]);
            fill(b, second, &[1]);
        }
        b.switch_to_block(next);
        b.seal_block(next);
    });
    for (r, row) in rows.iter().enumerate() {
        for (j, &acc) in accs[r].iter().enumerate() {
            let vector = pass.vector_start + j;
            let channel = vector * LANES;
            let valid = LANES.min(layout.out_per_group - channel);
            let acc = b.use_var(acc);
            let bias = spec.bias.then_some((group.bias, vector * LANES * 4));
            epilogue_store(b, acc, bias, spec.activation, row.out, channel * 4, valid);
        }
    }
}

/// `acc += x[ci] · W_k[ci]` over the group's input channels for each (accumulators, input
/// row) set, sharing the weight loads: fully unrolled for narrow groups, else a counted loop
/// of `ci_unroll` channels plus an unrolled remainder.
fn channel_loop(
    b: &mut FunctionBuilder<'_>,
    tile: &CpuTile,
    cin_g: usize,
    nvec: usize,
    sets: &[(&[Variable], Value)],
    w_k: Value,
) {
    let w_stride = nvec * 16;
    if cin_g <= usize::from(tile.ci_full_unroll) {
        for ci in 0..cin_g {
            fma_rows(b, sets, None, ci * 4, w_k, ci * w_stride);
        }
        return;
    }
    let unroll = usize::from(tile.ci_unroll);
    let iters = cin_g / unroll;
    let count = b.ins().iconst(I64, iters as i64);
    counted_loop(b, count, |b, it| {
        let x_off = b.ins().imul_imm_s(it, (unroll * 4) as i64);
        let w_off = b.ins().imul_imm_s(it, (unroll * w_stride) as i64);
        let w = b.ins().iadd(w_k, w_off);
        for u in 0..unroll {
            fma_rows(b, sets, Some(x_off), u * 4, w, u * w_stride);
        }
    });
    for ci in iters * unroll..cin_g {
        fma_rows(b, sets, None, ci * 4, w_k, ci * w_stride);
    }
}

/// One input channel: broadcast `x[ci]` of each set, then per accumulator vector load the
/// weights once and `acc[j] = fma(splat(x[ci]), w[j], acc[j])` for each set.
fn fma_rows(
    b: &mut FunctionBuilder<'_>,
    sets: &[(&[Variable], Value)],
    x_dyn: Option<Value>,
    x_byte: usize,
    w_ptr: Value,
    w_byte: usize,
) {
    let xs: Vec<Value> = sets
        .iter()
        .map(|&(_, x_row)| {
            let x_ptr = match x_dyn {
                Some(off) => b.ins().iadd(x_row, off),
                None => x_row,
            };
            let x = b.ins().load(F32, read_only(), x_ptr, x_byte as i32);
            b.ins().splat(F32X4, x)
        })
        .collect();
    let nvec = sets.first().map_or(0, |s| s.0.len());
    for j in 0..nvec {
        let w = b
            .ins()
            .load(F32X4, read_only(), w_ptr, (w_byte + j * 16) as i32);
        for (&(accs, _), &x) in sets.iter().zip(&xs) {
            let a = b.use_var(accs[j]);
            let a = b.ins().fma(x, w, a);
            b.def_var(accs[j], a);
        }
    }
}
