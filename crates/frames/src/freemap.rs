//! [`FreeMap`]: an extent allocator over a range of integers (the host uses bytes of
//! guest-virtual address space for the guest's `mmap` requests).
//!
//! Source: seed `000_79339277aaa7d822.txt` (`FreeMemManager`: a `BTreeMap` of free blocks
//! `start → length`, `alloc_freemap` / `dealloc_freemap`, merging of adjacent free blocks).
//! Here the free extents are kept in an address-ordered treap whose nodes carry their
//! subtree's largest length (first fit without scanning) plus a `(length, start)` set (best
//! fit). Frees merge with both neighbours; overlapping and double frees are errors.

use std::collections::BTreeSet;

use super::treap::{align_up, ExtentTree};
use super::{FrameError, Result};

/// How [`FreeMap::alloc_with`] picks among the free extents that can hold a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FitPolicy {
    /// The lowest-addressed extent that can hold the aligned request; the result is its
    /// lowest aligned start (the seed's behaviour).
    #[default]
    FirstFit,
    /// The smallest extent that can hold the aligned request (ties: lowest address); the
    /// result is its lowest aligned start.
    BestFit,
}

/// Free-extent allocator over `[start, start + len)` (units are the caller's, e.g. bytes).
/// Initially the whole range is one free extent.
#[derive(Clone, Debug)]
pub struct FreeMap {
    start: u64,
    end: u64,
    tree: ExtentTree,
    by_size: BTreeSet<(u64, u64)>,
    free: u64,
    allocations: u64,
    frees: u64,
    failures: u64,
}

impl FreeMap {
    /// A map of `[start, start + len)`, all free.
    ///
    /// # Panics
    /// If `start + len` overflows `u64`; use [`FreeMap::try_new`] for untrusted input.
    pub fn new(start: u64, len: u64) -> Self {
        match Self::try_new(start, len) {
            Ok(m) => m,
            Err(e) => panic!("FreeMap::new: {e}"),
        }
    }

    /// A map of `[start, start + len)`, all free. `len` may be 0 (nothing to allocate).
    ///
    /// # Errors
    /// [`FrameError::BadRange`] if `start + len` overflows `u64`.
    pub fn try_new(start: u64, len: u64) -> Result<Self> {
        let end = start
            .checked_add(len)
            .ok_or(FrameError::BadRange { start, len })?;
        let mut m = Self {
            start,
            end,
            tree: ExtentTree::new(),
            by_size: BTreeSet::new(),
            free: 0,
            allocations: 0,
            frees: 0,
            failures: 0,
        };
        if len > 0 {
            m.insert(start, len);
        }
        Ok(m)
    }

    fn insert(&mut self, start: u64, len: u64) {
        self.tree.insert(start, len);
        self.by_size.insert((len, start));
        self.free += len;
    }

    fn remove(&mut self, start: u64, len: u64) {
        self.tree.remove(start);
        self.by_size.remove(&(len, start));
        self.free -= len;
    }

    /// The managed range `(start, len)`.
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end - self.start)
    }

    /// Allocate `len` units at a multiple of `align` (a power of two), first fit.
    ///
    /// # Errors
    /// As [`alloc_with`](Self::alloc_with).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64> {
        self.alloc_with(len, align, FitPolicy::FirstFit)
    }

    /// Allocate `len` units at a multiple of `align` (a power of two) using `policy`; returns
    /// the start. First fit costs O(log n) expected (more only when extents of length in
    /// `[len, len + align - 1)` fail to fit because of alignment); best fit walks the size
    /// index from `len` and stops at the first fit (an extent of `len + align - 1` or more
    /// always fits).
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`] (`len == 0`), [`FrameError::BadAlign`],
    /// [`FrameError::NoSpace`]. Nothing changes on error.
    pub fn alloc_with(&mut self, len: u64, align: u64, policy: FitPolicy) -> Result<u64> {
        let r = self.alloc_inner(len, align, policy);
        match r {
            Ok(_) => self.allocations += 1,
            Err(_) => self.failures += 1,
        }
        r
    }

    fn alloc_inner(&mut self, len: u64, align: u64, policy: FitPolicy) -> Result<u64> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        if !align.is_power_of_two() {
            return Err(FrameError::BadAlign { align });
        }
        let none = FrameError::NoSpace { len, align };
        if len > self.free {
            return Err(none);
        }
        let (es, el, a) = match policy {
            FitPolicy::FirstFit => self.tree.first_fit(len, align),
            FitPolicy::BestFit => self.by_size.range((len, 0)..).find_map(|&(el, es)| {
                let a = align_up(es, align)?;
                (a - es <= el && el - (a - es) >= len).then_some((es, el, a))
            }),
        }
        .ok_or(none)?;
        self.remove(es, el);
        if a > es {
            self.insert(es, a - es);
        }
        let tail = (es + el) - (a + len);
        if tail > 0 {
            self.insert(a + len, tail);
        }
        Ok(a)
    }

    /// Allocate exactly `[start, start + len)` (a fixed-address request); it must lie inside
    /// one free extent. O(log n) expected.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`] (`len == 0`); [`FrameError::BadRange`] (overflow or outside
    /// the map); [`FrameError::Overlap`] if any unit of the range is allocated (`other_*` is
    /// the free extent holding `start`, or `(start, 0)` if `start` itself is allocated).
    /// Nothing changes on error.
    pub fn alloc_at(&mut self, start: u64, len: u64) -> Result<u64> {
        let r = self.alloc_at_inner(start, len);
        match r {
            Ok(_) => self.allocations += 1,
            Err(_) => self.failures += 1,
        }
        r
    }

    fn alloc_at_inner(&mut self, start: u64, len: u64) -> Result<u64> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        let bad = FrameError::BadRange { start, len };
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if start < self.start || end > self.end {
            return Err(bad);
        }
        let (es, el) = match self.tree.pred_le(start) {
            Some((es, el)) if es + el > start => (es, el),
            _ => {
                return Err(FrameError::Overlap {
                    start,
                    len,
                    other_start: start,
                    other_len: 0,
                })
            }
        };
        if es + el < end {
            return Err(FrameError::Overlap {
                start,
                len,
                other_start: es,
                other_len: el,
            });
        }
        self.remove(es, el);
        if start > es {
            self.insert(es, start - es);
        }
        if es + el > end {
            self.insert(end, es + el - end);
        }
        Ok(start)
    }

    /// Return `[start, start + len)` to the map, merging with free neighbours on both sides.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`]; [`FrameError::BadRange`] (overflow or outside the map);
    /// [`FrameError::DoubleFreeExtent`] if the range is already entirely free;
    /// [`FrameError::Overlap`] if it partly overlaps a free extent (reported). Nothing
    /// changes on error.
    pub fn free(&mut self, start: u64, len: u64) -> Result<()> {
        let r = self.free_inner(start, len);
        match r {
            Ok(()) => self.frees += 1,
            Err(_) => self.failures += 1,
        }
        r
    }

    fn free_inner(&mut self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        let bad = FrameError::BadRange { start, len };
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if start < self.start || end > self.end {
            return Err(bad);
        }
        let pred = self.tree.pred_le(start);
        if let Some((ps, pl)) = pred {
            let pe = ps + pl;
            if pe >= end {
                return Err(FrameError::DoubleFreeExtent { start, len });
            }
            if pe > start {
                return Err(FrameError::Overlap {
                    start,
                    len,
                    other_start: ps,
                    other_len: pl,
                });
            }
        }
        let succ = self.tree.succ_gt(start);
        if let Some((ss, sl)) = succ {
            if ss < end {
                return Err(FrameError::Overlap {
                    start,
                    len,
                    other_start: ss,
                    other_len: sl,
                });
            }
        }
        let (mut s, mut e) = (start, end);
        if let Some((ps, pl)) = pred.filter(|&(ps, pl)| ps + pl == start) {
            self.remove(ps, pl);
            s = ps;
        }
        if let Some((ss, sl)) = succ.filter(|&(ss, _)| ss == end) {
            self.remove(ss, sl);
            e = ss + sl;
        }
        self.insert(s, e - s);
        Ok(())
    }

    /// Free units.
    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// The free extents `(start, len)`, in address order, maximal (never touching).
    pub fn extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.tree.iter()
    }

    /// Number of free extents.
    pub fn extent_count(&self) -> usize {
        self.tree.len()
    }

    /// Length of the largest free extent (0 if none).
    pub fn largest_extent(&self) -> u64 {
        self.tree.max_len()
    }

    /// `(allocations, frees, failures)`: successful allocation calls, successful free calls,
    /// calls that returned an error.
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.allocations, self.frees, self.failures)
    }

    /// Bytes of metadata (tree arena, size index estimated at 40 bytes per entry, struct).
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.tree.bytes() + self.by_size.len() * 40
    }
}
