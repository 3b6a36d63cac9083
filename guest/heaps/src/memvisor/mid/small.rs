//! Slab-class requests served from the mid-size path's free blocks (issue 13): when a slab
//! class has no free slot and a new slab page would raise the heap's peak, the request may
//! take a free block the mid-size path already holds instead ([`Mid::alloc_small`]), so the
//! free space the mid-size regions keep (holes left by blocks that moved or died) serves
//! small objects too, as in one arena. Such a block carries the `SMALL` flag: only
//! [`Mid::free_small`] frees it, and [`Mid::free`] refuses it (and the other way round).

use super::{block_size, set_live, word, Mid, MIN_BLOCK, SMALL};
use crate::{at, HeapError, PageSource};
use core::ptr::NonNull;

/// Holes (free blocks on the lists) per 1,024 bytes of the regions in use from which
/// slab-class requests may take them: 1/32 (chosen with the host replay of every trace and
/// guest runs, BENCHMARKS.md "Fourth session").
pub const SMALL_HOLES_PER_1024: usize = 32;

impl Mid {
    /// Are the holes (the free blocks on the lists: neither the dv nor the spare regions)
    /// at least [`SMALL_HOLES_PER_1024`] / 1,024 of the bytes of the regions in use? O(1).
    pub fn holds_much_free(&self) -> bool {
        let bytes = (self.stats.region_pages - self.spare_pages) * crate::PAGE_SIZE;
        self.listed * 1024 >= bytes * SMALL_HOLES_PER_1024 && bytes != 0
    }

    /// A block of at least `n` bytes (`1 ≤ n ≤` [`super::MID_MAX`]), 16-byte aligned, from a
    /// free block on the lists only (the same fit as [`Mid::alloc`]): never the dv, a spare or
    /// a new region, so it maps nothing. `None` if no listed block holds it. The remainder of
    /// the block, if it can be a block (32 bytes), stays free where it is, on its list.
    pub fn alloc_small(&mut self, n: usize) -> Option<NonNull<u8>> {
        let need = block_size(n);
        let (b, size) = self.find(need);
        if b == 0 {
            return None;
        }
        self.remove(b, size);
        self.take(b, need, false, MIN_BLOCK);
        let r = self.region_at(b + 8);
        // SAFETY: `b` now starts a live block of region `r`.
        unsafe {
            *word(b) |= SMALL;
            set_live(r, b, true);
        }
        self.stats.live += 1;
        self.stats.small += 1;
        NonNull::new(at::<u8>(b + 8))
    }

    /// Payload size in bytes of the live [`Mid::alloc_small`] block at `ptr`.
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] if `ptr` is not the payload of a live block from
    /// [`Mid::alloc_small`].
    pub fn usable_size_small(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        self.live_block(ptr.as_ptr().addr(), true)
            .map(|(_, _, s)| s - 8)
    }

    /// Free the [`Mid::alloc_small`] block at `ptr`, allocated for `n` bytes; as
    /// [`Mid::free`] otherwise.
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] if `ptr` is not the payload of a live block from
    /// [`Mid::alloc_small`] that holds `n` bytes; the allocator is unchanged.
    pub fn free_small<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        n: usize,
    ) -> Result<(), HeapError> {
        self.free_in(src, ptr, n, true)
    }
}
