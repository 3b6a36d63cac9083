//! Bytes to calls: [`Harness::run_bytes`] decodes any byte string into a hostile call
//! sequence (blocks of model-checked requests, direct calls, raw blocks rung at chosen GPAs,
//! floods, bulk lazy faults), drawing addresses, lengths and arguments from interesting values.

use super::{Harness, HarnessError};
use memvisor::addr::{LARGE_PAGE_SIZE, PAGE_SIZE};
use memvisor::layout::{
    BOOT_STACK_BOTTOM, DIRECT_MAP_BASE, MMAP_WINDOW_END, MMAP_WINDOW_START, MMIO_HOLE_START,
    USER_STACK_BOTTOM,
};
use memvisor_abi::{map, prot, Call, Request};

impl Harness {
    // ---- bytes -> calls ----------------------------------------------------------------

    /// Interpret `data` as a hostile call sequence and run it (every step checked), then the
    /// teardown check. Any byte string is a valid input.
    ///
    /// # Errors
    /// The first check that failed.
    pub fn run_bytes(&mut self, data: &[u8]) -> Result<(), HarnessError> {
        let mut cur = Cursor { data, pos: 0 };
        let mut guard = 0;
        while !cur.done() && guard < 256 {
            guard += 1;
            self.step_from(&mut cur)?;
        }
        self.finish()
    }

    fn step_from(&mut self, cur: &mut Cursor<'_>) -> Result<(), HarnessError> {
        match cur.byte() % 16 {
            0..=7 => {
                // One block of 1..=8 model-checked requests.
                let n = 1 + (cur.byte() % 8) as usize;
                let reqs: Vec<Request> = (0..n).map(|_| self.request_from(cur)).collect();
                self.requests(&reqs, false)
            }
            8..=10 => {
                let r = self.request_from(cur);
                self.requests(&[r], true)
            }
            11 => {
                // A large block of random requests (up to the block's capacity).
                let n = 1 + (cur.u64() % self.block_cap as u64) as usize;
                let reqs: Vec<Request> = (0..n).map(|_| self.request_from(cur)).collect();
                self.requests(&reqs, false)
            }
            12 | 13 => {
                let len = (cur.byte() as usize) * 4;
                let mut bytes: Vec<u8> = (0..len).map(|_| cur.byte()).collect();
                // Usually a plausible header, so the requests behind it run.
                if cur.byte() % 2 == 0 && bytes.len() >= 8 {
                    let count = u32::from(cur.byte() % 16);
                    bytes[..4].copy_from_slice(&count.to_le_bytes());
                }
                let ring = self.gpa_from(cur);
                self.raw(&bytes, ring)
            }
            14 => {
                let pages: u64 = [1, 16, 64, 512][(cur.byte() % 4) as usize];
                let z = u64::from(cur.byte() % 4);
                let max = (self.populate_cap / (pages * PAGE_SIZE)).max(1) as usize;
                self.flood(pages, z, max).map(|_| ())
            }
            _ => {
                // Touch lazy pages in bulk: every page of a random region.
                let starts: Vec<(u64, u64)> = self
                    .model
                    .regions
                    .iter()
                    .filter(|(_, r)| r.lazy)
                    .map(|(&s, r)| (s, r.end))
                    .collect();
                if starts.is_empty() {
                    return Ok(());
                }
                let (s, e) = starts[cur.byte() as usize % starts.len()];
                let reqs: Vec<Request> = (0..((e - s) / PAGE_SIZE).min(self.block_cap as u64))
                    .map(|i| Request::new(Call::LazyFault, [s + i * PAGE_SIZE, 6, 0, 0, 0]))
                    .collect();
                self.requests(&reqs, false)
            }
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An interesting GVA: the model's regions and their edges, the kernel, the stacks and
    /// their guards, the direct map and page tables, the doorbell, non-canonical and
    /// overflowing values.
    fn gva_from(&mut self, cur: &mut Cursor<'_>) -> u64 {
        let sel = cur.byte();
        let regions: Vec<(u64, u64)> = self
            .model
            .regions
            .iter()
            .map(|(&s, r)| (s, r.end))
            .collect();
        let pick = |i: u8| regions.get(i as usize % regions.len().max(1)).copied();
        let k = &self.space.kernel();
        let text = k.segments.first().map_or(0, |s| s.gva);
        let chunk = self
            .space
            .pool()
            .chunks
            .first()
            .map_or(0, |c| c.raw() * PAGE_SIZE);
        match sel % 32 {
            0..=5 => match pick(cur.byte()) {
                Some((s, e)) => {
                    let pages = (e - s) / PAGE_SIZE;
                    let off = u64::from(cur.byte()) % (pages + 2);
                    s + off * PAGE_SIZE
                }
                None => MMAP_WINDOW_START,
            },
            6 => pick(cur.byte()).map_or(MMAP_WINDOW_START, |(_, e)| e),
            7 => MMAP_WINDOW_START,
            8 => MMAP_WINDOW_END - PAGE_SIZE,
            9 => MMAP_WINDOW_END,
            10 => text,
            11 => k.entry,
            12 => DIRECT_MAP_BASE + chunk,
            13 => DIRECT_MAP_BASE + self.space.cr3(),
            14 => DIRECT_MAP_BASE,
            15 => BOOT_STACK_BOTTOM - PAGE_SIZE,
            16 => USER_STACK_BOTTOM - PAGE_SIZE,
            17 => USER_STACK_BOTTOM,
            18 => memvisor_abi::DOORBELL_GVA,
            19 => 0x0000_8000_0000_0000,
            20 => 0xffff_7fff_ffff_f000,
            21 => u64::MAX,
            22 => !(PAGE_SIZE - 1),
            23 => (1 << 47) - PAGE_SIZE,
            24 => 0,
            25 => self.scratch_gva,
            26 => pick(cur.byte()).map_or(MMAP_WINDOW_START, |(s, _)| s + 1),
            27 => {
                (MMAP_WINDOW_START + cur.u64() % (MMAP_WINDOW_END - MMAP_WINDOW_START))
                    & !(PAGE_SIZE - 1)
            }
            28 => pick(cur.byte()).map_or(MMAP_WINDOW_START, |(s, _)| {
                (s + LARGE_PAGE_SIZE) & !(LARGE_PAGE_SIZE - 1)
            }),
            29 => self.next_rand(),
            _ => cur.u64(),
        }
    }

    fn len_from(&mut self, cur: &mut Cursor<'_>, gva: u64) -> u64 {
        let region_len = self
            .model
            .regions
            .range(..=gva)
            .next_back()
            .map_or(PAGE_SIZE, |(&s, r)| r.end.saturating_sub(s).max(PAGE_SIZE));
        match cur.byte() % 24 {
            0..=5 => (1 + u64::from(cur.byte() % 32)) * PAGE_SIZE,
            6 => 0,
            7 => 1,
            8 => PAGE_SIZE - 1,
            9 => LARGE_PAGE_SIZE,
            10 => 2 * LARGE_PAGE_SIZE,
            11 => region_len,
            12 => region_len + PAGE_SIZE,
            13 => region_len.saturating_sub(PAGE_SIZE).max(PAGE_SIZE),
            14 => u64::MAX,
            15 => !(PAGE_SIZE - 1),
            16 => 0u64.wrapping_sub(gva),
            17 => 1 << 47,
            18 => 1 << 48,
            19 => MMAP_WINDOW_END - MMAP_WINDOW_START,
            20 => MMAP_WINDOW_END - MMAP_WINDOW_START - PAGE_SIZE,
            21 => (u64::from(cur.byte()) + 1) << 20,
            22 => self.next_rand() & 0xff_ffff_f000,
            _ => cur.u64(),
        }
    }

    fn gpa_from(&mut self, cur: &mut Cursor<'_>) -> u64 {
        let end = self.space.ram().end();
        match cur.byte() % 16 {
            0..=3 => self.block_gpa,
            4 => self.block_gpa + u64::from(cur.byte() % 64),
            5 => end - 8,
            6 => end - 64,
            7 => end,
            8 => MMIO_HOLE_START,
            9 => memvisor_abi::DOORBELL_GPA,
            10 => self.space.cr3(),
            11 => self.space.kernel().phys_start,
            12 => u64::MAX - 7,
            13 => 0,
            14 => self.next_rand(),
            _ => cur.u64(),
        }
    }

    fn request_from(&mut self, cur: &mut Cursor<'_>) -> Request {
        let sel = cur.byte();
        let nr = match sel % 20 {
            0..=4 => Call::Mmap as u32,
            5..=8 => Call::Munmap as u32,
            9..=11 => Call::Mprotect as u32,
            12 | 13 => Call::LazyFault as u32,
            14 => Call::Translate as u32,
            15 => Call::Stats as u32,
            16 => [
                Call::Nop,
                Call::FaultReport,
                Call::ConsoleWrite,
                Call::Record,
            ][(cur.byte() % 4) as usize] as u32,
            17 => 12 + u32::from(cur.byte()),
            18 => [Call::Exit, Call::Panic][(cur.byte() % 2) as usize] as u32,
            _ => cur.u64() as u32,
        };
        let mut args = [0u64; 5];
        match Call::from_u32(nr) {
            Some(Call::Mmap) => {
                args[0] = match cur.byte() % 4 {
                    0 => LARGE_PAGE_SIZE * (1 + u64::from(cur.byte() % 4)),
                    _ => self.len_from(cur, 0),
                };
                if args[0] > self.populate_cap && args[0] <= MMAP_WINDOW_END - MMAP_WINDOW_START {
                    args[0] = self.populate_cap & !(LARGE_PAGE_SIZE - 1);
                }
                args[1] = match cur.byte() % 8 {
                    0..=3 => prot::READ | prot::WRITE | prot::USER,
                    4 => prot::READ | prot::EXEC,
                    5 => prot::WRITE | prot::EXEC,
                    6 => u64::from(cur.byte() % 32),
                    _ => cur.u64(),
                };
                args[2] = match cur.byte() % 8 {
                    0..=4 => u64::from(cur.byte() % 4),
                    5 => 4 + u64::from(cur.byte()),
                    6 => u64::MAX,
                    _ => cur.u64(),
                };
                args[3] = match cur.byte() % 8 {
                    0..=2 => map::POPULATE,
                    3..=4 => map::LAZY,
                    5 => map::POPULATE | map::HUGE,
                    6 => u64::from(cur.byte() % 16),
                    _ => cur.u64(),
                };
                // Fixed-address requests: at, beside and over regions the guest has.
                if cur.byte() % 4 == 0 {
                    args[3] |= map::FIXED;
                }
                if args[3] & map::FIXED != 0 {
                    args[4] = self.gva_from(cur);
                }
            }
            Some(Call::Munmap | Call::Mprotect) => {
                args[0] = self.gva_from(cur);
                args[1] = self.len_from(cur, args[0]);
                args[2] = match cur.byte() % 6 {
                    0..=2 => prot::READ | prot::USER,
                    3 => prot::READ | prot::WRITE | prot::USER,
                    4 => prot::READ | prot::WRITE | prot::EXEC,
                    _ => u64::from(cur.byte() % 32),
                };
            }
            Some(Call::LazyFault | Call::Translate) => {
                args[0] = self
                    .gva_from(cur)
                    .wrapping_add(u64::from(cur.byte() % 2) * 0x123);
                args[1] = u64::from(cur.byte());
                args[2] = cur.u64();
            }
            Some(Call::Stats) => {
                args[0] = if cur.byte() % 4 == 0 {
                    self.gva_from(cur)
                } else {
                    self.scratch_gva
                };
            }
            Some(Call::ConsoleWrite | Call::Record | Call::Panic) => {
                args[0] = self.gva_from(cur);
                args[1] = match cur.byte() % 4 {
                    0 => u64::from(cur.byte()),
                    1 => memvisor_abi::MAX_CONSOLE_WRITE + 1,
                    2 => u64::MAX,
                    _ => 8,
                };
            }
            _ => {
                for a in &mut args {
                    *a = cur.u64();
                }
            }
        }
        let mut r = Request::new(Call::Nop, args);
        r.nr = nr;
        if cur.byte() == 0xff {
            r.reserved = cur.u64() as u32 | 1;
        }
        r
    }
}

/// Reads bytes from a fuzz input; past the end it yields zeros (so every input is valid).
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }
}
