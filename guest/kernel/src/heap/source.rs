//! The heaps' [`PageSource`] in the guest: 4 KiB pages from the host's `mmap` / `munmap`
//! hypercalls (`POPULATE`, `READ | WRITE | USER`, zone `ANY`), and `translate` = our own walk
//! of the page tables cross-checked against the host's `translate` hypercall.
//!
//! A hypercall from ring 3 costs ~35–40 µs (one exit), so the source amortises them in a
//! process-wide **pool** shared by every heap:
//! * single pages come from a **chunk**: one `mmap` of [`CHUNK_PAGES`] pages, handed out a
//!   page at a time;
//! * freed pages are **cached** (as runs, up to [`CACHE_CAP`] runs and [`CACHE_PAGES`] pages;
//!   a run next to a cached run joins it)
//!   and zeroed when handed out again (the `PageSource` contract promises zero-filled pages;
//!   zeroing a page natively costs far less than an exit), except for `map_pages_dirty`
//!   (MeMS's data regions), which takes a recycled run as it is; a request takes an exact
//!   run, or splits the smallest larger one;
//! * a run too big for the cache is queued for `munmap` and goes to the host with the next
//!   exit (an `mmap`, a full queue, an eviction or a [`flush`]);
//! * when the cache is over its budget, its oldest runs are unmapped (adjacent runs merged)
//!   until it is at a quarter of the budget: `munmap` requests go to the host up to
//!   [`MAX_PENDING`] per exit (as many as the cache has runs, so an eviction is one exit
//!   however scattered its runs are), with one TLB
//!   flush per batch (the guest's job after `munmap`, see the ABI docs). Unmapping is rare on
//!   purpose: after a batch that unmapped touched pages the VMM flushes KVM's shadow page
//!   tables (README, "On a PVM host"), and every page the guest touches next takes a shadow
//!   fault again.
//!
//! Accounting is two-level: each heap's [`GuestPages`] handle counts the pages the **heap**
//! holds ([`Acct`]: what `peak_mapped_bytes` reports), and the pool counts the pages mapped
//! from the **host** for all heaps, its caches included ([`pool_stats`]).
//! [`flush`] gives every cached page back to the host.
//!
//! One vCPU and no allocation from interrupt context: the pool lives in a static and is never
//! entered twice at once (a re-entry would be a bug; it is detected and refused).

use crate::{hc, walk};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use memvisor_abi::{map, prot, zone, Call, Request, MAX_BATCH};
use memvisor_heaps::PageSource;

const PAGE: usize = 4096;
/// Pages mapped by one `mmap` when the single-page reserve is empty.
pub const CHUNK_PAGES: usize = 64;
/// Freed page runs kept for reuse.
pub const CACHE_CAP: usize = 256;
/// Pages the cache may hold before its oldest runs are unmapped (2 MiB).
pub const CACHE_PAGES: usize = 512;
/// `munmap` requests queued before they are sent in one exit: as many as the cache has
/// runs, so that an eviction is one exit (and one flush of KVM's shadow page tables on a
/// PVM host), whatever the sizes of the runs.
pub const MAX_PENDING: usize = CACHE_CAP - 1;
const _: () =
    assert!(MAX_PENDING < MAX_BATCH as usize && MAX_PENDING < hc::MAIN_BLOCK_REQUESTS);

/// Pages a heap holds from the page source (one per heap or group of heaps).
#[derive(Debug)]
pub struct Acct {
    mapped: AtomicUsize,
    peak: AtomicUsize,
    maps: AtomicU64,
    unmaps: AtomicU64,
}

impl Acct {
    /// Zero counters.
    pub const fn new() -> Self {
        Acct {
            mapped: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
        }
    }

    /// Pages held now.
    pub fn pages(&self) -> usize {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Most pages held at once since the last [`Acct::reset_peak`].
    pub fn peak_pages(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// `map_pages` / `unmap_pages` calls that succeeded.
    pub fn calls(&self) -> (u64, u64) {
        (
            self.maps.load(Ordering::Relaxed),
            self.unmaps.load(Ordering::Relaxed),
        )
    }

    /// Start a new peak measurement from the current level.
    pub fn reset_peak(&self) {
        self.peak.store(self.pages(), Ordering::Relaxed);
    }

    /// Count `pages` more held (used by page sources of the peer heaps too).
    pub fn add(&self, pages: usize) {
        let now = self.mapped.fetch_add(pages, Ordering::Relaxed) + pages;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.maps.fetch_add(1, Ordering::Relaxed);
    }

    /// Count `pages` fewer held.
    pub fn sub(&self, pages: usize) {
        self.mapped.fetch_sub(pages, Ordering::Relaxed);
        self.unmaps.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Acct {
    fn default() -> Self {
        Self::new()
    }
}

/// A heap's handle on the pool: pages from the host, counted in `acct`.
#[derive(Clone, Copy)]
pub struct GuestPages {
    acct: &'static Acct,
}

impl GuestPages {
    /// A source whose pages are counted in `acct`.
    pub const fn new(acct: &'static Acct) -> Self {
        GuestPages { acct }
    }

    /// Its accounting.
    pub fn acct(&self) -> &'static Acct {
        self.acct
    }

    /// `pages` pages from the pool, zeroed if `zeroed` (else a recycled run keeps its old
    /// contents), counted in the accounting.
    fn get(&mut self, pages: usize, zeroed: bool) -> Option<NonNull<u8>> {
        let t0 = rdtsc();
        let got = with_pool(|p| p.take(pages, zeroed)).flatten();
        SOURCE_CYCLES.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
        let base = got?;
        self.acct.add(pages);
        NonNull::new(core::ptr::with_exposed_provenance_mut(base))
    }
}

// SAFETY: every page handed out is either fresh from a POPULATE mmap (zero-filled by the
// host, 4 KiB aligned, mapped read/write for ring 3 and ring 0, canonical low-half address in
// the mmap window) or a page this pool took back and zeroes before handing it out again
// (`map_pages_dirty` alone skips that zeroing, as its contract allows).
// Multi-page results are one contiguous mmap region or a contiguous run of one chunk. A page
// is handed to one owner at a time and only unmapped after its owner gave it back.
unsafe impl PageSource for GuestPages {
    fn map_pages(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, true)
    }

    fn map_pages_dirty(&mut self, pages: usize) -> Option<NonNull<u8>> {
        self.get(pages, false)
    }

    fn unmap_pages(&mut self, base: NonNull<u8>, pages: usize) {
        let b = base.as_ptr().expose_provenance();
        let t0 = rdtsc();
        let given = with_pool(|p| p.give(b, pages)).is_some();
        SOURCE_CYCLES.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
        if given {
            self.acct.sub(pages);
        }
    }

    /// The tail goes to the pool as a run of its own (cached, or queued for `munmap`: the
    /// host's `munmap` takes any page range inside one region).
    fn shrink_pages(&mut self, base: NonNull<u8>, pages: usize, keep: usize) -> bool {
        if keep == 0 || keep >= pages {
            return false;
        }
        let tail = base.as_ptr().expose_provenance() + keep * PAGE;
        let t0 = rdtsc();
        let given = with_pool(|p| p.give(tail, pages - keep)).is_some();
        SOURCE_CYCLES.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
        if given {
            self.acct.sub(pages - keep);
        }
        given
    }

    fn translate(&self, va: usize) -> Option<u64> {
        translate(va)
    }
}

/// Guest-physical address of `va`: our page-table walk, which must agree with the host's
/// `translate` hypercall (a disagreement is counted and gives `None`).
pub fn translate(va: usize) -> Option<u64> {
    let mine = walk::translate(va as u64).map(|(gpa, _)| gpa);
    let host = hc::translate(va as u64).ok();
    if mine != host {
        TRANSLATE_MISMATCH.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    mine
}

/// TSC cycles spent in the page source (`map_pages` / `unmap_pages` of every heap: pool work,
/// zeroing of reused pages, hypercalls), for the replay's breakdown.
pub static SOURCE_CYCLES: AtomicU64 = AtomicU64::new(0);

/// Part of [`SOURCE_CYCLES`] spent zeroing reused pages.
pub static ZERO_CYCLES: AtomicU64 = AtomicU64::new(0);
/// Part of [`SOURCE_CYCLES`] spent in hypercall exits.
pub static HC_CYCLES: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD clear: allowed in ring 3 and ring 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Translations where the guest walk and the host disagreed.
pub static TRANSLATE_MISMATCH: AtomicU64 = AtomicU64::new(0);

/// Counters of the pool (host level, all heaps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pages mapped from the host now (held by heaps + cached + queued for unmapping).
    pub host_pages: usize,
    /// Most pages mapped from the host at once since the last [`reset_peak`].
    pub host_peak: usize,
    /// `mmap` / `munmap` requests sent.
    pub mmaps: u64,
    /// `munmap` requests sent.
    pub munmaps: u64,
    /// Exits (hypercall batches) the pool made.
    pub exits: u64,
    /// Pages handed out again from the caches (zeroed).
    pub reused: u64,
    /// Hypercalls the host refused.
    pub errors: u64,
    /// Runs given back to the pool: 1 page, 2–15, 16+.
    pub gives: [u64; 3],
    /// Evictions (cache over budget).
    pub evictions: u64,
}

struct Pool {
    /// Unused pages of the current chunk: `[chunk_next, chunk_end)` (zero-filled).
    chunk_next: usize,
    chunk_end: usize,
    /// Freed runs `(base, pages)`, oldest first (not zeroed).
    cache: [(usize, usize); CACHE_CAP],
    ncache: usize,
    cached_pages: usize,
    pending: [(usize, usize); MAX_PENDING],
    npending: usize,
    /// The requests of one exit (built here, not on the stack: only the used ones are
    /// written).
    reqs: [Request; MAX_PENDING + 1],
    stats: PoolStats,
}

struct PoolCell(UnsafeCell<Pool>);
// SAFETY: one vCPU; the pool is only used from normal (non-interrupt) context and BUSY
// refuses re-entry, so there is never more than one reference to it.
unsafe impl Sync for PoolCell {}

static POOL: PoolCell = PoolCell(UnsafeCell::new(Pool {
    chunk_next: 0,
    chunk_end: 0,
    cache: [(0, 0); CACHE_CAP],
    ncache: 0,
    cached_pages: 0,
    pending: [(0, 0); MAX_PENDING],
    npending: 0,
    reqs: [Request::new(Call::Nop, [0; 5]); MAX_PENDING + 1],
    stats: PoolStats {
        host_pages: 0,
        host_peak: 0,
        mmaps: 0,
        munmaps: 0,
        exits: 0,
        reused: 0,
        errors: 0,
        gives: [0; 3],
        evictions: 0,
    },
}));
static BUSY: AtomicBool = AtomicBool::new(false);

/// Run `f` on the pool; `None` if the pool is already in use (re-entry).
fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
    if BUSY.swap(true, Ordering::Acquire) {
        return None;
    }
    // SAFETY: BUSY guarantees this is the only live reference (see the Sync impl).
    let r = f(unsafe { &mut *POOL.0.get() });
    BUSY.store(false, Ordering::Release);
    Some(r)
}

/// The pool's counters.
pub fn pool_stats() -> PoolStats {
    with_pool(|p| p.stats).unwrap_or_default()
}

/// Start a new host-level peak measurement from the current level.
pub fn reset_peak() {
    let _ = with_pool(|p| p.stats.host_peak = p.stats.host_pages);
}

/// Give every cached page (and the rest of the current chunk) back to the host, and send the
/// queued `munmap`s.
pub fn flush() {
    let _ = with_pool(|p| {
        if p.chunk_next < p.chunk_end {
            let (b, n) = (p.chunk_next, (p.chunk_end - p.chunk_next) / PAGE);
            p.chunk_next = p.chunk_end;
            p.queue(b, n);
        }
        p.evict(0);
        p.send(None);
    });
}

impl Pool {
    /// `pages` contiguous pages, zeroed if `zeroed` (fresh chunk pages always are); `None`
    /// when the host refuses.
    fn take(&mut self, pages: usize, zeroed: bool) -> Option<usize> {
        if pages == 0 {
            return None;
        }
        // The newest exact run, else the smallest larger one (split: the rest stays cached).
        let mut best: Option<usize> = None;
        for i in (0..self.ncache).rev() {
            let n = self.cache[i].1;
            if n == pages {
                best = Some(i);
                break;
            }
            if n > pages && best.is_none_or(|b| self.cache[b].1 > n) {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            let (b, n) = self.cache[i];
            if n == pages {
                self.ncache -= 1;
                self.cache.copy_within(i + 1..=self.ncache, i);
            } else {
                self.cache[i] = (b + pages * PAGE, n - pages);
            }
            self.cached_pages -= pages;
            if zeroed {
                let t0 = rdtsc();
                zero(b, pages);
                ZERO_CYCLES.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
            }
            self.stats.reused += 1;
            return Some(b);
        }
        if pages <= CHUNK_PAGES / 4 {
            if self.chunk_end - self.chunk_next < pages * PAGE {
                // Start a new chunk; the rest of the old one is cached.
                if self.chunk_next < self.chunk_end {
                    let (b, n) = (self.chunk_next, (self.chunk_end - self.chunk_next) / PAGE);
                    self.chunk_next = self.chunk_end;
                    self.give(b, n);
                }
                let b = self.send(Some(CHUNK_PAGES))?;
                self.chunk_next = b;
                self.chunk_end = b + CHUNK_PAGES * PAGE;
            }
            let b = self.chunk_next;
            self.chunk_next += pages * PAGE;
            return Some(b);
        }
        self.send(Some(pages))
    }

    /// Take back `pages` pages at `base` into the cache; over budget, unmap the oldest runs.
    fn give(&mut self, base: usize, pages: usize) {
        self.stats.gives[if pages == 1 {
            0
        } else if pages < 16 {
            1
        } else {
            2
        }] += 1;
        // A run next to a cached one joins it (a heap's teardown gives its pages back one
        // at a time): fewer runs, so the cache is not evicted for want of slots (each
        // eviction is an exit and a flush of KVM's shadow page tables). Adjacent runs lie in
        // one host region (see `evict`). Newest runs first; at most CACHE_CAP compares.
        if pages <= CACHE_PAGES / 2 && self.cached_pages + pages <= CACHE_PAGES {
            let next_to =
                |&(b, n): &(usize, usize)| b + n * PAGE == base || base + pages * PAGE == b;
            if let Some(i) = self.cache[..self.ncache].iter().rposition(next_to) {
                let (b, n) = self.cache[i];
                self.cache[i] = (b.min(base), n + pages);
                self.cached_pages += pages;
                return;
            }
        }
        if self.ncache == CACHE_CAP || self.cached_pages + pages > CACHE_PAGES {
            self.evict(CACHE_PAGES / 4);
        }
        if pages > CACHE_PAGES / 2 || self.ncache == CACHE_CAP {
            // Queued, not sent: it goes with the next exit (an `mmap`, a full queue or a
            // flush), so a heap returning several runs at once pays one exit.
            self.queue(base, pages);
            return;
        }
        self.cache[self.ncache] = (base, pages);
        self.ncache += 1;
        self.cached_pages += pages;
    }

    /// Unmap the oldest cached runs until at most `keep` pages (and half the slots) remain.
    /// Adjacent runs are merged first (they lie in one host region: regions are only split by
    /// `munmap`, and the host leaves a guard page between regions), so a big eviction is a few
    /// requests in one exit, and KVM's shadow page tables are flushed once.
    fn evict(&mut self, keep: usize) {
        let mut k = 0;
        while k < self.ncache && (self.cached_pages > keep || self.ncache - k > CACHE_CAP / 2) {
            self.cached_pages -= self.cache[k].1;
            k += 1;
        }
        if k == 0 {
            return;
        }
        self.stats.evictions += 1;
        let mut out = [(0usize, 0usize); CACHE_CAP];
        out[..k].copy_from_slice(&self.cache[..k]);
        self.cache.copy_within(k..self.ncache, 0);
        self.ncache -= k;
        let out = &mut out[..k];
        out.sort_unstable_by_key(|r| r.0);
        let (mut b, mut n) = out[0];
        for &(b2, n2) in out[1..].iter() {
            if b2 == b + n * PAGE {
                n += n2;
            } else {
                self.queue(b, n);
                (b, n) = (b2, n2);
            }
        }
        self.queue(b, n);
        self.send(None);
    }

    /// Queue a `munmap`; sends the queue when it is full.
    fn queue(&mut self, base: usize, pages: usize) {
        if self.npending == MAX_PENDING {
            self.send(None);
        }
        self.pending[self.npending] = (base, pages);
        self.npending += 1;
    }

    /// One exit: the queued `munmap`s, then (if `map` is given) an `mmap` of that many
    /// pages, whose base is returned. Flushes the TLB if anything was unmapped.
    fn send(&mut self, map: Option<usize>) -> Option<usize> {
        let reqs = &mut self.reqs;
        let n = self.npending;
        for (r, &(b, p)) in reqs.iter_mut().zip(&self.pending[..n]) {
            *r = Request::new(Call::Munmap, [b as u64, (p * PAGE) as u64, 0, 0, 0]);
        }
        let mut count = n;
        if let Some(pages) = map {
            reqs[count] = Request::new(
                Call::Mmap,
                [
                    (pages * PAGE) as u64,
                    prot::READ | prot::WRITE | prot::USER,
                    zone::ANY,
                    map::POPULATE,
                    0,
                ],
            );
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let t0 = rdtsc();
        hc::batch(&mut reqs[..count]);
        HC_CYCLES.fetch_add(rdtsc().wrapping_sub(t0), Ordering::Relaxed);
        self.stats.exits += 1;
        let mut lo = usize::MAX;
        let mut hi = 0;
        for (r, &(b, p)) in reqs[..n].iter().zip(&self.pending[..n]) {
            self.stats.munmaps += 1;
            if hc::result(r).is_ok() {
                self.stats.host_pages = self.stats.host_pages.saturating_sub(p);
            } else {
                self.stats.errors += 1;
            }
            lo = lo.min(b);
            hi = hi.max(b + p * PAGE);
        }
        self.npending = 0;
        if n > 0 {
            hc::flush_range(lo as u64, (hi - lo) as u64);
        }
        let pages = map?;
        self.stats.mmaps += 1;
        match hc::result(&reqs[n]) {
            Ok(gva) => {
                self.stats.host_pages += pages;
                self.stats.host_peak = self.stats.host_peak.max(self.stats.host_pages);
                Some(gva as usize)
            }
            Err(_) => {
                self.stats.errors += 1;
                None
            }
        }
    }
}

/// Zero `pages` pages at `base` (pages this pool owns).
fn zero(base: usize, pages: usize) {
    // SAFETY: `base` is a page run the pool took back from a heap: still mapped read/write
    // and owned by nobody until it is handed out after this call.
    unsafe {
        core::ptr::write_bytes(
            core::ptr::with_exposed_provenance_mut::<u8>(base),
            0,
            pages * PAGE,
        )
    };
}
