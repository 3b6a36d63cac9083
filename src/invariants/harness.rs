//! A KVM-free harness for the hypercall boundary (issue 7 §3): a real [`AddressSpace`] (guest
//! RAM in a plain `GuestMemoryMmap`, the real zone allocator and page tables, the embedded
//! guest kernel loaded) driven by hostile call sequences, without a vCPU.
//!
//! Requests go through [`Hypercalls::handle`] (written as request blocks into the kernel's
//! writable segment, exactly where the guest keeps its blocks) or straight into the
//! [`AddressSpace`] methods. After every step the harness checks:
//!
//! * the host's invariants ([`super::check`]);
//! * a **shadow model**: the regions the guest should own and the pages that should be
//!   mapped (with their protection), predicted from the ABI alone; every status the host
//!   returns must be the one the model predicts (or, where the model cannot know — running out
//!   of frames, reading memory outside the mmap window — one of the allowed ones);
//! * that the kernel's read-only segments are byte-for-byte unchanged (the host never writes
//!   there on the guest's behalf).
//!
//! Raw blocks (arbitrary bytes, rung at arbitrary GPAs) are checked for invariants only; the
//! model then resynchronises from the host. [`Harness::run_bytes`] turns any byte string into
//! a call sequence (the fuzz target and the proptest use it).

use super::{check, teardown_check};
use crate::addr::{is_canonical, Gva, LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::boot::cpuid::Features;
use crate::frames::ZonePreset;
use crate::hypercall::{Flow, Hypercalls};
use crate::layout::{
    BOOT_STACK_BOTTOM, DIRECT_MAP_BASE, MMAP_GUARD, MMAP_WINDOW_END, MMAP_WINDOW_START,
    MMIO_HOLE_START, USER_STACK_BOTTOM,
};
use crate::space::ops::pte_flags_for;
use crate::space::{AddressSpace, Backing};
use memvisor_abi::{map, prot, zone, Batch, Call, MemStats, Request, Status, MAX_BATCH};
use std::collections::{BTreeMap, BTreeSet};
use vm_memory::{Bytes, GuestAddress};

/// One region of the shadow model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MRegion {
    end: u64,
    lazy: bool,
    huge: bool,
    /// Protection runs: first GVA -> prot (as the host keeps them).
    prot: BTreeMap<u64, u64>,
}

impl MRegion {
    fn prot_at(&self, gva: u64) -> u64 {
        self.prot.range(..=gva).next_back().map_or(0, |(_, &p)| p)
    }
}

/// What the guest should own: regions by start, and the 4 KiB pages that should be mapped.
#[derive(Debug, Clone, Default)]
struct Model {
    regions: BTreeMap<u64, MRegion>,
    backed: BTreeSet<u64>,
}

impl Model {
    /// The region holding all of `[gva, end)`.
    fn region_for(&self, gva: u64, end: u64) -> Option<u64> {
        let (&s, r) = self.regions.range(..=gva).next_back()?;
        (end <= r.end).then_some(s)
    }
}

/// What the model allows as the result of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Exactly this status (value unchecked unless `Value`).
    Status(Status),
    /// Ok with exactly this value.
    Value(u64),
    /// Any of these statuses (Ok included if listed).
    AnyOf(Vec<Status>),
    /// Anything (the model cannot know).
    Any,
}

/// The harness. See the module docs.
pub struct Harness {
    /// The guest's address space.
    pub space: AddressSpace,
    /// Hypercall dispatch and its counters.
    pub hc: Hypercalls,
    /// GPA of the request block (in the kernel's writable segment).
    pub block_gpa: u64,
    /// Requests that fit in the block.
    pub block_cap: usize,
    /// GVA of a 64-byte writable scratch buffer (for `Stats`).
    pub scratch_gva: u64,
    /// Results by status name (all requests, raw blocks included).
    pub results: BTreeMap<&'static str, u64>,
    /// Steps run.
    pub steps: u64,
    /// Largest valid mmap length the byte decoder asks for (frames get zeroed on populate:
    /// on a large guest, bytes would otherwise cost gigabytes of host memory per case).
    pub populate_cap: u64,
    model: Model,
    ro_image: Vec<(u64, Vec<u8>)>,
    rng: u64,
}

/// A failed step: what went wrong.
pub type HarnessError = String;

fn status_of(r: Result<u64, Status>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(s) => s,
    }
}

impl Harness {
    /// A fresh guest of `mem_bytes` with the embedded kernel.
    ///
    /// # Errors
    /// If the address space cannot be built or the kernel has no writable segment.
    pub fn new(
        mem_bytes: u64,
        preset: ZonePreset,
        features: Features,
    ) -> Result<Self, HarnessError> {
        // A copy: the embedded bytes (`include_bytes!`) are only byte-aligned, and the ELF
        // parser wants its header 8-byte aligned; a Vec's buffer is.
        let kernel: Vec<u8> = crate::guest_image::GUEST_ELF.to_vec();
        let space = AddressSpace::build(mem_bytes, &kernel, preset, features)
            .map_err(|e| format!("build: {e}"))?;
        let seg = space
            .kernel
            .segments
            .iter()
            .find(|s| s.write && !s.exec)
            .copied()
            .ok_or("the kernel has no writable segment")?;
        let start = seg.gpa.div_ceil(8) * 8;
        let end = (seg.gpa + seg.memsz) & !(PAGE_SIZE - 1);
        if end < start + 8 + 64 + 64 {
            return Err("the kernel's writable segment is too small for a request block".into());
        }
        let scratch_gpa = end - 64;
        let block_cap = (((scratch_gpa - start - 8) / 64) as usize).min(MAX_BATCH as usize);
        let scratch_gva = seg.gva + (scratch_gpa - seg.gpa);
        let mut ro_image = Vec::new();
        for s in space.kernel.segments.iter().filter(|s| !s.write) {
            let mut buf = vec![0u8; s.memsz as usize];
            space
                .ram
                .mem
                .read_slice(&mut buf, GuestAddress(s.gpa))
                .map_err(|e| format!("read kernel: {e}"))?;
            ro_image.push((s.gpa, buf));
        }
        Ok(Harness {
            space,
            hc: Hypercalls::default(),
            block_gpa: start,
            block_cap,
            scratch_gva,
            results: BTreeMap::new(),
            steps: 0,
            populate_cap: if mem_bytes <= 64 << 20 {
                mem_bytes
            } else {
                16 << 20
            },
            model: Model::default(),
            ro_image,
            rng: 0x9e37_79b9_7f4a_7c15,
        })
    }

    // ---- the model's predictions ------------------------------------------------------

    fn zone_ok(&self, z: u64) -> Result<(), Status> {
        use crate::frames::ZoneKind;
        let present = |k: ZoneKind| {
            self.space
                .zones
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
    fn predict(&self, r: &Request) -> Expect {
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
                if a[1] > crate::hypercall::RECORD_LINE_MAX {
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
            Call::Mmap => self.predict_mmap(a[0], a[1], a[2], a[3]),
            Call::Munmap => self.predict_munmap(a[0], a[1]),
            Call::Mprotect => self.predict_mprotect(a[0], a[1], a[2]),
            Call::LazyFault => self.predict_lazy(a[0]),
        }
    }

    fn predict_mmap(&self, len: u64, p: u64, z: u64, flags: u64) -> Expect {
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
            self.zone_ok(z)
        })();
        match v {
            Err(s) => Expect::Status(s),
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
        let nx = self.space.features.nx;
        let new = pte_flags_for(p, nx);
        let step = if r.huge { LARGE_PAGE_SIZE } else { PAGE_SIZE };
        let changed = self
            .model
            .backed
            .range(gva..end)
            .filter(|&&g| g % step == 0 && pte_flags_for(r.prot_at(g), nx) != new)
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

    fn apply(&mut self, r: &Request, st: Status, value: u64) -> Result<(), HarnessError> {
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

    fn judge(
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

    // ---- running requests --------------------------------------------------------------

    /// Run one request straight against the address space (no request block).
    fn direct(&mut self, r: &Request) -> Result<u64, Status> {
        let a = r.args;
        let s = &mut self.space;
        match Call::from_u32(r.nr) {
            Some(Call::Mmap) => s.mmap(a[0], a[1], a[2], a[3]),
            Some(Call::Munmap) => s.munmap(a[0], a[1]),
            Some(Call::Mprotect) => s.mprotect(a[0], a[1], a[2]),
            Some(Call::LazyFault) => s.lazy_fault(a[0], a[1], a[2]),
            Some(Call::Translate) => s.translate_gva(a[0]),
            _ => Ok(0),
        }
    }

    /// Write `reqs` as a block and ring the host with its GPA; returns each request's
    /// (status, value) as the host wrote them, and the flow.
    fn via_block(&mut self, reqs: &[Request]) -> Result<(Vec<(i32, u64)>, Flow), HarnessError> {
        let n = reqs.len().min(self.block_cap);
        let mem = &self.space.ram.mem;
        mem.write_obj(
            Batch {
                count: n as u32,
                completed: 0,
            },
            GuestAddress(self.block_gpa),
        )
        .map_err(|e| format!("write block: {e}"))?;
        for (i, r) in reqs.iter().take(n).enumerate() {
            mem.write_obj(*r, GuestAddress(self.block_gpa + 8 + i as u64 * 64))
                .map_err(|e| format!("write request: {e}"))?;
        }
        let flow = self.hc.handle(&mut self.space, self.block_gpa);
        let mem = &self.space.ram.mem;
        let head: Batch = mem
            .read_obj(GuestAddress(self.block_gpa))
            .map_err(|e| format!("read block: {e}"))?;
        if head.completed as usize != n {
            return Err(format!(
                "block of {n} requests: host completed {}",
                head.completed
            ));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let r: Request = mem
                .read_obj(GuestAddress(self.block_gpa + 8 + i as u64 * 64))
                .map_err(|e| format!("read request: {e}"))?;
            out.push((r.status, r.value));
        }
        Ok((out, flow))
    }

    /// Run requests with the model: through a block (`direct == false`) or straight into the
    /// address space. A block's results are judged in order against the model as updated by
    /// the earlier requests' actual results (the host runs them in order too).
    ///
    /// # Errors
    /// A result the model does not allow, or a broken invariant.
    pub fn requests(&mut self, reqs: &[Request], direct: bool) -> Result<(), HarnessError> {
        if direct {
            for r in reqs {
                let mut r = *r;
                r.reserved = 0;
                if !matches!(
                    Call::from_u32(r.nr),
                    Some(
                        Call::Mmap
                            | Call::Munmap
                            | Call::Mprotect
                            | Call::LazyFault
                            | Call::Translate
                    )
                ) {
                    continue;
                }
                let expect = self.predict(&r);
                let res = self.direct(&r);
                let (st, v) = (status_of(res), res.unwrap_or(0));
                *self.results.entry(st.name()).or_default() += 1;
                self.judge(&r, &expect, st, v)?;
                self.apply(&r, st, v)?;
                self.after_step()?;
            }
            return Ok(());
        }
        let n = reqs.len().min(self.block_cap);
        let (results, flow) = self.via_block(&reqs[..n])?;
        // Replay: predict each request against the model as updated by the previous actual
        // results (the host runs them in order too).
        let mut stopped = false;
        for (i, (r, &(raw, v))) in reqs[..n].iter().zip(&results).enumerate() {
            let st = Status::from_i32(raw).ok_or(format!("request {i}: unknown status {raw}"))?;
            *self.results.entry(st.name()).or_default() += 1;
            let expect = if stopped {
                Expect::Status(Status::Skipped)
            } else if i > 0
                && reqs[..i]
                    .iter()
                    .any(|p| p.nr == Call::Stats as u32 && p.reserved == 0)
            {
                // A Stats may have written into memory later requests read.
                Expect::Any
            } else {
                self.predict(r)
            };
            self.judge(r, &expect, st, v)?;
            if !matches!(expect, Expect::Any) {
                self.apply(r, st, v)?;
            }
            if matches!(Call::from_u32(r.nr), Some(Call::Exit | Call::Panic))
                && r.reserved == 0
                && !stopped
            {
                stopped = true;
            }
        }
        let want_flow = reqs[..n].iter().find_map(|r| match Call::from_u32(r.nr) {
            Some(Call::Exit) if r.reserved == 0 => Some(Flow::Exit(r.args[0] as u32)),
            Some(Call::Panic) if r.reserved == 0 => Some(Flow::Panic(String::new())),
            _ => None,
        });
        match (&want_flow, &flow) {
            (None, Flow::Continue) | (Some(Flow::Panic(_)), Flow::Panic(_)) => {}
            (Some(a), b) if a == b => {}
            (a, b) => return Err(format!("block flow {b:?}, expected {a:?}")),
        }
        if reqs[..n]
            .iter()
            .any(|r| r.nr == Call::Stats as u32 && r.reserved == 0)
        {
            self.resync();
        }
        self.after_step()
    }

    /// Write `bytes` at the block GPA (as much as fits in the kernel's writable segment) and
    /// ring the host with `ring` (any GPA). Checked for invariants only; the model then takes
    /// the host's state.
    ///
    /// # Errors
    /// A broken invariant or a bad completion count.
    pub fn raw(&mut self, bytes: &[u8], ring: u64) -> Result<(), HarnessError> {
        let room = 8 + self.block_cap * 64;
        let n = bytes.len().min(room);
        self.space
            .ram
            .mem
            .write_slice(&bytes[..n], GuestAddress(self.block_gpa))
            .map_err(|e| format!("write raw block: {e}"))?;
        let before = self.hc.bad_blocks;
        let head: Option<Batch> = self.space.ram.mem.read_obj(GuestAddress(ring)).ok();
        let _ = self.hc.handle(&mut self.space, ring);
        if self.hc.bad_blocks == before {
            // Accepted: the ring GPA must be a proper block.
            let Some(head) = head else {
                return Err(format!("block at unreadable GPA {ring:#x} accepted"));
            };
            if head.count == 0 || head.count > MAX_BATCH || ring % 8 != 0 {
                return Err(format!(
                    "bad block at {ring:#x} (count {}) accepted",
                    head.count
                ));
            }
            let len = 8 + u64::from(head.count) * 64;
            let all_writable = (ring / PAGE_SIZE..=(ring + len - 1) / PAGE_SIZE)
                .all(|p| self.space.host_may_write(crate::addr::Pfn(p)));
            if !all_writable {
                return Err(format!(
                    "block at {ring:#x} covering frames the host may not write accepted"
                ));
            }
        }
        self.resync();
        self.after_step()
    }

    /// The model takes the host's regions and mapped pages (after steps it cannot predict).
    fn resync(&mut self) {
        let mut m = Model::default();
        for r in self.space.regions.values() {
            let huge = r.backing == Backing::Populated
                && self
                    .space
                    .pt
                    .translate(&self.space.ram.mem, Gva(r.start))
                    .is_ok_and(|t| t.page_size.bytes() == LARGE_PAGE_SIZE);
            m.regions.insert(
                r.start,
                MRegion {
                    end: r.end,
                    lazy: r.backing == Backing::Lazy,
                    huge,
                    prot: r.prot.clone(),
                },
            );
        }
        m.backed = self.window_pages();
        self.model = m;
    }

    fn window_pages(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let len = MMAP_WINDOW_END - MMAP_WINDOW_START;
        if let Ok(leaves) =
            self.space
                .pt
                .leaves_in_range(&self.space.ram.mem, Gva(MMAP_WINDOW_START), len)
        {
            for l in leaves {
                let mut g = l.gva.0;
                while g < l.gva.0 + l.size.bytes() {
                    out.insert(g);
                    g += PAGE_SIZE;
                }
            }
        }
        out
    }

    /// Checks after every step: invariants, and the model against the host (the kernel's
    /// read-only segments are compared in [`Self::finish`]).
    ///
    /// # Errors
    /// What broke.
    pub fn after_step(&mut self) -> Result<(), HarnessError> {
        self.steps += 1;
        // Every step must leave KVM's shadow flush decision to the VMM; here it is just reset.
        self.space.shadow_stale = false;
        if let Err(v) = check(&self.space) {
            let lines: Vec<String> = v.iter().take(8).map(|x| x.to_string()).collect();
            return Err(format!("invariants broken:\n  {}", lines.join("\n  ")));
        }
        // Model: the same regions, the same mapped pages, the same protection.
        let host: Vec<(u64, u64)> = self
            .space
            .regions
            .values()
            .map(|r| (r.start, r.end))
            .collect();
        let model: Vec<(u64, u64)> = self
            .model
            .regions
            .iter()
            .map(|(&s, r)| (s, r.end))
            .collect();
        if host != model {
            return Err(format!(
                "regions differ: host {host:#x?}, model {model:#x?}"
            ));
        }
        let pages = self.window_pages();
        if pages != self.model.backed {
            let extra: Vec<_> = pages.difference(&self.model.backed).take(4).collect();
            let missing: Vec<_> = self.model.backed.difference(&pages).take(4).collect();
            return Err(format!(
                "mapped pages differ: host-only {extra:#x?}, model-only {missing:#x?}"
            ));
        }
        for (s, r) in &self.model.regions {
            let Some(h) = self.space.regions.get(s) else {
                continue;
            };
            for &g in self.model.backed.range(*s..r.end) {
                if h.prot_at(g) != r.prot_at(g) {
                    return Err(format!(
                        "protection at {g:#x}: host {:#x}, model {:#x}",
                        h.prot_at(g),
                        r.prot_at(g)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kernel's read-only segments are unchanged since the harness was built.
    ///
    /// # Errors
    /// Which segment changed.
    pub fn kernel_intact(&self) -> Result<(), HarnessError> {
        for (gpa, bytes) in &self.ro_image {
            let mut now = vec![0u8; bytes.len()];
            let same = self
                .space
                .ram
                .mem
                .read_slice(&mut now, GuestAddress(*gpa))
                .is_ok()
                && now == *bytes;
            if !same {
                return Err(format!(
                    "the kernel's read-only segment at GPA {gpa:#x} changed"
                ));
            }
        }
        Ok(())
    }

    /// Mmap populated regions of `pages` pages until the host says `NoMem` (at most `max`
    /// calls), check the frames ran out, then unmap them all.
    ///
    /// # Errors
    /// A result the model does not allow, or a broken invariant.
    pub fn flood(&mut self, pages: u64, zone_nr: u64, max: usize) -> Result<u64, HarnessError> {
        let rw = prot::READ | prot::WRITE | prot::USER;
        let mut got = Vec::new();
        let mut nomem = false;
        for _ in 0..max {
            let r = Request::new(
                Call::Mmap,
                [pages * PAGE_SIZE, rw, zone_nr, map::POPULATE, 0],
            );
            let expect = self.predict(&r);
            let res = self
                .space
                .mmap(pages * PAGE_SIZE, rw, zone_nr, map::POPULATE);
            let (st, v) = (status_of(res), res.unwrap_or(0));
            *self.results.entry(st.name()).or_default() += 1;
            self.judge(&r, &expect, st, v)?;
            self.apply(&r, st, v)?;
            if st == Status::Ok {
                got.push(v);
            } else {
                nomem = st == Status::NoMem;
                break;
            }
        }
        self.after_step()?;
        for part in got.chunks(self.block_cap.max(1)) {
            let reqs: Vec<Request> = part
                .iter()
                .map(|&gva| Request::new(Call::Munmap, [gva, pages * PAGE_SIZE, 0, 0, 0]))
                .collect();
            self.requests(&reqs, false)?;
        }
        Ok(if nomem { got.len() as u64 } else { 0 })
    }

    /// Unmap everything and check the teardown invariants.
    ///
    /// # Errors
    /// A broken invariant.
    pub fn finish(&mut self) -> Result<(), HarnessError> {
        self.kernel_intact()?;
        teardown_check(&mut self.space).map(|_| ()).map_err(|v| {
            let lines: Vec<String> = v.iter().take(8).map(|x| x.to_string()).collect();
            format!("teardown broken:\n  {}", lines.join("\n  "))
        })
    }

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
        let k = &self.space.kernel;
        let text = k.segments.first().map_or(0, |s| s.gva);
        let chunk = self
            .space
            .pool
            .chunks
            .first()
            .map_or(0, |c| c.0 * PAGE_SIZE);
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
        let end = self.space.ram.end();
        match cur.byte() % 16 {
            0..=3 => self.block_gpa,
            4 => self.block_gpa + u64::from(cur.byte() % 64),
            5 => end - 8,
            6 => end - 64,
            7 => end,
            8 => MMIO_HOLE_START,
            9 => memvisor_abi::DOORBELL_GPA,
            10 => self.space.cr3(),
            11 => self.space.kernel.phys_start,
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

/// `MemStats` as the host writes it for `Stats` at the scratch buffer (for tests).
///
/// # Errors
/// If the scratch buffer cannot be read.
pub fn read_stats(h: &Harness) -> Result<MemStats, HarnessError> {
    let t = h
        .space
        .pt
        .translate(&h.space.ram.mem, Gva(h.scratch_gva))
        .map_err(|e| e.to_string())?;
    h.space
        .ram
        .mem
        .read_obj(GuestAddress(t.gpa.0))
        .map_err(|e| e.to_string())
}
