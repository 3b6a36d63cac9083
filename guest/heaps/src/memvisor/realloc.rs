//! `realloc` of the `memvisor` heap: in place when the new size routes to the same heap and
//! the block can hold it (a slab slot of the same class, a mid-size block growing into the free
//! block behind it, a MeMS block growing into its hole), otherwise allocate, copy, free.

use super::{route, MemvisorHeap, Route, SOLO_MIN};
use crate::PageSource;
use core::alloc::Layout;
use core::ptr::NonNull;

impl<S: PageSource> MemvisorHeap<S> {
    /// Resize `ptr` (allocated with `layout`) to `new_size`, keeping the contents up to the
    /// smaller size. In place when the new size routes to the same heap and the block is big
    /// enough; otherwise allocate, copy, free. `None` (and `ptr` untouched) when out of memory.
    pub fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let old = layout.size().max(1);
        let new = new_size.max(1);
        let (ro, rn) = (route(old, layout.align()), route(new, layout.align()));
        match (ro, rn) {
            (Route::Slab(a), Route::Slab(b)) if a == b => return Some(ptr),
            (Route::Mid, Route::Mid) => {
                if let Some(p) = self.mid_realloc_in_place(ptr, new) {
                    return Some(p);
                }
            }
            (Route::Large, Route::Large) => {
                if let Some(p) = self.large_realloc_in_place(ptr, old, new) {
                    return Some(p);
                }
            }
            _ => {}
        }
        let nl = Layout::from_size_align(new, layout.align()).ok()?;
        let q = self.alloc(nl)?;
        // SAFETY: `ptr` holds at least `old` bytes (the caller's layout) and `q` at least
        // `new`; they are distinct live blocks.
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), q.as_ptr(), old.min(new)) };
        self.dealloc(ptr, layout);
        Some(q)
    }

    /// A mid-size block resized without moving ([`Mid::resize_in_place`]: a shrink always,
    /// a growth into a free block behind it). `None`: move it.
    fn mid_realloc_in_place(&mut self, ptr: NonNull<u8>, new: usize) -> Option<NonNull<u8>> {
        match self.mid.resize_in_place(ptr, new) {
            Ok(true) => Some(ptr),
            _ => None,
        }
    }

    /// A MeMS block resized without moving, if that is sensible: a shrink to at least half
    /// keeps the block as it is; a smaller shrink gives the tail back to MeMS, unless the block
    /// had a solo node and the new size does not (moving it lets the node go); a growth takes
    /// the front of the hole behind the block. `None`: move it.
    fn large_realloc_in_place(
        &mut self,
        ptr: NonNull<u8>,
        old: usize,
        new: usize,
    ) -> Option<NonNull<u8>> {
        let usable = self.large.mems_usable_size(ptr).ok()?;
        if new <= usable && new >= usable / 2 {
            return Some(ptr);
        }
        if new < usable && old >= SOLO_MIN && new < SOLO_MIN {
            return None;
        }
        match self.large.mems_resize_in_place(ptr, new) {
            Ok(true) => Some(ptr),
            _ => None,
        }
    }
}
