//! The memvisor heap's slab-page store: the one-page slabs of its size classes come straight
//! from the slab page source ([`PageSource::map_pages_dirty`]`(1)`), with the slab header at
//! `page + 0` (no page-family page header, bitmap or block header before it), and are
//! registered in a [`PageRegistry`] so that a free proves a page is a slab page (an O(1)
//! lookup) before it reads anything in it.
//!
//! Page-return policy (issue 13, item 4): a slab that empties (and is not its class's only
//! partly used slab, which stays until the heap is about to pass its high-water mark) is not
//! unmapped at once: up to [`SPARE_SLABS`] empty slab pages are kept
//! as **spares**, still mapped and registered (their header's magic is cleared, so a free
//! into one is refused), and a new slab of any class takes the newest spare before the
//! source is asked for a page. So a program whose slab count oscillates around a page
//! boundary pays no map/unmap (on the PVM host: no exit and no shadow flush) per cycle.
//! Spares count in the heap's pages; they go back to the source in batches: the oldest half
//! when a slab empties into a full cache, and all that would lift the heap past its
//! high-water mark before the slabs, MeMS or the mid-size path grow
//! ([`MemvisorHeap::make_room`](super::MemvisorHeap)), so they do not raise its peak
//! footprint. A page goes back unregistered first, then unmapped with the base and count
//! (1) it was mapped with.

use crate::registry::PageRegistry;
use crate::{map_dirty, unmap, HeapError, PageSource, PAGE_SIZE};

/// Most empty slab pages kept for reuse (64 KiB).
pub const SPARE_SLABS: usize = 16;

/// Counters of the slab-page store (all O(1)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlabPageStats {
    /// Pages holding a slab now (spares not included).
    pub slab_pages: usize,
    /// Empty slab pages kept now.
    pub spare_pages: usize,
    /// Most empty slab pages kept at once.
    pub peak_spare_pages: usize,
    /// Pages of the registry's radix-tree nodes (0 while its runs fit inline).
    pub registry_pages: usize,
    /// Pages mapped from the source.
    pub mapped_pages: u64,
    /// Slabs made on a spare page (a map and an unmap saved each).
    pub reused_pages: u64,
    /// Pages returned to the source.
    pub returned_pages: u64,
    /// Batches of returns (a full cache, growth at the high-water mark, an explicit release).
    pub return_batches: u64,
}

/// See the module docs.
pub(super) struct SlabPages<S: PageSource> {
    src: S,
    /// Every page of the store (slabs and spares), each registered with its own address.
    reg: PageRegistry,
    /// Spare pages, oldest first.
    spare: [usize; SPARE_SLABS],
    stats: SlabPageStats,
}

impl<S: PageSource> SlabPages<S> {
    pub(super) const fn new(src: S) -> Self {
        SlabPages {
            src,
            reg: PageRegistry::new(),
            spare: [0; SPARE_SLABS],
            stats: SlabPageStats {
                slab_pages: 0,
                spare_pages: 0,
                peak_spare_pages: 0,
                registry_pages: 0,
                mapped_pages: 0,
                reused_pages: 0,
                returned_pages: 0,
                return_batches: 0,
            },
        }
    }

    /// Counters.
    pub(super) fn stats(&self) -> SlabPageStats {
        SlabPageStats {
            registry_pages: self.reg.node_pages(),
            ..self.stats
        }
    }

    /// The page source (tests).
    pub(super) fn source(&self) -> &S {
        &self.src
    }

    /// Pages held: slabs, spares and registry nodes.
    #[inline(always)]
    pub(super) fn pages_in_use(&self) -> usize {
        self.stats.slab_pages + self.stats.spare_pages + self.reg.node_pages()
    }

    /// Empty slab pages kept now.
    #[inline(always)]
    pub(super) fn spares(&self) -> usize {
        self.stats.spare_pages
    }

    /// The spare pages, oldest first (tests and audits).
    pub(super) fn spare_list(&self) -> &[usize] {
        &self.spare[..self.stats.spare_pages]
    }

    /// Is the page of `addr` a page of the store (a slab or a spare)? O(1): the registry's
    /// cache, its inline runs (binary search) or its tree (at most four loads).
    #[inline(always)]
    pub(super) fn contains(&self, addr: usize) -> bool {
        self.reg.get(addr) != 0
    }

    /// Registered pages (slabs and spares; audits).
    pub(super) fn registered(&self) -> usize {
        self.reg.entries()
    }

    /// A page for a new slab, if a spare is kept: the newest (its cache lines are the
    /// warmest).
    #[inline]
    pub(super) fn take_spare(&mut self) -> Option<usize> {
        let n = self.stats.spare_pages.checked_sub(1)?;
        self.stats.spare_pages = n;
        self.stats.slab_pages += 1;
        self.stats.reused_pages += 1;
        Some(self.spare[n])
    }

    /// A fresh page for a new slab, mapped and registered. Its contents are undefined.
    ///
    /// # Errors
    /// [`HeapError::OutOfMemory`] if the source refuses the page or the registry a node page
    /// (nothing stays mapped).
    pub(super) fn map_page(&mut self) -> Result<usize, HeapError> {
        let oom = HeapError::OutOfMemory { pages: 1 };
        let page = map_dirty(&mut self.src, 1).ok_or(oom)?;
        if let Err(e) = self.reg.insert_range(&mut self.src, page, 1, page) {
            unmap(&mut self.src, page, 1);
            return Err(e);
        }
        self.stats.slab_pages += 1;
        self.stats.mapped_pages += 1;
        Ok(page)
    }

    /// The emptied slab page `page` (of this store; its header already invalidated) becomes
    /// a spare; if the cache is full, its oldest half goes back first (one batch).
    pub(super) fn give(&mut self, page: usize) {
        debug_assert!(page.is_multiple_of(PAGE_SIZE) && self.contains(page));
        if self.stats.spare_pages == SPARE_SLABS {
            self.release_to(SPARE_SLABS / 2);
        }
        self.spare[self.stats.spare_pages] = page;
        self.stats.spare_pages += 1;
        self.stats.slab_pages -= 1;
        self.stats.peak_spare_pages = self.stats.peak_spare_pages.max(self.stats.spare_pages);
    }

    /// Return the oldest spares until at most `keep` are kept (one batch, if any goes).
    pub(super) fn release_to(&mut self, keep: usize) {
        let n = self.stats.spare_pages;
        if n <= keep {
            return;
        }
        let k = n - keep;
        for i in 0..k {
            let page = self.spare[i];
            self.reg.remove_range(&mut self.src, page, 1);
            unmap(&mut self.src, page, 1);
        }
        self.spare.copy_within(k..n, 0);
        self.stats.spare_pages = keep;
        self.stats.returned_pages += k as u64;
        self.stats.return_batches += 1;
    }

    /// Unregister and unmap the slab page `page` (heap teardown).
    pub(super) fn unmap_slab(&mut self, page: usize) {
        self.reg.remove_range(&mut self.src, page, 1);
        unmap(&mut self.src, page, 1);
        self.stats.slab_pages -= 1;
        self.stats.returned_pages += 1;
    }
}

impl<S: PageSource> Drop for SlabPages<S> {
    fn drop(&mut self) {
        // The heap unmapped its slabs first (`MemvisorHeap::drop`); spares and registry
        // nodes go now.
        self.release_to(0);
        self.reg.clear(&mut self.src);
    }
}
