//! The full heap audit: every family, page and block checked against all invariants.

use super::*;

/// Result of [`PageFamilies::audit`]: totals over all families, recomputed by walking every
/// page and block. `data_pages * 4096 == overhead_bytes + alloc_bytes + free_bytes` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PfAudit {
    /// Registered families.
    pub families: usize,
    /// VM pages.
    pub vm_pages: usize,
    /// 4 KiB pages holding VM pages.
    pub data_pages: usize,
    /// 4 KiB pages of the page registry.
    pub registry_pages: usize,
    /// Blocks.
    pub blocks: usize,
    /// Free blocks.
    pub free_blocks: usize,
    /// Bytes in allocated blocks (headers included).
    pub alloc_bytes: usize,
    /// Bytes in free blocks (headers included).
    pub free_bytes: usize,
    /// Page headers, bitmaps and padding, in bytes.
    pub overhead_bytes: usize,
    /// Blocks held by the quick cache.
    pub quick_blocks: usize,
    /// Bytes in blocks held by the quick cache (headers included).
    pub quick_bytes: usize,
}

impl<S: PageSource> PageFamilies<S> {
    /// Walk every family, page and block and check all invariants (boundary tags, magic bits,
    /// allocation bitmap, free lists, full merging, counters, registry). O(heap size); for
    /// tests and the heap-stress scenario.
    ///
    /// # Errors
    /// [`HeapError::Corrupted`] at the first broken invariant.
    pub fn audit(&self) -> Result<PfAudit, HeapError> {
        let corrupt = |addr, reason| Err(HeapError::Corrupted { addr, reason });
        let mut a = PfAudit {
            families: self.count,
            registry_pages: self.registry.node_pages(),
            ..PfAudit::default()
        };
        for (fid, fam) in self.families[..self.count].iter().enumerate() {
            let (mut blocks, mut free_blocks, mut ab, mut fb, mut vp, mut osp, mut empty) =
                (0, 0, 0, 0, 0, 0, 0);
            let mut quick = 0;
            let mut page = fam.first_page;
            let mut prev_page = 0;
            while page != 0 {
                if self.registry.get(page) != page {
                    return corrupt(page, "VM page not in the registry");
                }
                // SAFETY: registered pages are live VM pages; every address read below is
                // bounds-checked against [first, end) before use.
                unsafe {
                    if rd32(page + VP_MAGIC) != PAGE_MAGIC
                        || *at::<u16>(page + VP_FAMILY) as usize != fid
                        || rdw(page + VP_PREV) != prev_page
                    {
                        return corrupt(page, "VM page header");
                    }
                    let p = rd32(page + VP_PAGES) as usize;
                    for i in 0..p {
                        if self.registry.get(page + i * PAGE_SIZE) != page {
                            return corrupt(page, "VM page's pages not all registered");
                        }
                    }
                    vp += 1;
                    osp += p;
                    a.overhead_bytes += page_overhead(p);
                    let first = page + first_off(p);
                    let end = page + p * PAGE_SIZE - BLOCK_HEADER;
                    let mut h = first;
                    let mut prev_t = 0;
                    let mut prev_was_free = false;
                    let mut allocated_here = 0u32;
                    while h < end {
                        let sw = rd32(h);
                        let t = (sw & !LOW) as usize;
                        if !hdr_ok(sw) || t < MIN_BLOCK || h + t > end {
                            return corrupt(h, "block header");
                        }
                        if rd32(h + 4) != prev_t as u32 | PMAGIC {
                            return corrupt(h, "previous-size tag");
                        }
                        let slot = (h + BLOCK_HEADER - page) >> 4;
                        let bit = rdw(page + PAGE_HDR + (slot >> 6) * 8) & (1 << (slot & 63));
                        blocks += 1;
                        if sw & FREE != 0 {
                            if prev_was_free {
                                return corrupt(h, "two adjacent free blocks");
                            }
                            if bit != 0 || rdw(h + FB_PAGE) != page {
                                return corrupt(h, "free block bitmap bit / page link");
                            }
                            free_blocks += 1;
                            fb += t;
                            if t == region_bytes(p) {
                                empty += 1;
                            }
                            prev_was_free = true;
                        } else if sw & LOW == QMAGIC {
                            if bit != 0 || t != fam.unit_total || rdw(h + FB_PREV) != page {
                                return corrupt(h, "quick-cached block");
                            }
                            quick += 1;
                            prev_was_free = false;
                        } else {
                            if bit == 0 {
                                return corrupt(h, "allocated block missing from bitmap");
                            }
                            allocated_here += 1;
                            ab += t;
                            prev_was_free = false;
                        }
                        prev_t = t;
                        h += t;
                    }
                    if h != end || rd32(end) != BMAGIC || rd32(end + 4) != prev_t as u32 | PMAGIC {
                        return corrupt(h, "blocks do not tile the page / end sentinel");
                    }
                    let mut bits = 0;
                    for wi in 0..p * 4 {
                        bits += rdw(page + PAGE_HDR + wi * 8).count_ones();
                    }
                    if bits != allocated_here {
                        return corrupt(page, "stray bits in the allocation bitmap");
                    }
                    prev_page = page;
                    page = rdw(page + VP_NEXT);
                }
            }
            // Free lists: every member is free, in the right class, and the counts match.
            let mut listed = 0;
            for c in 0..NCLASS {
                let mut h = fam.heads[c];
                if (h != 0) != (fam.bitmap & (1 << c) != 0) {
                    return corrupt(c, "class bitmap");
                }
                let mut prev = 0;
                while h != 0 {
                    if self.registry.get(h) == 0 {
                        return corrupt(h, "free-list entry outside the heap");
                    }
                    // SAFETY: `h` lies in a registered (live) page.
                    unsafe {
                        let sw = rd32(h);
                        if sw & FREE == 0
                            || fclass((sw & !LOW) as usize) != c
                            || rdw(h + FB_PREV) != prev
                        {
                            return corrupt(h, "free-list entry");
                        }
                        prev = h;
                        h = rdw(h + FB_NEXT);
                    }
                    listed += 1;
                    if listed > free_blocks {
                        return corrupt(prev, "free list longer than the free blocks");
                    }
                }
            }
            // Quick list: every member is a cached block; the count matches.
            let mut q = fam.quick_head;
            let mut qn = 0;
            while q != 0 {
                if self.registry.get(q) == 0 || qn >= quick {
                    return corrupt(q, "quick list");
                }
                // SAFETY: `q` lies in a registered (live) page.
                unsafe {
                    if rd32(q) & LOW != QMAGIC {
                        return corrupt(q, "quick list entry");
                    }
                    q = rdw(q + FB_NEXT);
                }
                qn += 1;
            }
            if qn != quick || quick != fam.quick_len {
                return corrupt(fid, "quick list length");
            }
            a.quick_blocks += quick;
            a.quick_bytes += quick * fam.unit_total;
            if listed != free_blocks
                || blocks != fam.blocks
                || free_blocks != fam.free_blocks
                || ab != fam.alloc_bytes
                || fb != fam.free_bytes
                || vp != fam.vm_pages
                || osp != fam.os_pages
                || empty != fam.empty_pages
            {
                return corrupt(fid, "family counters");
            }
            a.vm_pages += vp;
            a.data_pages += osp;
            a.blocks += blocks;
            a.free_blocks += free_blocks;
            a.alloc_bytes += ab;
            a.free_bytes += fb;
        }
        if a.data_pages != self.data_pages || self.registry.entries() != self.data_pages {
            return corrupt(0, "page counts");
        }
        if a.data_pages * PAGE_SIZE
            != a.overhead_bytes + a.alloc_bytes + a.free_bytes + a.quick_bytes
        {
            return corrupt(0, "bytes not accounted");
        }
        Ok(a)
    }
}
