//! In-guest heap figures for `memvisor bench` (scenario `heap-bench`, ring 3, rdtsc):
//!
//! * `bench.heap_pair_<heap>_<size>` — cycles of one alloc + free of a `size`-byte object
//!   (median over batches), sizes 16 … 16384, on every heap;
//! * `bench.heap_batch_<heap>_<size>` — cycles per operation of 256 allocations then 256
//!   frees (in allocation order);
//!
//!   both in rounds interleaved across the heaps ([`heap_figures`]);
//! * for every trace of the blob the host mapped and every heap:
//!   `bench.heap_replay_<trace>_<heap>_ops` (events per second of the timed pass),
//!   `…_eff_bp` (efficiency in basis points), `…_errors`.

use super::peers::{self, BuddyHeap, Heap, LlHeap, MemsHeap, PfHeap, TalcHeap, HEAPS};
use super::replay;
use super::source::{self, Acct};
use super::strong_peers::{DlHeap, RlsfHeap};
use crate::{boot, hc, println};
use core::alloc::Layout;
use core::fmt::Write;
use memvisor_abi::flags;

static BENCH_ACCT: Acct = Acct::new();
/// Extra interleaved timed passes of memvisor and the peers of its targets per trace.
const ROUNDS: usize = 6;
/// The heaps of the replay targets (memvisor, talc, and the stronger peers).
const TIMED: [&str; 4] = ["memvisor", "talc", "rlsf", "dlmalloc"];
/// Object sizes of the alloc + free figures.
pub const SIZES: [usize; 6] = [16, 64, 256, 1024, 4096, 16384];

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (allowed in ring 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn record(name: core::fmt::Arguments, value: u64) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "bench.{}={}", name, value);
    hc::record(line.as_str());
}

/// (pair cycles, batch cycles per op) for `size` on `h`.
fn figures<H: Heap>(h: &mut H, size: usize, quick: bool) -> (u64, u64) {
    let Ok(l) = Layout::from_size_align(size, 8) else {
        return (0, 0);
    };
    let (batches, per) = if quick { (5, 200) } else { (15, 2000) };
    // Warm up (maps the first pages).
    if let Some(p) = h.alloc(l) {
        h.dealloc(p, l);
    }
    let mut v = [0u64; 15];
    for slot in v.iter_mut().take(batches) {
        let t0 = rdtsc();
        for _ in 0..per {
            if let Some(p) = h.alloc(l) {
                h.dealloc(core::hint::black_box(p), l);
            }
        }
        *slot = (rdtsc() - t0) / per;
    }
    v[..batches].sort_unstable();
    let pair = v[batches / 2];
    const N: usize = 256;
    let mut ptrs = [None; N];
    for slot in v.iter_mut().take(batches) {
        let t0 = rdtsc();
        for q in ptrs.iter_mut() {
            *q = h.alloc(l);
        }
        for q in ptrs.iter_mut() {
            if let Some(p) = q.take() {
                h.dealloc(p, l);
            }
        }
        *slot = (rdtsc() - t0) / (2 * N as u64);
    }
    v[..batches].sort_unstable();
    (pair, v[batches / 2])
}

/// Rounds of the alloc + free figures (each heap once per round, in a rotating order).
const FIGURE_ROUNDS: usize = 3;

/// The alloc + free figures of every heap at every size of [`SIZES`], **interleaved by
/// rounds**: one instance of each heap lives through all sizes; for each size, round `r` runs
/// [`figures`] (warm-up, then its samples back to back, as a program in a steady state would
/// see the heap) on every heap in the order `r, r + 1, …` (mod the heap count), so a burst of
/// load on the shared host does not fall on one heap's turn only; the median of the
/// [`FIGURE_ROUNDS`] rounds counts. (Interleaving sample by sample instead measures each
/// sample cold: the other heaps' page returns flush KVM's shadow page tables in between.)
fn heap_figures(quick: bool) {
    let a = &BENCH_ACCT;
    let (mut pf, mut mems, mut mv) = (PfHeap::new(a), MemsHeap::new(a), peers::memvisor(a));
    let (mut talc, mut ll, mut buddy) = (TalcHeap::new(a), LlHeap::new(a), BuddyHeap::new(a));
    let (mut rlsf, mut dl) = (RlsfHeap::new(a), DlHeap::new(a));
    const H: usize = HEAPS.len();
    for s in SIZES {
        // fig[r][i]: round r of heap HEAPS[i].
        let mut fig = [[(0u64, 0u64); H]; FIGURE_ROUNDS];
        for (r, round) in fig.iter_mut().enumerate() {
            for k in 0..H {
                let i = (k + r) % H;
                round[i] = match HEAPS[i] {
                    "page-family" => figures(&mut pf, s, quick),
                    "mems" => figures(&mut mems, s, quick),
                    "memvisor" => figures(&mut mv, s, quick),
                    "talc" => figures(&mut talc, s, quick),
                    "linked-list" => figures(&mut ll, s, quick),
                    "buddy" => figures(&mut buddy, s, quick),
                    "rlsf" => figures(&mut rlsf, s, quick),
                    "dlmalloc" => figures(&mut dl, s, quick),
                    _ => (0, 0),
                };
            }
        }
        for (i, name) in HEAPS.iter().enumerate() {
            let mut pair = fig.map(|round| round[i].0);
            let mut batch = fig.map(|round| round[i].1);
            pair.sort_unstable();
            batch.sort_unstable();
            let mid = FIGURE_ROUNDS / 2;
            record(format_args!("heap_pair_{}_{}", name, s), pair[mid]);
            record(format_args!("heap_batch_{}_{}", name, s), batch[mid]);
        }
    }
    drop((pf, mems, mv, talc, ll, buddy, rlsf, dl));
    source::flush();
}

/// Ring-3 entry of `heap-bench`.
pub extern "C" fn run_user(_: u64) -> u64 {
    let info = boot();
    let quick = info.flags & flags::QUICK != 0;
    heap_figures(quick);
    let mut errors = 0;
    for t in replay::traces(info.arg[0], info.arg[1]) {
        let mut outs = [None; HEAPS.len()];
        for (i, name) in HEAPS.iter().enumerate() {
            // Quick mode: only the heaps the targets compare.
            if quick && !TIMED.contains(name) {
                continue;
            }
            outs[i] = replay::replay(&t, i);
        }
        // The host is shared and noisy: time memvisor and its targets' peers again,
        // interleaved, and keep each one's fastest pass.
        for _ in 0..if quick { 2 } else { ROUNDS } {
            for name in TIMED {
                let Some(i) = HEAPS.iter().position(|h| *h == name) else {
                    continue;
                };
                if let (Some(c), Some(o)) = (replay::time_once(&t, i), outs[i].as_mut()) {
                    o.cycles = o.cycles.min(c);
                }
            }
        }
        for (name, o) in HEAPS.iter().zip(outs.iter()) {
            let Some(o) = o else {
                continue;
            };
            println!(
                "guest: heap-bench: {} on {}: {} ops/s, efficiency {} bp, {} errors",
                t.name,
                name,
                o.ops_per_sec(),
                o.efficiency_bp(),
                o.errors
            );
            record(
                format_args!("heap_replay_{}_{}_ops", t.name, name),
                o.ops_per_sec(),
            );
            record(
                format_args!("heap_replay_{}_{}_eff_bp", t.name, name),
                o.efficiency_bp(),
            );
            record(
                format_args!("heap_replay_{}_{}_errors", t.name, name),
                o.errors as u64,
            );
            errors += o.errors;
        }
    }
    u64::from(errors != 0)
}
