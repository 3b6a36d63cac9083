//! [`TableSet`]: the table frames of a [`PageTables`](super::PageTables) with their levels.
//!
//! A hash map with a multiplicative hash of the frame number: inserting the 512 page tables
//! of a 1 GiB map costs a few ns each, far less than a `BTreeMap` insert. Frame numbers come
//! from the VMM's allocator, never from the guest, so hash flooding is not a concern. The
//! range query behind the writable-mapping check probes `min(range, tables)` entries.

use crate::addr::Pfn;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing of a `u64` key.
#[derive(Default, Clone, Copy)]
pub(super) struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Table frame → level (4 = PML4 … 1 = PT).
#[derive(Debug, Default, Clone)]
pub(super) struct TableSet {
    map: HashMap<Pfn, u8, BuildHasherDefault<PfnHasher>>,
}

impl TableSet {
    /// Level of `pfn`, if it is a table.
    pub(super) fn get(&self, pfn: Pfn) -> Option<u8> {
        self.map.get(&pfn).copied()
    }

    /// Add `pfn` at `level`; false (and no change) if it already is a table.
    pub(super) fn insert_new(&mut self, pfn: Pfn, level: u8) -> bool {
        match self.map.entry(pfn) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(level);
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    /// Room for `additional` more tables without rehashing.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// Remove `pfn`, returning its level.
    pub(super) fn remove(&mut self, pfn: Pfn) -> Option<u8> {
        self.map.remove(&pfn)
    }

    /// Number of table frames.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// All table frames, ascending.
    pub(super) fn sorted(&self) -> Vec<Pfn> {
        let mut v: Vec<Pfn> = self.map.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// All table frames, in no particular order.
    pub(super) fn into_pfns(self) -> impl Iterator<Item = Pfn> {
        self.map.into_keys()
    }

    /// The lowest table frame in `[first, last]`, if any.
    pub(super) fn lowest_in(&self, first: Pfn, last: Pfn) -> Option<Pfn> {
        if first > last {
            return None;
        }
        let span = last.raw() - first.raw();
        if span < self.map.len() as u64 {
            (first.raw()..=last.raw())
                .map(Pfn::new)
                .find(|p| self.map.contains_key(p))
        } else {
            self.map
                .keys()
                .copied()
                .filter(|p| (first..=last).contains(p))
                .min()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_query_remove() {
        let mut s = TableSet::default();
        for (p, l) in [(10, 4), (12, 3), (500, 1)] {
            assert!(s.insert_new(Pfn::new(p), l));
        }
        assert!(!s.insert_new(Pfn::new(12), 2));
        assert_eq!(s.get(Pfn::new(12)), Some(3));
        assert_eq!(s.len(), 3);
        assert_eq!(s.sorted(), [Pfn::new(10), Pfn::new(12), Pfn::new(500)]);
        // Both strategies of the range query.
        assert_eq!(s.lowest_in(Pfn::new(11), Pfn::new(12)), Some(Pfn::new(12)));
        assert_eq!(
            s.lowest_in(Pfn::new(11), Pfn::new(u64::MAX)),
            Some(Pfn::new(12))
        );
        assert_eq!(s.lowest_in(Pfn::new(13), Pfn::new(499)), None);
        assert_eq!(s.lowest_in(Pfn::new(13), Pfn::new(14)), None);
        assert_eq!(s.lowest_in(Pfn::new(14), Pfn::new(13)), None);
        assert_eq!(s.remove(Pfn::new(12)), Some(3));
        assert_eq!(s.get(Pfn::new(12)), None);
    }
}
