//! `memvisor replay T1 T2 … --heap H1,H2,…`: several traces on several heaps in one guest run,
//! so that every comparison is made inside one process on one page source (issue 13).
//!
//! `BootInfo.arg` = `[blob GVA, blob length, heap mask, MANY | runs << 8]`: bit `i` of the
//! mask selects `HEAPS[i]`; the blob holds the traces back to back (`replay.rs`). For each
//! trace, every selected heap gets the checked pass (`replay::check_only`: errors, peak live
//! and mapped bytes), then `runs` timed passes each, interleaved (round `r` starts at heap
//! `r mod n`, so no heap always runs first); the median pass counts. Records, per trace `i`
//! (in blob order) and heap name `h`: `replay.i.trace=NAME`, `replay.i.h.KEY=VALUE` with
//! the keys of the single replay (`events`, `ops_per_sec`, `cycles` (median), `peak_live_bytes`,
//! `peak_mapped_bytes`, `efficiency`, `errors`, `first_error`, `refused_frees`,
//! `peak_source_bytes`, `source_exits` (of the median pass)), and `replay.traces=N`.

use super::peers::HEAPS;
use super::replay::{check_only, time_with_exits, traces};
use crate::{boot, hc, println};
use core::fmt::Write;

/// `arg[3]` bit of the several-traces mode.
pub const MANY: u64 = 1;
/// Most timed passes per (trace, heap).
pub const MAX_RUNS: usize = 31;

fn rec(i: usize, heap: &str, key: &str, v: impl core::fmt::Display) {
    let mut line = crate::console::Line::new();
    if heap.is_empty() {
        let _ = write!(line, "replay.{}.{}={}", i, key, v);
    } else {
        let _ = write!(line, "replay.{}.{}.{}={}", i, heap, key, v);
    }
    hc::record(line.as_str());
}

/// Run the several-traces replay; guest exit code 0 when no heap reported an error.
pub fn run(gva: u64, len: u64, mask: u64, mode: u64) -> u64 {
    let runs = ((mode >> 8) as usize).clamp(1, MAX_RUNS);
    let mut heaps = [0usize; HEAPS.len()];
    let mut n = 0;
    for (i, slot) in (0..HEAPS.len()).filter(|i| mask >> i & 1 != 0).zip(0..) {
        heaps[slot] = i;
        n += 1;
    }
    if n == 0 || mask >> HEAPS.len() != 0 {
        println!("replay: bad heap mask {:#x}", mask);
        return 2;
    }
    let heaps = &heaps[..n];
    let khz = boot().tsc_khz.max(1) as u128;
    let mut errors = 0usize;
    let mut count = 0;
    for (ti, t) in traces(gva, len).enumerate() {
        count += 1;
        rec(ti, "", "trace", t.name);
        println!(
            "guest: replaying {} ({} events) on {} heaps, {} timed runs each",
            t.name,
            t.events.len(),
            n,
            runs
        );
        for &h in heaps {
            let Some(o) = check_only(&t, h) else {
                return 2;
            };
            let name = HEAPS[h];
            let bp = o.efficiency_bp();
            let mut e = crate::console::Line::new();
            let _ = write!(e, "{}.{:04}", bp / 10000, bp % 10000);
            rec(ti, name, "events", o.events);
            rec(ti, name, "peak_live_bytes", o.peak_live);
            rec(ti, name, "peak_mapped_bytes", o.peak_mapped);
            rec(ti, name, "efficiency", e.as_str());
            rec(ti, name, "errors", o.errors);
            rec(ti, name, "refused_frees", o.refused);
            rec(ti, name, "peak_source_bytes", o.peak_source);
            if let Some((i, what)) = o.first_error {
                let mut line = crate::console::Line::new();
                let _ = write!(line, "{} {}", i, what);
                rec(ti, name, "first_error", line.as_str());
            }
            if let Some(k) = o.keep {
                super::replay::rec_keep(|key, v| rec(ti, name, key, v), &k);
            }
            errors += o.errors;
        }
        // passes[r][slot]: (cycles, exits) of round r on heaps[slot].
        let mut passes = [[(0u64, 0u64); HEAPS.len()]; MAX_RUNS];
        for (r, round) in passes.iter_mut().take(runs).enumerate() {
            for k in 0..n {
                let slot = (k + r) % n;
                let Some(p) = time_with_exits(&t, heaps[slot]) else {
                    return 2;
                };
                round[slot] = p;
            }
        }
        for (slot, &h) in heaps.iter().enumerate() {
            let mut p = [(0u64, 0u64); MAX_RUNS];
            for (dst, round) in p.iter_mut().zip(passes.iter().take(runs)) {
                *dst = round[slot];
            }
            let p = &mut p[..runs];
            p.sort_unstable();
            let (cycles, exits) = p[runs / 2];
            let ops = (t.events.len() as u128 * khz * 1000 / cycles.max(1) as u128) as u64;
            let name = HEAPS[h];
            rec(ti, name, "cycles", cycles);
            rec(ti, name, "ops_per_sec", ops);
            rec(ti, name, "source_exits", exits);
            rec(ti, name, "runs", runs);
        }
    }
    let mut line = crate::console::Line::new();
    let _ = write!(line, "replay.traces={}", count);
    hc::record(line.as_str());
    u64::from(errors != 0)
}
