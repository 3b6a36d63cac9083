//! Random batches of 1–512 requests: call numbers (unknown ones included), addresses,
//! lengths, protections, zones, flags and reserved bits drawn from interesting values (the
//! guest's regions and their edges, the kernel, stacks, guards, page tables, non-canonical and
//! wrapping values) and plain random bits, from a small PRNG.

use super::bad_blocks::random_bad_ring;
use super::ctx::{check_stats, Ctx};
use super::doorbell::{stats_gva, NOP};
use super::model::{Reg, MAXR};
use super::{HUGE, NB, PAGE, RW};
use crate::{boot, println};
use memvisor_abi::{map, prot, Call, Request, DOORBELL_GVA};

// ---- a small PRNG ------------------------------------------------------------------------

pub(super) struct Rng(pub(super) u64);

impl Rng {
    /// xorshift64*.
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub(super) fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

// ---- random requests ----------------------------------------------------------------------

impl Ctx {
    pub(super) fn any_region(&mut self) -> Option<Reg> {
        if self.m.n == 0 {
            None
        } else {
            let i = self.rng.below(self.m.n as u64) as usize;
            Some(self.m.r[i])
        }
    }

    pub(super) fn gva(&mut self) -> u64 {
        let info = boot();
        let (w0, w1) = (self.m.window[0], self.m.window[1]);
        match self.rng.below(32) {
            0..=9 => match self.any_region() {
                Some(r) => r.start + self.rng.below(r.pages() + 2) * PAGE,
                None => w0,
            },
            10 | 11 => self.any_region().map_or(w0, |r| r.end),
            12 => self
                .any_region()
                .map_or(w0, |r| (r.start + HUGE) & !(HUGE - 1)),
            13 => self
                .any_region()
                .map_or(w0, |r| r.start + 1 + self.rng.below(PAGE - 1)),
            14 => w0,
            15 => w1 - PAGE,
            16 => w1,
            17 => self.text,
            18 => info.direct_map_base + info.pml4_gpa,
            19 => info.stack[0] - PAGE,
            20 => info.user_stack[0] - PAGE,
            21 => DOORBELL_GVA,
            22 => 0x0000_8000_0000_0000,
            23 => 0xffff_7fff_ffff_f000,
            24 => u64::MAX,
            25 => !(PAGE - 1),
            26 => (1 << 47) - PAGE,
            27 => 0,
            28 => (w0 + self.rng.below(w1 - w0)) & !(PAGE - 1),
            _ => self.rng.next(),
        }
    }

    pub(super) fn len(&mut self, gva: u64) -> u64 {
        let region = self.m.find(gva, gva.saturating_add(1)).map(|i| self.m.r[i]);
        let rl = region.map_or(PAGE, |r| r.end - r.start);
        let rest = region.map_or(PAGE, |r| r.end.saturating_sub(gva).max(PAGE));
        match self.rng.below(24) {
            0..=5 => (1 + self.rng.below(32)) * PAGE,
            6 | 7 => rest,
            8 => rl,
            9 => rl + PAGE,
            10 => rest.saturating_sub(PAGE).max(PAGE),
            11 => 0,
            12 => 1 + self.rng.below(PAGE - 1),
            13 => HUGE,
            14 => u64::MAX,
            15 => !(PAGE - 1),
            16 => 0u64.wrapping_sub(gva),
            17 => 1 << 47,
            18 => 1 << 48,
            19 => self.m.window[1] - self.m.window[0],
            20 => (self.m.window[1] - self.m.window[0]) - PAGE,
            21 => self.rng.next() & 0xff_ffff_f000,
            _ => self.rng.next(),
        }
    }

    pub(super) fn prot(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=4 => RW,
            5 => prot::READ | prot::USER,
            6 => prot::READ | prot::EXEC | prot::USER,
            7 => prot::WRITE | prot::EXEC,
            8 => self.rng.below(32),
            _ => self.rng.next(),
        }
    }

    /// A random request; `budget` limits requests that can add a region to the model.
    pub(super) fn random_request(&mut self, budget: &mut usize, backed_room: bool) -> Request {
        let mut args = [0u64; 5];
        let nr = match self.rng.below(24) {
            0..=4 if *budget > 0 && backed_room => {
                *budget -= 1;
                let f = match self.rng.below(10) {
                    0..=3 => map::POPULATE,
                    4..=6 => map::LAZY,
                    7 => map::POPULATE | map::HUGE,
                    8 => self.rng.below(16),
                    _ => self.rng.next(),
                };
                let len = match self.rng.below(8) {
                    0..=4 => (1 + self.rng.below(if f == map::LAZY { 64 } else { 32 })) * PAGE,
                    5 => HUGE * (1 + self.rng.below(2)),
                    6 => self.len(0).min(1 << 40),
                    _ => self.len(0),
                };
                // A large valid populate runs the host out of frames (then it rolls back):
                // ~100 ms of zeroing each. Rare here; the exhaustion phase does it on purpose.
                let populate = f & map::LAZY == 0 && f & !map::ALL == 0;
                let f = if populate && len > 64 * PAGE && len % PAGE == 0 && !self.rng.chance(1024)
                {
                    map::LAZY
                } else {
                    f
                };
                let z = match self.rng.below(8) {
                    0..=5 => self.rng.below(4),
                    6 => 4 + self.rng.below(1000),
                    _ => self.rng.next(),
                };
                args = [len, self.prot(), z, f, 0];
                Call::Mmap as u32
            }
            0..=4 => Call::Nop as u32,
            5..=9 if *budget > 0 => {
                *budget -= 1;
                // Often a whole region, so the model does not fill up.
                if self.rng.chance(2) {
                    if let Some(r) = self.any_region() {
                        args = [r.start, r.end - r.start, 0, 0, 0];
                        return Request::new(Call::Munmap, args);
                    }
                }
                let g = self.gva();
                args = [g, self.len(g), 0, 0, 0];
                Call::Munmap as u32
            }
            5..=12 => {
                let g = self.gva();
                args = [g, self.len(g), self.prot(), 0, 0];
                Call::Mprotect as u32
            }
            13..=15 => {
                let g = self.gva();
                args = [
                    g.wrapping_add(self.rng.below(2) * 0x123),
                    self.rng.below(32),
                    self.rng.next(),
                    0,
                    0,
                ];
                Call::LazyFault as u32
            }
            16 | 17 => {
                args[0] = self.gva();
                Call::Translate as u32
            }
            18 => {
                args[0] = if self.rng.chance(4) {
                    self.text
                } else {
                    stats_gva()
                };
                Call::Stats as u32
            }
            19 => {
                // Console and record only with arguments the host must refuse (garbage must
                // not reach the report).
                let bad = [
                    u64::MAX - 3,
                    0x0000_8000_0000_0000,
                    boot().stack[0] - PAGE,
                    0,
                ];
                args[0] = bad[self.rng.below(4) as usize];
                args[1] = if self.rng.chance(2) {
                    1 + self.rng.below(64)
                } else {
                    u64::MAX
                };
                if self.rng.chance(2) {
                    Call::ConsoleWrite as u32
                } else {
                    Call::Record as u32
                }
            }
            20 if self.t.fault_reports < 64 => {
                args = [
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.below(2),
                ];
                Call::FaultReport as u32
            }
            20 | 21 => {
                for a in &mut args {
                    *a = self.rng.next();
                }
                // Call numbers from 12 up (never exit/panic: 2 and 10 end the run): the
                // scenario-specific calls (NoSys here) and unknown ones.
                match self.rng.below(4) {
                    0 => 12 + self.rng.below(8) as u32,
                    _ => 12 + (self.rng.next() as u32 % 0xffff_fff0),
                }
            }
            _ => Call::Nop as u32,
        };
        let mut r = Request::new(Call::Nop, args);
        r.nr = nr;
        if self.rng.chance(256) {
            r.reserved = 1 | self.rng.next() as u32;
        }
        r
    }
}

pub(super) fn random_phase(c: &mut Ctx, target_calls: u64) {
    let mut reqs = [NOP; NB];
    let mut k = 0u64;
    while c.t.calls < target_calls {
        let n = if c.rng.chance(2) {
            NB
        } else {
            1 + c.rng.below(NB as u64) as usize
        };
        let mut budget = (MAXR - c.m.n).saturating_sub(4) / 2;
        let backed_room = c.m.backed_total().unwrap_or(0) < 16384;
        for r in reqs.iter_mut().take(n) {
            *r = c.random_request(&mut budget, backed_room);
        }
        c.t.random += n as u64;
        c.batch(&mut reqs[..n], "random");
        k += 1;
        if c.rng.chance(8) {
            random_bad_ring(c);
        }
        if k.is_multiple_of(64) {
            check_stats(c, "during random batches");
        }
        if k.is_multiple_of(512) {
            println!(
                "hostile: {} calls, {} batches, {} regions live",
                c.t.calls, c.t.batches, c.m.n
            );
        }
    }
}
