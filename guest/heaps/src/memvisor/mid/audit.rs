//! Consistency check of the mid-size path ([`Mid::audit`]): every region's blocks walked by
//! their boundary tags against the live-start bitmap, the free lists and the counters.

use super::{
    first_offset, mapping, Mid, MidAudit, FIRST, FIXED, FL, FLAGS, FREE, MIN_BLOCK, PREV_FREE,
    REGION_MAGIC, SMALL,
};
use crate::{at, HeapError, PAGE_SIZE};

fn corrupt<T>(addr: usize, reason: &'static str) -> Result<T, HeapError> {
    Err(HeapError::Corrupted { addr, reason })
}

/// The word at `a`; callers only pass words inside live regions (headers, bitmaps, block
/// words reached by boundary tags, list links).
#[inline]
fn w(a: usize) -> usize {
    // SAFETY: `a` is a word inside a live region (see above), mapped and aligned.
    unsafe { *at::<usize>(a) }
}

pub(super) fn audit(m: &Mid) -> Result<MidAudit, HeapError> {
    let parts = m.parts();
    let (heads, fl_bits, sl_bits) = (parts.heads, parts.fl_bits, parts.sl_bits);
    let (first_region, spares, (dv, dv_size)) = (parts.regions, parts.spares, parts.dv);
    let mut dv_seen = false;
    let hint = m.hint();
    let mut hint_seen = hint == (0, 0);
    let mut out = MidAudit {
        live: 0,
        small: 0,
        used_bytes: 0,
        free_bytes: 0,
        free_blocks: 0,
        largest_free: 0,
        regions: 0,
        empty_regions: 0,
    };
    let mut free_blocks = 0usize;
    let mut pages_total = 0usize;
    let mut r = first_region;
    let mut prev = 0;
    while r != 0 {
        let (magic, first_off) = (w(r) as u32, w(r) >> 32);
        if m.region_of(r) != r | w(r + 8) || magic != REGION_MAGIC || w(r + 24) != prev {
            return corrupt(r, "mid-size region header");
        }
        let pages = w(r + 8);
        pages_total += pages;
        let end = r + pages * PAGE_SIZE - 8;
        let first = r + first_off;
        if first_off < first_offset(1) || first_off % 16 != 8 || first >= end {
            return corrupt(r, "mid-size region first-block offset");
        }
        let mut b = first;
        let mut prev_free = false;
        let mut live_here = 0;
        while b < end {
            let h = w(b);
            let size = h & !FLAGS;
            if size < MIN_BLOCK || !size.is_multiple_of(16) || b + size > end {
                return corrupt(b, "mid-size block size");
            }
            if (h & FIRST != 0) != (b == first) || (h & PREV_FREE != 0) != prev_free {
                return corrupt(b, "mid-size block flags");
            }
            let i = (b - r) >> 4;
            let bit = w(r + FIXED + (i >> 6) * 8) >> (i & 63) & 1 == 1;
            let free = h & FREE != 0;
            if free == bit {
                return corrupt(b, "live-start bit disagrees with the block");
            }
            if free {
                if prev_free || h & SMALL != 0 {
                    return corrupt(b, "two adjacent free blocks");
                }
                if w(b + size - 8) != size {
                    return corrupt(b, "free block footer");
                }
                if b == dv {
                    if size != dv_size {
                        return corrupt(b, "dv size");
                    }
                    dv_seen = true;
                } else if spares.contains(&b) {
                    if b != first || b + size != end {
                        return corrupt(b, "a spare that does not span its region");
                    }
                } else {
                    // On the list of its size?
                    let (f, s) = mapping(size);
                    let mut q = heads[f][s];
                    let mut n = 0;
                    while q != 0 && q != b {
                        q = w(q + 8);
                        n += 1;
                        if n > 1 << 20 {
                            return corrupt(b, "free list cycle");
                        }
                    }
                    if q != b {
                        return corrupt(b, "free block not on its list");
                    }
                    free_blocks += 1;
                }
                out.free_bytes += size;
                out.free_blocks += 1;
                out.largest_free = out.largest_free.max(size);
                if b == first && b + size == end {
                    out.empty_regions += 1;
                    if !spares.contains(&b) && b != dv {
                        return corrupt(b, "empty region that is not a spare");
                    }
                }
            } else {
                live_here += 1;
                out.small += (h & SMALL != 0) as usize;
                out.used_bytes += size;
            }
            prev_free = free;
            b += size;
        }
        if b != end || w(end) & !FLAGS != 0 || (w(end) & PREV_FREE != 0) != prev_free {
            return corrupt(end, "mid-size region sentinel");
        }
        out.live += live_here;
        out.regions += 1;
        hint_seen |= hint == (r, pages * PAGE_SIZE);
        prev = r;
        r = w(r + 16);
        if out.regions > m.stats().regions {
            return corrupt(r, "mid-size region list longer than counted");
        }
    }
    if !hint_seen {
        return corrupt(hint.0, "mid-size region hint not a live region");
    }
    // Lists: every member free, of its list's size range, linked both ways; bitmaps agree.
    let mut listed = 0;
    let mut listed_bytes = 0;
    for f in 0..FL {
        if (fl_bits >> f & 1 == 1) != (sl_bits[f] != 0) {
            return corrupt(f, "first-level bitmap");
        }
        for (s, &head) in heads[f].iter().enumerate() {
            let mut q = head;
            if (q != 0) != (sl_bits[f] >> s & 1 == 1) {
                return corrupt(q, "second-level bitmap");
            }
            let mut p = 0;
            while q != 0 {
                let h = w(q);
                if h & FREE == 0 || mapping(h & !FLAGS) != (f, s) || w(q + 16) != p {
                    return corrupt(q, "free-list member");
                }
                listed += 1;
                listed_bytes += h & !FLAGS;
                if listed > free_blocks {
                    return corrupt(q, "free lists hold more blocks than the regions");
                }
                p = q;
                q = w(q + 8);
            }
        }
    }
    if (dv != 0) != dv_seen || (dv == 0 && dv_size != 0) {
        return corrupt(dv, "dv is not a free block of a region");
    }
    if listed != free_blocks {
        return corrupt(0, "free blocks missing from the lists");
    }
    let st = m.stats();
    if out.regions != st.regions
        || pages_total != st.region_pages
        || out.live != st.live
        || out.small != st.small
        || listed_bytes != st.listed
    {
        return corrupt(0, "mid-size counters");
    }
    if out.empty_regions < spares.len() || out.empty_regions > spares.len() + 1 {
        return corrupt(0, "a spare region is not empty");
    }
    Ok(out)
}

impl Mid {
    /// Call `f(region, block, size, free)` for every block of every region, in address
    /// order within a region (reports and tests; O(blocks)).
    pub fn for_each_block(&self, mut f: impl FnMut(usize, usize, usize, bool)) {
        let mut r = self.parts().regions;
        while r != 0 {
            let pages = w(r + 8);
            let end = r + pages * PAGE_SIZE - 8;
            let mut b = r + (w(r) >> 32);
            while b < end {
                let h = w(b);
                let size = h & !FLAGS;
                if size == 0 {
                    break;
                }
                f(r, b, size, h & FREE != 0);
                b += size;
            }
            r = w(r + 16);
        }
    }
}
