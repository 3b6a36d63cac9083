//! Ring 3: scenarios run at CPL 3, where a PVM host executes guest code natively (it emulates
//! CPL 0 code instruction by instruction). The kernel image and the direct map are mapped with
//! US=1 by the host, so the same Rust code runs in either ring; ring 3 here is a performance
//! device and a test subject (user pages, U/S faults), not an isolation boundary.
//!
//! * Entry: `enter_user` saves the callee-saved registers and RSP, points TSS.RSP0 just below
//!   them (exceptions from ring 3 land on this kernel stack), and `iretq`s to
//!   `user_trampoline`, which calls the scenario.
//! * What a PVM host allows ring 3 (measured): no `out` (IOPL is kept at 0 and the TSS I/O
//!   bitmap is ignored), no `int n` (#UD), and `syscall` stays in ring 3. Exceptions are
//!   delivered to the kernel's IDT normally. So:
//!   - hypercalls from ring 3 ring the MMIO doorbell (an 8-byte write of the request block's
//!     GPA to [`memvisor_abi::DOORBELL_GVA`]);
//!   - the privileged services trap and are emulated by the #GP handler
//!     ([`gp_service`]): `hlt` at `user_exit_hlt` returns to the kernel with rdi = result, and
//!     `hlt` at `user_flush_insn` flushes the TLB for rdi = GVA, rsi = length (a ring-3
//!     `invlpg` does not trap on PVM, so it cannot carry the request), and `hlt` at
//!     `user_ring0_insn` calls rdi(rsi) at CPL 0 ([`call_in_ring0`]).

use crate::idt::{TrapFrame, USER_CS, USER_DS};
use core::sync::atomic::{AtomicU64, Ordering};

/// Flush services performed for ring 3.
pub static FLUSHES: AtomicU64 = AtomicU64::new(0);

/// RSP of the kernel while ring 3 runs.
#[no_mangle]
static USER_SAVED_RSP: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".global enter_user",
    // rdi = entry fn, rsi = arg, rdx = user stack top, rcx = &TSS.RSP0
    "enter_user:",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    mov [rip + {saved}], rsp",
    "    lea rax, [rsp - 64]",
    "    and rax, -16",
    "    mov [rcx], rax",
    "    push {uds}",
    "    push rdx",
    "    push 0x0002",
    "    push {ucs}",
    "    lea rax, [rip + user_trampoline]",
    "    push rax",
    "    iretq",
    "user_trampoline:",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    call rax",
    "    mov rdi, rax",
    ".global user_exit_hlt",
    "user_exit_hlt:",
    "    hlt",
    "    ud2",
    // Ring 0 again (the #GP handler iretq'd here with RSP = the saved kernel RSP).
    ".global user_return_landing",
    "user_return_landing:",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    ret",
    ".global user_ring0_call",
    "user_ring0_call:",
    ".global user_ring0_insn",
    "user_ring0_insn:",
    "    hlt",
    "    ret",
    ".global user_flush",
    "user_flush:",
    ".global user_flush_insn",
    "user_flush_insn:",
    "    hlt",
    "    ret",
    saved = sym USER_SAVED_RSP,
    uds = const USER_DS as u64 | 3,
    ucs = const USER_CS as u64 | 3,
);

extern "C" {
    fn enter_user(
        entry: extern "C" fn(u64) -> u64,
        arg: u64,
        stack_top: u64,
        rsp0: *mut u64,
    ) -> u64;
    fn user_flush(gva: u64, len: u64);
    fn user_ring0_call(f: extern "C" fn(u64) -> u64, arg: u64) -> u64;
    static user_ring0_insn: u8;
    static user_exit_hlt: u8;
    static user_return_landing: u8;
    static user_flush_insn: u8;
}

/// Run `f(arg)` in ring 3 on the user stack; returns its result.
pub fn run(f: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    let top = crate::boot().user_stack[1] & !0xf;
    let rsp0 = crate::idt::tss_rsp0_slot();
    // SAFETY: the user stack is mapped US=1 by the host; enter_user comes back through
    // gp_service (hlt at user_exit_hlt) with all callee-saved registers restored; TSS.RSP0
    // points below the live part of this kernel stack.
    let r = unsafe { enter_user(f, arg, top, rsp0) };
    USER_SAVED_RSP.store(0, Ordering::SeqCst);
    r
}

/// Current privilege level (CS.RPL).
#[inline]
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    cs & 3
}

/// Ask the kernel to flush the TLB for `[gva, gva + len)` (ring 3 only).
pub fn flush_from_user(gva: u64, len: u64) {
    // SAFETY: the hlt in user_flush traps (#GP at CPL 3); gp_service flushes the range and
    // skips the instruction. No registers besides the arguments are touched.
    unsafe { user_flush(gva, len) }
}

/// Run `f(arg)` at CPL 0 from ring 3 (inside the #GP handler; see
/// [`crate::fault::in_ring0`]).
pub fn call_in_ring0(f: extern "C" fn(u64) -> u64, arg: u64) -> u64 {
    // SAFETY: the hlt in user_ring0_call traps (#GP at CPL 3); gp_service calls f(arg) at
    // CPL 0, puts the result in rax and skips the instruction.
    unsafe { user_ring0_call(f, arg) }
}

/// The #GP handler's services for ring 3: returns true if the fault was one of them.
pub fn gp_service(f: &mut TrapFrame) -> bool {
    if f.cs & 3 != 3 {
        return false;
    }
    let exit = core::ptr::addr_of!(user_exit_hlt) as u64;
    let flush = core::ptr::addr_of!(user_flush_insn) as u64;
    if f.rip == exit {
        f.rax = f.rdi;
        f.rip = core::ptr::addr_of!(user_return_landing) as u64;
        f.cs = crate::idt::KERNEL_CS as u64;
        f.ss = crate::idt::KERNEL_DS as u64;
        f.rsp = USER_SAVED_RSP.load(Ordering::SeqCst);
        f.rflags = 0x2;
        return true;
    }
    if f.rip == core::ptr::addr_of!(user_ring0_insn) as u64 {
        // SAFETY: rdi holds the fn pointer `call_in_ring0` passed (the only code at this RIP).
        let func: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(f.rdi as usize) };
        f.rax = func(f.rsi);
        f.rip += 1; // hlt
        return true;
    }
    if f.rip == flush {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        // A CR3 reload: on PVM an invlpg from (emulated) ring 0 does not reach the shadow
        // page tables ring 3 runs on.
        x86_64::instructions::tlb::flush_all();
        f.rip += 1; // hlt
        return true;
    }
    false
}
