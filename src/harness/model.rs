//! The harness's shadow model: what the guest should own (regions, mapped pages, their
//! protection), predicted from the ABI alone; the result each request may have
//! ([`Expect`]); how a result changes the model; and resynchronising from the host after
//! steps it cannot predict.

use super::{Harness, HarnessError};
use memvisor::addr::{is_canonical, LARGE_PAGE_SIZE, PAGE_SIZE};
use memvisor::layout::{MMAP_GUARD, MMAP_WINDOW_END, MMAP_WINDOW_START};
use memvisor::space::ops::pte_flags_for;
use memvisor::space::Backing;
use memvisor_abi::{map, prot, zone, Call, Prot, Request, Status};
use std::collections::{BTreeMap, BTreeSet};

/// One region of the shadow model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MRegion {
    pub(super) end: u64,
    pub(super) lazy: bool,
    pub(super) huge: bool,
    /// The page after `end` is reserved as its guard (fresh regions and heads left by an
    /// munmap; a tail keeps its region's): part of the window no fixed mmap may take.
    pub(super) guard: bool,
    /// Protection runs: first GVA -> prot (as the host keeps them).
    pub(super) prot: BTreeMap<u64, u64>,
}

impl MRegion {
    pub(super) fn prot_at(&self, gva: u64) -> u64 {
        self.prot.range(..=gva).next_back().map_or(0, |(_, &p)| p)
    }
}

/// What the guest should own: regions by start, and the 4 KiB pages that should be mapped.
#[derive(Debug, Clone, Default)]
pub(super) struct Model {
    pub(super) regions: BTreeMap<u64, MRegion>,
    pub(super) backed: BTreeSet<u64>,
}

impl Model {
    /// The region holding all of `[gva, end)`.
    pub(super) fn region_for(&self, gva: u64, end: u64) -> Option<u64> {
        let (&s, r) = self.regions.range(..=gva).next_back()?;
        (end <= r.end).then_some(s)
    }

    /// True if `[gva, end)` meets a region or its guard page.
    pub(super) fn reserved_overlap(&self, gva: u64, end: u64) -> bool {
        self.regions
            .range(..end)
            .any(|(&s, r)| s < end && r.end + if r.guard { MMAP_GUARD } else { 0 } > gva)
    }
}

/// What the model allows as the result of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    /// Exactly this status (value unchecked unless `Value`).
    Status(Status),
    /// Ok with exactly this value.
    Value(u64),
    /// Any of these statuses (Ok included if listed).
    AnyOf(Vec<Status>),
    /// Anything (the model cannot know).
    Any,
}

impl Harness {
    // ---- the model's predictions ------------------------------------------------------

    fn zone_ok(&self, z: u64) -> Result<(), Status> {
        use memvisor::frames::ZoneKind;
        let present = |k: ZoneKind| {
            self.space
                .zones()
                .zones()
                .iter()
                .any(|s| s.kind == k && s.present > 0)
        };
        let ok = match z {
            zone::ANY => [ZoneKind::Normal, ZoneKind::Dma32, ZoneKind::Dma]
                .into_iter()
                .any(present),
            zone::DMA => present(ZoneKind::Dma),
            zone::DMA32 => present(ZoneKind::Dma32),
            zone::NORMAL => present(ZoneKind::Normal),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Status::NoZone)
        }
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

    fn range_check(gva: u64, len: u64) -> Result<u64, Status> {
        if len == 0 || gva % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(Status::Inval);
        }
        let end = gva.checked_add(len).ok_or(Status::Inval)?;
        if !is_canonical(gva) || !is_canonical(end - 1) {
            return Err(Status::Inval);
        }
        Ok(end)
    }

    fn outside(gva: u64, end: u64) -> Status {
        if gva < MMAP_WINDOW_START || end > MMAP_WINDOW_END {
            Status::Perm
        } else {
            Status::NotMapped
        }
    }

    /// Predict the result of `r` from the model.
    pub(super) fn predict(&self, r: &Request) -> Expect {
        use Expect::*;
        let a = r.args;
        if r.reserved != 0 {
            return Status(memvisor_abi::Status::Inval);
        }
        let Some(call) = Call::from_u32(r.nr) else {
            return Status(memvisor_abi::Status::NoSys);
        };
        match call {
            Call::Nop | Call::FaultReport | Call::Exit | Call::Panic => Value(0),
            Call::ConsoleWrite => {
                if a[1] > memvisor_abi::MAX_CONSOLE_WRITE {
                    Status(memvisor_abi::Status::Inval)
                } else {
                    AnyOf(vec![memvisor_abi::Status::Ok, memvisor_abi::Status::Fault])
                }
            }
            Call::Record => {
                if a[1] > memvisor::hypercall::RECORD_LINE_MAX {
                    Status(memvisor_abi::Status::Inval)
                } else {
                    AnyOf(vec![
                        memvisor_abi::Status::Ok,
                        memvisor_abi::Status::Fault,
                        memvisor_abi::Status::NoMem,
                    ])
                }
            }
            Call::Stats => {
                if a[0] == self.scratch_gva {
                    Value(0)
                } else {
                    AnyOf(vec![memvisor_abi::Status::Ok, memvisor_abi::Status::Fault])
                }
            }
            // A ucall record must be exactly RECORD_BYTES long, readable and well formed.
            Call::Ucall => {
                if a[1] != memvisor_abi::ucall::RECORD_BYTES as u64 {
                    Status(memvisor_abi::Status::Inval)
                } else {
                    AnyOf(vec![
                        memvisor_abi::Status::Ok,
                        memvisor_abi::Status::Fault,
                        memvisor_abi::Status::Inval,
                    ])
                }
            }
            // Served by the VMM (stage-2 test, fault matrix): not here.
            Call::Stage2 | Call::MatrixSync => Status(memvisor_abi::Status::NoSys),
            Call::Translate => {
                let gva = a[0];
                if !is_canonical(gva) {
                    Status(memvisor_abi::Status::Inval)
                } else if (MMAP_WINDOW_START..MMAP_WINDOW_END).contains(&gva) {
                    if self.model.backed.contains(&(gva & !(PAGE_SIZE - 1))) {
                        Status(memvisor_abi::Status::Ok)
                    } else {
                        Status(memvisor_abi::Status::NotMapped)
                    }
                } else {
                    AnyOf(vec![
                        memvisor_abi::Status::Ok,
                        memvisor_abi::Status::NotMapped,
                    ])
                }
            }
            Call::Mmap => self.predict_mmap(a[0], a[1], a[2], a[3], a[4]),
            Call::Munmap => self.predict_munmap(a[0], a[1]),
            Call::Mprotect => self.predict_mprotect(a[0], a[1], a[2]),
            Call::LazyFault => self.predict_lazy(a[0]),
        }
    }

    fn predict_mmap(&self, len: u64, p: u64, z: u64, flags: u64, addr: u64) -> Expect {
        let fixed = flags & map::FIXED != 0;
        let v = (|| {
            Self::prot_check(p)?;
            if flags & !map::ALL != 0 {
                return Err(Status::Inval);
            }
            let lazy = flags & map::LAZY != 0;
            let huge = flags & map::HUGE != 0;
            if lazy && (flags & map::POPULATE != 0 || huge) {
                return Err(Status::Inval);
            }
            if len == 0 || len % PAGE_SIZE != 0 || len > MMAP_WINDOW_END - MMAP_WINDOW_START {
                return Err(Status::Inval);
            }
            if huge && len % LARGE_PAGE_SIZE != 0 {
                return Err(Status::Inval);
            }
            let reserve = len.checked_add(MMAP_GUARD).ok_or(Status::Inval)?;
            let align = if huge { LARGE_PAGE_SIZE } else { PAGE_SIZE };
            if !fixed {
                return if addr != 0 {
                    Err(Status::Inval)
                } else {
                    self.zone_ok(z)
                };
            }
            if addr % align != 0 {
                return Err(Status::Inval);
            }
            let end = addr.checked_add(reserve).ok_or(Status::Inval)?;
            if addr < MMAP_WINDOW_START || end > MMAP_WINDOW_END {
                return Err(Status::Perm);
            }
            self.zone_ok(z)?;
            if self.model.reserved_overlap(addr, end) {
                return Err(Status::Exists);
            }
            Ok(())
        })();
        match v {
            Err(s) => Expect::Status(s),
            // A fixed mapping is where it was asked for (or none: out of frames).
            Ok(()) if fixed && flags & map::LAZY != 0 => Expect::Value(addr),
            Ok(()) => Expect::AnyOf(vec![Status::Ok, Status::NoMem]),
        }
    }

    fn predict_munmap(&self, gva: u64, len: u64) -> Expect {
        let end = match Self::range_check(gva, len) {
            Ok(e) => e,
            Err(s) => return Expect::Status(s),
        };
        let Some(key) = self.model.region_for(gva, end) else {
            return Expect::Status(Self::outside(gva, end));
        };
        let r = &self.model.regions[&key];
        if r.huge && (gva % LARGE_PAGE_SIZE != 0 || len % LARGE_PAGE_SIZE != 0) {
            return Expect::Status(Status::Inval);
        }
        Expect::Value(0)
    }

    fn predict_mprotect(&self, gva: u64, len: u64, p: u64) -> Expect {
        let end = match Self::range_check(gva, len) {
            Ok(e) => e,
            Err(s) => return Expect::Status(s),
        };
        if let Err(s) = Self::prot_check(p) {
            return Expect::Status(s);
        }
        let Some(key) = self.model.region_for(gva, end) else {
            return Expect::Status(Self::outside(gva, end));
        };
        let r = &self.model.regions[&key];
        if r.huge && (gva % LARGE_PAGE_SIZE != 0 || len % LARGE_PAGE_SIZE != 0) {
            return Expect::Status(Status::Inval);
        }
        // Leaf entries whose value changes.
        let nx = self.space.features().nx;
        let new = pte_flags_for(Prot::from_bits_retain(p), nx);
        let step = if r.huge { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        let changed = self
            .model
            .backed
            .range(gva..end)
            .filter(|&&g| {
                g % step == 0 && pte_flags_for(Prot::from_bits_retain(r.prot_at(g)), nx) != new
            })
            .count() as u64;
        Expect::Value(changed)
    }

    fn predict_lazy(&self, cr2: u64) -> Expect {
        if !is_canonical(cr2) {
            return Expect::Status(Status::NotMapped);
        }
        let page = cr2 & !(PAGE_SIZE - 1);
        let Some(end) = page.checked_add(PAGE_SIZE) else {
            return Expect::Status(Status::NotMapped);
        };
        let Some(key) = self.model.region_for(page, end) else {
            return Expect::Status(Status::NotMapped);
        };
        if !self.model.regions[&key].lazy {
            return Expect::Status(Status::NotMapped);
        }
        if self.model.backed.contains(&page) {
            return Expect::Status(Status::Perm);
        }
        Expect::AnyOf(vec![Status::Ok, Status::NoMem])
    }

    // ---- applying a result to the model ------------------------------------------------

    pub(super) fn apply(
        &mut self,
        r: &Request,
        st: Status,
        value: u64,
    ) -> Result<(), HarnessError> {
        if st != Status::Ok {
            return Ok(());
        }
        let a = r.args;
        match Call::from_u32(r.nr) {
            Some(Call::Mmap) => {
                let (len, p, flags) = (a[0], a[1], a[3]);
                let lazy = flags & map::LAZY != 0;
                let huge = flags & map::HUGE != 0;
                let gva = value;
                if flags & map::FIXED != 0 && gva != a[4] {
                    return Err(format!("fixed mmap at {:#x} returned {gva:#x}", a[4]));
                }
                let align = if huge { LARGE_PAGE_SIZE } else { PAGE_SIZE };
                let end = gva.checked_add(len).ok_or("mmap: region end overflows")?;
                if gva % align != 0 || gva < MMAP_WINDOW_START || end + MMAP_GUARD > MMAP_WINDOW_END
                {
                    return Err(format!("mmap returned a bad GVA {gva:#x} (len {len:#x})"));
                }
                if let Some((&s, o)) = self.model.regions.range(..end + MMAP_GUARD).next_back() {
                    if o.end + MMAP_GUARD > gva {
                        return Err(format!(
                            "mmap returned [{gva:#x}, {end:#x}), overlapping region [{s:#x}, {:#x}) or its guard",
                            o.end
                        ));
                    }
                }
                self.model.regions.insert(
                    gva,
                    MRegion {
                        end,
                        lazy,
                        huge,
                        guard: true,
                        prot: [(gva, p)].into_iter().collect(),
                    },
                );
                if !lazy {
                    let mut g = gva;
                    while g < end {
                        self.model.backed.insert(g);
                        g += PAGE_SIZE;
                    }
                }
            }
            Some(Call::Munmap) => {
                let (gva, len) = (a[0], a[1]);
                let end = gva + len;
                let key = self
                    .model
                    .region_for(gva, end)
                    .ok_or("munmap succeeded outside the model")?;
                let r = self
                    .model
                    .regions
                    .remove(&key)
                    .ok_or("model region vanished")?;
                let gone: Vec<u64> = self.model.backed.range(gva..end).copied().collect();
                for g in gone {
                    self.model.backed.remove(&g);
                }
                if gva > key {
                    let mut h = r.clone();
                    h.end = gva;
                    h.guard = true;
                    h.prot = r.prot.range(..gva).map(|(&k, &v)| (k, v)).collect();
                    self.model.regions.insert(key, h);
                }
                if end < r.end {
                    let mut t = r.clone();
                    let p = r.prot_at(end);
                    t.prot = r.prot.range(end..).map(|(&k, &v)| (k, v)).collect();
                    t.prot.insert(end, p);
                    self.model.regions.insert(end, t);
                }
            }
            Some(Call::Mprotect) => {
                let (gva, len, p) = (a[0], a[1], a[2]);
                let end = gva + len;
                let key = self
                    .model
                    .region_for(gva, end)
                    .ok_or("mprotect succeeded outside the model")?;
                if let Some(r) = self.model.regions.get_mut(&key) {
                    let after = r.prot_at(end);
                    let stale: Vec<u64> = r.prot.range(gva..end).map(|(&k, _)| k).collect();
                    for k in stale {
                        r.prot.remove(&k);
                    }
                    r.prot.insert(gva, p);
                    if end < r.end {
                        r.prot.insert(end, after);
                    }
                }
            }
            Some(Call::LazyFault) => {
                self.model.backed.insert(a[0] & !(PAGE_SIZE - 1));
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn judge(
        &self,
        r: &Request,
        expect: &Expect,
        st: Status,
        value: u64,
    ) -> Result<(), HarnessError> {
        let ok = match expect {
            Expect::Status(s) => *s == st,
            Expect::Value(v) => st == Status::Ok && value == *v,
            Expect::AnyOf(v) => v.contains(&st),
            Expect::Any => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "request nr {} args {:#x?}: host answered {} (value {value:#x}), model expected {expect:?}",
                r.nr,
                r.args,
                st.name()
            ))
        }
    }

    /// The model takes the host's regions and mapped pages (after steps it cannot predict).
    pub(super) fn resync(&mut self) {
        let mut m = Model::default();
        for r in self.space.regions().values() {
            let huge = r.backing == Backing::Populated
                && self
                    .space
                    .page_tables()
                    .translate_raw(&self.space.ram().mem, r.start)
                    .is_ok_and(|t| t.page_size.bytes() == LARGE_PAGE_SIZE);
            m.regions.insert(
                r.start,
                MRegion {
                    end: r.end,
                    lazy: r.backing == Backing::Lazy,
                    huge,
                    guard: r.guard,
                    prot: r.prot.iter().map(|(&k, p)| (k, p.bits())).collect(),
                },
            );
        }
        m.backed = self.window_pages();
        self.model = m;
    }
}
