//! Audit, counters and teardown of the memvisor heap's slabs (`slab.rs`) and their page
//! store (`slab_pages.rs`): O(slabs), for tests, reports and `Drop`.

use super::slab::{hdr, word, SLAB_MAGIC};
use super::slab_pages::SlabPageStats;
use super::{MemvisorHeap, CLASSES, NCLASS, NSLOTS};
use crate::{HeapError, PageSource, PAGE_SIZE};

/// What [`MemvisorHeap::audit_slabs`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabAudit {
    /// Live slab-class blocks (slots, and blocks the mid-size path serves).
    pub live: usize,
    /// Slabs (pages holding one), by class.
    pub slabs: [usize; NCLASS],
    /// Slabs with no live slot (each its class's only partly used slab).
    pub empty_slabs: usize,
    /// Free slots over all slabs.
    pub free_slots: usize,
    /// Bytes of those free slots.
    pub free_slot_bytes: usize,
    /// Free slots by class.
    pub free_by_class: [usize; NCLASS],
    /// Empty slab pages kept as spares.
    pub spare_pages: usize,
    /// Pages the store's registry holds (slabs and spares).
    pub registered_pages: usize,
}

impl<S: PageSource> MemvisorHeap<S> {
    /// Counters of the slab-page store: slab and spare pages, pages mapped, reused and
    /// returned, return batches, registry pages.
    pub fn slab_page_stats(&self) -> SlabPageStats {
        self.slabs.stats()
    }

    /// The slab page source (tests).
    pub fn slab_source(&self) -> &S {
        self.slabs.source()
    }

    /// The spare slab pages, oldest first (tests).
    pub fn spare_slab_pages(&self) -> &[usize] {
        self.slabs.spare_list()
    }

    /// Return every spare slab page to the page source now (one batch).
    pub fn release_spare_slabs(&mut self) {
        self.slabs.release_to(0);
    }

    /// Check every slab of every class against its header and its class's lists (partly
    /// used and full), and the store's pages (every slab and spare registered, spares
    /// headerless, page counts): O(slabs); for tests and the heap scenarios.
    ///
    /// # Errors
    /// [`HeapError::Corrupted`] at the first broken slab, list or count.
    pub fn audit_slabs(&self) -> Result<SlabAudit, HeapError> {
        let corrupt = |addr, reason| Err(HeapError::Corrupted { addr, reason });
        let mut a = SlabAudit {
            live: 0,
            slabs: [0; NCLASS],
            empty_slabs: 0,
            free_slots: 0,
            free_slot_bytes: 0,
            free_by_class: [0; NCLASS],
            spare_pages: 0,
            registered_pages: 0,
        };
        for (c, cl) in self.classes.iter().enumerate() {
            let nslots = NSLOTS[c] as usize;
            let mut npartial = 0u16;
            for (head, full) in [(cl.partial, false), (cl.full, true)] {
                let (mut s, mut prev) = (head, 0);
                while s != 0 {
                    npartial = npartial.wrapping_add(u16::from(!full));
                    if !s.is_multiple_of(PAGE_SIZE) || !self.slabs.contains(s) {
                        return corrupt(s, "slab not a page of the store");
                    }
                    a.slabs[c] += 1;
                    if a.slabs[c] > cl.slabs as usize {
                        return corrupt(s, "lists longer than the class's slabs");
                    }
                    // SAFETY: a registered store page is mapped; the fields are checked
                    // before the bitmap is trusted.
                    unsafe {
                        let h = hdr(s);
                        let used = (*h).used as usize;
                        if (*h).magic != SLAB_MAGIC
                            || (*h).class as usize != c
                            || (*h).prev != prev
                            || (used == nslots) != full
                            || used > nslots
                        {
                            return corrupt(s, "slab on a class list");
                        }
                        let mut free = 0;
                        for w in 0..nslots.div_ceil(64) {
                            let bits = *word(s, w);
                            let left = nslots - w * 64;
                            let valid = if left >= 64 { !0 } else { (1u64 << left) - 1 };
                            if bits & !valid != 0 {
                                return corrupt(s, "free bit beyond the last slot");
                            }
                            free += bits.count_ones() as usize;
                        }
                        if free + used != nslots {
                            return corrupt(s, "used count disagrees with the bitmap");
                        }
                        a.live += used;
                        a.free_slots += free;
                        a.free_slot_bytes += free * CLASSES[c];
                        a.free_by_class[c] += free;
                        a.empty_slabs += usize::from(used == 0);
                        prev = s;
                        s = (*h).next;
                    }
                }
            }
            if a.slabs[c] != cl.slabs as usize {
                return corrupt(c, "class's slab count");
            }
            if npartial != cl.npartial {
                return corrupt(c, "class's partial slab count");
            }
        }
        let st = self.slabs.stats();
        if a.slabs.iter().sum::<usize>() != st.slab_pages {
            return corrupt(0, "slab pages counted");
        }
        for &p in self.slabs.spare_list() {
            if !p.is_multiple_of(PAGE_SIZE) || !self.slabs.contains(p) {
                return corrupt(p, "spare not a page of the store");
            }
            // SAFETY: a registered store page is mapped.
            if unsafe { (*hdr(p)).magic } == SLAB_MAGIC {
                return corrupt(p, "spare page holds a slab");
            }
        }
        a.spare_pages = st.spare_pages;
        a.registered_pages = self.slabs.registered();
        if a.registered_pages != st.slab_pages + st.spare_pages {
            return corrupt(0, "registered pages");
        }
        // Slab-class blocks the mid-size path serves count as live slab-class blocks.
        a.live += self.mid.stats().small;
        if a.live != self.stats.live[0] {
            return corrupt(0, "live slot count");
        }
        Ok(a)
    }

    /// Unmap every slab (heap teardown; live slots are gone with it).
    pub(super) fn drop_slabs(&mut self) {
        for c in 0..NCLASS {
            for full in [false, true] {
                loop {
                    let cl = &mut self.classes[c];
                    let head = if full { &mut cl.full } else { &mut cl.partial };
                    let s = *head;
                    if s == 0 {
                        break;
                    }
                    // SAFETY: a list member is a live slab header.
                    *head = unsafe { (*hdr(s)).next };
                    cl.slabs -= 1;
                    if !full {
                        cl.npartial = cl.npartial.wrapping_sub(1);
                    }
                    self.slabs.unmap_slab(s);
                }
            }
        }
    }
}
