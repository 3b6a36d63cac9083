//! Page registry: a radix tree of up to 4 levels (9 bits a level, like the x86-64 page tables)
//! from a 4 KiB virtual page to a non-zero `usize` value (the owning page header or main node).
//!
//! It is what the heaps use to validate a pointer without trusting in-band data: a pointer is
//! only looked at if its page is registered. Lookups are O(1) (at most four dependent loads).
//!
//! The tree is only as tall as its keys need: its root covers the keys that share the
//! `prefix` above its `height` levels (a single leaf for pages within one 2 MiB-aligned
//! window, 512 leaves under a root for one 1 GiB window, …). A key outside grows the tree by
//! a new root above the old one; when a removal leaves the root with a single child, the
//! child becomes the root. So a small heap pays one node page, not four (x86-64 page tables
//! always walk four levels; a tree of this kind is what Linux's radix tree / XArray does
//! with its `shift`).
//!
//! A registry of a few page runs needs no node page at all: while the tree is empty, up to
//! [`RUNS_INLINE`] runs `(first key, pages, value)` (a MeMS node, a mid-size region, the
//! first slabs) are kept inline in the struct, looked up by a binary search behind the cache.
//! The insert that would exceed them (or that overlaps one) moves them into the tree first
//! (the "spill"); the tree takes new runs until it is empty again. A page registered with its
//! own address as the value (a one-page slab) joins an adjacent run of such pages, so the
//! first slabs of a heap, handed out by the page pool in address order, take one run. So a fresh heap's
//! registries cost no page (and no first touch) until they hold many runs.
//!
//! Every node is one page from the [`PageSource`] holding 512 `u64` entries. An interior entry
//! is `child_base | population(child)`: the child is page-aligned, so its low 12 bits hold the
//! number of non-zero entries in the child (0..=512). The root's population is kept in the
//! struct. A node whose population drops to 0 is unmapped at once, so an empty registry holds
//! no pages. A small direct-mapped cache ([`CACHE`] entries, inside the struct) in front of
//! the tree serves repeated lookups of hot pages with one load; a change of a range updates
//! or clears the slots of the range's keys.
//!
//! Keys are canonical x86-64 virtual addresses: bits 47..12 index the tree (bits 63..48 must
//! equal bit 47, so the lower and upper halves never collide).

use core::cell::Cell;

mod tree;

use crate::{map, unmap, HeapError, PageSource};
use tree::{slot, COUNT_MASK};

const FANOUT: usize = 512;
/// Entries of the lookup cache (a power of two).
pub(crate) const CACHE: usize = 128;
/// Inline runs an insert may fill before the runs move into the tree.
pub(crate) const RUNS_INLINE: usize = 128;
/// Inline run slots: [`RUNS_INLINE`] plus room for the runs a removal splits in two.
pub(crate) const RUNS: usize = 160;
/// The value of an inline run of pages each registered with its own address (one-page
/// blocks of the page families, which come from the page pool in address order): not a
/// page address, so no caller's value.
const OWN: usize = usize::MAX;

/// See the module docs.
pub(crate) struct PageRegistry {
    /// Root node base address, 0 if none.
    root: usize,
    /// Non-zero entries in the root.
    root_count: usize,
    /// Levels of the tree (1 = the root is a leaf … 4), 0 if empty.
    height: usize,
    /// The key bits above the root's levels (`key >> (9 * height)`) shared by every key.
    prefix: usize,
    /// Pages mapped for nodes.
    node_pages: usize,
    /// Registered 4 KiB pages.
    entries: usize,
    /// Direct-mapped lookup cache: `(key + 1, value)`, indexed by the low bits of the key; a
    /// tag of 0 is empty. Only holds registered pages: a change of a range updates the slots
    /// of its keys.
    cache: [Cell<(usize, usize)>; CACHE],
    /// Inline runs `(first key, pages, value)`, sorted by key, disjoint, `pages >= 1`
    /// (binary-searched); only used while the tree is empty (`root == 0`), so `nruns != 0` implies `root == 0`.
    runs: [(usize, usize, usize); RUNS],
    nruns: usize,
    /// Index of the run the last inline lookup found (a hint; checked before use).
    last_run: Cell<usize>,
    /// Runs an insert may fill inline ([`RUNS_INLINE`]; 0 = always the tree).
    inline_max: u32,
    /// Pages unregistered because a removal split an inline run with every slot in use and
    /// no node page could be mapped to spill the runs (see [`PageRegistry::remove_range`];
    /// saturating, a test counter). With `inline_max`, 32 bits so the struct keeps its size.
    dropped: u32,
}

/// Page-number key of a canonical address, or `None` for a non-canonical one.
#[inline(always)]
fn key(va: usize) -> Option<usize> {
    let top = (va as u64 as i64) >> 47;
    if top == 0 || top == -1 {
        Some((va >> 12) & ((1usize << 36) - 1))
    } else {
        None
    }
}

/// The address of the page of key `k` (the inverse of [`key`]).
#[inline(always)]
fn key_base(k: usize) -> usize {
    let va = k << 12;
    if k & (1 << 35) != 0 {
        va | !((1usize << 48) - 1)
    } else {
        va
    }
}

/// The key of `base` if the `pages` pages from it are canonical and have consecutive keys
/// (they do not cross the non-canonical hole), so an inline run can hold them.
#[inline]
fn contiguous_keys(base: usize, pages: usize) -> Option<usize> {
    let last = base.checked_add(pages.checked_sub(1)?.checked_mul(4096)?)?;
    let (k, kl) = (key(base)?, key(last)?);
    (kl.checked_sub(k)? == pages - 1).then_some(k)
}

impl PageRegistry {
    pub(crate) const fn new() -> Self {
        PageRegistry {
            root: 0,
            root_count: 0,
            height: 0,
            prefix: 0,
            node_pages: 0,
            entries: 0,
            cache: [const { Cell::new((0, 0)) }; CACHE],
            runs: [(0, 0, 0); RUNS],
            nruns: 0,
            last_run: Cell::new(0),
            inline_max: RUNS_INLINE as u32,
            dropped: 0,
        }
    }

    /// A registry that never keeps runs inline (tests of the tree).
    #[cfg(test)]
    pub(crate) const fn tree_only() -> Self {
        Self::with_inline_max(0)
    }

    /// A registry whose inserts fill at most `n` inline runs (at most [`RUNS`]; tests).
    #[cfg(test)]
    pub(crate) const fn with_inline_max(n: usize) -> Self {
        let mut r = Self::new();
        r.inline_max = if n < RUNS { n as u32 } else { RUNS as u32 };
        r
    }

    /// Pages unregistered by a removal that split an inline run when no slot was free and no
    /// node page could be mapped (0 unless the page source ran out). Their owner's lookups
    /// read 0 (a free of such a block is refused and its pages leak), never a stale value;
    /// the heaps' audits see it as registered pages missing.
    #[cfg(test)]
    pub(crate) fn dropped_pages(&self) -> usize {
        self.dropped as usize
    }

    /// Inline runs held now (tests).
    #[cfg(test)]
    pub(crate) fn inline_runs(&self) -> usize {
        self.nruns
    }

    /// Pages this registry has mapped for its nodes.
    pub(crate) fn node_pages(&self) -> usize {
        self.node_pages
    }

    /// Number of registered pages.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// The value registered for the page containing `va`, or 0.
    #[inline(always)]
    pub(crate) fn get(&self, va: usize) -> usize {
        let Some(k) = key(va) else { return 0 };
        let c = &self.cache[k & (CACHE - 1)];
        let (ck, cv) = c.get();
        let tag = k + 1;
        if ck == tag {
            return cv;
        }
        let v = if self.nruns != 0 {
            self.run_get(k)
        } else {
            self.walk(k)
        };
        if v != 0 {
            c.set((tag, v));
        }
        v
    }

    /// Cache `value` for key `k` (registered now).
    #[inline(always)]
    fn cache_set(&self, k: usize, value: usize) {
        self.cache[k & (CACHE - 1)].set((k + 1, value));
    }

    /// The cached entries of keys `k .. k + n` now hold `value` (0: they are dropped). Looks
    /// at the `min(n, CACHE)` cache slots those keys map to.
    #[inline]
    fn cache_update(&self, k: usize, n: usize, value: usize) {
        for j in 0..n.min(CACHE) {
            let c = &self.cache[(k + j) & (CACHE - 1)];
            let ck = c.get().0;
            // Tagged `key + 1`: an empty slot (0) wraps and is no key of the range.
            if ck.wrapping_sub(k + 1) < n {
                c.set(if value == 0 { (0, 0) } else { (ck, value) });
            }
        }
    }

    /// Inline-run lookup of key `k`.
    #[inline]
    fn run_get(&self, k: usize) -> usize {
        let val = |v: usize| if v == OWN { key_base(k) } else { v };
        // The run of the last lookup, or a neighbour (a walk through a heap's blocks in
        // address order, either way), before a binary search. Any run the index holds now
        // is a registered run, so a stale index can only miss.
        let j = self.last_run.get();
        for i in [j, j + 1, j.wrapping_sub(1)] {
            if i < self.nruns {
                let (rk, n, v) = self.runs[i];
                if k.wrapping_sub(rk) < n {
                    self.last_run.set(i);
                    return val(v);
                }
            }
        }
        // The runs are sorted by key: the last one starting at or below `k`.
        let i = self.runs[..self.nruns].partition_point(|r| r.0 <= k);
        let Some(i) = i.checked_sub(1) else {
            return 0;
        };
        let (rk, n, v) = self.runs[i];
        if k - rk < n {
            self.last_run.set(i);
            val(v)
        } else {
            0
        }
    }

    /// Put `run` at index `i` of the inline runs (a free slot exists).
    fn run_insert(&mut self, i: usize, run: (usize, usize, usize)) {
        self.runs.copy_within(i..self.nruns, i + 1);
        self.runs[i] = run;
        self.nruns += 1;
    }

    /// Take the inline run at index `i` out.
    fn run_remove(&mut self, i: usize) {
        self.runs.copy_within(i + 1..self.nruns, i);
        self.nruns -= 1;
    }

    /// Register the page containing `va` with `value` (non-zero). Overwrites silently.
    #[cfg(test)]
    pub(crate) fn insert<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        va: usize,
        value: usize,
    ) -> Result<(), HeapError> {
        self.insert_range(src, va & !0xfff, 1, value)
    }

    /// Unregister the page containing `va`; returns the old value (0 if it was absent).
    #[cfg(test)]
    pub(crate) fn remove<S: PageSource + ?Sized>(&mut self, src: &mut S, va: usize) -> usize {
        let old = self.get(va);
        if old != 0 {
            self.remove_range(src, va & !0xfff, 1);
        }
        old
    }

    /// Register `pages` pages from `base` (page-aligned) with `value` (non-zero): inline while
    /// the tree is empty and fewer than [`RUNS_INLINE`] runs are held, else one tree walk per
    /// leaf node the range touches. On failure nothing of the range stays registered and the
    /// other pages keep their values.
    pub(crate) fn insert_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
        value: usize,
    ) -> Result<(), HeapError> {
        debug_assert!(value != 0 && value != OWN);
        if pages == 0 {
            return Ok(());
        }
        if self.root == 0 {
            if let Some(k) = contiguous_keys(base, pages) {
                // The runs are sorted by key: `i` is where this one goes.
                let i = self.runs[..self.nruns].partition_point(|r| r.0 < k);
                let prev = i.checked_sub(1).map(|j| self.runs[j]);
                let next = (i < self.nruns).then(|| self.runs[i]);
                let overlaps = prev.is_some_and(|(rk, n, _)| rk + n > k)
                    || next.is_some_and(|(rk, _, _)| rk < k + pages);
                // A page registered with its own address (a one-page block of the page
                // families) joins an adjacent run of such pages (both, if it fills a gap).
                let own = pages == 1 && value == base && self.inline_max != 0 && !overlaps;
                let after_prev = own && prev.is_some_and(|(rk, n, v)| v == OWN && rk + n == k);
                let before_next = own && next.is_some_and(|(rk, _, v)| v == OWN && k + 1 == rk);
                if after_prev && before_next {
                    self.runs[i - 1].1 += 1 + self.runs[i].1;
                    self.run_remove(i);
                } else if after_prev {
                    self.runs[i - 1].1 += 1;
                } else if before_next {
                    self.runs[i] = (k, self.runs[i].1 + 1, OWN);
                } else if self.nruns < self.inline_max as usize && !overlaps {
                    let v = if pages == 1 && value == base {
                        OWN
                    } else {
                        value
                    };
                    self.run_insert(i, (k, pages, v));
                } else {
                    self.spill(src)?;
                    return self.tree_insert_range(src, base, pages, value);
                }
                // No key of the range was registered, so none is cached.
                self.entries += pages;
                self.cache_set(k, value);
                return Ok(());
            }
            self.spill(src)?;
        }
        self.tree_insert_range(src, base, pages, value)
    }

    /// Move the inline runs into the tree; on failure the registry is as before.
    fn spill<S: PageSource + ?Sized>(&mut self, src: &mut S) -> Result<(), HeapError> {
        let n = self.nruns;
        if n == 0 {
            return Ok(());
        }
        let (runs, entries) = (self.runs, self.entries);
        self.nruns = 0;
        self.entries = 0;
        for i in 0..n {
            let (k, p, v) = runs[i];
            let r = if v == OWN {
                (k..k + p)
                    .try_for_each(|k| self.tree_insert_range(src, key_base(k), 1, key_base(k)))
            } else {
                self.tree_insert_range(src, key_base(k), p, v)
            };
            if let Err(e) = r {
                // Take the runs out again (the failed one may be partly in), which unmaps
                // every node mapped here.
                for &(k, p, _) in &runs[..=i] {
                    self.tree_remove_range(src, key_base(k), p);
                }
                debug_assert!(self.root == 0 && self.entries == 0);
                self.nruns = n;
                self.entries = entries;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unregister `pages` pages from `base` (page-aligned): inline runs are cut (a run split
    /// in two takes a free slot, or the runs move into the tree first), tree entries are
    /// cleared one walk per leaf node. Only if a split finds every slot in use and the page
    /// source cannot give a node page is the split run's tail unregistered too (counted in
    /// `dropped_pages`, a test counter).
    pub(crate) fn remove_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
    ) {
        if self.nruns == 0 {
            self.tree_remove_range(src, base, pages);
            return;
        }
        // In page numbers (`address >> 12`, so the top page of the upper half does not
        // overflow): the removal is [c, d), saturated at the top.
        let c = base >> 12;
        let d = c.saturating_add(pages);
        // The runs are sorted and disjoint: start at the first one ending after `c`.
        let mut i = self.runs[..self.nruns].partition_point(|r| (key_base(r.0) >> 12) + r.1 <= c);
        while i < self.nruns {
            let (rk, n, v) = self.runs[i];
            let a = key_base(rk) >> 12;
            let b = a + n;
            if a >= d {
                break;
            }
            let (lo, hi) = (a.max(c), b.min(d));
            let (left, right) = (lo - a, b - hi);
            let mid = n - left - right;
            if left != 0 && right != 0 && self.nruns == RUNS {
                if self.spill(src).is_ok() {
                    self.tree_remove_range(src, base, pages);
                    return;
                }
                // No slot and no node page: the tail goes too (see the docs).
                self.dropped = self
                    .dropped
                    .saturating_add(u32::try_from(right).unwrap_or(u32::MAX));
                self.entries -= right;
                self.cache_update(rk + left + mid, right, 0);
                self.runs[i].1 = n - right;
                continue;
            }
            self.entries -= mid;
            self.cache_update(rk + left, mid, 0);
            match (left, right) {
                (0, 0) => {
                    self.run_remove(i);
                    continue;
                }
                (_, 0) => self.runs[i].1 = left,
                (0, _) => self.runs[i] = (rk + left + mid, right, v),
                _ => {
                    self.runs[i].1 = left;
                    self.run_insert(i + 1, (rk + left + mid, right, v));
                    i += 1;
                }
            }
            i += 1;
        }
    }

    /// Give the registered pages of `pages` pages from `base` (page-aligned) the value
    /// `value` (non-zero, not a page's own address) in place: tree entries are overwritten,
    /// an inline run wholly inside the range takes the value. Maps nothing and registers
    /// nothing new, so it cannot fail; a page that is not registered, or that an inline run
    /// reaching outside the range holds, keeps what it has. Returns the pages that took it.
    pub(crate) fn set_range(&mut self, base: usize, pages: usize, value: usize) -> usize {
        debug_assert!(value != 0 && value != OWN);
        // In page numbers (`address >> 12`), saturated at the top: the range is [c, d).
        let c = base >> 12;
        let d = c.saturating_add(pages);
        let mut set = 0;
        if self.nruns != 0 {
            for i in 0..self.nruns {
                let (rk, n, _) = self.runs[i];
                let a = key_base(rk) >> 12;
                if a >= c && a + n <= d {
                    self.runs[i].2 = value;
                    self.cache_update(rk, n, value);
                    set += n;
                }
            }
            return set;
        }
        self.tree_set_range(base, pages, value)
    }

    /// Unmap every node (all entries are dropped).
    pub(crate) fn clear<S: PageSource + ?Sized>(&mut self, src: &mut S) {
        fn free_level<S: PageSource + ?Sized>(src: &mut S, node: usize, level: usize) -> usize {
            let mut freed = 1;
            if level > 0 {
                for i in 0..FANOUT {
                    // SAFETY: `node` is a live node page.
                    let e = unsafe { *slot(node, i) };
                    if e != 0 {
                        freed += free_level(src, (e & !COUNT_MASK) as usize, level - 1);
                    }
                }
            }
            unmap(src, node, 1);
            freed
        }
        if self.root != 0 {
            let freed = free_level(src, self.root, self.height - 1);
            self.node_pages -= freed;
        }
        debug_assert_eq!(self.node_pages, 0);
        self.nruns = 0;
        self.root = 0;
        self.root_count = 0;
        self.height = 0;
        self.prefix = 0;
        self.entries = 0;
        for c in &self.cache {
            c.set((0, 0));
        }
    }
}
