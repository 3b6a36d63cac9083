//! The mid-size path's free lists: two bitmap levels over segregated lists (TLSF), the
//! size-to-list mapping, and the list operations (insert, remove, find a fit, cut a block).

use super::{word, Mid, FIRST, FL, FLAGS, FREE, PREV_FREE, PROBE, SL};

/// `(first level, second level)` list of a free block of `size` bytes.
#[inline(always)]
pub(super) fn mapping(size: usize) -> (usize, usize) {
    if size < 1024 {
        (0, size >> 6)
    } else {
        let l = (usize::BITS - 1 - size.leading_zeros()) as usize;
        (l - 9, (size >> (l - 4)) & (SL - 1))
    }
}

/// The first list whose every block holds `size` bytes.
#[inline(always)]
pub(super) fn mapping_search(size: usize) -> (usize, usize) {
    let r = if size < 1024 {
        size + 63
    } else {
        let l = (usize::BITS - 1 - size.leading_zeros()) as usize;
        size + (1 << (l - 4)) - 1
    };
    mapping(r)
}

impl Mid {
    #[inline(always)]
    pub(super) fn insert(&mut self, b: usize, size: usize) {
        let (f, s) = mapping(size);
        let head = self.heads[f][s];
        // SAFETY: `b` is a free block of at least MIN_BLOCK bytes in a live region; `head`
        // (if non-zero) is the first free block of the list.
        unsafe {
            *word(b + 8) = head;
            *word(b + 16) = 0;
            if head != 0 {
                *word(head + 16) = b;
            }
        }
        self.heads[f][s] = b;
        self.listed += size;
        self.fl_bits |= 1 << f;
        self.sl_bits[f] |= 1 << s;
    }

    #[inline(always)]
    pub(super) fn remove(&mut self, b: usize, size: usize) {
        self.listed -= size;
        // SAFETY: `b` is a free block on the list of its size; its links are live blocks or 0.
        unsafe {
            let (n, p) = (*word(b + 8), *word(b + 16));
            if p != 0 {
                *word(p + 8) = n;
            } else {
                let (f, s) = mapping(size);
                self.heads[f][s] = n;
                if n == 0 {
                    self.sl_bits[f] &= !(1 << s);
                    if self.sl_bits[f] == 0 {
                        self.fl_bits &= !(1 << f);
                    }
                }
            }
            if n != 0 {
                *word(n + 16) = p;
            }
        }
    }

    /// Cut block `b` (free, off every list, at least `need` bytes) to `need` bytes; the
    /// remainder, if it can be a block, becomes the dv (`to_dv`, the old dv goes on its
    /// list) or goes on its list.
    #[inline(always)]
    pub(super) fn take(&mut self, b: usize, need: usize, to_dv: bool, min_rest: usize) {
        // SAFETY: `b` is a free block of a live region; the block after it starts at
        // `b + size` (a block or the sentinel).
        unsafe {
            let h = *word(b);
            let size = h & !FLAGS;
            let rest = size - need;
            // A remainder too small for any mid-size request stays with the block: split
            // off, it would be a sliver no request can use until a neighbour is freed, and
            // the block keeps its size for the next request of that size.
            if rest >= min_rest {
                *word(b) = need | (h & (PREV_FREE | FIRST));
                let r = b + need;
                *word(r) = rest | FREE;
                *word(r + rest - 8) = rest;
                if to_dv {
                    if self.dv != 0 {
                        self.insert(self.dv, self.dv_size);
                    }
                    self.dv = r;
                    self.dv_size = rest;
                } else {
                    self.insert(r, rest);
                }
            } else {
                *word(b) = size | (h & (PREV_FREE | FIRST));
                *word(b + size) &= !PREV_FREE;
            }
        }
    }

    /// A free block of at least `need` bytes on the lists, `(block, size)`, left on its
    /// list, or `(0, 0)`: the first fit among the first `PROBE` blocks of the request's
    /// own list, else the head of the first non-empty list whose every block fits (good
    /// fit).
    #[inline(always)]
    pub(super) fn find(&self, need: usize) -> (usize, usize) {
        let (f, s) = mapping(need);
        if self.fl_bits >> f == 0 {
            // No list of this size or above holds a block.
            return (0, 0);
        }
        let mut q = self.heads[f][s];
        let mut n = 0;
        while q != 0 && n < PROBE {
            // SAFETY: list members are free blocks with valid size words and links.
            let (size, next) = unsafe { (*word(q) & !FLAGS, *word(q + 8)) };
            if size >= need {
                return (q, size);
            }
            q = next;
            n += 1;
        }
        let (mut f, s) = mapping_search(need);
        if f >= FL {
            return (0, 0);
        }
        let mut sl = self.sl_bits[f] as u32 & (!0u32 << s);
        if sl == 0 {
            let fl = self.fl_bits & (!0u32).checked_shl(f as u32 + 1).unwrap_or(0);
            if fl == 0 {
                return (0, 0);
            }
            f = fl.trailing_zeros() as usize;
            sl = self.sl_bits[f] as u32;
        }
        let b = self.heads[f][sl.trailing_zeros() as usize];
        // SAFETY: a set bitmap bit means a non-empty list of free blocks.
        (b, unsafe { *word(b) } & !FLAGS)
    }
}
