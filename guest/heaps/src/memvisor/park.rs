//! The memvisor heap's large blocks (route Large: MeMS) and, in front of MeMS, the parked
//! ones.
//!
//! Parked large blocks: the memvisor heap's cache of freed MeMS blocks (as glibc's tcache is
//! for small chunks, for blocks of at least [`SOLO_MIN`] bytes, each alone in a solo MeMS
//! node).
//!
//! A freed solo block is **parked**: it stays a PROCESS segment of MeMS, held by the heap, up
//! to [`PARK`] blocks. A large request takes the smallest parked block of at least its size
//! instead of going to MeMS: no node, hash-table, map or unmap work, which costs a MeMS pair
//! several hundred instructions. A program that frees and allocates large buffers of a few
//! sizes in turn (nginx's 72, 136 and 264 KiB output buffers, one live at a time) reuses one
//! block for all of them.
//!
//! A parked block handed out for a smaller request is **loose**: the pages past the request
//! hold nothing. Parked blocks and loose tails are pages the heap holds (counted in
//! [`MemvisorHeap::pages_in_use`]), never handed out twice. Before the heap grows past its
//! high-water mark (`make_room`) loose blocks are cut to their request
//! ([`Mems::mems_resize_in_place`], then [`Mems::trim_solo`]) and parked blocks are freed to
//! MeMS, oldest first; blocks parked for [`DECAY_OPS`](super::DECAY_OPS) operations are freed
//! too. A freed, parked pointer is refused as a double free by `dealloc` and `realloc`.

use super::{MemvisorHeap, GROW_PAGES, LARGE_SLACK, SOLO_MIN};
use crate::{HeapError, PageSource, PAGE_SIZE};
use core::ptr::NonNull;

/// Most blocks parked at once (and most loose blocks tracked).
pub const PARK: usize = 4;

/// Counters of the parked blocks.
#[derive(Clone, Copy, Default)]
pub(super) struct ParkStats {
    /// Blocks parked.
    pub(super) parked: u64,
    /// Requests served from a parked block.
    pub(super) unparked: u64,
    /// Most pages parked at once.
    pub(super) peak_pages: usize,
}

/// The parked and loose blocks.
pub(super) struct Park {
    /// Parked blocks `(address, usable bytes, op stamp)`, in no order (removal swaps the last
    /// one in: no `memmove`, whose `rep movs` start-up costs more than the whole lookup in the
    /// guest).
    blocks: [(usize, usize, u64); PARK],
    n: usize,
    /// Live blocks handed out for a smaller request `(address, requested bytes)`.
    loose: [(usize, usize); PARK],
    nl: usize,
    /// Pages of the parked blocks (each `usable` rounded up to pages: a solo node's).
    pages: usize,
    pub(super) stats: ParkStats,
}

impl Park {
    pub(super) const fn new() -> Self {
        Park {
            blocks: [(0, 0, 0); PARK],
            n: 0,
            loose: [(0, 0); PARK],
            nl: 0,
            pages: 0,
            stats: ParkStats {
                parked: 0,
                unparked: 0,
                peak_pages: 0,
            },
        }
    }

    /// Pages of the parked blocks.
    pub(super) fn pages(&self) -> usize {
        self.pages
    }

    /// Is `addr` a parked block?
    #[inline]
    pub(super) fn holds(&self, addr: usize) -> bool {
        self.blocks[..self.n].iter().any(|b| b.0 == addr)
    }

    /// Parked blocks `(address, usable bytes)`.
    pub(super) fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.blocks[..self.n].iter().map(|b| (b.0, b.1))
    }

    /// Are blocks parked or loose?
    #[inline]
    pub(super) fn any(&self) -> bool {
        self.n != 0 || self.nl != 0
    }

    /// The loose record of `addr`, removed.
    fn take_loose(&mut self, addr: usize) -> Option<usize> {
        let i = self.loose[..self.nl].iter().position(|l| l.0 == addr)?;
        let need = self.loose[i].1;
        self.nl -= 1;
        self.loose[i] = self.loose[self.nl];
        Some(need)
    }

    /// Parked block `i`, removed.
    fn take(&mut self, i: usize) -> (usize, usize, u64) {
        let b = self.blocks[i];
        self.n -= 1;
        self.blocks[i] = self.blocks[self.n];
        self.pages -= b.1.div_ceil(PAGE_SIZE);
        b
    }

    /// Park block `(addr, usable)` at `stamp` (`n < PARK`).
    fn put(&mut self, addr: usize, usable: usize, stamp: u64) {
        self.blocks[self.n] = (addr, usable, stamp);
        self.n += 1;
        self.pages += usable.div_ceil(PAGE_SIZE);
        self.stats.parked += 1;
        self.stats.peak_pages = self.stats.peak_pages.max(self.pages);
    }

    /// The index of the parked block parked first (`n > 0`).
    fn oldest(&self) -> usize {
        let mut o = 0;
        for i in 1..self.n {
            if self.blocks[i].2 < self.blocks[o].2 {
                o = i;
            }
        }
        o
    }
}

impl<S: PageSource> MemvisorHeap<S> {
    /// `alloc` of a MeMS block: the high-water mark rises if the heap grew.
    pub(super) fn large_alloc_noted(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        match self.large_alloc(size, align) {
            Ok(p) => {
                self.stats.live[1] += 1;
                self.note_high();
                Some(p)
            }
            Err(e) => {
                self.last_error = Some(e);
                None
            }
        }
    }

    /// MeMS allocation (the growth policy is MeMS's own, set in `init`).
    #[inline]
    pub(super) fn large_alloc(
        &mut self,
        size: usize,
        align: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        if self.mid.spare_pages() != 0 || self.slabs.spares() != 0 {
            // MeMS may grow: empty mid-size regions and spare slab pages go first if the
            // heap would pass its high-water mark.
            self.make_room((size / PAGE_SIZE + 1).max(GROW_PAGES));
        } else if size >= SOLO_MIN {
            // MeMS maps a solo node unless a kept run serves it: empty slabs go first if
            // the heap would pass its high-water mark.
            let pages = size.div_ceil(PAGE_SIZE);
            if self.pages_in_use() + pages > self.high && !self.large.source().holds(pages) {
                self.make_room(pages);
            }
        }
        let ops = self.ops;
        self.large.source_mut().decay(ops);
        self.large.mems_alloc_aligned(size, align)
    }

    /// Free a MeMS block to MeMS. Emptied MeMS regions are kept while the holes are few (no
    /// map/unmap churn for a program that frees and allocates a large buffer in a loop), and
    /// released once the holes exceed LARGE_SLACK or 1/32 of the regions.
    pub(super) fn mems_free(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        let slack = LARGE_SLACK.max(self.large.data_pages() * PAGE_SIZE / 32);
        self.large
            .set_release_empty(self.large.hole_bytes() > slack);
        self.large.mems_free(ptr)
    }

    /// Free the MeMS block at `ptr` (route Large, alignment ≤ 16): parked if it is a solo
    /// block, else freed to MeMS.
    ///
    /// # Errors
    /// [`HeapError::DoubleFree`] for a parked block; as [`Mems::mems_free`](crate::Mems) for a
    /// pointer that is not a live MeMS block (nothing changes).
    pub(super) fn large_free(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        let addr = ptr.as_ptr().addr();
        if self.park.holds(addr) {
            return Err(HeapError::DoubleFree { addr });
        }
        let usable = self.large.mems_usable_size(ptr)?;
        if usable < SOLO_MIN {
            return self.mems_free(ptr);
        }
        if self.park.nl != 0 {
            self.park.take_loose(addr);
        }
        if self.park.n == PARK {
            self.unpark_oldest();
        }
        self.park.put(addr, usable, self.ops);
        Ok(())
    }

    /// The smallest parked block of at least `size` bytes (alignment ≤ 16), taken out; loose
    /// if more pages than `size` needs.
    #[inline]
    pub(super) fn unpark(&mut self, size: usize) -> Option<NonNull<u8>> {
        let (mut at, mut best) = (PARK, usize::MAX);
        for (i, b) in self.park.blocks[..self.park.n].iter().enumerate() {
            if b.1 >= size && b.1 < best {
                (at, best) = (i, b.1);
            }
        }
        if at == PARK {
            return None;
        }
        let addr = self.park.take(at).0;
        self.park.stats.unparked += 1;
        if best.div_ceil(PAGE_SIZE) > size.div_ceil(PAGE_SIZE) {
            if self.park.nl == PARK {
                self.cut_loose(addr, size);
            } else {
                self.park.loose[self.park.nl] = (addr, size);
                self.park.nl += 1;
            }
        }
        NonNull::new(core::ptr::with_exposed_provenance_mut(addr))
    }

    /// Free the oldest parked block to MeMS (`n > 0`).
    fn unpark_oldest(&mut self) {
        let addr = self.park.take(self.park.oldest()).0;
        if let Some(p) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr)) {
            // A parked block is a live MeMS block: the free cannot fail.
            let _ = self.mems_free(p);
        }
    }

    /// Cut the live block at `addr` to `need` bytes and give back its node's pages past them.
    fn cut_loose(&mut self, addr: usize, need: usize) {
        if let Some(p) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr)) {
            // A loose block is a live MeMS block of more than `need` bytes: neither fails.
            if let Ok(true) = self.large.mems_resize_in_place(p, need) {
                let _ = self.large.trim_solo(p);
            }
        }
    }

    /// A loose block about to be resized by `realloc` is cut to its request first (its
    /// record would be wrong after the resize).
    pub(super) fn unloose(&mut self, addr: usize) {
        if self.park.nl != 0 {
            if let Some(need) = self.park.take_loose(addr) {
                self.cut_loose(addr, need);
            }
        }
    }

    /// Make room before the heap grows past its high-water mark: loose blocks are cut to their
    /// request, then parked blocks freed to MeMS (oldest first) while the heap would still pass
    /// the mark by `pages`.
    pub(super) fn unpark_for(&mut self, pages: usize) {
        while self.park.nl != 0 {
            let (addr, need) = self.park.loose[self.park.nl - 1];
            self.park.nl -= 1;
            self.cut_loose(addr, need);
        }
        while self.park.n != 0 && self.pages_in_use() + pages > self.high {
            self.unpark_oldest();
            // MeMS's emptied node went to the keep: back to the source if that passes the
            // mark.
            self.release_kept_past_mark(pages);
        }
    }

    /// Free the blocks parked for more than `after` operations.
    #[inline]
    pub(super) fn decay_parked(&mut self, after: u64) {
        while self.park.n != 0
            && self
                .ops
                .saturating_sub(self.park.blocks[self.park.oldest()].2)
                > after
        {
            self.unpark_oldest();
        }
    }

    /// Free every parked block to MeMS (their nodes go to the keep) and cut every loose one to
    /// its request (tests; an owner that wants the heap to hold only live blocks, then calls
    /// [`MemvisorHeap::release_kept`]).
    pub fn release_parked(&mut self) {
        self.unpark_for(0);
        while self.park.n != 0 {
            self.unpark_oldest();
        }
    }

    /// The parked blocks `(address, usable bytes)`, in no order (tests, audits).
    pub fn parked(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.park.blocks()
    }
}
