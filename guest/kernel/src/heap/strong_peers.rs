//! The two stronger peers of the trace replay and the heap benchmark (issue 13), on the same
//! page source as the others (`source.rs`), each counting its pages in its own [`Acct`]:
//!
//! | name | heap |
//! | --- | --- |
//! | `rlsf` | `rlsf::Tlsf` (TLSF: two-level segregated fit, O(1) allocate and free), a 64 KiB chunk (or one the size of the request) inserted as a new pool when it runs out; chunks are kept until the heap is dropped |
//! | `dlmalloc` | `dlmalloc::Dlmalloc` (Doug Lea's malloc) with its `Allocator` trait on the page source: it asks for segments (its 64 KiB granularity, or the size of a large request), releases whole segments and trims the top segment's tail itself, as it does with `mmap` / `munmap` |

use super::peers::{move_block, Chunks, Heap};
use super::source::{Acct, GuestPages};
use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;
use memvisor_heaps::PageSource;

const PAGE: usize = 4096;

// ---- rlsf -----------------------------------------------------------------------------------

/// TLSF with 28 first-level classes (blocks up to 8 GiB) and 32 second-level classes.
type Tlsf = rlsf::Tlsf<'static, u32, u32, 28, 32>;

/// rlsf on chunks from the page source.
pub struct RlsfHeap {
    tlsf: Tlsf,
    chunks: Chunks,
}

impl RlsfHeap {
    /// Empty; chunks counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        RlsfHeap {
            tlsf: Tlsf::new(),
            chunks: Chunks::new(acct),
        }
    }

    /// Add a pool of at least `need` bytes.
    fn grow(&mut self, need: usize) -> Option<()> {
        let (base, len) = self.chunks.grab(need)?;
        let ptr = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(base))?;
        // SAFETY: a fresh chunk, mapped read/write, owned by this heap until `chunks` is
        // dropped (after `tlsf`, which holds no reference beyond its own lifetime of use).
        unsafe {
            self.tlsf
                .insert_free_block_ptr(NonNull::slice_from_raw_parts(ptr, len))
        }
        .map(|_| ())
    }
}

impl Heap for RlsfHeap {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        let l = Layout::from_size_align(l.size().max(1), l.align()).ok()?;
        if let Some(p) = self.tlsf.allocate(l) {
            return Some(p);
        }
        // The request, its alignment, a block header, the pool's sentinel, and 1/8 more: TLSF
        // rounds a request up to the next second-level class (1/32 of its power of two) and
        // files a free block under the class below its size, so a pool the exact size of the
        // request would not be found.
        let need = l.size().checked_add(l.size() / 8)?;
        self.grow(need.checked_add(l.align())?.checked_add(128)?)?;
        self.tlsf.allocate(l)
    }

    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        // SAFETY: `p` was allocated by this TLSF with alignment `l.align()` (the replay's
        // contract).
        unsafe { self.tlsf.deallocate(p, l.align()) }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        let nl = Layout::from_size_align(new.max(1), l.align()).ok()?;
        // SAFETY: `p` is a live block of this TLSF with alignment `l.align()`. On failure it
        // is left untouched, and the fallback grows the heap and moves it.
        unsafe { self.tlsf.reallocate(p, nl) }.or_else(|| move_block(self, p, l, new))
    }
}

// ---- dlmalloc -------------------------------------------------------------------------------

/// dlmalloc's system allocator: whole page runs from the page source.
pub struct DlPages {
    src: GuestPages,
    /// Bytes held (for the debug check that everything went back).
    held: Cell<usize>,
}

// SAFETY: `alloc` returns page-aligned runs of `size` rounded up to pages, mapped read/write
// and owned by this dlmalloc until it frees them; `free` / `free_part` unmap exactly the page
// runs dlmalloc gives back (whole runs, or a page-aligned tail); `remap` never moves or grows
// (returns null); regions are not known to be zero (pages may be recycled dirty).
unsafe impl dlmalloc::Allocator for DlPages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let Some(pages) = size.checked_add(PAGE - 1).map(|s| s / PAGE) else {
            return (core::ptr::null_mut(), 0, 0);
        };
        let mut src = self.src;
        match src.map_pages_dirty(pages) {
            Some(p) => {
                self.held.set(self.held.get() + pages * PAGE);
                (p.as_ptr(), pages * PAGE, 0)
            }
            None => (core::ptr::null_mut(), 0, 0),
        }
    }

    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        core::ptr::null_mut()
    }

    fn free_part(&self, ptr: *mut u8, oldsize: usize, newsize: usize) -> bool {
        // Only a page-aligned cut of a page-aligned region: then `[ptr + newsize, ptr +
        // oldsize)` is a whole run of pages.
        let b = ptr as usize;
        let Some(cut) = b.checked_add(newsize) else {
            return false;
        };
        if !b.is_multiple_of(PAGE)
            || !newsize.is_multiple_of(PAGE)
            || !oldsize.is_multiple_of(PAGE)
            || newsize >= oldsize
        {
            return false;
        }
        let Some(base) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(cut)) else {
            return false;
        };
        let mut src = self.src;
        src.unmap_pages(base, (oldsize - newsize) / PAGE);
        self.held.set(self.held.get() - (oldsize - newsize));
        true
    }

    fn free(&self, ptr: *mut u8, size: usize) -> bool {
        let (Some(base), true) = (NonNull::new(ptr), size.is_multiple_of(PAGE)) else {
            return false;
        };
        let mut src = self.src;
        src.unmap_pages(base, size / PAGE);
        self.held.set(self.held.get() - size);
        true
    }

    fn can_release_part(&self, _: u32) -> bool {
        true
    }

    fn allocates_zeros(&self) -> bool {
        false
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// dlmalloc on the page source; every segment it still holds is released on drop.
pub struct DlHeap(Option<dlmalloc::Dlmalloc<DlPages>>);

impl DlHeap {
    /// Empty; segments counted in `acct`.
    pub fn new(acct: &'static Acct) -> Self {
        DlHeap(Some(dlmalloc::Dlmalloc::new_with_allocator(DlPages {
            src: GuestPages::new(acct),
            held: Cell::new(0),
        })))
    }
}

impl Drop for DlHeap {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            // SAFETY: no block of this heap is used after the heap is dropped (the replay
            // and the benchmark drop their pointer tables first).
            unsafe { d.destroy() };
        }
    }
}

impl Heap for DlHeap {
    #[inline]
    fn alloc(&mut self, l: Layout) -> Option<NonNull<u8>> {
        let d = self.0.as_mut()?;
        // SAFETY: size ≥ 1, alignment a power of two (from `Layout`).
        NonNull::new(unsafe { d.malloc(l.size().max(1), l.align()) })
    }

    #[inline]
    fn dealloc(&mut self, p: NonNull<u8>, l: Layout) {
        if let Some(d) = self.0.as_mut() {
            // SAFETY: `p` was allocated by this dlmalloc with this size and alignment.
            unsafe { d.free(p.as_ptr(), l.size().max(1), l.align()) }
        }
    }

    fn realloc(&mut self, p: NonNull<u8>, l: Layout, new: usize) -> Option<NonNull<u8>> {
        let d = self.0.as_mut()?;
        // SAFETY: `p` is a live block of this dlmalloc with layout `l`; on failure (null) it
        // is untouched.
        NonNull::new(unsafe { d.realloc(p.as_ptr(), l.size().max(1), l.align(), new.max(1)) })
    }
}
