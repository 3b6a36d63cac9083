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

use crate::probe::{self, Probe};
use crate::{boot, hc, println};
use core::cell::UnsafeCell;
use core::fmt::Write;
use memvisor_abi::{
    flags, map, prot, zone, Batch, Call, MemStats, Request, Status, DOORBELL_GPA, DOORBELL_GVA,
    KERNEL_VIRT_OFFSET, MAX_BATCH, MAX_CONSOLE_WRITE,
};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
const RW: u64 = prot::READ | prot::WRITE | prot::USER;
const NB: usize = MAX_BATCH as usize;
/// GPA of the VMM's flush-slot page (host memory in the MMIO hole, not guest RAM).
const FLUSH_SLOT_GPA: u64 = 0xdfff_f000;
/// Longest line the host accepts for `Record`.
const RECORD_LINE_MAX: u64 = 1024;

// ---- the request block -----------------------------------------------------------------

/// A full-size request block in .bss (its GPA is its GVA minus KERNEL_VIRT_OFFSET).
#[repr(C, align(4096))]
struct Block {
    head: Batch,
    reqs: [Request; NB],
}

struct Shared<T>(UnsafeCell<T>);
// SAFETY: one vCPU; these statics are used only by this scenario's main code (never from an
// exception handler).
unsafe impl<T> Sync for Shared<T> {}

const NOP: Request = Request::new(Call::Nop, [0; 5]);

static BLOCK: Shared<Block> = Shared(UnsafeCell::new(Block {
    head: Batch {
        count: 0,
        completed: 0,
    },
    reqs: [NOP; NB],
}));

/// Where the host writes `Stats`.
static STATS: Shared<MemStats> = Shared(UnsafeCell::new(MemStats {
    total_frames: 0,
    free_frames: 0,
    mapped_frames: 0,
    table_frames: 0,
    regions: 0,
    lazy_faults: 0,
}));

/// Two pages of .bss this scenario never touches: the target of "munmap of the kernel image"
/// (if the host wrongly allowed it, nothing the guest needs would go away).
#[repr(C, align(4096))]
struct Sacrifice([u8; 2 * PAGE as usize]);
static SACRIFICE: Shared<Sacrifice> = Shared(UnsafeCell::new(Sacrifice([0; 2 * PAGE as usize])));

/// A read-only page of the kernel image (rodata) the scenario never reads.
#[repr(C, align(4096))]
struct RoPage([u8; PAGE as usize]);
static RO_PAGE: RoPage = RoPage([0x5a; PAGE as usize]);

/// GVAs of regions mapped during exhaustion.
static FLOOD: Shared<[u64; 8192]> = Shared(UnsafeCell::new([0; 8192]));

/// A GVA in the kernel's text this scenario never executes (the `runaway` scenario's code).
fn text_gva() -> u64 {
    crate::crash::runaway as *const () as u64
}

fn block_gpa() -> u64 {
    (BLOCK.0.get() as u64).wrapping_sub(KERNEL_VIRT_OFFSET)
}

fn stats_gva() -> u64 {
    STATS.0.get() as u64
}

/// Ring the VMM with any GPA (an 8-byte write to the MMIO doorbell).
fn ring(gpa: u64) {
    // SAFETY: a write to the doorbell page, which the host maps US=1 with no RAM behind it: the
    // VMM serves the block at `gpa` (or refuses it) and resumes us. Nothing in our memory is
    // written by this instruction.
    unsafe {
        core::arch::asm!("mov qword ptr [{db}], {v}", db = in(reg) DOORBELL_GVA, v = in(reg) gpa,
            options(nostack, preserves_flags));
    }
}

/// Run `reqs` (at most 512) in one exit; results are written back into `reqs`. Returns the
/// host's `completed`.
fn send(reqs: &mut [Request]) -> u32 {
    let n = reqs.len().min(NB);
    let p = BLOCK.0.get();
    // SAFETY: BLOCK is ours alone (see Shared); volatile so the stores happen before the ring
    // and the host's writes are read after it.
    unsafe {
        for (i, r) in reqs.iter().take(n).enumerate() {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).reqs[i]), *r);
        }
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*p).head),
            Batch {
                count: n as u32,
                completed: 0,
            },
        );
    }
    ring(block_gpa());
    // SAFETY: as above.
    unsafe {
        for (i, r) in reqs.iter_mut().take(n).enumerate() {
            *r = core::ptr::read_volatile(core::ptr::addr_of!((*p).reqs[i]));
        }
        core::ptr::read_volatile(core::ptr::addr_of!((*p).head)).completed
    }
}

fn status_of(raw: i32) -> Option<Status> {
    Status::from_i32(raw)
}

// ---- a small PRNG ------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

// ---- the model of what the guest owns ---------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Reg {
    start: u64,
    end: u64,
    lazy: bool,
    huge: bool,
    /// Lazy regions of at most 64 pages: bit i = page i is backed.
    backed: u64,
    /// False if the region is lazy and longer than 64 pages (backing not tracked).
    exact: bool,
}

impl Reg {
    fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
    }

    fn is_backed(&self, page: u64) -> Option<bool> {
        if !self.lazy {
            return Some(true);
        }
        if !self.exact {
            return None;
        }
        Some(self.backed & (1u64 << ((page - self.start) / PAGE)) != 0)
    }

    /// Backed pages, if known.
    fn backed_pages(&self) -> Option<u64> {
        if !self.lazy {
            Some(self.pages())
        } else if self.exact {
            Some(self.backed.count_ones() as u64)
        } else {
            None
        }
    }
}

const MAXR: usize = 512;

struct Model {
    r: [Reg; MAXR],
    n: usize,
    /// Zones present (probed at start): ANY, DMA, DMA32, NORMAL.
    zones: [bool; 4],
    window: [u64; 2],
}

impl Model {
    fn find(&self, gva: u64, end: u64) -> Option<usize> {
        self.r[..self.n]
            .iter()
            .position(|r| r.start <= gva && end <= r.end && gva < r.end)
    }

    fn push(&mut self, r: Reg) -> bool {
        if self.n == MAXR {
            return false;
        }
        self.r[self.n] = r;
        self.n += 1;
        true
    }

    fn remove(&mut self, i: usize) -> Reg {
        let r = self.r[i];
        self.r[i] = self.r[self.n - 1];
        self.n -= 1;
        r
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.r[..self.n]
            .iter()
            .any(|r| start < r.end + PAGE && r.start < end + PAGE)
    }

    fn backed_total(&self) -> Option<u64> {
        let mut t = 0;
        for r in &self.r[..self.n] {
            t += r.backed_pages()?;
        }
        Some(t)
    }
}

/// What the ABI allows as the result of one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Is(Status),
    /// Ok with exactly this value.
    Value(u64),
    /// Ok (any value) or the given error.
    OkOr(Status),
    /// One of two errors or Ok.
    OkOr2(Status, Status),
    Any,
}

fn range_check(gva: u64, len: u64) -> Result<u64, Status> {
    if len == 0 || !gva.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(Status::Inval);
    }
    let end = gva.checked_add(len).ok_or(Status::Inval)?;
    if !canonical(gva) || !canonical(end - 1) {
        return Err(Status::Inval);
    }
    Ok(end)
}

fn canonical(a: u64) -> bool {
    let top = (a as i64) >> 47;
    top == 0 || top == -1
}

fn prot_check(p: u64) -> Result<(), Status> {
    if p & !prot::ALL != 0 || p == prot::NONE {
        return Err(Status::Inval);
    }
    if p & prot::WRITE != 0 && p & prot::EXEC != 0 {
        return Err(Status::Perm);
    }
    Ok(())
}

impl Model {
    fn outside(&self, gva: u64, end: u64) -> Status {
        if gva < self.window[0] || end > self.window[1] {
            Status::Perm
        } else {
            Status::NotMapped
        }
    }

    fn zone_ok(&self, z: u64) -> bool {
        z < 4 && self.zones[z as usize]
    }

    fn predict(&self, r: &Request) -> Expect {
        let a = r.args;
        if r.reserved != 0 {
            return Expect::Is(Status::Inval);
        }
        let Some(call) = Call::from_u32(r.nr) else {
            return Expect::Is(Status::NoSys);
        };
        match call {
            Call::Nop | Call::FaultReport | Call::Exit | Call::Panic => Expect::Value(0),
            Call::ConsoleWrite => {
                if a[1] > MAX_CONSOLE_WRITE {
                    Expect::Is(Status::Inval)
                } else {
                    Expect::OkOr(Status::Fault)
                }
            }
            Call::Record => {
                if a[1] > RECORD_LINE_MAX {
                    Expect::Is(Status::Inval)
                } else {
                    Expect::OkOr2(Status::Fault, Status::NoMem)
                }
            }
            Call::Stats => {
                if a[0] == stats_gva() {
                    Expect::Value(0)
                } else {
                    Expect::OkOr(Status::Fault)
                }
            }
            // Served by the VMM for the stage-2 and fault-matrix scenarios only.
            Call::Stage2 | Call::MatrixSync => Expect::Is(Status::NoSys),
            Call::Translate => {
                let g = a[0];
                if !canonical(g) {
                    Expect::Is(Status::Inval)
                } else if g >= self.window[0] && g < self.window[1] {
                    let page = g & !(PAGE - 1);
                    match self
                        .find(page, page + PAGE)
                        .map(|i| self.r[i].is_backed(page))
                    {
                        Some(Some(true)) => Expect::OkOr(Status::Ok),
                        Some(None) => Expect::OkOr(Status::NotMapped),
                        _ => Expect::Is(Status::NotMapped),
                    }
                } else {
                    Expect::OkOr(Status::NotMapped)
                }
            }
            Call::Mmap => {
                let (len, p, z, f) = (a[0], a[1], a[2], a[3]);
                let v = (|| {
                    prot_check(p)?;
                    if f & !map::ALL != 0 {
                        return Err(Status::Inval);
                    }
                    let lazy = f & map::LAZY != 0;
                    let huge = f & map::HUGE != 0;
                    if lazy && (f & map::POPULATE != 0 || huge) {
                        return Err(Status::Inval);
                    }
                    if len == 0 || len % PAGE != 0 || len > self.window[1] - self.window[0] {
                        return Err(Status::Inval);
                    }
                    if huge && len % HUGE != 0 {
                        return Err(Status::Inval);
                    }
                    if !self.zone_ok(z) {
                        return Err(Status::NoZone);
                    }
                    Ok(())
                })();
                match v {
                    Err(s) => Expect::Is(s),
                    Ok(()) => Expect::OkOr(Status::NoMem),
                }
            }
            Call::Munmap | Call::Mprotect => {
                let (gva, len) = (a[0], a[1]);
                let end = match range_check(gva, len) {
                    Ok(e) => e,
                    Err(s) => return Expect::Is(s),
                };
                if call == Call::Mprotect {
                    if let Err(s) = prot_check(a[2]) {
                        return Expect::Is(s);
                    }
                }
                let Some(i) = self.find(gva, end) else {
                    return Expect::Is(self.outside(gva, end));
                };
                if self.r[i].huge && (gva % HUGE != 0 || len % HUGE != 0) {
                    return Expect::Is(Status::Inval);
                }
                if call == Call::Munmap {
                    Expect::Value(0)
                } else {
                    Expect::OkOr(Status::Ok)
                }
            }
            Call::LazyFault => {
                let cr2 = a[0];
                if !canonical(cr2) {
                    return Expect::Is(Status::NotMapped);
                }
                let page = cr2 & !(PAGE - 1);
                let Some(end) = page.checked_add(PAGE) else {
                    return Expect::Is(Status::NotMapped);
                };
                let Some(i) = self.find(page, end) else {
                    return Expect::Is(Status::NotMapped);
                };
                let r = &self.r[i];
                if !r.lazy {
                    return Expect::Is(Status::NotMapped);
                }
                match r.is_backed(page) {
                    Some(true) => Expect::Is(Status::Perm),
                    Some(false) => Expect::OkOr(Status::NoMem),
                    None => Expect::OkOr2(Status::Perm, Status::NoMem),
                }
            }
        }
    }

    /// Apply an actual result; returns false if the result is impossible for the model (a
    /// mapping handed out over one the guest owns).
    fn apply(&mut self, r: &Request, st: Status, value: u64) -> bool {
        if st != Status::Ok || r.reserved != 0 {
            return true;
        }
        let a = r.args;
        match Call::from_u32(r.nr) {
            Some(Call::Mmap) => {
                let (len, f) = (a[0], a[3]);
                let huge = f & map::HUGE != 0;
                let lazy = f & map::LAZY != 0;
                let align = if huge { HUGE } else { PAGE };
                let Some(end) = value.checked_add(len) else {
                    return false;
                };
                if !value.is_multiple_of(align)
                    || value < self.window[0]
                    || end + PAGE > self.window[1]
                    || self.overlaps(value, end)
                {
                    return false;
                }
                let pages = len / PAGE;
                self.push(Reg {
                    start: value,
                    end,
                    lazy,
                    huge,
                    backed: 0,
                    exact: !lazy || pages <= 64,
                });
            }
            Some(Call::Munmap) => {
                let (gva, len) = (a[0], a[1]);
                let end = gva + len;
                let Some(i) = self.find(gva, end) else {
                    return false;
                };
                let r = self.remove(i);
                if gva > r.start {
                    let mut h = r;
                    h.end = gva;
                    if r.lazy && r.exact {
                        let n = (gva - r.start) / PAGE;
                        h.backed = if n >= 64 {
                            r.backed
                        } else {
                            r.backed & ((1u64 << n) - 1)
                        };
                    }
                    self.push(h);
                }
                if end < r.end {
                    let mut t = r;
                    t.start = end;
                    if r.lazy && r.exact {
                        let off = (end - r.start) / PAGE;
                        t.backed = if off >= 64 { 0 } else { r.backed >> off };
                    }
                    self.push(t);
                }
            }
            Some(Call::LazyFault) => {
                let page = a[0] & !(PAGE - 1);
                if let Some(i) = self.find(page, page + PAGE) {
                    let r = &mut self.r[i];
                    if r.lazy && r.exact {
                        r.backed |= 1u64 << ((page - r.start) / PAGE);
                    }
                }
            }
            _ => {}
        }
        true
    }
}

// ---- bookkeeping -------------------------------------------------------------------------

struct Tally {
    /// By status: index = -status (0 = ok .. 8 = skipped); 9 = unknown status values.
    by_status: [u64; 10],
    calls: u64,
    batches: u64,
    mismatches: u64,
    /// munmap/mprotect of the kernel, stacks, guards, page tables or doorbell that succeeded.
    self_hits: u64,
    /// Rings with a GPA that is no valid block.
    bad_rings: u64,
    /// Planted bad headers found untouched afterwards.
    refused_ok: u64,
    crafted: u64,
    random: u64,
    fault_reports: u64,
    nomem_regions: u64,
    nomem_lazy_pages: u64,
    translate_checked: u64,
    stats_checked: u64,
}

impl Tally {
    fn count(&mut self, raw: i32) {
        self.calls += 1;
        let i = if (-8..=0).contains(&raw) {
            (-raw) as usize
        } else {
            9
        };
        self.by_status[i] += 1;
    }
}

struct Ctx {
    m: Model,
    t: Tally,
    rng: Rng,
    quick: bool,
    /// Protection of the kernel's text for mprotect "same rights" probes.
    text: u64,
}

fn name_of(raw: i32) -> &'static str {
    status_of(raw).map_or("unknown", Status::name)
}

impl Ctx {
    fn mismatch(&mut self, what: &str, r: &Request, expect: Expect) {
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

    fn judge(&mut self, what: &str, r: &Request, expect: Expect) -> bool {
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
    fn batch(&mut self, reqs: &mut [Request], what: &str) {
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
    fn expect(&mut self, c: Call, args: [u64; 5], want: Status) -> (Status, u64) {
        let mut r = [Request::new(c, args)];
        self.batch_exact(&mut r, want)
    }

    fn batch_exact(&mut self, r: &mut [Request; 1], want: Status) -> (Status, u64) {
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
    fn not_mine(&mut self, what: &str, gva: u64, len: u64, same_prot: u64, munmap: bool) {
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

fn record(key: &str, value: u64) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "hostile.{}={}", key, value);
    hc::record(line.as_str());
}

/// Write 8 bytes at GVA `at` (through the direct map) with probes: false if any faulted.
fn plant(at: u64, v: u64) -> bool {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        // SAFETY: `at` is a free frame (or the guest's own memory) seen through the direct map;
        // a fault is caught by the probe's exception-table entry.
        if !matches!(unsafe { probe::write(at + i as u64, *b) }, Probe::Ok) {
            return false;
        }
    }
    true
}

/// Read 8 bytes at `at` through probes (None if it faults).
fn peek(at: u64) -> Option<u64> {
    let mut v = [0u8; 8];
    for (i, b) in v.iter_mut().enumerate() {
        if !matches!(probe::read(at + i as u64), Probe::Ok) {
            return None;
        }
        // SAFETY: the probe just read this byte without a fault: it is mapped and readable.
        *b = unsafe { core::ptr::read_volatile((at + i as u64) as *const u8) };
    }
    Some(u64::from_le_bytes(v))
}

// ---- phases ------------------------------------------------------------------------------

/// Which zones exist: a lazy one-page mmap checks the zone and reserves no frame.
fn probe_zones(c: &mut Ctx) {
    for z in 0..4u64 {
        let mut r = [Request::new(Call::Mmap, [PAGE, RW, z, map::LAZY, 0])];
        send(&mut r);
        c.t.batches += 1;
        c.t.count(r[0].status);
        c.m.zones[z as usize] = r[0].status == 0;
        if r[0].status == 0 {
            let mut u = [Request::new(Call::Munmap, [r[0].value, PAGE, 0, 0, 0])];
            send(&mut u);
            c.t.batches += 1;
            c.t.count(u[0].status);
        } else if r[0].status != Status::NoZone as i32 {
            c.mismatch("zone probe", &r[0], Expect::OkOr(Status::NoZone));
        }
    }
}

fn crafted_not_mine(c: &mut Ctx) {
    let info = *boot();
    let dm = info.direct_map_base;
    let text = text_gva() & !(PAGE - 1);
    let ro = core::ptr::addr_of!(RO_PAGE) as u64;
    let sac = SACRIFICE.0.get() as u64;
    let user_x = prot::READ | prot::EXEC | prot::USER;
    let user_ro = prot::READ | prot::USER;
    // Kernel image: text, rodata, data/bss (the page is unused by anything we need).
    c.not_mine("kernel text", text, PAGE, user_x, true);
    c.not_mine("kernel rodata", ro, PAGE, user_ro, true);
    c.not_mine("kernel bss", sac, 2 * PAGE, RW, true);
    c.not_mine(
        "whole kernel",
        c.text & !(PAGE - 1),
        16 * PAGE,
        user_x,
        false,
    );
    // Stacks and their guards (munmap only where nothing we use lives).
    c.not_mine(
        "boot stack guard",
        info.stack[0] - PAGE,
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "boot stack bottom",
        info.stack[0],
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "boot stack",
        info.stack[0],
        info.stack[1] - info.stack[0],
        prot::READ | prot::WRITE,
        false,
    );
    c.not_mine(
        "#DF stack",
        info.df_stack[0],
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "#DF stack guard",
        info.df_stack[0] - PAGE,
        PAGE,
        prot::READ | prot::WRITE,
        true,
    );
    c.not_mine(
        "user stack guard",
        info.user_stack[0] - PAGE,
        PAGE,
        RW,
        true,
    );
    c.not_mine("user stack bottom", info.user_stack[0], PAGE, RW, true);
    c.not_mine(
        "user stack",
        info.user_stack[0],
        info.user_stack[1] - info.user_stack[0],
        RW,
        false,
    );
    // Page tables, through the direct map (read-only there): making them writable is the
    // classic PV escape (Xen XSA-182).
    let pml4 = dm + info.pml4_gpa;
    c.not_mine("PML4 (direct map)", pml4, PAGE, user_ro, true);
    c.not_mine(
        "page-table pool (direct map)",
        pml4 & !(HUGE - 1),
        HUGE,
        user_ro,
        true,
    );
    c.not_mine("direct map", dm, HUGE, RW, true);
    c.not_mine("doorbell", DOORBELL_GVA, PAGE, RW, false);
    // The tables really are read-only: a write of the byte already there must fault (P|W|U).
    if let Some(b) = peek(pml4 + 8 * 511) {
        // SAFETY: writes back the byte that is there; the write must fault (read-only).
        match unsafe { probe::write(pml4 + 8 * 511, b as u8) } {
            Probe::Fault { error_code, .. } if error_code & 0x7 == 0x7 => {}
            other => {
                c.t.self_hits += 1;
                println!(
                    "hostile: FAILED: write to the PML4 through the direct map: {:?}",
                    other
                );
            }
        }
    }
    // Lazy faults and translations outside the guest's regions.
    for g in [
        text,
        ro,
        info.stack[0] - PAGE,
        pml4,
        DOORBELL_GVA,
        u64::MAX,
        !(PAGE - 1),
        0x0000_8000_0000_0000,
    ] {
        c.expect(Call::LazyFault, [g, 6, 0, 0, 0], Status::NotMapped);
    }
    let (_, gpa) = c.expect(Call::Translate, [text + 0x123, 0, 0, 0, 0], Status::Ok);
    if gpa != text + 0x123 - KERNEL_VIRT_OFFSET {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH translate of kernel text gave GPA {:#x}",
            gpa
        );
    }
    let (_, gpa) = c.expect(Call::Translate, [pml4, 0, 0, 0, 0], Status::Ok);
    if gpa != info.pml4_gpa {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH translate of the PML4 gave GPA {:#x}",
            gpa
        );
    }
    c.t.translate_checked += 2;
    c.expect(
        Call::Translate,
        [info.stack[0] - PAGE, 0, 0, 0, 0],
        Status::NotMapped,
    );
    c.expect(
        Call::Translate,
        [0x0000_8000_0000_0000, 0, 0, 0, 0],
        Status::Inval,
    );
    // Buffers the host must not write (Stats) or read (console, record).
    for g in [
        text,
        pml4,
        DOORBELL_GVA,
        u64::MAX - 8,
        0,
        info.stack[0] - PAGE,
    ] {
        c.expect(Call::Stats, [g, 0, 0, 0, 0], Status::Fault);
    }
    for (g, len, want) in [
        (text, MAX_CONSOLE_WRITE + 1, Status::Inval),
        (text, u64::MAX, Status::Inval),
        (u64::MAX - 4, 8, Status::Fault),
        (info.stack[0] - PAGE, 8, Status::Fault),
        (0x0000_8000_0000_0000, 8, Status::Fault),
        (DOORBELL_GVA, 8, Status::Fault),
    ] {
        c.expect(Call::ConsoleWrite, [g, len, 0, 0, 0], want);
    }
    c.expect(
        Call::Record,
        [text, RECORD_LINE_MAX + 1, 0, 0, 0],
        Status::Inval,
    );
    c.expect(Call::Record, [u64::MAX - 4, 8, 0, 0, 0], Status::Fault);
    // Unknown calls and reserved bits.
    for nr in [13u32, 99, 0x8000_0000, u32::MAX] {
        let mut r = [Request::new(Call::Nop, [0; 5])];
        r[0].nr = nr;
        c.batch_exact(&mut r, Status::NoSys);
    }
    let mut r = [Request::new(Call::Nop, [0; 5])];
    r[0].reserved = 1;
    c.batch_exact(&mut r, Status::Inval);
    let mut r = [Request::new(Call::Exit, [7, 0, 0, 0, 0])];
    r[0].reserved = 0x8000_0000; // an exit with reserved bits set is refused (we keep running)
    c.batch_exact(&mut r, Status::Inval);
}

fn crafted_ranges(c: &mut Ctx) {
    let (win0, win1) = (c.m.window[0], c.m.window[1]);
    // A first small region so the one under test does not start at the window's start.
    let (_, first) = c.expect(Call::Mmap, [PAGE, RW, zone::ANY, map::LAZY, 0], Status::Ok);
    let (st, a) = c.expect(
        Call::Mmap,
        [16 * PAGE, RW, zone::ANY, map::POPULATE, 0],
        Status::Ok,
    );
    if st != Status::Ok {
        return;
    }
    // Populated memory is zeroed and ours: write and read back.
    for i in 0..16 {
        let p = a + i * PAGE + 8 * i;
        // SAFETY: [a, a + 16 pages) was just mapped read/write for us.
        let v = unsafe { core::ptr::read_volatile(p as *const u64) };
        if v != 0 {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH fresh page {:#x} not zero", p);
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p as *mut u64, 0xabad_1dea ^ i) };
    }
    let cases: [(u64, u64, Status); 15] = [
        (a + 1, PAGE, Status::Inval),
        (a, 1, Status::Inval),
        (a, 0, Status::Inval),
        (a, !(PAGE - 1), Status::Inval),
        (!(PAGE - 1), PAGE, Status::Inval),
        (0x0000_8000_0000_0000, PAGE, Status::Inval),
        (0xffff_7fff_ffff_f000, PAGE, Status::Inval),
        ((1 << 47) - PAGE, 2 * PAGE, Status::Inval),
        (a, 0u64.wrapping_sub(a), Status::Inval),
        (a, 17 * PAGE, Status::NotMapped),
        (a + 16 * PAGE, PAGE, Status::NotMapped),
        (a - PAGE, 2 * PAGE, Status::NotMapped),
        (win1 - PAGE, 2 * PAGE, Status::Perm),
        (win0 - PAGE, PAGE, Status::Perm),
        (a + (1 << 30), PAGE, Status::NotMapped),
    ];
    for (g, l, want) in cases {
        c.expect(Call::Munmap, [g, l, 0, 0, 0], want);
        c.expect(Call::Mprotect, [g, l, prot::READ | prot::USER, 0, 0], want);
    }
    // W+X, bad protections.
    c.expect(Call::Mprotect, [a, PAGE, prot::ALL, 0, 0], Status::Perm);
    c.expect(
        Call::Mprotect,
        [a, PAGE, prot::WRITE | prot::EXEC, 0, 0],
        Status::Perm,
    );
    c.expect(Call::Mprotect, [a, PAGE, 0, 0, 0], Status::Inval);
    c.expect(Call::Mprotect, [a, PAGE, 0x10, 0, 0], Status::Inval);
    // Read-only, then a write faults (P|W|U); writable again, the write works.
    let target = a + 8 * PAGE;
    c.expect(
        Call::Mprotect,
        [target, PAGE, prot::READ | prot::USER, 0, 0],
        Status::Ok,
    );
    hc::flush_range(target, PAGE);
    // SAFETY: our page; the write must fault (read-only) and the probe catches it.
    match unsafe { probe::write(target + 8, 1) } {
        Probe::Fault { error_code, .. } if error_code & 7 == 7 => {}
        other => {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH write to a read-only page: {:?}", other);
        }
    }
    c.expect(Call::Mprotect, [target, PAGE, RW, 0, 0], Status::Ok);
    hc::flush_range(target, PAGE);
    // SAFETY: our page, writable again.
    if !matches!(unsafe { probe::write(target + 8, 2) }, Probe::Ok) {
        c.t.mismatches += 1;
        println!("hostile: MISMATCH write after mprotect RW faulted");
    }
    // Partly mapped ranges and double munmap.
    c.expect(Call::Munmap, [a + 4 * PAGE, PAGE, 0, 0, 0], Status::Ok);
    hc::flush_range(a + 4 * PAGE, PAGE);
    match probe::read(a + 4 * PAGE) {
        Probe::Fault { error_code, .. } if error_code & 1 == 0 => {}
        other => {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH read after munmap: {:?}", other);
        }
    }
    c.expect(Call::Munmap, [a, 8 * PAGE, 0, 0, 0], Status::NotMapped);
    c.expect(
        Call::Mprotect,
        [a, 8 * PAGE, prot::READ | prot::USER, 0, 0],
        Status::NotMapped,
    );
    c.expect(
        Call::Munmap,
        [a + 4 * PAGE, PAGE, 0, 0, 0],
        Status::NotMapped,
    );
    // The rest of the region kept its data.
    for i in [0u64, 3, 5, 15] {
        // SAFETY: still mapped (only page 4 was unmapped).
        let v = unsafe { core::ptr::read_volatile((a + i * PAGE + 8 * i) as *const u64) };
        if v != 0xabad_1dea ^ i {
            c.t.mismatches += 1;
            println!("hostile: MISMATCH page {} lost its data", i);
        }
    }
    c.expect(Call::Munmap, [a, 4 * PAGE, 0, 0, 0], Status::Ok);
    c.expect(Call::Munmap, [a, 4 * PAGE, 0, 0, 0], Status::NotMapped);
    c.expect(Call::Munmap, [a + 5 * PAGE, 11 * PAGE, 0, 0, 0], Status::Ok);
    hc::flush_range(a, 16 * PAGE);
    // Zones that do not exist; bad mmap arguments.
    for z in [4u64, 99, u64::MAX] {
        c.expect(Call::Mmap, [PAGE, RW, z, 0, 0], Status::NoZone);
    }
    if !c.m.zones[zone::NORMAL as usize] {
        c.expect(Call::Mmap, [PAGE, RW, zone::NORMAL, 0, 0], Status::NoZone);
    }
    for (len, p, f, want) in [
        (0, RW, 0, Status::Inval),
        (PAGE + 1, RW, 0, Status::Inval),
        (u64::MAX, RW, 0, Status::Inval),
        (!(PAGE - 1), RW, 0, Status::Inval),
        (win1 - win0 + PAGE, RW, 0, Status::Inval),
        (PAGE, 0, 0, Status::Inval),
        (PAGE, 0x10, 0, Status::Inval),
        (PAGE, prot::WRITE | prot::EXEC, 0, Status::Perm),
        (PAGE, RW, 8, Status::Inval),
        (PAGE, RW, map::LAZY | map::POPULATE, Status::Inval),
        (PAGE, RW, map::HUGE | map::POPULATE, Status::Inval),
        (PAGE, RW, u64::MAX, Status::Inval),
    ] {
        c.expect(Call::Mmap, [len, p, zone::ANY, f, 0], want);
    }
    // Huge pages are never split.
    let (st, h) = c.expect(
        Call::Mmap,
        [2 * HUGE, RW, zone::ANY, map::POPULATE | map::HUGE, 0],
        Status::Ok,
    );
    if st == Status::Ok {
        if h % HUGE != 0 {
            c.t.mismatches += 1;
        }
        c.expect(Call::Munmap, [h + PAGE, PAGE, 0, 0, 0], Status::Inval);
        c.expect(Call::Munmap, [h, PAGE, 0, 0, 0], Status::Inval);
        c.expect(
            Call::Mprotect,
            [h, PAGE, prot::READ | prot::USER, 0, 0],
            Status::Inval,
        );
        c.expect(
            Call::Mprotect,
            [h, HUGE, prot::READ | prot::USER, 0, 0],
            Status::Ok,
        );
        c.expect(Call::Munmap, [h, HUGE, 0, 0, 0], Status::Ok);
        c.expect(Call::Munmap, [h + HUGE, HUGE, 0, 0, 0], Status::Ok);
        hc::flush_range(h, 2 * HUGE);
    }
    // Lazy regions: a lazy fault backs a page once; other pages stay unbacked.
    let (st, l) = c.expect(
        Call::Mmap,
        [8 * PAGE, RW, zone::ANY, map::LAZY, 0],
        Status::Ok,
    );
    if st == Status::Ok {
        c.expect(Call::LazyFault, [l + 3 * PAGE + 5, 6, 0, 0, 0], Status::Ok);
        c.expect(Call::LazyFault, [l + 3 * PAGE, 6, 0, 0, 0], Status::Perm);
        c.expect(Call::Translate, [l + 3 * PAGE, 0, 0, 0, 0], Status::Ok);
        c.expect(
            Call::Translate,
            [l + 4 * PAGE, 0, 0, 0, 0],
            Status::NotMapped,
        );
        c.expect(
            Call::LazyFault,
            [l + 8 * PAGE, 6, 0, 0, 0],
            Status::NotMapped,
        );
        // A real first touch (the #PF handler asks the host) also works, and reads zero.
        // SAFETY: inside our lazy region; the #PF handler has the host back the page.
        unsafe { core::ptr::write_volatile((l + 5 * PAGE) as *mut u64, 77) };
        // SAFETY: as above, now backed.
        if unsafe { core::ptr::read_volatile((l + 5 * PAGE) as *const u64) } != 77 {
            c.t.mismatches += 1;
        }
        // The model learns the page the CPU touched.
        c.expect(Call::LazyFault, [l + 5 * PAGE, 6, 0, 0, 0], Status::Perm);
        if let Some(i) = c.m.find(l, l + PAGE) {
            c.m.r[i].backed |= 1 << 5;
        }
        c.expect(Call::Munmap, [l, 8 * PAGE, 0, 0, 0], Status::Ok);
        hc::flush_range(l, 8 * PAGE);
    }
    c.expect(Call::Munmap, [first, PAGE, 0, 0, 0], Status::Ok);
    // Stats into our own buffer: the host's view agrees with ours.
    check_stats(c, "after crafted ranges");
}

/// Send Stats alone and compare with the model.
fn check_stats(c: &mut Ctx, when: &str) {
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

/// Ring the doorbell with GPAs that are no valid block, and with bad headers planted where a
/// block would cross the end of RAM or run into the page tables.
fn bad_blocks(c: &mut Ctx) {
    let info = *boot();
    let dm = info.direct_map_base;
    let text_gpa = text_gva().wrapping_sub(KERNEL_VIRT_OFFSET);
    let mut ram_end = 0;
    for e in &info.e820[..info.e820_count as usize] {
        if e.kind == memvisor_abi::E820_RAM {
            ram_end = ram_end.max(e.addr + e.size);
        }
    }
    let blk = block_gpa();
    // Put a valid-looking one-request header into our real block: rings elsewhere must not
    // touch it.
    let p = BLOCK.0.get();
    // SAFETY: BLOCK is ours (see Shared).
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).reqs[0]), NOP);
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*p).head),
            Batch {
                count: 1,
                completed: 0,
            },
        );
    }
    let rings = [
        blk + 1,
        blk + 4,
        blk + 7,
        0,
        ram_end,
        ram_end - 8,
        ram_end + PAGE,
        0xc000_0000,
        DOORBELL_GPA,
        FLUSH_SLOT_GPA,
        info.pml4_gpa,
        text_gpa,
        1 << 40,
        1 << 52,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 7,
    ];
    for g in rings {
        ring(g);
        c.t.bad_rings += 1;
    }
    // SAFETY: as above.
    let head = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).head)) };
    if head.completed != 0 {
        c.t.mismatches += 1;
        println!("hostile: MISMATCH a ring at another GPA ran our block");
    }
    // Headers planted in free frames through the direct map: every block below is refused.
    let mut plants: [(u64, u32); 8] = [(0, 0); 8];
    let mut np = 0;
    for e in &info.e820[..info.e820_count as usize] {
        if e.kind == memvisor_abi::E820_RAM && np + 2 <= plants.len() {
            let end = e.addr + e.size;
            plants[np] = (end - 8, 1); // header at the very end: requests past RAM
            plants[np + 1] = (end - 128, 2); // straddles the end of this RAM range
            np += 2;
        }
    }
    let chunk = info.pml4_gpa & !(HUGE - 1);
    if chunk >= 0x40_0000 && np < plants.len() {
        plants[np] = (chunk - 64, 2); // runs into the page-table pool
        np += 1;
    }
    if np + 2 <= plants.len() {
        plants[np] = (ram_end - 3 * PAGE, MAX_BATCH + 1);
        plants[np + 1] = (ram_end - 3 * PAGE + 64, u32::MAX);
        np += 2;
    }
    for &(gpa, count) in &plants[..np] {
        let at = dm + gpa;
        let saved = peek(at);
        if saved.is_none() || !plant(at, count as u64) {
            continue;
        }
        ring(gpa);
        c.t.bad_rings += 1;
        match peek(at) {
            Some(v) if v == count as u64 => c.t.refused_ok += 1,
            other => {
                c.t.mismatches += 1;
                println!(
                    "hostile: MISMATCH planted block at GPA {:#x} (count {}) came back as {:?}",
                    gpa, count, other
                );
            }
        }
        let _ = plant(at, saved.unwrap_or(0));
    }
    // Doorbell writes of the wrong size or at another offset, and a read: plain MMIO exits.
    // SAFETY: writes/reads of the doorbell page (MMIO, no RAM): the VMM logs them and resumes.
    unsafe {
        core::ptr::write_volatile(DOORBELL_GVA as *mut u32, blk as u32);
        core::ptr::write_volatile((DOORBELL_GVA + 8) as *mut u64, blk);
        let _ = core::ptr::read_volatile(DOORBELL_GVA as *const u64);
    }
    // A valid block still works afterwards.
    c.expect(Call::Nop, [0; 5], Status::Ok);
}

/// mmap until NoMem (any zone, then DMA), lazy faults until NoMem, then free everything.
fn exhaust(c: &mut Ctx) {
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

// ---- random requests ----------------------------------------------------------------------

impl Ctx {
    fn any_region(&mut self) -> Option<Reg> {
        if self.m.n == 0 {
            None
        } else {
            let i = self.rng.below(self.m.n as u64) as usize;
            Some(self.m.r[i])
        }
    }

    fn gva(&mut self) -> u64 {
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

    fn len(&mut self, gva: u64) -> u64 {
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

    fn prot(&mut self) -> u64 {
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
    fn random_request(&mut self, budget: &mut usize, backed_room: bool) -> Request {
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

fn random_phase(c: &mut Ctx, target_calls: u64) {
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

/// Ring with a random GPA that cannot be a valid block (unaligned, or past RAM), or with our
/// block under a random header count of 0 or more than 512: the host must refuse it whole
/// (our block comes back with `completed == 0`). Random GPAs inside RAM are always made
/// unaligned: an aligned one could hit memory that parses as a block (a stack, .data) and
/// the host would run it, which is the guest attacking itself, not the host.
fn random_bad_ring(c: &mut Ctx) {
    let ram_end = boot().ram_bytes.max(memvisor_abi::KERNEL_PHYS_BASE) + (1 << 30);
    let p = BLOCK.0.get();
    let count = match c.rng.below(4) {
        0 => 0,
        1 => MAX_BATCH + 1 + c.rng.below(1000) as u32,
        _ => (c.rng.next() as u32) | 0x8000_0000,
    };
    // SAFETY: BLOCK is ours (see Shared).
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*p).head),
            Batch {
                count,
                completed: 0,
            },
        );
    }
    let gpa = if c.rng.chance(2) {
        block_gpa()
    } else {
        let g = c.rng.next();
        if g < ram_end && g.is_multiple_of(8) {
            g | (1 + c.rng.below(7))
        } else {
            g
        }
    };
    ring(gpa);
    c.t.bad_rings += 1;
    // SAFETY: as above.
    let head = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).head)) };
    if head.completed != 0 || head.count != count {
        c.t.mismatches += 1;
        println!(
            "hostile: MISMATCH ring at {:#x} with our block's count {}: the host ran it",
            gpa, count
        );
    }
}

/// Give back every region the model holds.
fn cleanup(c: &mut Ctx) {
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
            by_status: [0; 10],
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
    probe_zones(&mut c);
    crafted_not_mine(&mut c);
    crafted_ranges(&mut c);
    println!(
        "hostile: crafted calls done ({} calls, {} mismatches)",
        c.t.calls, c.t.mismatches
    );
    bad_blocks(&mut c);
    println!(
        "hostile: bad request blocks done ({} rings refused as expected)",
        c.t.refused_ok
    );
    exhaust(&mut c);
    random_phase(&mut c, target);
    cleanup(&mut c);
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
    if t.mismatches == 0 && t.self_hits == 0 && t.by_status[9] == 0 && t.calls >= target {
        println!("hostile: every call returned the status the ABI prescribes; exiting 0");
        0
    } else {
        println!("hostile: FAILED");
        1
    }
}
