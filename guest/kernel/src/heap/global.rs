//! The guest kernel's `#[global_allocator]`: a [`MemvisorHeap`] (size classes on page
//! families, large sizes and large alignments on MeMS; see `memvisor.rs`) on the hypercall
//! page source, so the kernel can use `alloc::vec::Vec`, `Box`, ….
//!
//! With `--heap-debug guard` (boot flag [`flags::HEAP_DEBUG_GUARD`]) allocations go to the
//! guard heap instead (`guard.rs`: own pages, end at an unmapped guard page, unmapped on
//! free) while its table has room ([`super::guard::RECORDS`] live allocations; the rest come
//! from the normal heap, like GWP-ASan's sampling). A free goes to the guard heap if it knows
//! the address, else to the normal heap.
//!
//! One vCPU: the heap sits in a static behind a busy flag; a re-entrant call (an allocation
//! from an exception handler while the heap is in use) fails with a null pointer instead of
//! aliasing the heap.

use super::memvisor::MemvisorHeap;
use super::source::{Acct, GuestPages};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};
use memvisor_abi::flags;

/// Pages the kernel's global heap holds.
pub static KERNEL_ACCT: Acct = Acct::new();

struct HeapCell(UnsafeCell<MemvisorHeap<GuestPages>>);
// SAFETY: one vCPU; BUSY guarantees at most one reference at a time.
unsafe impl Sync for HeapCell {}

static HEAP: HeapCell = HeapCell(UnsafeCell::new(MemvisorHeap::new(
    GuestPages::new(&KERNEL_ACCT),
    GuestPages::new(&KERNEL_ACCT),
)));
static BUSY: AtomicBool = AtomicBool::new(false);

/// Run `f` on the kernel heap; `None` on re-entry.
pub fn with_heap<R>(f: impl FnOnce(&mut MemvisorHeap<GuestPages>) -> R) -> Option<R> {
    if BUSY.swap(true, Ordering::Acquire) {
        return None;
    }
    // SAFETY: BUSY makes this the only reference (see the Sync impl).
    let r = f(unsafe { &mut *HEAP.0.get() });
    BUSY.store(false, Ordering::Release);
    Some(r)
}

/// Is the guard heap in use (`--heap-debug guard`)?
pub fn guard_mode() -> bool {
    crate::boot().flags & flags::HEAP_DEBUG_GUARD != 0
}

/// The kernel's allocator.
pub struct KernelAlloc;

#[global_allocator]
static GLOBAL: KernelAlloc = KernelAlloc;

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()` that no other live allocation overlaps (MemvisorHeap and the guard heap
// both guarantee it); `dealloc`/`realloc` hand the block back to the heap that made it (the
// mode never changes after boot) with its layout, as MemvisorHeap requires.
unsafe impl GlobalAlloc for KernelAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if guard_mode() {
            // Like GWP-ASan, guard pages for as many live allocations as the guard table holds;
            // the rest come from the normal heap.
            if let Ok(a) =
                super::guard::alloc(layout.size(), layout.align(), "memvisor", "size class")
            {
                return core::ptr::with_exposed_provenance_mut(a);
            }
        }
        with_heap(|h| h.alloc(layout))
            .flatten()
            .map_or(null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if guard_mode() {
            match super::guard::free(ptr.expose_provenance()) {
                Err(super::guard::GuardError::InvalidPointer(_)) => {} // from the normal heap
                _ => return,
            }
        }
        if let Some(p) = NonNull::new(ptr) {
            let _ = with_heap(|h| h.dealloc(p, layout));
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if guard_mode() {
            let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
                return null_mut();
            };
            // SAFETY: forwarding the caller's contract to our own alloc/dealloc.
            let q = unsafe { self.alloc(new) };
            if !q.is_null() {
                // SAFETY: both blocks are live, distinct, and at least this long.
                unsafe { core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size)) };
                // SAFETY: `ptr` was allocated with `layout` by this allocator.
                unsafe { self.dealloc(ptr, layout) };
            }
            return q;
        }
        let Some(p) = NonNull::new(ptr) else {
            return null_mut();
        };
        with_heap(|h| h.realloc(p, layout, new_size))
            .flatten()
            .map_or(null_mut(), NonNull::as_ptr)
    }
}
