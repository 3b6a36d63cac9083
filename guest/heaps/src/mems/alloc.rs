//! MeMS allocation: find a hole (or grow the main chain) and carve the PROCESS segment.

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- allocation --------------------------------------------------------------------------

    /// The seed's `mems_malloc`: `size` bytes (rounded up to 16), 16-byte aligned, not zeroed.
    ///
    /// # Errors
    /// As [`Mems::mems_alloc_aligned`].
    pub fn mems_malloc(&mut self, size: usize) -> Result<NonNull<u8>, HeapError> {
        self.mems_alloc_aligned(size, ALIGN)
    }

    /// `mems_malloc` with an alignment (a power of two ≤ [`MAX_ALIGN`]). Any padding in front
    /// of the segment stays a HOLE.
    ///
    /// # Errors
    /// [`HeapError`] for a bad size or alignment, or when the page source has no more pages.
    pub fn mems_alloc_aligned(
        &mut self,
        size: usize,
        align: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(HeapError::InvalidAlignment { align });
        }
        let align = align.max(ALIGN);
        let too_large = HeapError::TooLarge { size };
        let size = round_up(size.max(1), ALIGN).ok_or(too_large)?;
        let search = size.checked_add(align - ALIGN).ok_or(too_large)?;
        if search > isize::MAX as usize / 2 {
            return Err(too_large);
        }
        // Everything that can fail happens before the chains change.
        // grow: main + hole; carve: alignment-padding hole + tail hole.
        self.reserve_nodes(4)?;
        self.hreserve()?;
        let solo = size >= self.solo_min;
        let mut h = if solo { 0 } else { self.find_hole(search) };
        if h == 0 {
            let lead = align.saturating_sub(PAGE_SIZE);
            let mut pages = (size + lead).div_ceil(PAGE_SIZE);
            if !solo {
                pages = pages.max(self.min_grow_pages);
            }
            h = self.grow(pages, solo)?;
        }
        // SAFETY: `h` is an indexed HOLE (or the HOLE of a new solo node) of at least `size`
        // bytes after aligning its start.
        let p = unsafe { self.carve(h, size, align) };
        // SAFETY: segment starts are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Append a main node of `pages` pages to the chain; returns its single HOLE (indexed
    /// unless the node is `solo`).
    #[cold]
    pub(super) fn grow(&mut self, pages: usize, solo: bool) -> Result<usize, HeapError> {
        // A region holds no metadata and MeMS does not promise zeroed memory.
        let base = map_dirty(&mut self.source, pages).ok_or(HeapError::OutOfMemory { pages })?;
        let m = self.take_node();
        let h = self.take_node();
        // SAFETY: `m` and `h` are fresh pool slots; `last_main` (if any) is a live main node.
        unsafe {
            *mainp(m) = Main {
                start: base,
                pages,
                head: h,
                sub_len: 1,
                prev: self.last_main,
                next: 0,
                flags: if solo { MAIN_SOLO } else { 0 },
                kind: KIND_MAIN,
                magic: NODE_MAGIC,
            };
            *seg(h) = Seg {
                start: base,
                size: pages * PAGE_SIZE,
                main: m,
                prev: 0,
                next: 0,
                fprev: 0,
                fnext: 0,
                kind: KIND_H,
                magic: NODE_MAGIC,
            };
            if self.last_main != 0 {
                (*mainp(self.last_main)).next = m;
            } else {
                self.first_main = m;
            }
            self.index_insert(h);
        }
        self.last_main = m;
        self.main_len += 1;
        self.data_pages += pages;
        self.hole_bytes += pages * PAGE_SIZE;
        Ok(h)
    }

    /// Turn the front of hole `h` (after alignment padding) into a PROCESS segment of `size`
    /// bytes; returns its start. Needs 2 reserved nodes and a reserved hash entry.
    ///
    /// # Safety
    /// `h` must be an indexed HOLE holding `size` bytes at an `align`-aligned address.
    pub(super) unsafe fn carve(&mut self, h: usize, size: usize, align: usize) -> usize {
        // SAFETY: `h`, its neighbours and its main node are live nodes; new nodes come from
        // the reserved pool slots.
        unsafe {
            self.index_remove(h);
            let s = seg(h);
            let m = (*s).main;
            let start = (*s).start;
            let aligned = (start + align - 1) & !(align - 1);
            let pad = aligned - start;
            if pad > 0 {
                let q = self.take_node();
                *seg(q) = Seg {
                    start,
                    size: pad,
                    main: m,
                    prev: (*s).prev,
                    next: h,
                    fprev: 0,
                    fnext: 0,
                    kind: KIND_H,
                    magic: NODE_MAGIC,
                };
                if (*s).prev != 0 {
                    (*seg((*s).prev)).next = q;
                } else {
                    (*mainp(m)).head = q;
                }
                (*s).prev = q;
                (*s).start = aligned;
                (*s).size -= pad;
                (*mainp(m)).sub_len += 1;
                self.index_insert(q);
            }
            debug_assert!((*s).size >= size);
            if (*s).size > size {
                let t = self.take_node();
                *seg(t) = Seg {
                    start: aligned + size,
                    size: (*s).size - size,
                    main: m,
                    prev: h,
                    next: (*s).next,
                    fprev: 0,
                    fnext: 0,
                    kind: KIND_H,
                    magic: NODE_MAGIC,
                };
                if (*s).next != 0 {
                    (*seg((*s).next)).prev = t;
                }
                (*s).next = t;
                (*s).size = size;
                (*mainp(m)).sub_len += 1;
                self.index_insert(t);
            }
            (*s).kind = KIND_P;
            self.hole_bytes -= size;
            self.hinsert(aligned, h);
            aligned
        }
    }
}
