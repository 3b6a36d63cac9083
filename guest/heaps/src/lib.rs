//! Guest heaps for memvisor: **page families** (seed `001_a52b9431769bf736.txt`, the
//! struct-family "Custom Memory Manager for Linux") and **MeMS** (seed
//! `004_1209ef3e46c6e329.txt`, the main-chain / sub-chain memory management system).
//!
//! Both heaps get every page they use from a [`PageSource`]: in the guest kernel that is the
//! `mmap` / `munmap` hypercalls, on the host (tests, benchmarks) it is
//! `host::HostPageSource` (feature `host`). Neither heap uses the `alloc` crate, so both can
//! sit under the guest's `#[global_allocator]`: all metadata lives in pages obtained from the
//! page source (in-band block and page headers, the page families' page registry, MeMS's
//! node pool and hash table) or in fixed-size arrays inside the heap structs. Both constructors are `const fn`,
//! so a heap can live in a `static` behind a lock; every operation takes `&mut self`.
//!
//! # Page registry
//! The page families (and the memvisor heap's slab and mid-size paths) keep a radix tree of up to 4 levels (9 bits a level, like the x86-64 page
//! tables; only as tall as its keys need, so pages within one 2 MiB window cost one node;
//! nodes are pages from the source, emptied nodes are unmapped at once) from every 4 KiB page
//! it owns to that page's VM page (page families), slab or region, with a 128-entry
//! direct-mapped lookup cache; ranges are registered one leaf at a time. While the tree is
//! empty, up to 128 runs (sorted, binary-searched) are kept inline in the heap struct instead (a fresh heap's registry
//! costs no page until it holds more runs; adjacent one-page blocks registered with their own
//! address share a run). It is what validates a pointer before any in-band data is trusted,
//! in O(1). MeMS keeps none: its hash table of live segment starts validates a free, and
//! its few lookups by any address walk the main chain (see [`mems`]).
//!
//! # Alignment
//! * [`page_family`]: every payload is **16-byte aligned** (no larger alignment).
//! * [`mems`]: payloads are 16-byte aligned; [`Mems::mems_alloc_aligned`] gives any
//!   power-of-two alignment up to 1 GiB.
//!
//! # Validation
//! A free is checked against heap-owned state, not only in-band data: the pointer must lie in
//! a registered page and start a live block (page families: an allocated-payload bitmap in
//! each page header; MeMS: a hash table of live segment starts). Bad frees return a
//! [`HeapError`] carrying the address and leave the heap unchanged; magic bits and
//! boundary-tag cross-checks catch most overwritten headers ([`HeapError::Corrupted`]).
//! Reuse of a freed address by a later allocation (ABA) cannot be told apart from a valid
//! free, as in every allocator.
//!
//! # For a global allocator
//! * Small sizes: one page family per size class (`mm_instantiate_new_page_family(name,
//!   class_size)`), then [`PageFamilies::xmalloc`]`(id, 1)` / [`PageFamilies::xfree`].
//!   A block costs [`page_family::block_bytes_for`]`(class_size)` bytes: class sizes
//!   ≡ 8 (mod 16) (24, 40, 56, 72, …) waste nothing to rounding. Turn on
//!   [`PageFamilies::set_quick_cache`] (e.g. 64) for the O(1) no-split/no-merge fast path
//!   (faster than `talc` on the host for ≤ 256-byte pairs and random workloads) and
//!   [`PageFamilies::set_empty_page_cache`]`(1)` to avoid map/unmap churn at page boundaries.
//! * Large sizes and alignments > 16: [`Mems::mems_alloc_aligned`], with
//!   [`Mems::set_release_empty`]`(true)` so memory goes back when a region empties,
//!   [`Mems::set_min_grow_pages`] so medium blocks share main nodes, and
//!   [`Mems::set_solo_min`] so big blocks get nodes of their own that go back when freed.
//! * [`memvisor::MemvisorHeap`] is such an allocator, ready to use (the guest kernel's).
//! * `contains(ptr)` on either heap tells which heap owns a pointer (O(1)); `usable_size`
//!   / `mems_usable_size` give the real block size (for `realloc` in place).
//!
//! Units: sizes are in bytes, page counts in 4 KiB pages ([`PAGE_SIZE`]) unless stated.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "host"))]
extern crate std;

mod error;
#[cfg(any(test, feature = "host"))]
pub mod host;
pub mod mems;
pub mod memvisor;
pub mod page_family;
mod registry;
#[cfg(test)]
mod tests;

use core::ptr::NonNull;

pub use error::{HeapError, NameBuf};
pub use mems::{Mems, MemsAudit};
pub use memvisor::{KeepStats, MemvisorHeap, SlabPageStats};
pub use page_family::{FamilyId, FamilyInfo, FamilyRef, PageFamilies, PfAudit};

/// Size in bytes of one page handed out by a [`PageSource`] (x86-64 base page).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Where the heaps get their memory from: whole 4 KiB pages.
///
/// The guest implements it with the `mmap` / `munmap` (and `translate`) hypercalls; tests use
/// `host::HostPageSource` (feature `host`).
///
/// # Safety
/// The heaps write their metadata into the pages they get, so an implementation must uphold:
/// * `map_pages(n)` returns either `None` or the base of `n * 4096` bytes that are contiguous,
///   4096-aligned, zero-filled, readable and writable, not used by anything else, and that stay
///   valid until they are passed back to `unmap_pages`;
/// * the address range lies in the canonical x86-64 address space (bits 63..47 equal).
///
/// The heaps only call `unmap_pages` with exactly a `(base, pages)` pair they got from
/// `map_pages` (never a sub-range), or the `(base, keep)` a successful
/// [`PageSource::shrink_pages`] left of it.
pub unsafe trait PageSource {
    /// Map `pages` (≥ 1) fresh zeroed, contiguous, 4 KiB-aligned pages, read/write.
    /// `None` when out of memory.
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>>;
    /// Like [`PageSource::map_pages`], except that the contents are unspecified: a source
    /// that recycles pages may hand them out without zeroing them again (they may hold data
    /// from an earlier owner in the same address space). For heaps that keep no metadata
    /// in the pages and do not promise zeroed memory (MeMS data regions). Every other promise
    /// of `map_pages` holds, and the pages go back through `unmap_pages`. Default:
    /// `map_pages`.
    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.map_pages(pages)
    }
    /// Unmap pages previously returned by `map_pages` or `map_pages_dirty` (exactly the same
    /// base and count).
    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize);
    /// Give back the last `pages - keep` pages of the run `(base, pages)` (as mapped, or as an
    /// earlier `shrink_pages` left it), `1 <= keep < pages`; the first `keep` pages stay
    /// mapped with their contents, and from then on the run is `(base, keep)` for
    /// `unmap_pages` and `shrink_pages`. Like `munmap` of a mapping's tail (POSIX) or
    /// `mremap` to a smaller size. Returns `false`, and changes nothing, if the source
    /// cannot give back part of a run (the default).
    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        let _ = (base, pages, keep);
        false
    }
    /// Guest-physical address of the virtual address `va` (a page-table walk in the guest).
    /// Default: `None` (no translation available).
    fn translate(&self, va: usize) -> Option<u64> {
        let _ = va;
        None
    }
}

// SAFETY: forwards every call to `S`, which upholds the contract itself.
unsafe impl<S: PageSource + ?Sized> PageSource for &mut S {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        (**self).map_pages(pages)
    }
    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        (**self).map_pages_dirty(pages)
    }
    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        (**self).unmap_pages(base, pages)
    }
    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        (**self).shrink_pages(base, pages, keep)
    }
    fn translate(&self, va: usize) -> Option<u64> {
        (**self).translate(va)
    }
}

/// Round `x` up to a multiple of `align` (a power of two). `None` on overflow.
#[inline]
pub(crate) const fn round_up(x: usize, align: usize) -> Option<usize> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// A raw pointer to `T` at address `addr`, with the provenance the page source exposed when
/// the page was mapped (all heap addresses are kept as `usize`).
#[inline(always)]
pub(crate) fn at<T>(addr: usize) -> *mut T {
    core::ptr::with_exposed_provenance_mut(addr)
}

/// Map `pages` pages from `src` and return the base address (provenance exposed).
#[inline]
pub(crate) fn map<S: PageSource + ?Sized>(src: &mut S, pages: usize) -> Option<usize> {
    let p = src.map_pages(pages)?;
    Some(p.as_ptr().expose_provenance())
}

/// Map `pages` pages whose contents do not matter ([`PageSource::map_pages_dirty`]).
#[inline]
pub(crate) fn map_dirty<S: PageSource + ?Sized>(src: &mut S, pages: usize) -> Option<usize> {
    let p = src.map_pages_dirty(pages)?;
    Some(p.as_ptr().expose_provenance())
}

/// Give `pages` pages at `base` (from [`map`] or [`map_dirty`]) back to `src`.
#[inline]
pub(crate) fn unmap<S: PageSource + ?Sized>(src: &mut S, base: usize, pages: usize) {
    // `base` came from `map`, so it is non-null.
    if let Some(p) = NonNull::new(at::<u8>(base)) {
        src.unmap_pages(p, pages);
    }
}

/// Give the pages of the run `(base, pages)` from `keep` on back to `src`
/// ([`PageSource::shrink_pages`]); `false` if the source cannot.
#[inline]
pub(crate) fn shrink<S: PageSource + ?Sized>(
    src: &mut S,
    base: usize,
    pages: usize,
    keep: usize,
) -> bool {
    NonNull::new(at::<u8>(base)).is_some_and(|p| src.shrink_pages(p, pages, keep))
}

/// Write `addr` as `0x…` hex (reports).
pub(crate) struct Hex(pub usize);

impl core::fmt::Display for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // `{:#x}` does not honour width with padding the way we want, so pad by hand.
        let mut buf = [0u8; 18];
        let mut n = self.0;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[n & 15];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        i -= 1;
        buf[i] = b'x';
        i -= 1;
        buf[i] = b'0';
        // The buffer only holds ASCII hex digits and "0x".
        let s = core::str::from_utf8(&buf[i..]).unwrap_or("0x?");
        f.pad(s)
    }
}
