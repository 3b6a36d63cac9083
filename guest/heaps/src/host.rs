//! A [`PageSource`] on the host (feature `host`, and in tests): pages from anonymous private
//! `mmap` (4096-aligned, zero-filled), with tracking so tests can check the heaps give back
//! exactly what they took. A page given back is `munmap`ped, so a heap that touches it again
//! faults.

use core::ptr::NonNull;
use std::collections::BTreeMap;

use crate::{PageSource, PAGE_SIZE};

/// Host page source: every `map_pages` is one anonymous `mmap`.
///
/// Panics if `unmap_pages` or `shrink_pages` gets a `(base, pages)` that is not a live run
/// (as mapped, or as a `shrink_pages` left it). Pages still mapped when it is dropped are
/// unmapped.
#[derive(Debug, Default)]
pub struct HostPageSource {
    /// base address -> pages
    live: BTreeMap<usize, usize>,
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

    /// Number of `map_pages` / `unmap_pages` calls that succeeded (a `shrink_pages` that gave
    /// pages back counts as an unmap).
    pub fn calls(&self) -> (u64, u64) {
        (self.maps, self.unmaps)
    }

    /// Runs currently live, as `(base, pages)`.
    pub fn regions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.live.iter().map(|(&b, &p)| (b, p))
    }

    /// `munmap` of `pages` pages at `base`, which this source mapped.
    fn munmap(base: usize, pages: usize) {
        // SAFETY: `[base, base + pages * 4096)` is part of an anonymous mapping this source
        // made and still owns (the caller checked it against `live`); nothing else refers to it
        // once its owner gave it back.
        let r = unsafe {
            libc::munmap(
                core::ptr::with_exposed_provenance_mut(base),
                pages * PAGE_SIZE,
            )
        };
        assert_eq!(r, 0, "munmap({base:#x}, {pages} pages) failed");
    }

    /// The live run at `base`, which must have `pages` pages.
    fn check(&self, base: usize, pages: usize, what: &str) {
        assert_eq!(
            self.live.get(&base).copied(),
            Some(pages),
            "{what}({base:#x}, {pages}) does not match a live run"
        );
    }
}

// SAFETY: every mapping is a fresh anonymous private `mmap` of exactly `pages * 4096` bytes
// (zero-filled, page-aligned, read/write, user-space so canonical) that stays mapped until it
// is given back.
unsafe impl PageSource for HostPageSource {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        if pages == 0 || self.limit.is_some_and(|l| self.mapped + pages > l) {
            return None;
        }
        let len = pages.checked_mul(PAGE_SIZE)?;
        // SAFETY: a new anonymous private mapping; it aliases nothing.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let p = NonNull::new(p.cast::<u8>())?;
        self.live.insert(p.as_ptr().expose_provenance(), pages);
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
        let b = base.as_ptr().expose_provenance();
        self.check(b, pages, "unmap_pages");
        self.live.remove(&b);
        Self::munmap(b, pages);
        self.mapped -= pages;
        self.unmaps += 1;
    }

    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        let b = base.as_ptr().expose_provenance();
        self.check(b, pages, "shrink_pages");
        assert!(
            (1..pages).contains(&keep),
            "shrink_pages({b:#x}, {pages}, keep {keep}): keep must be in 1..pages"
        );
        Self::munmap(b + keep * PAGE_SIZE, pages - keep);
        self.live.insert(b, keep);
        self.mapped -= pages - keep;
        self.unmaps += 1;
        true
    }

    /// A stand-in "physical" address: the virtual address with bit 62 set, so tests can tell
    /// a translation from an identity.
    fn translate(&self, va: usize) -> Option<u64> {
        let (&b, &p) = self.live.range(..=va).next_back()?;
        (va < b + p * PAGE_SIZE).then_some(va as u64 | 1 << 62)
    }
}

impl Drop for HostPageSource {
    fn drop(&mut self) {
        for (&b, &p) in &self.live {
            Self::munmap(b, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shrink unmaps the tail and leaves `(base, keep)` as the run; the old count is then
    /// refused.
    #[test]
    fn shrink_gives_back_the_tail() {
        let mut s = HostPageSource::new();
        let p = s.map_pages(5).unwrap();
        // SAFETY: five fresh writable pages.
        unsafe { p.as_ptr().add(4 * PAGE_SIZE).write(7) };
        assert!(s.shrink_pages(p, 5, 2));
        assert_eq!(
            (s.mapped_pages(), s.peak_pages(), s.calls()),
            (2, 5, (1, 1))
        );
        assert_eq!(
            s.regions().collect::<std::vec::Vec<_>>(),
            [(p.as_ptr().addr(), 2)]
        );
        assert!(s.translate(p.as_ptr().addr() + 2 * PAGE_SIZE).is_none());
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = HostPageSource::new();
            let q = t.map_pages(3).unwrap();
            t.shrink_pages(q, 3, 1);
            t.unmap_pages(q, 3);
        }));
        assert!(again.is_err(), "an unmap with the old count");
        s.unmap_pages(p, 2);
        assert_eq!(s.mapped_pages(), 0);
    }
}
