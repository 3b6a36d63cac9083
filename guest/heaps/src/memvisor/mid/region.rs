//! Regions of the mid-size path: mapping, giving back, the spare.

use super::{
    first_offset, word, Mid, Region, FIRST, FL, FLAGS, FREE, GROW_DIV, PREV_FREE, REGION_MAGIC,
    REGION_MAX, REGION_PAGES,
};
use crate::{at, map_dirty, unmap, HeapError, PageSource, PAGE_SIZE};

impl Mid {
    /// Map a region for a block of `need` bytes and put its free block on a list.
    #[cold]
    #[inline(never)]
    pub(super) fn grow<S: PageSource>(
        &mut self,
        src: &mut S,
        need: usize,
    ) -> Result<(), HeapError> {
        let mut pages = (self.stats.region_pages / GROW_DIV).clamp(REGION_PAGES, REGION_MAX);
        while first_offset(pages) + need + 8 > pages * PAGE_SIZE {
            pages += 1;
        }
        if pages * PAGE_SIZE >= 1 << (9 + FL) {
            return Err(HeapError::TooLarge { size: need });
        }
        let r = map_dirty(src, pages).ok_or(HeapError::OutOfMemory { pages })?;
        if let Err(e) = self.reg.insert_range(src, r, pages, r) {
            unmap(src, r, pages);
            return Err(e);
        }
        let first = first_offset(pages);
        // SAFETY: `pages` fresh pages at `r`, owned by this allocator.
        unsafe {
            core::ptr::write_bytes(at::<u8>(r), 0, first);
            at::<Region>(r).write(Region {
                magic: REGION_MAGIC,
                pages,
                next: self.regions,
                prev: 0,
            });
            if self.regions != 0 {
                (*at::<Region>(self.regions)).prev = r;
            }
            let b = r + first;
            let size = pages * PAGE_SIZE - first - 8;
            *word(b) = size | FREE | FIRST;
            *word(b + size - 8) = size;
            *word(b + size) = PREV_FREE;
            if self.dv != 0 {
                self.insert(self.dv, self.dv_size);
            }
            self.dv = b;
            self.dv_size = size;
        }
        self.regions = r;
        self.stats.regions += 1;
        self.stats.region_pages += pages;
        self.stats.regions_made += 1;
        Ok(())
    }

    /// Give back region `r`, whose only block is free and off the lists and the dv.
    #[cold]
    pub(super) fn release_region<S: PageSource>(&mut self, src: &mut S, r: usize) {
        // SAFETY: `r` is a live region header (registered), unlinked here before its pages go.
        unsafe {
            let h = &*at::<Region>(r);
            let (pages, next, prev) = (h.pages, h.next, h.prev);
            if prev != 0 {
                (*at::<Region>(prev)).next = next;
            } else {
                self.regions = next;
            }
            if next != 0 {
                (*at::<Region>(next)).prev = prev;
            }
            self.reg.remove_range(src, r, pages);
            unmap(src, r, pages);
            self.stats.regions -= 1;
            self.stats.region_pages -= pages;
            self.stats.regions_freed += 1;
        }
    }

    /// Return the spare (empty) region, if any, to the page source. Returns its pages.
    pub fn release_spare<S: PageSource>(&mut self, src: &mut S) -> usize {
        let b = core::mem::replace(&mut self.spare, 0);
        if b == 0 {
            return 0;
        }
        if b == self.dv {
            self.dv = 0;
            self.dv_size = 0;
        } else {
            // SAFETY: the spare is a free block on its list spanning its whole region.
            let size = unsafe { *word(b) } & !FLAGS;
            self.remove(b, size);
        }
        let before = self.stats.region_pages;
        let r = self.reg.get(b + 8);
        self.release_region(src, r);
        before - self.stats.region_pages
    }

    /// Pages of the spare region (0 if none).
    pub fn spare_pages(&self) -> usize {
        if self.spare == 0 {
            return 0;
        }
        let r = self.reg.get(self.spare + 8);
        // SAFETY: the spare's region is live.
        unsafe { (*at::<Region>(r)).pages }
    }

    /// Give every region back (the heap is dropped; live blocks die with it).
    pub fn clear<S: PageSource>(&mut self, src: &mut S) {
        while self.regions != 0 {
            let r = self.regions;
            // SAFETY: a live region header.
            let (pages, next) = unsafe { ((*at::<Region>(r)).pages, (*at::<Region>(r)).next) };
            self.reg.remove_range(src, r, pages);
            unmap(src, r, pages);
            self.regions = next;
        }
        self.reg.clear(src);
        *self = Mid::new();
    }
}
