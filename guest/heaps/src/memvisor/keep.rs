//! The memvisor heap's page-return policy (issue 13): a [`Keep`] sits between MeMS and its
//! page source and keeps page runs MeMS gives back (emptied main nodes, solo nodes of freed
//! large blocks) for reuse, instead of returning each to the host at once. On this PVM host a
//! return costs a host exit and, after it, a flush of KVM's shadow page tables; a program
//! that frees and re-allocates a buffer of the same size (bzip2's two 3.6 MB arrays per file)
//! paid both every time.
//!
//! Policy (hysteresis, as jemalloc's dirty-page decay or mimalloc's purge delay):
//! * a run given back is kept, up to [`KEEP_MAX_PAGES`] pages in at most [`KEEP_RUNS`] runs;
//!   past the bound, the oldest runs go back until at most half the bound is kept (one
//!   batch);
//! * a request of exactly a kept run's size takes the newest such run (zeroed first if the
//!   caller asks for zeroed pages): no exit;
//! * a request no kept run fits returns at least as many kept pages as it maps (oldest runs
//!   first; all if fewer are kept), then maps: the pages held never rise while kept pages
//!   could have made up for the growth, so keeping does not raise the heap's peak footprint
//!   (the heap also calls [`Keep::release_to`] before it grows its slabs past its
//!   high-water mark);
//! * runs unused for [`DECAY_OPS`] heap operations go back ([`Keep::decay`]).
//!
//! Returned runs go to the inner source with exactly the base and count it mapped (runs are
//! never split or merged), as [`PageSource::unmap_pages`] requires. A kept run is held by the
//! heap (its pages count in [`MemvisorHeap::pages_in_use`](super::MemvisorHeap::pages_in_use)
//! and in the page source's accounting) and handed to one owner at most.

use crate::PageSource;
use core::ptr::NonNull;

/// Most runs kept.
pub const KEEP_RUNS: usize = 128;
/// Most pages kept (32 MiB).
pub const KEEP_MAX_PAGES: usize = 8192;
/// Heap operations after which an unused kept run goes back.
pub const DECAY_OPS: u64 = 1 << 16;

const PAGE: usize = 4096;

/// Counters of the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepStats {
    /// Pages kept now.
    pub kept_pages: usize,
    /// Most pages kept at once.
    pub peak_kept_pages: usize,
    /// Runs taken in (given back by MeMS and kept).
    pub kept_runs: u64,
    /// Requests served from a kept run (a host exit saved each).
    pub reused_runs: u64,
    /// Pages returned to the inner source (and so to the host).
    pub returned_pages: u64,
    /// Runs returned to the inner source.
    pub returned_runs: u64,
    /// Batches of returns (a bound, a miss, a decay or an explicit release).
    pub return_batches: u64,
    /// Free tails of mid-size regions given back at the heap's high-water mark
    /// ([`Mid::trim_tails`](super::Mid::trim_tails); filled in by
    /// [`MemvisorHeap::keep_stats`](super::MemvisorHeap::keep_stats), 0 from [`Keep::stats`]).
    pub tail_returns: u64,
    /// Pages of those tails.
    pub tail_returned_pages: u64,
    /// Freed solo MeMS blocks parked for reuse (`memvisor/park.rs`; filled in by
    /// [`MemvisorHeap::keep_stats`](super::MemvisorHeap::keep_stats), 0 from [`Keep::stats`]).
    pub parked_blocks: u64,
    /// Requests served from a parked block (no MeMS work, no page mapped).
    pub unparked_blocks: u64,
    /// Pages of the parked blocks now (their solo nodes', 4 KiB each).
    pub parked_pages: usize,
    /// Most pages parked at once.
    pub peak_parked_pages: usize,
}

/// A page source that keeps returned runs for reuse (see the module docs).
pub struct Keep<S: PageSource> {
    inner: S,
    /// Kept runs `(base, pages, op stamp)`, oldest first.
    runs: [(usize, usize, u64); KEEP_RUNS],
    n: usize,
    /// The heap's operation count (set by the heap).
    now: u64,
    stats: KeepStats,
}

impl<S: PageSource> Keep<S> {
    /// Nothing kept yet.
    pub const fn new(inner: S) -> Self {
        Keep {
            inner,
            runs: [(0, 0, 0); KEEP_RUNS],
            n: 0,
            now: 0,
            stats: KeepStats {
                kept_pages: 0,
                peak_kept_pages: 0,
                kept_runs: 0,
                reused_runs: 0,
                returned_pages: 0,
                returned_runs: 0,
                return_batches: 0,
                tail_returns: 0,
                tail_returned_pages: 0,
                parked_blocks: 0,
                unparked_blocks: 0,
                parked_pages: 0,
                peak_parked_pages: 0,
            },
        }
    }

    /// The inner source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counters.
    pub fn stats(&self) -> KeepStats {
        self.stats
    }

    /// Pages kept now.
    #[inline(always)]
    pub fn kept_pages(&self) -> usize {
        self.stats.kept_pages
    }

    /// The kept runs `(base, pages)`, oldest first.
    pub fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.runs[..self.n].iter().map(|&(b, p, _)| (b, p))
    }

    /// Advance the clock to `ops` heap operations and return the runs unused for
    /// [`DECAY_OPS`] of them.
    #[inline]
    pub fn decay(&mut self, ops: u64) {
        self.now = ops;
        if self.n > 0 && ops.saturating_sub(self.runs[0].2) > DECAY_OPS {
            let k = self.runs[..self.n]
                .iter()
                .take_while(|r| ops.saturating_sub(r.2) > DECAY_OPS)
                .count();
            self.release_oldest(k);
        }
    }

    /// Return the oldest runs until at most `pages` pages are kept (one batch).
    pub fn release_to(&mut self, pages: usize) {
        let mut kept = self.stats.kept_pages;
        let mut k = 0;
        while k < self.n && kept > pages {
            kept -= self.runs[k].1;
            k += 1;
        }
        self.release_oldest(k);
    }

    /// Return the `k` oldest runs.
    fn release_oldest(&mut self, k: usize) {
        if k == 0 {
            return;
        }
        for i in 0..k {
            let (b, p, _) = self.runs[i];
            if let Some(base) = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(b)) {
                self.inner.unmap_pages(base, p);
            }
            self.stats.kept_pages -= p;
            self.stats.returned_pages += p as u64;
            self.stats.returned_runs += 1;
        }
        self.runs.copy_within(k..self.n, 0);
        self.n -= k;
        self.stats.return_batches += 1;
    }

    /// Whether a kept run has exactly `pages` pages (a request of that size is served
    /// without mapping).
    pub fn holds(&self, pages: usize) -> bool {
        self.runs[..self.n].iter().any(|r| r.1 == pages)
    }

    /// A kept run of exactly `pages` pages (the newest), removed from the keep.
    fn take(&mut self, pages: usize) -> Option<usize> {
        let i = (0..self.n).rev().find(|&i| self.runs[i].1 == pages)?;
        let b = self.runs[i].0;
        self.runs.copy_within(i + 1..self.n, i);
        self.n -= 1;
        self.stats.kept_pages -= pages;
        self.stats.reused_runs += 1;
        Some(b)
    }

    fn get(&mut self, pages: usize, zeroed: bool) -> Option<NonNull<u8>> {
        if let Some(b) = self.take(pages) {
            let p = core::ptr::with_exposed_provenance_mut::<u8>(b);
            if zeroed {
                // SAFETY: a kept run: `pages` pages mapped read/write, owned by the keep
                // until this call hands them out.
                unsafe { core::ptr::write_bytes(p, 0, pages * PAGE) };
            }
            return NonNull::new(p);
        }
        // A miss: the heap grows by `pages`, so at least as many kept pages go back first
        // (oldest runs; all of them if fewer are kept): the pages held do not rise while
        // kept runs could have made up for it.
        self.release_to(self.stats.kept_pages.saturating_sub(pages));
        if zeroed {
            self.inner.map_pages(pages)
        } else {
            self.inner.map_pages_dirty(pages)
        }
    }
}

// SAFETY: every run handed out is either fresh from the inner source (whose contract holds)
// or a run the inner source mapped with exactly that count, given back by its previous owner
// and kept by nobody else (it leaves the keep when handed out), zeroed for `map_pages`. Runs
// go back to the inner source with the base and count it mapped them with (or that an
// owner's `shrink_pages`, forwarded to the inner source, left them with).
unsafe impl<S: PageSource> PageSource for Keep<S> {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, true)
    }

    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, false)
    }

    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        if pages == 0 || pages > KEEP_MAX_PAGES / 2 {
            self.inner.unmap_pages(base, pages);
            return;
        }
        if self.n == KEEP_RUNS {
            self.release_oldest(KEEP_RUNS / 2);
        }
        self.runs[self.n] = (base.as_ptr().expose_provenance(), pages, self.now);
        self.n += 1;
        self.stats.kept_pages += pages;
        self.stats.kept_runs += 1;
        self.stats.peak_kept_pages = self.stats.peak_kept_pages.max(self.stats.kept_pages);
        if self.stats.kept_pages > KEEP_MAX_PAGES {
            self.release_to(KEEP_MAX_PAGES / 2);
        }
    }

    /// The tail of a run its owner holds (never a kept run) goes straight to the inner
    /// source: a shrink lowers the pages held, which keeping would undo.
    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        self.inner.shrink_pages(base, pages, keep)
    }

    fn translate(&self, va: usize) -> Option<u64> {
        self.inner.translate(va)
    }
}

impl<S: PageSource> Drop for Keep<S> {
    fn drop(&mut self) {
        self.release_oldest(self.n);
    }
}
