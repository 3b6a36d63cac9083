//! The model of what the guest owns (its regions and, for small lazy ones, which pages are
//! backed) and the result the ABI prescribes for each request ([`Expect`]), and how an
//! actual result changes the model.

use super::doorbell::stats_gva;
use super::{HUGE, PAGE, RECORD_LINE_MAX};
use memvisor_abi::{map, prot, Call, Request, Status, MAX_CONSOLE_WRITE};

// ---- the model of what the guest owns ---------------------------------------------------

#[derive(Clone, Copy, Default)]
pub(super) struct Reg {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) lazy: bool,
    pub(super) huge: bool,
    /// Lazy regions of at most 64 pages: bit i = page i is backed.
    pub(super) backed: u64,
    /// False if the region is lazy and longer than 64 pages (backing not tracked).
    pub(super) exact: bool,
}

impl Reg {
    pub(super) fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
    }

    pub(super) fn is_backed(&self, page: u64) -> Option<bool> {
        if !self.lazy {
            return Some(true);
        }
        if !self.exact {
            return None;
        }
        Some(self.backed & (1u64 << ((page - self.start) / PAGE)) != 0)
    }

    /// Backed pages, if known.
    pub(super) fn backed_pages(&self) -> Option<u64> {
        if !self.lazy {
            Some(self.pages())
        } else if self.exact {
            Some(self.backed.count_ones() as u64)
        } else {
            None
        }
    }
}

pub(super) const MAXR: usize = 512;

pub(super) struct Model {
    pub(super) r: [Reg; MAXR],
    pub(super) n: usize,
    /// Zones present (probed at start): ANY, DMA, DMA32, NORMAL.
    pub(super) zones: [bool; 4],
    pub(super) window: [u64; 2],
}

impl Model {
    pub(super) fn find(&self, gva: u64, end: u64) -> Option<usize> {
        self.r[..self.n]
            .iter()
            .position(|r| r.start <= gva && end <= r.end && gva < r.end)
    }

    pub(super) fn push(&mut self, r: Reg) -> bool {
        if self.n == MAXR {
            return false;
        }
        self.r[self.n] = r;
        self.n += 1;
        true
    }

    pub(super) fn remove(&mut self, i: usize) -> Reg {
        let r = self.r[i];
        self.r[i] = self.r[self.n - 1];
        self.n -= 1;
        r
    }

    pub(super) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.r[..self.n]
            .iter()
            .any(|r| start < r.end + PAGE && r.start < end + PAGE)
    }

    pub(super) fn backed_total(&self) -> Option<u64> {
        let mut t = 0;
        for r in &self.r[..self.n] {
            t += r.backed_pages()?;
        }
        Some(t)
    }
}

/// What the ABI allows as the result of one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Expect {
    Is(Status),
    /// Ok with exactly this value.
    Value(u64),
    /// Ok (any value) or the given error.
    OkOr(Status),
    /// One of two errors or Ok.
    OkOr2(Status, Status),
    Any,
}

pub(super) fn range_check(gva: u64, len: u64) -> Result<u64, Status> {
    if len == 0 || !gva.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(Status::Inval);
    }
    let end = gva.checked_add(len).ok_or(Status::Inval)?;
    if !canonical(gva) || !canonical(end - 1) {
        return Err(Status::Inval);
    }
    Ok(end)
}

pub(super) fn canonical(a: u64) -> bool {
    let top = (a as i64) >> 47;
    top == 0 || top == -1
}

pub(super) fn prot_check(p: u64) -> Result<(), Status> {
    if p & !prot::ALL != 0 || p == prot::NONE {
        return Err(Status::Inval);
    }
    if p & prot::WRITE != 0 && p & prot::EXEC != 0 {
        return Err(Status::Perm);
    }
    Ok(())
}

impl Model {
    pub(super) fn outside(&self, gva: u64, end: u64) -> Status {
        if gva < self.window[0] || end > self.window[1] {
            Status::Perm
        } else {
            Status::NotMapped
        }
    }

    pub(super) fn zone_ok(&self, z: u64) -> bool {
        z < 4 && self.zones[z as usize]
    }

    pub(super) fn predict(&self, r: &Request) -> Expect {
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
            // A ucall record must be exactly RECORD_BYTES long and readable.
            Call::Ucall => {
                if a[1] != memvisor_abi::ucall::RECORD_BYTES as u64 {
                    Expect::Is(Status::Inval)
                } else {
                    Expect::OkOr2(Status::Fault, Status::Inval)
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
                    let fixed = f & map::FIXED != 0;
                    if fixed {
                        let align = if huge { HUGE } else { PAGE };
                        if !a[4].is_multiple_of(align) {
                            return Err(Status::Inval);
                        }
                        let end = a[4].checked_add(len + PAGE).ok_or(Status::Inval)?;
                        if a[4] < self.window[0] || end > self.window[1] {
                            return Err(Status::Perm);
                        }
                    } else if a[4] != 0 {
                        return Err(Status::Inval);
                    }
                    if !self.zone_ok(z) {
                        return Err(Status::NoZone);
                    }
                    if fixed && self.overlaps(a[4], a[4] + len) {
                        return Err(Status::Exists);
                    }
                    Ok(())
                })();
                match v {
                    Err(s) => Expect::Is(s),
                    // A guard page (not in the model) may be in the way of a fixed one.
                    Ok(()) if f & map::FIXED != 0 => Expect::OkOr2(Status::NoMem, Status::Exists),
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
    pub(super) fn apply(&mut self, r: &Request, st: Status, value: u64) -> bool {
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
                if f & map::FIXED != 0 && value != a[4] {
                    return false;
                }
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
