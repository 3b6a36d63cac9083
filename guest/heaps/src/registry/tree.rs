//! The page registry's radix tree: walks, growth and shrinking of the root, range fills and
//! clears of leaf runs (see the parent module for the layout).

use super::*;
use crate::at;

pub(super) const COUNT_MASK: u64 = 0xfff;

#[inline(always)]
pub(super) fn indices(k: usize) -> [usize; 4] {
    [k & 511, (k >> 9) & 511, (k >> 18) & 511, (k >> 27) & 511]
}

/// The range of `pages` pages from `base` cut at leaf boundaries: `(first key, its indices,
/// keys in this leaf)` for each piece, in order; non-canonical pages are skipped one by one.
fn leaf_runs(base: usize, pages: usize) -> impl Iterator<Item = (usize, [usize; 4], usize)> {
    let mut i = 0;
    core::iter::from_fn(move || {
        while i < pages {
            let Some(k) = key(base + (i << 12)) else {
                i += 1;
                continue;
            };
            let idx = indices(k);
            let n = (pages - i).min(FANOUT - idx[0]);
            i += n;
            return Some((k, idx, n));
        }
        None
    })
}

/// Entries `i .. i + n` of the leaf at `node`.
///
/// # Safety
/// `node` must be a live node page, `i + n <= 512`, and no other reference to those entries
/// may exist while the slice lives.
#[inline(always)]
unsafe fn leaf_run<'a>(node: usize, i: usize, n: usize) -> &'a mut [u64] {
    debug_assert!(i + n <= FANOUT);
    // SAFETY: per the contract: `n` initialised, 8-aligned `u64` entries inside one page.
    unsafe { core::slice::from_raw_parts_mut(slot(node, i), n) }
}

/// Entry `i` of the node at `node`.
#[inline(always)]
pub(super) fn slot(node: usize, i: usize) -> *mut u64 {
    debug_assert!(i < FANOUT);
    at::<u64>(node + i * 8)
}

impl PageRegistry {
    /// Tree lookup of key `k`.
    #[inline]
    pub(super) fn walk(&self, k: usize) -> usize {
        if !self.covers(k) {
            return 0;
        }
        let idx = indices(k);
        let mut node = self.root;
        for level in (1..self.height).rev() {
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

    /// Is key `k` under the root (so a walk from the root reaches it)? False when empty.
    #[inline(always)]
    fn covers(&self, k: usize) -> bool {
        self.root != 0 && k >> (9 * self.height) == self.prefix
    }

    /// Where the population of the node at `level` on the path `nodes` is kept: the root's
    /// in the struct, any other node's in its parent's entry (only dereferenced while the
    /// parent is live).
    #[inline(always)]
    fn counter(&self, nodes: &[usize; 4], idx: &[usize; 4], level: usize) -> Counter {
        if level + 1 == self.height {
            Counter::Root
        } else {
            Counter::Entry(slot(nodes[level + 1], idx[level + 1]))
        }
    }

    /// Put new roots above the old one until key `k` is covered (the tree is not empty).
    fn grow_to<S: PageSource + ?Sized>(&mut self, src: &mut S, k: usize) -> Result<(), HeapError> {
        while !self.covers(k) {
            debug_assert!(self.height < 4);
            let top = map(src, 1).ok_or(HeapError::OutOfMemory { pages: 1 })?;
            self.node_pages += 1;
            // SAFETY: `top` is a fresh node page; the old root is page-aligned and its
            // population (≤ 512) fits in the count bits.
            unsafe {
                *slot(top, self.prefix & (FANOUT - 1)) = (self.root | self.root_count) as u64
            };
            self.root = top;
            self.root_count = 1;
            self.height += 1;
            self.prefix >>= 9;
        }
        Ok(())
    }

    /// While the root has a single child, make the child the root (after a removal).
    fn shrink<S: PageSource + ?Sized>(&mut self, src: &mut S) {
        while self.height > 1 && self.root_count == 1 {
            // SAFETY: the root is a live node page with exactly one non-zero entry.
            let (i, e) = match (0..FANOUT)
                .map(|i| (i, unsafe { *slot(self.root, i) }))
                .find(|x| x.1 != 0)
            {
                Some(x) => x,
                None => return,
            };
            unmap(src, self.root, 1);
            self.node_pages -= 1;
            self.root = (e & !COUNT_MASK) as usize;
            self.root_count = (e & COUNT_MASK) as usize;
            self.height -= 1;
            self.prefix = (self.prefix << 9) | i;
        }
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
        let mut freed = false;
        for level in from_level..self.height {
            let c = self.counter(nodes, idx, level);
            let n = match c {
                Counter::Root => self.root_count as u64,
                // SAFETY: a live interior entry.
                Counter::Entry(p) => unsafe { *p & COUNT_MASK },
            };
            if n != 0 {
                break;
            }
            unmap(src, nodes[level], 1);
            self.node_pages -= 1;
            freed = true;
            if level + 1 == self.height {
                self.root = 0;
                self.height = 0;
                self.prefix = 0;
                return;
            }
            // SAFETY: the parent is live; clear its entry and its population.
            unsafe { *slot(nodes[level + 1], idx[level + 1]) = 0 };
            self.add(self.counter(nodes, idx, level + 1), -1);
        }
        if freed {
            self.shrink(src);
        }
    }

    /// The live path (`nodes[height - 1]` = root … `nodes[0]` = leaf) to key `k` of indices
    /// `idx`, mapping the nodes that are missing (a taller tree if `k` is not covered); on
    /// failure the empty nodes mapped here are unmapped again.
    fn path<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        k: usize,
        idx: &[usize; 4],
    ) -> Result<[usize; 4], HeapError> {
        let mut nodes = [0usize; 4];
        if self.root == 0 {
            self.root = map(src, 1).ok_or(HeapError::OutOfMemory { pages: 1 })?;
            self.node_pages += 1;
            self.root_count = 0;
            self.height = 1;
            self.prefix = k >> 9;
        } else if let Err(e) = self.grow_to(src, k) {
            // Roots grown for `k` that now have a single child go again.
            self.shrink(src);
            return Err(e);
        }
        nodes[self.height - 1] = self.root;
        for level in (1..self.height).rev() {
            let s = slot(nodes[level], idx[level]);
            // SAFETY: `nodes[level]` is a live node page and the index is < 512.
            let e = unsafe { *s };
            if e == 0 {
                let Some(child) = map(src, 1) else {
                    // SAFETY: nodes[level..] is the live path.
                    unsafe { self.prune(src, &nodes, idx, level) };
                    self.shrink(src);
                    return Err(HeapError::OutOfMemory { pages: 1 });
                };
                self.node_pages += 1;
                // SAFETY: as above; `child` is page-aligned so the count bits are 0.
                unsafe { *s = child as u64 };
                let c = self.counter(&nodes, idx, level);
                self.add(c, 1);
                nodes[level - 1] = child;
            } else {
                nodes[level - 1] = (e & !COUNT_MASK) as usize;
            }
        }
        Ok(nodes)
    }

    /// The live path to key `k` of indices `idx`, or `None` if a node on it is missing.
    fn find_path(&self, k: usize, idx: &[usize; 4]) -> Option<[usize; 4]> {
        if !self.covers(k) {
            return None;
        }
        let mut nodes = [0usize; 4];
        nodes[self.height - 1] = self.root;
        for level in (1..self.height).rev() {
            // SAFETY: live node, index < 512.
            let e = unsafe { *slot(nodes[level], idx[level]) };
            if e == 0 {
                return None;
            }
            nodes[level - 1] = (e & !COUNT_MASK) as usize;
        }
        Some(nodes)
    }

    /// [`Self::insert_range`] in the tree.
    pub(super) fn tree_insert_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
        value: usize,
    ) -> Result<(), HeapError> {
        let mut i = 0;
        while i < pages {
            let va = base + (i << 12);
            let found = key(va)
                .ok_or(HeapError::InvalidPointer {
                    addr: va,
                    reason: "page source returned a non-canonical address",
                })
                .and_then(|k| {
                    let idx = indices(k);
                    Ok((k, idx, self.path(src, k, &idx)?))
                });
            let (k, idx, nodes) = match found {
                Ok(f) => f,
                Err(e) => {
                    // Nothing stays registered: undo the leaves filled so far.
                    self.tree_remove_range(src, base, i);
                    return Err(e);
                }
            };
            let n = (pages - i).min(FANOUT - idx[0]);
            // SAFETY: `nodes[0]` is a live leaf page of 512 entries, `idx[0] + n <= 512`, and
            // nothing else refers to its entries while the registry is borrowed mutably.
            let run = unsafe { leaf_run(nodes[0], idx[0], n) };
            // Two passes the compiler vectorises (a block of hundreds of pages registers at
            // a few entries per cycle): count the new entries, then fill.
            let added = run.iter().filter(|&&e| e == 0).count();
            run.fill(value as u64);
            // The cache keeps holding registered pages only, with their new value; the run's
            // first page (a block's start, looked up by its free) is cached now.
            self.cache_update(k, n, value);
            self.cache_set(k, value);
            if added != 0 {
                self.entries += added;
                let c = self.counter(&nodes, &idx, 0);
                self.add(c, added as i64);
            }
            i += n;
        }
        Ok(())
    }

    /// [`Self::set_range`] in the tree: every non-zero entry of the range takes `value`;
    /// returns how many did. Maps and unmaps nothing.
    pub(super) fn tree_set_range(&mut self, base: usize, pages: usize, value: usize) -> usize {
        let mut set = 0;
        for (k, idx, n) in leaf_runs(base, pages) {
            if let Some(nodes) = self.find_path(k, &idx) {
                // SAFETY: `nodes[0]` is a live leaf page of 512 entries, `idx[0] + n <=
                // 512`, and nothing else refers to its entries while the registry is
                // borrowed mutably.
                let run = unsafe { leaf_run(nodes[0], idx[0], n) };
                for e in run.iter_mut().filter(|e| **e != 0) {
                    *e = value as u64;
                    set += 1;
                }
                self.cache_update(k, n, value);
            }
        }
        set
    }

    /// Clear up to `n` entries from key `k` in the leaf `nodes[0]` (not past its end), drop
    /// them from the cache, and unmap the nodes of the path left empty; returns the number of
    /// keys covered (`min(n, 512 - idx[0])`).
    fn clear_leaf_run<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        k: usize,
        nodes: &[usize; 4],
        idx: &[usize; 4],
        n: usize,
    ) -> usize {
        let n = n.min(FANOUT - idx[0]);
        // SAFETY: `nodes[0]` is a live leaf page of 512 entries, `idx[0] + n <= 512`, and
        // nothing else refers to its entries while the registry is borrowed mutably.
        let run = unsafe { leaf_run(nodes[0], idx[0], n) };
        let removed = run.iter().filter(|&&e| e != 0).count();
        if removed != 0 {
            run.fill(0);
            self.cache_update(k, n, 0);
            self.entries -= removed;
            let c = self.counter(nodes, idx, 0);
            self.add(c, -(removed as i64));
            // SAFETY: nodes[0..] is the live path.
            unsafe { self.prune(src, nodes, idx, 0) };
        }
        n
    }

    /// [`Self::remove_range`] in the tree.
    pub(super) fn tree_remove_range<S: PageSource + ?Sized>(
        &mut self,
        src: &mut S,
        base: usize,
        pages: usize,
    ) {
        for (k, idx, n) in leaf_runs(base, pages) {
            if let Some(nodes) = self.find_path(k, &idx) {
                self.clear_leaf_run(src, k, &nodes, &idx, n);
            }
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Counter {
    Root,
    Entry(*mut u64),
}
