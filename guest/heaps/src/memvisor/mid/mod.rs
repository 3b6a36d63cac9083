//! The memvisor heap's mid-size path (issue 13): requests above the slab classes and below
//! the solo threshold ([`MID_MIN`] … [`MID_MAX`] bytes, alignment ≤ 16) are blocks with
//! in-band boundary tags in regions of the heap's own, found by **segregated fits with two
//! bitmap levels** (TLSF: M. Masmano et al., "TLSF: a new dynamic memory allocator for
//! real-time systems", ECRTS 2004): O(1) allocation and free, immediate coalescing.
//!
//! ```text
//! region + 0        header: magic and offset of the first block, pages, region list
//!                   links, tail mark (40 bytes), then the live-start bitmap, one bit per 16 bytes of the
//!                   region as mapped
//! region + first    block: size word (size | FREE | PREV_FREE | FIRST), payload …
//!   (free block:    size word, next free, prev free, …, footer = size in its last word)
//! region end - 8    sentinel size word (size 0, never free)
//! ```
//! A block starts at an address ≡ 8 (mod 16) and its size (a multiple of 16, at least 32)
//! counts its size word, so the payload is 16-byte aligned and `size - 8` bytes long (the
//! last word of a used block is payload; it holds the footer only while the block is free).
//! Free lists: first level by the power of two of the size (below 1 KiB: level 0), second
//! level 16 equal ranges within it. A request takes the first fit among the first 8
//! blocks of its own list; else the first block of the next non-empty list whose
//! every block fits (`trailing_zeros` over two bitmap words), unless the **designated
//! victim** (dlmalloc's `dv`: a free block kept off the lists) fits and is no bigger; else a
//! new region. A remainder smaller than the smallest mid-size block stays with the block
//! (no sliver no request can use); a bigger one goes on its list, or becomes the dv if it is
//! bigger than the dv. A free merges with both neighbours at once; merged with the dv, it is
//! the dv. So a loop that frees and allocates one block carves and re-merges the dv without
//! touching a list.
//!
//! A free is checked against heap-owned state before any in-band word is trusted: the
//! page must be registered (the regions' page registry, or the region of the last lookup,
//! a range check kept only while that region is mapped) and the block must start a live
//! block (the region's live-start bitmap). Regions have [`REGION_PAGES`] pages (the largest
//! request gets one of its size, 17 pages; a block of just over half a region gets 17 pages
//! holding two once it is the third such region, `region.rs`), 64 once the path holds 2 MiB: the guest's page
//! pool serves runs of up to 16 pages from one 64-page chunk and maps larger runs on their
//! own, so both sizes cost one page-source call per 64 pages. A region whose blocks are all
//! freed stays in place as a spare, off the lists (up to [`MAX_SPARES`]; the dv's region
//! stays the dv; a spare becomes the dv when neither the lists nor the dv hold a request)
//! and goes back to the page source (the heap's [`Keep`](super::Keep)) beyond that; spares
//! never raise the heap's peak: the path only grows when no spare holds the request, and
//! the heap returns them before the slabs, MeMS or this path grow past its high-water mark.
//!
//! A region's **free tail** goes back too ([`Mid::trim_tails`], `region.rs`): when the path
//! is about to map a region and the heap would pass its high-water mark, each region whose
//! last block is free and has stayed the same since the previous growth (a mark in its
//! header) gives back the whole pages of that block (at least 7, only as many as the growth
//! needs) through [`PageSource::shrink_pages`]; the region stays smaller. A tail that
//! changed between two growths is still in use, and a whole region mapped later for it
//! would cost more than the pages saved (BENCHMARKS.md, issue 13, eighth session).
//!
//! The holes of the regions also serve slab-class requests at the heap's peak
//! ([`Mid::alloc_small`], `small.rs`): such a block carries the `SMALL` flag, and only
//! [`Mid::free_small`] frees it.

mod audit;
mod lists;
mod region;
mod resize;
mod small;

pub use small::SMALL_HOLES_PER_1024;

use crate::registry::PageRegistry;
use crate::{at, HeapError, PageSource, PAGE_SIZE};
use core::cell::Cell;
use core::ptr::NonNull;
use lists::mapping;

/// Smallest request served here (one more than the largest slab class).
pub const MID_MIN: usize = super::SLAB_MAX + 1;
/// Largest request served here (requests from [`super::SOLO_MIN`] get a solo MeMS node).
pub const MID_MAX: usize = super::SOLO_MIN - 1;
/// Pages of a region (64 KiB) while the path is small; the largest request gets a region of
/// its size (17 pages).
pub const REGION_PAGES: usize = 16;

pub(super) const FREE: usize = 1;
pub(super) const PREV_FREE: usize = 2;
pub(super) const FIRST: usize = 4;
/// A live block that holds a slab-class request ([`Mid::alloc_small`]): freed only by
/// [`Mid::free_small`], never by [`Mid::free`] (and the other way round).
pub(super) const SMALL: usize = 8;
pub(super) const FLAGS: usize = 15;
/// Smallest block (a free block needs its size word, two links and its footer).
pub(super) const MIN_BLOCK: usize = 32;
pub(super) const SL: usize = 16;
/// First-level lists: level 0 below 1 KiB, level f for sizes in [2^(9+f), 2^(10+f)).
pub(super) const FL: usize = 12;
pub(super) const REGION_MAGIC: u32 = 0x7267_646d;
/// Pages of a region once the path holds [`REGION_BIG_AT`] pages.
pub(super) const REGION_MAX: usize = 64;
/// Region pages held from which new regions have [`REGION_MAX`] pages (2 MiB).
pub(super) const REGION_BIG_AT: usize = 512;
/// Smallest tail a shrink cuts off when no free block follows (the smallest mid-size block).
const MIN_TAIL: usize = block_size(MID_MIN);
/// Most empty regions kept as spares. Spares never raise the heap's peak: the path grows
/// only when no spare holds the request, and the heap returns them before the slabs or
/// MeMS grow past its high-water mark.
pub const MAX_SPARES: usize = 64;
/// Blocks of a request's own list tried before the next list.
const PROBE: usize = 8;
/// Fixed part of a region header: magic and first, pages, next, prev, tail mark.
pub(super) const FIXED: usize = 40;

const _: () = assert!(2 * REGION_MAX * PAGE_SIZE < 1 << (9 + FL));
// A region's pages fit the low bits of its registry entry (`region.rs`, `region_at`).
const _: () = assert!((1 << (9 + FL)) / PAGE_SIZE < PAGE_SIZE);
// The largest request fits a region of at most twice the usual pages.
const _: () = assert!(
    block_size(MID_MAX) + first_offset(2 * REGION_PAGES) + 8 <= 2 * REGION_PAGES * PAGE_SIZE
);

/// Block size (size word included) for a request of `n` bytes.
#[inline(always)]
const fn block_size(n: usize) -> usize {
    let b = (n + 8 + 15) & !15;
    if b < MIN_BLOCK {
        MIN_BLOCK
    } else {
        b
    }
}

/// Offset of a region's first block: after the header and the live-start bitmap, ≡ 8 mod 16.
#[inline(always)]
pub(super) const fn first_offset(pages: usize) -> usize {
    let bitmap = pages * PAGE_SIZE / 16 / 8;
    (FIXED + bitmap + 8).next_multiple_of(16) - 8
}

#[inline(always)]
fn word(a: usize) -> *mut usize {
    at::<usize>(a)
}

/// Region header (fixed part).
#[repr(C)]
struct Region {
    magic: u32,
    /// Offset of the first block ([`first_offset`] of the pages it was mapped with).
    first: u32,
    /// Pages mapped now (fewer than it was mapped with once its tail went back,
    /// [`Mid::trim_tails`]).
    pages: usize,
    next: usize,
    prev: usize,
    /// The free block that ended the region at the last look of [`Mid::trim_tails`], 0 if
    /// none: a tail is given back only once it has stayed the same between two looks.
    mark: usize,
}
const _: () = assert!(core::mem::size_of::<Region>() == FIXED);

/// Counters and totals of the mid-size path (O(1)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MidStats {
    /// Live blocks (slab-class blocks included).
    pub live: usize,
    /// Live slab-class blocks ([`Mid::alloc_small`]).
    pub small: usize,
    /// Bytes of the free blocks on the lists (the holes: neither the dv nor the spares).
    pub listed: usize,
    /// Regions mapped now.
    pub regions: usize,
    /// Pages of those regions.
    pub region_pages: usize,
    /// Regions mapped / returned so far.
    pub regions_made: u64,
    /// Regions returned to the page source.
    pub regions_freed: u64,
    /// Region tails given back ([`Mid::trim_tails`]).
    pub regions_trimmed: u64,
    /// Pages of those tails.
    pub trimmed_pages: u64,
}

/// What [`Mid::audit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MidAudit {
    /// Live blocks (slab-class blocks included).
    pub live: usize,
    /// Live slab-class blocks.
    pub small: usize,
    /// Bytes of live blocks (size words included).
    pub used_bytes: usize,
    /// Bytes of free blocks.
    pub free_bytes: usize,
    /// Free blocks (the dv included).
    pub free_blocks: usize,
    /// Largest free block in bytes.
    pub largest_free: usize,
    /// Regions.
    pub regions: usize,
    /// Empty regions (the spares).
    pub empty_regions: usize,
}

/// The mid-size allocator (see the module docs). Its pages come from the page source passed
/// to each call (the heap's [`Keep`](super::Keep)).
pub struct Mid {
    fl_bits: u32,
    sl_bits: [u16; FL],
    /// Bytes of the listed free blocks (next to the bitmaps: insert and remove touch both).
    listed: usize,
    heads: [[usize; SL]; FL],
    reg: PageRegistry,
    /// The region of the last lookup, `(header address, bytes)`, `(0, 0)` if none: a
    /// program (and a batch) allocates and frees mostly in one region at a time, and a
    /// range check is cheaper than the registry's per-page lookup. Always a live region
    /// (reset when its region goes back).
    hint: Cell<(usize, usize)>,
    /// First region of the region list (header address), 0 if none.
    regions: usize,
    /// First block of the empty region kept in place, 0 if none.
    spares: [usize; MAX_SPARES],
    /// Pages of each spare's region.
    spare_sizes: [usize; MAX_SPARES],
    /// Spares in use, and their pages.
    nspare: usize,
    spare_pages: usize,
    /// The designated victim (dlmalloc's `dv`): a free block kept off the lists, the
    /// remainder of the last split, 0 if none. Requests that miss their own list carve it
    /// from the front, frees next to it merge into it, neither touching a list.
    dv: usize,
    /// Size of `dv`.
    dv_size: usize,
    /// Regions mapped so far for a block of just over half a region (see `region.rs`,
    /// `region_pages_for`).
    twins: usize,
    stats: MidStats,
}

impl Mid {
    /// Nothing mapped.
    pub const fn new() -> Self {
        Mid {
            fl_bits: 0,
            sl_bits: [0; FL],
            listed: 0,
            heads: [[0; SL]; FL],
            reg: PageRegistry::new(),
            hint: Cell::new((0, 0)),
            regions: 0,
            spares: [0; MAX_SPARES],
            spare_sizes: [0; MAX_SPARES],
            nspare: 0,
            spare_pages: 0,
            dv: 0,
            dv_size: 0,
            twins: 0,
            stats: MidStats {
                live: 0,
                small: 0,
                listed: 0,
                regions: 0,
                region_pages: 0,
                regions_made: 0,
                regions_freed: 0,
                regions_trimmed: 0,
                trimmed_pages: 0,
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> MidStats {
        MidStats {
            listed: self.listed,
            ..self.stats
        }
    }

    /// Pages held: regions and registry nodes.
    #[inline(always)]
    pub fn pages_in_use(&self) -> usize {
        self.stats.region_pages + self.reg.node_pages()
    }

    /// Does `ptr` lie in a region of this allocator?
    pub fn contains(&self, ptr: usize) -> bool {
        self.region_at(ptr) != 0
    }

    /// Allocate `n` bytes ([`MID_MIN`] ≤ `n` ≤ [`MID_MAX`]), 16-byte aligned. The block
    /// comes from the lists (see the module docs) unless the dv fits and is no bigger than
    /// what the lists offer (dlmalloc's rule for large requests), else from a new region.
    ///
    /// # Errors
    /// [`HeapError::OutOfMemory`] if the page source refuses a new region (or a registry
    /// node), [`HeapError::TooLarge`] if `n` needs a region larger than the lists cover.
    #[inline]
    pub fn alloc<S: PageSource>(
        &mut self,
        src: &mut S,
        n: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        match self.try_alloc(src, n) {
            Some(p) => Ok(p),
            None => self.alloc_grown(src, n),
        }
    }

    /// [`Mid::alloc`] without growing: `None` if no free block, dv or spare region holds
    /// `n` bytes, so that a new region ([`Mid::grow_pages`] pages) would be mapped.
    #[inline]
    pub fn try_alloc<S: PageSource>(&mut self, src: &mut S, n: usize) -> Option<NonNull<u8>> {
        let need = block_size(n);
        let (mut b, size) = self.find(need);
        if b != 0 {
            if self.dv_size >= need && self.dv_size <= size {
                b = 0;
            } else {
                self.remove(b, size);
            }
        }
        if b != 0 {
            let rest = size - need;
            // A remainder bigger than the dv becomes the dv (dlmalloc's "replace dv"): the
            // next requests carve it, and frees next to it merge without a list operation.
            let to_dv = rest > self.dv_size;
            if to_dv {
                self.retire_dv(src);
            }
            self.take(b, need, to_dv, MIN_TAIL);
        } else {
            if self.dv_size < need && !(self.nspare != 0 && self.dv_from_spare(src, need)) {
                return None;
            }
            b = core::mem::replace(&mut self.dv, 0);
            self.dv_size = 0;
            self.take(b, need, true, MIN_TAIL);
        }
        Some(self.hand_out(b))
    }

    /// [`Mid::alloc`] from a new region, mapped for it (after [`Mid::try_alloc`] missed).
    ///
    /// # Errors
    /// As [`Mid::alloc`].
    #[cold]
    pub fn alloc_grown<S: PageSource>(
        &mut self,
        src: &mut S,
        n: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        let need = block_size(n);
        self.grow(src, need)?;
        let b = core::mem::replace(&mut self.dv, 0);
        self.dv_size = 0;
        self.take(b, need, true, MIN_TAIL);
        Ok(self.hand_out(b))
    }

    /// Mark `b` (just cut to size) live and return its payload.
    #[inline(always)]
    fn hand_out(&mut self, b: usize) -> NonNull<u8> {
        let r = self.region_at(b + 8);
        // SAFETY: `b` now starts a live block of region `r`.
        unsafe { set_live(r, b, true) };
        self.stats.live += 1;
        // SAFETY: b + 8 is in a mapped region, so non-null.
        unsafe { NonNull::new_unchecked(at::<u8>(b + 8)) }
    }

    /// The block of `ptr` if `ptr` is the payload of a live block of the kind `small` says
    /// (a [`Mid::alloc_small`] block or not): `(region, block, size)`.
    #[inline(always)]
    fn live_block(&self, ptr: usize, small: bool) -> Result<(usize, usize, usize), HeapError> {
        let bad = |reason| HeapError::InvalidPointer { addr: ptr, reason };
        if ptr & 15 != 0 {
            return Err(bad("misaligned for a mid-size block"));
        }
        let r = self.region_at(ptr);
        if r == 0 {
            return Err(bad("not in a mid-size region"));
        }
        if ptr < r + FIXED + 16 {
            return Err(bad("inside a mid-size region header"));
        }
        let b = ptr - 8;
        let i = (b - r) >> 4;
        // SAFETY: `r` is a live region header (registered), `ptr` lies in it, so bit `i` is
        // inside its bitmap; a set bit means `b` starts a live block (size word valid).
        unsafe {
            if *word(r + FIXED + (i >> 6) * 8) & (1 << (i & 63)) == 0 {
                return Err(bad("not the start of a live mid-size block"));
            }
            let h = *word(b);
            if (h & SMALL != 0) != small {
                return Err(bad("a block of the other size range"));
            }
            Ok((r, b, h & !FLAGS))
        }
    }

    /// Usable bytes of the live block at `ptr`.
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] if `ptr` is not the payload of a live mid-size block.
    pub fn usable_size(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        self.live_block(ptr.as_ptr().addr(), false)
            .map(|(_, _, s)| s - 8)
    }

    /// Free the block at `ptr`, allocated for `n` bytes. A pointer that is not a live block
    /// of this allocator, or whose block cannot hold `n` bytes, is refused and nothing
    /// changes. The block merges with free neighbours at once.
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] (misaligned, outside the regions, not the start of a
    /// live block, or a block smaller than `n`); the allocator is unchanged.
    #[inline]
    pub fn free<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        n: usize,
    ) -> Result<(), HeapError> {
        self.free_in(src, ptr, n, false)
    }

    /// [`Mid::free`] of a block of the kind `small` says.
    #[inline(always)]
    fn free_in<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        n: usize,
        small: bool,
    ) -> Result<(), HeapError> {
        let (r, mut b, mut size) = self.live_block(ptr.as_ptr().addr(), small)?;
        if size - 8 < n {
            return Err(HeapError::InvalidPointer {
                addr: b + 8,
                reason: "block smaller than the layout",
            });
        }
        // SAFETY: `b` is a live block of region `r` (checked above); its neighbours' words
        // are valid block or sentinel words of the same region (boundary tags).
        unsafe {
            set_live(r, b, false);
            let h = *word(b);
            let mut first = h & FIRST;
            let mut into_dv = false;
            let next = b + size;
            let nh = *word(next);
            if nh & FREE != 0 {
                let ns = nh & !FLAGS;
                if next == self.dv {
                    into_dv = true;
                } else {
                    self.remove(next, ns);
                }
                size += ns;
            }
            if h & PREV_FREE != 0 {
                let ps = *word(b - 8);
                let p = b - ps;
                if p == self.dv {
                    into_dv = true;
                } else {
                    self.remove(p, ps);
                }
                first = *word(p) & FIRST;
                b = p;
                size += ps;
            }
            *word(b) = size | FREE | first;
            *word(b + size - 8) = size;
            let after = b + size;
            *word(after) |= PREV_FREE;
            self.stats.live -= 1;
            self.stats.small -= small as usize;
            if into_dv {
                self.dv = b;
                self.dv_size = size;
            }

            // The whole region is free: a dv stays the dv (no bookkeeping in a loop that
            // frees and allocates one block); another block is kept as a spare or goes back.
            if !into_dv {
                if first != 0 && *word(after) & !FLAGS == 0 {
                    if !self.keep_spare(r, b) {
                        self.release_region(src, r);
                    }
                    return Ok(());
                }
                self.insert(b, size);
            }
        }
        Ok(())
    }

    /// Walk every region and check the boundary tags, the live-start bitmaps, the free lists
    /// and the counters. O(blocks); for tests.
    ///
    /// # Errors
    /// [`HeapError::Corrupted`] naming the first inconsistent address and what was wrong.
    pub fn audit(&self) -> Result<MidAudit, HeapError> {
        audit::audit(self)
    }

    pub(super) fn parts(&self) -> Parts<'_> {
        Parts {
            heads: &self.heads,
            fl_bits: self.fl_bits,
            sl_bits: &self.sl_bits,
            regions: self.regions,
            spares: &self.spares[..self.nspare],
            dv: (self.dv, self.dv_size),
        }
    }

    /// The registry's entry for `va`: `header address | pages`, 0 if none.
    pub(super) fn region_of(&self, va: usize) -> usize {
        self.reg.get(va)
    }
}

/// The allocator's state, for the audit.
pub(super) struct Parts<'a> {
    pub(super) heads: &'a [[usize; SL]; FL],
    pub(super) fl_bits: u32,
    pub(super) sl_bits: &'a [u16; FL],
    pub(super) regions: usize,
    pub(super) spares: &'a [usize],
    pub(super) dv: (usize, usize),
}

/// Set or clear the live-start bit of block `b` of region `r`.
///
/// # Safety
/// `r` is a live region and `b` lies in it.
#[inline(always)]
unsafe fn set_live(r: usize, b: usize, on: bool) {
    let i = (b - r) >> 4;
    let w = word(r + FIXED + (i >> 6) * 8);
    // SAFETY: the bitmap covers the region (see `first_offset`).
    unsafe {
        if on {
            *w |= 1 << (i & 63);
        } else {
            *w &= !(1 << (i & 63));
        }
    }
}

impl Default for Mid {
    fn default() -> Self {
        Self::new()
    }
}
