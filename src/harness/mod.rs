//! A KVM-free harness for the hypercall boundary (issue 7 §3): a real [`AddressSpace`] (guest
//! RAM in a plain `GuestMemoryMmap`, the real zone allocator and page tables, the embedded
//! guest kernel loaded) driven by hostile call sequences, without a vCPU.
//!
//! Requests go through [`Hypercalls::handle`] (written as request blocks into the kernel's
//! writable segment, exactly where the guest keeps its blocks) or straight into the
//! [`AddressSpace`] methods. After every step the harness checks:
//!
//! * the host's invariants ([`memvisor::invariants::check`]);
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
//!
//! # Layout
//! This file holds the [`Harness`] and how requests reach the host (straight, through a
//! request block, as raw bytes); the shadow model's predictions are in `model`, the checks
//! after every step in `checks`, and the decoding of bytes into calls in `bytes`.

mod bytes;
mod checks;
mod model;

use memvisor::addr::PAGE_SIZE;
use memvisor::boot::cpuid::Features;
use memvisor::frames::ZonePreset;
use memvisor::hypercall::{Flow, Hypercalls};
use memvisor::invariants::teardown_check;
use memvisor::space::AddressSpace;
use memvisor_abi::{
    map, prot, Batch, Call, MapFlags, MemStats, Prot, Request, Status, Zone, MAX_BATCH,
};
use model::{Expect, Model};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress};

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
        let kernel: Vec<u8> = memvisor::guest_image::GUEST_ELF.to_vec();
        let space = AddressSpace::build(mem_bytes, &kernel, preset, features)
            .map_err(|e| format!("build: {e}"))?;
        let seg = space
            .kernel()
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
        for s in space.kernel().segments.iter().filter(|s| !s.write) {
            let mut buf = vec![0u8; s.memsz as usize];
            space
                .ram()
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

    // ---- running requests --------------------------------------------------------------

    /// Run one request straight against the address space (no request block).
    fn direct(&mut self, r: &Request) -> Result<u64, Status> {
        let a = r.args;
        let s = &mut self.space;
        match Call::from_u32(r.nr) {
            Some(Call::Mmap) => s.mmap(
                a[0],
                Prot::from_bits_retain(a[1]),
                Zone(a[2]),
                MapFlags::from_bits_retain(a[3]),
                a[4],
            ),
            Some(Call::Munmap) => s.munmap(a[0], a[1]),
            Some(Call::Mprotect) => s.mprotect(a[0], a[1], Prot::from_bits_retain(a[2])),
            Some(Call::LazyFault) => s.lazy_fault(a[0], a[1], a[2]),
            Some(Call::Translate) => s.translate_gva(a[0]),
            _ => Ok(0),
        }
    }

    /// Write `reqs` as a block and ring the host with its GPA; returns each request's
    /// (status, value) as the host wrote them, and the flow.
    fn via_block(&mut self, reqs: &[Request]) -> Result<(Vec<(i32, u64)>, Flow), HarnessError> {
        let n = reqs.len().min(self.block_cap);
        let mem = &self.space.ram().mem;
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
        let mem = &self.space.ram().mem;
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
            .ram()
            .mem
            .write_slice(&bytes[..n], GuestAddress(self.block_gpa))
            .map_err(|e| format!("write raw block: {e}"))?;
        let before = self.hc.bad_blocks;
        let head: Option<Batch> = self.space.ram().mem.read_obj(GuestAddress(ring)).ok();
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
                .all(|p| self.space.host_may_write(memvisor::addr::Pfn::new(p)));
            if !all_writable {
                return Err(format!(
                    "block at {ring:#x} covering frames the host may not write accepted"
                ));
            }
        }
        self.resync();
        self.after_step()
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
            let res = self.space.mmap(
                pages * PAGE_SIZE,
                Prot::from_bits_retain(rw),
                Zone(zone_nr),
                MapFlags::POPULATE,
                0,
            );
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
}

/// `MemStats` as the host writes it for `Stats` at the scratch buffer (for tests).
///
/// # Errors
/// If the scratch buffer cannot be read.
pub fn read_stats(h: &Harness) -> Result<MemStats, HarnessError> {
    let t = h
        .space
        .page_tables()
        .translate_raw(&h.space.ram().mem, h.scratch_gva)
        .map_err(|e| e.to_string())?;
    h.space
        .ram()
        .mem
        .read_obj(GuestAddress(t.gpa.raw()))
        .map_err(|e| e.to_string())
}
