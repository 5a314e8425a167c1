//! `Geometry`: the part of a [`LayerSpec`](crate::LayerSpec) that decides the rulebook, and
//! the coordinate arithmetic every rulebook builder and kernel shares.
//!
//! Two layers with the same geometry over the same input coordinates have the same rulebook,
//! whatever their channels; the runtime's rulebook cache is keyed by it. The relations
//! between an input site `p`, an output site `o` and a kernel offset `k` (per axis) are
//! spconv 2.3.8's:
//!
//! | kind | `p` feeds `o` through `k` iff | output sites |
//! |---|---|---|
//! | submanifold | `p = o + (k − ⌊K/2⌋)·d` | the input sites |
//! | strided | `p = o·s − pad + k·d` | every `o` reached, `0 ≤ o < ⌊(n + 2pad − d(K−1) − 1)/s⌋ + 1` |
//! | transposed | `o = p·s − pad + k·d` | every `o` reached, `0 ≤ o < (n−1)s − 2pad + d(K−1) + outpad + 1` |
//! | inverse | the paired strided conv's pairs, `p` and `o` swapped | the paired conv's input sites |
//!
//! Kernel offsets are numbered row-major over the axes (`k = (k0·K1 + k1)·K2 + k2` in 3-D),
//! which is the order of spconv's KRSC weights.

use crate::spec::{ConvKind, MAX_DIMS};

/// The rulebook-deciding part of a layer: kind, kernel, stride, padding, dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Number of spatial dimensions.
    pub dims: u8,
    /// The kind of convolution.
    pub kind: ConvKind,
    /// Kernel size per axis.
    pub kernel: [u32; MAX_DIMS],
    /// Stride per axis.
    pub stride: [u32; MAX_DIMS],
    /// Padding per axis.
    pub padding: [u32; MAX_DIMS],
    /// Dilation per axis.
    pub dilation: [u32; MAX_DIMS],
    /// Output padding per axis (transposed only).
    pub output_padding: [u32; MAX_DIMS],
}

/// A spatial shape that a geometry cannot be applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The input shape has the wrong number of axes.
    #[error("the input has {got} spatial dimensions but the layer has {dims}")]
    Dims {
        /// Axes of the input.
        got: usize,
        /// Axes of the layer.
        dims: usize,
    },
    /// The (dilated) kernel does not fit into the padded input extent.
    #[error(
        "the kernel's extent {extent} is larger than the padded input extent {padded} on axis {axis} (spatial size {size}): the output would be empty"
    )]
    KernelTooLarge {
        /// The axis.
        axis: usize,
        /// The input size on that axis.
        size: u32,
        /// Input size plus twice the padding.
        padded: i64,
        /// Dilated kernel extent `d(K−1) + 1`.
        extent: i64,
    },
    /// The output shape does not fit into 32 bits per axis.
    #[error("the output extent {0} on some axis does not fit into 32 bits")]
    TooLarge(i64),
    /// An inverse convolution's shape comes from its paired strided convolution's rulebook.
    #[error(
        "an inverse convolution's output shape is its paired strided convolution's input shape"
    )]
    Inverse,
}

/// The first `dims` per-axis values, joined as in names: `3x3x3`.
pub fn axes_text(values: &[u32], dims: usize) -> String {
    values[..dims]
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

impl Geometry {
    /// The spatial dimensions as a `usize`.
    pub const fn dims(&self) -> usize {
        self.dims as usize
    }

    /// Number of kernel offsets.
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().map(|&k| k as usize).product()
    }

    /// The per-axis kernel position of offset index `k` (row-major).
    pub fn offset_position(&self, mut k: usize) -> [u32; MAX_DIMS] {
        let mut pos = [0; MAX_DIMS];
        for axis in (0..self.dims()).rev() {
            let size = self.kernel[axis] as usize;
            pos[axis] = (k % size) as u32;
            k /= size;
        }
        pos
    }

    /// For a submanifold geometry: the displacement `(k − ⌊K/2⌋)·d` of offset `k` per axis.
    pub fn submanifold_displacement(&self, k: usize) -> [i64; MAX_DIMS] {
        let pos = self.offset_position(k);
        let mut out = [0; MAX_DIMS];
        for axis in 0..self.dims() {
            let half = i64::from(self.kernel[axis] / 2);
            out[axis] = (i64::from(pos[axis]) - half) * i64::from(self.dilation[axis]);
        }
        out
    }

    /// The output spatial shape for an input of `shape`. For a submanifold conv it is the
    /// input shape; an inverse conv's comes from its partner ([`GeometryError::Inverse`]).
    pub fn output_shape(&self, shape: &[u32]) -> Result<Vec<u32>, GeometryError> {
        let dims = self.dims();
        if shape.len() != dims {
            return Err(GeometryError::Dims {
                got: shape.len(),
                dims,
            });
        }
        let mut out = Vec::with_capacity(dims);
        for (axis, &size) in shape.iter().enumerate() {
            let n = i64::from(size);
            let k = i64::from(self.kernel[axis]);
            let s = i64::from(self.stride[axis]);
            let p = i64::from(self.padding[axis]);
            let d = i64::from(self.dilation[axis]);
            let extent = d * (k - 1) + 1;
            let o = match self.kind {
                ConvKind::Submanifold => n,
                ConvKind::Strided => {
                    let padded = n + 2 * p;
                    if padded < extent {
                        return Err(GeometryError::KernelTooLarge {
                            axis,
                            size,
                            padded,
                            extent,
                        });
                    }
                    (padded - extent) / s + 1
                }
                ConvKind::Transposed => {
                    (n - 1) * s - 2 * p + extent + i64::from(self.output_padding[axis])
                }
                ConvKind::Inverse => return Err(GeometryError::Inverse),
            };
            if o <= 0 {
                return Err(GeometryError::KernelTooLarge {
                    axis,
                    size,
                    padded: n + 2 * p,
                    extent,
                });
            }
            out.push(u32::try_from(o).map_err(|_| GeometryError::TooLarge(o))?);
        }
        Ok(out)
    }

    /// A name of the geometry: kind, dims and kernel, then stride, padding, dilation and
    /// output padding where they are not neutral, e.g. `conv3_k3x3x3_s2x2x2_p1x1x1`. Layer
    /// kernel names and rulebook kernel names start with it.
    pub fn name(&self) -> String {
        let dims = self.dims();
        let axes = |v: &[u32; MAX_DIMS]| axes_text(v, dims);
        let mut name = format!("{}{}_k{}", self.kind.short_name(), dims, axes(&self.kernel));
        if self.stride[..dims].iter().any(|&s| s != 1) {
            name += &format!("_s{}", axes(&self.stride));
        }
        if self.padding[..dims].iter().any(|&p| p != 0) {
            name += &format!("_p{}", axes(&self.padding));
        }
        if self.dilation[..dims].iter().any(|&d| d != 1) {
            name += &format!("_d{}", axes(&self.dilation));
        }
        if self.output_padding[..dims].iter().any(|&p| p != 0) {
            name += &format!("_op{}", axes(&self.output_padding));
        }
        name
    }

    /// The most output sites one input site can feed: per axis, the most offsets `k` that put
    /// an input position on an output position (for a strided conv, those with
    /// `p + pad − k·d ≡ 0 (mod s)`, at best over the residues of `p`; every offset otherwise),
    /// multiplied over the axes. So a strided or transposed conv over `n` inputs has at most
    /// `n ·` this many distinct outputs (a stride-2, 3³ conv: 8, not 27).
    pub fn max_outputs_per_input(&self) -> usize {
        (0..self.dims())
            .map(|axis| {
                let k = i64::from(self.kernel[axis]);
                let s = i64::from(self.stride[axis]).max(1);
                let pad = i64::from(self.padding[axis]);
                let d = i64::from(self.dilation[axis]);
                match self.kind {
                    ConvKind::Strided => (0..s)
                        .map(|r| {
                            (0..k)
                                .filter(|&kk| (r + pad - kk * d).rem_euclid(s) == 0)
                                .count()
                        })
                        .max()
                        .unwrap_or(0),
                    ConvKind::Submanifold | ConvKind::Transposed | ConvKind::Inverse => k as usize,
                }
            })
            .product()
    }

    /// The geometry of the strided convolution an inverse one reuses (same fields, kind
    /// `Strided`); any other kind is returned unchanged.
    pub fn as_strided(&self) -> Geometry {
        match self.kind {
            ConvKind::Inverse => Geometry {
                kind: ConvKind::Strided,
                ..*self
            },
            _ => *self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConvKind, LayerSpec};

    #[test]
    fn outputs_per_input_bound_strided_fan_out() {
        let g = |k: u32, s: u32, p: u32, d: u32| {
            LayerSpec::builder(ConvKind::Strided, 3)
                .channels(1, 1)
                .kernel(k)
                .stride(s)
                .padding(p)
                .dilation(d)
                .build()
                .unwrap()
                .geometry()
        };
        assert_eq!(g(3, 2, 1, 1).max_outputs_per_input(), 8);
        assert_eq!(g(3, 1, 1, 1).max_outputs_per_input(), 27);
        assert_eq!(g(2, 2, 0, 1).max_outputs_per_input(), 1);
        assert_eq!(g(5, 2, 2, 1).max_outputs_per_input(), 27);
        // Brute force over positions: no input reaches more outputs than the bound.
        for (k, s, p, d) in [
            (3, 2, 1, 1),
            (3, 3, 0, 2),
            (4, 2, 1, 3),
            (5, 3, 2, 1),
            (1, 2, 0, 1),
        ] {
            let geometry = g(k, s, p, d);
            let per_axis = (0..40i64)
                .map(|pos| {
                    (0..i64::from(k))
                        .filter(|&kk| {
                            let t = pos + i64::from(p) - kk * i64::from(d);
                            t >= 0 && t % i64::from(s) == 0
                        })
                        .count()
                })
                .max()
                .unwrap();
            assert_eq!(
                geometry.max_outputs_per_input(),
                per_axis.pow(3),
                "k{k} s{s} p{p} d{d}"
            );
        }
    }

    fn geometry(kind: ConvKind, k: u32, s: u32, p: u32) -> Geometry {
        let b = LayerSpec::builder(kind, 3)
            .channels(1, 1)
            .kernel(k)
            .stride(s);
        let b = if kind == ConvKind::Submanifold {
            b
        } else {
            b.padding(p)
        };
        b.build().unwrap().geometry()
    }

    #[test]
    fn output_shapes_match_spconv() {
        // SECOND's grid through spconv3_s2 (k3 s2 p1): (41,1600,1408) -> (21,800,704).
        let g = geometry(ConvKind::Strided, 3, 2, 1);
        assert_eq!(
            g.output_shape(&[41, 1600, 1408]).unwrap(),
            vec![21, 800, 704]
        );
        let g = geometry(ConvKind::Strided, 3, 2, 0);
        assert_eq!(
            g.output_shape(&[41, 1600, 1408]).unwrap(),
            vec![20, 799, 703]
        );
        let t = geometry(ConvKind::Transposed, 3, 2, 1);
        assert_eq!(
            t.output_shape(&[21, 800, 704]).unwrap(),
            vec![41, 1599, 1407]
        );
        let sm = geometry(ConvKind::Submanifold, 3, 1, 0);
        assert_eq!(sm.output_shape(&[5, 6, 7]).unwrap(), vec![5, 6, 7]);
    }

    #[test]
    fn kernel_larger_than_extent_is_an_error() {
        let g = geometry(ConvKind::Strided, 5, 1, 0);
        assert!(matches!(
            g.output_shape(&[4, 10, 10]),
            Err(GeometryError::KernelTooLarge { axis: 0, .. })
        ));
        assert!(matches!(
            g.output_shape(&[10, 10]),
            Err(GeometryError::Dims { got: 2, dims: 3 })
        ));
    }

    #[test]
    fn offsets_are_row_major() {
        let g = geometry(ConvKind::Submanifold, 3, 1, 0);
        assert_eq!(g.offset_position(0), [0, 0, 0, 0]);
        assert_eq!(g.offset_position(5), [0, 1, 2, 0]);
        assert_eq!(g.offset_position(26), [2, 2, 2, 0]);
        assert_eq!(g.submanifold_displacement(13), [0, 0, 0, 0]);
        assert_eq!(g.submanifold_displacement(0), [-1, -1, -1, 0]);
    }
}
