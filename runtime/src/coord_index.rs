//! `CoordIndex`: finds the row of a coordinate, and whole runs of neighbours at once.
//!
//! Coordinates `(b, c0, .., c{D-1})` are packed into one 64-bit key in mixed radix
//! (batch, then each axis of the spatial shape), so every key order is the lexicographic
//! order of the coordinates and grids of any size up to 2^63 sites work (no int32
//! overflow). The index sorts the rows by key once and groups them into *lines*: rows that
//! share everything but the last axis. The sorted line keys let a rulebook builder that
//! visits outputs in sorted order find the input line of every leading-axis offset with a
//! cursor that only moves forward ([`CoordIndex::seek_line`]): a merge, not a hash probe per
//! (site, offset). Within a line the last-axis coordinates are sorted, so the last axis is a
//! merge too. For random lookups ([`CoordIndex::find`]) a `hashbrown` map from line key to
//! line is built on first use; it grows with its input, there is no capacity to overflow.
//!
//! Sorting also finds duplicate coordinates for free, which is where they are rejected.

use std::sync::OnceLock;

use hashbrown::HashMap;
use rayon::prelude::*;

use crate::error::TensorError;

/// Mixed-radix packing of `(b, c0, .., c{D-1})` into a `u64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPacking {
    shape: Vec<u32>,
}

impl KeyPacking {
    /// A packing for `batch_size` batches of a grid of `shape`; fails when the number of
    /// sites exceeds 2^63.
    pub fn new(shape: &[u32], batch_size: u32) -> Result<Self, TensorError> {
        let mut total: u128 = u128::from(batch_size.max(1));
        for &s in shape {
            total *= u128::from(s);
        }
        if total > 1 << 63 {
            return Err(TensorError::KeyOverflow {
                batch_size,
                shape: shape.to_vec(),
            });
        }
        Ok(KeyPacking {
            shape: shape.to_vec(),
        })
    }

    /// Spatial dims.
    pub fn dims(&self) -> usize {
        self.shape.len()
    }

    /// The spatial shape.
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }

    /// Key of a coordinate row (batch first). The coordinate must be in range.
    #[inline]
    pub fn key(&self, coord: &[i32]) -> u64 {
        let mut key = coord[0] as u64;
        for (axis, &size) in self.shape.iter().enumerate() {
            key = key * u64::from(size) + coord[axis + 1] as u64;
        }
        key
    }

    /// Key of a line: the coordinate without its last axis.
    #[inline]
    pub fn line_key(&self, coord: &[i32]) -> u64 {
        let dims = self.shape.len();
        let mut key = coord[0] as u64;
        for axis in 0..dims - 1 {
            key = key * u64::from(self.shape[axis]) + coord[axis + 1] as u64;
        }
        key
    }

    /// The coordinate row (batch first) of a key.
    pub fn unpack(&self, mut key: u64, out: &mut [i32]) {
        for axis in (0..self.shape.len()).rev() {
            let size = u64::from(self.shape[axis]);
            out[axis + 1] = (key % size) as i32;
            key /= size;
        }
        out[0] = key as i32;
    }
}

/// A run of rows sharing a line, in sorted order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Start of the run in the index's sorted order.
    pub start: u32,
    /// End (exclusive).
    pub end: u32,
}

/// Index of a coordinate set: sorted order, sorted line keys and last-axis coordinates.
#[derive(Debug)]
pub struct CoordIndex {
    packing: KeyPacking,
    /// Row ids in key order.
    sorted_rows: Vec<u32>,
    /// Last-axis coordinate of each row, in key order.
    sorted_last: Vec<i32>,
    /// Distinct line keys, ascending.
    line_keys: Vec<u64>,
    /// Start of each line in sorted order, plus the end (`line_keys.len() + 1` entries).
    line_starts: Vec<u32>,
    /// Line key → line number, for random lookups; built on first use.
    line_map: OnceLock<HashMap<u64, u32>>,
    /// Whether the rows were already in key order.
    identity: bool,
}

impl CoordIndex {
    /// Indexes `coords` (`[N, 1 + dims]`, batch first, already range-checked). Fails on
    /// duplicate coordinates, naming both rows.
    pub fn build(coords: &[i32], packing: KeyPacking) -> Result<Self, TensorError> {
        let width = packing.dims() + 1;
        let n = coords.len() / width;
        let keys: Vec<u64> = coords
            .par_chunks_exact(width)
            .map(|c| packing.key(c))
            .collect();
        let identity = keys.par_windows(2).all(|w| w[0] < w[1]);
        let row_bits = u64::BITS - (n.saturating_sub(1) as u64).leading_zeros();
        // Only read when the rows are not sorted already (the common case skips this pass).
        let key_bits = || u64::BITS - keys.par_iter().copied().max().unwrap_or(0).leading_zeros();
        let sorted_rows: Vec<u32> = if identity {
            (0..n as u32).collect()
        } else if key_bits() + row_bits <= u64::BITS {
            // Key and row packed into one u64 (unique, so the order is total): a radix sort
            // of those beats a comparison sort of pairs.
            let mut packed: Vec<u64> = keys
                .par_iter()
                .enumerate()
                .map(|(row, &k)| (k << row_bits) | row as u64)
                .collect();
            crate::radix_sort::sort_u64(&mut packed);
            let row_mask = (1u64 << row_bits) - 1;
            packed.par_iter().map(|&p| (p & row_mask) as u32).collect()
        } else {
            let mut order: Vec<(u64, u32)> = keys
                .iter()
                .enumerate()
                .map(|(row, &k)| (k, row as u32))
                .collect();
            order.par_sort_unstable();
            order.into_iter().map(|(_, row)| row).collect()
        };
        if !identity {
            let dup = sorted_rows
                .par_windows(2)
                .find_first(|w| keys[w[0] as usize] == keys[w[1] as usize]);
            if let Some(w) = dup {
                let (a, b) = (w[0].min(w[1]) as usize, w[0].max(w[1]) as usize);
                return Err(TensorError::Duplicate {
                    first: a,
                    second: b,
                    coord: coords[a * width..(a + 1) * width].to_vec(),
                });
            }
        }
        let sorted_last: Vec<i32> = sorted_rows
            .par_iter()
            .map(|&r| coords[r as usize * width + width - 1])
            .collect();
        let line_keys_sorted: Vec<u64> = sorted_rows
            .par_iter()
            .map(|&r| packing.line_key(&coords[r as usize * width..(r as usize + 1) * width]))
            .collect();
        let mut line_starts: Vec<u32> = (0..n)
            .into_par_iter()
            .filter(|&pos| pos == 0 || line_keys_sorted[pos] != line_keys_sorted[pos - 1])
            .map(|pos| pos as u32)
            .collect();
        let line_keys: Vec<u64> = line_starts
            .par_iter()
            .map(|&pos| line_keys_sorted[pos as usize])
            .collect();
        line_starts.push(n as u32);
        Ok(CoordIndex {
            packing,
            sorted_rows,
            sorted_last,
            line_keys,
            line_starts,
            line_map: OnceLock::new(),
            identity,
        })
    }

    /// The key packing.
    pub fn packing(&self) -> &KeyPacking {
        &self.packing
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.sorted_rows.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.sorted_rows.is_empty()
    }

    /// Row ids in key (lexicographic coordinate) order.
    pub fn sorted_rows(&self) -> &[u32] {
        &self.sorted_rows
    }

    /// Whether the rows are already in key order (`sorted_rows[i] == i`).
    pub fn is_sorted(&self) -> bool {
        self.identity
    }

    /// Number of lines.
    pub fn n_lines(&self) -> usize {
        self.line_keys.len()
    }

    /// The run of line number `i`.
    #[inline]
    pub fn line_at(&self, i: usize) -> Line {
        Line {
            start: self.line_starts[i],
            end: self.line_starts[i + 1],
        }
    }

    /// The run of a line key, if any row lies on it (a hash lookup).
    #[inline]
    pub fn line(&self, line_key: u64) -> Option<Line> {
        let map = self.line_map.get_or_init(|| {
            let mut map = HashMap::with_capacity(self.line_keys.len());
            map.extend(
                self.line_keys
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| (k, i as u32)),
            );
            map
        });
        map.get(&line_key).map(|&i| self.line_at(i as usize))
    }

    /// Moves `cursor` (a line number) forward to the first line whose key is `≥ line_key`,
    /// galloping, and returns that line if its key equals `line_key`. Visiting queries in
    /// ascending order makes a sweep over all of them linear in the number of lines.
    #[inline]
    pub fn seek_line(&self, cursor: &mut usize, line_key: u64) -> Option<Line> {
        let keys = &self.line_keys;
        let mut lo = *cursor;
        if lo < keys.len() && keys[lo] < line_key {
            let mut step = 1;
            while lo + step < keys.len() && keys[lo + step] < line_key {
                lo += step;
                step *= 2;
            }
            let hi = (lo + step).min(keys.len());
            lo += keys[lo..hi].partition_point(|&k| k < line_key);
        }
        *cursor = lo;
        (lo < keys.len() && keys[lo] == line_key).then(|| self.line_at(lo))
    }

    /// Last-axis coordinates of a line's rows (sorted ascending).
    #[inline]
    pub fn line_last(&self, line: Line) -> &[i32] {
        &self.sorted_last[line.start as usize..line.end as usize]
    }

    /// Last-axis coordinates of all rows in sorted order.
    #[inline]
    pub fn sorted_last(&self) -> &[i32] {
        &self.sorted_last
    }

    /// The row at sorted position `pos`.
    #[inline]
    pub fn row_at(&self, pos: usize) -> u32 {
        self.sorted_rows[pos]
    }

    /// The row of a coordinate (batch first), if present.
    pub fn find(&self, coord: &[i32]) -> Option<u32> {
        let line = self.line(self.packing.line_key(coord))?;
        let last = coord[coord.len() - 1];
        let offset = self.line_last(line).binary_search(&last).ok()?;
        Some(self.sorted_rows[line.start as usize + offset])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rows_and_lines() {
        let coords = [0, 1, 2, 3, 0, 1, 2, 1, 1, 0, 0, 0, 0, 1, 2, 2];
        let idx = CoordIndex::build(&coords, KeyPacking::new(&[4, 4, 4], 2).unwrap()).unwrap();
        assert!(!idx.is_sorted());
        assert_eq!(idx.find(&[0, 1, 2, 1]), Some(1));
        assert_eq!(idx.find(&[0, 1, 2, 2]), Some(3));
        assert_eq!(idx.find(&[1, 0, 0, 0]), Some(2));
        assert_eq!(idx.find(&[0, 1, 2, 0]), None);
        let line = idx.line(idx.packing().line_key(&[0, 1, 2, 0])).unwrap();
        assert_eq!(idx.line_last(line), &[1, 2, 3]);
        let mut cursor = 0;
        let key = idx.packing().line_key(&[0, 1, 2, 0]);
        assert_eq!(idx.seek_line(&mut cursor, key - 1), None);
        assert_eq!(idx.seek_line(&mut cursor, key), Some(line));
        assert_eq!(idx.seek_line(&mut cursor, key + 1), None);
        assert_eq!(cursor, idx.n_lines() - 1);
    }

    #[test]
    fn rejects_duplicates() {
        let coords = [0, 1, 1, 0, 2, 2, 0, 1, 1];
        let err = CoordIndex::build(&coords, KeyPacking::new(&[4, 4], 1).unwrap()).unwrap_err();
        assert_eq!(
            err,
            TensorError::Duplicate {
                first: 0,
                second: 2,
                coord: vec![0, 1, 1]
            }
        );
    }

    /// Both sort paths (key and row packed into a u64 for the radix sort; pairs when they do
    /// not fit) order thousands of shuffled rows as a plain sort does, and find duplicates.
    #[test]
    fn large_shuffled_sets_sort_and_reject_duplicates() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for shape in [[64u32, 64, 64], [1 << 20, 1 << 20, 1 << 20]] {
            let packing = KeyPacking::new(&shape, 3).unwrap();
            let mut seen = std::collections::HashSet::new();
            let mut coords = Vec::new();
            while seen.len() < 5000 {
                let c = [
                    (next() % 3) as i32,
                    (next() % u64::from(shape[0])) as i32,
                    (next() % u64::from(shape[1])) as i32,
                    (next() % u64::from(shape[2])) as i32,
                ];
                if seen.insert(c) {
                    coords.extend(c);
                }
            }
            let idx = CoordIndex::build(&coords, packing.clone()).unwrap();
            let mut want: Vec<u32> = (0..5000).collect();
            want.sort_by_key(|&r| packing.key(&coords[r as usize * 4..r as usize * 4 + 4]));
            assert_eq!(idx.sorted_rows(), want, "shape {shape:?}");
            let mut dup = coords.clone();
            dup.extend_from_slice(&coords[4 * 1234..4 * 1235]);
            let err = CoordIndex::build(&dup, packing).unwrap_err();
            assert!(
                matches!(
                    err,
                    TensorError::Duplicate {
                        first: 1234,
                        second: 5000,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn keys_beyond_32_bits() {
        let shape = [100_000, 100_000, 100_000];
        let p = KeyPacking::new(&shape, 4).unwrap();
        let c = [3, 99_999, 5, 99_998];
        let mut back = [0; 4];
        p.unpack(p.key(&c), &mut back);
        assert_eq!(back, c);
        assert!(KeyPacking::new(&[u32::MAX, u32::MAX, u32::MAX], 1).is_err());
    }
}
