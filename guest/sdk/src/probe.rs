//! #PF handling and fault probes.
//!
//! * Demand paging: a not-present fault goes to the host at once through the #PF assist exit
//!   (`memvisor_abi::PORT_PF_ASSIST`, one `out` that changes no register; the host side is
//!   `src/pf_assist.rs`): if the page lies in a lazy region the host backs and maps it and
//!   returns to the faulting instruction itself; otherwise the fault continues here.
//! * Probes: `probe_read`/`probe_write` (and [`fetch`], through [`crate::fault::try_fault`]) perform one access whose fault is caught through an
//!   exception table (like Linux's `__ex_table`): the handler resumes at a fixup label and the
//!   probe returns the error code and CR2 instead of crashing.
//! * A scenario may install a hook that gets the first look at any other #PF.

use crate::idt::TrapFrame;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bit 63 of a probe's return value: the access faulted; bits 0–31 hold the error code.
pub const FAULTED: u64 = 1 << 63;

// Probes live in 16-byte slots of `probe_block`: the faulting instruction is 3 bytes (after
// a 2-byte `xor eax, eax`) and is followed by `ret`, so the #PF fast path resumes a faulting probe at
// rip + 3 with rax = FAULTED | error code, without leaving assembly. The extable entries
// serve the slow (Rust) path too.
core::arch::global_asm!(
    ".balign 64",
    ".global probe_block",
    "probe_block:",
    // rax = 0 (no fault) unless the #PF path sets FAULTED | error code: the return value
    // must not be whatever the caller left in rax.
    ".global probe_read_u8",
    "probe_read_u8:",
    "    xor eax, eax",
    // The load's own symbol: a fault report names this RIP.
    ".global probe_read_u8_load",
    "probe_read_u8_load:",
    "1:  movzx edx, byte ptr [rdi]",
    "2:  ret",
    ".balign 16",
    ".global probe_write_u8",
    "probe_write_u8:",
    "    xor eax, eax",
    "3:  mov byte ptr [rdi], sil",
    "4:  ret",
    ".balign 16",
    "probe_block_end:",
    ".pushsection .extable, \"a\"",
    ".balign 8",
    "    .quad 1b, 2b",
    "    .quad 3b, 4b",
    ".popsection",
    // PF_PROBE_CHECK: saves rax and rdx; if a probe faulted, records its RIP and CR2
    // (`LAST_RIP`, `LAST_CR2`) and resumes it after its 3-byte instruction with rax = FAULTED |
    // error code; otherwise jumps to `other` with rax and rdx still pushed.
    ".macro PF_PROBE_CHECK other",
    "    push rax",
    "    push rdx",
    "    mov rax, [rsp + 24]",
    "    lea rdx, [rip + probe_block]",
    "    sub rax, rdx",
    "    cmp rax, 64",
    "    jae \\other",
    "    mov rdx, [rsp + 24]",
    "    mov [rip + {last_rip}], rdx",
    "    add qword ptr [rsp + 24], 3",
    "    mov rdx, cr2",
    "    mov [rip + {last_cr2}], rdx",
    "    mov rax, [rsp + 16]",
    "    bts rax, 63",
    "    mov [rsp + 8], rax",
    "    pop rdx",
    "    pop rax",
    "    add rsp, 8",
    "    iretq",
    ".endm",
    // The #PF entry (IDT vector 14). Stack: [rsp] = error code, [rsp+8] = rip, then cs,
    // rflags, rsp, ss. Every instruction here before the exit is emulated on a PVM host, so
    // a not-present fault goes to the host at once: `out` to PORT_PF_ASSIST touches no
    // register; the host reads CR2 and this frame itself, backs the page if it lies in a
    // lazy region and then resumes the vCPU at `memvisor_pf_assist_done`. If the host
    // declines (not a lazy page), execution falls through to the in-guest path.
    ".global pf_assist_entry",
    "pf_assist_entry:",
    "    test byte ptr [rsp], 1",
    "    jnz pf_fast_entry",
    "    out {assist_port}, al",
    "    PF_PROBE_CHECK 6f",
    ".global memvisor_pf_assist_done",
    "memvisor_pf_assist_done:",
    "    add rsp, 8",
    "    iretq",
    // The in-guest #PF path for protection faults (P=1) and declined ones: probes, then
    // the Rust handler.
    ".global pf_fast_entry",
    "pf_fast_entry:",
    "    PF_PROBE_CHECK 6f",
    // Everything else: the Rust handler.
    "6:  pop rdx",
    "    pop rax",
    "    jmp isr_stub_14",
    last_cr2 = sym LAST_CR2,
    last_rip = sym LAST_RIP,
    assist_port = const memvisor_abi::PORT_PF_ASSIST,
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

#[no_mangle]
static LAST_CR2: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static LAST_RIP: AtomicU64 = AtomicU64::new(0);

/// RIP of the last faulting probe instruction (set by both #PF paths: the assembly fast path
/// and the Rust one).
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

/// Fetch (execute) at `addr`: `call`s it. A fetch fault (#PF with I/D set, or any other
/// exception) is returned as a [`Probe::Fault`] (CR2 = `addr` for a #PF).
///
/// # Safety
/// If the fetch succeeds the code at `addr` runs: it must be a `ret` (0xC3) or code the
/// caller means to run.
pub unsafe fn fetch(addr: u64) -> Probe {
    // SAFETY: the caller guarantees `addr` is a `ret` or code it means to run (see above);
    // a fault on the fetch is caught by `try_fault`.
    let f: extern "C" fn() = unsafe { core::mem::transmute(addr as usize) };
    match crate::fault::try_fault(|| f()) {
        None => Probe::Ok,
        Some(x) => Probe::Fault {
            error_code: x.error_code,
            cr2: x.cr2,
        },
    }
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

/// Install (or with `None` remove) the #PF hook.
pub fn set_hook(h: Option<Hook>) {
    HOOK.store(h.map_or(0, |f| f as usize), Ordering::SeqCst);
}

pub fn page_fault(f: &mut TrapFrame) {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let err = f.error_code;
    // The host has already seen not-present faults (the #PF assist exit) and declined them.
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
    if crate::fault::on_exception(f, cr2) {
        return;
    }
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
    crate::idt::unhandled(f, cr2, line.as_str())
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
