//! A small pool that keeps the memory of dropped rulebook tables for the next build.
//!
//! A `[N_out, K]` table is tens of megabytes (120k sites × 125 offsets × 4 B = 60 MB), far
//! above the allocator's mmap threshold, so every fresh table is page-faulted in from
//! scratch and unmapped again when dropped — a quarter of a rulebook build in profiles. A
//! program that runs frame after frame builds tables of about the same size each frame; the
//! pool hands it back the memory of the last frame's. Bounded in count and bytes; contents
//! are not reused, only the memory.

use std::sync::{Mutex, PoisonError};

/// Buffers kept at most.
const MAX_BUFFERS: usize = 16;
/// Bytes kept at most.
const MAX_BYTES: usize = 1 << 30;

static POOL: Mutex<Vec<Vec<i32>>> = Mutex::new(Vec::new());

/// An empty vector with capacity for at least `len` elements: the smallest pooled buffer
/// that fits, or a new one.
pub(crate) fn take(len: usize) -> Vec<i32> {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= len)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let mut v = pool.swap_remove(i);
            v.clear();
            v
        }
        None => Vec::with_capacity(len),
    }
}

/// Returns a buffer's memory to the pool (dropping the smallest ones beyond the bounds).
pub(crate) fn give(v: Vec<i32>) {
    if v.capacity() < 1 << 16 {
        return; // small buffers are cheap to allocate
    }
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    pool.push(v);
    pool.sort_by_key(|v| std::cmp::Reverse(v.capacity()));
    let mut bytes = 0;
    let keep = pool
        .iter()
        .take_while(|v| {
            bytes += v.capacity() * 4;
            bytes <= MAX_BYTES
        })
        .count()
        .min(MAX_BUFFERS);
    pool.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_smallest_fitting_buffer() {
        give(Vec::with_capacity(1 << 20));
        give(Vec::with_capacity(1 << 18));
        let v = take(1 << 17);
        assert!(v.is_empty());
        assert!(v.capacity() >= 1 << 17);
        let w = take(1 << 19);
        assert!(w.capacity() >= 1 << 19);
    }
}
