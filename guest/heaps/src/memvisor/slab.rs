//! Slabs of the memvisor heap's size classes: each slab is one page of the heap's slab-page
//! store (`memvisor/slab_pages.rs`, pages straight from the slab page source), cut into
//! header-less slots.
//!
//! ```text
//! page + 0        slab header (hdr(C) bytes): magic, class, used count, list links, then a
//!                 bitmap of free slots, one word per 64 slots, padded to 16 bytes
//! page + hdr(C)   slot 0, slot 1, … (C bytes each, no per-slot header)
//! ```
//! The header is as long as the class's slot count needs: 32 bytes for up to 64 slots
//! (classes ≥ 64 bytes), 48 for up to 192, 64 for up to 256 (class 16 only), so that every
//! class gets as many slots as fit in the page's 4,096 bytes ([`slab_layout`]).
//!
//! The slab of a slot is `ptr & !4095`; a free is checked against the slab header (magic,
//! class, slot boundary, free bit) after making sure the page belongs to the slab heap: it
//! is the class's current slab, or an O(1) lookup in the store's page registry says so. A
//! block may sit in a slot of a slightly larger class ([`borrowable`]: one of the next
//! [`BORROW`] classes, at most 1.25 × its size) when its own class has no free slot and that
//! class has a partly used slab: a size the program uses for a few blocks only does not cost
//! a slab page of its own. Such a class may borrow at every request for as long as the
//! program runs, so the class it borrowed from last is tried first, in `slab_alloc` itself
//! (`Class::lend`), and the free of a borrowed slot is inlined too. A free accepts a slab of
//! the layout's class or of a class it may borrow from.
//!
//! At the heap's high-water mark, a class of at least [`SMALL_MIN_CLASS`] bytes without a
//! free slot (and no lender, no spare page) takes a hole of the mid-size regions if they hold
//! at least [`SMALL_HOLES_PER_1024`](super::SMALL_HOLES_PER_1024) / 1,024 of free bytes on
//! their lists ([`Mid::alloc_small`](super::Mid)): the space the mid-size path keeps between
//! its blocks then serves small objects instead of the heap mapping a new page beside it. A
//! free whose page is not a slab page looks in the mid-size path's registry before it is
//! refused.
//!
//! Each slab of a class is on one of two doubly linked lists: partly used (allocation takes
//! the first free slot of the list's head: `trailing_zeros` over at most 4 words) or full
//! (so that an audit and the heap's teardown find every slab). A full slab that gets a slot
//! back goes first on the partial list (its lines are warm), or second once the class has
//! [`QUEUE_FROM`] partly used slabs: then allocation fills the head while the other slabs
//! drain, as jemalloc takes its oldest slab, and a class whose objects mostly died does not
//! keep them all alive by handing out their freed slots one by one (the awk validation
//! trace: 1,861 → 1,791 pages, BENCHMARKS.md, thirteenth session). A slab that becomes empty
//! goes back to the store as a spare page (`slab_pages.rs`: kept for any class's next slab,
//! up to a bound, and returned in batches), unless it is its class's only partly used slab.

use super::slab_list::{push, push_second, unlink};
use super::{MemvisorHeap, CLASSES, FIRST_BIG, NCLASS};
use crate::{HeapError, PageSource, PAGE_SIZE};
use core::ptr::NonNull;

/// Bytes of a slab: one page, header included.
pub const SLAB_PAYLOAD: usize = PAGE_SIZE;
/// Partly used slabs of a class from which a full slab that gets a slot back goes second on
/// the partial list instead of first (`release_slot`; chosen with a simulation of the
/// awk validation trace: 8 keeps most of the gain of always going second, and leaves every
/// trace in `tests/data/traces` with the pages it had).
pub const QUEUE_FROM: u16 = 8;
/// Classes above its own a block may borrow a free slot from ([`borrowable`]).
pub const BORROW: usize = 5;

/// May a block of class `c` sit in a slot of class `d`? `d` is `c`, or one of the next
/// [`BORROW`] classes at most 1.25 × its size. A free checks the slab's class against this.
pub const fn borrowable(c: usize, d: usize) -> bool {
    d >= c && d <= c + BORROW && d < NCLASS && class_size(d) * 4 <= class_size(c) * 5
}

/// The 11 classes above 256 bytes, in 8-byte units, 7 bits each (all below 128).
const BIG_UNITS: u128 = {
    let mut p = 0u128;
    let mut c = FIRST_BIG;
    while c < NCLASS {
        assert!(CLASSES[c].is_multiple_of(8) && CLASSES[c] / 8 < 128);
        p |= ((CLASSES[c] / 8) as u128) << (7 * (c - FIRST_BIG));
        c += 1;
    }
    p
};

/// `CLASSES[c]` without a load from a table: arithmetic up to 256 bytes, then an
/// immediate. On a PVM host every page the heap touches after a shadow flush costs a
/// shadow fault, and the class tables are a page of `.rodata` of their own
/// (BENCHMARKS.md, "Tenth session").
#[inline(always)]
pub const fn class_size(c: usize) -> usize {
    if c < FIRST_BIG {
        16 + 8 * c
    } else {
        (((BIG_UNITS >> (7 * (c - FIRST_BIG))) & 127) as usize) * 8
    }
}
const _: () = {
    let mut c = 0;
    while c < NCLASS {
        assert!(class_size(c) == CLASSES[c]);
        c += 1;
    }
};

/// Smallest slab class served from the mid-size path's holes (smaller classes lose too
/// much to a mid-size block's size word and 16-byte rounding; chosen with the host replay of
/// every trace and one guest run, BENCHMARKS.md "Fourth session").
pub const SMALL_MIN_CLASS: usize = 128;

/// Bytes of slab header before the bitmap: magic, class, used (8), next, prev.
const FIXED_HDR: usize = 24;
pub(super) const SLAB_MAGIC: u32 = 0x51ab_5eed;

/// `(header bytes, slots)` of a slab of `class`-byte slots: the most slots that fit in
/// [`SLAB_PAYLOAD`] with a header of 24 bytes plus one bitmap word per 64 slots, rounded
/// up to 16 bytes (so slots of a class that is a multiple of 16 are 16-byte aligned).
pub const fn slab_layout(class: usize) -> (usize, usize) {
    let mut n = (SLAB_PAYLOAD - 32) / class;
    loop {
        let hdr = (FIXED_HDR + n.div_ceil(64) * 8).next_multiple_of(16);
        if hdr + n * class <= SLAB_PAYLOAD {
            return (hdr, n);
        }
        n -= 1;
    }
}

const fn tables() -> ([u16; NCLASS], [u16; NCLASS]) {
    let mut hdr = [0u16; NCLASS];
    let mut slots = [0u16; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        let (h, n) = slab_layout(CLASSES[c]);
        assert!(n <= 256 && n >= 4);
        hdr[c] = h as u16;
        slots[c] = n as u16;
        c += 1;
    }
    (hdr, slots)
}
const TABLES: ([u16; NCLASS], [u16; NCLASS]) = tables();
/// Header bytes of a slab of each class.
pub const HDR: [u16; NCLASS] = TABLES.0;
/// `⌊2^32 / size⌋ + 1` of each class: a slot index is `(offset × RECIP) >> 32` (a multiply
/// instead of a ~25-cycle `div` on every free), exact for every offset within a page.
const RECIP: [u64; NCLASS] = {
    let mut r = [0u64; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        let d = CLASSES[c] as u64;
        r[c] = (1u64 << 32) / d + 1;
        // offset = q·d + r' (< 4096): (offset × RECIP) >> 32 = q + ⌊(q·e + r'·(2^32 + e)/d) / 2^32⌋
        // with e = RECIP·d − 2^32 ≤ d, and the floor is 0 when e·(4096 + d) < 2^32.
        assert!((r[c] * d - (1u64 << 32)) * (PAGE_SIZE as u64 + d) < 1u64 << 32);
        c += 1;
    }
    r
};
/// Slots of a slab of each class.
pub const NSLOTS: [u16; NCLASS] = TABLES.1;

/// The fixed part of a slab header at `page + 0`; the bitmap words follow (only
/// `NSLOTS[class].div_ceil(64)` of them: the slots start right after).
#[repr(C)]
pub(super) struct Slab {
    pub(super) magic: u32,
    pub(super) class: u16,
    pub(super) used: u16,
    pub(super) next: usize,
    pub(super) prev: usize,
}
const _: () = assert!(core::mem::size_of::<Slab>() == FIXED_HDR);

/// Bitmap word `w` of the slab header at `s`.
#[inline(always)]
pub(super) fn word(s: usize, w: usize) -> *mut u64 {
    core::ptr::with_exposed_provenance_mut(s + FIXED_HDR + w * 8)
}

#[inline(always)]
pub(super) fn hdr(s: usize) -> *mut Slab {
    core::ptr::with_exposed_provenance_mut(s)
}

/// A size class's state, with copies of its entries in the class tables ([`CLASSES`],
/// [`HDR`], [`NSLOTS`], the reciprocal): the hot paths read them next to the lists instead
/// of from a page of `.rodata` (see [`class_size`]).
#[derive(Clone, Copy)]
pub(super) struct Class {
    /// First slab with a free slot (its page), 0 if none.
    pub(super) partial: usize,
    /// First full slab, 0 if none.
    pub(super) full: usize,
    /// Slabs of this class.
    pub(super) slabs: u32,
    /// `⌊2^32 / size⌋ + 1` (at most 2^28 + 1).
    pub(super) recip: u32,
    /// Slot bytes.
    pub(super) size: u16,
    /// Slab header bytes (at most 64).
    pub(super) hdr: u8,
    /// The larger class this class last borrowed a slot from ([`borrowable`]), 0 if none:
    /// tried first while this class has no slab (`slab_alloc`).
    pub(super) lend: u8,
    /// Slots of a slab.
    pub(super) nslots: u16,
    /// Slabs on the partial list (modulo 2^16: it only decides [`QUEUE_FROM`]).
    pub(super) npartial: u16,
}
const _: () = assert!(core::mem::size_of::<Class>() == 32);

impl Class {
    /// Class `c` with no slab.
    const fn empty(c: usize) -> Class {
        assert!(RECIP[c] <= u32::MAX as u64 && CLASSES[c] <= u16::MAX as usize);
        assert!(HDR[c] <= u8::MAX as u16 && NCLASS <= u8::MAX as usize);
        Class {
            partial: 0,
            full: 0,
            slabs: 0,
            recip: RECIP[c] as u32,
            size: CLASSES[c] as u16,
            hdr: HDR[c] as u8,
            lend: 0,
            nslots: NSLOTS[c],
            npartial: 0,
        }
    }

    /// Every class, with no slab.
    pub(super) const ALL_EMPTY: [Class; NCLASS] = {
        let mut a = [Class::empty(0); NCLASS];
        let mut c = 1;
        while c < NCLASS {
            a[c] = Class::empty(c);
            c += 1;
        }
        a
    };
}

/// The index of the live slot at `addr` of the live slab `s` of class `cl` (header magic and
/// class checked by the caller).
///
/// # Errors
/// [`HeapError::InvalidPointer`] if `addr` is not the start of a slot of `s`,
/// [`HeapError::DoubleFree`] if that slot is free.
#[inline(always)]
fn slot_index(addr: usize, cl: &Class, s: usize) -> Result<usize, HeapError> {
    let bad = |reason| Err(HeapError::InvalidPointer { addr, reason });
    let (size, first) = (cl.size as usize, s + cl.hdr as usize);
    if addr < first {
        return bad("not a slot of a slab of this size class");
    }
    let off = addr - first;
    // `addr` lies in the slab's page, so `off` < 4096 and the reciprocal is exact.
    let i = ((off as u64 * cl.recip as u64) >> 32) as usize;
    if i * size != off || i >= cl.nslots as usize {
        return bad("not the start of a slot");
    }
    // SAFETY: `s` is a live slab of class `cl`, so its bitmap words are mapped.
    if unsafe { *word(s, i / 64) } & (1u64 << (i % 64)) != 0 {
        return Err(HeapError::DoubleFree { addr });
    }
    Ok(i)
}

impl<S: PageSource> MemvisorHeap<S> {
    #[inline(always)]
    pub(super) fn slab_alloc(&mut self, c: usize, align: usize) -> Option<NonNull<u8>> {
        let s = self.classes[c].partial;
        if s == 0 {
            // A class without a slab borrows from the class it borrowed from last, if that
            // class still has a free slot (the checks `lender` made then still hold: the
            // class has no slab, and the lender's slots are 16-byte aligned or 8 is asked).
            let cl = &self.classes[c];
            let d = cl.lend as usize;
            if d != 0 && cl.slabs == 0 && (align <= 8 || class_size(d).is_multiple_of(16)) {
                let sd = self.classes[d].partial;
                if sd != 0 {
                    return self.slab_take(d, sd);
                }
            }
            return self.slab_alloc_slow(c, align);
        }
        self.slab_take(c, s)
    }

    /// `slab_alloc` when class `c` has no partly used slab (kept apart so that the hot path
    /// keeps a constant class's tables folded).
    #[cold]
    #[inline(never)]
    fn slab_alloc_slow(&mut self, c: usize, align: usize) -> Option<NonNull<u8>> {
        if let Some(d) = self.lender(c, align) {
            self.classes[c].lend = d as u8;
            let s = self.classes[d].partial;
            return self.slab_take(d, s);
        }
        if let Some(page) = self.slabs.take_spare() {
            let s = self.new_slab(c, page);
            return self.slab_take(c, s);
        }
        if let Some(p) = self.small_from_mid(c) {
            return Some(p);
        }
        let s = self.map_slab(c)?;
        self.slab_take(c, s)
    }

    /// A slab-class request served by a free block of the mid-size path, if a new slab page
    /// would raise the heap's peak (after the kept runs and spare regions went back) and the
    /// mid-size path holds a free block that fits ([`Mid::alloc_small`](super::Mid)). So the
    /// free space of the mid-size regions serves small objects too instead of the heap
    /// mapping a page beside it.
    fn small_from_mid(&mut self, c: usize) -> Option<NonNull<u8>> {
        if class_size(c) < SMALL_MIN_CLASS || !self.mid.holds_much_free() {
            return None;
        }
        self.make_room(1);
        if self.pages_in_use() < self.high {
            return None;
        }
        let p = self.mid.alloc_small(class_size(c))?;
        self.stats.live[0] += 1;
        Some(p)
    }

    /// Take the first free slot of slab `s` of class `c`.
    #[inline(always)]
    fn slab_take(&mut self, c: usize, s: usize) -> Option<NonNull<u8>> {
        // SAFETY: `s` is the header of a live slab of class `c` with at least one free slot
        // (slabs leave the partial list when full), so one of its bitmap words is non-zero.
        unsafe {
            let h = hdr(s);
            let mut w = 0;
            while *word(s, w) == 0 {
                w += 1;
            }
            let bits = *word(s, w);
            let bit = bits.trailing_zeros() as usize;
            *word(s, w) = bits & (bits - 1);
            (*h).used += 1;
            let cl = &mut self.classes[c];
            let (hdr_bytes, size) = (cl.hdr as usize, cl.size as usize);
            if (*h).used == cl.nslots {
                unlink(&mut cl.partial, s);
                cl.npartial = cl.npartial.wrapping_sub(1);
                push(&mut cl.full, s);
            }
            self.stats.live[0] += 1;
            let p = s + hdr_bytes + (w * 64 + bit) * size;
            Some(NonNull::new_unchecked(
                core::ptr::with_exposed_provenance_mut(p),
            ))
        }
    }

    /// Class `c` has no free slot. If it has no slab at all, a free slot of a slightly
    /// larger class ([`borrowable`], same alignment) that has a partly used slab; else a new
    /// slab of class `c`. Returns `(class, slab)`. So a size the program uses for a few
    /// blocks only does not take a slab page of its own while a neighbouring class has room,
    /// and a class in use fills its own slabs (a borrowed slot wastes up to a quarter of
    /// itself).
    #[cold]
    fn lender(&self, c: usize, align: usize) -> Option<usize> {
        if self.classes[c].slabs == 0 {
            // Plain indices: no iterator over a copy of `CLASSES` on every borrowed request.
            let mut d = c + 1;
            while d < NCLASS && borrowable(c, d) {
                if self.classes[d].partial != 0 && (align <= 8 || class_size(d).is_multiple_of(16))
                {
                    return Some(d);
                }
                d += 1;
            }
        }
        None
    }

    /// A new slab of class `c` on a page mapped for it (after kept runs and spare regions
    /// went back if the heap would pass its high-water mark).
    #[cold]
    fn map_slab(&mut self, c: usize) -> Option<usize> {
        // A new slab maps a page (and maybe a registry page).
        self.make_room(2);
        match self.slabs.map_page() {
            Ok(page) => {
                let s = self.new_slab(c, page);
                self.note_high();
                Some(s)
            }
            Err(e) => {
                self.last_error = Some(e);
                None
            }
        }
    }

    /// Make `page` (a store page that holds no slab) an empty slab of class `c` on its
    /// partial list.
    #[cold]
    fn new_slab(&mut self, c: usize, page: usize) -> usize {
        let nslots = self.classes[c].nslots as usize;
        // SAFETY: `page` is a mapped, writable page of the store that no slab uses; the
        // header is `HDR[c]` < 4096 bytes.
        unsafe {
            hdr(page).write(Slab {
                magic: SLAB_MAGIC,
                class: c as u16,
                used: 0,
                next: 0,
                prev: 0,
            });
            for w in 0..nslots.div_ceil(64) {
                let left = nslots - w * 64;
                *word(page, w) = if left >= 64 { !0 } else { (1u64 << left) - 1 };
            }
        }
        push(&mut self.classes[c].partial, page);
        self.classes[c].npartial = self.classes[c].npartial.wrapping_add(1);
        self.classes[c].slabs += 1;
        self.stats.slabs_made += 1;
        page
    }

    #[inline(always)]
    pub(super) fn slab_free(&mut self, ptr: NonNull<u8>, c: usize) -> Result<(), HeapError> {
        let addr = ptr.as_ptr().expose_provenance();
        let bad = |reason| Err(HeapError::InvalidPointer { addr, reason });
        let lc = c;
        let s = addr & !(PAGE_SIZE - 1);
        // The class's current slab is a live slab page; any other page is looked up in the
        // store's page registry before anything in it is read.
        if s != self.classes[c].partial && !self.slabs.contains(s) {
            if self.mid.contains(addr) {
                return self.small_free_mid(ptr, c);
            }
            return bad("not in a slab page");
        }
        // SAFETY: the page belongs to the slab heap (a live slab, or the registry lookup
        // above), so its header area is mapped; the fields are checked before anything else
        // is trusted.
        let (magic, hc) = unsafe { ((*hdr(s)).magic, (*hdr(s)).class as usize) };
        if magic != SLAB_MAGIC {
            return bad("not a slot of a slab of this size class");
        }
        if hc == lc {
            self.slab_release(addr, c, s)
        } else if borrowable(lc, hc) {
            self.slab_release_borrowed(addr, hc, s)
        } else {
            bad("not a slot of a slab of this size class")
        }
    }

    /// Free a slab-class block of class `c` that the mid-size path serves.
    #[cold]
    #[inline(never)]
    fn small_free_mid(&mut self, ptr: NonNull<u8>, c: usize) -> Result<(), HeapError> {
        self.mid
            .free_small(self.large.source_mut(), ptr, class_size(c))?;
        self.stats.live[0] -= 1;
        Ok(())
    }

    /// `slab_release` of a slot borrowed from class `c` (inline: a class without a slab of
    /// its own may borrow at every request, and the call cost more than the tables it saved;
    /// the sed trace, BENCHMARKS.md, thirteenth session).
    #[inline(always)]
    fn slab_release_borrowed(&mut self, addr: usize, c: usize, s: usize) -> Result<(), HeapError> {
        self.slab_release(addr, c, s)
    }

    /// Free the slot at `addr` of the live slab `s` of class `c` (header magic and class
    /// checked): slot boundary, double free, lists, an emptied slab to the spares.
    #[inline(always)]
    fn slab_release(&mut self, addr: usize, c: usize, s: usize) -> Result<(), HeapError> {
        let i = slot_index(addr, &self.classes[c], s)?;
        self.release_slot(c, s, i);
        Ok(())
    }

    /// Free slot `i` of the live slab `s` of class `c`, a slot [`slot_index`] found live:
    /// bitmap, used count, lists, an emptied slab to the store's spares.
    #[inline(always)]
    pub(super) fn release_slot(&mut self, c: usize, s: usize, i: usize) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        // SAFETY: `s` is a live slab of class `c` and `i` a live slot of it (the caller's
        // `slot_index`).
        unsafe {
            let h = hdr(s);
            *word(s, w) |= b;
            let was_full = (*h).used == self.classes[c].nslots;
            (*h).used -= 1;
            self.stats.live[0] -= 1;
            if was_full {
                let cl = &mut self.classes[c];
                unlink(&mut cl.full, s);
                // A class with many partly used slabs fills its head slab before the slab
                // that got a slot back, so the others drain and go back (a class whose
                // objects mostly died keeps few sparse slabs); with few, the slab that got
                // a slot back is the head (its lines are warm).
                if cl.npartial >= QUEUE_FROM {
                    push_second(&mut cl.partial, s);
                } else {
                    push(&mut cl.partial, s);
                }
                cl.npartial = cl.npartial.wrapping_add(1);
            } else if (*h).used == 0 {
                if (*h).prev == 0 && (*h).next == 0 {
                    // The class's only partial slab: kept, unless the heap is about to
                    // pass its high-water mark (`spare_empty_slabs`).
                    self.empty_slabs |= 1 << c;
                } else {
                    // Empty and not the class's only partial slab: a spare page now.
                    unlink(&mut self.classes[c].partial, s);
                    self.classes[c].npartial = self.classes[c].npartial.wrapping_sub(1);
                    (*h).magic = 0;
                    self.classes[c].slabs -= 1;
                    self.stats.slabs_freed += 1;
                    self.slabs.give(s);
                }
            }
        }
    }

    /// Before the heap grows past its high-water mark: the empty slabs that are their
    /// class's only partly used slab (kept so that a block allocated and freed in a loop
    /// does not map and unmap a page each time) become spare pages, which the caller gives
    /// back; up to `want` of them, lowest class first. Returns how many. The class takes a
    /// page again on its next request. Reads only the partial slabs its mask names
    /// (`empty_slabs`: set when such a slab empties, cleared when it goes or the class has
    /// no partial slab; a class whose slab took a block again keeps its bit, as its empty
    /// slab may come back to the head of the list).
    #[cold]
    #[inline(never)]
    pub(super) fn spare_empty_slabs(&mut self, want: usize) -> usize {
        let mut got = 0;
        let mut m = self.empty_slabs;
        while m != 0 && got < want {
            let c = m.trailing_zeros() as usize;
            m &= m - 1;
            let s = self.classes[c].partial;
            if s == 0 {
                self.empty_slabs &= !(1 << c);
                continue;
            }
            // SAFETY: `s` is the header of a live slab of class `c` (the head of its
            // partial list).
            unsafe {
                let h = hdr(s);
                if (*h).used != 0 {
                    continue;
                }
                unlink(&mut self.classes[c].partial, s);
                self.classes[c].npartial = self.classes[c].npartial.wrapping_sub(1);
                (*h).magic = 0;
            }
            self.empty_slabs &= !(1 << c);
            self.classes[c].slabs -= 1;
            self.stats.slabs_freed += 1;
            self.slabs.give(s);
            got += 1;
        }
        got
    }

    /// The live slot of a block of class `c` (the caller's layout) at `ptr`, checked as a
    /// free checks it and changing nothing: `Ok(Some((slab, slot class, slot index)))`, or
    /// `Ok(None)` for a block the mid-size path serves ([`Mid::alloc_small`](super::Mid)).
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] or [`HeapError::DoubleFree`], as [`Self::dealloc`]
    /// would refuse `ptr`.
    #[inline(always)]
    pub(super) fn slab_slot(
        &self,
        ptr: NonNull<u8>,
        c: usize,
    ) -> Result<Option<(usize, usize, usize)>, HeapError> {
        let addr = ptr.as_ptr().expose_provenance();
        let bad = |reason| HeapError::InvalidPointer { addr, reason };
        let s = addr & !(PAGE_SIZE - 1);
        if s != self.classes[c].partial && !self.slabs.contains(s) {
            if self.mid.contains(addr) {
                return Ok(None);
            }
            return Err(bad("not in a slab page"));
        }
        // SAFETY: as in `slab_free`: the page belongs to the slab heap.
        let (magic, hc) = unsafe { ((*hdr(s)).magic, (*hdr(s)).class as usize) };
        if magic != SLAB_MAGIC || !borrowable(c, hc) {
            return Err(bad("not a slot of a slab of this size class"));
        }
        Ok(Some((s, hc, slot_index(addr, &self.classes[hc], s)?)))
    }
}
