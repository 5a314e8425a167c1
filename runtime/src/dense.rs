//! A dense reference convolution, independent of rulebooks, for tests.
//!
//! It scatters the input into a dense grid of row indices and evaluates the layer's
//! definition directly at every output grid position (spconv's semantics, see
//! [`sparsegen_codegen::geometry`]), in f64. Its output sites are found by brute force over
//! the whole output grid, so it also checks the rulebook builder's output sets. Only for
//! small grids: it refuses grids of more than 2^24 cells.

use sparsegen_codegen::{ConvKind, LayerSpec, MAX_DIMS};

use crate::error::{Error, Result};
use crate::tensor::SparseTensor;

/// The largest grid (batch × cells) the dense reference accepts.
pub const MAX_CELLS: usize = 1 << 24;

/// Output of [`conv`]: coordinates `[N_out, 1 + dims]` and f64 features `[N_out, Cout]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseOutput {
    /// Output coordinates in output row order.
    pub coords: Vec<i32>,
    /// Output features, f64.
    pub features: Vec<f64>,
}

/// Evaluates `spec` on `input` densely. For an inverse layer, `partner_input` are the sites
/// of the paired strided convolution's input (the inverse's output sites, in their order)
/// and `input` lives on that convolution's output grid.
pub fn conv(
    spec: &LayerSpec,
    input: &SparseTensor,
    weight: &[f32],
    bias: Option<&[f32]>,
    partner_input: Option<&SparseTensor>,
) -> Result<DenseOutput> {
    let layer = spec.kernel_name();
    let dims = spec.dims();
    let g = spec.geometry();
    let in_shape = input.spatial_shape().to_vec();
    let batch = input.batch_size() as usize;
    let too_large = |what: &str| Error::Backend {
        backend: "dense",
        message: format!("{what} grid too large"),
    };
    let cells = |shape: &[u32]| shape.iter().map(|&s| s as usize).product::<usize>() * batch;
    if cells(&in_shape) > MAX_CELLS {
        return Err(too_large("input"));
    }
    let mut grid = vec![-1i64; cells(&in_shape)];
    let width = dims + 1;
    let flat = |c: &[i64], shape: &[u32]| -> usize {
        let mut f = c[0] as usize;
        for a in 0..dims {
            f = f * shape[a] as usize + c[a + 1] as usize;
        }
        f
    };
    for row in 0..input.len() {
        let c: Vec<i64> = input.coords()[row * width..(row + 1) * width]
            .iter()
            .map(|&v| i64::from(v))
            .collect();
        grid[flat(&c, &in_shape)] = row as i64;
    }
    // Candidate output sites.
    let candidates: Vec<Vec<i64>> = match spec.kind {
        ConvKind::Submanifold => rows_of(input.coords(), width),
        ConvKind::Inverse => {
            let partner = partner_input.ok_or(Error::NoPartner {
                layer: layer.clone(),
            })?;
            rows_of(partner.coords(), width)
        }
        ConvKind::Strided | ConvKind::Transposed => {
            let out_shape = g
                .output_shape(&in_shape)
                .map_err(|source| Error::Geometry {
                    layer: layer.clone(),
                    source,
                })?;
            if cells(&out_shape) > MAX_CELLS {
                return Err(too_large("output"));
            }
            let mut all = Vec::new();
            let mut c = vec![0i64; width];
            for f in 0..cells(&out_shape) {
                let mut rest = f;
                for a in (0..dims).rev() {
                    c[a + 1] = (rest % out_shape[a] as usize) as i64;
                    rest /= out_shape[a] as usize;
                }
                c[0] = rest as i64;
                all.push(c.clone());
            }
            all
        }
    };
    let kvol = spec.kernel_volume();
    let cout = spec.out_channels as usize;
    let cin_g = spec.in_per_group() as usize;
    let cout_g = spec.out_per_group() as usize;
    let mut coords = Vec::new();
    let mut features = Vec::new();
    for o in candidates {
        let mut acc = vec![0f64; cout];
        let mut reached = false;
        for k in 0..kvol {
            let pos = g.offset_position(k);
            let mut p = [0i64; MAX_DIMS + 1];
            p[0] = o[0];
            let mut inside = true;
            for a in 0..dims {
                let (oa, ka) = (o[a + 1], i64::from(pos[a]));
                let s = i64::from(g.stride[a]);
                let pad = i64::from(g.padding[a]);
                let d = i64::from(g.dilation[a]);
                let half = i64::from(g.kernel[a] / 2);
                let v = match spec.kind {
                    ConvKind::Submanifold => Some(oa + (ka - half) * d),
                    ConvKind::Strided => Some(oa * s - pad + ka * d),
                    ConvKind::Transposed | ConvKind::Inverse => {
                        let num = oa + pad - ka * d;
                        (num >= 0 && num % s == 0).then_some(num / s)
                    }
                };
                match v {
                    Some(v) if (0..i64::from(in_shape[a])).contains(&v) => p[a + 1] = v,
                    _ => inside = false,
                }
            }
            if !inside {
                continue;
            }
            let i = grid[flat(&p[..width], &in_shape)];
            if i < 0 {
                continue;
            }
            reached = true;
            let x = input.row(i as usize);
            for (co, a) in acc.iter_mut().enumerate() {
                let grp = co / cout_g;
                for ci in 0..cin_g {
                    let w = weight[(co * kvol + k) * cin_g + ci];
                    *a += f64::from(x[grp * cin_g + ci]) * f64::from(w);
                }
            }
        }
        let keeps_site = matches!(spec.kind, ConvKind::Submanifold | ConvKind::Inverse);
        if !reached && !keeps_site {
            continue;
        }
        coords.extend(o.iter().map(|&v| v as i32));
        for (co, a) in acc.into_iter().enumerate() {
            let b = bias.map_or(0.0, |b| f64::from(b[co]));
            features.push(f64::from(spec.activation.apply((a + b) as f32)));
        }
    }
    Ok(DenseOutput { coords, features })
}

fn rows_of(coords: &[i32], width: usize) -> Vec<Vec<i64>> {
    coords
        .chunks_exact(width)
        .map(|c| c.iter().map(|&v| i64::from(v)).collect())
        .collect()
}
