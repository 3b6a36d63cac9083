//! A [`PageSource`] on the host (feature `host`, and in tests): pages from `std::alloc`
//! (4096-aligned, zeroed), with tracking so tests can check the heaps give back exactly what
//! they took.

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;

use crate::{PageSource, PAGE_SIZE};

/// Host page source: every `map_pages` is one `std::alloc` allocation.
///
/// Panics if `unmap_pages` gets a base it did not hand out or a different page count. Pages
/// still mapped when it is dropped are freed.
#[derive(Debug, Default)]
pub struct HostPageSource {
    /// base address -> (pointer as allocated, pages)
    live: BTreeMap<usize, (*mut u8, usize)>,
    mapped: usize,
    peak: usize,
    limit: Option<usize>,
    maps: u64,
    unmaps: u64,
}

impl HostPageSource {
    /// A source without a limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A source that refuses to have more than `pages` pages mapped at once.
    pub fn with_limit(pages: usize) -> Self {
        let mut s = Self::default();
        s.limit = Some(pages);
        s
    }

    /// Change the limit (`None` = unlimited).
    pub fn set_limit(&mut self, pages: Option<usize>) {
        self.limit = pages;
    }

    /// Pages currently mapped.
    pub fn mapped_pages(&self) -> usize {
        self.mapped
    }

    /// Highest number of pages mapped at once.
    pub fn peak_pages(&self) -> usize {
        self.peak
    }

    /// Number of `map_pages` / `unmap_pages` calls that succeeded.
    pub fn calls(&self) -> (u64, u64) {
        (self.maps, self.unmaps)
    }

    /// Mappings currently live, as `(base, pages)`.
    pub fn regions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.live.iter().map(|(&b, &(_, p))| (b, p))
    }

    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("page layout")
    }
}

// SAFETY: the raw pointers are owned allocations, not shared with anything else.
unsafe impl Send for HostPageSource {}

// SAFETY: every mapping is a fresh zeroed, 4096-aligned `std::alloc` allocation of exactly
// `pages * 4096` bytes that stays live until it is unmapped; user-space addresses are
// canonical.
unsafe impl PageSource for HostPageSource {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        if pages == 0 || self.limit.is_some_and(|l| self.mapped + pages > l) {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(Self::layout(pages)) })?;
        self.live.insert(p.as_ptr().addr(), (p.as_ptr(), pages));
        self.mapped += pages;
        self.peak = self.peak.max(self.mapped);
        self.maps += 1;
        Some(p)
    }

    /// Mapped as by `map_pages`, then filled with the byte 0xA5, so a heap that relies on
    /// zero-filled pages from `map_pages_dirty` fails its tests.
    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        let p = self.map_pages(pages)?;
        // SAFETY: `p` is a fresh mapping of `pages * 4096` writable bytes.
        unsafe { p.as_ptr().write_bytes(0xA5, pages * PAGE_SIZE) };
        Some(p)
    }

    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        let got = self.live.remove(&base.as_ptr().addr());
        assert_eq!(
            got.map(|g| g.1),
            Some(pages),
            "unmap_pages({:p}, {pages}) does not match a mapping",
            base
        );
        self.mapped -= pages;
        self.unmaps += 1;
        if let Some((ptr, _)) = got {
            // SAFETY: `ptr` was allocated by `map_pages` with this exact layout.
            unsafe { dealloc(ptr, Self::layout(pages)) };
        }
    }

    /// A stand-in "physical" address: the virtual address with bit 62 set, so tests can tell
    /// a translation from an identity.
    fn translate(&self, va: usize) -> Option<u64> {
        let (&b, &(_, p)) = self.live.range(..=va).next_back()?;
        (va < b + p * PAGE_SIZE).then_some(va as u64 | 1 << 62)
    }
}

impl Drop for HostPageSource {
    fn drop(&mut self) {
        for &(ptr, p) in self.live.values() {
            // SAFETY: each live entry is an allocation made by `map_pages` with this layout.
            unsafe { dealloc(ptr, Self::layout(p)) };
        }
    }
}
