//! In-place resizing of mid-size blocks.

use super::{block_size, word, Mid, FIRST, FLAGS, FREE, MIN_BLOCK, MIN_TAIL, PREV_FREE};
use crate::HeapError;
use core::ptr::NonNull;

impl Mid {
    /// Resize the live block at `ptr` to hold `n` bytes without moving it: a shrink gives
    /// the tail back (merged into a free block behind it, or as a block of its own if it
    /// can hold a mid-size request), a growth takes the front of the free block behind it.
    /// `Ok(false)` if the block can not grow in place.
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] if `ptr` is not the payload of a live mid-size block
    /// (nothing changes).
    pub fn resize_in_place(&mut self, ptr: NonNull<u8>, n: usize) -> Result<bool, HeapError> {
        self.resize(ptr, n, false)
    }

    /// [`Mid::resize_in_place`] for a growth: a block that already holds `n` bytes keeps
    /// its whole size (the room a growing block was given stays for its next growth; no
    /// tail goes back), else it takes the front of the free block behind it. `Ok(false)` if
    /// it can not grow in place.
    ///
    /// # Errors
    /// As [`Mid::resize_in_place`].
    pub fn grow_in_place(&mut self, ptr: NonNull<u8>, n: usize) -> Result<bool, HeapError> {
        self.resize(ptr, n, true)
    }

    #[inline]
    fn resize(&mut self, ptr: NonNull<u8>, n: usize, keep: bool) -> Result<bool, HeapError> {
        let (_, b, size) = self.live_block(ptr.as_ptr().addr(), false)?;
        let need = block_size(n);
        // SAFETY: `b` is a live block; the block after it is a block or the sentinel, and a
        // free block's neighbours are never free.
        unsafe {
            let flags = *word(b) & (PREV_FREE | FIRST);
            let next = b + size;
            let nh = *word(next);
            let ns = nh & !FLAGS;
            if need <= size {
                // A tail goes back if it merges with a free block behind it or can hold a
                // mid-size block of its own.
                let rest = size - need;
                if keep || rest < MIN_BLOCK || (rest < MIN_TAIL && nh & FREE == 0) {
                    return Ok(true);
                }
                *word(b) = need | flags;
                let t = b + need;
                let mut ts = rest;
                let mut into_dv = false;
                if nh & FREE != 0 {
                    if next == self.dv {
                        into_dv = true;
                    } else {
                        self.remove(next, ns);
                    }
                    ts += ns;
                }
                *word(t) = ts | FREE;
                *word(t + ts - 8) = ts;
                *word(t + ts) |= PREV_FREE;
                if into_dv {
                    self.dv = t;
                    self.dv_size = ts;
                } else {
                    self.insert(t, ts);
                }
                return Ok(true);
            }
            if nh & FREE == 0 || size + ns < need {
                return Ok(false);
            }
            let was_dv = next == self.dv;
            if was_dv {
                self.dv = 0;
                self.dv_size = 0;
            } else {
                self.remove(next, ns);
            }
            let total = size + ns;
            let rest = total - need;
            if rest >= MIN_BLOCK {
                *word(b) = need | flags;
                let t = b + need;
                *word(t) = rest | FREE;
                *word(t + rest - 8) = rest;
                if was_dv {
                    self.dv = t;
                    self.dv_size = rest;
                } else {
                    self.insert(t, rest);
                }
            } else {
                *word(b) = total | flags;
                *word(b + total) &= !PREV_FREE;
            }
        }
        Ok(true)
    }
}
