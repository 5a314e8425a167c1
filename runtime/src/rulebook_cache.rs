//! `RulebookCache`: one rulebook per (input coordinate set, geometry), shared by every layer
//! that needs it, and found again by the inverse convolution that pairs with a strided one.
//!
//! Layers with the same input sites and geometry (the SubM layers of one stage, whatever
//! their channels) share one rulebook. An inverse layer looks up the strided rulebook whose
//! *output* is its input and uses that rulebook's transpose. The cache holds what it built
//! until [`RulebookCache::clear`]; a program that runs frame after frame clears it per frame.

use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::HashMap;
use sparsegen_codegen::{ConvKind, Geometry};

use crate::error::{Error, Result};
use crate::rulebook::Rulebook;
use crate::tensor::{CoordSet, CoordSetId};

#[derive(Debug, Default)]
struct Entries {
    by_input: HashMap<(CoordSetId, Geometry), Arc<Rulebook>>,
    by_output: HashMap<(CoordSetId, Geometry), Arc<Rulebook>>,
    built: usize,
    hits: usize,
}

/// A thread-safe cache of rulebooks.
#[derive(Debug, Default)]
pub struct RulebookCache {
    entries: Mutex<Entries>,
}

/// Counters of a [`RulebookCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Rulebooks built.
    pub built: usize,
    /// Lookups answered from the cache.
    pub hits: usize,
    /// Rulebooks held now.
    pub held: usize,
}

impl RulebookCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rulebook of `geometry` over `input`, built on first use. For an inverse geometry,
    /// the transpose of the strided rulebook (same kernel, stride, padding, dilation) whose
    /// output sites are `input`; [`Error::NoPartner`] if no such rulebook was built.
    pub fn get_or_build(
        &self,
        input: &Arc<CoordSet>,
        geometry: &Geometry,
        layer: &str,
    ) -> Result<Arc<Rulebook>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if geometry.kind == ConvKind::Inverse {
            let partner = entries
                .by_output
                .get(&(input.id(), geometry.as_strided()))
                .cloned()
                .ok_or_else(|| Error::NoPartner {
                    layer: layer.into(),
                })?;
            entries.hits += 1;
            return Ok(partner.inverse());
        }
        let key = (input.id(), *geometry);
        if let Some(rb) = entries.by_input.get(&key) {
            let rb = rb.clone();
            entries.hits += 1;
            return Ok(rb);
        }
        // Build outside the lock so other threads' lookups are not held up.
        drop(entries);
        let rb = Arc::new(Rulebook::build(input, geometry, layer)?);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let rb = entries.by_input.entry(key).or_insert(rb).clone();
        entries
            .by_output
            .insert((rb.output().id(), *geometry), rb.clone());
        entries.built += 1;
        Ok(rb)
    }

    /// Drops every rulebook.
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.by_input.clear();
        entries.by_output.clear();
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        CacheStats {
            built: entries.built,
            hits: entries.hits,
            held: entries.by_input.len(),
        }
    }
}
