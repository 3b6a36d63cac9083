//! Exhaustion (mmap until `NoMem` in any zone, then DMA; lazy faults until `NoMem`; then
//! everything given back) and the final cleanup, each checked against the host's stats.

use super::ctx::{check_stats, Ctx};
use super::doorbell::{send, status_of, FLOOD, NOP, STATS};
use super::model::Expect;
use super::{HUGE, NB, PAGE, RW};
use crate::{boot, hc, println};
use memvisor_abi::{map, zone, Call, Request, Status};

/// mmap until NoMem (any zone, then DMA), lazy faults until NoMem, then free everything.
pub(super) fn exhaust(c: &mut Ctx) {
    let info = *boot();
    // SAFETY: FLOOD is ours (see Shared).
    let flood = unsafe { &mut *FLOOD.0.get() };
    let ram_pages = info.ram_bytes / PAGE;
    let per = (ram_pages / 4096).max(64).next_power_of_two();
    for (z, pages) in [(zone::ANY, per), (zone::DMA, 1)] {
        let mut got = 0usize;
        let mut nomem = false;
        while !nomem && got < flood.len() {
            let n = (flood.len() - got).min(NB);
            let mut reqs = [NOP; NB];
            for r in reqs.iter_mut().take(n) {
                *r = Request::new(Call::Mmap, [pages * PAGE, RW, z, map::POPULATE, 0]);
            }
            send(&mut reqs[..n]);
            c.t.batches += 1;
            for r in &reqs[..n] {
                c.t.count(r.status);
                match status_of(r.status) {
                    Some(Status::Ok) => {
                        flood[got] = r.value;
                        got += 1;
                    }
                    Some(Status::NoMem) => nomem = true,
                    _ => c.mismatch("flood", r, Expect::OkOr(Status::NoMem)),
                }
            }
        }
        if !nomem {
            c.t.mismatches += 1;
            println!(
                "hostile: MISMATCH {} regions of {} pages in zone {} and still no NoMem",
                got, pages, z
            );
        }
        c.t.nomem_regions += got as u64;
        println!(
            "hostile: mmap of {}-page regions in zone {}: NoMem after {} regions ({} MiB)",
            pages,
            z,
            got,
            (got as u64 * pages * PAGE) >> 20
        );
        for part in flood[..got].chunks(NB) {
            let mut reqs = [NOP; NB];
            for (r, &g) in reqs.iter_mut().zip(part) {
                *r = Request::new(Call::Munmap, [g, pages * PAGE, 0, 0, 0]);
            }
            send(&mut reqs[..part.len()]);
            c.t.batches += 1;
            for r in &reqs[..part.len()] {
                c.t.count(r.status);
                if r.status != 0 {
                    c.mismatch("flood munmap", r, Expect::Value(0));
                }
            }
        }
    }
    // A lazy region larger than RAM: back pages until the frames run out.
    let len = (info.ram_bytes + (64 << 20)) & !(HUGE - 1);
    let (st, l) = c.expect(Call::Mmap, [len, RW, zone::ANY, map::LAZY, 0], Status::Ok);
    if st == Status::Ok {
        let mut page = 0u64;
        let mut nomem = false;
        while !nomem && page < len / PAGE {
            let n = (len / PAGE - page).min(NB as u64) as usize;
            let mut reqs = [NOP; NB];
            for (i, r) in reqs.iter_mut().take(n).enumerate() {
                *r = Request::new(Call::LazyFault, [l + (page + i as u64) * PAGE, 6, 0, 0, 0]);
            }
            send(&mut reqs[..n]);
            c.t.batches += 1;
            for r in &reqs[..n] {
                c.t.count(r.status);
                match status_of(r.status) {
                    Some(Status::Ok) => c.t.nomem_lazy_pages += 1,
                    Some(Status::NoMem) => nomem = true,
                    _ => c.mismatch("lazy flood", r, Expect::OkOr(Status::NoMem)),
                }
            }
            page += n as u64;
        }
        if !nomem {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH lazy faults never ran out of frames");
        }
        println!(
            "hostile: lazy faults: NoMem after {} pages ({} MiB)",
            c.t.nomem_lazy_pages,
            (c.t.nomem_lazy_pages * PAGE) >> 20
        );
        let mut r = [Request::new(Call::Munmap, [l, len, 0, 0, 0])];
        c.batch_exact(&mut r, Status::Ok);
    }
    check_stats(c, "after exhaustion");
}

/// Give back every region the model holds.
pub(super) fn cleanup(c: &mut Ctx) {
    while c.m.n > 0 {
        let n = c.m.n.min(NB);
        let mut reqs = [NOP; NB];
        for (r, g) in reqs.iter_mut().zip(&c.m.r[..n]) {
            *r = Request::new(Call::Munmap, [g.start, g.end - g.start, 0, 0, 0]);
        }
        c.batch(&mut reqs[..n], "cleanup");
        for r in &reqs[..n] {
            hc::flush_range(r.args[0], PAGE);
        }
        if reqs[..n].iter().all(|r| r.status != 0) {
            break;
        }
    }
    check_stats(c, "at the end");
    // SAFETY: STATS is ours.
    let s = unsafe { core::ptr::read_volatile(STATS.0.get()) };
    if s.regions != 0 || s.mapped_frames != 0 {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH {} regions / {} frames left at the end",
            s.regions, s.mapped_frames
        );
    }
}
