//! MeMS hole index: two-level segregated fit (64 power-of-two ranges × 8 linear sub-ranges).

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- hole index --------------------------------------------------------------------------

    /// Is `h` (a live HOLE) in a solo main node, whose holes stay out of the index?
    ///
    /// # Safety
    /// `h` must be a live HOLE node.
    #[inline(always)]
    pub(super) unsafe fn in_solo(&self, h: usize) -> bool {
        // SAFETY: a live HOLE's main node is live.
        unsafe { (*mainp((*seg(h)).main)).flags & MAIN_SOLO != 0 }
    }

    /// Index hole `h` (nothing for a hole of a solo node).
    ///
    /// # Safety
    /// `h` must be a HOLE node not in the index.
    pub(super) unsafe fn index_insert(&mut self, h: usize) {
        // SAFETY: `h` and the current head are live HOLE nodes.
        unsafe {
            if self.in_solo(h) {
                return;
            }
            let (fl, sl) = mapping((*seg(h)).size);
            let head = self.heads[fl][sl];
            (*seg(h)).fprev = 0;
            (*seg(h)).fnext = head;
            if head != 0 {
                (*seg(head)).fprev = h;
            }
            self.heads[fl][sl] = h;
            self.sl_bitmap[fl] |= 1 << sl;
            self.fl_bitmap |= 1 << fl;
        }
    }

    /// Take hole `h` out of the index (nothing for a hole of a solo node).
    ///
    /// # Safety
    /// `h` must be a HOLE node in the index (its size unchanged since insertion), or a HOLE
    /// of a solo node.
    pub(super) unsafe fn index_remove(&mut self, h: usize) {
        // SAFETY: `h` and its list neighbours are live HOLE nodes.
        unsafe {
            if self.in_solo(h) {
                return;
            }
            let (fl, sl) = mapping((*seg(h)).size);
            let (p, n) = ((*seg(h)).fprev, (*seg(h)).fnext);
            if p != 0 {
                (*seg(p)).fnext = n;
            } else {
                self.heads[fl][sl] = n;
                if n == 0 {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            }
            if n != 0 {
                (*seg(n)).fprev = p;
            }
        }
    }

    /// A hole of at least `size` bytes, or 0 (see module docs).
    pub(super) fn find_hole(&self, size: usize) -> usize {
        let (fl, sl) = mapping(size);
        let mut h = self.heads[fl][sl];
        if h != 0 {
            if exact(fl) {
                return h;
            }
            let mut n = 0;
            while h != 0 && n < SCAN_LIMIT {
                // SAFETY: index members are live HOLE nodes.
                unsafe {
                    if (*seg(h)).size >= size {
                        return h;
                    }
                    h = (*seg(h)).fnext;
                }
                n += 1;
            }
        }
        let m = (self.sl_bitmap[fl] as u32) & (!0u32 << (sl + 1));
        if m != 0 {
            return self.heads[fl][m.trailing_zeros() as usize];
        }
        if fl + 1 >= FL {
            return 0;
        }
        let fm = self.fl_bitmap & (!0u64 << (fl + 1));
        if fm == 0 {
            return 0;
        }
        let f = fm.trailing_zeros() as usize;
        self.heads[f][self.sl_bitmap[f].trailing_zeros() as usize]
    }
}
