//! The empty-page cache and the quick cache (deferred coalescing): configuration, flushing
//! and trimming.

use super::*;

impl<S: PageSource> PageFamilies<S> {
    /// Keep up to `pages` completely free one-page VM pages **per family** instead of
    /// unmapping them at once (default 0: the seed's behaviour). Saves a map/unmap round trip
    /// when a family oscillates around a page boundary. Lowering it does not unmap; call
    /// [`PageFamilies::trim`].
    pub fn set_empty_page_cache(&mut self, pages: usize) {
        self.cache_limit = pages;
    }

    /// Opt-in **quick cache** (deferred coalescing, like dlmalloc's fastbins): up to `blocks`
    /// freed one-unit blocks per family are kept unmerged on a LIFO list and handed out again
    /// first by one-unit `xmalloc`/`xcalloc`. Both operations then skip splitting and merging
    /// (the fast path for a global allocator's small size classes). Default 0 (off: the seed's
    /// behaviour). Cached blocks are free for validation (freeing one again is a
    /// [`HeapError::DoubleFree`]) and in the reports (`F R E E D [quick]`, counted in FBC), but
    /// they are not merged and keep their page mapped until [`PageFamilies::flush_quick`] or
    /// [`PageFamilies::trim`]. Lowering the depth flushes.
    pub fn set_quick_cache(&mut self, blocks: usize) {
        if blocks < self.quick_max {
            self.flush_quick();
        }
        self.quick_max = blocks;
    }

    /// Free every block held by the quick cache for real (merging, and unmapping pages that
    /// become empty).
    pub fn flush_quick(&mut self) {
        for fid in 0..self.count {
            while self.families[fid].quick_head != 0 {
                let fam = &mut self.families[fid];
                let h = fam.quick_head;
                // SAFETY: quick-list members are cached blocks of live VM pages of this
                // family: turn `h` back into an allocated block (header magic, bitmap bit,
                // counters), then free it through the normal path.
                unsafe {
                    fam.quick_head = rdw(h + FB_NEXT);
                    fam.quick_len -= 1;
                    let page = rdw(h + FB_PREV);
                    let t = (rd32(h) & !LOW) as usize;
                    wr32(h, t as u32 | BMAGIC);
                    fam.alloc_bytes += t;
                    let slot = (h + BLOCK_HEADER - page) >> 4;
                    let w = page + PAGE_HDR + (slot >> 6) * 8;
                    wrw(w, rdw(w) | (1 << (slot & 63)));
                    let r = self.free_addr(h + BLOCK_HEADER, 0);
                    debug_assert!(r.is_ok());
                }
            }
        }
    }

    /// Flush the quick cache, then unmap every completely free VM page (those kept by the
    /// empty-page cache). Returns the number of 4 KiB pages given back.
    pub fn trim(&mut self) -> usize {
        self.flush_quick();
        let mut freed = 0;
        for fid in 0..self.count {
            let mut page = self.families[fid].first_page;
            while page != 0 {
                // SAFETY: `page` is a live VM page of family `fid`.
                let (next, p) = unsafe { (rdw(page + VP_NEXT), rd32(page + VP_PAGES) as usize) };
                let h = page + first_off(p);
                // SAFETY: the first block of a live page.
                let sw = unsafe { rd32(h) };
                if sw & FREE != 0 && (sw & !LOW) as usize == region_bytes(p) {
                    let fam = &mut self.families[fid];
                    // SAFETY: a free block is on its class list.
                    unsafe { fam.unlink(h, region_bytes(p)) };
                    fam.empty_pages -= 1;
                    self.release_page(fid, page, p);
                    freed += p;
                }
                page = next;
            }
        }
        freed
    }
}
