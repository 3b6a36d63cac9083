//! The hostile guest (issue 7 §2): attack the hypercall boundary from ring 3.
//!
//! At least 10^6 hypercalls (10^5 with the QUICK flag), batched up to 512 per exit:
//!
//! 1. **Crafted** calls, one at a time, each with the one status the ABI allows: munmap /
//!    mprotect of the kernel image, the stacks and their guards, the page tables (through the
//!    direct map) and the doorbell; unaligned, zero, overflowing, wrapping (past 2^64 and into
//!    the non-canonical hole) and non-canonical ranges; ranges never mapped, partly mapped,
//!    unmapped twice; W+X; zones that do not exist; huge-page splits; lazy faults anywhere;
//!    stats, console and record buffers the host must not read or write; unknown calls and
//!    reserved bits. Rights changes are checked with real accesses (probes).
//! 2. **Bad request blocks**: the doorbell rung with GPAs of no block at all (unaligned, past
//!    RAM, in the MMIO hole, the doorbell and flush-slot pages, page tables, kernel text, u64
//!    extremes) and with headers planted (through the direct map) where a block would run past
//!    the end of RAM or into the page-table pool, or claims more than 512 requests. Planted
//!    headers must come back untouched (`completed == 0`).
//! 3. **Exhaustion**: mmap until `NoMem` (any zone, then DMA), lazy faults until `NoMem`,
//!    then everything is given back and the host's stats agree.
//! 4. **Random** batches of 1–512 requests: random call numbers (unknown ones included),
//!    addresses, lengths, protections, zones, flags, reserved bits, drawn from interesting
//!    values (the guest's own regions and their edges, the kernel, stacks, guards, page
//!    tables, non-canonical and wrapping values) and plain random bits.
//!
//! Every result is judged against a model of what the guest owns (its regions, their lazy
//! pages): the host must give exactly the status the ABI prescribes, or — where the guest
//! cannot know (running out of frames, reading memory outside its regions) — one of the
//! allowed ones. Counts by result are sent as `hostile.KEY=VALUE` records. The scenario exits
//! 0 only if every result was right, no call on the kernel, stacks or page tables succeeded,
//! and everything was given back. The host checks its own invariants after every batch.
//!
//! # Layout
//! `doorbell`: the request block, the doorbell and the memory this scenario owns; `model`:
//! what the guest owns and the result the ABI prescribes for each request; `ctx`: the tally
//! and how results are judged; then the phases in the order [`run_user`] runs them: `crafted`,
//! `bad_blocks`, `exhaust`, `random`, and the final cleanup (in `exhaust`).

mod bad_blocks;
mod crafted;
mod ctx;
mod doorbell;
mod exhaust;
mod model;
mod random;

use crate::{boot, println};
use core::fmt::Write;
use ctx::{Ctx, Tally};
use doorbell::{record, text_gva};
use memvisor_abi::{flags, prot, MAX_BATCH};
use model::{Model, Reg, MAXR};
use random::Rng;

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
const RW: u64 = prot::READ | prot::WRITE | prot::USER;
const NB: usize = MAX_BATCH as usize;
/// GPA of the VMM's flush-slot page (host memory in the MMIO hole, not guest RAM).
const FLUSH_SLOT_GPA: u64 = 0xdfff_f000;
/// Longest line the host accepts for `Record`.
const RECORD_LINE_MAX: u64 = 1024;

/// Ring-3 entry point.
pub extern "C" fn run_user(_: u64) -> u64 {
    let info = *boot();
    let quick = info.flags & flags::QUICK != 0;
    let target = if quick { 100_000 } else { 1_000_000 };
    let seed = if info.arg[0] != 0 {
        info.arg[0]
    } else {
        0x6d65_6d76_6973_6f72
    };
    let mut c = Ctx {
        m: Model {
            r: [Reg::default(); MAXR],
            n: 0,
            zones: [false; 4],
            window: info.heap_window,
        },
        t: Tally {
            by_status: [0; 11],
            calls: 0,
            batches: 0,
            mismatches: 0,
            self_hits: 0,
            bad_rings: 0,
            refused_ok: 0,
            crafted: 0,
            random: 0,
            fault_reports: 0,
            nomem_regions: 0,
            nomem_lazy_pages: 0,
            translate_checked: 0,
            stats_checked: 0,
        },
        rng: Rng(seed | 1),
        quick,
        text: text_gva(),
    };
    println!(
        "hostile: {} hypercalls target (seed {:#x}); {} MiB RAM",
        target,
        seed,
        info.ram_bytes >> 20
    );
    crafted::probe_zones(&mut c);
    crafted::crafted_not_mine(&mut c);
    crafted::crafted_ranges(&mut c);
    println!(
        "hostile: crafted calls done ({} calls, {} mismatches)",
        c.t.calls, c.t.mismatches
    );
    bad_blocks::bad_blocks(&mut c);
    println!(
        "hostile: bad request blocks done ({} rings refused as expected)",
        c.t.refused_ok
    );
    exhaust::exhaust(&mut c);
    random::random_phase(&mut c, target);
    exhaust::cleanup(&mut c);
    let t = &c.t;
    let names = [
        "ok",
        "nosys",
        "inval",
        "nomem",
        "fault",
        "perm",
        "not_mapped",
        "no_zone",
        "skipped",
        "exists",
        "unknown",
    ];
    for (name, &n) in names.iter().zip(&t.by_status) {
        let mut key = crate::console::Line::new();
        let _ = write!(key, "status.{}", name);
        record(key.as_str(), n);
    }
    record("calls", t.calls);
    record("batches", t.batches);
    record("random_calls", t.random);
    record("crafted_calls", t.crafted);
    record("mismatches", t.mismatches);
    record("self_hits", t.self_hits);
    record("bad_rings", t.bad_rings);
    record("planted_refused", t.refused_ok);
    record("nomem_regions", t.nomem_regions);
    record("nomem_lazy_pages", t.nomem_lazy_pages);
    record("stats_checked", t.stats_checked);
    record("quick", c.quick as u64);
    println!(
        "hostile: {} hypercalls in {} batches: {} ok, {} errors; {} mismatches, {} calls on the kernel/stacks/page tables succeeded",
        t.calls,
        t.batches,
        t.by_status[0],
        t.calls - t.by_status[0],
        t.mismatches,
        t.self_hits
    );
    if t.mismatches == 0 && t.self_hits == 0 && t.by_status[10] == 0 && t.calls >= target {
        println!("hostile: every call returned the status the ABI prescribes; exiting 0");
        0
    } else {
        println!("hostile: FAILED");
        1
    }
}
