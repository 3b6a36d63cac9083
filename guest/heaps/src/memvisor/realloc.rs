//! `realloc` of the `memvisor` heap: in place when the new size routes to the same heap and
//! the block can hold it (a slab slot of a class the new size may use, a mid-size block
//! growing into the free block behind it, a MeMS block growing into its hole), otherwise
//! allocate, copy, free. A MeMS block that grows by a small step moves to room for one more
//! step ([`grown_size`]), so a buffer that is appended to is copied at most every other
//! growth and its old and new copies are mapped together half as often.

use super::{borrowable, route, MemvisorHeap, Route, SOLO_MIN};
use crate::{HeapError, PageSource};
use core::alloc::Layout;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

impl<S: PageSource> MemvisorHeap<S> {
    /// Resize `ptr` (allocated with `layout`) to `new_size`, keeping the contents up to the
    /// smaller size. In place when the new size routes to the same heap and the block is big
    /// enough (a slab slot whose class the new size may use, see `slab_realloc`); otherwise
    /// allocate, copy, free. `None` (and `ptr` untouched) when out of memory, or when `ptr`
    /// is not a live block of the layout's heap (a freed, foreign or interior pointer) or,
    /// before a move reads `old` bytes from it or a MeMS block is resized, is smaller than
    /// the layout: refused before anything is read from it and counted in
    /// [`Stats::bad_frees`](super::Stats), as `dealloc` would refuse it. (A mid-size block
    /// resized in place is only checked to be live: nothing is read from it.)
    pub fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let old = layout.size().max(1);
        let new = new_size.max(1);
        let (ro, rn) = (route(old, layout.align()), route(new, layout.align()));
        if ro == Route::Large && self.park.any() {
            // A parked block is a freed one; a loose one is cut to its request before its
            // size changes (`memvisor/park.rs`).
            let addr = ptr.as_ptr().addr();
            if self.park.holds(addr) {
                return self.refuse(HeapError::DoubleFree { addr });
            }
            self.unloose(addr);
        }
        match (ro, rn) {
            (Route::Slab(a), Route::Slab(b)) if a == b => return Some(ptr),
            (Route::Slab(a), Route::Slab(b)) => match self.slab_slot(ptr, a) {
                Ok(Some((s, hc, i))) => {
                    return self.slab_realloc(ptr, (s, hc, i), b, layout.align(), (old, new));
                }
                // A slab-class block the mid-size path serves: move it below.
                Ok(None) => {
                    if let Err(e) = self.check_live(ptr, ro, old) {
                        return self.refuse(e);
                    }
                }
                Err(e) => return self.refuse(e),
            },
            (Route::Mid, Route::Mid) => match self.mid_realloc_in_place(ptr, old, new) {
                Ok(true) => return Some(ptr),
                Ok(false) => {}
                Err(e) => return self.refuse(e),
            },
            (Route::Large, Route::Large) => match self.large_realloc_in_place(ptr, old, new) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => return self.refuse(e),
            },
            _ => {
                if let Err(e) = self.check_live(ptr, ro, old) {
                    return self.refuse(e);
                }
            }
        }
        let roomy = match (ro, rn) {
            (_, Route::Large) if new > old => {
                let g = grown_size(old, new);
                (route(g, layout.align()) == rn).then_some(g)
            }
            _ => None,
        };
        let q = if let Some(g) = roomy {
            // A growing MeMS block: room for one more growth by the same factor if it grows
            // by small steps (see `grown_size`); the exact size if that much is not
            // available.
            let roomy = Layout::from_size_align(g, layout.align()).ok();
            match roomy.and_then(|l| self.alloc(l)) {
                Some(q) => q,
                None => self.alloc(Layout::from_size_align(new, layout.align()).ok()?)?,
            }
        } else {
            self.alloc(Layout::from_size_align(new, layout.align()).ok()?)?
        };
        // SAFETY: `ptr` is a live block of at least `old` bytes (checked above: its slot,
        // mid-size block or MeMS segment) and `q` a distinct live block of at least `new`.
        unsafe { copy_block(ptr.as_ptr(), q.as_ptr(), old.min(new)) };
        self.dealloc(ptr, layout);
        Some(q)
    }

    /// `realloc` of a block in slot `i` of slab `s` (of class `hc`, checked live by
    /// `slab_slot`) to class `b` (`new` bytes at alignment `align`; `old` before). In place
    /// if a block of class `b` may sit in that slot ([`borrowable`]: the slot is of `b`'s
    /// class or of one of the next [`BORROW`](super::BORROW) classes at most 1.25 × its
    /// size, so a later free of the new layout accepts it): a growth into a borrowed slot's
    /// room, a shrink by up to `BORROW` classes. Else a slot of class `b`, a copy, and the
    /// old slot freed without a second lookup.
    #[inline]
    fn slab_realloc(
        &mut self,
        ptr: NonNull<u8>,
        (s, hc, i): (usize, usize, usize),
        b: usize,
        align: usize,
        (old, new): (usize, usize),
    ) -> Option<NonNull<u8>> {
        if borrowable(b, hc) {
            return Some(ptr);
        }
        // The ops clock of the page-return policy counts an alloc and a free.
        self.ops = self.ops.wrapping_add(2);
        let q = self.slab_alloc(b, align)?;
        // SAFETY: `ptr` is a live slot holding at least `old` bytes (the caller's layout,
        // checked against the slot's class) and `q` a distinct live block of at least
        // `new`.
        unsafe { copy_block(ptr.as_ptr(), q.as_ptr(), old.min(new)) };
        // The new slot came from class `b`'s slabs (or the mid-size path): slab `s` and
        // slot `i` are as `slab_slot` found them.
        self.release_slot(hc, s, i);
        Some(q)
    }

    /// A mid-size block resized without moving
    /// ([`Mid::resize_in_place`](super::Mid::resize_in_place): a shrink always;
    /// [`Mid::grow_in_place`](super::Mid::grow_in_place): a growth within the block's room,
    /// or into a free block behind it). `Ok(false)`: move it (the block is
    /// live and holds `old` bytes).
    ///
    /// # Errors
    /// [`HeapError::InvalidPointer`] if `ptr` is not a live mid-size block of at least `old`
    /// bytes (nothing changes).
    fn mid_realloc_in_place(
        &mut self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
    ) -> Result<bool, HeapError> {
        if new <= old {
            return self.mid.resize_in_place(ptr, new);
        }
        if self.mid.grow_in_place(ptr, new)? {
            return Ok(true);
        }
        self.check_live(ptr, Route::Mid, old).map(|()| false)
    }

    /// A MeMS block resized without moving, if that is sensible: a shrink to at least half
    /// keeps the block as it is; a smaller shrink gives the tail back to MeMS, unless the block
    /// had a solo node and the new size does not (moving it lets the node go); a growth takes
    /// the front of the hole behind the block. `Ok(None)`: move it (the block is live and
    /// holds `old` bytes).
    ///
    /// # Errors
    /// As [`Mems::mems_free`](crate::Mems::mems_free) if `ptr` is not a live MeMS block,
    /// [`HeapError::InvalidPointer`] if it is smaller than `old` (nothing changes).
    fn large_realloc_in_place(
        &mut self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
    ) -> Result<Option<NonNull<u8>>, HeapError> {
        let usable = self.large.mems_usable_size(ptr)?;
        if usable < old {
            return Err(smaller(ptr));
        }
        if new <= usable && new >= usable / 2 {
            return Ok(Some(ptr));
        }
        if new < usable && old >= SOLO_MIN && new < SOLO_MIN {
            return Ok(None);
        }
        Ok(self.large.mems_resize_in_place(ptr, new)?.then_some(ptr))
    }

    /// Is `ptr` a live block of route `r` holding at least `old` bytes (checked as a free
    /// checks it, before a move reads `old` bytes from it)?
    ///
    /// # Errors
    /// As `dealloc` would refuse `ptr`; [`HeapError::InvalidPointer`] if the block is
    /// smaller than `old`.
    #[cold]
    #[inline(never)]
    fn check_live(&self, ptr: NonNull<u8>, r: Route, old: usize) -> Result<(), HeapError> {
        let usable = match r {
            // The slot's class may hold the layout's class (`slab_slot`), so at least `old`.
            Route::Slab(a) => match self.slab_slot(ptr, a)? {
                Some(_) => return Ok(()),
                None => self.mid.usable_size_small(ptr)?,
            },
            Route::Mid => self.mid.usable_size(ptr)?,
            Route::Large => self.large.mems_usable_size(ptr)?,
        };
        if usable < old {
            return Err(smaller(ptr));
        }
        Ok(())
    }

    /// Refuse a realloc of a bad pointer: counted as a refused free, `None`.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, e: HeapError) -> Option<NonNull<u8>> {
        self.stats.bad_frees += 1;
        self.last_error = Some(e);
        None
    }
}

/// The error of a block smaller than the layout it is resized with.
fn smaller(ptr: NonNull<u8>) -> HeapError {
    HeapError::InvalidPointer {
        addr: ptr.as_ptr().expose_provenance(),
        reason: "block smaller than the layout",
    }
}

/// The size a MeMS block that grows from `old` to `new` bytes (`old < new`) is moved to (if
/// that size still routes to MeMS):
/// room for one more growth by the same factor (`new × new / old`, rounded up) when the step
/// is at most a quarter of `new`, else `new`. A buffer that is appended to grows by such
/// factors (perl's strings and arrays by 1.2, CPython's lists by 1.125); with the room its
/// next growth stays in place (`large_realloc_in_place`): no copy, and no moment at which
/// the old and the new copy are both mapped, which is what sets the heap's peak when the
/// buffer is its biggest block. (Mid-size moves get no room: it cost perl and redis-server
/// pages, BENCHMARKS.md "Sixth session", 13g.) The room costs at most a third of the block
/// while it stops growing; a block that jumps (a step above a quarter) gets none.
pub(super) fn grown_size(old: usize, new: usize) -> usize {
    let step = new - old;
    if step > new / 4 {
        return new;
    }
    let next = (new as u128 * new as u128).div_ceil(old as u128);
    usize::try_from(next).unwrap_or(new)
}

/// Blocks of at most this many bytes are copied by [`copy_block`]'s own loop; bigger ones by
/// `memcpy`, whose `rep movs` start-up is then paid back.
const COPY_INLINE_MAX: usize = 512;

/// Copy `n` bytes from `src` to `dst` (a block that moves). Up to [`COPY_INLINE_MAX`] bytes in
/// 8-byte words, four at a time, with no call: the guest's `memcpy` (`compiler_builtins`;
/// `x86_64-unknown-none` has no SSE) is three `rep movs`, whose start-up costs more than
/// copying a small block, and perl moves one at almost every event (a string grown 10 → 24
/// → 40 → … → 208 bytes changes slab class at each step). The loads of a group come before
/// its stores, so LLVM does not turn the loop back into a `memcpy` call. Bigger blocks go to
/// `memcpy`. (BENCHMARKS.md, "Twelfth session": perl 0.86 → 0.96 × dlmalloc.)
///
/// # Safety
/// `src` is readable and `dst` writable for `n` bytes, and the two do not overlap.
#[inline(always)]
unsafe fn copy_block(src: *const u8, dst: *mut u8, n: usize) {
    if n > COPY_INLINE_MAX {
        // SAFETY: as the caller promises.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    // The words are `MaybeUninit`: a block's bytes need not be initialized (a program may
    // grow a buffer it never wrote), and a `u64` must be.
    type Word = MaybeUninit<u64>;
    // SAFETY: every offset read or written is below `n`: a word at `i` with `i + 8 ≤ n`,
    // the tail word at `n − 8` with `n ≥ 8`, single bytes below `n`; the caller makes `src`
    // readable and `dst` writable for `n` bytes, and they do not overlap.
    unsafe {
        let rd = |i: usize| src.add(i).cast::<Word>().read_unaligned();
        let wr = |i: usize, v: Word| dst.add(i).cast::<Word>().write_unaligned(v);
        if n < 8 {
            for i in 0..n {
                let b = src.add(i).cast::<MaybeUninit<u8>>().read();
                dst.add(i).cast::<MaybeUninit<u8>>().write(b);
            }
            return;
        }
        let mut i = 0;
        while i + 32 <= n {
            let (a, b, c, d) = (rd(i), rd(i + 8), rd(i + 16), rd(i + 24));
            wr(i, a);
            wr(i + 8, b);
            wr(i + 16, c);
            wr(i + 24, d);
            i += 32;
        }
        while i + 8 <= n {
            wr(i, rd(i));
            i += 8;
        }
        // The last word again, overlapping what was copied (the same bytes): a tail of 1–7
        // bytes.
        if i < n {
            wr(n - 8, rd(n - 8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_block, COPY_INLINE_MAX};

    /// Every length up to past the inline bound, at every source and destination offset
    /// mod 8: the `n` bytes arrive, and not one byte around them is written.
    #[test]
    fn copy_block_copies_exactly_n_bytes() {
        let src: std::vec::Vec<u8> = (0..COPY_INLINE_MAX + 64)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        for n in 0..=COPY_INLINE_MAX + 40 {
            for (so, d) in [(0, 0), (1, 3), (5, 0), (0, 7), (3, 3)] {
                let mut dst = std::vec![0xeeu8; n + 32];
                // SAFETY: `src[so..]` holds at least `n` bytes, `dst[8 + d..]` too, and the
                // two vectors do not overlap.
                unsafe { copy_block(src.as_ptr().add(so), dst.as_mut_ptr().add(8 + d), n) };
                assert_eq!(&dst[8 + d..8 + d + n], &src[so..so + n], "n {n}");
                assert!(
                    dst[..8 + d]
                        .iter()
                        .chain(&dst[8 + d + n..])
                        .all(|&b| b == 0xee),
                    "n {n}"
                );
            }
        }
    }
}
