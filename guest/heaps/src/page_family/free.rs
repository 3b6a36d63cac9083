//! Free and validation: `xfree` with merging of free neighbours, pointer validation,
//! classifying bad frees and unmapping empty VM pages.

use super::*;

impl<S: PageSource> PageFamilies<S> {
    /// Unlink an empty VM page (its single free block already off the lists) and unmap it.
    pub(super) fn release_page(&mut self, fid: usize, page: usize, p: usize) {
        let fam = &mut self.families[fid];
        // SAFETY: `page` and its list neighbours are live VM pages of family `fid`.
        unsafe {
            let next = rdw(page + VP_NEXT);
            let prev = rdw(page + VP_PREV);
            if prev != 0 {
                wrw(prev + VP_NEXT, next);
            } else {
                fam.first_page = next;
            }
            if next != 0 {
                wrw(next + VP_PREV, prev);
            }
        }
        fam.vm_pages -= 1;
        fam.os_pages -= p;
        fam.blocks -= 1;
        fam.free_blocks -= 1;
        fam.free_bytes -= region_bytes(p);
        self.data_pages -= p;
        self.registry.remove_range(&mut self.source, page, p);
        unmap(&mut self.source, page, p);
    }

    /// Validate `addr` as the payload of a live block: returns `(page, pages, header)`.
    #[inline(always)]
    pub(super) fn validate(&self, addr: usize) -> Result<(usize, usize, usize), HeapError> {
        if addr & (ALIGN - 1) != 0 {
            return Err(HeapError::InvalidPointer {
                addr,
                reason: "not 16-byte aligned, so not a block returned by this heap",
            });
        }
        let page = self.registry.get(addr);
        if page == 0 {
            return Err(HeapError::InvalidPointer {
                addr,
                reason: "not in a page owned by this heap",
            });
        }
        // SAFETY: `page` is a registered, live VM page; `addr` lies inside it, so the bitmap
        // word for its slot lies inside the page header.
        unsafe {
            if rd32(page + VP_MAGIC) != PAGE_MAGIC {
                return Err(HeapError::Corrupted {
                    addr: page,
                    reason: "VM page header magic overwritten",
                });
            }
            let p = rd32(page + VP_PAGES) as usize;
            let slot = (addr - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            if rdw(w) & (1 << (slot & 63)) == 0 {
                return Err(self.classify(page, p, addr));
            }
            let h = addr - BLOCK_HEADER;
            let sw = rd32(h);
            if sw & LOW != BMAGIC || rd32(h + 4) & LOW != PMAGIC {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "block header overwritten (buffer overflow?)",
                });
            }
            Ok((page, p, h))
        }
    }

    /// Does `ptr` lie in a VM page of this heap (any byte)? O(1), no block validation: for a
    /// global allocator deciding which heap a pointer belongs to.
    #[inline]
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.registry.get(ptr.addr()) != 0
    }

    /// Payload size in bytes of the live block at `ptr` (≥ what was asked for).
    ///
    /// # Errors
    /// As [`PageFamilies::xfree`] if `ptr` is not a live block.
    pub fn usable_size(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        let (_, _, h) = self.validate(ptr.as_ptr().addr())?;
        // SAFETY: validated live block header.
        Ok((unsafe { rd32(h) } & !LOW) as usize - BLOCK_HEADER)
    }

    /// The family a live block belongs to.
    ///
    /// # Errors
    /// As [`PageFamilies::xfree`] if `ptr` is not a live block.
    pub fn family_of(&self, ptr: NonNull<u8>) -> Result<FamilyId, HeapError> {
        let (page, _, _) = self.validate(ptr.as_ptr().addr())?;
        // SAFETY: validated live VM page.
        Ok(FamilyId(unsafe { *at::<u16>(page + VP_FAMILY) }))
    }

    /// The seed's `xfree`: free a block returned by `xcalloc`/`xmalloc`, merge it with free
    /// neighbours and unmap its VM page if it became empty. Errors (heap unchanged):
    /// [`HeapError::DoubleFree`] if the address lies in free memory,
    /// [`HeapError::InvalidPointer`] if it is not the start of a live block of this heap,
    /// [`HeapError::Corrupted`] if in-band metadata around it fails its checks.
    ///
    /// # Errors
    /// [`HeapError::DoubleFree`], [`HeapError::InvalidPointer`], [`HeapError::Corrupted`] (heap unchanged).
    pub fn xfree(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        self.free_addr(ptr.as_ptr().addr(), self.quick_max)
    }

    /// [`PageFamilies::xfree`] of `addr`, using the quick cache only below `quick_max`.
    #[inline(always)]
    pub(super) fn free_addr(&mut self, addr: usize, quick_max: usize) -> Result<(), HeapError> {
        let (page, p, h) = self.validate(addr)?;
        // SAFETY: `h` is a validated live block of the live VM page `page` (p pages). Its
        // neighbours are found from boundary tags; before anything is modified the tags are
        // checked to stay inside the page (the next header at most at the end sentinel) and
        // to agree with each other and carry the magic bits.
        unsafe {
            let total = (rd32(h) & !LOW) as usize;
            let prev_total = (rd32(h + 4) & !LOW) as usize;
            let fid = *at::<u16>(page + VP_FAMILY) as usize;
            let n = h + total;
            if fid >= self.count || total < MIN_BLOCK || n > page + p * PAGE_SIZE - BLOCK_HEADER {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "block header out of range",
                });
            }
            let fam = &mut self.families[fid];
            if total == fam.unit_total && fam.quick_len < quick_max {
                // Quick cache: no merging; the block keeps its place, marked cached.
                wr32(h, total as u32 | QMAGIC);
                wrw(h + FB_NEXT, fam.quick_head);
                wrw(h + FB_PREV, page);
                fam.quick_head = h;
                fam.quick_len += 1;
                fam.alloc_bytes -= total;
                let slot = (addr - page) >> 4;
                let w = page + PAGE_HDR + (slot >> 6) * 8;
                wrw(w, rdw(w) & !(1 << (slot & 63)));
                return Ok(());
            }
            let nsw = rd32(n);
            if !hdr_ok(nsw) || rd32(n + 4) != total as u32 | PMAGIC {
                return Err(HeapError::Corrupted {
                    addr: n,
                    reason: "next block header inconsistent",
                });
            }
            let mut prev_free = false;
            if prev_total != 0 {
                if prev_total > h - (page + first_off(p)) {
                    return Err(HeapError::Corrupted {
                        addr: h,
                        reason: "previous-size tag out of range",
                    });
                }
                let psw = rd32(h - prev_total);
                if psw & !LOW != prev_total as u32 || !hdr_ok(psw) {
                    return Err(HeapError::Corrupted {
                        addr: h - prev_total,
                        reason: "previous block header inconsistent",
                    });
                }
                prev_free = psw & FREE != 0;
            } else if h != page + first_off(p) {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "previous-size tag is 0 but block is not first",
                });
            }
            let nt = (nsw & !LOW) as usize;
            let next_free = nsw & FREE != 0;

            // All checks passed: mutate.
            let slot = (addr - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) & !(1 << (slot & 63)));
            let pt = if prev_free { prev_total } else { 0 };
            let ntm = if next_free { nt } else { 0 };
            let start = h - pt;
            let size = pt + total + ntm;
            let c = fclass(size);
            // Empty page: the merged block is the first one and the end sentinel follows it.
            let first_block = if prev_free {
                rd32(start + 4) & !LOW == 0
            } else {
                prev_total == 0
            };
            let empty = first_block
                && if next_free {
                    rd32(n + nt) & !LOW == 0
                } else {
                    nt == 0
                };
            let fam = &mut self.families[fid];
            let keep = !empty || (p == 1 && fam.empty_pages < self.cache_limit);
            if prev_free {
                let pc = fclass(prev_total);
                if next_free {
                    fam.unlink_c(n, fclass(nt));
                }
                if !keep {
                    fam.unlink_c(start, pc);
                } else if pc != c {
                    fam.unlink_c(start, pc);
                    fam.push_c(start, c, page);
                }
            } else if next_free {
                let nc = fclass(nt);
                if !keep {
                    fam.unlink_c(n, nc);
                } else if nc == c {
                    fam.replace_c(n, h, nc, page);
                } else {
                    fam.unlink_c(n, nc);
                    fam.push_c(h, c, page);
                }
            } else if keep {
                fam.push_c(h, c, page);
            }
            wr32(start, size as u32 | FREE | BMAGIC);
            wr32(start + size + 4, size as u32 | PMAGIC);
            let merged = prev_free as usize + next_free as usize;
            fam.alloc_bytes -= total;
            fam.free_bytes += total;
            fam.blocks -= merged;
            fam.free_blocks = fam.free_blocks + 1 - merged;
            if !keep {
                self.release_page(fid, page, p);
            } else if empty {
                fam.empty_pages += 1;
            }
        }
        Ok(())
    }

    /// Why `addr` (in VM page `page` of `p` pages, allocation bit clear) is not freeable.
    /// Walks the page's blocks: only on the error path.
    #[cold]
    pub(super) fn classify(&self, page: usize, p: usize, addr: usize) -> HeapError {
        let first = page + first_off(p);
        let end = page + p * PAGE_SIZE - BLOCK_HEADER;
        if addr < first {
            return HeapError::InvalidPointer {
                addr,
                reason: "points into a VM page header",
            };
        }
        let mut h = first;
        while h < end {
            // SAFETY: `h` stays inside the live VM page: it starts at the first block and
            // advances by checked sizes that keep it below `end`.
            let sw = unsafe { rd32(h) };
            let t = (sw & !LOW) as usize;
            if !hdr_ok(sw) || t < MIN_BLOCK || h + t > end {
                return HeapError::Corrupted {
                    addr: h,
                    reason: "block header overwritten (buffer overflow?)",
                };
            }
            if addr < h + t {
                return if addr < h + BLOCK_HEADER {
                    HeapError::InvalidPointer {
                        addr,
                        reason: "points into a block header",
                    }
                } else if sw & FREE != 0 || sw & LOW == QMAGIC {
                    HeapError::DoubleFree { addr }
                } else if addr == h + BLOCK_HEADER {
                    HeapError::Corrupted {
                        addr: page,
                        reason: "allocation bitmap lost a live block",
                    }
                } else {
                    HeapError::InvalidPointer {
                        addr,
                        reason: "interior pointer of an allocated block",
                    }
                };
            }
            h += t;
        }
        HeapError::InvalidPointer {
            addr,
            reason: "points into the padding at the end of a VM page",
        }
    }
}
