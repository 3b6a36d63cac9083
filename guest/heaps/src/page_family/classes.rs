//! The largest-first priority structure of a family: segregated size classes of free blocks
//! with a non-empty bitmap (see the module docs of [`super`]).

use super::*;

pub(super) const NCLASS: usize = 64;

/// Size class of a free block of `total` bytes (see module docs).
#[inline(always)]
pub(super) fn fclass(total: usize) -> usize {
    let g = total >> 4;
    if g < 16 {
        g
    } else {
        let fl = (usize::BITS - 1 - g.leading_zeros()) as usize;
        let c = 16 + ((fl - 4) << 2) + ((g >> (fl - 2)) & 3);
        if c < NCLASS {
            c
        } else {
            NCLASS - 1
        }
    }
}

impl Family {
    /// Push the free block at `h` on the list of class `c`.
    ///
    /// # Safety
    /// `h` must be a free block of class `c` of the live VM page `page` of this family, not
    /// on any list.
    #[inline(always)]
    pub(super) unsafe fn push_c(&mut self, h: usize, c: usize, page: usize) {
        let c = c & (NCLASS - 1);
        let head = self.heads[c];
        // SAFETY: `h` is a free block with a ≥ 24-byte payload; `head` a free block too.
        unsafe {
            wrw(h + FB_NEXT, head);
            wrw(h + FB_PREV, 0);
            wrw(h + FB_PAGE, page);
            if head != 0 {
                wrw(head + FB_PREV, h);
            }
        }
        self.heads[c] = h;
        self.bitmap |= 1 << c;
    }

    /// Push the free block at `h` of `total` bytes on its class list.
    ///
    /// # Safety
    /// As [`Family::push_c`].
    #[inline(always)]
    pub(super) unsafe fn push(&mut self, h: usize, total: usize, page: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.push_c(h, fclass(total), page) }
    }

    /// Take the free block at `h` off the list of class `c`.
    ///
    /// # Safety
    /// `h` must be on the list of class `c` of this family.
    #[inline(always)]
    pub(super) unsafe fn unlink_c(&mut self, h: usize, c: usize) {
        let c = c & (NCLASS - 1);
        // SAFETY: `h` and its list neighbours are free blocks of this family.
        unsafe {
            let next = rdw(h + FB_NEXT);
            let prev = rdw(h + FB_PREV);
            if prev != 0 {
                wrw(prev + FB_NEXT, next);
            } else {
                self.heads[c] = next;
                if next == 0 {
                    self.bitmap &= !(1 << c);
                }
            }
            if next != 0 {
                wrw(next + FB_PREV, prev);
            }
        }
    }

    /// Take the free block at `h` of `total` bytes off its class list.
    ///
    /// # Safety
    /// As [`Family::unlink_c`] with `c = fclass(total)`.
    #[inline(always)]
    pub(super) unsafe fn unlink(&mut self, h: usize, total: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.unlink_c(h, fclass(total)) }
    }

    /// Put the free block `new` in the list position of `old` (same class `c`), O(1) without
    /// touching the bitmap. `new`'s link words must not overlap `old`'s.
    ///
    /// # Safety
    /// `old` must be on the list of class `c`; `new` a free block of class `c` of VM page
    /// `page`, not on any list.
    #[inline(always)]
    pub(super) unsafe fn replace_c(&mut self, old: usize, new: usize, c: usize, page: usize) {
        // SAFETY: list members are free blocks of this family; `new` is one too.
        unsafe {
            let next = rdw(old + FB_NEXT);
            let prev = rdw(old + FB_PREV);
            wrw(new + FB_NEXT, next);
            wrw(new + FB_PREV, prev);
            wrw(new + FB_PAGE, page);
            if prev != 0 {
                wrw(prev + FB_NEXT, new);
            } else {
                self.heads[c & (NCLASS - 1)] = new;
            }
            if next != 0 {
                wrw(next + FB_PREV, new);
            }
        }
    }

    /// The largest free block that can hold `total` bytes, or 0 (see module docs).
    #[inline(always)]
    pub(super) fn find(&self, total: usize) -> usize {
        if self.bitmap == 0 {
            return 0;
        }
        let top = (63 - self.bitmap.leading_zeros() as usize) & (NCLASS - 1);
        let rc = fclass(total);
        if top > rc || (top == rc && rc < 16) {
            return self.heads[top];
        }
        if top < rc {
            return 0;
        }
        let mut h = self.heads[top];
        let mut n = 0;
        while h != 0 && n < SCAN_LIMIT {
            // SAFETY: list members are free blocks of live pages of this family.
            let t = unsafe { rd32(h) & !LOW } as usize;
            if t >= total {
                return h;
            }
            // SAFETY: as above.
            h = unsafe { rdw(h + FB_NEXT) };
            n += 1;
        }
        0
    }
}
