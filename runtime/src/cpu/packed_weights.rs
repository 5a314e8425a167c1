//! `PackedWeights`: a layer's weights packed once per kernel layout and reused.
//!
//! Packing reorders `[Cout, K, Cin/groups]` into the layout a kernel's strides assume (see
//! [`sparsegen_codegen::cpu::layout`]); for a wide layer that is a few hundred thousand
//! scattered writes, worth doing once rather than on every call. An entry is found again by
//! the layer spec, the layout and the *contents* of the weights and bias (compared bit for
//! bit, so a new layer that happens to reuse freed memory never gets stale weights). The
//! cache holds the most recent [`PackedWeights::CAPACITY`] packings.

use std::sync::{Arc, Mutex, PoisonError};

use sparsegen_codegen::LayerSpec;

use super::executor::Packed;

/// Which layout a packing is for: the strategy's layout and its pass width.
pub(crate) type LayoutKey = (sparsegen_codegen::cpu::CpuStrategy, u8);

struct Entry {
    spec: LayerSpec,
    layout: LayoutKey,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    packed: Arc<Packed>,
}

/// A small cache of packed weights.
#[derive(Default)]
pub(crate) struct PackedWeights {
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("PackedWeights")
            .field("entries", &n)
            .finish()
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl PackedWeights {
    /// Packings kept.
    pub(crate) const CAPACITY: usize = 32;

    /// The packing of `weight`/`bias` for `spec` and `layout`, made by `pack` on a miss.
    pub(crate) fn get_or_pack(
        &self,
        spec: &LayerSpec,
        layout: LayoutKey,
        weight: &[f32],
        bias: Option<&[f32]>,
        pack: impl FnOnce() -> Packed,
    ) -> Arc<Packed> {
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let hit = entries.iter().rev().find(|e| {
                e.spec == *spec
                    && e.layout == layout
                    && same_bits(&e.weight, weight)
                    && match (&e.bias, bias) {
                        (Some(a), Some(b)) => same_bits(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if let Some(hit) = hit {
                return hit.packed.clone();
            }
        }
        let packed = Arc::new(pack());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= Self::CAPACITY {
            entries.remove(0);
        }
        entries.push(Entry {
            spec: *spec,
            layout,
            weight: weight.to_vec(),
            bias: bias.map(<[f32]>::to_vec),
            packed: packed.clone(),
        });
        packed
    }
}
