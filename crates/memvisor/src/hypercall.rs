//! Hypercall dispatch: decode a request block from guest memory, validate it, run each
//! request against the [`AddressSpace`], write the results back.
//!
//! The block's GPA comes from the guest and is hostile: the header and every request must lie
//! inside guest RAM and in frames the host may write (never a page-table frame or the kernel's
//! read-only segments), `count` must be 1..=`MAX_BATCH`. A bad block is counted and ignored
//! (the guest sees `completed == 0`); a bad request gets an error status. Nothing here panics.

use crate::addr::PAGE_SIZE;
use crate::space::{AddressSpace, FaultRecord};
use memvisor_abi::ucall::{self, Record, RECORD_BYTES};
use memvisor_abi::{
    Batch, Call, Hypercall, MemStats, Request, Status, MAX_BATCH, MAX_CONSOLE_WRITE,
};
use std::collections::BTreeMap;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Calls served by the VMM rather than the address space (they need the VM: memslots, dirty
/// log). The default answers `NoSys`.
pub trait VmmCalls {
    /// [`Call::Stage2`] with `op` and its operand.
    ///
    /// # Errors
    /// The [`Status`] answered to the guest (`NoSys` by default).
    fn stage2(&mut self, space: &mut AddressSpace, op: u64, arg: u64) -> Result<u64, Status> {
        let _ = (space, op, arg);
        Err(Status::NoSys)
    }
    /// A scenario's control call (e.g. [`Call::MatrixSync`]): its host side
    /// ([`crate::scenario::Scenario::control`]) serves it.
    ///
    /// # Errors
    /// The [`Status`] answered to the guest (`NoSys` by default).
    fn control(&mut self, space: &mut AddressSpace, call: &Hypercall) -> Result<u64, Status> {
        let _ = (space, call);
        Err(Status::NoSys)
    }
}

/// No VMM-served calls.
pub struct NoVmmCalls;
impl VmmCalls for NoVmmCalls {}

/// Most bytes of guest console output kept for the report; a guest can send 32 MiB per exit,
/// so later output is dropped (once marked) rather than growing the VMM without bound.
pub const CONSOLE_KEEP_MAX: usize = 4 << 20;
/// Most `key=value` records kept; later `Record` calls get `NoMem`.
pub const RECORDS_MAX: usize = 16384;
/// Longest `Record` line in bytes (longer lines get `Inval`).
pub const RECORD_LINE_MAX: u64 = 1024;
/// Marker appended once when console output is dropped.
const CONSOLE_DROPPED: &str = "\n[memvisor: further console output not kept]\n";

/// Where the guest's console output is echoed live (it is kept for the report either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConsoleEcho {
    /// Not echoed.
    #[default]
    Off,
    /// On stdout.
    Stdout,
    /// On stderr (when stdout carries JSON).
    Stderr,
}

impl ConsoleEcho {
    /// Write `text` where this says.
    pub fn write(self, text: &str) {
        use std::io::Write;
        let _ = match self {
            ConsoleEcho::Off => Ok(()),
            ConsoleEcho::Stdout => std::io::stdout().write_all(text.as_bytes()),
            ConsoleEcho::Stderr => std::io::stderr().write_all(text.as_bytes()),
        };
    }
}

/// What the vCPU loop does after a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Resume the guest.
    Continue,
    /// The guest asked to exit with this code.
    Exit(u32),
    /// The guest panicked with this message.
    Panic(String),
    /// A ucall of the guest SDK (sync point, failed assertion, done, unexpected exception);
    /// the vCPU loop decides whether the run goes on (see `crate::vm`).
    Ucall(Box<Record>),
}

/// Per-call statistics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CallStats {
    /// Requests of this call.
    pub count: u64,
    /// Requests that returned an error status.
    pub errors: u64,
    /// Host time spent, in nanoseconds (sum).
    pub total_ns: u64,
}

/// Hypercall bookkeeping kept by the VMM.
#[derive(Debug, Default)]
pub struct Hypercalls {
    /// By call name.
    pub by_call: BTreeMap<&'static str, CallStats>,
    /// By status name.
    pub by_status: BTreeMap<&'static str, u64>,
    /// Blocks rejected as a whole (bad GPA or count).
    pub bad_blocks: u64,
    /// Blocks served.
    pub blocks: u64,
    /// Console output of the guest.
    pub console: String,
    /// `key=value` records the guest sent.
    pub records: Vec<(String, String)>,
    /// Echo console output live.
    pub echo: ConsoleEcho,
}

impl Hypercalls {
    /// Serve the block whose GPA the guest wrote to the hypercall port.
    pub fn handle(&mut self, space: &mut AddressSpace, gpa: u64) -> Flow {
        self.handle_with(space, gpa, &mut NoVmmCalls)
    }

    /// [`Self::handle`], with `vmm` serving the calls that need the VM.
    pub fn handle_with(
        &mut self,
        space: &mut AddressSpace,
        gpa: u64,
        vmm: &mut dyn VmmCalls,
    ) -> Flow {
        let Some(count) = self.check_block(space, gpa) else {
            self.bad_blocks += 1;
            return Flow::Continue;
        };
        self.blocks += 1;
        let mut flow = Flow::Continue;
        let mut completed = 0u32;
        for i in 0..count as u64 {
            let at = gpa + 8 + i * 64;
            let Ok(mut req) = space.ram.mem.read_obj::<Request>(GuestAddress(at)) else {
                break;
            };
            let t0 = Instant::now();
            let (result, next) = if flow == Flow::Continue {
                self.one(space, &req, vmm)
            } else {
                (Err(Status::Skipped), None)
            };
            let name = Call::from_u32(req.nr).map_or("unknown", Call::name);
            let st = self.by_call.entry(name).or_default();
            st.count += 1;
            st.total_ns += t0.elapsed().as_nanos() as u64;
            let status = match result {
                Ok(v) => {
                    req.value = v;
                    Status::Ok
                }
                Err(s) => {
                    st.errors += 1;
                    req.value = 0;
                    s
                }
            };
            *self.by_status.entry(status.name()).or_default() += 1;
            req.status = status as i32;
            req.pad = 0;
            let _ = space.ram.mem.write_obj(req, GuestAddress(at));
            completed += 1;
            if let Some(f) = next {
                flow = f;
            }
        }
        let _ = space.ram.mem.write_obj(completed, GuestAddress(gpa + 4));
        flow
    }

    /// Validate the block; returns its request count.
    fn check_block(&self, space: &AddressSpace, gpa: u64) -> Option<u32> {
        if gpa % 8 != 0 || !space.ram.contains(gpa, 8) {
            return None;
        }
        let head: Batch = space.ram.mem.read_obj(GuestAddress(gpa)).ok()?;
        if head.count == 0 || head.count > MAX_BATCH {
            return None;
        }
        let len = 8 + head.count as u64 * 64;
        if !space.ram.contains(gpa, len) {
            return None;
        }
        let first = gpa / PAGE_SIZE;
        let last = (gpa + len - 1) / PAGE_SIZE;
        (first..=last)
            .all(|p| space.host_may_write(crate::addr::Pfn::new(p)))
            .then_some(head.count)
    }

    /// Run one request: its result and, for exit/panic, the flow change.
    fn one(
        &mut self,
        space: &mut AddressSpace,
        r: &Request,
        vmm: &mut dyn VmmCalls,
    ) -> (Result<u64, Status>, Option<Flow>) {
        let call = match Hypercall::decode(r) {
            Ok(c) => c,
            Err(st) => return (Err(st), None),
        };
        match call {
            Hypercall::Nop => (Ok(0), None),
            Hypercall::ConsoleWrite { gva, len } => (self.console_write(space, gva, len), None),
            Hypercall::Exit { code } => (Ok(0), Some(Flow::Exit(code))),
            Hypercall::Mmap {
                len,
                prot,
                zone,
                flags,
                addr,
            } => (space.mmap(len, prot, zone, flags, addr), None),
            Hypercall::Munmap { gva, len } => (space.munmap(gva, len), None),
            Hypercall::Mprotect { gva, len, prot } => (space.mprotect(gva, len, prot), None),
            Hypercall::Translate { gva } => (space.translate_gva(gva), None),
            Hypercall::Stats { gva } => (stats(space, gva), None),
            Hypercall::FaultReport {
                vector,
                error_code,
                cr2,
                rip,
                resolved,
            } => {
                space.log_fault(FaultRecord {
                    vector,
                    error_code,
                    cr2,
                    rip,
                    resolved,
                    kind: "reported",
                });
                (Ok(0), None)
            }
            Hypercall::LazyFault {
                cr2,
                error_code,
                rip,
            } => (space.lazy_fault(cr2, error_code, rip), None),
            Hypercall::Panic { gva, len } => {
                let msg = read_text(space, gva, len).unwrap_or_else(|_| "<unreadable>".into());
                (Ok(0), Some(Flow::Panic(msg)))
            }
            Hypercall::Stage2 { op, arg } => (vmm.stage2(space, op, arg), None),
            c @ Hypercall::MatrixSync { .. } => (vmm.control(space, &c), None),
            Hypercall::Ucall { gva, len } => match read_ucall(space, gva, len) {
                Ok(rec) => (Ok(0), Some(Flow::Ucall(Box::new(rec)))),
                Err(st) => (Err(st), None),
            },
            Hypercall::Record { len, .. } if len > RECORD_LINE_MAX => (Err(Status::Inval), None),
            Hypercall::Record { .. } if self.records.len() >= RECORDS_MAX => {
                (Err(Status::NoMem), None)
            }
            Hypercall::Record { gva, len } => match read_text(space, gva, len) {
                Ok(line) => {
                    let (k, v) = line.split_once('=').unwrap_or((line.as_str(), ""));
                    self.records
                        .push((k.trim().to_string(), v.trim().to_string()));
                    (Ok(0), None)
                }
                Err(s) => (Err(s), None),
            },
        }
    }

    fn console_write(&mut self, space: &AddressSpace, gva: u64, len: u64) -> Result<u64, Status> {
        let text = read_text(space, gva, len)?;
        self.echo.write(&text);
        if self.console.len() + text.len() <= CONSOLE_KEEP_MAX {
            self.console.push_str(&text);
        } else if !self.console.ends_with(CONSOLE_DROPPED) {
            self.console.push_str(CONSOLE_DROPPED);
        }
        Ok(len)
    }
}

/// Read and decode a ucall record (exactly [`RECORD_BYTES`] at a GVA); an unexpected
/// exception (`FAULT`, values vector, error code, CR2, RIP) also goes to the fault log.
fn read_ucall(space: &mut AddressSpace, gva: u64, len: u64) -> Result<Record, Status> {
    if len != RECORD_BYTES as u64 {
        return Err(Status::Inval);
    }
    let bytes = space.read_gva(gva, len)?;
    let rec = Record::from_bytes(&bytes).ok_or(Status::Inval)?;
    if rec.kind == ucall::FAULT {
        let &[vector, error_code, cr2, rip] = rec.values() else {
            return Err(Status::Inval);
        };
        space.log_fault(FaultRecord {
            vector,
            error_code,
            cr2,
            rip,
            resolved: false,
            kind: "reported",
        });
    }
    Ok(rec)
}

/// Read at most [`MAX_CONSOLE_WRITE`] bytes of (lossy) UTF-8 at a GVA.
fn read_text(space: &AddressSpace, gva: u64, len: u64) -> Result<String, Status> {
    if len > MAX_CONSOLE_WRITE {
        return Err(Status::Inval);
    }
    let bytes = space.read_gva(gva, len)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn stats(space: &AddressSpace, gva: u64) -> Result<u64, Status> {
    let s = MemStats {
        total_frames: space.zones.zones().iter().map(|z| z.present).sum(),
        free_frames: space.zones.total_free(),
        mapped_frames: space.counters.mapped_frames,
        table_frames: space.pool.in_use(),
        regions: space.regions.len() as u64,
        lazy_faults: space.counters.lazy_faults,
    };
    // SAFETY-free byte view: MemStats is repr(C) of u64s only.
    let words = [
        s.total_frames,
        s.free_frames,
        s.mapped_frames,
        s.table_frames,
        s.regions,
        s.lazy_faults,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    space.write_gva(gva, &bytes)?;
    Ok(0)
}
