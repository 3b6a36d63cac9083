//! #PF handling and fault probes.
//!
//! * Demand paging: a not-present fault first asks the host (`LazyFault`); if the page is in a
//!   lazy region the host maps it, we `invlpg` and return to retry the access.
//! * Probes: `probe_read`/`probe_write` perform one access whose fault is caught through an
//!   exception table (like Linux's `__ex_table`): the handler resumes at a fixup label and the
//!   probe returns the error code and CR2 instead of crashing.
//! * A scenario may install a hook that gets the first look at any other #PF.

use crate::idt::TrapFrame;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use memvisor_abi::{Call, Request};

/// Bit 63 of a probe's return value: the access faulted; bits 0–31 hold the error code.
pub const FAULTED: u64 = 1 << 63;

core::arch::global_asm!(
    ".global probe_read_u8",
    "probe_read_u8:",
    "    xor eax, eax",
    "1:  movzx edx, byte ptr [rdi]",
    "2:  ret",
    ".global probe_write_u8",
    "probe_write_u8:",
    "    xor eax, eax",
    "3:  mov byte ptr [rdi], sil",
    "4:  ret",
    ".pushsection .extable, \"a\"",
    ".balign 8",
    "    .quad 1b, 2b",
    "    .quad 3b, 4b",
    ".popsection",
);

extern "C" {
    fn probe_read_u8(addr: u64) -> u64;
    fn probe_write_u8(addr: u64, val: u8) -> u64;
    static __extable_start: [u64; 0];
    static __extable_end: [u64; 0];
}

/// Outcome of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The access succeeded.
    Ok,
    /// The access raised #PF with this error code and CR2.
    Fault { error_code: u64, cr2: u64 },
}

static LAST_CR2: AtomicU64 = AtomicU64::new(0);
static LAST_RIP: AtomicU64 = AtomicU64::new(0);

/// RIP of the last faulting probe instruction.
pub fn last_rip() -> u64 {
    LAST_RIP.load(Ordering::Relaxed)
}

fn outcome(r: u64) -> Probe {
    if r & FAULTED != 0 {
        Probe::Fault {
            error_code: r & 0xffff_ffff,
            cr2: LAST_CR2.load(Ordering::Relaxed),
        }
    } else {
        Probe::Ok
    }
}

/// Read one byte at `addr`, catching a #PF.
pub fn read(addr: u64) -> Probe {
    // SAFETY: the probe's only memory access is covered by the exception table, so a fault
    // resumes at the fixup instead of crashing; a successful read of any mapped byte is sound.
    outcome(unsafe { probe_read_u8(addr) })
}

/// Write one byte at `addr`, catching a #PF.
///
/// # Safety
/// A successful write changes memory: the caller must own `addr`.
pub unsafe fn write(addr: u64, val: u8) -> Probe {
    // SAFETY: as for `read`; the caller guarantees the write is harmless.
    outcome(unsafe { probe_write_u8(addr, val) })
}

fn extable_fixup(rip: u64) -> Option<u64> {
    // The linker script brackets .extable with these symbols; entries are pairs of u64
    // (faulting instruction, fixup) written by the global_asm above.
    let (start, end) = (
        core::ptr::addr_of!(__extable_start) as *const u64,
        core::ptr::addr_of!(__extable_end) as *const u64,
    );
    let n = (end as usize - start as usize) / 16;
    for i in 0..n {
        // SAFETY: i < n pairs inside the table.
        let (insn, fix) = unsafe { (*start.add(2 * i), *start.add(2 * i + 1)) };
        if insn == rip {
            return Some(fix);
        }
    }
    None
}

/// A scenario's #PF hook: returns true if it handled the fault (the access is retried).
pub type Hook = fn(&mut TrapFrame, u64) -> bool;
static HOOK: AtomicUsize = AtomicUsize::new(0);
/// Demand-paging faults served by the host.
pub static LAZY_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Install (or with `None` remove) the #PF hook.
pub fn set_hook(h: Option<Hook>) {
    HOOK.store(h.map_or(0, |f| f as usize), Ordering::SeqCst);
}

pub fn page_fault(f: &mut TrapFrame) {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let err = f.error_code;
    if err & 1 == 0 {
        // Not present: maybe a lazy page the host backs on demand.
        let mut r = [Request::new(Call::LazyFault, [cr2, err, f.rip, 0, 0])];
        crate::hc::batch_in_fault(&mut r);
        if r[0].status == 0 {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(cr2));
            LAZY_FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if let Some(fix) = extable_fixup(f.rip) {
        LAST_CR2.store(cr2, Ordering::Relaxed);
        LAST_RIP.store(f.rip, Ordering::Relaxed);
        f.rax = FAULTED | (err & 0xffff_ffff);
        f.rip = fix;
        return;
    }
    let h = HOOK.load(Ordering::SeqCst);
    if h != 0 {
        // SAFETY: HOOK only ever holds 0 or a value stored from a `Hook` fn pointer.
        let hook: Hook = unsafe { core::mem::transmute::<usize, Hook>(h) };
        if hook(f, cr2) {
            return;
        }
    }
    crate::idt::report(14, err, cr2, f.rip, false);
    let mut line = crate::console::Line::new();
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "unhandled page fault: cr2={:#x} error_code={:#x} ({}) rip={:#x}",
            cr2,
            err,
            ErrorCode(err),
            f.rip
        ),
    );
    crate::hc::panic_str(line.as_str());
}

/// Non-#PF exceptions a scenario expects (none yet): returns true if handled.
pub fn other_fault(_f: &mut TrapFrame) -> bool {
    false
}

/// Pretty #PF error code: P W U RSVD I/D (SDM Vol. 3A §4.7).
pub struct ErrorCode(pub u64);

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let e = self.0;
        let names = [(1, "P"), (2, "W"), (4, "U"), (8, "RSVD"), (16, "I/D")];
        let mut first = true;
        for (bit, name) in names {
            if e & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}
