//! The heaps a trace replay (and the heap benchmark) can run, behind one small trait, all on
//! the same page source (`source.rs`), each counting the pages it holds in its own [`Acct`]:
//!
//! | name | heap |
//! | --- | --- |
//! | `page-family` | [`PageFamilies`]: one family per size class (payloads ≡ 8 mod 16 up to 248, then 312 … 4008), one-unit blocks with the quick cache; above 4008 bytes a family of 8-byte units (multi-page VM pages) |
//! | `mems` | [`Mems`], `mems_alloc_aligned`, regions released when empty |
//! | `memvisor` | [`MemvisorHeap`], the global allocator's type |
//! | `talc` | `talc::Talc`, claiming 64 KiB chunks from the page source on OOM |
//! | `linked-list` | `linked_list_allocator::Heap`, one per chunk (it can only grow contiguously; 64 KiB chunks, doubling every 32 chunks), first fit over the chunks |
//! | `buddy` | `buddy_system_allocator::Heap<33>`, chunks added on OOM (twice the rounded request for large ones, so an aligned block exists) |
//! | `rlsf`, `dlmalloc` | the stronger peers of `strong_peers.rs` |
//!
//! talc, linked-list, buddy and rlsf never give chunks back while they run (none of them can);
//! every chunk is unmapped when the heap is dropped. dlmalloc releases segments itself.

use super::memvisor::MemvisorHeap;
use super::source::{Acct, GuestPages};
use core::alloc::Layout;
use core::ptr::NonNull;
use memvisor_heaps::{FamilyId, Mems, PageFamilies, PageSource};

const PAGE: usize = 4096;
/// Chunk a peer heap gets from the page source when it runs out, in pages (64 KiB).
pub const PEER_CHUNK_PAGES: usize = 16;
/// Most chunks a peer heap can hold.
const MAX_CHUNKS: usize = 2048;

/// Heap names, by id (one list for host and guest, in the ABI crate).
pub use memvisor_abi::HEAPS;

/// What the replay and the benchmark need from a heap.
pub trait Heap {
    /// Allocate; `None` when out of memory.
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>>;
    /// Free a block allocated with `l`.
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout);
    /// Resize, keeping the contents; `None` (block untouched) when out of memory.
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>>;
    /// Frees the heap itself refused (bad pointer, double free), if it checks.
    fn refused(&self) -> usize {
        0
    }
    /// The page-return policy's counters, for a heap that has one (memvisor): kept MeMS
    /// runs and spare slab pages.
    fn keep_stats(&self) -> Option<(memvisor_heaps::KeepStats, memvisor_heaps::SlabPageStats)> {
        None
    }
}

/// Allocate, copy, free: the fallback `realloc`.
pub(super) fn move_block<H: Heap + ?Sized>(
    h: &mut H,
    p: NonNull<u8>,
    l: Layout,
    new: usize,
) -> Option<NonNull<u8>> {
    let nl = Layout::from_size_align(new.max(1), l.align()).ok()?;
    let q = h.alloc(nl)?;
    // SAFETY: `p` holds `l.size()` bytes, `q` at least `new`; distinct live blocks.
    unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), l.size().min(new)) };
    h.dealloc(p, l);
    Some(q)
}

// ---- page families --------------------------------------------------------------------------

const PF_CLASSES: [usize; 27] = [
    24, 40, 56, 72, 88, 104, 120, 136, 152, 168, 184, 200, 216, 232, 248, 312, 376, 504, 632, 760,
    1016, 1272, 1528, 2040, 2552, 3064, 4008,
];
const PF_NAMES: [&str; 27] = [
    "pf-24", "pf-40", "pf-56", "pf-72", "pf-88", "pf-104", "pf-120", "pf-136", "pf-152", "pf-168",
    "pf-184", "pf-200", "pf-216", "pf-232", "pf-248", "pf-312", "pf-376", "pf-504", "pf-632",
    "pf-760", "pf-1016", "pf-1272", "pf-1528", "pf-2040", "pf-2552", "pf-3064", "pf-4008",
];

/// Depth of each family's quick cache in the `page-family` heap (deferred coalescing: a burst
/// of up to this many frees and re-allocations of one size skips splitting and merging).
pub const QUICK_CACHE: usize = 256;

/// The page-family heap as a general-purpose allocator (see the module docs).
pub struct PfHeap {
    pf: PageFamilies<GuestPages>,
    fids: [Option<FamilyId>; 27],
    large: Option<FamilyId>,
    refused: usize,
}

impl PfHeap {
    /// Register the families; pages counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        let mut pf = PageFamilies::new(GuestPages::new(acct));
        let mut fids = [None; 27];
        for (i, f) in fids.iter_mut().enumerate() {
            *f = pf
                .mm_instantiate_new_page_family(PF_NAMES[i], PF_CLASSES[i])
                .ok();
        }
        let large = pf.mm_instantiate_new_page_family("pf-large", 8).ok();
        pf.set_quick_cache(QUICK_CACHE);
        pf.set_empty_page_cache(1);
        PfHeap {
            pf,
            fids,
            large,
            refused: 0,
        }
    }

    /// The page families (reports).
    pub fn families(&mut self) -> &mut PageFamilies<GuestPages> {
        &mut self.pf
    }
}

impl Heap for PfHeap {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        if l.align() > 16 {
            return None;
        }
        let size = l.size().max(1);
        if size <= 248 {
            // Classes ≡ 8 (mod 16) every 16 bytes: 24 + 16 k.
            let i = size.saturating_sub(24).div_ceil(16);
            return self.pf.xmalloc(self.fids[i]?, 1).ok();
        }
        if let Some(i) = PF_CLASSES.iter().position(|&c| c >= size) {
            return self.pf.xmalloc(self.fids[i]?, 1).ok();
        }
        self.pf.xmalloc(self.large?, size.div_ceil(8)).ok()
    }

    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, _: Layout) {
        if self.pf.xfree(p).is_err() {
            self.refused += 1;
        }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        if self.pf.usable_size(p).is_ok_and(|u| u >= new.max(1)) {
            return Some(p);
        }
        move_block(self, p, l, new)
    }

    fn refused(&self) -> usize {
        self.refused
    }
}

// ---- MeMS -----------------------------------------------------------------------------------

/// MeMS as a general-purpose allocator.
pub struct MemsHeap {
    m: Mems<GuestPages>,
    refused: usize,
}

impl MemsHeap {
    /// An empty MeMS releasing empty regions; pages counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        let mut m = Mems::new(GuestPages::new(acct));
        m.set_release_empty(true);
        MemsHeap { m, refused: 0 }
    }

    /// The MeMS heap (audits, reports).
    pub fn mems(&self) -> &Mems<GuestPages> {
        &self.m
    }
}

impl Heap for MemsHeap {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        self.m.mems_alloc_aligned(l.size().max(1), l.align()).ok()
    }

    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, _: Layout) {
        if self.m.mems_free(p).is_err() {
            self.refused += 1;
        }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        if self.m.mems_usable_size(p).is_ok_and(|u| u >= new.max(1)) {
            return Some(p);
        }
        move_block(self, p, l, new)
    }

    fn refused(&self) -> usize {
        self.refused
    }
}

// ---- memvisor -------------------------------------------------------------------------------

/// A fresh instance of the global allocator's type.
pub fn memvisor(acct: &'static Acct) -> MemvisorHeap<GuestPages> {
    MemvisorHeap::new(GuestPages::new(acct), GuestPages::new(acct))
}

impl Heap for MemvisorHeap<GuestPages> {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        MemvisorHeap::alloc(self, l)
    }
    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        MemvisorHeap::dealloc(self, p, l)
    }
    #[inline]
    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        MemvisorHeap::realloc(self, p, l, new)
    }
    fn refused(&self) -> usize {
        self.stats().bad_frees
    }
    fn keep_stats(&self) -> Option<(memvisor_heaps::KeepStats, memvisor_heaps::SlabPageStats)> {
        Some((MemvisorHeap::keep_stats(self), self.slab_page_stats()))
    }
}

// ---- chunks for the peers -------------------------------------------------------------------

/// Chunks a peer got from the page source (unmapped on drop).
pub(super) struct Chunks {
    src: GuestPages,
    list: [(usize, usize); MAX_CHUNKS],
    n: usize,
}

impl Chunks {
    pub(super) fn new(acct: &'static Acct) -> Self {
        Chunks {
            src: GuestPages::new(acct),
            list: [(0, 0); MAX_CHUNKS],
            n: 0,
        }
    }

    /// Map a chunk of at least `bytes` (at least [`PEER_CHUNK_PAGES`] pages): `(base, len)`.
    pub(super) fn grab(&mut self, bytes: usize) -> Option<(usize, usize)> {
        if self.n == MAX_CHUNKS {
            return None;
        }
        let pages = bytes.div_ceil(PAGE).max(PEER_CHUNK_PAGES);
        let base = self.src.map_pages(pages)?.as_ptr().expose_provenance();
        self.list[self.n] = (base, pages);
        self.n += 1;
        Some((base, pages * PAGE))
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        for &(b, p) in &self.list[..self.n] {
            if let Some(base) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(b)) {
                self.src.unmap_pages(base, p);
            }
        }
    }
}

// ---- talc -----------------------------------------------------------------------------------

/// Talc's OOM handler: claim a new chunk from the page source.
pub struct TalcOom(Chunks);

impl talc::OomHandler for TalcOom {
    fn handle_oom(talc: &mut talc::Talc<Self>, layout: Layout) -> Result<(), ()> {
        // Room for the request, its alignment and talc's per-heap metadata (~1 KiB).
        let need = layout.size() + layout.align() + 2048;
        let (base, len) = talc.oom_handler.0.grab(need).ok_or(())?;
        let span = talc::Span::from_base_size(core::ptr::with_exposed_provenance_mut(base), len);
        // SAFETY: the chunk is fresh, mapped read/write, owned by this heap until it is
        // dropped, and overlaps no other heap.
        unsafe { talc.claim(span) }.map(|_| ())
    }
}

/// talc on the page source.
pub struct TalcHeap(talc::Talc<TalcOom>);

impl TalcHeap {
    /// Empty; chunks counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        TalcHeap(talc::Talc::new(TalcOom(Chunks::new(acct))))
    }
}

impl Heap for TalcHeap {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        let l = Layout::from_size_align(l.size().max(1), l.align()).ok()?;
        // SAFETY: the size is non-zero.
        unsafe { self.0.malloc(l) }.ok()
    }

    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        let Ok(l) = Layout::from_size_align(l.size().max(1), l.align()) else {
            return;
        };
        // SAFETY: `p` was allocated by this talc with this layout (the replay's contract).
        unsafe { self.0.free(p, l) }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        let l = Layout::from_size_align(l.size().max(1), l.align()).ok()?;
        let new = new.max(1);
        if new > l.size() {
            // SAFETY: `p` is a live block of this talc with layout `l`; `new` > old size.
            unsafe { self.0.grow(p, l, new) }.ok()
        } else {
            // SAFETY: as above, with `new` ≤ old size and non-zero.
            unsafe { self.0.shrink(p, l, new) };
            Some(p)
        }
    }
}

// ---- linked_list_allocator ------------------------------------------------------------------

/// linked_list_allocator, one `Heap` per chunk (sorted by address; chunks of 64 KiB, doubling
/// every 32 chunks up to 4 MiB), first fit over chunks starting at the last one that served a
/// request.
pub struct LlHeap {
    chunks: Chunks,
    heaps: [(usize, usize, linked_list_allocator::Heap); MAX_CHUNKS / 8],
    n: usize,
    last: usize,
}

impl LlHeap {
    /// Empty; chunks counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        LlHeap {
            chunks: Chunks::new(acct),
            heaps: [const { (0, 0, linked_list_allocator::Heap::empty()) }; MAX_CHUNKS / 8],
            n: 0,
            last: 0,
        }
    }
}

impl Heap for LlHeap {
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        let l = Layout::from_size_align(l.size().max(1), l.align()).ok()?;
        for k in 0..self.n {
            let i = (self.last + k) % self.n;
            if let Ok(p) = self.heaps[i].2.allocate_first_fit(l) {
                self.last = i;
                return Some(p);
            }
        }
        if self.n == self.heaps.len() {
            return None;
        }
        // Chunks double every 32 (64 KiB … 4 MiB), so the fixed array of heaps holds large
        // traces too.
        let chunk = (PEER_CHUNK_PAGES * PAGE) << (self.n / 32).min(6);
        let (base, len) = self.chunks.grab((l.size() + l.align() + 64).max(chunk))?;
        // Keep the array sorted by address for the binary search in dealloc.
        let pos = self.heaps[..self.n].partition_point(|h| h.0 < base);
        let mut i = self.n;
        while i > pos {
            self.heaps.swap(i, i - 1);
            i -= 1;
        }
        // SAFETY: a fresh chunk, mapped read/write, used by this heap only.
        let heap = unsafe {
            linked_list_allocator::Heap::new(core::ptr::with_exposed_provenance_mut(base), len)
        };
        self.heaps[pos] = (base, base + len, heap);
        self.n += 1;
        self.last = pos;
        self.heaps[pos].2.allocate_first_fit(l).ok()
    }

    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        let a = p.as_ptr().expose_provenance();
        let i = self.heaps[..self.n].partition_point(|h| h.1 <= a);
        if i < self.n && self.heaps[i].0 <= a {
            if let Ok(l) = Layout::from_size_align(l.size().max(1), l.align()) {
                // SAFETY: `p` lies in chunk `i`, whose heap allocated it with this layout.
                unsafe { self.heaps[i].2.deallocate(p, l) };
            }
        }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        move_block(self, p, l, new)
    }
}

// ---- buddy_system_allocator -----------------------------------------------------------------

/// buddy_system_allocator on chunks from the page source.
pub struct BuddyHeap {
    heap: buddy_system_allocator::Heap<33>,
    chunks: Chunks,
}

impl BuddyHeap {
    /// Empty; chunks counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        BuddyHeap {
            heap: buddy_system_allocator::Heap::<33>::new(),
            chunks: Chunks::new(acct),
        }
    }
}

impl Heap for BuddyHeap {
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        let l = Layout::from_size_align(l.size().max(1), l.align()).ok()?;
        if let Ok(p) = self.heap.alloc(l) {
            return Some(p);
        }
        // Twice the rounded block, so that an aligned block of that size lies inside.
        let block = l.size().max(l.align()).next_power_of_two();
        let (base, len) = self.chunks.grab(2 * block)?;
        // SAFETY: a fresh chunk, mapped read/write, used by this heap only.
        unsafe { self.heap.add_to_heap(base, base + len) };
        self.heap.alloc(l).ok()
    }

    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        if let Ok(l) = Layout::from_size_align(l.size().max(1), l.align()) {
            self.heap.dealloc(p, l);
        }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        move_block(self, p, l, new)
    }
}
