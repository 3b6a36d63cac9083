//! Bookkeeping: the [`Tally`] of results, and the [`Ctx`] that sends batches and judges each
//! result against the model (mismatches are counted and the first ones printed), sends
//! crafted calls with one allowed status, and compares the host's stats with the model.

use super::doorbell::{send, stats_gva, status_of, STATS};
use super::model::{Expect, Model};
use super::random::Rng;
use super::NB;
use crate::println;
use memvisor_abi::{prot, Call, Request, Status};

// ---- bookkeeping -------------------------------------------------------------------------

pub(super) struct Tally {
    /// By status: index = -status (0 = ok .. 9 = exists); 10 = unknown status values.
    pub(super) by_status: [u64; 11],
    pub(super) calls: u64,
    pub(super) batches: u64,
    pub(super) mismatches: u64,
    /// munmap/mprotect of the kernel, stacks, guards, page tables or doorbell that succeeded.
    pub(super) self_hits: u64,
    /// Rings with a GPA that is no valid block.
    pub(super) bad_rings: u64,
    /// Planted bad headers found untouched afterwards.
    pub(super) refused_ok: u64,
    pub(super) crafted: u64,
    pub(super) random: u64,
    pub(super) fault_reports: u64,
    pub(super) nomem_regions: u64,
    pub(super) nomem_lazy_pages: u64,
    pub(super) translate_checked: u64,
    pub(super) stats_checked: u64,
}

impl Tally {
    pub(super) fn count(&mut self, raw: i32) {
        self.calls += 1;
        let i = if (-9..=0).contains(&raw) {
            (-raw) as usize
        } else {
            10
        };
        self.by_status[i] += 1;
    }
}

pub(super) struct Ctx {
    pub(super) m: Model,
    pub(super) t: Tally,
    pub(super) rng: Rng,
    pub(super) quick: bool,
    /// Protection of the kernel's text for mprotect "same rights" probes.
    pub(super) text: u64,
}

pub(super) fn name_of(raw: i32) -> &'static str {
    status_of(raw).map_or("unknown", Status::name)
}

impl Ctx {
    pub(super) fn mismatch(&mut self, what: &str, r: &Request, expect: Expect) {
        self.t.mismatches += 1;
        if self.t.mismatches <= 20 {
            println!(
                "hostile: MISMATCH {}: nr {} args [{:#x}, {:#x}, {:#x}, {:#x}] -> {} value {:#x}, expected {:?}",
                what,
                r.nr,
                r.args[0],
                r.args[1],
                r.args[2],
                r.args[3],
                name_of(r.status),
                r.value,
                expect
            );
        }
    }

    pub(super) fn judge(&mut self, what: &str, r: &Request, expect: Expect) -> bool {
        let st = status_of(r.status);
        let ok = match (expect, st) {
            (_, None) => false,
            (Expect::Is(s), Some(g)) => s == g,
            (Expect::Value(v), Some(g)) => g == Status::Ok && r.value == v,
            (Expect::OkOr(s), Some(g)) => g == Status::Ok || g == s,
            (Expect::OkOr2(s1, s2), Some(g)) => g == Status::Ok || g == s1 || g == s2,
            (Expect::Any, Some(_)) => true,
        };
        if !ok {
            self.mismatch(what, r, expect);
        }
        ok
    }

    /// Send a batch, then judge every result in order against the model, applying each.
    pub(super) fn batch(&mut self, reqs: &mut [Request], what: &str) {
        let n = reqs.len().min(NB);
        let done = send(&mut reqs[..n]);
        self.t.batches += 1;
        if done as usize != n {
            self.t.mismatches += 1;
            println!(
                "hostile: MISMATCH {}: host completed {} of {} requests",
                what, done, n
            );
        }
        let mut stats_seen = false;
        for r in reqs[..n].iter() {
            self.t.count(r.status);
            if r.nr == Call::FaultReport as u32 {
                self.t.fault_reports += 1;
            }
            let expect = if stats_seen {
                Expect::Any
            } else {
                self.m.predict(r)
            };
            self.judge(what, r, expect);
            let st = status_of(r.status).unwrap_or(Status::Inval);
            if !self.m.apply(r, st, r.value) {
                self.t.mismatches += 1;
                println!(
                    "hostile: MISMATCH {}: result {:#x} of nr {} overlaps the guest's regions or leaves the window",
                    what, r.value, r.nr
                );
            }
            // A Stats writes guest memory: later requests of the batch may have been changed
            // (never in practice: its buffer is STATS), so they are not judged.
            if r.nr == Call::Stats as u32
                && r.reserved == 0
                && r.args[0] != stats_gva()
                && r.status == 0
            {
                stats_seen = true;
            }
        }
    }

    /// One crafted call with the exact status the ABI prescribes; returns (status, value).
    pub(super) fn expect(&mut self, c: Call, args: [u64; 5], want: Status) -> (Status, u64) {
        let mut r = [Request::new(c, args)];
        self.batch_exact(&mut r, want)
    }

    pub(super) fn batch_exact(&mut self, r: &mut [Request; 1], want: Status) -> (Status, u64) {
        send(r);
        self.t.batches += 1;
        self.t.crafted += 1;
        self.t.count(r[0].status);
        let st = status_of(r[0].status).unwrap_or(Status::Inval);
        if st != want {
            self.mismatch("crafted", &r[0], Expect::Is(want));
        }
        if !self.m.apply(&r[0], st, r[0].value) {
            self.t.mismatches += 1;
        }
        (st, r[0].value)
    }

    /// munmap / mprotect on something that is not the guest's: must be Perm.
    pub(super) fn not_mine(
        &mut self,
        what: &str,
        gva: u64,
        len: u64,
        same_prot: u64,
        munmap: bool,
    ) {
        let mut out = [Status::Ok; 2];
        let calls: &[(Call, u64)] = if munmap {
            &[(Call::Munmap, 0), (Call::Mprotect, same_prot)]
        } else {
            &[(Call::Mprotect, same_prot), (Call::Mprotect, same_prot)]
        };
        for (k, &(c, p)) in calls.iter().enumerate() {
            let mut r = [Request::new(c, [gva, len, p, 0, 0])];
            send(&mut r);
            self.t.batches += 1;
            self.t.crafted += 1;
            self.t.count(r[0].status);
            out[k] = status_of(r[0].status).unwrap_or(Status::Inval);
            if out[k] == Status::Ok {
                self.t.self_hits += 1;
                println!(
                    "hostile: FAILED: {} of {} at {:#x} SUCCEEDED",
                    c.name(),
                    what,
                    gva
                );
            } else if out[k] != Status::Perm {
                self.mismatch(what, &r[0], Expect::Is(Status::Perm));
            }
        }
        // W+X is refused whatever the target.
        self.expect(Call::Mprotect, [gva, len, prot::ALL, 0, 0], Status::Perm);
    }
}

/// Send Stats alone and compare with the model.
pub(super) fn check_stats(c: &mut Ctx, when: &str) {
    let mut r = [Request::new(Call::Stats, [stats_gva(), 0, 0, 0, 0])];
    c.batch_exact(&mut r, Status::Ok);
    // SAFETY: STATS is ours; the host just wrote it.
    let s = unsafe { core::ptr::read_volatile(STATS.0.get()) };
    c.t.stats_checked += 1;
    let regions_ok = s.regions == c.m.n as u64;
    let mapped_ok = c.m.backed_total().is_none_or(|b| b == s.mapped_frames);
    if !regions_ok || !mapped_ok {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH stats {}: host {} regions / {} mapped frames, guest model {} / {:?}",
            when,
            s.regions,
            s.mapped_frames,
            c.m.n,
            c.m.backed_total()
        );
    }
}
