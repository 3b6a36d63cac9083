//! The `memvisor` heap: the guest kernel's general-purpose allocator (the type behind its
//! `#[global_allocator]`, `guest/kernel/src/heap/global.rs`), built from the two heaps of this
//! crate and a mid-size path of its own.
//!
//! Routing is decided by the [`Layout`] alone ([`route`]), so `dealloc` and `realloc`, which
//! get the layout back, never look a pointer up to know which heap owns it:
//!
//! | request | heap |
//! | --- | --- |
//! | size ≤ 1,016, align ≤ 16 (and a class of that alignment exists) | **slab size classes**: 42 classes ([`CLASSES`]: every multiple of 8 up to 256, then the largest multiple of 8 of which n slots fit in a slab, n = 14 … 4: 288, 312, 336, 368, 400, 448, 504, 576, 672, 808, 1016), each slab one page straight from the slab page source (`slab-48`, … in reports); slab layout in `memvisor/slab.rs`, the page store (registry, spare pages) in `memvisor/slab_pages.rs`; a class without a slab borrows a free slot of one of the next [`BORROW`] (5) classes at most 1.25 × its size before it takes a page; at the heap's high-water mark a class of at least [`SMALL_MIN_CLASS`] bytes without a free slot takes a hole of the mid-size regions instead of a new page, while their holes (free blocks on the lists) are at least [`SMALL_HOLES_PER_1024`] / 1,024 of them ([`Mid::alloc_small`], `memvisor/mid/small.rs`) |
//! | 1,017 B ≤ size < [`SOLO_MIN`], align ≤ 16 (and sizes ≤ 1,016 at align 16 without a class) | **the mid-size path** ([`Mid`], `memvisor/mid/`): TLSF-style segregated fits with boundary tags and a designated victim in regions of 16 pages (64 once it holds 2 MiB); O(1) alloc and free, immediate coalescing, checked frees (region registry, live-start bitmap); emptied regions stay as spares (up to [`MAX_SPARES`]) |
//! | size ≥ [`SOLO_MIN`] (64 KiB) | **MeMS**, a solo main node of its own; a freed one is **parked** for reuse by a request of at most its size (up to [`PARK`] blocks, `memvisor/park.rs`), then freed to MeMS, which unmaps its node |
//! | align > 16 | **MeMS** ([`Mems::mems_alloc_aligned`], any power-of-two alignment up to 1 GiB), in main nodes of at least [`GROW_PAGES`] pages shared by many blocks; an emptied node goes back once the holes exceed [`LARGE_SLACK`] or 1/32 of the regions |
//!
//! # Why slabs, and what efficiency to expect
//! A page-family block carries an 8-byte header and rounds to 16 bytes. On the python-json
//! trace (43,572 live blocks at the peak, mostly 24–72 bytes) even an ideal page-family heap
//! with a family for every size ≡ 8 (mod 16) and no fragmentation reaches only 89.7 % of the
//! live bytes per mapped byte. So a class's blocks are **slabs**: one page of header-less
//! slots. Per page that costs a 32–64-byte slab header (sized to the slot count), the
//! rounding to the class and the slab's unused tail. (Until issue 13's seventh session a
//! slab was a block of a page family, whose page header, bitmap and block header cost 80
//! more bytes a page: payload 4,008 instead of 4,096 bytes.) Bigger slabs would cut the
//! per-page costs but leave more empty slots in each class's last slab, which costs more
//! than it saves on both sample traces.
//!
//! # MeMS policy
//! MeMS on its own grows its chain by a main node of just `ceil(size / 4096)` pages, whose
//! leftover is a hole other requests may take. Two settings make it a better general heap for
//! the sizes between the slabs and the page allocator:
//! * main nodes of at least [`GROW_PAGES`] pages ([`Mems::set_min_grow_pages`]), so the
//!   medium blocks share nodes instead of each leaving the rest of its own page(s) unused;
//! * a **solo** node for each request of at least [`SOLO_MIN`] bytes
//!   ([`Mems::set_solo_min`]): no other block is placed in its leftover, so it is unmapped
//!   as soon as its block is freed. Without it, a growing buffer (a `realloc` loop, as in
//!   python-json's 92 → 120 → 207 KB list) left its old node pinned by the small blocks that
//!   had been placed in its tail: two such holes held 212 KB at python-json's peak.
//!
//! A MeMS `realloc` grows or shrinks in place when the hole behind the block allows
//! ([`Mems::mems_resize_in_place`]).
//!
//! # Page-return policy
//! Emptied slab pages are kept as spares for any class's next slab, up to
//! [`SPARE_SLABS`], and returned in batches (`memvisor/slab_pages.rs`). A class's only
//! partly used slab stays when it empties (a block allocated and freed in a loop maps no
//! page), until the heap is about to pass its high-water mark: then it becomes a spare and
//! goes back first (in `make_room`, before a slab, a region or a solo MeMS node is mapped;
//! at nginx's peak six classes held such a page). MeMS's page source is a [`Keep`] (`memvisor/keep.rs`): the runs MeMS gives back are kept
//! for reuse by a request of the same size, up to a bound, and returned in batches (on the
//! bound, on a request no kept run fits, after [`DECAY_OPS`] operations unused, and before
//! the slabs or the mid-size path grow past the heap's high-water mark), so a program that
//! frees and re-allocates a large buffer does not pay a host exit (and a shadow flush) each
//! time, and kept pages never raise the heap's peak footprint. Before the mid-size path
//! grows past that mark, the free tails of its regions that stayed the same since its last
//! growth go back as well ([`Mid::trim_tails`]; counted in [`KeepStats::tail_returns`]).
//! Before the keep, freed solo blocks are **parked** (`memvisor/park.rs`): a request of at
//! most a parked block's size takes it back with no MeMS work at all (nginx alternates
//! 72, 136 and 264 KiB buffers; one block serves them all). A block taken for a smaller
//! request is cut to it, and parked blocks go to MeMS, before the heap grows past its
//! high-water mark, and after [`DECAY_OPS`] operations parked (counted in
//! [`KeepStats::parked_blocks`] and [`KeepStats::unparked_blocks`]).

mod keep;
mod mid;
mod park;
mod realloc;
mod slab;
mod slab_audit;
mod slab_list;
mod slab_pages;

pub use keep::{Keep, KeepStats, DECAY_OPS, KEEP_MAX_PAGES, KEEP_RUNS};
pub use mid::{
    Mid, MidAudit, MidStats, MAX_SPARES, MID_MAX, MID_MIN, REGION_PAGES, SMALL_HOLES_PER_1024,
};
pub use park::PARK;
pub use slab::{
    borrowable, slab_layout, BORROW, HDR, NSLOTS, QUEUE_FROM, SLAB_PAYLOAD, SMALL_MIN_CLASS,
};
pub use slab_audit::SlabAudit;
pub use slab_pages::{SlabPageStats, SPARE_SLABS};

use crate::{HeapError, Mems, PageSource};
use core::alloc::Layout;
use core::ptr::NonNull;
use park::Park;
use slab::Class;
use slab_pages::SlabPages;

/// Largest size served by the slab classes.
pub const SLAB_MAX: usize = 1016;
/// Number of slab classes.
pub const NCLASS: usize = 42;
/// Index of the first class above 256 bytes.
const FIRST_BIG: usize = 31;

/// Slot sizes of the slab classes: every multiple of 8 up to 256, then for n = 14 … 4 the
/// largest multiple of 8 of which n slots fit in a slab with a 32-byte header (checked below).
pub const CLASSES: [usize; NCLASS] = [
    16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160, 168, 176,
    184, 192, 200, 208, 216, 224, 232, 240, 248, 256, 288, 312, 336, 368, 400, 448, 504, 576, 672,
    808, 1016,
];
const _: () = {
    let mut i = FIRST_BIG;
    while i < NCLASS {
        let n = 14 - (i - FIRST_BIG);
        assert!(CLASSES[i] == ((SLAB_PAYLOAD - 32) / n) & !7);
        assert!(slab_layout(CLASSES[i]).1 == n);
        i += 1;
    }
    assert!(CLASSES[NCLASS - 1] == SLAB_MAX && CLASSES[FIRST_BIG - 1] == 256);
};
/// Report labels of the classes (`slab-<size>`).
pub const CLASS_NAMES: [&str; NCLASS] = [
    "slab-16",
    "slab-24",
    "slab-32",
    "slab-40",
    "slab-48",
    "slab-56",
    "slab-64",
    "slab-72",
    "slab-80",
    "slab-88",
    "slab-96",
    "slab-104",
    "slab-112",
    "slab-120",
    "slab-128",
    "slab-136",
    "slab-144",
    "slab-152",
    "slab-160",
    "slab-168",
    "slab-176",
    "slab-184",
    "slab-192",
    "slab-200",
    "slab-208",
    "slab-216",
    "slab-224",
    "slab-232",
    "slab-240",
    "slab-248",
    "slab-256",
    "slab-288",
    "slab-312",
    "slab-336",
    "slab-368",
    "slab-400",
    "slab-448",
    "slab-504",
    "slab-576",
    "slab-672",
    "slab-808",
    "slab-1016",
];
/// Bytes of MeMS holes below which an emptied region is kept (see `dealloc`).
pub const LARGE_SLACK: usize = 64 * 1024;
/// Smallest MeMS main node grown for a request below [`SOLO_MIN`], in pages.
pub const GROW_PAGES: usize = 16;
/// Requests of at least this many bytes get a solo MeMS main node (unmapped when freed):
/// the page rounding of such a node wastes at most 1/16 of it.
pub const SOLO_MIN: usize = 64 * 1024;
/// Where a layout is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Slab class index into [`CLASSES`].
    Slab(usize),
    /// The mid-size path ([`Mid`], `memvisor/mid/`).
    Mid,
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
            big_class(size)
        };
        // Slots of a class ≡ 8 (mod 16) are only 8-byte aligned.
        while align > 8 && (ONLY_8_ALIGNED >> c) & 1 != 0 {
            c += 1;
            if c == NCLASS {
                return Route::Mid;
            }
        }
        return Route::Slab(c);
    }
    if size <= MID_MAX {
        return Route::Mid;
    }
    Route::Large
}

/// The smallest class above 256 bytes that holds `size` (257 ..= [`SLAB_MAX`]): a tree of
/// comparisons with the class sizes as immediates, so a request reads no table (see
/// [`slab::class_size`]).
#[inline(always)]
const fn big_class(size: usize) -> usize {
    const B: usize = FIRST_BIG;
    const _: () = assert!(NCLASS == B + 11);
    if size <= CLASSES[B + 5] {
        if size <= CLASSES[B + 2] {
            if size <= CLASSES[B] {
                B
            } else if size <= CLASSES[B + 1] {
                B + 1
            } else {
                B + 2
            }
        } else if size <= CLASSES[B + 3] {
            B + 3
        } else if size <= CLASSES[B + 4] {
            B + 4
        } else {
            B + 5
        }
    } else if size <= CLASSES[B + 8] {
        if size <= CLASSES[B + 6] {
            B + 6
        } else if size <= CLASSES[B + 7] {
            B + 7
        } else {
            B + 8
        }
    } else if size <= CLASSES[B + 9] {
        B + 9
    } else {
        B + 10
    }
}

/// Bit `c` set: the slots of class `c` are only 8-byte aligned (size ≡ 8 mod 16).
const ONLY_8_ALIGNED: u64 = {
    let mut m = 0u64;
    let mut c = 0;
    while c < NCLASS {
        if !CLASSES[c].is_multiple_of(16) {
            m |= 1 << c;
        }
        c += 1;
    }
    m
};

// Every route of a size ≤ SLAB_MAX is a slab class that holds the size at the alignment,
// the smallest one at alignment ≤ 8; checked exhaustively at compile time.
const _: () = {
    let mut s = 1;
    while s <= SLAB_MAX {
        let mut a = 1;
        while a <= 16 {
            match route(s, a) {
                Route::Slab(c) => assert!(
                    CLASSES[c] >= s
                        && CLASSES[c].is_multiple_of(a)
                        && (HDR[c] as usize).is_multiple_of(16)
                        && (a > 8 || c == 0 || CLASSES[c - 1] < s)
                ),
                Route::Mid => assert!(s > 256 && a == 16),
                Route::Large => panic!(),
            }
            a *= 2;
        }
        s += 1;
    }
    assert!(matches!(route(SLAB_MAX + 1, 8), Route::Mid));
    assert!(matches!(route(MID_MAX, 16), Route::Mid));
    assert!(matches!(route(MID_MAX + 1, 8), Route::Large));
    assert!(matches!(route(8, 32), Route::Large));
};

/// Counters of the memvisor heap (all O(1)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live allocations by heap: slabs, the rest (mid-size path and MeMS).
    pub live: [usize; 2],
    /// Live allocations of the mid-size path (counted in `live[1]` too).
    pub mid_live: usize,
    /// Frees (and reallocs) the heaps refused: pointer not from this heap, double free.
    pub bad_frees: usize,
    /// Slabs created (on a fresh or a spare page).
    pub slabs_made: usize,
    /// Slabs emptied and given back to the slab-page store (as spares).
    pub slabs_freed: usize,
}

/// The memvisor heap on three page sources (one per sub-heap; they may share accounting).
pub struct MemvisorHeap<S: PageSource> {
    /// The slabs' pages (`memvisor/slab_pages.rs`).
    slabs: SlabPages<S>,
    large: Mems<Keep<S>>,
    /// Freed solo MeMS blocks kept for reuse (`memvisor/park.rs`).
    park: Park,
    /// Mid-size blocks; its regions come from `large`'s [`Keep`].
    mid: Mid,
    /// Most pages held at once (slabs, MeMS and kept runs): kept runs, spare regions and
    /// spare slab pages are returned before the heap grows past it.
    high: usize,
    /// Operations (alloc and dealloc calls): the clock of the page-return policy.
    ops: u64,
    classes: [Class; NCLASS],
    /// Bit `c`: class `c`'s only partly used slab went empty (it may have taken a block
    /// since; `spare_empty_slabs` checks), so its page can go back at the high-water mark.
    empty_slabs: u64,
    ready: bool,
    stats: Stats,
    last_error: Option<HeapError>,
}

impl<S: PageSource> MemvisorHeap<S> {
    /// An empty heap; maps nothing until the first allocation.
    pub const fn new(slab_src: S, large_src: S) -> Self {
        MemvisorHeap {
            slabs: SlabPages::new(slab_src),
            large: Mems::new(Keep::new(large_src)),
            park: Park::new(),
            mid: Mid::new(),
            high: 0,
            classes: Class::ALL_EMPTY,
            empty_slabs: 0,
            ready: false,
            stats: Stats {
                live: [0; 2],
                mid_live: 0,
                bad_frees: 0,
                slabs_made: 0,
                slabs_freed: 0,
            },
            ops: 0,
            last_error: None,
        }
    }

    /// Set MeMS's growth policy (once).
    #[cold]
    fn init(&mut self) -> bool {
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

    /// Pages mapped from the page sources by the sub-heaps (data and metadata) and kept
    /// for reuse by the page-return policy (kept runs, spare slab pages).
    pub fn pages_in_use(&self) -> usize {
        self.slabs.pages_in_use()
            + self.large.pages_in_use()
            + self.mid.pages_in_use()
            + self.large.source().kept_pages()
    }

    /// Counters of the page-return policy.
    pub fn keep_stats(&self) -> KeepStats {
        let m = self.mid.stats();
        KeepStats {
            tail_returns: m.regions_trimmed,
            tail_returned_pages: m.trimmed_pages,
            parked_blocks: self.park.stats.parked,
            unparked_blocks: self.park.stats.unparked,
            parked_pages: self.park.pages(),
            peak_parked_pages: self.park.stats.peak_pages,
            ..self.large.source().stats()
        }
    }

    /// The kept runs `(base, pages)` (tests).
    pub fn kept_runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.large.source().runs()
    }

    /// Return every kept run to the page source now (one batch); parked blocks stay
    /// ([`MemvisorHeap::release_parked`] frees them to MeMS, whose nodes go to the keep).
    pub fn release_kept(&mut self) {
        self.large.source_mut().release_to(0);
    }

    /// Before the heap grows by `pages`: return kept runs so that the pages held stay within
    /// the high-water mark where they can. Cold (slab growth).
    #[cold]
    pub(crate) fn make_room(&mut self, pages: usize) {
        let after = self.pages_in_use() + pages;
        if after > self.high {
            // Empty slabs kept as their class's only partial slab go back too.
            self.spare_empty_slabs(after - self.high);
        }
        let spares = self.slabs.spares();
        if spares != 0 {
            let after = self.pages_in_use() + pages;
            if after > self.high {
                self.slabs
                    .release_to(spares.saturating_sub(after - self.high));
            }
        }
        if self.mid.spare_pages() != 0 && self.pages_in_use() + pages > self.high {
            self.mid.release_spare(self.large.source_mut());
        }
        if self.park.any() && self.pages_in_use() + pages > self.high {
            // Loose blocks are cut to their request, then parked blocks go to MeMS (and their
            // nodes to the keep).
            self.unpark_for(pages);
        }
        self.release_kept_past_mark(pages);
    }

    /// Return the oldest kept runs while the heap would pass its high-water mark by growing
    /// `pages` pages (as many pages as it would pass it by, at most all kept).
    pub(super) fn release_kept_past_mark(&mut self, pages: usize) {
        let kept = self.large.source().kept_pages();
        if kept == 0 {
            return;
        }
        let after = self.pages_in_use() + pages;
        if after > self.high {
            let keep = kept.saturating_sub(after - self.high);
            self.large.source_mut().release_to(keep);
        }
    }

    /// Raise the high-water mark to the pages held now.
    #[inline(always)]
    pub(crate) fn note_high(&mut self) {
        let held = self.pages_in_use();
        if held > self.high {
            self.high = held;
        }
    }

    /// The mid-size path (reports, audits).
    pub fn mid(&self) -> &Mid {
        &self.mid
    }

    /// The MeMS heap (reports); its page source is the [`Keep`].
    pub fn mems(&self) -> &Mems<Keep<S>> {
        &self.large
    }

    /// Allocate `layout` (size 0 is served as 1). `None` when out of memory or the alignment
    /// is above MeMS's limit.
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.ready && !self.init() {
            return None;
        }
        self.ops = self.ops.wrapping_add(1);
        let size = layout.size().max(1);
        match route(size, layout.align()) {
            Route::Slab(c) => self.slab_alloc(c, layout.align()),
            Route::Mid => self.mid_alloc(size),
            Route::Large if layout.align() <= 16 && self.park.any() => {
                // A parked block: no MeMS work, and the pages held do not change.
                match self.unpark(size) {
                    Some(p) => {
                        self.stats.live[1] += 1;
                        Some(p)
                    }
                    None => {
                        self.decay_parked(DECAY_OPS);
                        self.large_alloc_noted(size, layout.align())
                    }
                }
            }
            Route::Large => self.large_alloc_noted(size, layout.align()),
        }
    }

    /// Free `ptr`, allocated with `layout`. A pointer this heap did not hand out (or a double
    /// free) is refused and counted in [`Stats::bad_frees`]; the heap stays unchanged.
    #[inline]
    pub fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.ops = self.ops.wrapping_add(1);
        let size = layout.size().max(1);
        let r = match route(size, layout.align()) {
            Route::Slab(c) => self.slab_free(ptr, c),
            Route::Mid => self.mid_free(ptr, size),
            Route::Large => {
                let r = if layout.align() <= 16 {
                    self.large_free(ptr)
                } else {
                    self.mems_free(ptr)
                };
                let r = r.map(|()| self.stats.live[1] -= 1);
                let ops = self.ops;
                self.decay_parked(DECAY_OPS);
                self.large.source_mut().decay(ops);
                r
            }
        };
        if let Err(e) = r {
            self.stats.bad_frees += 1;
            self.last_error = Some(e);
        }
    }

    #[inline(always)]
    fn mid_alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        match self.mid.try_alloc(self.large.source_mut(), size) {
            Some(p) => {
                self.stats.live[1] += 1;
                self.stats.mid_live += 1;
                Some(p)
            }
            None => self.mid_alloc_grown(size),
        }
    }

    /// The mid-size path maps a region: room is made first (spare slab pages and regions,
    /// kept runs and region tails go back so the heap stays within its high-water mark where
    /// it can), then the page-return clock advances and the mark rises.
    #[cold]
    fn mid_alloc_grown(&mut self, size: usize) -> Option<NonNull<u8>> {
        // The region, and maybe a registry node.
        let grow = self.mid.grow_pages(size) + 1;
        self.make_room(grow);
        // Region tails that stayed free since the last growth go back if the heap would
        // pass its high-water mark; the others are marked (`Mid::trim_tails`).
        let want = (self.pages_in_use() + grow).saturating_sub(self.high);
        self.mid.trim_tails(self.large.source_mut(), want);
        match self.mid.alloc_grown(self.large.source_mut(), size) {
            Ok(p) => {
                self.stats.live[1] += 1;
                self.stats.mid_live += 1;
                let ops = self.ops;
                self.large.source_mut().decay(ops);
                self.note_high();
                Some(p)
            }
            Err(e) => {
                self.last_error = Some(e);
                None
            }
        }
    }

    #[inline(always)]
    fn mid_free(&mut self, ptr: NonNull<u8>, size: usize) -> Result<(), HeapError> {
        self.mid.free(self.large.source_mut(), ptr, size)?;
        self.stats.live[1] -= 1;
        self.stats.mid_live -= 1;
        Ok(())
    }
}

impl<S: PageSource> Drop for MemvisorHeap<S> {
    fn drop(&mut self) {
        // Before the fields drop: the regions go to the keep, which returns them; the slab
        // pages go back to their source (the store returns its spares when it drops).
        self.mid.clear(self.large.source_mut());
        self.drop_slabs();
    }
}
