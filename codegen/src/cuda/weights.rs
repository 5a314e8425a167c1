//! How the conv kernels want their weights laid out, and the pure function that repacks
//! spconv's KRSC weights into that layout. The runtime converts the packed values to the
//! storage dtype and uploads them once per layer.

use crate::spec::LayerSpec;

use super::tile::ConvTile;

/// A weight layout of the generated kernels. spconv stores `[Cout, K, Cin/groups]` (KRSC);
/// the kernels read one `(group, offset)` slice at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[groups, K, Cin/groups, Cout/groups]`: output channels contiguous (SIMT tiles load
    /// a row of channels per input channel).
    GroupOffsetInOut,
    /// `[groups, K, Cout/groups, Cin/groups]`: input channels contiguous (the "col" B operand
    /// of `mma.sync`).
    GroupOffsetOutIn,
}

impl WeightLayout {
    /// The layout a tile kind reads.
    pub const fn for_tile(tile: &ConvTile) -> Self {
        match tile {
            ConvTile::Simt { .. } => WeightLayout::GroupOffsetInOut,
            ConvTile::Mma { .. } | ConvTile::MmaTf32 { .. } => WeightLayout::GroupOffsetOutIn,
        }
    }
}

/// Repacks KRSC weights (`spec.weight_len()` values) into `layout`. Returns `None` when the
/// buffer has the wrong length.
pub fn pack_weights(spec: &LayerSpec, layout: WeightLayout, krsc: &[f32]) -> Option<Vec<f32>> {
    if krsc.len() != spec.weight_len() {
        return None;
    }
    let k_vol = spec.kernel_volume();
    let cin_g = spec.in_per_group() as usize;
    let cout_g = spec.out_per_group() as usize;
    let mut out = vec![0f32; krsc.len()];
    for co in 0..spec.out_channels as usize {
        let (g, n) = (co / cout_g, co % cout_g);
        for k in 0..k_vol {
            for ci in 0..cin_g {
                let src = (co * k_vol + k) * cin_g + ci;
                let dst = match layout {
                    WeightLayout::GroupOffsetInOut => ((g * k_vol + k) * cin_g + ci) * cout_g + n,
                    WeightLayout::GroupOffsetOutIn => ((g * k_vol + k) * cout_g + n) * cin_g + ci,
                };
                out[dst] = krsc[src];
            }
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ConvKind;

    #[test]
    fn packing_moves_each_weight_once() {
        let spec = LayerSpec::builder(ConvKind::Submanifold, 2)
            .channels(4, 6)
            .groups(2)
            .build()
            .unwrap();
        let krsc: Vec<f32> = (0..spec.weight_len()).map(|i| i as f32).collect();
        for layout in [
            WeightLayout::GroupOffsetInOut,
            WeightLayout::GroupOffsetOutIn,
        ] {
            let mut packed = pack_weights(&spec, layout, &krsc).unwrap();
            packed.sort_by(f32::total_cmp);
            assert_eq!(packed, krsc);
        }
        // Output channel 4 is group 1, n = 1; offset 2, input channel 1 of its group.
        let src = (4 * 9 + 2) * 2 + 1;
        let io = pack_weights(&spec, WeightLayout::GroupOffsetInOut, &krsc).unwrap();
        assert_eq!(io[((9 + 2) * 2 + 1) * 3 + 1], krsc[src]);
        let oi = pack_weights(&spec, WeightLayout::GroupOffsetOutIn, &krsc).unwrap();
        assert_eq!(oi[((9 + 2) * 3 + 1) * 2 + 1], krsc[src]);
        assert!(pack_weights(&spec, WeightLayout::GroupOffsetOutIn, &krsc[1..]).is_none());
    }
}
