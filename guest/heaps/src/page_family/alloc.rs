//! Allocation: `xcalloc` / `xmalloc`, the quick-cache pop, splitting the largest free block
//! and mapping new VM pages.

use super::*;

impl<S: PageSource> PageFamilies<S> {
    /// Block total for `units` structs of family `fid`.
    #[inline(always)]
    pub(super) fn total_for(&self, fid: usize, units: usize) -> Result<usize, HeapError> {
        let fam = &self.families[fid];
        if units <= 1 {
            return Ok(fam.unit_total);
        }
        units
            .checked_mul(fam.struct_size)
            .and_then(block_total)
            .ok_or(HeapError::TooLarge {
                size: units.saturating_mul(fam.struct_size),
            })
    }

    /// The seed's `xcalloc`: zeroed memory for `units` contiguous structs of the family
    /// (`units == 0` is served like 1). The payload is 16-byte aligned and at least
    /// `units * struct_size` bytes long ([`PageFamilies::usable_size`] tells the exact size).
    ///
    /// # Errors
    /// [`HeapError`] for an unknown family, a size overflow, or when the page source has no more pages.
    pub fn xcalloc<'a>(
        &mut self,
        family: impl Into<FamilyRef<'a>>,
        units: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        let fid = self.resolve(family.into())?;
        let total = self.total_for(fid, units)?;
        let p = match self.quick_pop(fid, total) {
            0 => self.alloc_total(fid, total)?,
            p => p,
        };
        // SAFETY: the payload of the block just allocated is `total - 8` writable bytes.
        unsafe { core::ptr::write_bytes(at::<u8>(p), 0, total - BLOCK_HEADER) };
        // SAFETY: payload addresses are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Like [`PageFamilies::xcalloc`] but the memory is **not** zeroed (the hot path for a
    /// global allocator: one family per size class, `units == 1`).
    ///
    /// # Errors
    /// As [`PageFamilies::xcalloc`].
    #[inline]
    pub fn xmalloc(&mut self, family: FamilyId, units: usize) -> Result<NonNull<u8>, HeapError> {
        let fid = self.check_id(family)?;
        let total = self.total_for(fid, units)?;
        let p = match self.quick_pop(fid, total) {
            0 => self.alloc_total(fid, total)?,
            p => p,
        };
        // SAFETY: payload addresses are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Take a block of `total` bytes from family `fid`'s quick cache: its payload address,
    /// or 0 if the cache is empty or holds another size.
    #[inline(always)]
    pub(super) fn quick_pop(&mut self, fid: usize, total: usize) -> usize {
        let fam = &mut self.families[fid];
        let h = fam.quick_head;
        if h == 0 || total != fam.unit_total {
            return 0;
        }
        // SAFETY: `h` is a cached block of `unit_total` bytes in the live VM page stored in
        // its payload; it becomes an allocated block again.
        unsafe {
            fam.quick_head = rdw(h + FB_NEXT);
            let page = rdw(h + FB_PREV);
            fam.quick_len -= 1;
            wr32(h, total as u32 | BMAGIC);
            let slot = (h + BLOCK_HEADER - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) | (1 << (slot & 63)));
        }
        fam.alloc_bytes += total;
        h + BLOCK_HEADER
    }

    /// Allocate a block of `total` bytes in family `fid`; returns the payload address.
    #[inline(always)]
    pub(super) fn alloc_total(&mut self, fid: usize, total: usize) -> Result<usize, HeapError> {
        let mut h = self.families[fid].find(total);
        if h == 0 {
            h = self.new_vm_page(fid, total)?;
        }
        let fam = &mut self.families[fid];
        // SAFETY: `h` is a free block on its class list in a live VM page of family `fid`
        // holding at least `total` bytes; every block is followed by a block header or the
        // page's end sentinel, so all addresses touched lie inside that VM page.
        unsafe {
            let bt = (rd32(h) & !LOW) as usize;
            let page = rdw(h + FB_PAGE);
            let bc = fclass(bt);
            if fam.empty_pages != 0 && rd32(h + 4) & !LOW == 0 && rd32(h + bt) & !LOW == 0 {
                // It was a whole empty page (first block, followed by the end sentinel).
                fam.empty_pages -= 1;
            }
            let rem = bt - total;
            let taken = if rem >= MIN_BLOCK {
                let r = h + total;
                let rc = fclass(rem);
                if rc == bc {
                    fam.replace_c(h, r, bc, page);
                } else {
                    fam.unlink_c(h, bc);
                    fam.push_c(r, rc, page);
                }
                wr32(r, rem as u32 | FREE | BMAGIC);
                wr32(r + 4, total as u32 | PMAGIC);
                wr32(r + rem + 4, rem as u32 | PMAGIC);
                fam.blocks += 1;
                total
            } else {
                fam.unlink_c(h, bc);
                fam.free_blocks -= 1;
                bt
            };
            wr32(h, taken as u32 | BMAGIC);
            let slot = (h + BLOCK_HEADER - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) | (1 << (slot & 63)));
            fam.alloc_bytes += taken;
            fam.free_bytes -= taken;
        }
        Ok(h + BLOCK_HEADER)
    }

    /// Map a VM page big enough for a `total`-byte block, put its single free block on the
    /// family's lists and return that block's header address.
    #[cold]
    pub(super) fn new_vm_page(&mut self, fid: usize, total: usize) -> Result<usize, HeapError> {
        let p = pages_for(total);
        // Everything the heap reads in the page is written below (header and bitmap zeroed
        // here, block tags), so the source need not zero it.
        let base = map_dirty(&mut self.source, p).ok_or(HeapError::OutOfMemory { pages: p })?;
        if let Err(e) = self.registry.insert_range(&mut self.source, base, p, base) {
            unmap(&mut self.source, base, p);
            return Err(e);
        }
        let fam = &mut self.families[fid];
        let h = base + first_off(p);
        let rt = region_bytes(p);
        // SAFETY: `base` is a fresh mapping of `p` pages owned by this heap (contents
        // unspecified; the header and bitmap are zeroed first). `fam.first_page` (if any) is a
        // live VM page.
        unsafe {
            core::ptr::write_bytes(at::<u8>(base), 0, first_off(p) - BLOCK_HEADER);
            wr32(base + VP_MAGIC, PAGE_MAGIC);
            *at::<u16>(base + VP_FAMILY) = fid as u16;
            wr32(base + VP_PAGES, p as u32);
            wrw(base + VP_NEXT, fam.first_page);
            wrw(base + VP_PREV, 0);
            if fam.first_page != 0 {
                wrw(fam.first_page + VP_PREV, base);
            }
            wr32(h, rt as u32 | FREE | BMAGIC);
            wr32(h + 4, PMAGIC);
            // End sentinel: an allocated block of size 0 in the last 8 bytes.
            wr32(h + rt, BMAGIC);
            wr32(h + rt + 4, rt as u32 | PMAGIC);
            fam.push(h, rt, base);
        }
        fam.first_page = base;
        fam.vm_pages += 1;
        fam.os_pages += p;
        fam.empty_pages += 1;
        fam.blocks += 1;
        fam.free_blocks += 1;
        fam.free_bytes += rt;
        self.data_pages += p;
        Ok(h)
    }
}
