//! Page registry: a 4-level radix tree (9 bits a level, like the x86-64 page tables) from a
//! 4 KiB virtual page to a non-zero `usize` value (the owning page header or main node).
//!
//! It is what the heaps use to validate a pointer without trusting in-band data: a pointer is
//! only looked at if its page is registered. Lookups are O(1) (four dependent loads).
//!
//! Every node is one page from the [`PageSource`] holding 512 `u64` entries. An interior entry
//! is `child_base | population(child)`: the child is page-aligned, so its low 12 bits hold the
//! number of non-zero entries in the child (0..=512). The root's population is kept in the
//! struct. A node whose population drops to 0 is unmapped at once, so an empty registry holds
//! no pages. A small direct-mapped cache ([`CACHE`] entries, inside the struct) in front of
//! the tree serves repeated lookups of hot pages with one load. Keys are canonical x86-64 virtual addresses: bits 47..12 index the tree (bits
//! 63..48 must equal bit 47, so the lower and upper halves never collide).

use core::cell::Cell;

use crate::{at, map, unmap, HeapError, PageSource};

const FANOUT: usize = 512;
const COUNT_MASK: u64 = 0xfff;
/// Entries of the lookup cache (a power of two).
pub(crate) const CACHE: usize = 128;

/// See the module docs.
pub(crate) struct PageRegistry {
    /// Root node base address, 0 if none.
    root: usize,
    /// Non-zero entries in the root.
    root_count: usize,
    /// Pages mapped for nodes.
    node_pages: usize,
    /// Registered 4 KiB pages.
    entries: usize,
    /// Direct-mapped lookup cache: `(key + 1, value)`, indexed by the low bits of the key;
    /// `(0, _)` is empty. Only holds registered pages (cleared on removal).
    cache: [Cell<(usize, usize)>; CACHE],
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

#[inline(always)]
fn indices(k: usize) -> [usize; 4] {
    [k & 511, (k >> 9) & 511, (k >> 18) & 511, (k >> 27) & 511]
}

/// Entry `i` of the node at `node`.
#[inline(always)]
fn slot(node: usize, i: usize) -> *mut u64 {
    debug_assert!(i < FANOUT);
    at::<u64>(node + i * 8)
}

impl PageRegistry {
    pub(crate) const fn new() -> Self {
        PageRegistry {
            root: 0,
            root_count: 0,
            node_pages: 0,
            entries: 0,
            cache: [const { Cell::new((0, 0)) }; CACHE],
        }
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
        if ck == k + 1 {
            return cv;
        }
        let v = self.walk(k);
        if v != 0 {
            c.set((k + 1, v));
        }
        v
    }

    /// Tree lookup of key `k`.
    #[inline]
    fn walk(&self, k: usize) -> usize {
        if self.root == 0 {
            return 0;
        }
        let idx = indices(k);
        let mut node = self.root;
        for level in (1..4).rev() {
            // SAFETY: `node` is a live node page (the root, or a child recorded in its parent's
            // entry) of 512 entries and `idx[level] < 512`.
            let e = unsafe { *slot(node, idx[level]) };
            if e == 0 {
                return 0;
            }
            node = (e & !COUNT_MASK) as usize;
        }
        // SAFETY: as above, `node` is a live leaf page.
        unsafe { *slot(node, idx[0]) as usize }
    }

    fn add(&mut self, c: Counter, delta: i64) -> u64 {
        match c {
            Counter::Root => {
                self.root_count = (self.root_count as i64 + delta) as usize;
                self.root_count as u64
            }
            Counter::Entry(p) => {
                // SAFETY: `p` is an interior entry of a live node (see `counter`); the count
                // stays within 0..=512 so it never carries into the pointer bits.
                unsafe {
                    let e = *p;
                    let n = ((e & COUNT_MASK) as i64 + delta) as u64;
                    *p = (e & !COUNT_MASK) | n;
                    n
                }
            }
        }
    }

    /// Unmap empty nodes from `from_level` upwards along the path (after a failed insert or a
    /// removal).
    ///
    /// # Safety
    /// `nodes[from_level..]` must be the live nodes on the path of `idx`.
    unsafe fn prune<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        nodes: &[usize; 4],
        idx: &[usize; 4],
        from_level: usize,
    ) {
        for level in from_level..4 {
            let c = counter(nodes, idx, level);
            let n = match c {
                Counter::Root => self.root_count as u64,
                // SAFETY: a live interior entry.
                Counter::Entry(p) => unsafe { *p & COUNT_MASK },
            };
            if n != 0 {
                return;
            }
            unmap(src, nodes[level], 1);
            self.node_pages -= 1;
            if level == 3 {
                self.root = 0;
            } else {
                // SAFETY: the parent is live; clear its entry and its population.
                unsafe { *slot(nodes[level + 1], idx[level + 1]) = 0 };
                self.add(counter(nodes, idx, level + 1), -1);
            }
        }
    }

    /// Register the page containing `va` with `value` (non-zero). Overwrites silently.
    pub(crate) fn insert<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        va: usize,
        value: usize,
    ) -> Result<(), HeapError> {
        debug_assert!(value != 0);
        let k = key(va).ok_or(HeapError::InvalidPointer {
            addr: va,
            reason: "page source returned a non-canonical address",
        })?;
        let idx = indices(k);
        let mut nodes = [0usize; 4];
        if self.root == 0 {
            self.root = map(src, 1).ok_or(HeapError::OutOfMemory { pages: 1 })?;
            self.node_pages += 1;
        }
        nodes[3] = self.root;
        for level in (1..4).rev() {
            let s = slot(nodes[level], idx[level]);
            // SAFETY: `nodes[level]` is a live node page and the index is < 512.
            let e = unsafe { *s };
            if e == 0 {
                let Some(child) = map(src, 1) else {
                    // SAFETY: nodes[level..] is the live path.
                    unsafe { self.prune(src, &nodes, &idx, level) };
                    return Err(HeapError::OutOfMemory { pages: 1 });
                };
                self.node_pages += 1;
                // SAFETY: as above; `child` is page-aligned so the count bits are 0.
                unsafe { *s = child as u64 };
                let c = counter(&nodes, &idx, level);
                self.add(c, 1);
                nodes[level - 1] = child;
            } else {
                nodes[level - 1] = (e & !COUNT_MASK) as usize;
            }
        }
        let s = slot(nodes[0], idx[0]);
        // SAFETY: `nodes[0]` is a live leaf page.
        let old = unsafe { *s };
        // SAFETY: as above.
        unsafe { *s = value as u64 };
        self.cache[k & (CACHE - 1)].set((k + 1, value));
        if old == 0 {
            self.entries += 1;
            let c = counter(&nodes, &idx, 0);
            self.add(c, 1);
        }
        Ok(())
    }

    /// Unregister the page containing `va`; returns the old value (0 if it was absent).
    pub(crate) fn remove<S: PageSource + ?Sized>(&mut self, src: &mut S, va: usize) -> usize {
        let Some(k) = key(va) else { return 0 };
        if self.root == 0 {
            return 0;
        }
        let idx = indices(k);
        let mut nodes = [0usize; 4];
        nodes[3] = self.root;
        for level in (1..4).rev() {
            // SAFETY: live node, index < 512.
            let e = unsafe { *slot(nodes[level], idx[level]) };
            if e == 0 {
                return 0;
            }
            nodes[level - 1] = (e & !COUNT_MASK) as usize;
        }
        let s = slot(nodes[0], idx[0]);
        // SAFETY: live leaf.
        let old = unsafe { *s };
        if old == 0 {
            return 0;
        }
        // SAFETY: live leaf.
        unsafe { *s = 0 };
        let c = &self.cache[k & (CACHE - 1)];
        if c.get().0 == k + 1 {
            c.set((0, 0));
        }
        self.entries -= 1;
        let c = counter(&nodes, &idx, 0);
        self.add(c, -1);
        // SAFETY: nodes[0..] is the live path.
        unsafe { self.prune(src, &nodes, &idx, 0) };
        old as usize
    }

    /// Register `pages` pages from `base` with `value`; on failure nothing stays registered.
    pub(crate) fn insert_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
        value: usize,
    ) -> Result<(), HeapError> {
        for i in 0..pages {
            if let Err(e) = self.insert(src, base + (i << 12), value) {
                for j in 0..i {
                    self.remove(src, base + (j << 12));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unregister `pages` pages from `base`.
    pub(crate) fn remove_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
    ) {
        for i in 0..pages {
            self.remove(src, base + (i << 12));
        }
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
            let freed = free_level(src, self.root, 3);
            self.node_pages -= freed;
        }
        debug_assert_eq!(self.node_pages, 0);
        self.root = 0;
        self.root_count = 0;
        self.entries = 0;
        for c in &self.cache {
            c.set((0, 0));
        }
    }
}

/// Where the population of the node at `level` on the path `nodes` is kept: the root's in the
/// struct, any other node's in its parent's entry (only dereferenced while the parent is live).
#[inline(always)]
fn counter(nodes: &[usize; 4], idx: &[usize; 4], level: usize) -> Counter {
    if level == 3 {
        Counter::Root
    } else {
        Counter::Entry(slot(nodes[level + 1], idx[level + 1]))
    }
}

#[derive(Clone, Copy)]
enum Counter {
    Root,
    Entry(*mut u64),
}
