//! In-guest heap figures for `memvisor bench` (scenario `heap-bench`, ring 3, rdtsc):
//!
//! * `bench.heap_pair_<heap>_<size>` — cycles of one alloc + free of a `size`-byte object
//!   (median over batches), sizes 16 … 16384, on every heap;
//! * `bench.heap_batch_<heap>_<size>` — cycles per operation of 256 allocations then 256
//!   frees (in allocation order);
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

fn heap_figures(name: &str, quick: bool) {
    fn run<H: Heap>(mut h: H, name: &str, quick: bool) {
        for s in SIZES {
            let (pair, batch) = figures(&mut h, s, quick);
            record(format_args!("heap_pair_{}_{}", name, s), pair);
            record(format_args!("heap_batch_{}_{}", name, s), batch);
        }
    }
    let a = &BENCH_ACCT;
    match name {
        "page-family" => run(PfHeap::new(a), name, quick),
        "mems" => run(MemsHeap::new(a), name, quick),
        "memvisor" => run(peers::memvisor(a), name, quick),
        "talc" => run(TalcHeap::new(a), name, quick),
        "linked-list" => run(LlHeap::new(a), name, quick),
        "buddy" => run(BuddyHeap::new(a), name, quick),
        "rlsf" => run(RlsfHeap::new(a), name, quick),
        "dlmalloc" => run(DlHeap::new(a), name, quick),
        _ => {}
    }
    source::flush();
}

/// Ring-3 entry of `heap-bench`.
pub extern "C" fn run_user(_: u64) -> u64 {
    let info = boot();
    let quick = info.flags & flags::QUICK != 0;
    for name in HEAPS {
        heap_figures(name, quick);
    }
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
