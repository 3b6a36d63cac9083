//! Regions of the mid-size path: finding a pointer's region, mapping, giving back, the
//! spares.

use super::{
    block_size, first_offset, word, Mid, Region, FIRST, FL, FLAGS, FREE, MAX_SPARES, MIN_BLOCK,
    PREV_FREE, REGION_BIG_AT, REGION_MAGIC, REGION_MAX, REGION_PAGES,
};
use crate::{at, map_dirty, shrink, unmap, HeapError, PageSource, PAGE_SIZE};

/// Regions mapped for blocks of just over half a region (one fits, two do not, two fit in
/// one page more: a 32 KiB buffer and its header) before such a block gets a region one
/// page bigger, which holds two of them. A program that keeps allocating such buffers (tar:
/// 261 of 32,816 bytes) then fills regions instead of leaving a hole smaller than a buffer
/// beside each (the tar validation trace: 186 → 164 pages, BENCHMARKS.md, thirteenth
/// session); one or two such buffers (gcc-cc1) keep exact regions. The bigger region is
/// a page-source call of its own in the guest (its pool serves runs up to 16 pages from
/// one 64-page mapping).
pub(super) const TWINS_FROM: usize = 2;

/// Whole free pages a region's tail must have to be given back ([`Mid::trim_tails`]).
pub(super) const TRIM_MIN: usize = 7;

/// Is a block of `need` bytes just over half a region of `pages` pages: one fits, two do not,
/// and two fit in one page more?
fn twin(pages: usize, need: usize) -> bool {
    let fits = |p: usize, n: usize| first_offset(p) + n + 8 <= p * PAGE_SIZE;
    fits(pages, need) && !fits(pages, 2 * need) && fits(pages + 1, 2 * need)
}

impl Mid {
    /// Header address of the region `va` lies in, 0 if none: the hint's region if it holds
    /// `va`, else the registry's answer (which becomes the hint). The registry holds each
    /// region's pages as `header address | pages` (pages < 4,096), so a miss reads no
    /// region header.
    #[inline(always)]
    pub(super) fn region_at(&self, va: usize) -> usize {
        let (base, len) = self.hint.get();
        if va.wrapping_sub(base) < len {
            return base;
        }
        let v = self.reg.get(va);
        let r = v & !(PAGE_SIZE - 1);
        if r != 0 {
            self.hint.set((r, (v & (PAGE_SIZE - 1)) * PAGE_SIZE));
        }
        r
    }

    /// The region hint `(header address, bytes)`, for the audit.
    pub(super) fn hint(&self) -> (usize, usize) {
        self.hint.get()
    }

    /// Pages of the region [`Mid::alloc_grown`] would map for a request of `n` bytes.
    pub fn grow_pages(&self, n: usize) -> usize {
        self.region_pages_for(block_size(n))
    }

    /// Pages of a new region for a block of `need` bytes: [`REGION_PAGES`] (or
    /// [`REGION_MAX`] once the path holds [`REGION_BIG_AT`] pages), one more for a block of
    /// just over half a region from the [`TWINS_FROM`]-th such region on, more for a block
    /// that needs them.
    fn region_pages_for(&self, need: usize) -> usize {
        // Small regions while the path is small (the last region's free tail is what it
        // wastes at a peak), big ones once it holds REGION_BIG_AT pages (less header and
        // tail per page; one page-source call per region either way: the guest's pool serves
        // runs up to a quarter of its 64-page chunk from one chunk and maps bigger runs on
        // their own, so 16 and 64 pages cost the same per page, 32 twice as much).
        let mut pages = self.base_pages();
        if self.twins >= TWINS_FROM && twin(pages, need) {
            return pages + 1;
        }
        while first_offset(pages) + need + 8 > pages * PAGE_SIZE {
            pages += 1;
        }
        pages
    }

    /// Pages of a region before a request's needs: [`REGION_PAGES`], or [`REGION_MAX`] once
    /// the path holds [`REGION_BIG_AT`] pages.
    fn base_pages(&self) -> usize {
        if self.stats.region_pages >= REGION_BIG_AT {
            REGION_MAX
        } else {
            REGION_PAGES
        }
    }

    /// Map a region for a block of `need` bytes and make its free block the dv.
    #[cold]
    #[inline(never)]
    pub(super) fn grow<S: PageSource>(
        &mut self,
        src: &mut S,
        need: usize,
    ) -> Result<(), HeapError> {
        let base = self.base_pages();
        let pages = self.region_pages_for(need);
        if twin(base, need) {
            self.twins += 1;
        }
        if pages * PAGE_SIZE >= 1 << (9 + FL) {
            return Err(HeapError::TooLarge { size: need });
        }
        let r = map_dirty(src, pages).ok_or(HeapError::OutOfMemory { pages })?;
        // Registered as `r | pages` (see `region_at`; pages < 4,096 as `TooLarge` bounds
        // them above).
        if let Err(e) = self.reg.insert_range(src, r, pages, r | pages) {
            unmap(src, r, pages);
            return Err(e);
        }
        let first = first_offset(pages);
        // SAFETY: `pages` fresh pages at `r`, owned by this allocator.
        unsafe {
            core::ptr::write_bytes(at::<u8>(r), 0, first);
            at::<Region>(r).write(Region {
                magic: REGION_MAGIC,
                first: first as u32,
                pages,
                next: self.regions,
                prev: 0,
                mark: 0,
            });
            if self.regions != 0 {
                (*at::<Region>(self.regions)).prev = r;
            }
            let b = r + first;
            let size = pages * PAGE_SIZE - first - 8;
            *word(b) = size | FREE | FIRST;
            *word(b + size - 8) = size;
            *word(b + size) = PREV_FREE;
            self.retire_dv(src);
            self.dv = b;
            self.dv_size = size;
        }
        self.regions = r;
        self.stats.regions += 1;
        self.stats.region_pages += pages;
        self.stats.regions_made += 1;
        Ok(())
    }

    /// Give back up to `want` 4 KiB pages from the free tails of the regions, newest region
    /// first; returns the pages given back. A region's tail is the free block that ends it;
    /// it goes back only if it has stayed the same since the previous call (each call marks
    /// every region's tail: a tail still in use changes between two growths) and holds at
    /// least 7 whole pages; then its whole pages go back (less what must stay for a block
    /// of at least 32 bytes, and no more than the `want` left) and the region stays smaller.
    /// Regions whose only block is free (the spares, an empty dv) are left alone: they go
    /// back whole. With `want` = 0 it only marks. Needs a page source that gives back part
    /// of a run ([`PageSource::shrink_pages`]; one that refuses changes nothing). O(regions).
    #[cold]
    pub fn trim_tails<S: PageSource>(&mut self, src: &mut S, want: usize) -> usize {
        let mut got = 0;
        let mut r = self.regions;
        while r != 0 {
            // SAFETY: a live region header.
            let next = unsafe { (*at::<Region>(r)).next };
            got += self.trim(src, r, want - got);
            r = next;
        }
        got
    }

    /// Give back up to `want` of the free tail pages of region `r` (see `trim_tails`).
    fn trim<S: PageSource>(&mut self, src: &mut S, r: usize, want: usize) -> usize {
        // SAFETY: `r` is a live region header; its last word is the sentinel, and a free
        // block before it has its footer in the word before (boundary tags); every word
        // written lies below the new end, in the pages that stay mapped.
        unsafe {
            let pages = (*at::<Region>(r)).pages;
            let end = r + pages * PAGE_SIZE - 8;
            if *word(end) & PREV_FREE == 0 {
                (*at::<Region>(r)).mark = 0;
                return 0;
            }
            let size = *word(end - 8);
            let t = end - size;
            if *word(t) & FIRST != 0 {
                return 0;
            }
            let h = &mut *at::<Region>(r);
            if h.mark != t || want == 0 {
                h.mark = t;
                return 0;
            }
            // What stays of the block is none of it or a whole block.
            if size / PAGE_SIZE < TRIM_MIN {
                return 0;
            }
            let mut k = (size / PAGE_SIZE).min(want);
            let rest = |k: usize| size - k * PAGE_SIZE;
            if k != 0 && rest(k) != 0 && rest(k) < MIN_BLOCK {
                k -= 1;
            }
            if k == 0 {
                return 0;
            }
            let is_dv = t == self.dv;
            if !is_dv {
                self.remove(t, size);
            }
            if !shrink(src, r, pages, pages - k) {
                if !is_dv {
                    self.insert(t, size);
                }
                return 0;
            }
            let (rest, new_end) = (rest(k), end - k * PAGE_SIZE);
            if rest == 0 {
                *word(new_end) = 0;
                if is_dv {
                    self.dv = 0;
                    self.dv_size = 0;
                }
            } else {
                *word(t) = rest | FREE;
                *word(t + rest - 8) = rest;
                *word(new_end) = PREV_FREE;
                if is_dv {
                    self.dv_size = rest;
                } else {
                    self.insert(t, rest);
                }
            }
            let left = pages - k;
            (*at::<Region>(r)).pages = left;
            self.reg.remove_range(src, r + left * PAGE_SIZE, k);
            self.reg.set_range(r, left, r | left);
            if self.hint.get().0 == r {
                self.hint.set((r, left * PAGE_SIZE));
            }
            self.stats.region_pages -= k;
            self.stats.regions_trimmed += 1;
            self.stats.trimmed_pages += k as u64;
            k
        }
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
            if self.hint.get().0 == r {
                self.hint.set((0, 0));
            }
            self.reg.remove_range(src, r, pages);
            unmap(src, r, pages);
            self.stats.regions -= 1;
            self.stats.region_pages -= pages;
            self.stats.regions_freed += 1;
        }
    }

    /// Register the empty region `r`, whose only block `b` is free and off the lists, as a
    /// spare if the bound allows (`true`; `b` stays off the lists: spares are taken only
    /// when neither the lists nor the dv hold a request, before the path grows).
    pub(super) fn keep_spare(&mut self, r: usize, b: usize) -> bool {
        // SAFETY: `r` is a live region header.
        let pages = unsafe { (*at::<Region>(r)).pages };
        if self.nspare < MAX_SPARES {
            self.spares[self.nspare] = b;
            self.spare_sizes[self.nspare] = pages;
            self.nspare += 1;
            self.spare_pages += pages;
            return true;
        }
        false
    }

    /// The dv stops being the dv (another block takes its place): listed, kept as a spare,
    /// or, if it spans its region and no spare may be kept, given back.
    pub(super) fn retire_dv<S: PageSource>(&mut self, src: &mut S) {
        let (b, size) = (self.dv, self.dv_size);
        if b == 0 {
            return;
        }
        self.dv = 0;
        self.dv_size = 0;
        // SAFETY: the dv is a free block of a live region; the word after it is a block's
        // or the sentinel's.
        let empty = unsafe { *word(b) & FIRST != 0 && *word(b + size) & !FLAGS == 0 };
        if empty {
            let r = self.region_at(b + 8);
            if !self.keep_spare(r, b) {
                self.release_region(src, r);
            }
            return;
        }
        self.insert(b, size);
    }

    /// A spare whose block holds `need` bytes (the newest such), no longer a spare, made
    /// the dv (the old dv retires). `false` if no spare holds it.
    #[cold]
    pub(super) fn dv_from_spare<S: PageSource>(&mut self, src: &mut S, need: usize) -> bool {
        // SAFETY: spares are free blocks spanning live regions.
        let Some(i) = (0..self.nspare)
            .rev()
            .find(|&i| unsafe { *word(self.spares[i]) } & !FLAGS >= need)
        else {
            return false;
        };
        let b = self.spares[i];
        self.spare_pages -= self.spare_sizes[i];
        self.nspare -= 1;
        self.spares[i] = self.spares[self.nspare];
        self.spare_sizes[i] = self.spare_sizes[self.nspare];
        self.retire_dv(src);
        self.dv = b;
        // SAFETY: as above.
        self.dv_size = unsafe { *word(b) } & !FLAGS;
        true
    }

    /// Return the spare (empty) regions, and the dv if it spans an empty region, to the page
    /// source. Returns their pages.
    pub fn release_spare<S: PageSource>(&mut self, src: &mut S) -> usize {
        let before = self.stats.region_pages;
        while self.nspare > 0 {
            self.nspare -= 1;
            let b = self.spares[self.nspare];
            self.release_empty(src, b);
        }
        self.spare_pages = 0;
        let (b, size) = (self.dv, self.dv_size);
        // SAFETY: the dv is a free block of a live region; the word after it is a block's
        // or the sentinel's.
        if b != 0 && unsafe { *word(b) & FIRST != 0 && *word(b + size) & !FLAGS == 0 } {
            self.release_empty(src, b);
        }
        before - self.stats.region_pages
    }

    /// Give back the empty region whose free block (a spare, off the lists, or the dv) is
    /// `b`.
    fn release_empty<S: PageSource>(&mut self, src: &mut S, b: usize) {
        if b == self.dv {
            self.dv = 0;
            self.dv_size = 0;
        }
        let r = self.region_at(b + 8);
        self.release_region(src, r);
    }

    /// Pages of the empty regions kept: the spares and the dv's if it spans an empty
    /// region.
    pub fn spare_pages(&self) -> usize {
        let (b, size) = (self.dv, self.dv_size);
        // SAFETY: the dv is a free block of a live region; the word after it is a block's
        // or the sentinel's.
        if b != 0 && unsafe { *word(b) & FIRST != 0 && *word(b + size) & !FLAGS == 0 } {
            let r = self.region_at(b + 8);
            // SAFETY: a live region header.
            return self.spare_pages + unsafe { (*at::<Region>(r)).pages };
        }
        self.spare_pages
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
