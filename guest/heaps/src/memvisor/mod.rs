//! The `memvisor` heap: the guest kernel's general-purpose allocator (the type behind its
//! `#[global_allocator]`, `guest/kernel/src/heap/global.rs`), built from the two heaps of this
//! crate.
//!
//! Routing is decided by the [`Layout`] alone ([`route`]), so `dealloc` and `realloc`, which
//! get the layout back, never look a pointer up to know which heap owns it:
//!
//! | request | heap |
//! | --- | --- |
//! | size ≤ 984, align ≤ 16 (and a class of that alignment exists) | **size classes on page families**: 42 slab classes (every multiple of 8 up to 256, then 280, 296, 328, 352, 392, 432, 488, 560, 656, 784, 984: sizes that fill a page well), one family per class (`slab-48`, …) |
//! | anything else | **MeMS** ([`Mems::mems_alloc_aligned`], any power-of-two alignment up to 1 GiB; an emptied region goes back once the holes exceed [`LARGE_SLACK`] or 1/32 of the regions) |
//!
//! # Why slabs, and what efficiency to expect
//! A page-family block carries an 8-byte header and rounds to 16 bytes. On the python-json
//! trace (43,572 live blocks at the peak, mostly 24–72 bytes) even an ideal page-family heap
//! with a family for every size ≡ 8 (mod 16) and no fragmentation reaches only 89.7 % of the
//! live bytes per mapped byte. So a class's blocks are **slabs**: one multi-unit block of the
//! class's family that fills a one-page VM page and holds header-less slots. Per page that
//! costs the family's 80 bytes plus a 64-byte slab header (3.5 %), plus rounding to the class;
//! the python-json live set at its peak packs into 1,233 slab pages at best (90.8 % for the
//! sizes ≤ 984) and this heap uses 1,237. The sparse larger blocks (320 live at the peak,
//! 823 KB) go to MeMS, whose holes leave it near 80 % there; the measured whole-trace figures
//! are in `BENCHMARKS.md`.
//!
//! MeMS grows its chain by a main node of just `ceil(size / 4096)` pages, so a request of a
//! few KiB would leave the rest of its page(s) as a hole that only its own node can use. When
//! a request of at most [`GROW_MAX`] bytes makes the chain grow by a small node, that node is
//! swapped for one of [`GROW_PAGES`] pages (see [`MemvisorHeap::large_alloc`]).
//!
//! # A slab (one block of family `slab-C`, filling one 4 KiB VM page)
//! ```text
//! page + 0     VM page header, allocation bitmap, block header (page families, 80 bytes)
//! page + 80    slab header (64 bytes): magic, class, slot count, used count, partial-list
//!              links, a 256-bit bitmap of free slots
//! page + 144   slot 0, slot 1, … (C bytes each, no per-slot header)
//! ```
//! The slab of a slot is `(ptr & !4095) + 80`; a free is checked against the slab header
//! (magic, class, slot boundary, free bit) after an O(1) registry lookup that the page
//! belongs to the slab heap. Partly used slabs of a class sit on a doubly linked list;
//! allocation takes the first free slot of the list's head (`trailing_zeros` over 4 words).
//! A slab that becomes empty goes back to its family (which unmaps the page, or keeps one
//! empty page cached), unless it is its class's only partly used slab.

use crate::{FamilyId, HeapError, Mems, PageFamilies, PageSource, PAGE_SIZE};
use core::alloc::Layout;
use core::ptr::NonNull;

/// Largest size served by the slab classes.
pub const SLAB_MAX: usize = 984;
/// Offset of a one-page VM page's first payload (page-family layout: 32-byte page header,
/// 32-byte allocation bitmap, 8-byte block header, 16-byte alignment).
pub const SLAB_OFF: usize = 80;
/// Bytes of slab header in front of the first slot.
pub const SLAB_HDR: usize = 64;
/// Largest payload of a one-page VM page: what a slab block may use.
const SLAB_PAYLOAD: usize = 4008;
const SLAB_MAGIC: u32 = 0x51ab_5eed;
const NCLASS: usize = 42;
/// Index of the first class above 256 bytes.
const FIRST_BIG: usize = 31;

/// Slot sizes of the slab classes: every multiple of 8 up to 256, then sizes that fill a
/// page's 3944 slab bytes well (`floor(3944 / n)` rounded down to 8, n = 14 … 4).
pub const CLASSES: [usize; NCLASS] = [
    16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176,
    184, 192, 200, 208, 216, 224, 232, 240, 248, 256, 280, 296, 328, 352, 392, 432, 488, 560, 656,
    784, 984,
];
const CLASS_NAMES: [&str; NCLASS] = [
    "slab-16", "slab-24", "slab-32", "slab-40", "slab-48", "slab-56", "slab-64", "slab-72",
    "slab-80", "slab-88", "slab-96", "slab-104", "slab-112", "slab-120", "slab-128", "slab-136",
    "slab-144", "slab-152", "slab-160", "slab-168", "slab-176", "slab-184", "slab-192", "slab-200",
    "slab-208", "slab-216", "slab-224", "slab-232", "slab-240", "slab-248", "slab-256", "slab-280",
    "slab-296", "slab-328", "slab-352", "slab-392", "slab-432", "slab-488", "slab-560", "slab-656",
    "slab-784", "slab-984",
];
/// Bytes of MeMS holes below which an emptied region is kept (see `dealloc`).
pub const LARGE_SLACK: usize = 64 * 1024;
/// Smallest MeMS main node grown for a request below [`SOLO_MIN`], in pages.
pub const GROW_PAGES: usize = 16;
/// Requests of at least this many bytes get a solo MeMS main node (unmapped when freed).
pub const SOLO_MIN: usize = 64 * 1024;
/// Where a layout is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Slab class index into [`CLASSES`].
    Slab(usize),
    /// MeMS.
    Large,
}

/// The heap a layout goes to (the same answer for `alloc` and `dealloc` of one layout).
#[inline(always)]
pub const fn route(size: usize, align: usize) -> Route {
    if align > 16 {
        return Route::Large;
    }
    if size <= SLAB_MAX {
        let mut c = if size <= 256 {
            let s = if size < 16 { 16 } else { size };
            s.div_ceil(8) - 2
        } else {
            let mut c = FIRST_BIG;
            while CLASSES[c] < size {
                c += 1;
            }
            c
        };
        // Slots of a class ≡ 8 (mod 16) are only 8-byte aligned.
        while align > 8 && !CLASSES[c].is_multiple_of(16) {
            c += 1;
            if c == NCLASS {
                return Route::Large;
            }
        }
        return Route::Slab(c);
    }
    Route::Large
}

// Every route of a size ≤ SLAB_MAX is a slab class that holds the size at the alignment, with
// at most 256 slots (the bitmap's size); checked exhaustively at compile time.
const _: () = {
    let mut s = 1;
    while s <= SLAB_MAX {
        let mut a = 1;
        while a <= 16 {
            match route(s, a) {
                Route::Slab(c) => assert!(
                    CLASSES[c] >= s
                        && CLASSES[c].is_multiple_of(a)
                        && (SLAB_PAYLOAD - SLAB_HDR) / CLASSES[c] <= 256
                ),
                Route::Large => assert!(s > 256 && a == 16),
            }
            a *= 2;
        }
        s += 1;
    }
    assert!(matches!(route(SLAB_MAX + 1, 8), Route::Large));
    assert!(matches!(route(8, 32), Route::Large));
};

/// Slab header at `page + SLAB_OFF`.
#[repr(C)]
struct Slab {
    magic: u32,
    class: u16,
    nslots: u16,
    used: u16,
    _pad: [u16; 3],
    next: usize,
    prev: usize,
    free: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<Slab>() == SLAB_HDR);

#[derive(Clone, Copy)]
struct Class {
    /// First slab with a free slot (header address), 0 if none.
    partial: usize,
    /// The class's family.
    fid: Option<FamilyId>,
    /// Slabs of this class.
    slabs: usize,
}

/// Counters of the memvisor heap (all O(1)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live allocations by heap: slabs, MeMS.
    pub live: [usize; 2],
    /// Frees (and reallocs) the heaps refused: pointer not from this heap, double free.
    pub bad_frees: usize,
    /// Slabs created / given back.
    pub slabs_made: usize,
    /// Slabs given back to their family.
    pub slabs_freed: usize,
}

/// The memvisor heap on three page sources (one per sub-heap; they may share accounting).
pub struct MemvisorHeap<S: PageSource> {
    slabs: PageFamilies<S>,
    large: Mems<S>,
    classes: [Class; NCLASS],
    ready: bool,
    stats: Stats,
    last_error: Option<HeapError>,
}

impl<S: PageSource> MemvisorHeap<S> {
    /// An empty heap; maps nothing until the first allocation.
    pub const fn new(slab_src: S, large_src: S) -> Self {
        MemvisorHeap {
            slabs: PageFamilies::new(slab_src),
            large: Mems::new(large_src),
            classes: [Class {
                partial: 0,
                fid: None,
                slabs: 0,
            }; NCLASS],
            ready: false,
            stats: Stats {
                live: [0; 2],
                bad_frees: 0,
                slabs_made: 0,
                slabs_freed: 0,
            },
            last_error: None,
        }
    }

    /// Register the families (once).
    #[cold]
    fn init(&mut self) -> bool {
        for (i, name) in CLASS_NAMES.iter().enumerate() {
            // 8-byte structs: a slab is one block of `slab_units(class)` units.
            match self.slabs.mm_instantiate_new_page_family(name, 8) {
                Ok(f) => self.classes[i].fid = Some(f),
                Err(e) => {
                    self.last_error = Some(e);
                    return false;
                }
            }
        }
        self.slabs.set_empty_page_cache(0);
        self.slabs.set_quick_cache(64);
        self.large.set_min_grow_pages(GROW_PAGES);
        self.large.set_solo_min(SOLO_MIN);
        self.ready = true;
        true
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The last error a sub-heap returned (for diagnostics).
    pub fn last_error(&self) -> Option<HeapError> {
        self.last_error
    }

    /// Pages mapped from the page sources by both sub-heaps (data and metadata).
    pub fn pages_in_use(&self) -> usize {
        self.slabs.pages_in_use() + self.large.pages_in_use()
    }

    /// Totals over the slab families: `(pages, bytes in slab blocks, free bytes beside
    /// them, empty pages cached)`.
    pub fn family_totals(&self) -> (usize, usize, usize, usize) {
        let mut t = (0, 0, 0, 0);
        for fid in self.classes.iter().filter_map(|c| c.fid) {
            if let Ok(info) = self.slabs.family_info(fid) {
                t.0 += info.pages;
                t.1 += info.alloc_bytes;
                t.2 += info.free_bytes;
                t.3 += info.empty_pages;
            }
        }
        t
    }

    /// The slab page families (reports).
    pub fn slab_families(&self) -> &PageFamilies<S> {
        &self.slabs
    }

    /// The MeMS heap (reports).
    pub fn mems(&self) -> &Mems<S> {
        &self.large
    }

    /// Allocate `layout` (size 0 is served as 1). `None` when out of memory or the alignment
    /// is above MeMS's limit.
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.ready && !self.init() {
            return None;
        }
        let size = layout.size().max(1);
        match route(size, layout.align()) {
            Route::Slab(c) => self.slab_alloc(c),
            Route::Large => match self.large_alloc(size, layout.align()) {
                Ok(p) => {
                    self.stats.live[1] += 1;
                    Some(p)
                }
                Err(e) => {
                    self.last_error = Some(e);
                    None
                }
            },
        }
    }

    /// Free `ptr`, allocated with `layout`. A pointer this heap did not hand out (or a double
    /// free) is refused and counted in [`Stats::bad_frees`]; the heap stays unchanged.
    #[inline]
    pub fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let size = layout.size().max(1);
        let r = match route(size, layout.align()) {
            Route::Slab(c) => self.slab_free(ptr, c),
            Route::Large => {
                // Keep emptied MeMS regions while the holes are few (no map/unmap churn for a
                // program that frees and allocates a large buffer in a loop); release them
                // once the holes exceed LARGE_SLACK or 1/32 of the regions.
                let slack = LARGE_SLACK.max(self.large.data_pages() * PAGE_SIZE / 32);
                self.large
                    .set_release_empty(self.large.hole_bytes() > slack);
                self.large.mems_free(ptr).map(|()| self.stats.live[1] -= 1)
            }
        };
        if let Err(e) = r {
            self.stats.bad_frees += 1;
            self.last_error = Some(e);
        }
    }

    /// Resize `ptr` (allocated with `layout`) to `new_size`, keeping the contents up to the
    /// smaller size. In place when the new size routes to the same heap and the block is big
    /// enough; otherwise allocate, copy, free. `None` (and `ptr` untouched) when out of memory.
    pub fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let old = layout.size().max(1);
        let new = new_size.max(1);
        let (ro, rn) = (route(old, layout.align()), route(new, layout.align()));
        match (ro, rn) {
            (Route::Slab(a), Route::Slab(b)) if a == b => return Some(ptr),
            (Route::Large, Route::Large) => {
                if let Some(p) = self.large_realloc_in_place(ptr, old, new) {
                    return Some(p);
                }
            }
            _ => {}
        }
        let nl = Layout::from_size_align(new, layout.align()).ok()?;
        let q = self.alloc(nl)?;
        // SAFETY: `ptr` holds at least `old` bytes (the caller's layout) and `q` at least
        // `new`; they are distinct live blocks.
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), q.as_ptr(), old.min(new)) };
        self.dealloc(ptr, layout);
        Some(q)
    }

    /// MeMS allocation (the growth policy is MeMS's own, set in `init`).
    #[inline]
    fn large_alloc(&mut self, size: usize, align: usize) -> Result<NonNull<u8>, HeapError> {
        self.large.mems_alloc_aligned(size, align)
    }

    /// A MeMS block resized without moving, if that is sensible: a shrink to at least half
    /// keeps the block as it is; a smaller shrink gives the tail back to MeMS, unless the block
    /// had a solo node and the new size does not (moving it lets the node go); a growth takes
    /// the front of the hole behind the block. `None`: move it.
    fn large_realloc_in_place(
        &mut self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
    ) -> Option<NonNull<u8>> {
        let usable = self.large.mems_usable_size(ptr).ok()?;
        if new <= usable && new >= usable / 2 {
            return Some(ptr);
        }
        if new < usable && old >= SOLO_MIN && new < SOLO_MIN {
            return None;
        }
        match self.large.mems_resize_in_place(ptr, new) {
            Ok(true) => Some(ptr),
            _ => None,
        }
    }

    // ---- slabs ---------------------------------------------------------------------------

    #[inline(always)]
    fn slab_alloc(&mut self, c: usize) -> Option<NonNull<u8>> {
        let mut s = self.classes[c].partial;
        if s == 0 {
            s = self.new_slab(c)?;
        }
        let size = CLASSES[c];
        // SAFETY: `s` is the header of a live slab of class `c` with at least one free slot
        // (slabs leave the partial list when full).
        unsafe {
            let h = s as *mut Slab;
            let mut w = 0;
            while (*h).free[w] == 0 {
                w += 1;
            }
            let bit = (*h).free[w].trailing_zeros() as usize;
            (*h).free[w] &= !(1u64 << bit);
            (*h).used += 1;
            if (*h).used == (*h).nslots {
                self.unlink(c, s);
            }
            self.stats.live[0] += 1;
            let p = s + SLAB_HDR + (w * 64 + bit) * size;
            Some(NonNull::new_unchecked(
                core::ptr::with_exposed_provenance_mut(p),
            ))
        }
    }

    #[cold]
    fn new_slab(&mut self, c: usize) -> Option<usize> {
        let fid = self.classes[c].fid?;
        let size = CLASSES[c];
        let nslots = (SLAB_PAYLOAD - SLAB_HDR) / size;
        let units = (SLAB_HDR + nslots * size).div_ceil(8);
        let p = match self.slabs.xmalloc(fid, units) {
            Ok(p) => p,
            Err(e) => {
                self.last_error = Some(e);
                return None;
            }
        };
        let s = p.as_ptr().expose_provenance();
        if s & (PAGE_SIZE - 1) != SLAB_OFF {
            // Not the page-filling block the layout promises: give it back.
            let _ = self.slabs.xfree(p);
            return None;
        }
        let mut free = [0u64; 4];
        for (i, w) in free.iter_mut().enumerate() {
            let lo = i * 64;
            if nslots >= lo + 64 {
                *w = !0;
            } else if nslots > lo {
                *w = (1u64 << (nslots - lo)) - 1;
            }
        }
        // SAFETY: the block's payload is `8 * units ≥ SLAB_HDR` writable bytes at `s`.
        unsafe {
            (s as *mut Slab).write(Slab {
                magic: SLAB_MAGIC,
                class: c as u16,
                nslots: nslots as u16,
                used: 0,
                _pad: [0; 3],
                next: 0,
                prev: 0,
                free,
            });
        }
        self.push(c, s);
        self.classes[c].slabs += 1;
        self.stats.slabs_made += 1;
        Some(s)
    }

    #[inline(always)]
    fn slab_free(&mut self, ptr: NonNull<u8>, c: usize) -> Result<(), HeapError> {
        let addr = ptr.as_ptr().expose_provenance();
        let bad = |reason| Err(HeapError::InvalidPointer { addr, reason });
        if !self.slabs.contains(ptr.as_ptr()) {
            return bad("not in a slab page");
        }
        let s = (addr & !(PAGE_SIZE - 1)) + SLAB_OFF;
        let size = CLASSES[c];
        // SAFETY: the page belongs to the slab heap (registry lookup above), so its header
        // area is mapped; the fields are checked before anything is trusted.
        unsafe {
            let h = s as *mut Slab;
            if (*h).magic != SLAB_MAGIC || (*h).class as usize != c || addr < s + SLAB_HDR {
                return bad("not a slot of a slab of this size class");
            }
            let off = addr - s - SLAB_HDR;
            let i = off / size;
            if !off.is_multiple_of(size) || i >= (*h).nslots as usize {
                return bad("not the start of a slot");
            }
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if (*h).free[w] & b != 0 {
                return Err(HeapError::DoubleFree { addr });
            }
            (*h).free[w] |= b;
            let was_full = (*h).used == (*h).nslots;
            (*h).used -= 1;
            self.stats.live[0] -= 1;
            if was_full {
                self.push(c, s);
            } else if (*h).used == 0 && !((*h).prev == 0 && (*h).next == 0) {
                // Empty and not the class's only partial slab: back to the family.
                self.unlink(c, s);
                (*h).magic = 0;
                self.classes[c].slabs -= 1;
                self.stats.slabs_freed += 1;
                let p = NonNull::new_unchecked(core::ptr::with_exposed_provenance_mut::<u8>(s));
                if let Err(e) = self.slabs.xfree(p) {
                    self.last_error = Some(e);
                }
            }
        }
        Ok(())
    }

    /// Push slab `s` at the head of class `c`'s partial list.
    #[inline(always)]
    fn push(&mut self, c: usize, s: usize) {
        let head = self.classes[c].partial;
        // SAFETY: `s` and `head` (if non-zero) are live slab headers.
        unsafe {
            (*(s as *mut Slab)).prev = 0;
            (*(s as *mut Slab)).next = head;
            if head != 0 {
                (*(head as *mut Slab)).prev = s;
            }
        }
        self.classes[c].partial = s;
    }

    /// Unlink slab `s` from class `c`'s partial list.
    #[inline(always)]
    fn unlink(&mut self, c: usize, s: usize) {
        // SAFETY: `s` is a live slab header on the list; its neighbours are live headers.
        unsafe {
            let h = s as *mut Slab;
            let (p, n) = ((*h).prev, (*h).next);
            if p != 0 {
                (*(p as *mut Slab)).next = n;
            } else {
                self.classes[c].partial = n;
            }
            if n != 0 {
                (*(n as *mut Slab)).prev = p;
            }
            (*h).prev = 0;
            (*h).next = 0;
        }
    }
}
