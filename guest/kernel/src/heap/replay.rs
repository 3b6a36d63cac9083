//! Trace replay (`memvisor replay TRACE --heap NAME`): the host parses and validates a trace
//! (`src/replay.rs`), encodes it and maps it read-only at a fixed GVA; `BootInfo.arg` = `[GVA,
//! length, heap id, 0]`. The guest replays it on the named heap ([`super::peers::HEAPS`]).
//!
//! # Blob (little endian, 8-byte aligned; one or more traces back to back)
//! ```text
//! +0   magic "MVTRACE1"      +8  events (u64)     +16 ids (u64: largest id + 1)
//! +24  name length (u64)     +32 name, padded to 8 bytes
//! then one u64 per event: bits 63..62 kind (0 alloc, 1 free, 2 realloc), 61..32 id,
//! 31..0 size (the new size for realloc, 0 for free)
//! ```
//!
//! # Two passes on fresh heaps
//! 1. **Checked**: every block is filled with a pattern derived from its id (a splitmix64
//!    seed, then `seed + i·φ` per 8-byte word) and verified before it is freed or
//!    reallocated, and its prefix again after a realloc (contents must survive); blocks still
//!    live at the end are verified too. An overlap or a corruption shows up as a mismatch,
//!    reported with the event's index (the host turns it into a line number). This pass
//!    also measures `peak_live_bytes` (sum of requested sizes) and `peak_mapped_bytes` (most
//!    pages the heap held from the page source at once, metadata included).
//! 2. **Timed**: the same events without the pattern work, between two `rdtsc`s, on a fresh
//!    heap each time, [`TIMED_RUNS`] times; `ops_per_sec` = events / the fastest time (using
//!    `BootInfo.tsc_khz`). The heap's own page-source hypercalls are inside the timed window.
//!
//! Every allocation asks for alignment 8 (size 0 is served as 1 byte). Results go to the host
//! as `replay.KEY=VALUE` records.

use super::peers::{self, BuddyHeap, Heap, LlHeap, MemsHeap, PfHeap, TalcHeap, HEAPS};
use super::source::{self, Acct};
use super::strong_peers::{DlHeap, RlsfHeap};
use crate::{boot, hc, println};
use core::alloc::Layout;
use core::fmt::Write;
use core::ptr::NonNull;
use memvisor_abi::{map, prot, zone};

/// Blob magic.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MVTRACE1");
/// Alignment of every replayed allocation.
pub const ALIGN: usize = 8;
const PAGE: usize = 4096;

/// One trace of a blob.
#[derive(Clone, Copy)]
pub struct Trace<'a> {
    /// Its name (file stem).
    pub name: &'a str,
    /// Encoded events.
    pub events: &'a [u64],
    /// Largest id + 1.
    pub ids: usize,
}

/// The traces in the blob `[gva, gva + len)` (stops at the first malformed header).
pub fn traces(gva: u64, len: u64) -> impl Iterator<Item = Trace<'static>> {
    let mut off = 0u64;
    core::iter::from_fn(move || {
        let words = |at: u64, n: u64| -> Option<&'static [u64]> {
            let end = at.checked_add(n.checked_mul(8)?)?;
            if end > len || !gva.is_multiple_of(8) {
                return None;
            }
            // SAFETY: the host maps the whole blob read-only at `gva` (8-aligned) for the life
            // of the guest; `[at, end)` lies inside it.
            Some(unsafe { core::slice::from_raw_parts((gva + at) as *const u64, n as usize) })
        };
        let h = words(off, 4)?;
        if h[0] != MAGIC || h[2] > 1 << 30 || h[3] > 256 {
            return None;
        }
        let name_words = h[3].div_ceil(8);
        let name_bytes = words(off + 32, name_words)?;
        // SAFETY: the same blob memory viewed as bytes (u8 has no alignment or validity rules).
        let bytes =
            unsafe { core::slice::from_raw_parts(name_bytes.as_ptr() as *const u8, h[3] as usize) };
        let name = core::str::from_utf8(bytes).unwrap_or("?");
        let ev_at = off + 32 + name_words * 8;
        let events = words(ev_at, h[1])?;
        off = ev_at + h[1] * 8;
        Some(Trace {
            name,
            events,
            ids: h[2] as usize,
        })
    })
}

/// Result of one replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Events replayed.
    pub events: usize,
    /// TSC cycles of the timed pass.
    pub cycles: u64,
    /// Most requested bytes live at once.
    pub peak_live: usize,
    /// Most bytes the heap held from the page source at once (checked pass).
    pub peak_mapped: usize,
    /// Most bytes the page source held from the host at once (heap + the source's caches).
    pub peak_source: usize,
    /// Pattern mismatches, failed allocations, bad events.
    pub errors: usize,
    /// The first error: event index and what.
    pub first_error: Option<(usize, &'static str)>,
    /// Frees the heap itself refused.
    pub refused: usize,
    /// Page-source exits during the timed pass.
    pub exits: u64,
    /// TSC cycles of the timed pass spent in the page source (hypercalls, pool, zeroing).
    pub source_cycles: u64,
    /// Part of `source_cycles` zeroing reused pages.
    pub zero_cycles: u64,
    /// Part of `source_cycles` in hypercall exits.
    pub hc_cycles: u64,
    /// The page-return policy's counters after the checked pass (memvisor only): kept MeMS
    /// runs, spare slab pages.
    pub keep: Option<(memvisor_heaps::KeepStats, memvisor_heaps::SlabPageStats)>,
}

impl Outcome {
    /// Operations per second of the timed pass.
    pub fn ops_per_sec(&self) -> u64 {
        let khz = boot().tsc_khz.max(1) as u128;
        (self.events as u128 * khz * 1000 / (self.cycles.max(1) as u128)) as u64
    }

    /// Efficiency in basis points (peak live / peak mapped × 10000).
    pub fn efficiency_bp(&self) -> u64 {
        (self.peak_live as u128 * 10000 / self.peak_mapped.max(1) as u128) as u64
    }
}

#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD clear: allowed in ring 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[inline(always)]
fn seed(id: usize) -> u64 {
    let mut z = (id as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// Fill `[p + from, p + len)` with block `id`'s pattern (`from` a multiple of 8).
#[inline]
fn fill(p: usize, from: usize, len: usize, id: usize) {
    let s = seed(id);
    let words = len / 8;
    let mut w = s.wrapping_add(STEP.wrapping_mul((from / 8) as u64));
    for i in from / 8..words {
        // SAFETY: the block at `p` is live and at least `len` bytes long, 8-byte aligned.
        unsafe { ((p + i * 8) as *mut u64).write(w) };
        w = w.wrapping_add(STEP);
    }
    let tail = s
        .wrapping_add(STEP.wrapping_mul(words as u64))
        .to_le_bytes();
    for (i, b) in tail.iter().enumerate().take(len % 8) {
        if words * 8 + i >= from {
            // SAFETY: inside the block.
            unsafe { ((p + words * 8 + i) as *mut u8).write(*b) };
        }
    }
}

/// Does `[p, p + len)` hold block `id`'s pattern?
#[inline]
fn check(p: usize, len: usize, id: usize) -> bool {
    let s = seed(id);
    let words = len / 8;
    let mut w = s;
    for i in 0..words {
        // SAFETY: the block at `p` is live and at least `len` bytes long, 8-byte aligned.
        if unsafe { ((p + i * 8) as *const u64).read() } != w {
            return false;
        }
        w = w.wrapping_add(STEP);
    }
    let tail = w.to_le_bytes();
    (0..len % 8).all(|i| {
        // SAFETY: inside the block.
        unsafe { ((p + words * 8 + i) as *const u8).read() == tail[i] }
    })
}

/// Per-id state of a replay: block address and size (in memory mapped for the replay only,
/// not counted against any heap).
struct Table {
    base: usize,
    bytes: usize,
    n: usize,
}

impl Table {
    fn new(n: usize) -> Option<Table> {
        let bytes = (n.max(1) * 16).div_ceil(PAGE) * PAGE;
        let base = hc::mmap(
            bytes as u64,
            prot::READ | prot::WRITE | prot::USER,
            zone::ANY,
            map::POPULATE,
        )
        .ok()? as usize;
        Some(Table { base, bytes, n })
    }

    #[inline(always)]
    fn get(&self, id: usize) -> (usize, usize) {
        if id >= self.n {
            return (0, 0);
        }
        // SAFETY: id < n: inside the table's zeroed, mapped pages.
        unsafe {
            let e = (self.base + id * 16) as *const usize;
            (e.read(), e.add(1).read())
        }
    }

    #[inline(always)]
    fn set(&mut self, id: usize, p: usize, size: usize) {
        if id < self.n {
            // SAFETY: as in `get`.
            unsafe {
                let e = (self.base + id * 16) as *mut usize;
                e.write(p);
                e.add(1).write(size);
            }
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = hc::munmap(self.base as u64, self.bytes as u64);
    }
}

#[inline(always)]
fn decode(e: u64) -> (u64, usize, usize) {
    (
        e >> 62,
        ((e >> 32) & 0x3fff_ffff) as usize,
        (e & 0xffff_ffff) as usize,
    )
}

#[inline(always)]
fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.max(1), ALIGN).ok()
}

/// The checked pass. Returns (peak live, errors, first error, refused).
fn checked<H: Heap>(h: &mut H, t: &Trace, out: &mut Outcome) {
    let Some(mut tab) = Table::new(t.ids) else {
        out.errors += 1;
        out.first_error = Some((0, "cannot map the id table"));
        return;
    };
    let err = |out: &mut Outcome, i: usize, what: &'static str| {
        out.errors += 1;
        if out.first_error.is_none() {
            out.first_error = Some((i, what));
        }
    };
    let (mut live, mut peak) = (0usize, 0usize);
    for (i, &e) in t.events.iter().enumerate() {
        let (kind, id, size) = decode(e);
        match kind {
            0 => {
                if tab.get(id).0 != 0 || id >= t.ids {
                    err(out, i, "id allocated twice or out of range");
                    continue;
                }
                let Some(p) = layout(size).and_then(|l| h.alloc(l)) else {
                    err(out, i, "allocation failed");
                    continue;
                };
                let p = p.as_ptr().expose_provenance();
                fill(p, 0, size, id);
                tab.set(id, p, size);
                live += size;
                peak = peak.max(live);
            }
            1 | 2 => {
                let (p, old) = tab.get(id);
                let (Some(ptr), Some(l)) = (
                    NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(p)),
                    layout(old),
                ) else {
                    err(out, i, "unknown or freed id");
                    continue;
                };
                if !check(p, old, id) {
                    err(
                        out,
                        i,
                        "pattern mismatch before free/realloc (overlap or corruption)",
                    );
                }
                if kind == 1 {
                    h.dealloc(ptr, l);
                    tab.set(id, 0, 0);
                    live -= old;
                    continue;
                }
                let Some(q) = h.realloc(ptr, l, size.max(1)) else {
                    err(out, i, "realloc failed");
                    continue;
                };
                let q = q.as_ptr().expose_provenance();
                if !check(q, old.min(size), id) {
                    err(out, i, "realloc did not preserve the contents");
                }
                if size > old {
                    fill(q, old & !7, size, id);
                }
                tab.set(id, q, size);
                live = live - old + size;
                peak = peak.max(live);
            }
            _ => err(out, i, "bad event kind"),
        }
    }
    // Blocks still live at the end must still hold their patterns.
    for id in 0..t.ids {
        let (p, s) = tab.get(id);
        if p != 0 && !check(p, s, id) {
            err(
                out,
                t.events.len(),
                "pattern mismatch of a block live at the end",
            );
        }
    }
    out.peak_live = peak;
}

/// The timed pass: the events only.
fn timed<H: Heap>(h: &mut H, t: &Trace) -> u64 {
    let Some(mut tab) = Table::new(t.ids) else {
        return 0;
    };
    let t0 = rdtsc();
    for &e in t.events {
        let (kind, id, size) = decode(e);
        if kind == 0 {
            if let Some(p) = layout(size).and_then(|l| h.alloc(l)) {
                tab.set(id, p.as_ptr().expose_provenance(), size);
            }
            continue;
        }
        let (p, old) = tab.get(id);
        let (Some(ptr), Some(l)) = (
            NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(p)),
            layout(old),
        ) else {
            continue;
        };
        if kind == 1 {
            h.dealloc(ptr, l);
            tab.set(id, 0, 0);
        } else if let Some(q) = h.realloc(ptr, l, size.max(1)) {
            tab.set(id, q.as_ptr().expose_provenance(), size);
        }
    }
    rdtsc() - t0
}

/// Timed passes per replay; the fastest counts (the host is shared and noisy).
pub const TIMED_RUNS: usize = 3;

/// Pages of the heap under replay.
static REPLAY_ACCT: Acct = Acct::new();

/// `Some(run(|| a fresh heap named HEAPS[heap], t))`, or `None` for an unknown heap id; every
/// heap counts its pages in [`REPLAY_ACCT`].
macro_rules! with_heap {
    ($heap:expr, $run:ident, $t:expr) => {{
        let a = &REPLAY_ACCT;
        Some(match *HEAPS.get($heap)? {
            "page-family" => $run(|| PfHeap::new(a), $t),
            "mems" => $run(|| MemsHeap::new(a), $t),
            "memvisor" => $run(|| peers::memvisor(a), $t),
            "talc" => $run(|| TalcHeap::new(a), $t),
            "linked-list" => $run(|| LlHeap::new(a), $t),
            "buddy" => $run(|| BuddyHeap::new(a), $t),
            "rlsf" => $run(|| RlsfHeap::new(a), $t),
            "dlmalloc" => $run(|| DlHeap::new(a), $t),
            _ => return None,
        })
    }};
}

/// Replay `t` on the heap named by `heap` (index into [`HEAPS`]). `None` for an unknown heap.
pub fn replay(t: &Trace, heap: usize) -> Option<Outcome> {
    fn run<H: Heap>(mk: impl Fn() -> H, t: &Trace) -> Outcome {
        let mut out = Outcome {
            events: t.events.len(),
            ..Outcome::default()
        };
        source::flush();
        source::reset_peak();
        REPLAY_ACCT.reset_peak();
        {
            let mut h = mk();
            checked(&mut h, t, &mut out);
            out.refused = h.refused();
            out.keep = h.keep_stats();
        }
        out.peak_mapped = REPLAY_ACCT.peak_pages() * PAGE;
        out.peak_source = source::pool_stats().host_peak * PAGE;
        source::flush();
        out.cycles = u64::MAX;
        for _ in 0..TIMED_RUNS {
            {
                let mut h = mk();
                let before = source::pool_stats().exits;
                let sc = source::SOURCE_CYCLES.load(core::sync::atomic::Ordering::Relaxed);
                let zc = source::ZERO_CYCLES.load(core::sync::atomic::Ordering::Relaxed);
                let hcc = source::HC_CYCLES.load(core::sync::atomic::Ordering::Relaxed);
                let c = timed(&mut h, t);
                if c < out.cycles {
                    out.cycles = c;
                    out.exits = source::pool_stats().exits - before;
                    out.source_cycles =
                        source::SOURCE_CYCLES.load(core::sync::atomic::Ordering::Relaxed) - sc;
                    out.zero_cycles =
                        source::ZERO_CYCLES.load(core::sync::atomic::Ordering::Relaxed) - zc;
                    out.hc_cycles =
                        source::HC_CYCLES.load(core::sync::atomic::Ordering::Relaxed) - hcc;
                }
            }
            source::flush();
        }
        out
    }
    with_heap!(heap, run, t)
}

/// The checked pass alone of `t` on a fresh instance of heap `heap` (no timing): events,
/// peak live and mapped bytes, errors, refused frees.
pub fn check_only(t: &Trace, heap: usize) -> Option<Outcome> {
    fn run<H: Heap>(mk: impl Fn() -> H, t: &Trace) -> Outcome {
        let mut out = Outcome {
            events: t.events.len(),
            ..Outcome::default()
        };
        source::flush();
        source::reset_peak();
        REPLAY_ACCT.reset_peak();
        {
            let mut h = mk();
            checked(&mut h, t, &mut out);
            out.refused = h.refused();
            out.keep = h.keep_stats();
        }
        out.peak_mapped = REPLAY_ACCT.peak_pages() * PAGE;
        out.peak_source = source::pool_stats().host_peak * PAGE;
        source::flush();
        out
    }
    with_heap!(heap, run, t)
}

/// One timed pass of `t` on a fresh instance of heap `heap`: (cycles, page-source exits
/// during the pass). The heap is dropped and the pool flushed after the pass, outside it.
pub fn time_with_exits(t: &Trace, heap: usize) -> Option<(u64, u64)> {
    fn run<H: Heap>(mk: impl Fn() -> H, t: &Trace) -> (u64, u64) {
        let r = {
            let mut h = mk();
            let before = source::pool_stats().exits;
            let c = timed(&mut h, t);
            (c, source::pool_stats().exits - before)
        };
        source::flush();
        r
    }
    with_heap!(heap, run, t)
}

/// Cycles of one timed pass of `t` on a fresh instance of heap `heap` (`None`: unknown heap).
pub fn time_once(t: &Trace, heap: usize) -> Option<u64> {
    fn run<H: Heap>(mk: impl Fn() -> H, t: &Trace) -> u64 {
        let c = {
            let mut h = mk();
            timed(&mut h, t)
        };
        source::flush();
        c
    }
    with_heap!(heap, run, t)
}

/// The page-return policy's records (`keep_*` for kept MeMS runs and parked MeMS blocks,
/// `slab_spare_*` for spare slab pages) through `rec`.
pub fn rec_keep(
    mut rec: impl FnMut(&str, u64),
    (k, s): &(memvisor_heaps::KeepStats, memvisor_heaps::SlabPageStats),
) {
    rec(
        "keep_bound_pages",
        memvisor_heaps::memvisor::KEEP_MAX_PAGES as u64,
    );
    rec("keep_peak_pages", k.peak_kept_pages as u64);
    rec("keep_pages_at_end", k.kept_pages as u64);
    rec("keep_kept_runs", k.kept_runs);
    rec("keep_reused_runs", k.reused_runs);
    rec("keep_returned_pages", k.returned_pages);
    rec("keep_return_batches", k.return_batches);
    rec("keep_tail_returns", k.tail_returns);
    rec("keep_tail_returned_pages", k.tail_returned_pages);
    rec("keep_parked_bound_blocks", memvisor_heaps::memvisor::PARK as u64);
    rec("keep_parked_blocks", k.parked_blocks);
    rec("keep_unparked_blocks", k.unparked_blocks);
    rec("keep_parked_peak_pages", k.peak_parked_pages as u64);
    rec("keep_parked_pages_at_end", k.parked_pages as u64);
    rec(
        "slab_spare_bound_pages",
        memvisor_heaps::memvisor::SPARE_SLABS as u64,
    );
    rec("slab_spare_peak_pages", s.peak_spare_pages as u64);
    rec("slab_spare_pages_at_end", s.spare_pages as u64);
    rec("slab_spare_reused_pages", s.reused_pages);
    rec("slab_spare_returned_pages", s.returned_pages);
    rec("slab_spare_return_batches", s.return_batches);
}

fn rec(key: &str, v: impl core::fmt::Display) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "replay.{}={}", key, v);
    hc::record(line.as_str());
}

/// Ring-3 entry of the `replay` scenario.
pub extern "C" fn run_user(_: u64) -> u64 {
    let info = boot();
    let (gva, len, heap) = (info.arg[0], info.arg[1], info.arg[2] as usize);
    if info.arg[3] & super::replay_many::MANY != 0 {
        return super::replay_many::run(gva, len, info.arg[2], info.arg[3]);
    }
    let Some(name) = HEAPS.get(heap) else {
        println!("replay: unknown heap id {}", heap);
        return 2;
    };
    let Some(t) = traces(gva, len).next() else {
        println!("replay: no trace at {:#x} ({} bytes)", gva, len);
        return 2;
    };
    println!(
        "guest: replaying {} ({} events, {} ids) on heap {}",
        t.name,
        t.events.len(),
        t.ids,
        name
    );
    let Some(o) = replay(&t, heap) else {
        return 2;
    };
    let bp = o.efficiency_bp();
    println!(
        "guest: {} on {}: {} events, {} ops/s, peak live {} B, peak mapped {} B, efficiency {}.{:04}, errors {}",
        t.name,
        name,
        o.events,
        o.ops_per_sec(),
        o.peak_live,
        o.peak_mapped,
        bp / 10000,
        bp % 10000,
        o.errors
    );
    rec("heap", name);
    rec("trace", t.name);
    rec("events", o.events);
    rec("ops_per_sec", o.ops_per_sec());
    rec("peak_live_bytes", o.peak_live);
    rec("peak_mapped_bytes", o.peak_mapped);
    let mut e = crate::console::Line::new();
    let _ = write!(e, "{}.{:04}", bp / 10000, bp % 10000);
    rec("efficiency", e.as_str());
    rec("errors", o.errors);
    rec("cycles", o.cycles);
    rec("peak_source_bytes", o.peak_source);
    rec("refused_frees", o.refused);
    rec("source_exits", o.exits);
    rec("runs", TIMED_RUNS);
    if let Some(k) = o.keep {
        rec_keep(rec, &k);
    }
    rec("source_cycles", o.source_cycles);
    rec("source_zero_cycles", o.zero_cycles);
    rec("source_hc_cycles", o.hc_cycles);
    let ps = source::pool_stats();
    rec("pool_mmaps", ps.mmaps);
    rec("pool_munmaps", ps.munmaps);
    rec("pool_exits", ps.exits);
    rec("pool_reused", ps.reused);
    rec("pool_evictions", ps.evictions);
    let mut g = crate::console::Line::new();
    let _ = write!(g, "{} {} {}", ps.gives[0], ps.gives[1], ps.gives[2]);
    rec("pool_gives", g.as_str());
    if let Some((i, what)) = o.first_error {
        let mut line = crate::console::Line::new();
        let _ = write!(line, "{} {}", i, what);
        rec("first_error", line.as_str());
    }
    u64::from(o.errors != 0)
}
